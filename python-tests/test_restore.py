"""virDomainBackupRestore: into the backup's own shut-off domain (all disks
or a subset, in place or to new files, keeping or changing the format), as
a new domain, from any backup of a chain or branch; refusals that touch
nothing; damaged backups caught by the digest index; RestoreUnmanaged from
image files; and a restore into an inactive QEMU domain on qemu:///system."""

import os
import uuid as uuidlib

import pytest

from conftest import (K64, MiB, Nbd, RESTORE_NEW_DOMAIN, RESTORE_REWRITE_EXISTING_DISK,
                      VIR_ERR_INVALID_ARG, VIR_ERR_OPERATION_FAILED, VIR_ERR_OPERATION_INVALID,
                      assert_byte_exact, backup_uuid, backup_xml_for, chain_with_branch,
                      domain_definition, domain_disks, domain_uuid, free_port, img_info,
                      lookup_domain, qemu_io, restore, restore_fails, restore_xml_for, sha256,
                      virt, write_disk)

REWRITE = RESTORE_REWRITE_EXISTING_DISK
MAC = "52:54:00:aa:bb:cc"
NIC = f"<interface type='network'><mac address='{MAC}'/><source network='default'/></interface>"


def check_new_domain(env, name, want, files=None, conn=None):
    """The domain `name` a restore defined: persistent, shut off, its disks
    exactly the ones in `want` ({disk: (image, format) it must equal byte
    for byte}), at `files` ({disk: (path, format)}; default: the qcow2 file
    <tmp>/<name>-<disk>.qcow2). Returns (its UUID, its XML)."""
    files = files or {d: (env.path(f"{name}-{d}.qcow2"), "qcow2") for d in want}
    new = lookup_domain(conn or env.conn, name)
    assert new, f"{name} not defined"
    try:
        assert virt.virDomainIsActive(new) == 0
        assert virt.virDomainIsPersistent(new) == 1
        assert domain_disks(new) == files
        for d, (image, fmt) in want.items():
            assert_byte_exact(files[d][0], files[d][1], image, fmt)
        return domain_uuid(new), domain_definition(new)
    finally:
        virt.virDomainFree(new)


# ------------------------------------------------------------- in place
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_in_place_from_every_backup_of_a_chain_and_branch(env, fmt):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, fmt)
    write_disk(h.src, fmt, [(0, 4 * MiB, 0x66)])
    definition = domain_definition(h.dom)
    before = env.files()
    # Without REWRITE_EXISTING_DISK: refused, nothing touched.
    restore_fails(restore_xml_for(leaf.uuid), 0, VIR_ERR_OPERATION_INVALID)
    assert env.files() == before
    # Out of order, each backup gives back the disk at its time.
    for t in (leaf, full, br, tip, mid):
        restore(restore_xml_for(t.uuid), REWRITE)
        assert_byte_exact(h.src, fmt, t.copy, fmt)
    # Same file, same format: the definition is unchanged.
    assert domain_definition(h.dom) == definition
    assert img_info(h.src)["format"] == fmt


def test_running_domain_refused(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    write_disk(h.src, "raw", [(0, K64, 0x11)])
    assert virt.virDomainCreate(dom) == 0
    before = env.files()
    for flags in (REWRITE, 0):
        restore_fails(restore_xml_for(full.uuid), flags, VIR_ERR_OPERATION_INVALID)
        restore_fails(restore_xml_for(full.uuid, {"vda": env.path("new.qcow2")}), flags,
                      VIR_ERR_OPERATION_INVALID)
    assert env.files() == before
    assert virt.virDomainDestroy(dom) == 0
    restore(restore_xml_for(full.uuid), REWRITE)
    assert_byte_exact(h.src, "raw", full.copy, "raw")


def test_subset_of_disks(env):
    a = env.disk("sub-a.raw", 8 * MiB)
    b = env.disk("sub-b.qcow2", 8 * MiB, "qcow2")
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", b, "qcow2")])
    u = backup_uuid(env.backup(dom, "<domainbackup/>"))
    b0 = env.snapshot(b, "sub-b0.qcow2")
    write_disk(a, "raw", [(0, K64, 0x01)])
    write_disk(b, "qcow2", [(0, K64, 0x02)])
    a_now = sha256(a)
    restore_fails(restore_xml_for(u, {"vdz": None}), REWRITE, VIR_ERR_INVALID_ARG, "vdz")
    restore(restore_xml_for(u, {"vdb": None}), REWRITE)
    assert_byte_exact(b, "qcow2", b0, "qcow2")
    assert sha256(a) == a_now, "vda was not asked for"


# ------------------------------------------------------------ new files
def test_to_a_new_file_repoints_the_disk(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    write_disk(h.src, "raw", [(0, K64, 0x12)])
    old = sha256(h.src)
    out = env.path("elsewhere.qcow2")
    xml = restore_xml_for(full.uuid, {"vda": out})
    restore(xml)
    assert img_info(out)["format"] == "qcow2", "new files are qcow2 by default"
    assert_byte_exact(out, "qcow2", full.copy, "raw")
    assert domain_disks(dom)["vda"] == (out, "qcow2")
    assert sha256(h.src) == old, "the former disk is left alone"
    # Now an existing file: refused without REWRITE, nothing touched.
    write_disk(out, "qcow2", [(0, K64, 0x13)])
    before = env.files()
    restore_fails(xml, 0, VIR_ERR_OPERATION_INVALID)
    assert env.files() == before
    restore(xml, REWRITE)
    assert_byte_exact(out, "qcow2", full.copy, "raw")
    # A raw file elsewhere: byte for byte, at the full virtual size.
    out2 = env.path("elsewhere.raw")
    restore(restore_xml_for(full.uuid, {"vda": (out2, "raw")}))
    assert os.path.getsize(out2) == 8 * MiB
    assert_byte_exact(out2, "raw", full.copy, "raw")
    assert domain_disks(dom)["vda"] == (out2, "raw")


def test_format_change_replaces_the_file(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    write_disk(h.src, "raw", [(0, K64, 0x14)])
    xml = restore_xml_for(full.uuid, {"vda": (None, "qcow2")})
    before = env.files()
    restore_fails(xml, 0, VIR_ERR_OPERATION_INVALID)
    assert env.files() == before
    restore(xml, REWRITE)
    assert img_info(h.src)["format"] == "qcow2"
    assert_byte_exact(h.src, "qcow2", full.copy, "raw")
    assert domain_disks(dom)["vda"] == (h.src, "qcow2")
    assert not [n for n in os.listdir(env.tmp) if n.startswith(".")], "a temporary file is left"


# ----------------------------------------------------------- new domain
def test_as_a_new_domain(env):
    dom = env.domain(fmt="qcow2", size=8 * MiB, devices=NIC)
    h = env.history(dom)
    full = h.take("full")
    inc = h.take("inc", full, [(1 * MiB, K64, 0x21)])
    write_disk(h.src, "qcow2", [(0, K64, 0x22)])
    src_now = sha256(h.src)
    # The backup's own domain may run.
    assert virt.virDomainCreate(dom) == 0
    definition = domain_definition(dom)

    name = env.expect_domain(f"{dom.name}-restore-{inc.uuid[:8]}")
    restore(restore_xml_for(inc.uuid), RESTORE_NEW_DOMAIN)
    # Its disk goes next to the original one (both in env.tmp).
    assert os.path.dirname(h.src) == env.tmp
    uuid, xml = check_new_domain(env, name, {"vda": (inc.copy, "qcow2")})
    assert uuid != dom.uuid
    assert MAC not in xml, "MAC addresses are not copied"
    assert "<interface" in xml
    assert sha256(h.src) == src_now
    assert domain_definition(dom) == definition

    # The name is taken now: refused, nothing created.
    before = env.files()
    restore_fails(restore_xml_for(inc.uuid), RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_INVALID, name)
    restore_fails(restore_xml_for(full.uuid, domain=dom.name), RESTORE_NEW_DOMAIN,
                  VIR_ERR_OPERATION_INVALID, dom.name)
    assert env.files() == before

    # A chosen name, a raw file of our choice.
    chosen = env.expect_domain("chosen-" + uuidlib.uuid4().hex[:8])
    out = env.path("chosen.raw")
    restore(restore_xml_for(full.uuid, {"vda": (out, "raw")}, domain=chosen), RESTORE_NEW_DOMAIN)
    check_new_domain(env, chosen, {"vda": (full.copy, "qcow2")}, files={"vda": (out, "raw")})
    assert virt.virDomainDestroy(dom) == 0


# ------------------------------------------------------- damaged backups
def _damage(path):
    """Overwrite the first chunk of a backup's qcow2 behind the library's back."""
    qemu_io(path, "qcow2", "write -q -P 0x99 0 64k")


def test_damaged_backup_is_detected(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    # The disk's first chunk differs from the backup: an in-place restore
    # has to read it.
    write_disk(h.src, "raw", [(0, K64, 0x42)])
    _damage(full.target)
    before = env.files()
    out = env.path("from-damaged.qcow2")
    name = env.expect_domain("damaged-" + uuidlib.uuid4().hex[:8])
    for xml, flags in [(restore_xml_for(full.uuid), REWRITE),
                       (restore_xml_for(full.uuid, {"vda": out}), 0),
                       (restore_xml_for(full.uuid, domain=name), RESTORE_NEW_DOMAIN)]:
        restore_fails(xml, flags, VIR_ERR_OPERATION_FAILED, "digest")
        assert env.files() == before, xml
    assert lookup_domain(env.conn, name) is None
    assert domain_disks(dom)["vda"] == (h.src, "raw")


def test_damaged_parent_is_detected_through_the_chain(env):
    dom = env.domain(fmt="qcow2", size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    inc = h.take("inc", full, [(4 * MiB, K64, 0x43)])  # chunk 0 stays in full
    _damage(full.target)
    before = env.files()
    restore_fails(restore_xml_for(inc.uuid, {"vda": env.path("out.qcow2")}), 0,
                  VIR_ERR_OPERATION_FAILED, "digest")
    assert env.files() == before


# ---------------------------------------------- RestoreUnmanaged (files)
def test_restore_unmanaged_from_files(env):
    a = env.disk("u-a.qcow2", 8 * MiB, "qcow2")
    b = env.disk("u-b.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", a, "qcow2"), ("vdb", b, "raw")])
    # Sources of the other format than the disks they go to.
    ext_a = env.disk("ext-a.raw", 8 * MiB, writes=[(0, K64, 0x51)])
    ext_b = env.disk("ext-b.qcow2", 8 * MiB, "qcow2", writes=[(K64, K64, 0x52)])
    definition = domain_definition(dom)
    into_vda = restore_xml_for(None, sources={"vda": ext_a})

    # Refusals touch nothing: no REWRITE, a missing source, an NBD server
    # nobody runs (test_unmanaged.py has real ones), a running domain.
    before = env.files()
    restore_fails(into_vda, 0, VIR_ERR_OPERATION_INVALID, dom=dom)
    restore_fails(restore_xml_for(None, sources={"vda": env.path("none.qcow2")}), REWRITE,
                  VIR_ERR_INVALID_ARG, dom=dom)
    port = free_port()
    restore_fails(restore_xml_for(None, sources={"vda": (Nbd(port=port), "vda")}), REWRITE,
                  VIR_ERR_OPERATION_FAILED, f"127.0.0.1:{port}", dom=dom)
    restore_fails(restore_xml_for(None, sources={"vda": (Nbd(socket=env.path("no.sock")), "vda")}),
                  REWRITE, VIR_ERR_OPERATION_FAILED, "no.sock", dom=dom)
    assert virt.virDomainCreate(dom) == 0
    restore_fails(into_vda, REWRITE, VIR_ERR_OPERATION_INVALID, dom=dom)
    assert virt.virDomainDestroy(dom) == 0
    assert env.files() == before

    # In place, vda only: it keeps its format and its definition.
    b_now = sha256(b)
    restore(into_vda, REWRITE, dom=dom)
    assert img_info(a)["format"] == "qcow2"
    assert_byte_exact(a, "qcow2", ext_a, "raw")
    assert sha256(b) == b_now
    assert domain_definition(dom) == definition

    # As a new domain, both disks, default files next to the originals.
    name = env.expect_domain("unmanaged-" + uuidlib.uuid4().hex[:8])
    restore(restore_xml_for(None, domain=name, sources={"vda": ext_a, "vdb": ext_b}),
            RESTORE_NEW_DOMAIN, dom=dom)
    check_new_domain(env, name, {"vda": (ext_a, "raw"), "vdb": (ext_b, "qcow2")})


# ------------------------------------------------- qemu:///system, inactive
def test_inactive_qemu_domain(qenv):
    env, qemu_conn = qenv, qenv.qemu
    a = env.disk("q-a.qcow2", 16 * MiB, "qcow2")
    b = env.disk("q-b.raw", 8 * MiB)
    dom = env.qemu_domain(disks=[("vda", a, "qcow2"), ("vdb", b, "raw")], start=False)
    assert virt.virDomainIsActive(dom) == 0
    snaps = []  # per backup: (uuid, copy of vda, copy of vdb)
    parent = None
    for tag, writes in [("full", ()), ("inc", [(2 * MiB, K64, 0x31)])]:
        write_disk(a, "qcow2", writes)
        write_disk(b, "raw", writes)
        bk = env.backup(dom, backup_xml_for(env.targets(tag, ("vda", "vdb")), parent=parent))
        parent = backup_uuid(bk)
        snaps.append((parent, env.snapshot(a, f"q-a-{tag}.qcow2"), env.snapshot(b, f"q-b-{tag}.raw")))
    write_disk(a, "qcow2", [(0, 4 * MiB, 0x33)])
    write_disk(b, "raw", [(0, 4 * MiB, 0x34)])

    before = env.files()
    restore_fails(restore_xml_for(parent), 0, VIR_ERR_OPERATION_INVALID)
    assert env.files() == before
    for u, a_then, b_then in reversed(snaps):
        restore(restore_xml_for(u), REWRITE)
        assert_byte_exact(a, "qcow2", a_then, "qcow2")
        assert_byte_exact(b, "raw", b_then, "raw")
    assert domain_disks(dom) == {"vda": (a, "qcow2"), "vdb": (b, "raw")}

    u, a_then, b_then = snaps[1]
    name = env.expect_domain(f"{dom.name}-copy", qemu_conn)
    restore(restore_xml_for(u, domain=name), RESTORE_NEW_DOMAIN)
    uuid, xml = check_new_domain(env, name, {"vda": (a_then, "qcow2"), "vdb": (b_then, "raw")},
                                 conn=qemu_conn)
    assert uuid != dom.uuid
    assert "type='qemu'" in xml
