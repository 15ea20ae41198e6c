"""Incremental backups on the library's own disk engine (test:///default,
inactive domains): chains and branches, full-copy fallback and
NO_FALLBACK, listing over a tree, and deleting backups that have children.

Every backup is compared (qemu-img compare) with a copy of its source made
right after it was taken (conftest.History)."""

import glob
import os

import pytest

from conftest import (CREATE_NO_FALLBACK, CREATE_WAIT, DELETE_ALL_CHILDREN,
                      DELETE_METADATA_ONLY, K64, LIST_DESCENDANTS, LIST_FULL,
                      LIST_INCREMENTAL, LIST_LATEST, LIST_LEAVES, MiB,
                      VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN_BACKUP,
                      VIR_ERR_OPERATION_INVALID, assert_byte_exact, backing_chain,
                      backup_uuid, backup_xml_for, chain_with_branch, children_uuids,
                      count_backups, create_fails, delete, disk_modes, domain_disks,
                      expect_error, get_xml, img_info, lib, list_uuids, param,
                      parent_of, resize_disk, restore, restore_xml_for, run,
                      write_disk)


def uuids(*taken):
    return [t.uuid for t in taken]


# ------------------------------------------------------- chains and branches
def test_chain_and_branch_equal_the_source_at_their_time(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env)
    h.check()

    # Each qcow2 target is backed by its parent's target.
    assert backing_chain(full.target) == [full.target]
    assert backing_chain(tip.target) == [tip.target, leaf.target, mid.target, full.target]
    assert backing_chain(br.target) == [br.target, mid.target, full.target]

    assert disk_modes(full) == {"vda": "full"}
    assert parent_of(full) is None
    assert param(full, "incremental") == 0
    for t, p in [(mid, full), (leaf, mid), (tip, leaf), (br, mid)]:
        assert disk_modes(t) == {"vda": "incremental"}
        assert parent_of(t) == p.uuid
        assert param(t, "incremental") == 1
    # Only the changed 64 KiB chunks are stored (chunks changed to zeroes
    # need not be stored as data); br differs from mid by all that was
    # written since mid.
    assert param(mid, "bytes.written") == 1 * MiB
    assert K64 <= param(leaf, "bytes.written") <= 3 * K64
    assert param(tip, "bytes.written") == 2 * K64
    assert 7 * K64 <= param(br, "bytes.written") <= 9 * K64
    assert param(full, "bytes.written") >= 1 * MiB  # the data of the disk


def test_two_disks_only_changed_chunks_are_stored(env):
    """A raw and a qcow2 disk; only the raw one changes."""
    a = env.disk("two-a.raw", 8 * MiB)
    b = env.disk("two-b.qcow2", 8 * MiB, "qcow2")
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", b, "qcow2")])
    names = ("vda", "vdb")
    full = env.backup(dom, backup_xml_for(env.targets("full", names)))
    write_disk(a, "raw", [(5 * K64, 3 * K64, 0x3C)])
    inc = env.backup(dom, backup_xml_for(env.targets("inc", names), parent=backup_uuid(full)))
    assert disk_modes(inc) == {"vda": "incremental", "vdb": "incremental"}
    assert param(inc, "disks") == 2
    assert param(inc, "bytes.written") == 3 * K64
    for n, src, fmt in dom.disks:
        t = env.targets("inc", names)[n]
        assert backing_chain(t) == [t, env.targets("full", names)[n]]
        assert_byte_exact(t, "qcow2", src, fmt)


def test_grown_disk_stores_only_its_new_tail(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    resize_disk(h.src, "raw", 12 * MiB)
    grown = h.take("grown", full, [(9 * MiB, 1 * MiB, 0x52)])
    h.check()
    assert disk_modes(grown) == {"vda": "incremental"}
    assert param(grown, "bytes.written") == 1 * MiB
    assert img_info(grown.target)["virtual-size"] == 12 * MiB
    assert backing_chain(grown.target) == [grown.target, full.target]


# ------------------------------------------------------------- fallback
def _refused_then_full(env, h, parent, name):
    """NO_FALLBACK: refused, nothing created; without it: a full copy of vda
    that is still a child of `parent`."""
    before, n = env.files(), count_backups(h.dom)
    xml = backup_xml_for({"vda": env.path(name + ".qcow2")}, parent=parent.uuid)
    create_fails(h.dom, xml, CREATE_WAIT | CREATE_NO_FALLBACK, VIR_ERR_OPERATION_INVALID,
                 "vda")
    assert env.files() == before
    assert count_backups(h.dom) == n
    t = h.take(name, parent)
    h.check(t)
    assert disk_modes(t) == {"vda": "full"}
    assert "backupmode='full'" in get_xml(t)
    assert backing_chain(t.target) == [t.target]
    assert param(t, "incremental") == 0
    assert parent_of(t) == parent.uuid
    return t


def test_shrunk_disk_falls_back_to_full(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    resize_disk(h.src, "raw", 4 * MiB)
    t = _refused_then_full(env, h, full, "shrunk")
    assert img_info(t.target)["virtual-size"] == 4 * MiB


def test_format_change_falls_back_to_full(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    q = env.path("vda-as-qcow2.qcow2")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", h.src, q])
    env.redefine(dom, [("vda", q, "qcow2")])
    h = env.history(dom)  # of the new disk
    _refused_then_full(env, h, full, "converted")


def _index_of(env, t, disk="vda"):
    """The digest index file the library keeps for disk `disk` of backup `t`."""
    (index,) = glob.glob(os.path.join(env.catalog, "*", t.uuid + ".index", disk + ".*"))
    return index


@pytest.mark.parametrize("lost", ["copy gone", "index unusable"])
def test_parent_copy_or_index_lost_falls_back_to_full(env, lost):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    if lost == "copy gone":
        os.unlink(full.target)
    else:
        os.truncate(_index_of(env, full), 10)
    _refused_then_full(env, h, full, "after-loss")


def test_missing_parent_index_is_rebuilt_from_its_copy(env):
    """A parent without an index (removed, or a backup QEMU wrote) gets one
    built from its copy: still incremental, even with NO_FALLBACK."""
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    os.unlink(_index_of(env, full))
    write_disk(h.src, "raw", [(2 * MiB, K64, 0x3D)])
    xml = backup_xml_for({"vda": env.path("inc.qcow2")}, parent=full.uuid)
    inc = env.backup(dom, xml, CREATE_WAIT | CREATE_NO_FALLBACK)
    assert disk_modes(inc) == {"vda": "incremental"}
    assert param(inc, "bytes.written") == K64
    assert_byte_exact(env.path("inc.qcow2"), "qcow2", h.src, "raw")
    assert os.path.exists(_index_of(env, full))


def test_new_disk_is_copied_in_full(env):
    a = env.disk("nd-a.qcow2", 8 * MiB, "qcow2")
    dom = env.domain(disks=[("vda", a, "qcow2")])
    h = env.history(dom)
    full = h.take("full")
    b = env.disk("nd-b.raw", 8 * MiB)
    env.redefine(dom, [("vda", a, "qcow2"), ("vdb", b, "raw")])
    ta, tb = env.path("nd-inc-a.qcow2"), env.path("nd-inc-b.raw")
    xml = backup_xml_for({"vda": ta, "vdb": (tb, "raw")}, parent=full.uuid)
    before = env.files()
    create_fails(dom, xml, CREATE_WAIT | CREATE_NO_FALLBACK, VIR_ERR_OPERATION_INVALID, "vdb")
    assert env.files() == before
    assert count_backups(dom) == 1
    # Without NO_FALLBACK: vda incremental, vdb a full copy, which may be raw.
    inc = env.backup(dom, xml)
    assert disk_modes(inc) == {"vda": "incremental", "vdb": "full"}
    assert param(inc, "incremental") == 1
    assert backing_chain(ta) == [ta, full.target]
    assert_byte_exact(ta, "qcow2", a, "qcow2")
    assert img_info(tb)["format"] == "raw"
    assert_byte_exact(tb, "raw", b, "raw")


def test_raw_target_for_incremental_disk_refused(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full")
    before = env.files()
    raw = env.path("inc.raw")
    for flags in (CREATE_WAIT, CREATE_WAIT | CREATE_NO_FALLBACK):
        create_fails(dom, backup_xml_for({"vda": (raw, "raw")}, parent=full.uuid), flags,
                     VIR_ERR_INVALID_ARG, "raw")
    assert env.files() == before
    assert count_backups(dom) == 1


# ------------------------------------------------------------ listing a tree
def test_listing_flags_over_a_tree(env):
    """Two trees:  a -> b -> c        f -> g
                     \\    \\-> d
                      \\-> e                  (created a, b, c, d, e, f, g)"""
    dom = env.domain(size=2 * MiB, fmt="qcow2")
    h = env.history(dom)
    a = h.take("a")
    b = h.take("b", a, [(0, K64, 1)])
    c = h.take("c", b, [(K64, K64, 2)])
    d = h.take("d", b, [(2 * K64, K64, 3)])
    e = h.take("e", a, [(3 * K64, K64, 4)])
    f = h.take("f")
    g = h.take("g", f, [(4 * K64, K64, 5)])

    assert list_uuids(dom) == uuids(a, b, c, d, e, f, g)
    assert list_uuids(dom, LIST_FULL) == uuids(a, f)
    assert list_uuids(dom, LIST_INCREMENTAL) == uuids(b, c, d, e, g)
    assert list_uuids(dom, LIST_LEAVES) == uuids(c, d, e, g)
    assert list_uuids(dom, LIST_LATEST) == uuids(g)
    assert list_uuids(dom, LIST_FULL | LIST_LATEST) == uuids(f)
    assert list_uuids(dom, LIST_FULL | LIST_LEAVES) == []
    assert list_uuids(dom, LIST_INCREMENTAL | LIST_LEAVES | LIST_LATEST) == uuids(g)

    assert children_uuids(a) == uuids(b, e)
    assert children_uuids(a, LIST_DESCENDANTS) == uuids(b, c, d, e)
    assert children_uuids(a, LIST_DESCENDANTS | LIST_LEAVES) == uuids(c, d, e)
    assert children_uuids(a, LIST_DESCENDANTS | LIST_LATEST) == uuids(e)
    assert children_uuids(a, LIST_LEAVES) == uuids(e)
    assert children_uuids(a, LIST_INCREMENTAL) == uuids(b, e)
    assert children_uuids(a, LIST_FULL | LIST_DESCENDANTS) == []
    assert children_uuids(b) == uuids(c, d)
    assert children_uuids(b, LIST_DESCENDANTS) == uuids(c, d)
    assert children_uuids(c, LIST_DESCENDANTS) == []
    assert children_uuids(f, LIST_DESCENDANTS) == uuids(g)


# ---------------------------------------------- delete with children: merge
def _assert_restores_exactly(env, h, t):
    """Restore `t` to a new raw file: byte for byte its source at backup
    time. (The restore points the domain at that file: point it back.)"""
    out = env.path(f"restored-{t.uuid}.raw")
    restore(restore_xml_for(t.uuid, {"vda": (out, "raw")}))
    assert domain_disks(h.dom)["vda"] == (out, "raw")
    env.redefine(h.dom, h.dom.disks)
    assert_byte_exact(out, "raw", t.copy, h.fmt)


def test_delete_in_the_middle_merges_into_each_child(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env)
    delete(mid)
    assert not os.path.exists(mid.target)
    assert lib.virDomainBackupLookupByUUID(mid.uuid.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert list_uuids(h.dom) == uuids(full, leaf, tip, br)
    assert children_uuids(full) == uuids(leaf, br)
    for t in (leaf, br):
        assert parent_of(t) == full.uuid
        assert disk_modes(t) == {"vda": "incremental"}
        assert backing_chain(t.target) == [t.target, full.target]
    assert parent_of(tip) == leaf.uuid
    assert backing_chain(tip.target) == [tip.target, leaf.target, full.target]
    h.check(full, leaf, tip, br)
    _assert_restores_exactly(env, h, leaf)
    _assert_restores_exactly(env, h, tip)


def test_delete_root_makes_children_full(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env)
    delete(full)
    assert not os.path.exists(full.target)
    assert parent_of(mid) is None
    assert disk_modes(mid) == {"vda": "full"}
    assert backing_chain(mid.target) == [mid.target]
    assert list_uuids(h.dom, LIST_FULL) == uuids(mid)
    assert backing_chain(tip.target) == [tip.target, leaf.target, mid.target]
    h.check(mid, leaf, tip, br)
    _assert_restores_exactly(env, h, tip)
    # The merged root takes new incremental children.
    nxt = h.take("next", mid, [(5 * MiB, K64, 0x76)])
    h.check(nxt)
    assert backing_chain(nxt.target) == [nxt.target, mid.target]


def test_delete_metadata_only_keeps_the_files(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env)
    delete(mid, DELETE_METADATA_ONLY)
    assert os.path.exists(mid.target)
    assert lib.virDomainBackupLookupByUUID(mid.uuid.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert list_uuids(h.dom) == uuids(full, leaf, tip, br)
    assert parent_of(leaf) == parent_of(br) == full.uuid
    # The children still read through the forgotten backup's files.
    assert backing_chain(leaf.target) == [leaf.target, mid.target, full.target]
    h.check(full, leaf, tip, br)
    _assert_restores_exactly(env, h, tip)


@pytest.mark.parametrize("metadata_only", [False, True])
def test_delete_all_children_removes_the_subtree(env, metadata_only):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env)
    other = h.take("other", full, [(12 * MiB, K64, 0x77)])
    flags = DELETE_ALL_CHILDREN | (DELETE_METADATA_ONLY if metadata_only else 0)
    delete(mid, flags)
    for t in (mid, leaf, tip, br):
        assert os.path.exists(t.target) == metadata_only
        assert lib.virDomainBackupLookupByUUID(t.uuid.encode(), 0) is None
        expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert list_uuids(h.dom) == uuids(full, other)
    assert children_uuids(full, LIST_DESCENDANTS) == uuids(other)
    h.check(full, other)
