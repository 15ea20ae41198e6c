"""Argument checking and the thread-local last error (API.md "Functions",
"Errors", "Flags")."""

import ctypes
import os
import threading
import uuid as uuidlib
from ctypes import byref, c_int

import pytest

from conftest import (BackupArray, CREATE_WAIT, DELETE_ALL,
                      DELETE_ALL_CHILDREN, FINISH_JOB_CANCEL, FINISH_JOB_CHECK,
                      LIST_FULL, LIST_INCREMENTAL, MiB, VIR_ERR_INVALID_ARG,
                      VIR_ERR_NO_DOMAIN_BACKUP, VIR_ERR_NO_SUPPORT,
                      VIR_ERR_OPERATION_INVALID, VIR_ERR_XML_ERROR,
                      backup_uuid, backup_xml_for, count_backups, create,
                      expect_error, free, last_error, lib, libc, virt,
                      virTypedParameter)

GOOD_XML = b"<domainbackup/>"


def catalog_records(env):
    """Backup record files anywhere in the catalog (any *.xml but settings)."""
    out = []
    for root, _dirs, files in os.walk(env.catalog):
        out += [f for f in files if f.endswith(".xml") and "default-target" not in f]
    return out


def tmp_files(env):
    return sorted(f for f in os.listdir(env.tmp) if f != "catalog")


# ---------------------------------------------------------------- NULL args
NULL_CALLS = {
    "CreateXML(domain=NULL)": lambda d, b: lib.virDomainBackupCreateXML(None, GOOD_XML, 0),
    "CreateXML(xml=NULL)": lambda d, b: lib.virDomainBackupCreateXML(d, None, 0),
    "StartUnmanaged(domain=NULL)": lambda d, b: lib.virDomainBackupStartUnmanaged(None, GOOD_XML, 0),
    "StartUnmanaged(xml=NULL)": lambda d, b: lib.virDomainBackupStartUnmanaged(d, None, 0),
    # List(domain=NULL) lists the whole catalog (test_list_lookup).
    "ListChildren(NULL)": lambda d, b: lib.virDomainBackupListChildren(None, None, 0),
    "Restore(NULL)": lambda d, b: lib.virDomainBackupRestore(None, 0),
    "RestoreUnmanaged(domain=NULL)": lambda d, b: lib.virDomainBackupRestoreUnmanaged(None, GOOD_XML, 0),
    "RestoreUnmanaged(xml=NULL)": lambda d, b: lib.virDomainBackupRestoreUnmanaged(d, None, 0),
    "Delete(NULL)": lambda d, b: lib.virDomainBackupDelete(None, 0),
    "Ref(NULL)": lambda d, b: lib.virDomainBackupRef(None),
    "Free(NULL)": lambda d, b: lib.virDomainBackupFree(None),
    "ObjGetXMLDesc(NULL)": lambda d, b: lib.virDomainBackupObjGetXMLDesc(None, 0),
    "GetXMLDesc(NULL)": lambda d, b: lib.virDomainBackupGetXMLDesc(None, 0),
    "LookupByUUID(NULL)": lambda d, b: lib.virDomainBackupLookupByUUID(None, 0),
    "GetDomain(NULL)": lambda d, b: lib.virDomainBackupGetDomain(None),
    "FinishJob(NULL)": lambda d, b: lib.virDomainBackupFinishJob(None, 0),
    "AbortJob(NULL)": lambda d, b: lib.virDomainBackupAbortJob(None, 0),
    "GetParameters(backup=NULL)": lambda d, b: lib.virDomainBackupGetParameters(None, None, byref(c_int(0)), 0),
    "GetParameters(nparams=NULL)": lambda d, b: lib.virDomainBackupGetParameters(b, None, None, 0),
    "SetDefaultTarget(domain=NULL)": lambda d, b: lib.virDomainSetDefaultTarget(
        None, b"<target type='dir'><path>/tmp</path></target>", 0),
    "SetDefaultTarget(xml=NULL)": lambda d, b: lib.virDomainSetDefaultTarget(d, None, 0),
    "UndefineFlags(NULL)": lambda d, b: lib.virDomainBackupUndefineFlags(None, 0),
}


@pytest.fixture
def dom_and_backup(env):
    dom = env.domain(size=8 * MiB)
    b = create(dom, backup_xml_for({"vda": env.path("x.qcow2")}))
    yield dom, b
    free(b)


@pytest.mark.parametrize("call", sorted(NULL_CALLS))
def test_null_pointer(env, dom_and_backup, call):
    dom, b = dom_and_backup
    r = NULL_CALLS[call](dom.ptr, b)
    assert r in (None, -1), f"{call} returned {r!r}"
    msg = expect_error(VIR_ERR_INVALID_ARG)
    assert msg.startswith("invalid argument"), msg


# ------------------------------------------------------------ wrong objects
def test_domain_pointer_as_backup(env, dom_and_backup):
    dom, _ = dom_and_backup
    d = dom.ptr
    n = c_int(0)
    for name, call in [
        ("Free", lambda: lib.virDomainBackupFree(d)),
        ("Ref", lambda: lib.virDomainBackupRef(d)),
        ("Delete", lambda: lib.virDomainBackupDelete(d, 0)),
        ("ObjGetXMLDesc", lambda: lib.virDomainBackupObjGetXMLDesc(d, 0)),
        ("GetParameters", lambda: lib.virDomainBackupGetParameters(d, None, byref(n), 0)),
        ("FinishJob", lambda: lib.virDomainBackupFinishJob(d, 0)),
        ("AbortJob", lambda: lib.virDomainBackupAbortJob(d, 0)),
        ("GetDomain", lambda: lib.virDomainBackupGetDomain(d)),
        ("ListChildren", lambda: lib.virDomainBackupListChildren(d, None, 0)),
    ]:
        r = call()
        assert r in (None, -1), f"{name} returned {r!r}"
        expect_error(VIR_ERR_INVALID_ARG)
    # The domain is unharmed.
    assert count_backups(dom) == 1


def test_backup_pointer_as_domain(env, dom_and_backup):
    _, b = dom_and_backup
    for name, call in [
        ("CreateXML", lambda: lib.virDomainBackupCreateXML(b, GOOD_XML, 0)),
        ("List", lambda: lib.virDomainBackupList(b, None, 0)),
        ("SetDefaultTarget", lambda: lib.virDomainSetDefaultTarget(
            b, b"<target type='dir'><path>/tmp</path></target>", 0)),
        ("UndefineFlags", lambda: lib.virDomainBackupUndefineFlags(b, 0)),
        ("RestoreUnmanaged", lambda: lib.virDomainBackupRestoreUnmanaged(b, GOOD_XML, 0)),
    ]:
        r = call()
        assert r in (None, -1), f"{name} returned {r!r}"
        expect_error(VIR_ERR_INVALID_ARG)
    assert backup_uuid(b)


def test_garbage_pointer(env):
    junk = ctypes.create_string_buffer(512)
    assert lib.virDomainBackupFree(junk) == -1
    expect_error(VIR_ERR_INVALID_ARG)
    assert lib.virDomainBackupObjGetXMLDesc(junk, 0) is None
    expect_error(VIR_ERR_INVALID_ARG)
    assert lib.virDomainBackupCreateXML(junk, GOOD_XML, 0) is None
    expect_error(VIR_ERR_INVALID_ARG)
    assert lib.virDomainBackupList(junk, None, 0) == -1
    expect_error(VIR_ERR_INVALID_ARG)


def test_exact_xml_name_forwards_domains_to_libvirt(env):
    """API.md name clash, point 1: virDomainBackupGetXMLDesc on a
    virDomainPtr still reaches libvirt's function (which the test driver
    does not support), and does not crash."""
    dom = env.domain(size=8 * MiB)
    r = lib.virDomainBackupGetXMLDesc(dom.ptr, 0)
    assert r is None
    assert virt.virGetLastErrorCode() == VIR_ERR_NO_SUPPORT


# ---------------------------------------------------------------- bad flags
def _flag_calls(dom, b):
    n = c_int(0)
    return [
        ("virDomainBackupCreateXML", 1 << 3, lambda f: lib.virDomainBackupCreateXML(dom, GOOD_XML, f)),
        ("virDomainBackupStartUnmanaged", 1 << 3, lambda f: lib.virDomainBackupStartUnmanaged(
            dom, b"<domainbackup><server transport='tcp' name='127.0.0.1' port='10809'/></domainbackup>", f)),
        ("virDomainBackupList", 1 << 5, lambda f: lib.virDomainBackupList(dom, None, f)),
        ("virDomainBackupListChildren", 1 << 5, lambda f: lib.virDomainBackupListChildren(b, None, f)),
        ("virDomainBackupRestore", 1 << 5, lambda f: lib.virDomainBackupRestore(
            f"<domainbackup><uuid>{backup_uuid(b)}</uuid></domainbackup>".encode(), f)),
        ("virDomainBackupRestoreUnmanaged", 1 << 5, lambda f: lib.virDomainBackupRestoreUnmanaged(
            dom, b"<domainbackup/>", f)),
        ("virDomainBackupDelete", 1 << 3, lambda f: lib.virDomainBackupDelete(b, f)),
        ("virDomainBackupGetXMLDesc", 1 << 1, lambda f: lib.virDomainBackupGetXMLDesc(b, f)),
        ("virDomainBackupLookupByUUID", 1 << 0, lambda f: lib.virDomainBackupLookupByUUID(
            backup_uuid(b).encode(), f)),
        ("virDomainBackupFinishJob", 1 << 2, lambda f: lib.virDomainBackupFinishJob(b, f)),
        ("virDomainBackupAbortJob", 1 << 0, lambda f: lib.virDomainBackupAbortJob(b, f)),
        ("virDomainBackupGetParameters", 1 << 0, lambda f: lib.virDomainBackupGetParameters(
            b, None, byref(n), f)),
        ("virDomainSetDefaultTarget", 1 << 2, lambda f: lib.virDomainSetDefaultTarget(
            dom, b"<target type='dir'><path>/tmp</path></target>", f)),
    ]


FLAG_FUNCS = [
    "virDomainBackupCreateXML", "virDomainBackupStartUnmanaged", "virDomainBackupList",
    "virDomainBackupListChildren", "virDomainBackupRestore", "virDomainBackupRestoreUnmanaged",
    "virDomainBackupDelete", "virDomainBackupGetXMLDesc", "virDomainBackupLookupByUUID",
    "virDomainBackupFinishJob", "virDomainBackupAbortJob", "virDomainBackupGetParameters",
    "virDomainSetDefaultTarget",
]


@pytest.mark.parametrize("func", FLAG_FUNCS)
def test_unknown_flags(env, dom_and_backup, func):
    dom, b = dom_and_backup
    (name, bit, call), = [c for c in _flag_calls(dom.ptr, b) if c[0] == func]
    for flags in (bit, 1 << 31):
        r = call(flags)
        assert r in (None, -1), f"{func}(flags={flags:#x}) returned {r!r}"
        expect_error(VIR_ERR_INVALID_ARG, f"unsupported flags ({flags:#x})", func)
    # The backup is untouched by the refused calls.
    assert count_backups(dom) == 1
    assert backup_uuid(b)


def test_bad_flags_create_nothing(env):
    dom = env.domain(size=8 * MiB)
    before = tmp_files(env)
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": env.path("bf.qcow2")}).encode(), CREATE_WAIT | 1 << 8) is None
    expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x100)")
    assert tmp_files(env) == before
    assert count_backups(dom) == 0


# ------------------------------------------------------- exclusive flag pairs
def test_exclusive_list_flags(env, dom_and_backup):
    dom, b = dom_and_backup
    assert lib.virDomainBackupList(dom, None, LIST_FULL | LIST_INCREMENTAL) == -1
    expect_error(VIR_ERR_INVALID_ARG)
    assert lib.virDomainBackupListChildren(b, None, LIST_FULL | LIST_INCREMENTAL) == -1
    expect_error(VIR_ERR_INVALID_ARG)


def test_exclusive_finish_flags(env, dom_and_backup):
    _, b = dom_and_backup
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CANCEL | FINISH_JOB_CHECK) == -1
    expect_error(VIR_ERR_INVALID_ARG)


def test_exclusive_delete_flags(env, dom_and_backup):
    dom, b = dom_and_backup
    assert lib.virDomainBackupDelete(b, DELETE_ALL | DELETE_ALL_CHILDREN) == -1
    expect_error(VIR_ERR_INVALID_ARG)
    assert count_backups(dom) == 1


def test_list_error_sets_array_null(env, dom_and_backup):
    dom, _ = dom_and_backup
    junk = ctypes.cast(ctypes.c_void_p(0xdead0), BackupArray)
    arr = junk
    assert lib.virDomainBackupList(dom, byref(arr), LIST_FULL | LIST_INCREMENTAL) == -1
    assert not arr, "*backups must be NULL on error"
    arr = junk
    assert lib.virDomainBackupList(dom, byref(arr), 1 << 9) == -1
    assert not arr


# ------------------------------------------------------------ malformed XML
MALFORMED = [
    "",
    "not xml at all",
    "<domainbackup>",
    "<domainbackup><disks></domainbackup>",
    "<backup/>",
    "<domainbackup><uuid>nope</uuid></domainbackup>",
    "<domainbackup><disks><disk/></disks></domainbackup>",
    "<domainbackup><disks><disk name='vda'/><disk name='vda'/></disks></domainbackup>",
    "<domainbackup><disks><disk name='vda'><target file='relative.qcow2'/></disk></disks></domainbackup>",
    "<domainbackup><disks><disk name='vda'><driver type='vmdk'/></disk></disks></domainbackup>",
    "<domainbackup><disks><disk name='vda' backup='maybe'/></disks></domainbackup>",
    "<domainbackup><parent/></domainbackup>",
    "<domainbackup><parent><uuid>xyz</uuid></parent></domainbackup>",
]


@pytest.mark.parametrize("doc", MALFORMED)
def test_malformed_xml(env, doc):
    dom = env.domain(size=8 * MiB)
    before = tmp_files(env)
    assert lib.virDomainBackupCreateXML(dom, doc.encode(), CREATE_WAIT) is None
    expect_error(VIR_ERR_XML_ERROR)
    assert count_backups(dom) == 0
    assert catalog_records(env) == []
    assert tmp_files(env) == before


# -------------------------------------------------- validation before start
def test_unknown_disk(env):
    dom = env.domain(size=8 * MiB)
    before = tmp_files(env)
    ta = env.path("ud-vda.qcow2")
    xml = backup_xml_for({"vda": ta, "vdz": env.path("ud-vdz.qcow2")})
    assert lib.virDomainBackupCreateXML(dom, xml.encode(), CREATE_WAIT) is None
    expect_error(VIR_ERR_INVALID_ARG, "vdz")
    assert not os.path.exists(ta)
    assert tmp_files(env) == before
    assert count_backups(dom) == 0


def test_existing_target(env):
    dom = env.domain(size=8 * MiB)
    target = env.path("exists.qcow2")
    with open(target, "wb") as f:
        f.write(b"precious")
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": target}).encode(), CREATE_WAIT) is None
    expect_error(VIR_ERR_INVALID_ARG, target)
    with open(target, "rb") as f:
        assert f.read() == b"precious"
    assert count_backups(dom) == 0
    assert catalog_records(env) == []


def test_existing_target_of_second_disk(env):
    a = env.disk("e2a.raw", 8 * MiB)
    c = env.disk("e2c.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", c, "raw")])
    ta, tb = env.path("e2-ta.qcow2"), env.path("e2-tb.qcow2")
    open(tb, "wb").close()
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": ta, "vdb": tb}).encode(), CREATE_WAIT) is None
    assert last_error()[0] != 0
    assert not os.path.exists(ta)
    assert os.path.getsize(tb) == 0
    assert count_backups(dom) == 0


def test_target_folder_missing(env):
    dom = env.domain(size=8 * MiB)
    target = env.path("no/such/dir/t.qcow2")
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": target}).encode(), CREATE_WAIT) is None
    assert last_error()[0] != 0
    assert not os.path.exists(env.path("no"))
    assert count_backups(dom) == 0


def test_same_target_twice(env):
    a = env.disk("st-a.raw", 8 * MiB)
    c = env.disk("st-c.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", c, "raw")])
    t = env.path("shared.qcow2")
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": t, "vdb": t}).encode(), CREATE_WAIT) is None
    assert last_error()[0] != 0
    assert not os.path.exists(t)
    assert count_backups(dom) == 0


def test_uuid_already_used(env):
    dom = env.domain(size=8 * MiB)
    u = str(uuidlib.uuid4())
    b = create(dom, backup_xml_for({"vda": env.path("u1.qcow2")}, uuid=u))
    t2 = env.path("u2.qcow2")
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": t2}, uuid=u).encode(), CREATE_WAIT) is None
    code, msg = last_error()
    assert code != 0 and code != VIR_ERR_XML_ERROR, msg
    assert not os.path.exists(t2)
    assert count_backups(dom) == 1
    assert lib.virDomainBackupFinishJob(b, 0) == 0
    free(b)


def test_uuid_used_by_other_domain(env):
    d1, d2 = env.domain(size=8 * MiB), env.domain(size=8 * MiB)
    u = str(uuidlib.uuid4())
    free(create(d1, backup_xml_for({"vda": env.path("ua.qcow2")}, uuid=u)))
    t2 = env.path("ub.qcow2")
    assert lib.virDomainBackupCreateXML(
        d2, backup_xml_for({"vda": t2}, uuid=u).encode(), CREATE_WAIT) is None
    assert last_error()[0] != 0
    assert not os.path.exists(t2)
    assert count_backups(d2) == 0


def test_unknown_parent(env):
    dom = env.domain(size=8 * MiB)
    t = env.path("up.qcow2")
    p = str(uuidlib.uuid4())
    assert lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": t}, parent=p).encode(), CREATE_WAIT) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP, p)
    assert not os.path.exists(t)
    assert count_backups(dom) == 0


def test_parent_of_another_domain(env):
    d1, d2 = env.domain(size=8 * MiB), env.domain(size=8 * MiB)
    b = create(d1, backup_xml_for({"vda": env.path("pa.qcow2")}))
    t = env.path("pb.qcow2")
    assert lib.virDomainBackupCreateXML(
        d2, backup_xml_for({"vda": t}, parent=backup_uuid(b)).encode(), CREATE_WAIT) is None
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert not os.path.exists(t)
    assert count_backups(d2) == 0
    free(b)


def test_no_disk_selected(env):
    dom = env.domain(size=8 * MiB)
    assert lib.virDomainBackupCreateXML(
        dom, b"<domainbackup><disks><disk name='vda' backup='no'/></disks></domainbackup>", 0) is None
    assert last_error()[0] != 0
    assert count_backups(dom) == 0
    assert catalog_records(env) == []


def test_finished_job_cannot_be_cancelled(env, dom_and_backup):
    dom, b = dom_and_backup
    assert lib.virDomainBackupAbortJob(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CANCEL) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert lib.virDomainBackupAbortJob(h, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    free(h)
    # Still there and completed.
    assert count_backups(dom) == 1


# ------------------------------------------------------ restore / unmanaged
def test_restore_argument_errors(env):
    assert lib.virDomainBackupRestore(b"<domainbackup>", 0) == -1
    expect_error(VIR_ERR_XML_ERROR)
    assert lib.virDomainBackupRestore(b"<domainbackup/>", 0) == -1
    expect_error(VIR_ERR_XML_ERROR)
    u = str(uuidlib.uuid4())
    assert lib.virDomainBackupRestore(f"<domainbackup><uuid>{u}</uuid></domainbackup>".encode(), 0) == -1
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)


def test_unmanaged_malformed_xml(env):
    dom = env.domain(size=8 * MiB)
    assert lib.virDomainBackupStartUnmanaged(dom, b"<domainbackup", 0) is None
    expect_error(VIR_ERR_XML_ERROR)
    assert lib.virDomainBackupRestoreUnmanaged(dom, b"<<", 0) == -1
    expect_error(VIR_ERR_XML_ERROR)


def test_set_default_target_errors(env):
    dom = env.domain(size=8 * MiB)
    assert lib.virDomainSetDefaultTarget(dom, b"<target type='dir'>", 0) == -1
    expect_error(VIR_ERR_XML_ERROR)
    assert lib.virDomainSetDefaultTarget(dom, b"<target type='dir'><path>rel</path></target>", 0) == -1
    expect_error(VIR_ERR_XML_ERROR)


# --------------------------------------------------------- the last error
def test_last_error_struct(env):
    assert lib.virDomainBackupLookupByUUID(b"0", 0) is None
    e = lib.virDomainBackupGetLastError()
    assert e
    code, msg = last_error()
    assert e.contents.code == code == VIR_ERR_INVALID_ARG
    assert e.contents.message.decode() == msg
    assert e.contents.level == 2  # VIR_ERR_ERROR
    lib.virDomainBackupResetLastError()
    assert not lib.virDomainBackupGetLastError()
    assert last_error() == (0, "no error")


def test_error_reset_on_success(env, dom_and_backup):
    dom, b = dom_and_backup
    assert lib.virDomainBackupFree(None) == -1
    assert last_error()[0] == VIR_ERR_INVALID_ARG
    assert lib.virDomainBackupList(dom, None, 0) == 1
    assert last_error() == (0, "no error")
    assert not lib.virDomainBackupGetLastError()
    assert lib.virDomainBackupFree(None) == -1
    p = lib.virDomainBackupGetXMLDesc(b, 0)
    assert p
    libc.free(p)
    assert last_error()[0] == 0


def test_last_error_is_thread_local(env):
    assert lib.virDomainBackupLookupByUUID(b"bad", 0) is None
    assert last_error()[0] == VIR_ERR_INVALID_ARG
    seen = {}

    def worker():
        seen["initial"] = last_error()
        lib.virDomainBackupLookupByUUID(str(uuidlib.uuid4()).encode(), 0)
        seen["after"] = last_error()[0]

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["initial"] == (0, "no error")
    assert seen["after"] == VIR_ERR_NO_DOMAIN_BACKUP
    # Ours is unchanged by the other thread.
    assert last_error()[0] == VIR_ERR_INVALID_ARG


def test_libvirt_function_unchanged_by_loading_us(env):
    """API.md name clash, point 4: libvirt's own virDomainBackupGetXMLDesc
    (resolved from libvirt.so.0) is still libvirt's in a process that loaded
    libvirt-backup: on a test-driver domain it fails with libvirt's
    VIR_ERR_NO_SUPPORT and leaves our last error alone."""
    dom = env.domain(size=8 * MiB)
    assert lib.virDomainBackupLookupByUUID(b"bad", 0) is None
    assert virt.virDomainBackupGetXMLDesc(dom.ptr, 0) is None
    assert virt.virGetLastErrorCode() == VIR_ERR_NO_SUPPORT
    assert last_error()[0] == VIR_ERR_INVALID_ARG
