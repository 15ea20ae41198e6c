"""Scale benchmark (`make bench-scale`): a catalog the size of a year of
backups, and what a host with many domains does to locks.

Rows, each with its target:
- List, ListChildren, LookupByUUID and every LIST_* flag on one domain with
  SCALE_N backups (default 10,000; chains of 30: a full then 29
  incrementals), warm (best of several calls in one process, the domain's
  folder unchanged for 100 ms) and cold (the first call of a new process,
  which also reads the whole folder), at 1/10, 3/10 and all of SCALE_N to
  show the growth;
- Delete of one leaf at SCALE_N;
- CreateXML and List latency of domain B while a Delete of domain A merges
  SCALE_MERGE_MB (default 256) MiB into its child, against B alone (worst,
  median, 95th percentile), and what the merge's pacing costs it;
- housekeeping that never stalls a job: domain B (a small raw disk) makes
  full backups back to back, keeping them, alone and while a Delete of
  domain A's full backup merges it into its 1 MiB incremental child (a raw
  disk of SCALE_HOUSEKEEPING_MB, default 384, MiB of random data): B's
  CreateXML median and worst side by side, the target being a worst within
  50 ms of B alone; and the merge's time under B's load and alone;
- a backup of 4 disks of SCALE_PARALLEL_MB (default 256) MiB in memory with
  LIBVIRT_BACKUP_WORKERS=1 against the default number of workers;
- memory and descriptors of one incremental backup (a child process per
  depth) on chains SCALE_DEPTHS (default 1,10,30,100) deep;
- the digest index rows of tests/index_bench.rs (SCALE_INDEX=0 skips
  them): the deepest delta index a year of daily 1 % changes makes and a
  30-deep chain, read against flat ones, and that year's index files.

The catalog of one domain is grown from two real backups (a full and an
incremental taken through the API): their records are copied with new
UUIDs, parents and times, without data files (listing never reads them).
The library is $LIBVIRT_BACKUP_LIB (the Makefile names build/'s); run the
same script against another build to compare.
"""

import ctypes
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from ctypes import byref, c_void_p

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python-tests"))
import conftest as ct  # noqa: E402  (bindings shared with the tests)

MiB = 1 << 20
N = int(os.environ.get("SCALE_N", "10000"))
CHAIN = 30
MERGE_MB = int(os.environ.get("SCALE_MERGE_MB", "256"))
WARM_RUNS = int(os.environ.get("SCALE_RUNS", "11"))
PAR_MB = int(os.environ.get("SCALE_PARALLEL_MB", "256"))
HOUSEKEEPING_MB = int(os.environ.get("SCALE_HOUSEKEEPING_MB", "384"))
COLD_RUNS = int(os.environ.get("SCALE_COLD_RUNS", "3"))
ALONE_RUNS = 40
DEPTHS = [int(d) for d in os.environ.get("SCALE_DEPTHS", "1,10,30,100").split(",") if d]
INDEX = os.environ.get("SCALE_INDEX", "1") != "0"

# A domain definition of a realistic size (records embed it).
DEVICES = "".join([
    "<interface type='network'><source network='default'/>"
    f"<mac address='52:54:00:00:00:{i:02x}'/><model type='virtio'/></interface>"
    for i in range(4)
] + ["<serial type='pty'><target port='0'/></serial>",
     "<console type='pty'><target type='serial' port='0'/></console>",
     "<input type='tablet' bus='usb'/>", "<graphics type='vnc' port='-1'/>",
     "<video><model type='vga' vram='16384' heads='1'/></video>",
     "<memballoon model='virtio'/>"])

rows = []


def row(name, value, target, ok, note=""):
    rows.append((name, value, target, "met" if ok else "MISSED", note))
    print(f"  {name}: {value} (target {target}) {note}", flush=True)


def ms(s):
    return f"{s * 1000:.1f} ms"


class Catalog:
    """One domain on a test-driver node file, with its backups' records."""

    def __init__(self, work):
        self.work = work
        self.root = os.path.join(work, "catalog")
        os.environ["LIBVIRT_BACKUP_DIR"] = self.root
        name = "scale-" + uuidlib.uuid4().hex[:8]
        disk = ct.make_disk(os.path.join(work, name + ".raw"), 4 * MiB, "raw",
                            [(0, MiB, 0xAB)])
        self.uuid = str(uuidlib.uuid4())
        self.uri = ct.write_node_file(os.path.join(work, "node.xml"),
                                      [(name, self.uuid, [("vda", disk, "raw")])])
        node = open(os.path.join(work, "node.xml")).read()
        with open(os.path.join(work, "node.xml"), "w") as f:
            f.write(node.replace("</devices>", DEVICES + "</devices>"))
        self.conn = ct.virt.virConnectOpen(self.uri.encode())
        self.dom = ct.virt.virDomainLookupByName(self.conn, name.encode())
        assert self.dom, "no bench domain"
        self.dir = os.path.join(self.root, self.uuid)
        full = ct.create(self.dom, "<domainbackup/>")
        full_id = ct.backup_uuid(full)
        ct.write_disk(disk, "raw", [(2 * MiB, 64 * 1024, 0x11)])
        inc = ct.create(self.dom, ct.backup_xml_for(parent=full_id))
        inc_id = ct.backup_uuid(inc)
        ct.free(full)
        ct.free(inc)
        self.full_tpl = (full_id, open(os.path.join(self.dir, full_id + ".xml")).read())
        self.inc_tpl = (inc_id, open(os.path.join(self.dir, inc_id + ".xml")).read(),
                        full_id)
        self.ids = []

    def fill(self, n):
        """Replace the domain's backups with n synthetic ones in chains."""
        for f in os.listdir(self.dir):
            p = os.path.join(self.dir, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
        base_ns = time.time_ns() - n * 10**9
        ns_re = re.compile(r"(<created ns=')(\d+)(')")
        ids, parent = [], None
        for i in range(n):
            new = str(uuidlib.uuid4())
            if i % CHAIN == 0:
                tpl_id, text = self.full_tpl
                text = text.replace(tpl_id, new)
                parent = None
            else:
                tpl_id, text, tpl_parent = self.inc_tpl
                text = text.replace(tpl_id, new).replace(tpl_parent, parent)
            text = ns_re.sub(lambda m: f"{m[1]}{base_ns + i * 10**9}{m[3]}", text)
            with open(os.path.join(self.dir, new + ".xml"), "w") as f:
                f.write(text)
            # What a real backup leaves next to its record.
            os.mkdir(os.path.join(self.dir, new + ".index"))
            os.mkdir(os.path.join(self.dir, new))
            ids.append(new)
            parent = new
        self.ids = ids


def list_call(func, obj, flags):
    """One List-shaped call; returns (seconds, count). Handles freed after."""
    arr = ct.BackupArray()
    t = time.perf_counter()
    n = func(obj, byref(arr), flags)
    t = time.perf_counter() - t
    assert n >= 0, ct.last_error()
    for i in range(n):
        ct.lib.virDomainBackupFree(arr[i])
    ct.libc.free(ctypes.cast(arr, c_void_p))
    return t, n


def best(fn, runs=WARM_RUNS):
    return min(fn() for _ in range(runs))


COLD = """
import ctypes, sys, time
sys.path.insert(0, {tests!r})
import conftest as ct
conn = ct.virt.virConnectOpen({uri!r}.encode())
dom = ct.virt.virDomainLookupByUUIDString(conn, {dom!r}.encode())
arr = ct.BackupArray()
t = time.perf_counter()
n = ct.lib.virDomainBackupList(dom, ctypes.byref(arr), 0)
t1 = time.perf_counter() - t
t = time.perf_counter()
b = ct.lib.virDomainBackupLookupByUUID({some!r}.encode(), 0)
t2 = time.perf_counter() - t
assert n > 0 and b, ct.last_error()
print(t1, t2)
"""


def cold(cat):
    """First List and first LookupByUUID of fresh processes."""
    script = COLD.format(tests=os.path.join(os.path.dirname(HERE), "python-tests"),
                         uri=cat.uri, dom=cat.uuid, some=cat.ids[len(cat.ids) // 2])
    out = []
    for _ in range(COLD_RUNS):
        p = subprocess.run([sys.executable, "-c", script], capture_output=True,
                           text=True, env=os.environ)
        assert p.returncode == 0, p.stderr
        out.append(tuple(float(x) for x in p.stdout.split()))
    return min(o[0] for o in out), min(o[1] for o in out)


def listing(cat, n, final):
    cat.fill(n)
    lib = ct.lib
    t = time.perf_counter()
    _, count = list_call(lib.virDomainBackupList, cat.dom, 0)
    first = time.perf_counter() - t
    assert count == n, (count, n)
    print(f"N={n}: first List after the records were written {ms(first)}", flush=True)
    # A List within 100 ms of a change in the domain's folder reads the
    # whole folder for deletes a dead process left (as a cold one does).
    time.sleep(0.15)
    warm = best(lambda: list_call(lib.virDomainBackupList, cat.dom, 0)[0])
    cold_list, cold_lookup = cold(cat)
    leaf = lib.virDomainBackupLookupByUUID(cat.ids[-1].encode(), 0)
    t = time.perf_counter()
    ct.delete(leaf)
    t = time.perf_counter() - t
    ct.free(leaf)
    res = {"warm": warm, "cold": cold_list, "delete": t}
    if not final:
        return res
    flags = [("LIST_FULL", ct.LIST_FULL), ("LIST_INCREMENTAL", ct.LIST_INCREMENTAL),
             ("LIST_LEAVES", ct.LIST_LEAVES), ("LIST_LATEST", ct.LIST_LATEST),
             ("LIST_LEAVES|LIST_FULL", ct.LIST_LEAVES | ct.LIST_FULL)]
    row(f"List, {n} backups, warm", ms(warm), "< 20 ms", warm < 0.020)
    row(f"List, {n} backups, cold (first call of a process)", ms(cold_list), "< 100 ms",
        cold_list < 0.100)
    for name, f in flags:
        t = best(lambda: list_call(lib.virDomainBackupList, cat.dom, f)[0])
        row(f"List {name}, {n} backups, warm", ms(t), "< 20 ms", t < 0.020)
    root = lib.virDomainBackupLookupByUUID(cat.ids[-CHAIN].encode(), 0)
    assert root, ct.last_error()
    for name, f in [("0", 0), ("DESCENDANTS", ct.LIST_DESCENDANTS),
                    ("DESCENDANTS|LEAVES", ct.LIST_DESCENDANTS | ct.LIST_LEAVES)]:
        t = best(lambda: list_call(lib.virDomainBackupListChildren, root, f)[0])
        row(f"ListChildren {name} of a chain root, {n} backups", ms(t), "< 20 ms",
            t < 0.020)
    ct.free(root)

    def lookup():
        t = time.perf_counter()
        b = lib.virDomainBackupLookupByUUID(cat.ids[n // 2].encode(), 0)
        t = time.perf_counter() - t
        assert b, ct.last_error()
        ct.free(b)
        return t
    t = best(lookup)
    row(f"LookupByUUID, {n} backups, warm", ms(t), "< 20 ms", t < 0.020)
    row(f"LookupByUUID, {n} backups, cold", ms(cold_lookup), "< 100 ms", cold_lookup < 0.100)

    return res


def merge_row(work):
    """CreateXML of domain B while domain A's Delete merges MERGE_MB MiB."""
    root = os.path.join(work, "merge-catalog")
    os.environ["LIBVIRT_BACKUP_DIR"] = root
    size = MERGE_MB * MiB
    a_disk = ct.make_disk(os.path.join(work, "a.raw"), size, "raw",
                          [(0, size, 0x3C)])
    b_disk = ct.make_disk(os.path.join(work, "b.raw"), 4 * MiB, "raw", [(0, MiB, 0x42)])
    ids = [str(uuidlib.uuid4()), str(uuidlib.uuid4())]
    uri = ct.write_node_file(os.path.join(work, "merge-node.xml"),
                             [("scale-a", ids[0], [("vda", a_disk, "raw")]),
                              ("scale-b", ids[1], [("vda", b_disk, "raw")])])
    conn = ct.virt.virConnectOpen(uri.encode())
    dom_a = ct.virt.virDomainLookupByName(conn, b"scale-a")
    dom_b = ct.virt.virDomainLookupByName(conn, b"scale-b")

    def a_chain():
        """A full backup of A and an incremental child: deleting the full
        merges all of A's disk into the child."""
        full = ct.create(dom_a, "<domainbackup/>")
        ct.write_disk(a_disk, "raw", [(MiB, 4 * MiB, 0x77)])
        inc = ct.create(dom_a, ct.backup_xml_for(parent=ct.backup_uuid(full)))
        ct.free(inc)
        return full

    def merge_alone():
        full = a_chain()
        t = time.perf_counter()
        ct.delete(full)
        ct.free(full)
        return time.perf_counter() - t
    # What pacing costs the merge: alone it goes at full speed.
    merge_free = merge_alone()
    full = a_chain()

    def b_create():
        t = time.perf_counter()
        b = ct.create(dom_b, "<domainbackup/>")
        t = time.perf_counter() - t
        ct.delete(b)
        ct.free(b)
        return t

    def b_list():
        return list_call(ct.lib.virDomainBackupList, dom_b, 0)[0]
    alone = [b_create() for _ in range(ALONE_RUNS)]
    alone_list = [b_list() for _ in range(ALONE_RUNS)]
    done = threading.Event()
    took = []

    def merge():
        t = time.perf_counter()
        ct.delete(full)
        took.append(time.perf_counter() - t)
        done.set()
    th = threading.Thread(target=merge)
    th.start()
    time.sleep(0.05)
    during, during_list = [], []
    while not done.is_set():
        during.append(b_create())
        during_list.append(b_list())
    th.join()
    ct.free(full)
    for what, a, d in (("CreateXML", alone, during), ("List", alone_list, during_list)):
        worst, base = max(d), max(a)
        row(f"{what} of domain B during a {MERGE_MB} MiB merge of domain A, worst of "
            f"{len(d)}", ms(worst), f"<= worst of {len(a)} of B alone ({ms(base)}) + 5 ms",
            worst <= base + 0.005,
            f"median / p95: during {ms(statistics.median(d))} / {ms(p95(d))}, "
            f"alone {ms(statistics.median(a))} / {ms(p95(a))}; the merge took "
            f"{took[0]:.2f} s under B's load, {merge_free:.2f} s alone")


def random_disk(path, mb):
    """A raw disk of `mb` MiB of random data (nothing in it is a hole, a
    zero run or a repeat), synced and out of the page cache, as a guest's
    disk the host has not read lately."""
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def housekeeping_row(work):
    """Domain B's CreateXML (full backups back to back, kept) alone and
    while domain A's Delete merges its full backup (HOUSEKEEPING_MB MiB of
    random data) into a 1 MiB incremental child. B alone is measured
    before and after the merge, so that a catalog grown by the backups made
    meanwhile is on both sides."""
    os.environ["LIBVIRT_BACKUP_DIR"] = os.path.join(work, "housekeeping-catalog")
    a_disk = random_disk(os.path.join(work, "hk-a.raw"), HOUSEKEEPING_MB)
    b_disk = ct.make_disk(os.path.join(work, "hk-b.raw"), 4 * MiB, "raw", [(0, MiB, 0x42)])
    uri = ct.write_node_file(os.path.join(work, "hk-node.xml"),
                             [("hk-a", str(uuidlib.uuid4()), [("vda", a_disk, "raw")]),
                              ("hk-b", str(uuidlib.uuid4()), [("vda", b_disk, "raw")])])
    conn = ct.virt.virConnectOpen(uri.encode())
    dom_a = ct.virt.virDomainLookupByName(conn, b"hk-a")
    dom_b = ct.virt.virDomainLookupByName(conn, b"hk-b")

    def a_chain(at):
        full = ct.create(dom_a, "<domainbackup/>")
        with open(a_disk, "r+b") as f:
            f.seek(at * MiB)
            f.write(os.urandom(MiB))
        inc = ct.create(dom_a, ct.backup_xml_for(parent=ct.backup_uuid(full)))
        ct.free(inc)
        os.sync()
        return full

    def merge(full):
        t = time.perf_counter()
        ct.delete(full)
        ct.free(full)
        return time.perf_counter() - t

    def b_create():
        t = time.perf_counter()
        b = ct.create(dom_b, "<domainbackup/>")
        t = time.perf_counter() - t
        ct.free(b)
        return t
    merge_alone = merge(a_chain(8))
    full = a_chain(16)
    alone = [b_create() for _ in range(ALONE_RUNS)]
    done, took = threading.Event(), []

    def merging():
        took.append(merge(full))
        done.set()
    th = threading.Thread(target=merging)
    th.start()
    during = []
    while not done.is_set():
        during.append(b_create())
    th.join()
    alone += [b_create() for _ in range(ALONE_RUNS)]
    base, worst = max(alone), max(during)
    row(f"CreateXML of domain B, back to back, alone vs during a {HOUSEKEEPING_MB} MiB "
        "merge of domain A",
        f"alone: median {ms(statistics.median(alone))}, worst {ms(base)}; during: median "
        f"{ms(statistics.median(during))}, worst {ms(worst)}",
        "worst during within 50 ms of worst alone", worst <= base + 0.050,
        f"{len(alone)} alone (half before, half after), {len(during)} during; "
        f"the merge took {took[0]:.2f} s under B's load, {merge_alone:.2f} s alone")


def p95(values):
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.95))]


def parallel_row(work):
    """A 4-disk backup with one worker against the default, in memory
    (/dev/shm) so that the storage is not what limits it."""
    shm = tempfile.mkdtemp(prefix="bench-scale-", dir="/dev/shm")
    try:
        os.environ["LIBVIRT_BACKUP_DIR"] = os.path.join(shm, "catalog")
        size = PAR_MB * MiB
        disks = [(f"vd{c}", ct.make_disk(os.path.join(shm, f"p{c}.raw"), size, "raw",
                                         [(0, size, 0x21 + i)]), "raw")
                 for i, c in enumerate("abcd")]
        uri = ct.write_node_file(os.path.join(shm, "par-node.xml"),
                                 [("scale-par", str(uuidlib.uuid4()), disks)])
        conn = ct.virt.virConnectOpen(uri.encode())
        dom = ct.virt.virDomainLookupByName(conn, b"scale-par")

        busy = {}

        def once():
            # The library runs in this process: its CPU time is ours.
            r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            b = ct.create(dom, "<domainbackup/>")
            t, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
            cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
            busy.setdefault(os.environ["LIBVIRT_BACKUP_WORKERS"], []).append(cpu / t)
            ct.delete(b)
            ct.free(b)
            return t
        times = {}
        for workers in ("1", "", "1", ""):
            os.environ["LIBVIRT_BACKUP_WORKERS"] = workers
            times[workers] = min(times.get(workers, 1e9), best(once, 3))
        os.environ.pop("LIBVIRT_BACKUP_WORKERS")
        speedup = times["1"] / times[""]
        cores = statistics.median(busy["1"])
        row(f"4-disk backup ({PAR_MB} MiB each, in memory): one worker / default",
            f"{speedup:.2f}x", ">= 1.6x", speedup >= 1.6,
            f"one worker {times['1']:.2f} s, default ({os.cpu_count()} cores) "
            f"{times['']:.2f} s; one worker already keeps {cores:.2f} cores busy "
            f"(its readers hash ahead), so {os.cpu_count()} cores allow at most "
            f"{os.cpu_count() / cores:.2f}x; the default keeps "
            f"{statistics.median(busy['']):.2f} busy")
    finally:
        shutil.rmtree(shm, ignore_errors=True)


JOB = """
import os, sys, threading, time
sys.path.insert(0, {tests!r})
import conftest as ct
conn = ct.virt.virConnectOpen({uri!r}.encode())
dom = ct.virt.virDomainLookupByName(conn, b"scale-depth")
peak, stop = [0], threading.Event()
def poll():
    while not stop.is_set():
        peak[0] = max(peak[0], len(os.listdir("/proc/self/fd")))
        time.sleep(0.0005)
th = threading.Thread(target=poll)
th.start()
time.sleep(0.01)
fds = len(os.listdir("/proc/self/fd"))
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
rss = status("VmRSS:")
b = ct.create(dom, ct.backup_xml_for(parent={parent!r}))
stop.set()
th.join()
# VmHWM: this program's own peak (wait4's ru_maxrss would count the pages
# of the parent it was forked from, before exec).
print(ct.backup_uuid(b), rss, fds, peak[0], status("VmHWM:"))
"""


def depth_row(work):
    """One incremental backup by a child process on chains of each depth in
    DEPTHS: its peak RSS (VmHWM) over its RSS before the backup
    (least of 3), and its descriptors (sampled every 0.5 ms) over those
    before (most of 3)."""
    os.environ["LIBVIRT_BACKUP_DIR"] = os.path.join(work, "depth-catalog")
    disk = ct.make_disk(os.path.join(work, "depth.raw"), 64 * MiB, "raw",
                        [(0, 8 * MiB, 0x5A)])
    uri = ct.write_node_file(os.path.join(work, "depth-node.xml"),
                             [("scale-depth", str(uuidlib.uuid4()), [("vda", disk, "raw")])])
    conn = ct.virt.virConnectOpen(uri.encode())
    dom = ct.virt.virDomainLookupByName(conn, b"scale-depth")
    b = ct.create(dom, "<domainbackup/>")
    leaf, chain = ct.backup_uuid(b), 1
    ct.free(b)

    def change():
        ct.write_disk(disk, "raw", [(chain * 64 * 1024 % (64 * MiB), 64 * 1024, chain % 250 + 1)])
    res = {}
    for depth in DEPTHS:
        while chain < depth:
            change()
            b = ct.create(dom, ct.backup_xml_for(parent=leaf))
            leaf, chain = ct.backup_uuid(b), chain + 1
            ct.free(b)
        change()
        script = JOB.format(tests=os.path.join(os.path.dirname(HERE), "python-tests"),
                            uri=uri, parent=leaf)
        runs = []
        # Three children of the same parent, the least growth kept: the
        # copy's 4 MiB buffers come and go with its threads' timing.
        for _ in range(3):
            p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=os.environ)
            out, err = p.stdout.read(), p.stderr.read()
            p.wait()
            assert p.returncode == 0, err
            new, rss, fds, peak, hwm = out.split()
            runs.append((int(hwm) - int(rss), int(peak) - int(fds), int(hwm)))
        leaf, chain = new, chain + 1
        res[depth] = (min(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs))
    grow = {d: r[0] for d, r in res.items()}
    first, last = DEPTHS[0], DEPTHS[-1]
    row("memory of one incremental backup vs chain depth " + "/".join(map(str, DEPTHS)),
        " / ".join(f"+{g / 1024:.1f} MiB" for g in grow.values()),
        f"bounded independent of depth (at {last} <= at {first} + 1 MiB)",
        grow[last] <= grow[first] + 1024,
        "descriptors opened: " + " / ".join(str(r[1]) for r in res.values())
        + "; peak RSS of the process: "
        + " / ".join(f"{r[2] / 1024:.0f} MiB" for r in res.values()))


def index_rows():
    """The digest index rows, from the Rust bench test (built if needed)."""
    root = os.path.dirname(HERE)
    p = subprocess.run([os.environ.get("CARGO", "cargo"), "test", "--release", "--locked", "--test", "index_bench",
                        "--", "--ignored", "--nocapture"], cwd=root, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    for line in p.stdout.splitlines():
        if not line.startswith("|"):
            continue
        name, ours, flat, ratio, target = [c.strip() for c in line.strip("|").split("|")]
        value = float(ratio.split("x")[0])
        ok = value <= 1.2 if "read" in name else float(ours.split()[0]) <= 2.0
        row(name, f"{ours} vs {flat}", target, ok, ratio)


def main():
    work = tempfile.mkdtemp(prefix="bench-scale-", dir=os.environ.get("BENCH_DIR"))
    try:
        print(f"libvirt-backup scale benchmark: {N} backups, chains of {CHAIN}; "
              f"library {ct.LIB_PATH}", flush=True)
        cat = Catalog(work)
        sizes = sorted({max(N // 10, CHAIN), max(3 * N // 10, CHAIN), N})
        res = {}
        for n in sizes:
            res[n] = listing(cat, n, n == N)
        if n == N:
            d = res[n]["delete"]
            row(f"Delete of one leaf, {n} backups", ms(d), "< 50 ms", d < 0.050)
        small = sizes[0]
        for kind in ("warm", "cold"):
            per = {k: v[kind] / k * 1e6 for k, v in res.items()}
            row(f"List {kind}: cost per backup at " + "/".join(map(str, per)),
                " / ".join(f"{v:.2f} us" for v in per.values()),
                f"<= {(20 if kind == 'warm' else 100) * 1000 / N:.1f} us at {N}",
                per[N] * N <= (0.020 if kind == "warm" else 0.100) * 1e6,
                f"time at {N} / time at {small}: "
                f"{res[N][kind] / max(res[small][kind], 1e-9):.1f}x")
        d = {k: v["delete"] for k, v in res.items()}
        row("Delete of a leaf at " + "/".join(map(str, d)),
            " / ".join(ms(v) for v in d.values()), f"at {N} <= 2x at {small}",
            d[N] <= 2 * d[small])
        if MERGE_MB:
            merge_row(work)
        if HOUSEKEEPING_MB:
            housekeeping_row(work)
        if PAR_MB:
            parallel_row(work)
        if DEPTHS:
            depth_row(work)
        if INDEX:
            index_rows()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| row | value | target | result | notes")
    print("| --- | --- | --- | --- | ---")
    for r in rows:
        print("| " + " | ".join(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
