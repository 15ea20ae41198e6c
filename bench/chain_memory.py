#!/usr/bin/python3
"""Peak memory of a restore against the depth of the backup's chain.

For each depth: a shut-off domain of test:///default with one sparse disk
(its first 32 MiB hold data, so every copy window is used at any depth)
gets a full backup and depth-1 incrementals (one changed 64 KiB cluster
each); then a fresh process defines the same domain (test:///default keeps
its state per process; the catalog is keyed by the domain's UUID), restores
the leaf to a new raw file and reports its peak resident memory (VmHWM)
before the restore (reset to what it holds then) and after it. The
restored file is checked against the disk with qemu-img compare.

usage: LIBVIRT_BACKUP_LIB=build/libvirt-backup.so.0 bench/chain_memory.py [DEPTH...]
(default depths: 10 200; BENCH_CHAIN_SIZE_MB: disk size, 256)."""

import ctypes
import os
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from ctypes import c_char_p, c_int, c_uint, c_void_p

lib = ctypes.CDLL(os.environ["LIBVIRT_BACKUP_LIB"])
virt = ctypes.CDLL("libvirt.so.0")
libc = ctypes.CDLL(None)
for so, name, res, args in [
    (lib, "virDomainBackupCreateXML", c_void_p, [c_void_p, c_char_p, c_uint]),
    (lib, "virDomainBackupRestore", c_int, [c_char_p, c_uint]),
    (lib, "virDomainBackupFree", c_int, [c_void_p]),
    (lib, "virDomainBackupGetLastErrorMessage", c_char_p, []),
    (lib, "virDomainBackupObjGetXMLDesc", c_void_p, [c_void_p, c_uint]),
    (virt, "virConnectOpen", c_void_p, [c_char_p]),
    (virt, "virDomainDefineXML", c_void_p, [c_void_p, c_char_p]),
]:
    f = getattr(so, name)
    f.restype, f.argtypes = res, args

WAIT = 1 << 2
MiB, K64 = 1 << 20, 64 << 10


def fail(what):
    msg = lib.virDomainBackupGetLastErrorMessage()
    sys.exit(f"chain_memory: {what}: {msg.decode() if msg else '?'}")


def domain_xml(name, dom_uuid, disk):
    return (f"<domain type='test'><name>{name}</name><uuid>{dom_uuid}</uuid>"
            "<memory>65536</memory><os><type>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{disk}'/><target dev='vda'/></disk></devices></domain>")


def define(xml):
    conn = virt.virConnectOpen(b"test:///default")
    dom = virt.virDomainDefineXML(conn, xml.encode())
    if not dom:
        sys.exit("chain_memory: cannot define the domain")
    return dom


def backup_uuid(b):
    p = lib.virDomainBackupObjGetXMLDesc(b, 0)
    if not p:
        fail("XML description")
    xml = ctypes.string_at(p).decode()
    libc.free(ctypes.c_void_p(p))
    return ET.fromstring(xml).findtext("uuid").strip()


def build(work, depth, size_mb):
    disk = os.path.join(work, "vda.raw")
    with open(disk, "wb") as f:
        f.truncate(size_mb * MiB)
        f.write(b"\x11" * (32 * MiB))
    xml = domain_xml("chainmem-" + uuid.uuid4().hex[:8], uuid.uuid4(), disk)
    dom = define(xml)
    parent = None
    for level in range(depth):
        with open(disk, "r+b") as f:
            f.seek((level * K64) % (size_mb * MiB))
            f.write(bytes([level % 250 + 1]) * K64)
        doc = ("<domainbackup/>" if parent is None else
               f"<domainbackup><parent><uuid>{parent}</uuid></parent></domainbackup>")
        b = lib.virDomainBackupCreateXML(dom, doc.encode(), WAIT)
        if not b:
            fail(f"backup at level {level}")
        parent = backup_uuid(b)
        lib.virDomainBackupFree(b)
    return xml, parent, disk


def restore_child(xml, leaf, out):
    """In the fresh process: define the domain, restore, print the peaks."""
    define(xml)
    # Reset the peak (VmHWM) to what the process holds now.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm("VmHWM")
    t0 = time.monotonic()
    doc = (f"<domainbackup><uuid>{leaf}</uuid><disks><disk name='vda'>"
           f"<target file='{out}'/><driver type='raw'/></disk></disks></domainbackup>")
    if lib.virDomainBackupRestore(doc.encode(), 0) != 0:
        fail("restore")
    print(before, vm("VmHWM"), time.monotonic() - t0)


def vm(field):
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--restore":
        return restore_child(*sys.argv[2:])
    depths = [int(a) for a in sys.argv[1:]] or [10, 200]
    size_mb = int(os.environ.get("BENCH_CHAIN_SIZE_MB", "256"))
    print(f"| restore of a {size_mb} MiB disk, chain depth | peak RSS before | "
          "peak RSS after | growth | restore time |")
    print("| --- | --- | --- | --- | --- |")
    for depth in depths:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as work:
            os.environ["LIBVIRT_BACKUP_DIR"] = os.path.join(work, "catalog")
            xml, leaf, disk = build(work, depth, size_mb)
            out = os.path.join(work, "restored.raw")
            r = subprocess.run([sys.executable, __file__, "--restore", xml, leaf, out],
                               check=True, stdout=subprocess.PIPE, text=True)
            before, after, secs = r.stdout.split()
            before, after = int(before), int(after)
            subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", disk, out],
                           check=True)
            print(f"| {depth} | {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | "
                  f"{(after - before) / 1024:.1f} MiB | {float(secs):.2f} s |")


main()
