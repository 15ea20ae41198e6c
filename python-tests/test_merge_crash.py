"""A process killed while it deletes a backup from the middle of a chain
(merging it into its child) leaves the old state or the new one, never a
broken chain: whatever the catalog lists afterwards restores byte for byte.

The disk is big enough (128 MiB of data) that the merge runs for a while;
the deleting process is killed at several moments of it. The big files are
removed at the end (pytest keeps temporary folders of recent runs)."""

import os
import shutil
import time

import pytest

from conftest import (MiB, assert_byte_exact, backup_uuid, backup_xml_for,
                      create, free, list_uuids, parent_of, py_subprocess,
                      restore, restore_xml_for, write_disk, lib)


def take(env, dom, src, name, parent=None, writes=()):
    """Write `writes` into the disk, back it up to <tmp>/<name>.qcow2, and
    keep a copy of the disk as it was. Returns (uuid, copy)."""
    write_disk(src, "raw", writes)
    b = create(dom, backup_xml_for({"vda": env.path(name + ".qcow2")}, parent=parent))
    uuid = backup_uuid(b)
    free(b)
    copy = env.path(name + "-at-backup.raw")
    shutil.copyfile(src, copy)
    return uuid, copy


@pytest.mark.parametrize("delay", [0.02, 0.15, 0.5])
def test_killed_merge_leaves_a_whole_chain(env, delay):
    src = env.disk("mc.raw", 256 * MiB, "raw", [(0, 128 * MiB, 0x31)])
    uri, dom = env.node_domain(disks=[("vda", src, "raw")])
    full, _ = take(env, dom, src, "full")
    mid, _ = take(env, dom, src, "mid", full, [(0, 64 * MiB, 0x32)])
    leaf, at_leaf = take(env, dom, src, "leaf", mid, [(200 * MiB, 1 * MiB, 0x33)])

    p = py_subprocess(f"""
        b = lib.virDomainBackupLookupByUUID({mid!r}.encode(), 0)
        assert b, last_error()
        print("deleting", flush=True)
        assert lib.virDomainBackupDelete(b, 0) == 0, last_error()
        print("deleted", flush=True)
        """, env.catalog)
    assert p.stdout.readline().strip() == "deleting"
    time.sleep(delay)
    p.kill()
    out, _ = p.communicate(timeout=30)

    listed = list_uuids(dom)
    assert full in listed and leaf in listed
    if mid in listed:
        state = "old"
    else:
        state = "new"
    leaf_handle = lib.virDomainBackupLookupByUUID(leaf.encode(), 0)
    assert leaf_handle
    # The leaf names a parent that exists (the middle, or the full backup).
    assert parent_of(leaf_handle) in listed
    free(leaf_handle)
    out_file = env.path(f"restored-{state}.raw")
    restore(restore_xml_for(leaf, {"vda": (out_file, "raw")}))
    assert_byte_exact(out_file, "raw", at_leaf, "raw")
    # No temporary file of the merge is left next to the leaf's copy.
    leftovers = [n for n in os.listdir(env.path("")) if ".merge-" in n]
    assert leftovers == []
    for name in os.listdir(env.path("")):
        if name.endswith((".raw", ".qcow2")):
            os.unlink(env.path(name))


def test_killed_restore_leaves_no_new_file(env):
    """A restore to a new file killed while it writes: the next process that
    opens the catalog removes the half-written file."""
    src = env.disk("rc.raw", 512 * MiB, "raw", [(0, 384 * MiB, 0x41)])
    uri, dom = env.node_domain(disks=[("vda", src, "raw")])
    full, _ = take(env, dom, src, "rc-full")
    out = env.path("rc-restored.qcow2")
    p = py_subprocess(f"""
        print("restoring", flush=True)
        assert lib.virDomainBackupRestore({restore_xml_for(full, {"vda": out})!r}.encode(), 0) == 0, last_error()
        print("restored", flush=True)
        """, env.catalog)
    assert p.stdout.readline().strip() == "restoring"
    deadline = time.time() + 10
    while not os.path.exists(out) and time.time() < deadline:
        time.sleep(0.005)
    p.kill()
    out_text, _ = p.communicate(timeout=30)
    if "restored" in out_text:
        pytest.skip("the restore finished before it could be killed")
    list_uuids(dom)  # any call opens the catalog
    assert not os.path.exists(out), "half-written restore target left behind"
    assert [n for n in os.listdir(env.catalog) if n.startswith(".restoring")] == []
    for name in os.listdir(env.path("")):
        if name.endswith((".raw", ".qcow2")):
            os.unlink(env.path(name))
