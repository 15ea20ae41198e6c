"""virDomainBackupDelete and virDomainBackupUndefineFlags."""

import ctypes
import os
from ctypes import byref, c_int

import pytest

from conftest import (BackupArray, DELETE_ALL, DELETE_METADATA_ONLY,
                      FINISH_JOB_CHECK, MiB, VIR_DOMAIN_UNDEFINE_BACKUP,
                      VIR_ERR_NO_DOMAIN_BACKUP, VIR_ERR_OPERATION_INVALID,
                      assert_same_image, backup_uuid, backup_xml_for,
                      count_backups, create, expect_error, free, lib,
                      list_uuids, run_py, target_of, virt)


def test_delete_removes_record_and_data(env):
    dom = env.domain()
    target = env.path("del.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    assert lib.virDomainBackupDelete(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    assert not os.path.exists(target)
    assert count_backups(dom) == 0
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    # The handle stays safe to free.
    free(b)


def test_delete_default_target(env):
    dom = env.domain()
    b = create(dom, "<domainbackup/>")
    target = target_of(b)
    assert os.path.exists(target)
    assert lib.virDomainBackupDelete(b, 0) == 0
    assert not os.path.exists(target)
    free(b)


def _call_getxml(b):
    return lib.virDomainBackupGetXMLDesc(b, 0)


def _call_params(b):
    n = c_int(0)
    return lib.virDomainBackupGetParameters(b, None, byref(n), 0)


def _call_listchildren(b):
    return lib.virDomainBackupListChildren(b, None, 0)


def _call_listchildren_arr(b):
    arr = BackupArray()
    r = lib.virDomainBackupListChildren(b, byref(arr), 0)
    assert not arr, "*backups must be NULL on error"
    return r


AFTER_DELETE_CALLS = {
    "GetXMLDesc": (_call_getxml, None),
    "GetParameters": (_call_params, -1),
    "Delete": (lambda b: lib.virDomainBackupDelete(b, 0), -1),
    "FinishJob": (lambda b: lib.virDomainBackupFinishJob(b, 0), -1),
    "FinishJob-CHECK": (lambda b: lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK), -1),
    "AbortJob": (lambda b: lib.virDomainBackupAbortJob(b, 0), -1),
    "ListChildren": (_call_listchildren, -1),
    "ListChildren-array": (_call_listchildren_arr, -1),
    "GetDomain": (lambda b: lib.virDomainBackupGetDomain(b), None),
    "Ref": (lambda b: lib.virDomainBackupRef(b), -1),
}


@pytest.mark.parametrize("handle_kind", ["created", "looked-up"])
@pytest.mark.parametrize("call", sorted(AFTER_DELETE_CALLS))
def test_calls_after_delete(env, call, handle_kind):
    """API.md: after Delete succeeds, any other call on the handle fails with
    VIR_ERR_NO_DOMAIN_BACKUP."""
    dom = env.domain(size=8 * MiB)
    b = create(dom, backup_xml_for({"vda": env.path("ad.qcow2")}))
    if handle_kind == "looked-up":
        h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
        assert h
        free(b)
        b = h
    assert lib.virDomainBackupDelete(b, 0) == 0
    fn, failure = AFTER_DELETE_CALLS[call]
    r = fn(b)
    assert r == failure, f"{call} after Delete returned {r!r}"
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    free(b)


def test_delete_through_other_handle(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("oh.qcow2")}))
    h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert h
    assert lib.virDomainBackupDelete(h, 0) == 0
    free(h)
    assert lib.virDomainBackupGetXMLDesc(b, 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    free(b)


def test_delete_one_of_two(env):
    dom = env.domain()
    t1, t2 = env.path("one.qcow2"), env.path("two.qcow2")
    b1 = create(dom, backup_xml_for({"vda": t1}))
    b2 = create(dom, backup_xml_for({"vda": t2}))
    u2 = backup_uuid(b2)
    assert lib.virDomainBackupDelete(b1, 0) == 0
    assert list_uuids(dom) == [u2]
    assert not os.path.exists(t1)
    assert_same_image(dom.disks[0][1], "raw", t2, "qcow2")
    free(b1)
    free(b2)


def test_delete_metadata_only(env):
    dom = env.domain()
    target = env.path("meta.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    assert lib.virDomainBackupDelete(b, DELETE_METADATA_ONLY) == 0
    assert count_backups(dom) == 0
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    # The data file stays, intact.
    assert os.path.exists(target)
    assert_same_image(dom.disks[0][1], "raw", target, "qcow2")
    free(b)


def test_delete_all(env):
    dom = env.domain()
    other = env.domain()
    targets = [env.path(f"all{i}.qcow2") for i in range(3)]
    handles = [create(dom, backup_xml_for({"vda": t})) for t in targets]
    ot = env.path("other.qcow2")
    ob = create(other, backup_xml_for({"vda": ot}))
    assert lib.virDomainBackupDelete(handles[1], DELETE_ALL) == 0
    assert count_backups(dom) == 0
    for t in targets:
        assert not os.path.exists(t)
    for h in handles:
        assert lib.virDomainBackupGetXMLDesc(h, 0) is None
        expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
        free(h)
    # Another domain's backups are untouched.
    assert count_backups(other) == 1
    assert_same_image(other.disks[0][1], "raw", ot, "qcow2")
    free(ob)


def test_delete_all_metadata_only(env):
    dom = env.domain()
    targets = [env.path(f"am{i}.qcow2") for i in range(2)]
    handles = [create(dom, backup_xml_for({"vda": t})) for t in targets]
    assert lib.virDomainBackupDelete(handles[0], DELETE_ALL | DELETE_METADATA_ONLY) == 0
    assert count_backups(dom) == 0
    for t in targets:
        assert_same_image(dom.disks[0][1], "raw", t, "qcow2")
    for h in handles:
        free(h)


def test_delete_from_other_process(env):
    uri, dom = env.node_domain()
    target = env.path("op.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    run_py(f"""
        h = lib.virDomainBackupLookupByUUID({u!r}.encode(), 0)
        assert h, last_error()
        assert lib.virDomainBackupDelete(h, 0) == 0, last_error()
        free(h)
    """, env.catalog)
    assert not os.path.exists(target)
    assert count_backups(dom) == 0
    assert lib.virDomainBackupGetXMLDesc(b, 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    free(b)


def test_undefine_refused_with_backups(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("ud.qcow2")}))
    free(b)
    assert lib.virDomainBackupUndefineFlags(dom, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    # Still defined.
    d = virt.virDomainLookupByName(env.conn, dom.name.encode())
    assert d
    virt.virDomainFree(d)
    assert count_backups(dom) == 1


def test_undefine_with_backup_flag(env):
    dom = env.domain()
    target = env.path("udb.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    free(b)
    assert lib.virDomainBackupUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP) == 0, \
        lib.virDomainBackupGetLastErrorMessage()
    assert virt.virDomainLookupByName(env.conn, dom.name.encode()) is None
    # Metadata gone, data files stay.
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert os.path.exists(target)
    assert_same_image(dom.disks[0][1], "raw", target, "qcow2")


def test_undefine_without_backups(env):
    dom = env.domain()
    assert lib.virDomainBackupUndefineFlags(dom, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    assert virt.virDomainLookupByName(env.conn, dom.name.encode()) is None
