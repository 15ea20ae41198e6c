"""CephFS benchmark (`make bench-ceph`): the catalog on CephFS through
ceph-fuse, on the single-node cluster of scripts/ceph-single-node.sh
(`make ceph`; one OSD on a sparse file of the local disk, so the numbers
say what the client path costs, not what a real cluster's network does).

Rows, each with its target:
- a full backup of a BENCH_CEPH_MB (default 1024) MiB raw disk full of
  data into the catalog on CephFS, against `qemu-img convert -O qcow2`
  of the same disk into the same mount followed by `sync` of the file
  (best of BENCH_CEPH_RUNS, default 2, each), target <= 1.5x;
- List of BENCH_CEPH_N (default 10,000) backups of one domain on CephFS,
  warm (best of several calls in one process) < 100 ms, and cold (the
  first call of a new process on the same host) and from the other host
  (mount B, whose client never read the folder) for information.

The 10,000 records are grown from two real backups as `make bench-scale`
grows them (bench/scale.py, `Catalog.fill`), in a folder of mount A.
"""

import os
import shutil
import subprocess
import sys
import time
import uuid as uuidlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import scale  # noqa: E402  (its Catalog, list_call and the conftest bindings)

ct = scale.ct
MiB = 1 << 20
SIZE_MB = int(os.environ.get("BENCH_CEPH_MB", "1024"))
RUNS = int(os.environ.get("BENCH_CEPH_RUNS", "2"))
N = int(os.environ.get("BENCH_CEPH_N", "10000"))
SCRIPT = os.path.join(ROOT, "scripts", "ceph-single-node.sh")


def mounts():
    r = subprocess.run(["sh", SCRIPT, "env"], capture_output=True, text=True, check=True)
    env = dict(line.split("=", 1) for line in r.stdout.split())
    return env["CEPH_MNT_A"], env["CEPH_MNT_B"]


def data_disk(path, size_mb):
    """A raw image with data in every byte (no holes, no zero runs)."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(size_mb):
            f.write(bytes([i & 0xFF]) + block[1:])
    # Read once, so both copies find the source in the page cache.
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass
    return path


def copy_rows(local, on_ceph):
    name = "bench-" + uuidlib.uuid4().hex[:8]
    src = data_disk(os.path.join(local, name + ".raw"), SIZE_MB)
    uri = ct.write_node_file(os.path.join(local, "node.xml"),
                             [(name, str(uuidlib.uuid4()), [("vda", src, "raw")])])
    conn = ct.virt.virConnectOpen(uri.encode())
    dom = ct.virt.virDomainLookupByName(conn, name.encode())
    assert dom, "no bench domain"
    ours, theirs = [], []
    for _ in range(RUNS):
        t = time.perf_counter()
        b = ct.create(dom, "<domainbackup/>")
        ours.append(time.perf_counter() - t)
        ct.delete(b)
        ct.free(b)
        dst = os.path.join(on_ceph, "convert.qcow2")
        t = time.perf_counter()
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", src, dst], check=True)
        subprocess.run(["sync", dst], check=True)
        theirs.append(time.perf_counter() - t)
        os.unlink(dst)
    ct.virt.virDomainFree(dom)
    ct.virt.virConnectClose(conn)
    os.unlink(src)
    a, q = min(ours), min(theirs)
    scale.row(f"full backup of {SIZE_MB} MiB onto CephFS (ceph-fuse)",
              f"{a:.2f} s ({SIZE_MB / a:.0f} MiB/s)", "<= 1.5x qemu-img convert + sync",
              a <= 1.5 * q, f"qemu-img convert + sync: {q:.2f} s; {a / q:.2f}x")


COLD = """
import ctypes, sys, time
sys.path.insert(0, {tests!r})
import conftest as ct
conn = ct.virt.virConnectOpen({uri!r}.encode())
dom = ct.virt.virDomainLookupByUUIDString(conn, {dom!r}.encode())
arr = ct.BackupArray()
t = time.perf_counter()
n = ct.lib.virDomainBackupList(dom, ctypes.byref(arr), 0)
t = time.perf_counter() - t
assert n == {n}, (n, ct.last_error())
print(t)
"""


def cold_list(cat, root):
    """The first List of a new process whose catalog is at `root`."""
    script = COLD.format(tests=os.path.join(ROOT, "python-tests"), uri=cat.uri,
                         dom=cat.uuid, n=len(cat.ids))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, LIBVIRT_BACKUP_DIR=root))
    assert p.returncode == 0, p.stderr
    return float(p.stdout)


def list_rows(work, work_b):
    cat = scale.Catalog(work)
    t = time.perf_counter()
    cat.fill(N)
    print(f"  {N} records written in {time.perf_counter() - t:.0f} s", flush=True)
    first, count = scale.list_call(ct.lib.virDomainBackupList, cat.dom, 0)
    assert count == N, count
    time.sleep(0.15)
    warm = scale.best(lambda: scale.list_call(ct.lib.virDomainBackupList, cat.dom, 0)[0])
    scale.row(f"List, {N} backups on CephFS, warm", scale.ms(warm), "< 100 ms", warm < 0.100,
              f"first call after the records were written: {scale.ms(first)}")
    cold = min(cold_list(cat, cat.root) for _ in range(3))
    scale.row(f"List, {N} backups on CephFS, cold (a new process)", scale.ms(cold),
              "information", True)
    other = cold_list(cat, os.path.join(work_b, "catalog"))
    scale.row(f"List, {N} backups on CephFS, first call from the other host",
              scale.ms(other), "information", True)
    ct.virt.virDomainFree(cat.dom)
    ct.virt.virConnectClose(cat.conn)


def main():
    mnt_a, mnt_b = mounts()
    rel = os.path.join("bench", uuidlib.uuid4().hex[:8])
    work = os.path.join(mnt_a, rel)
    os.makedirs(work, mode=0o755)
    local = os.path.join(os.environ.get("BENCH_DIR", "/var/tmp"), "bench-ceph-" + rel[-8:])
    os.makedirs(local)
    try:
        print(f"libvirt-backup CephFS benchmark: {SIZE_MB} MiB, {N} backups; "
              f"library {ct.LIB_PATH}; catalog in {work}", flush=True)
        os.environ["LIBVIRT_BACKUP_DIR"] = os.path.join(work, "copy-catalog")
        if SIZE_MB:
            copy_rows(local, work)
        if N:
            list_rows(work, os.path.join(mnt_b, rel))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)
    print()
    print("| row | value | target | result | notes")
    print("| --- | --- | --- | --- | ---")
    for r in scale.rows:
        print("| " + " | ".join(r))
    return 0 if all(r[3] == "met" for r in scale.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
