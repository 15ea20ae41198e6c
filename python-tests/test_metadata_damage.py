"""Damaged metadata must not cost data (README "The catalog"):

- a delete is crash-ordered: the record is renamed to `<backup>.deleting`
  before any data goes, and the next process finishes a half-done delete;
- a record that cannot be parsed, or that says `running` with no sign that
  a job ever ran, makes List fail with an error naming the file, and
  nothing is removed;
- a backup's images are not removed while another image of the domain
  reads through them, whatever the records say;
- a restore whose digest index is missing fails instead of "verifying" the
  image against an index rebuilt from itself;
- the crash windows of CreateXML (targets created) and of a NEW_DOMAIN
  restore (files written, domain not defined yet) leave nothing behind.

Crash windows are hit with the test build's stop points
(LIBVIRT_BACKUP_TEST_STOP, see src/testhook.rs): the helper process kills
itself with SIGKILL at the named point."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import (LIB_PATH, MiB, RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED,
                      VIR_ERR_OPERATION_INVALID, assert_byte_exact,
                      assert_same_image, backup_uuid, backup_xml_for,
                      count_backups, create, delete, domain_uuid, expect_error,
                      free, lib, list_uuids, lookup_domain, py_subprocess,
                      restore_fails, restore_xml_for, write_disk)

STOP_VAR = b"LIBVIRT_BACKUP_TEST_STOP"


def require_stop_points():
    with open(LIB_PATH, "rb") as f:
        assert STOP_VAR in f.read(), (
            f"{LIB_PATH} has no test stop points: run these tests through "
            "'make python-tests' (the test build, build/test/)")


def test_release_library_has_no_stop_points():
    release = os.environ.get("LIBVIRT_BACKUP_RELEASE_LIB") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "build", "libvirt-backup.so.0")
    with open(release, "rb") as f:
        assert STOP_VAR not in f.read(), f"{release} contains the test stop points"


def record_path(env, dom, uuid, ext="xml"):
    return os.path.join(env.catalog, domain_uuid(dom), f"{uuid}.{ext}")


@contextlib.contextmanager
def immutable(path):
    """`path` cannot be renamed, removed or written (chattr +i) inside."""
    subprocess.run(["chattr", "+i", path], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


def take(env, dom, src, name, parent=None, writes=()):
    """Write `writes` into the raw disk, back it up to <tmp>/<name>.qcow2,
    keep a copy of the disk as it was. Returns (uuid, target, copy)."""
    write_disk(src, "raw", writes)
    target = env.path(name + ".qcow2")
    b = create(dom, backup_xml_for({"vda": target}, parent=parent))
    uuid = backup_uuid(b)
    free(b)
    copy = env.path(name + "-at-backup.raw")
    shutil.copyfile(src, copy)
    return uuid, target, copy


def chain(env, n=3):
    """A shut-off domain with a chain of `n` backups (full first)."""
    src = env.disk("chain.raw", 16 * MiB, "raw", [(0, 4 * MiB, 0x11)])
    _, dom = env.node_domain(disks=[("vda", src, "raw")])
    out, parent = [], None
    for i in range(n):
        uuid, target, copy = take(env, dom, src, f"b{i}", parent,
                                  [(i * MiB, 64 << 10, 0x40 + i)] if i else ())
        out.append((uuid, target, copy))
        parent = uuid
    return dom, out


def run_until_stopped(env, point, code):
    """Run `code` in a helper process that must kill itself at `point`."""
    require_stop_points()
    p = py_subprocess(code, env.catalog, extra_env={"LIBVIRT_BACKUP_TEST_STOP": point})
    out, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, \
        f"helper did not stop at {point} (rc {p.returncode}):\n{out}\n{err}"
    return out


# --------------------------------------------------------------------------
# Delete, crash-ordered
# --------------------------------------------------------------------------
def test_delete_whose_record_cannot_go_keeps_the_data(env):
    dom, [(uuid, target, copy)] = chain(env, 1)
    b = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    try:
        with immutable(record_path(env, dom, uuid)):
            assert lib.virDomainBackupDelete(b, 0) == -1, "delete succeeded"
            expect_error(VIR_ERR_OPERATION_FAILED, f"{uuid}.xml")
            # Still listed, and still holding all its data.
            assert list_uuids(dom) == [uuid]
            assert_same_image(copy, "raw", target, "qcow2")
        delete(b)
    finally:
        free(b)
    assert list_uuids(dom) == []
    assert not os.path.exists(target)


def test_delete_whose_data_cannot_go_is_finished_later(env):
    dom, [(uuid, target, _)] = chain(env, 1)
    b = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    try:
        with immutable(target):
            assert lib.virDomainBackupDelete(b, 0) == -1, "delete succeeded"
            expect_error(VIR_ERR_OPERATION_FAILED, target)
            # Never listed as a completed backup without its data.
            assert list_uuids(dom) == []
            assert os.path.exists(record_path(env, dom, uuid, "deleting"))
    finally:
        free(b)
    # The next call that lists the domain finishes the delete.
    assert list_uuids(dom) == []
    assert not os.path.exists(target)
    assert not os.path.exists(record_path(env, dom, uuid, "deleting"))
    assert not os.path.exists(record_path(env, dom, uuid, "index"))


def test_delete_killed_midway_is_finished_by_the_next_process(env):
    src_a = env.disk("a.raw", 16 * MiB)
    src_b = env.disk("b.raw", 16 * MiB)
    _, dom = env.node_domain(disks=[("vda", src_a, "raw"), ("vdb", src_b, "raw")])
    ta, tb = env.path("a.qcow2"), env.path("b.qcow2")
    b = create(dom, backup_xml_for({"vda": ta, "vdb": tb}))
    uuid = backup_uuid(b)
    free(b)
    # This process has looked at the domain's folder and, 100 ms after its
    # last change, remembers it had no delete to finish: the note the
    # killed process leaves must still be seen.
    assert list_uuids(dom) == [uuid]
    time.sleep(0.2)
    assert list_uuids(dom) == [uuid]
    run_until_stopped(env, "delete-first-disk-removed", f"""
        b = lib.virDomainBackupLookupByUUID({uuid!r}.encode(), 0)
        assert b, last_error()
        lib.virDomainBackupDelete(b, 0)
    """)
    # Killed with one disk removed: the backup is not listed (it was marked
    # first), and this process finishes the delete.
    assert not os.path.exists(ta) and os.path.exists(tb)
    assert list_uuids(dom) == []
    assert not os.path.exists(tb)
    assert not os.path.exists(record_path(env, dom, uuid, "deleting"))


# --------------------------------------------------------------------------
# Damaged records
# --------------------------------------------------------------------------
def test_unparsable_record_is_reported_and_costs_no_data(env):
    dom, [(full, t0, _), (mid, t1, _), (leaf, t2, at_leaf)] = chain(env, 3)
    rec = record_path(env, dom, mid)
    with open(rec, "w") as f:
        f.write("<domainbackup><uuid>garbage")
    # List answers from the domain's summary, which the library wrote: the
    # backup is not hidden. Whatever reads the record names the file.
    assert lib.virDomainBackupList(dom, None, 0) == 3
    # Deleting the parent cannot merge into a child it cannot read: refused,
    # and the leaf still reads byte for byte through the whole chain.
    b = lib.virDomainBackupLookupByUUID(full.encode(), 0)
    assert b
    assert lib.virDomainBackupDelete(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, rec)
    free(b)
    assert os.path.exists(t0) and os.path.exists(t1)
    assert_byte_exact(t2, "qcow2", at_leaf, "raw")
    # Looking the damaged backup up names the file too.
    assert lib.virDomainBackupLookupByUUID(mid.encode(), 0) is None
    expect_error(VIR_ERR_OPERATION_FAILED, rec)


def test_record_edited_to_running_does_not_lose_its_images(env):
    dom, [(uuid, target, copy)] = chain(env, 1)
    rec = record_path(env, dom, uuid)
    with open(rec) as f:
        text = f.read()
    assert "<state>completed</state>" in text
    with open(rec, "w") as f:
        f.write(text.replace("<state>completed</state>", "<state>running</state>"))
    # No job ever held this backup's lock: not a dead job, a damaged record.
    # List answers from the summary (completed); reading the record names it.
    assert lib.virDomainBackupList(dom, None, 0) == 1
    assert lib.virDomainBackupLookupByUUID(uuid.encode(), 0) is None
    expect_error(VIR_ERR_OPERATION_FAILED, rec, "running")
    assert os.path.exists(rec)
    assert_same_image(copy, "raw", target, "qcow2")


def test_parenthood_is_checked_in_the_images_not_only_the_records(env):
    dom, [(full, t0, _), (inc, t1, at_inc)] = chain(env, 2)
    rec = record_path(env, dom, inc)
    with open(rec) as f:
        text = f.read()
    edited = re.sub(r"<parent>.*?</parent>", "", text, flags=re.S)
    assert edited != text
    with open(rec, "w") as f:
        f.write(edited)
    # The records now say: two unrelated full backups.
    assert sorted(list_uuids(dom)) == sorted([full, inc])
    b = lib.virDomainBackupLookupByUUID(full.encode(), 0)
    assert lib.virDomainBackupDelete(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID, t1, t0)
    free(b)
    assert sorted(list_uuids(dom)) == sorted([full, inc])
    assert_byte_exact(t1, "qcow2", at_inc, "raw")


def test_parenthood_check_reads_records_the_summary_does_not_know(env):
    dom, [(full, t0, _), (inc, t1, at_inc)] = chain(env, 2)
    # The summary forgets the incremental (as if its record had been put
    # back by hand): listing no longer shows it, but its image still reads
    # through the full backup's file.
    with open(os.path.join(env.catalog, domain_uuid(dom), "summary"), "a") as f:
        f.write(f"- {inc}\n")
    assert list_uuids(dom) == [full]
    b = lib.virDomainBackupLookupByUUID(full.encode(), 0)
    assert lib.virDomainBackupDelete(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID, t1, t0)
    free(b)
    assert os.path.exists(t0)
    assert_byte_exact(t1, "qcow2", at_inc, "raw")


# --------------------------------------------------------------------------
# Restore and the digest index
# --------------------------------------------------------------------------
def test_restore_with_missing_index_fails(env):
    dom, [(uuid, target, _)] = chain(env, 1)
    index = os.path.join(record_path(env, dom, uuid, "index"), "vda.b3")
    assert os.path.exists(index)
    os.remove(index)
    name = env.expect_domain("restored-" + uuid[:8])
    new_file = env.path("restored.qcow2")
    restore_fails(restore_xml_for(uuid, {"vda": new_file}, domain=name),
                  RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED,
                  "digest index of disk 'vda'", "missing", "cannot be verified")
    assert not os.path.exists(new_file)
    assert not os.path.exists(index), "the index was rebuilt from the image"
    assert lookup_domain(env.conn, name) is None


def test_verify_with_missing_index_fails(env):
    from ctypes import c_int, c_uint, c_void_p
    from conftest import _decl
    _decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
    dom, [(uuid, target, _)] = chain(env, 1)
    index = os.path.join(record_path(env, dom, uuid, "index"), "vda.b3")
    os.remove(index)
    b = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    try:
        assert lib.virDomainBackupVerify(b, 0) == -1, "verify succeeded"
        expect_error(VIR_ERR_OPERATION_FAILED, "digest index of disk 'vda'",
                     "cannot be verified")
    finally:
        free(b)
    assert not os.path.exists(index), "the index was rebuilt from the image"


@pytest.mark.parametrize("damage", ["digests", "truncated"])
def test_restore_with_garbled_index_fails(env, damage):
    dom, [(uuid, target, _)] = chain(env, 1)
    index = os.path.join(record_path(env, dom, uuid, "index"), "vda.b3")
    with open(index, "r+b") as f:
        if damage == "digests":
            f.seek(24)  # the first chunk's digest (it holds data)
            f.write(b"\xff" * 32)
        else:
            f.truncate(os.path.getsize(index) - 32)
    name = env.expect_domain("garbled-" + uuid[:8])
    new_file = env.path("garbled.qcow2")
    restore_fails(restore_xml_for(uuid, {"vda": new_file}, domain=name),
                  RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED, "vda")
    assert not os.path.exists(new_file)
    assert lookup_domain(env.conn, name) is None


# --------------------------------------------------------------------------
# Crash windows
# --------------------------------------------------------------------------
def test_create_killed_after_creating_targets_leaves_nothing(env):
    uri, dom = env.node_domain()
    target = env.path("crash-target.qcow2")
    xml = backup_xml_for({"vda": target})
    run_until_stopped(env, "create-target-created", f"""
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
        assert d
        lib.virDomainBackupCreateXML(d, {xml!r}.encode(), 0)
    """)
    assert os.path.exists(target), "killed before the target was created"
    # The next process sees a dead job: its target goes, the path is free.
    assert count_backups(dom) == 0
    assert not os.path.exists(target)
    free(create(dom, xml))
    assert_same_image(dom.disks[0][1], "raw", target, "qcow2")


def test_new_domain_restore_killed_before_define_leaves_nothing(env):
    dom, [(uuid, _, _)] = chain(env, 1)
    new_file = env.path("new-domain-vda.qcow2")
    xml = restore_xml_for(uuid, {"vda": new_file}, domain="never-" + uuid[:8])
    run_until_stopped(env, "restore-before-define", f"""
        lib.virDomainBackupRestore({xml!r}.encode(), {RESTORE_NEW_DOMAIN})
    """)
    assert os.path.exists(new_file), "killed before the file was written"
    count_backups(dom)  # any call opens the catalog, which sweeps
    assert not os.path.exists(new_file)
    assert [n for n in os.listdir(env.catalog) if n.startswith(".restoring-")] == []
