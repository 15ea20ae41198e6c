#!/usr/bin/python3
"""make bench, compression rows: a full backup with <compression
type='zstd'/> of a mixed disk next to `qemu-img convert -c -O qcow2 -o
compression_type=zstd` + sync of the same disk:

  - time: ours vs the convert (target <= 1.2x);
  - stored size: ours vs the convert's output (target within 10 %:
    <= 1.1x);
  - stored size: ours vs our own uncompressed full backup (target <= 0.5x);
  - the same time and size rows with zlib, for reference (no target).

The disk (raw, the vda of an inactive test:///default domain, virtual size
twice its data; make_root_disk): an ext4 root file system built by
mkfs.ext4 -d from the packages installed on this machine (7/8 of the data:
/usr/share's text, /usr/bin's and /usr/lib/x86_64-linux-gnu's binaries and
libraries, half each), then the bench's layouts filled with random bytes,
which do not compress (1/8: one long run, then 64 KiB runs a MiB apart),
holes between. Every backup and every convert is checked with qemu-img
compare against the disk. (make_disk, the encryption rows' disk: the
same files' contents concatenated into scattered runs, every eighth run
random.)

Environment: LIBVIRT_BACKUP_LIB (the library), LIBVIRT_BACKUP_DIR (catalog),
BENCH_DIR (work folder), BENCH_COMPRESS_MB (data, 1024), BENCH_COMPRESS_RUNS
(3: median and minimum)."""

import ctypes
import os
import random
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
    (lib, "virDomainBackupDelete", c_int, [c_void_p, c_uint]),
    (lib, "virDomainBackupRestore", c_int, [c_char_p, c_uint]),
    (lib, "virDomainBackupGetUUIDString", c_int, [c_void_p, c_char_p]),
    (lib, "virDomainBackupFree", c_int, [c_void_p]),
    (lib, "virDomainBackupGetLastErrorMessage", c_char_p, []),
    (virt, "virConnectOpen", c_void_p, [c_char_p]),
    (virt, "virConnectClose", c_int, [c_void_p]),
    (virt, "virDomainDefineXML", c_void_p, [c_void_p, c_char_p]),
    (virt, "virDomainUndefine", c_int, [c_void_p]),
    (virt, "virDomainFree", c_int, [c_void_p]),
]:
    f = getattr(so, name)
    f.restype, f.argtypes = res, args

MiB = 1 << 20


def fail(what):
    msg = lib.virDomainBackupGetLastErrorMessage()
    sys.exit(f"bench: {what}: {msg.decode() if msg else '?'}")


def corpus(limit):
    """Up to `limit` bytes of the files under /usr/share and /usr/lib."""
    out, n = [], 0
    for top in ("/usr/share", "/usr/lib"):
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                try:
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    with open(p, "rb") as fh:
                        b = fh.read(limit - n)
                except OSError:
                    continue
                out.append(b)
                n += len(b)
                if n >= limit:
                    return b"".join(out)
    return b"".join(out)


def make_disk(path, data):
    """Scattered runs of the corpus (every eighth random) in 2x `data`."""
    text = corpus(min(data, 512 * MiB))
    rnd = random.Random(88172645463325252)
    pos, written, k, t = 0, 0, 0, 0
    with open(path, "wb") as fh:
        fh.truncate(2 * data)
        while written < data:
            run = min((1 + rnd.randrange(16)) * MiB, data - written)
            gap = (1 + rnd.randrange(16)) * MiB
            if pos + run > 2 * data:
                pos = written
            fh.seek(pos)
            if k % 8 == 7:
                fh.write(os.urandom(run))
            else:
                left = run
                while left:
                    piece = text[t:t + left] or text[:left]
                    t = (t + len(piece)) % len(text)
                    fh.write(piece)
                    left -= len(piece)
            written += run
            pos += run + gap
            k += 1
        os.fsync(fh.fileno())


def stage_files(stage, tops, budget):
    """Hard links (copies across file systems) in `stage` of the files
    under `tops`, in sorted order, up to `budget` bytes: bytes staged."""
    n = 0
    for top in tops:
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                if n + size > budget:
                    continue
                dst = os.path.join(stage, os.path.relpath(p, "/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    os.link(p, dst)
                except OSError:
                    try:
                        shutil.copyfile(p, dst)
                    except OSError:
                        continue
                n += size
                if n >= budget:
                    return n
    return n


def make_root_disk(path, data):
    """A disk as a guest's: an ext4 file system built by mkfs.ext4 -d from
    this machine's installed packages (7/8 of `data`: half /usr/share, half
    the binaries and libraries of /usr/bin and /usr/lib/x86_64-linux-gnu),
    then the bench's layouts of random bytes (which do not compress; 1/8
    of `data`: one long run, then 64 KiB runs every MiB), holes between;
    virtual size twice `data`."""
    work = os.path.dirname(path)
    stage = tempfile.mkdtemp(prefix="root-", dir=work)
    try:
        fs = data * 7 // 8
        n = stage_files(stage, ["/usr/share"], fs // 2)
        n += stage_files(stage, ["/usr/bin", "/usr/lib/x86_64-linux-gnu"], fs - n)
        # Room for the file system's metadata and some free space.
        fs_size = (n * 5 // 4 + 64 * MiB) // MiB * MiB
        with open(path, "wb") as fh:
            fh.truncate(fs_size)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", stage, path], check=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    long_run, small = data // 16, data // 16 // (64 << 10)
    with open(path, "r+b") as fh:
        fh.truncate(max(2 * data, fs_size + 2 * MiB + long_run + small * MiB))
        pos = fs_size + MiB
        fh.seek(pos)
        fh.write(os.urandom(long_run))
        pos += long_run + MiB
        for _ in range(small):
            fh.seek(pos)
            fh.write(os.urandom(64 << 10))
            pos += MiB
        os.fsync(fh.fileno())


def same(a, fa, b):
    subprocess.run(["qemu-img", "compare", "-q", "-f", fa, "-F", "raw", a, b], check=True)


def ours(dom, disk, target, comp):
    """A full backup of `dom` to `target`: seconds and stored bytes."""
    c = f"<compression type='{comp}'/>" if comp else ""
    xml = (f"<domainbackup><disks>{c}<disk name='vda'><target file='{target}'/></disk>"
           "</disks></domainbackup>")
    os.sync()
    t = time.monotonic()
    b = lib.virDomainBackupCreateXML(dom, xml.encode(), 1 << 2)
    t = time.monotonic() - t
    if not b:
        fail("backup")
    size = os.path.getsize(target)
    same(target, "qcow2", disk)
    # Delete removes the target too.
    lib.virDomainBackupDelete(b, 0)
    lib.virDomainBackupFree(b)
    return t, size


def peer(disk, out, comp):
    """`qemu-img convert -c` + sync: seconds and stored bytes."""
    if os.path.exists(out):
        os.unlink(out)
    os.sync()
    t = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                    f"compression_type={comp}", disk, out], check=True)
    subprocess.run(["sync", out], check=True)
    t = time.monotonic() - t
    size = os.path.getsize(out)
    same(out, "qcow2", disk)
    return t, size


def restore_times(dom, disk, work, disks_extra, peer_source):
    """A files-only restore of a backup made with `disks_extra` in its
    <disks> (its <compression> or <encryption>) into a raw file, and
    `qemu-img convert` of the same backup file (`peer_source(path)`: the
    convert's source arguments) to raw + sync: seconds each."""
    target = os.path.join(work, "restore-src.qcow2")
    xml = (f"<domainbackup><disks>{disks_extra}<disk name='vda'>"
           f"<target file='{target}'/></disk></disks></domainbackup>")
    b = lib.virDomainBackupCreateXML(dom, xml.encode(), 1 << 2)
    if not b:
        fail("backup")
    buf = ctypes.create_string_buffer(37)
    lib.virDomainBackupGetUUIDString(b, buf)
    out, peer_out = os.path.join(work, "restored.raw"), os.path.join(work, "converted.raw")
    for f in (out, peer_out):
        if os.path.exists(f):
            os.unlink(f)
    rxml = (f"<domainbackup><uuid>{buf.value.decode()}</uuid><disks><disk name='vda'>"
            f"<target file='{out}'/><driver type='raw'/></disk></disks></domainbackup>")
    os.sync()
    t = time.monotonic()
    if lib.virDomainBackupRestore(rxml.encode(), 1 << 4) != 0:
        fail("restore")
    t_ours = time.monotonic() - t
    os.sync()
    t = time.monotonic()
    subprocess.run(["qemu-img", "convert", *peer_source(target), "-O", "raw", peer_out],
                   check=True)
    subprocess.run(["sync", peer_out], check=True)
    t_peer = time.monotonic() - t
    same(out, "raw", disk)
    same(peer_out, "raw", disk)
    lib.virDomainBackupDelete(b, 0)
    lib.virDomainBackupFree(b)
    os.unlink(out)
    os.unlink(peer_out)
    return t_ours, t_peer


def row(label, a, b, target, unit, notes=""):
    ratio = a / b
    verdict = "" if target is None else ("met; " if ratio <= target else "MISSED; ")
    tgt = "-" if target is None else f"<= {target:.1f}x"
    print(f"| {label:<64} | {a:13.3f}{unit} | {b:13.3f}{unit} | {ratio:5.2f}x | {tgt:>7} "
          f"| {verdict}{notes}", flush=True)


def main():
    data = int(os.environ.get("BENCH_COMPRESS_MB", "1024")) * MiB
    runs = max(1, int(os.environ.get("BENCH_COMPRESS_RUNS", "3")))
    work = tempfile.mkdtemp(prefix="compress-", dir=os.environ.get("BENCH_DIR") or None)
    conn = virt.virConnectOpen(b"test:///default")
    try:
        disk = os.path.join(work, "mixed.raw")
        make_root_disk(disk, data)
        dom = virt.virDomainDefineXML(conn, (
            f"<domain type='test'><name>bench-compress-{uuid.uuid4().hex[:8]}</name>"
            "<memory>65536</memory><os><type>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{disk}'/><target dev='vda'/></disk></devices></domain>").encode())
        if not dom:
            sys.exit("bench: cannot define the domain")
        target = os.path.join(work, "full.qcow2")
        res = {}
        for i in range(runs):
            sides = [("ours", c) for c in ("zstd", "zlib")] + [("peer", c) for c in ("zstd", "zlib")]
            for side, comp in (sides if i % 2 == 0 else sides[::-1]):
                if side == "ours":
                    r = ours(dom, disk, target, comp)
                else:
                    r = peer(disk, os.path.join(work, "peer.qcow2"), comp)
                res.setdefault((side, comp), []).append(r)
        plain = ours(dom, disk, target, None)[1]
        restores = [restore_times(dom, disk, work, "<compression type='zstd'/>",
                                   lambda t: ["-f", "qcow2", t]) for _ in range(runs)]
        virt.virDomainUndefine(dom)
        virt.virDomainFree(dom)

        def med(v):
            return sorted(v)[len(v) // 2]
        what = f"mixed disk, {data // MiB} MiB data"
        print(f"\ncompression: full backups of a {what} (text/binary, 1/8 random), "
              f"median of {runs} runs\n")
        print(f"| {'row':<64} | {'ours':>14} | {'peer':>14} | {'ratio':>6} | {'target':>7} "
              "| notes")
        for comp, target_t, target_s in (("zstd", 1.2, 1.1), ("zlib", None, None)):
            t_o = [r[0] for r in res[("ours", comp)]]
            t_p = [r[0] for r in res[("peer", comp)]]
            s_o, s_p = res[("ours", comp)][0][1], res[("peer", comp)][0][1]
            row(f"{comp} full backup time vs qemu-img convert -c ({comp}) + sync",
                med(t_o), med(t_p), target_t, " s",
                f"min {min(t_o):.3f}/{min(t_p):.3f} s")
            row(f"{comp} stored size vs the same convert's output", s_o / MiB, s_p / MiB,
                target_s, " M")
            row(f"{comp} stored size vs uncompressed backup", s_o / MiB, plain / MiB,
                0.5 if comp == "zstd" else None, " M")
        r_o, r_p = [r[0] for r in restores], [r[1] for r in restores]
        row("zstd backup restored (files only, raw) vs qemu-img convert of it + sync",
            med(r_o), med(r_p), 1.2, " s", f"min {min(r_o):.3f}/{min(r_p):.3f} s")
    finally:
        virt.virConnectClose(conn)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
