#!/usr/bin/python3
"""make bench, last rows: time from virDomainBackupRestore to the restored
domain running, instant (VIR_DOMAIN_BACKUP_RESTORE_INSTANT | START: qcow2
overlays on the backup) next to a full restore (NEW_DOMAIN | START: every
byte copied, synced) of the same backup of a 16 GiB sparse disk on a TCG
domain of qemu:///system. Both restored disks are checked with qemu-img
compare against the backup.

Environment: LIBVIRT_BACKUP_LIB (the library), LIBVIRT_BACKUP_DIR (catalog),
BENCH_DIR (work folder), BENCH_INSTANT_SIZE_GB (16), BENCH_INSTANT_DATA_MB
(1024), BENCH_INSTANT_RUNS (3: best of; a full restore copies every byte)."""

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from ctypes import c_char_p, c_int, c_uint, c_void_p

lib = ctypes.CDLL(os.environ["LIBVIRT_BACKUP_LIB"])
virt = ctypes.CDLL("libvirt.so.0")
for so, name, res, args in [
    (lib, "virDomainBackupCreateXML", c_void_p, [c_void_p, c_char_p, c_uint]),
    (lib, "virDomainBackupRestore", c_int, [c_char_p, c_uint]),
    (lib, "virDomainBackupDelete", c_int, [c_void_p, c_uint]),
    (lib, "virDomainBackupFree", c_int, [c_void_p]),
    (lib, "virDomainBackupObjGetXMLDesc", c_void_p, [c_void_p, c_uint]),
    (lib, "virDomainBackupGetLastErrorMessage", c_char_p, []),
    (virt, "virConnectOpen", c_void_p, [c_char_p]),
    (virt, "virConnectClose", c_int, [c_void_p]),
    (virt, "virDomainDefineXML", c_void_p, [c_void_p, c_char_p]),
    (virt, "virDomainLookupByName", c_void_p, [c_void_p, c_char_p]),
    (virt, "virDomainIsActive", c_int, [c_void_p]),
    (virt, "virDomainDestroy", c_int, [c_void_p]),
    (virt, "virDomainUndefine", c_int, [c_void_p]),
    (virt, "virDomainFree", c_int, [c_void_p]),
]:
    f = getattr(so, name)
    f.restype, f.argtypes = res, args

# Lookups of removed domains are expected to fail: keep libvirt quiet (the
# callback lives as long as the module).
QUIET = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)(lambda _u, _e: None)
virt.virSetErrorFunc.restype = None

NEW_DOMAIN, INSTANT, START = 1 << 0, 1 << 2, 1 << 3
DELETE_ALL = 1 << 0
GiB, MiB = 1 << 30, 1 << 20


def sh(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def fail(what):
    msg = lib.virDomainBackupGetLastErrorMessage()
    sys.exit(f"bench: {what}: {msg.decode() if msg else '?'}")


def drop(conn, name):
    d = virt.virDomainLookupByName(conn, name.encode())
    if d:
        if virt.virDomainIsActive(d) == 1:
            virt.virDomainDestroy(d)
        virt.virDomainUndefine(d)
        virt.virDomainFree(d)


def timed_restore(conn, xml, flags, name, start):
    """Seconds from the call to the domain defined (`start`: running)."""
    os.sync()
    t0 = time.monotonic()
    if lib.virDomainBackupRestore(xml.encode(), flags) != 0:
        fail("restore")
    d = virt.virDomainLookupByName(conn, name.encode())
    running = d and virt.virDomainIsActive(d) == int(start)
    t = time.monotonic() - t0
    if d:
        virt.virDomainFree(d)
    if not running:
        sys.exit(f"bench: {name} is not defined (running: {start}) after the restore")
    return t


def same(a, b):
    r = subprocess.run(["qemu-img", "compare", "-q", "-U", a, b])
    if r.returncode != 0:
        sys.exit(f"bench: MISMATCH: {a} differs from {b}")


def main():
    size = int(os.environ.get("BENCH_INSTANT_SIZE_GB", "16")) * GiB
    data = int(os.environ.get("BENCH_INSTANT_DATA_MB", "1024")) * MiB
    runs = int(os.environ.get("BENCH_INSTANT_RUNS", "3"))
    work = tempfile.mkdtemp(prefix="instant-", dir=os.environ.get("BENCH_DIR") or None)
    virt.virSetErrorFunc(None, QUIET)
    conn = virt.virConnectOpen(b"qemu:///system")
    if not conn:
        sys.exit("bench: qemu:///system is not reachable")
    tag = uuid.uuid4().hex[:8]
    src_name = f"lvb-bench-instant-{tag}"
    names = []
    try:
        disk = os.path.join(work, "disk.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", disk, str(size))
        # 16 MiB runs spread over the whole disk.
        step, run = size // (data // (16 * MiB)), 16 * MiB
        cmds = []
        for i in range(data // run):
            cmds += ["-c", f"write -q -P {0x10 + i % 200} {i * step} {run}"]
        sh("qemu-io", "-f", "qcow2", *cmds, disk)
        dom = virt.virDomainDefineXML(conn, (
            f"<domain type='qemu'><name>{src_name}</name><memory>65536</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>").encode())
        if not dom:
            sys.exit("bench: cannot define the domain")
        full = os.path.join(work, "full.qcow2")
        b = lib.virDomainBackupCreateXML(dom, (
            f"<domainbackup><disks><disk name='vda'><target file='{full}'/></disk></disks>"
            "</domainbackup>").encode(), 1 << 2)
        if not b:
            fail("backup")
        buuid = ctypes.string_at(lib.virDomainBackupObjGetXMLDesc(b, 0)).decode()
        buuid = buuid.split("<uuid>")[1].split("</uuid>")[0]
        best = {}
        for i in range(runs):
            order = [(k, s) for k in ("instant", "full") for s in (False, True)]
            for kind, start in (order if i % 2 == 0 else order[::-1]):
                name = f"{src_name}-{kind}-{int(start)}-{i}"
                names.append(name)
                target = os.path.join(work, f"{name}-vda.qcow2")
                xml = (f"<domainbackup><uuid>{buuid}</uuid><domain name='{name}'/>"
                       f"<disks><disk name='vda'><target file='{target}'/></disk></disks>"
                       "</domainbackup>")
                flags = NEW_DOMAIN | (START if start else 0)
                flags |= INSTANT if kind == "instant" else 0
                t = timed_restore(conn, xml, flags, name, start)
                key = (kind, start)
                best[key] = min(best.get(key, t), t)
                same(full, target)
                drop(conn, name)
                os.unlink(target)
        lib.virDomainBackupDelete(b, DELETE_ALL)
        lib.virDomainBackupFree(b)
        virt.virDomainFree(dom)
        what = f"{size // GiB} GiB disk, {data // MiB} MiB data; "
        for start, label, target in ((False, "instant vs full restore, domain defined", 1.0),
                                     (True, "instant vs full restore, domain running", None)):
            ours, peer = best[("instant", start)], best[("full", start)]
            verdict = "" if target is None else ("met; " if ours < target else "MISSED; ")
            print(f"| {label:<48} | {ours:8.3f} s | {peer:8.3f} s | {ours / peer:6.3f}x "
                  f"| {'< 1 s' if target else '-':>8} | {verdict}{what}best of {runs}", flush=True)
    finally:
        for n in names + [src_name]:
            drop(conn, n)
        virt.virConnectClose(conn)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
