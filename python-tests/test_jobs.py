"""Running jobs (API.md "Job semantics"): progress, FinishJob CHECK,
AbortJob / FinishJob(CANCEL), refusals while a job runs, and a job that fails.

The jobs copy a 2 GiB disk full of data (the session's `big_disk`), which
takes seconds, so they are still running when the test looks at them; every
test cancels its job before it ends."""

import json
import os
import time
from ctypes import byref, c_int

import pytest

from conftest import (BIG_DISK_SIZE, CREATE_WAIT, DELETE_ALL,
                      FINISH_JOB_CANCEL, FINISH_JOB_CHECK, MiB,
                      STATE_CANCELLED, STATE_RUNNING, VIR_DOMAIN_UNDEFINE_BACKUP,
                      VIR_ERR_NO_DOMAIN_BACKUP, VIR_ERR_OPERATION_ABORTED,
                      VIR_ERR_OPERATION_INVALID, assert_same_image,
                      backup_state, backup_uuid, backup_xml_for,
                      count_backups, create, expect_error, free, get_params,
                      last_error, lib, list_handles, run_py, target_of,
                      wait_until)


def start_big(env, big_disk, target="default", name=None):
    """A domain on the big disk and a backup job of it, still running."""
    dom = env.domain(disks=[("vda", big_disk, "raw")], name=name)
    if target == "default":
        target = env.path(f"big-{dom.name}.qcow2")
    xml = backup_xml_for({"vda": target}) if target else "<domainbackup/>"
    b = create(dom, xml, 0)
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1, \
        "job already over: the big disk copies too fast for this test"
    return dom, b


@pytest.fixture
def running(env, big_disk):
    dom, b = start_big(env, big_disk)
    yield dom, b
    # Never leave a 2 GiB copy running behind a test.
    if lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1:
        lib.virDomainBackupAbortJob(b, 0)
    lib.virDomainBackupFree(b)


def test_running_job_is_visible(env, running):
    dom, b = running
    target = target_of(b)
    assert os.path.exists(target)
    assert backup_state(b) == "running"
    p = get_params(b)
    assert p["state"][1] == STATE_RUNNING
    assert p["bytes.total"][1] == BIG_DISK_SIZE
    assert p["bytes.processed"][1] < BIG_DISK_SIZE
    assert p["disks"][1] == 1
    assert "error" not in p
    # Listed from the start, as running, through every kind of handle.
    (h,) = list_handles(dom)
    assert backup_state(h) == "running"
    assert lib.virDomainBackupFinishJob(h, FINISH_JOB_CHECK) == 1
    free(h)
    h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert h
    assert backup_state(h) == "running"
    free(h)
    # Values are live.
    e1, p1 = p["time.elapsed"][1], p["bytes.processed"][1]
    assert wait_until(lambda: get_params(b)["bytes.processed"][1] > p1, timeout=5)
    assert get_params(b)["time.elapsed"][1] > e1
    assert lib.virDomainBackupAbortJob(b, 0) == 0


def _check_cancelled(env, dom, b, target, uuid):
    assert not os.path.exists(target), "partial target left behind"
    assert count_backups(dom) == 0
    assert lib.virDomainBackupLookupByUUID(uuid.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    # The handle still answers GetParameters with the final state.
    p = get_params(b)
    assert p["state"][1] == STATE_CANCELLED
    assert "error" not in p or p["error"][1]
    # FinishJob reports the job's end: cancelled.
    assert lib.virDomainBackupFinishJob(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_ABORTED)
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == -1
    # Cancelling again: the job has ended.
    assert lib.virDomainBackupAbortJob(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)


def test_abort_job(env, running):
    dom, b = running
    target, uuid = target_of(b), backup_uuid(b)
    assert lib.virDomainBackupAbortJob(b, 0) == 0, last_error()
    _check_cancelled(env, dom, b, target, uuid)


def test_finish_job_cancel(env, running):
    dom, b = running
    target, uuid = target_of(b), backup_uuid(b)
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CANCEL) == 0, last_error()
    _check_cancelled(env, dom, b, target, uuid)


def test_cancel_default_target(env, big_disk):
    dom, b = start_big(env, big_disk, target=None)
    try:
        target, uuid = target_of(b), backup_uuid(b)
        assert target.startswith(env.catalog)
        assert os.path.exists(target)
        assert lib.virDomainBackupAbortJob(b, 0) == 0, last_error()
        _check_cancelled(env, dom, b, target, uuid)
    finally:
        free(b)


def test_abort_through_lookup_handle(env, running):
    dom, b = running
    target, uuid = target_of(b), backup_uuid(b)
    h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    assert h
    assert lib.virDomainBackupAbortJob(h, 0) == 0, last_error()
    free(h)
    assert not os.path.exists(target)
    assert count_backups(dom) == 0
    assert get_params(b)["state"][1] == STATE_CANCELLED


def test_free_does_not_stop_job(env, big_disk):
    dom, b = start_big(env, big_disk)
    uuid = backup_uuid(b)
    free(b)
    (h,) = list_handles(dom)
    try:
        assert backup_state(h) == "running"
        assert lib.virDomainBackupFinishJob(h, FINISH_JOB_CHECK) == 1
        assert lib.virDomainBackupAbortJob(h, 0) == 0, last_error()
        assert count_backups(dom) == 0
    finally:
        free(h)


def test_delete_running_refused(env, big_disk):
    small_dom_disk = env.disk("earlier.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", big_disk, "raw"), ("vdb", small_dom_disk, "raw")])
    earlier_t = env.path("earlier.qcow2")
    earlier = create(dom, backup_xml_for({"vda": None, "vdb": earlier_t}))
    target = env.path("dr.qcow2")
    b = create(dom, backup_xml_for({"vda": target, "vdb": None}), 0)
    try:
        assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1
        assert lib.virDomainBackupDelete(b, 0) == -1
        expect_error(VIR_ERR_OPERATION_INVALID)
        assert lib.virDomainBackupDelete(earlier, DELETE_ALL) == -1
        expect_error(VIR_ERR_OPERATION_INVALID)
        assert count_backups(dom) == 2
        assert os.path.exists(target)
        assert_same_image(small_dom_disk, "raw", earlier_t, "qcow2")
    finally:
        lib.virDomainBackupAbortJob(b, 0)
        free(b)
        free(earlier)


def test_second_job_same_domain_refused(env, running):
    dom, b = running
    t2 = env.path("second.qcow2")
    assert lib.virDomainBackupCreateXML(dom, backup_xml_for({"vda": t2}).encode(), 0) is None
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert not os.path.exists(t2)
    assert count_backups(dom) == 1


def test_other_domain_while_running(env, running):
    dom, b = running
    other = env.domain(size=32 * MiB)
    t = env.path("other.qcow2")
    o = create(other, backup_xml_for({"vda": t}), CREATE_WAIT)
    assert_same_image(other.disks[0][1], "raw", t, "qcow2")
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1
    free(o)


def test_undefine_while_running_refused(env, running):
    dom, b = running
    assert lib.virDomainBackupUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert count_backups(dom) == 1


def test_failed_job(env):
    """A job whose target cannot grow (RLIMIT_FSIZE, SIGXFSZ ignored, in a
    subprocess) fails: FinishJob -1, state FAILED with an "error" string,
    nothing left behind."""
    src = env.disk("fail.raw", 96 * MiB, writes=[(0, 96 * MiB, 0x3C)])
    uri, dom = env.node_domain(disks=[("vda", src, "raw")])
    target = env.path("fail.qcow2")
    out = run_py(f"""
        import json, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, resource.RLIM_INFINITY))
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
        res = {{}}
        b = lib.virDomainBackupCreateXML(d, {backup_xml_for({"vda": target})!r}.encode(), 0)
        res["created"] = bool(b)
        res["create_error"] = last_error()
        if b:
            res["uuid"] = backup_uuid(b)
            res["finish"] = lib.virDomainBackupFinishJob(b, 0)
            res["finish_error"] = last_error()
            res["params"] = get_params(b)
            res["listed"] = count_backups(d)
            res["target_exists"] = os.path.exists({target!r})
            free(b)
        print(json.dumps(res))
    """, env.catalog)
    res = json.loads(out.strip().splitlines()[-1])
    assert res["created"], f"CreateXML failed at once: {res['create_error']}"
    assert res["finish"] == -1
    assert res["finish_error"][0] != 0
    p = res["params"]
    assert p["state"][1] == 3  # FAILED
    assert p["error"][0] == 7  # VIR_TYPED_PARAM_STRING
    assert p["error"][1]
    assert res["listed"] == 0
    assert not res["target_exists"]
    assert not os.path.exists(target)
    assert count_backups(dom) == 0
    assert lib.virDomainBackupLookupByUUID(res["uuid"].encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
