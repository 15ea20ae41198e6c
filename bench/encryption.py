#!/usr/bin/python3
"""make bench, encryption row: a full backup with <encryption
format='luks'> (AES-XTS clusters, the key a libvirt secret) next to the
same full backup without it, of one disk:

  - time: encrypted vs plain (target <= 1.3x);
  - restore: a files-only restore of an encrypted backup to raw vs
    `qemu-img convert` of the same file with the secret (target <= 1.2x).

The disk (raw, the vda of a shut-off qemu:///system domain: the test
driver keeps no secrets): the compression row's mixed layout, made by
bench/compression.py's make_disk (runs of text, binaries and random bytes
between holes). Every encrypted backup is checked with qemu-img compare
(with the secret) against the disk.

Environment: LIBVIRT_BACKUP_LIB (the library), LIBVIRT_BACKUP_DIR (catalog),
BENCH_DIR (work folder), BENCH_ENCRYPT_MB (data, 1024), BENCH_ENCRYPT_RUNS
(3: median and minimum)."""

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from ctypes import c_char_p, c_int, c_size_t, c_uint, c_void_p

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compression import MiB, fail, lib, make_disk, restore_times, row, virt  # noqa: E402

for name, res, args in [
    ("virSecretDefineXML", c_void_p, [c_void_p, c_char_p, c_uint]),
    ("virSecretSetValue", c_int, [c_void_p, c_char_p, c_size_t, c_uint]),
    ("virSecretUndefine", c_int, [c_void_p]),
    ("virSecretFree", c_int, [c_void_p]),
]:
    f = getattr(virt, name)
    f.restype, f.argtypes = res, args

KEY = b"bench passphrase"


def backup(dom, disk, target, secret):
    """A full backup of `dom` to `target`, encrypted with `secret` or not:
    seconds."""
    e = (f"<encryption format='luks'><secret type='passphrase' uuid='{secret}'/>"
         "</encryption>") if secret else ""
    xml = (f"<domainbackup><disks>{e}<disk name='vda'><target file='{target}'/></disk>"
           "</disks></domainbackup>")
    os.sync()
    t = time.monotonic()
    b = lib.virDomainBackupCreateXML(dom, xml.encode(), 1 << 2)
    t = time.monotonic() - t
    if not b:
        fail("backup")
    if secret:
        subprocess.run(["qemu-img", "compare", "-q", "--object",
                        "secret,id=s0,data=" + KEY.decode(), "--image-opts",
                        f"driver=qcow2,file.filename={target},encrypt.key-secret=s0",
                        f"driver=raw,file.filename={disk}"], check=True)
    lib.virDomainBackupDelete(b, 0)
    lib.virDomainBackupFree(b)
    return t


def main():
    data = int(os.environ.get("BENCH_ENCRYPT_MB", "1024")) * MiB
    runs = max(1, int(os.environ.get("BENCH_ENCRYPT_RUNS", "3")))
    work = tempfile.mkdtemp(prefix="encrypt-", dir=os.environ.get("BENCH_DIR") or None)
    os.chmod(work, 0o755)
    conn = virt.virConnectOpen(b"qemu:///system")
    if not conn:
        sys.exit("bench: qemu:///system is not reachable (scripts/start-libvirtd.sh)")
    sid = str(uuid.uuid4())
    secret = virt.virSecretDefineXML(conn, (
        f"<secret ephemeral='yes' private='no'><uuid>{sid}</uuid>"
        f"<usage type='volume'><volume>bench-{sid}</volume></usage></secret>").encode(), 0)
    dom = None
    try:
        if not secret or virt.virSecretSetValue(secret, KEY, len(KEY), 0) != 0:
            sys.exit("bench: cannot define the secret")
        disk = os.path.join(work, "mixed.raw")
        make_disk(disk, data)
        dom = virt.virDomainDefineXML(conn, (
            f"<domain type='qemu'><name>bench-encrypt-{sid[:8]}</name>"
            "<memory>65536</memory><os><type arch='x86_64'>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>").encode())
        if not dom:
            sys.exit("bench: cannot define the domain")
        target = os.path.join(work, "full.qcow2")
        res = {"enc": [], "plain": []}
        for i in range(runs):
            sides = ["enc", "plain"] if i % 2 == 0 else ["plain", "enc"]
            for side in sides:
                res[side].append(backup(dom, disk, target, sid if side == "enc" else None))

        enc = (f"<encryption format='luks'><secret type='passphrase' uuid='{sid}'/>"
               "</encryption>")
        restores = [restore_times(dom, disk, work, enc, lambda t: [
            "--object", "secret,id=s0,data=" + KEY.decode(), "--image-opts",
            f"driver=qcow2,file.filename={t},encrypt.key-secret=s0"]) for _ in range(runs)]

        def med(v):
            return sorted(v)[len(v) // 2]
        print(f"\nencryption: full backups of a mixed disk, {data // MiB} MiB data, "
              f"median of {runs} runs\n")
        print(f"| {'row':<64} | {'ours':>14} | {'peer':>14} | {'ratio':>6} | {'target':>7} "
              "| notes")
        row("encrypted (LUKS aes-xts) full backup time vs plain full backup",
            med(res["enc"]), med(res["plain"]), 1.3, " s",
            f"min {min(res['enc']):.3f}/{min(res['plain']):.3f} s")
        r_o, r_p = [r[0] for r in restores], [r[1] for r in restores]
        row("encrypted backup restored (files only, raw) vs qemu-img convert of it + sync",
            med(r_o), med(r_p), 1.2, " s", f"min {min(r_o):.3f}/{min(r_p):.3f} s")
    finally:
        if dom:
            virt.virDomainUndefine(dom)
            virt.virDomainFree(dom)
        if secret:
            virt.virSecretUndefine(secret)
            virt.virSecretFree(secret)
        virt.virConnectClose(conn)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
