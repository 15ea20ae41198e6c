"""Compressed backups (<compression type='zstd|zlib|none'/>): qcow2 images of
compressed clusters that QEMU's own tools read. A shut-off and a running
QEMU domain backed up with zstd, then an incremental with zstd, then one
with zlib; every backup `qemu-img check` clean, of the compression type
asked, smaller than its data, equal (qemu-img compare) to a copy of the
disk taken when it was made, and verified; a flipped byte inside a
compressed cluster fails Verify naming the disk and the offset; restores
(files only, new domain, instant) byte-exact; a compressed parent deleted
with a merge keeps its child exact; unknown compressions, compression of a
raw target, <encryption> of a secret that does not exist, <compression>
with <encryption> (QEMU leaves compressed clusters in clear) and other
encryption formats refused with nothing written."""

import json
import os
import struct
import subprocess
import uuid as uuidlib

from conftest import (CREATE_WAIT, MiB, RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED,
                      VIR_ERR_XML_ERROR, _decl, assert_byte_exact, backing_chain, backup_uuid,
                      count_backups, create_fails, delete, disk_element, expect_error, img_info,
                      lib, live_snapshot, lookup_domain, restore, restore_xml_for, run, virt,
                      write_disk)
from ctypes import c_int, c_uint, c_void_p

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
VIR_ERR_CONFIG_UNSUPPORTED = 67
VIR_ERR_NO_SECRET = 66
FILES_ONLY = 1 << 4
INSTANT = 1 << 2
SIZE = 32 * MiB


def xml(targets, comp=None, parent=None, per_disk=None, extra=""):
    """A create document: `targets` {disk: path}; `comp` on <disks>,
    `per_disk` {disk: type} on each <disk>; `extra` inside <disks>."""
    parts = ["<domainbackup>"]
    if parent:
        parts.append(f"<parent><uuid>{parent}</uuid></parent>")
    parts.append("<disks>")
    if comp:
        parts.append(f"<compression type='{comp}'/>")
    parts.append(extra)
    for d, t in targets.items():
        fmt = "raw" if t.endswith(".raw") else "qcow2"
        c = (per_disk or {}).get(d)
        parts.append(f"<disk name='{d}'><target file='{t}'/><driver type='{fmt}'/>"
                     + (f"<compression type='{c}'/>" if c else "") + "</disk>")
    parts.append("</disks></domainbackup>")
    return "".join(parts)


def mixed_disk(env, name, size=SIZE):
    """A qcow2 disk of text (files of /usr/share), random bytes and holes."""
    raw = env.path(name + ".src.raw")
    text = bytearray()
    for root, _, files in os.walk("/usr/share/common-licenses"):
        for f in sorted(files):
            with open(os.path.join(root, f), "rb") as fh:
                text += fh.read()
    with open(raw, "wb") as fh:
        fh.truncate(size)
        fh.seek(0)
        while fh.tell() < 8 * MiB:
            fh.write(text)
        fh.seek(12 * MiB)
        fh.write(os.urandom(1 * MiB))
        fh.seek(20 * MiB)
        fh.write(b"\x5a" * (2 * MiB))
    out = env.path(name)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])
    os.unlink(raw)
    return out


def data_bytes(path):
    """Bytes of guest data a qcow2 image holds itself (qemu-img map)."""
    r = run(["qemu-img", "map", "--output=json", "-f", "qcow2", path])
    return sum(e["length"] for e in json.loads(r.stdout) if e["data"] and e["depth"] == 0)


def check_backup(b, target, want, want_fmt, comp):
    """qemu-img check clean, compression type, exact, smaller, verified,
    and the description shows <compression>."""
    r = subprocess.run(["qemu-img", "check", "-f", "qcow2", target],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout
    info = img_info(target)
    assert info["format-specific"]["data"]["compression-type"] == comp
    assert_byte_exact(target, "qcow2", want, want_fmt)
    assert os.path.getsize(target) < data_bytes(target), "compressible data shrinks"
    el = disk_element(b).find("compression")
    assert el is not None and el.get("type") == comp
    assert lib.virDomainBackupVerify(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()


def first_compressed(target):
    """Host offset and length of the first compressed cluster of a qcow2
    image of 64 KiB clusters (its L2 entry, per the qcow2 spec)."""
    with open(target, "rb") as f:
        h = f.read(112)
        l1_off = struct.unpack(">Q", h[40:48])[0]
        f.seek(l1_off)
        l2_off = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
        f.seek(l2_off)
        entries = struct.unpack(">8192Q", f.read(65536))
    for i, e in enumerate(entries):
        if e & (1 << 62):
            off = e & ((1 << 54) - 1)
            sectors = ((e >> 54) & 0xFF) + 1
            return i, off, sectors * 512 - (off & 511)
    raise AssertionError("no compressed cluster")


def test_shut_off_domain_zstd_then_zlib_restore_merge(qenv):
    env = qenv
    vda = mixed_disk(env, "off-vda.qcow2")
    dom = env.qemu_domain(disks=[("vda", vda, "qcow2")], start=False)
    t0 = env.snapshot(vda, "t0.qcow2")
    full_t = env.path("full.qcow2")
    full = env.backup(dom, xml({"vda": full_t}, comp="zstd"))
    u0 = backup_uuid(full)
    check_backup(full, full_t, t0, "qcow2", "zstd")
    # Much smaller than the plain copy a backup without <compression> makes.
    plain_t = env.path("plain.qcow2")
    plain = env.backup(dom, xml({"vda": plain_t}))
    assert os.path.getsize(full_t) < os.path.getsize(plain_t) // 2
    assert disk_element(plain).find("compression") is None
    delete(plain)

    write_disk(vda, "qcow2", [(1 * MiB, 3 * MiB, 0x21), (30 * MiB, 64 * 1024, 0x22)])
    t1 = env.snapshot(vda, "t1.qcow2")
    inc_t = env.path("inc.qcow2")
    inc = env.backup(dom, xml({"vda": inc_t}, parent=u0, per_disk={"vda": "zstd"}))
    u1 = backup_uuid(inc)
    check_backup(inc, inc_t, t1, "qcow2", "zstd")
    assert backing_chain(inc_t) == [inc_t, full_t]
    # Only the changed clusters: 3 MiB + 64 KiB of one byte each.
    assert data_bytes(inc_t) == 3 * MiB + 64 * 1024

    write_disk(vda, "qcow2", [(5 * MiB, 1 * MiB, 0x33)])
    t2 = env.snapshot(vda, "t2.qcow2")
    z_t = env.path("zlib.qcow2")
    zb = env.backup(dom, xml({"vda": z_t}, comp="zlib", parent=u1))
    uz = backup_uuid(zb)
    check_backup(zb, z_t, t2, "qcow2", "zlib")

    # Restores read the chain through the library's zstd and zlib readers.
    for u, want in ((u0, t0), (u1, t1), (uz, t2)):
        out = env.path(f"out-{u}.raw")
        restore(restore_xml_for(u, {"vda": (out, "raw")}), FILES_ONLY)
        assert_byte_exact(out, "raw", want, "qcow2")
    name = env.expect_domain(f"{dom.name}-restore-{u1[:8]}", env.qemu)
    restore(restore_xml_for(u1), RESTORE_NEW_DOMAIN)
    new = lookup_domain(env.qemu, name)
    assert new
    virt.virDomainFree(new)
    restored = env.path(f"{name}-vda.qcow2")
    assert os.path.exists(restored), os.listdir(env.tmp)
    assert_byte_exact(restored, "qcow2", t1, "qcow2")
    iname = "lvb-pytest-instant-" + uuidlib.uuid4().hex[:8]
    env.expect_domain(iname, env.qemu)
    restore(restore_xml_for(u1, domain=iname), RESTORE_NEW_DOMAIN | INSTANT)
    overlay = env.path(f"{iname}-vda.qcow2")
    assert_byte_exact(overlay, "qcow2", t1, "qcow2")
    new = lookup_domain(env.qemu, iname)
    assert virt.virDomainUndefine(new) == 0
    virt.virDomainFree(new)

    # Deleting the compressed full merges it into its child, which stays
    # compressed, exact and verified.
    delete(full)
    assert backing_chain(inc_t) == [inc_t]
    check_backup(inc, inc_t, t1, "qcow2", "zstd")
    check_backup(zb, z_t, t2, "qcow2", "zlib")


def test_flipped_byte_in_a_compressed_cluster_fails_verify(qenv):
    env = qenv
    vda = mixed_disk(env, "flip-vda.qcow2")
    dom = env.qemu_domain(disks=[("vda", vda, "qcow2")], start=False)
    t = env.path("flip.qcow2")
    b = env.backup(dom, xml({"vda": t}, comp="zstd"))
    assert lib.virDomainBackupVerify(b, 0) == 0
    cluster, off, length = first_compressed(t)
    with open(t, "r+b") as f:
        f.seek(off + length // 2)
        byte = f.read(1)[0]
        f.seek(off + length // 2)
        f.write(bytes([byte ^ 0x40]))
    assert lib.virDomainBackupVerify(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "vda")
    msg = lib.virDomainBackupGetLastErrorMessage().decode()
    assert "offset" in msg and str(cluster * 65536) in msg, msg


def test_running_domain_zstd_then_incremental(qenv):
    env = qenv
    dom = env.qemu_domain(size=SIZE, writes=[(0, 4 * MiB, 0xAB), (16 * MiB, 1 * MiB, 0x5A)])
    vda = dom.disks[0][1]
    full_t = env.path("live-full.qcow2")
    t0 = live_snapshot(vda, "qcow2", env.path("live-t0.raw"))
    full = env.backup(dom, xml({"vda": full_t}, comp="zstd"))
    check_backup(full, full_t, t0, "raw", "zstd")
    dom.guest_io("write -P 0xcd 8M 2M")
    t1 = live_snapshot(vda, "qcow2", env.path("live-t1.raw"))
    inc_t = env.path("live-inc.qcow2")
    inc = env.backup(dom, xml({"vda": inc_t}, comp="zstd", parent=backup_uuid(full)))
    check_backup(inc, inc_t, t1, "raw", "zstd")
    assert backing_chain(inc_t) == [inc_t, full_t]
    dom.guest_io("write -P 0xce 9M 1M")
    t2 = live_snapshot(vda, "qcow2", env.path("live-t2.raw"))
    z_t = env.path("live-zlib.qcow2")
    zb = env.backup(dom, xml({"vda": z_t}, comp="zlib", parent=backup_uuid(inc)))
    check_backup(zb, z_t, t2, "raw", "zlib")


ENC = ("<encryption format='luks'><secret type='passphrase' "
       "uuid='00000000-0000-0000-0000-000000000001'/></encryption>")


def test_refusals_write_nothing(env):
    dom = env.domain(fmt="qcow2", size=8 * MiB)
    before = env.files()
    t = env.path("r.qcow2")
    for doc, code, frag in (
            (xml({"vda": t}, comp="lz77"), VIR_ERR_XML_ERROR, "lz77"),
            (xml({"vda": t}, per_disk={"vda": "lz77"}), VIR_ERR_XML_ERROR, "zstd, zlib or none"),
            (xml({"vda": env.path("r.raw")}, comp="zstd"), VIR_ERR_CONFIG_UNSUPPORTED,
             "raw target"),
            (xml({"vda": t}, extra=ENC), VIR_ERR_NO_SECRET, "secret not found"),
            (xml({"vda": t}, comp="zstd", extra=ENC), VIR_ERR_CONFIG_UNSUPPORTED,
             "compressed clusters would be stored in clear"),
            (xml({"vda": t}, per_disk={"vda": "zlib"}, extra=ENC), VIR_ERR_CONFIG_UNSUPPORTED,
             "<compression> and <encryption> together"),
            (xml({"vda": t}, extra=ENC.replace("luks", "qcow")), VIR_ERR_CONFIG_UNSUPPORTED,
             "'luks' only")):
        create_fails(dom, doc, CREATE_WAIT, code, frag)
        assert count_backups(dom) == 0
        assert env.files() == before
