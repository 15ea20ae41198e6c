"""Crash safety (API.md "Job semantics"): a process killed in the middle of
a backup leaves no half-written backup listed; the next process that opens
the catalog discards it with its partial data.

A helper process starts a backup (without WAIT) of the 2 GiB `big_disk` of a
node-file domain, prints the backup's UUID and target, then sleeps. The test
stops it (SIGSTOP, so the copy cannot finish meanwhile), checks the backup is
listed as running, then kills it with SIGKILL."""

import os
import signal
import threading

import pytest

from conftest import (CREATE_WAIT, FINISH_JOB_CHECK, MiB, STATE_RUNNING,
                      VIR_ERR_NO_DOMAIN_BACKUP, assert_same_image,
                      backup_state, backup_uuid, backup_xml_for,
                      catalog_entries_named, count_backups, create,
                      expect_error, free, get_params, kill_process, lib,
                      list_handles, list_uuids, py_subprocess, run_py,
                      start_backup_process, target_of)


def test_killed_job_is_discarded(env, big_disk):
    small = env.disk("small.raw", 16 * MiB)
    uri, dom = env.node_domain(disks=[("vda", big_disk, "raw"), ("vdb", small, "raw")])

    # An earlier completed backup of the same domain (its small disk).
    earlier_t = env.path("earlier-vdb.qcow2")
    earlier = create(dom, backup_xml_for({"vda": None, "vdb": earlier_t}))
    earlier_uuid = backup_uuid(earlier)
    free(earlier)

    target = env.path("killed-vda.qcow2")
    p, uuid, printed_target = start_backup_process(
        env, uri, dom.name, backup_xml_for({"vda": target, "vdb": None}))
    try:
        assert printed_target == target
        assert os.path.exists(target)

        # Listed as running, seen from this process.
        hs = list_handles(dom)
        states = {backup_uuid(h): backup_state(h) for h in hs}
        for h in hs:
            free(h)
        assert states == {earlier_uuid: "completed", uuid: "running"}
        h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
        assert h, lib.virDomainBackupGetLastErrorMessage()
        assert backup_state(h) == "running"
        assert get_params(h)["state"][1] == STATE_RUNNING
        assert lib.virDomainBackupFinishJob(h, FINISH_JOB_CHECK) == 1

        # Someone here waits for the other process's job.
        waited = {}

        def waiter():
            waited["r"] = lib.virDomainBackupFinishJob(h, 0)
            waited["code"] = lib.virDomainBackupGetLastErrorCode()

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
    except BaseException:
        kill_process(p)
        raise

    kill_process(p)

    # The waiter learns the job is gone instead of hanging.
    t.join(15)
    assert not t.is_alive(), "FinishJob(0) still waiting for a job whose process died"
    assert waited["r"] == -1
    assert waited["code"] != 0

    # The killed backup is gone: not found, not listed, no partial file.
    assert lib.virDomainBackupLookupByUUID(uuid.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert list_uuids(dom) == [earlier_uuid]
    assert not os.path.exists(target), "partial target of the killed job left behind"
    assert catalog_entries_named(env, uuid) == []
    # The old handle now reports the backup as gone.
    assert lib.virDomainBackupGetXMLDesc(h, 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    free(h)

    # The earlier backup is intact.
    e = lib.virDomainBackupLookupByUUID(earlier_uuid.encode(), 0)
    assert e
    assert backup_state(e) == "completed"
    assert target_of(e, "vdb") == earlier_t
    free(e)
    assert_same_image(small, "raw", earlier_t, "qcow2")

    # And the domain can be backed up again.
    again = env.path("again-vdb.qcow2")
    free(create(dom, backup_xml_for({"vda": None, "vdb": again})))
    assert count_backups(dom) == 2
    assert_same_image(small, "raw", again, "qcow2")


def test_killed_job_discarded_by_fresh_process(env, big_disk):
    """Default target in the catalog; the first process to look after the
    kill is a fresh one."""
    uri, dom = env.node_domain(disks=[("vda", big_disk, "raw")])
    p, uuid, target = start_backup_process(env, uri, dom.name, "<domainbackup/>")
    try:
        assert target.startswith(env.catalog)
        assert os.path.exists(target)
        assert count_backups(dom) == 1
    finally:
        kill_process(p)
    out = run_py(f"""
        h = lib.virDomainBackupLookupByUUID({uuid!r}.encode(), 0)
        print("LOOKUP", h, last_error()[0])
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
        print("LIST", lib.virDomainBackupList(d, None, 0))
        print("EXISTS", os.path.exists({target!r}))
    """, env.catalog)
    assert f"LOOKUP None {VIR_ERR_NO_DOMAIN_BACKUP}" in out
    assert "LIST 0" in out
    assert "EXISTS False" in out
    assert not os.path.exists(target)
    assert count_backups(dom) == 0
    assert catalog_entries_named(env, uuid) == []


def test_abort_from_another_process(env, big_disk):
    """AbortJob on a handle of a process that does not run the job: it asks
    the job's process to stop (a marker in the catalog), waits until the
    partial data is gone, and returns 0. The job's process is stopped while
    the request is made, so the job cannot complete first."""
    uri, dom = env.node_domain(disks=[("vda", big_disk, "raw")])
    target = env.path("remote-abort.qcow2")
    p, uuid, _ = start_backup_process(env, uri, dom.name, backup_xml_for({"vda": target}))
    try:
        h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
        assert h, lib.virDomainBackupGetLastErrorMessage()
        result = {}

        def abort():
            result["r"] = lib.virDomainBackupAbortJob(h, 0)
            result["code"] = lib.virDomainBackupGetLastErrorCode()

        t = threading.Thread(target=abort, daemon=True)
        t.start()
        t.join(0.5)
        assert t.is_alive(), "AbortJob returned before the job's process could react"
        os.kill(p.pid, signal.SIGCONT)
        t.join(30)
        assert not t.is_alive(), "AbortJob did not return"
        assert result == {"r": 0, "code": 0}
        assert not os.path.exists(target), "partial target left behind"
        assert count_backups(dom) == 0
        assert catalog_entries_named(env, uuid) == []
        # Nothing is left to cancel.
        assert lib.virDomainBackupAbortJob(h, 0) == -1
        expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
        free(h)
    finally:
        kill_process(p)


# ------------------------------------------------ killed at the first steps
def temporary_names(catalog):
    """What a process killed midway can leave in the catalog besides records
    and data: temporary files of atomic writes (`.*.tmp`), job lock files
    and cancel requests in domain folders, restore notes, exports' scratch
    folders and registrations. (The root's `.lock` and the domains' job
    locks in `.domain-locks/` and the job history's lock in `.history/` are
    kept for good.)"""
    out = []
    for d, dirs, files in os.walk(catalog):
        rel = os.path.relpath(d, catalog)
        for n in files:
            if (n.endswith(".tmp") or n.startswith(".restoring-")
                    or (rel not in (".", ".domain-locks", ".history") and n.endswith((".lock", ".cancel")))
                    or rel == ".exports"):
                out.append(os.path.join(rel, n))
        out += [os.path.join(rel, n) for n in dirs if n.startswith(".scratch-")]
    return sorted(out)


def killed_create(env, uri, dom_name, xml, point):
    """CreateXML (with WAIT) in a child process of the test build that kills
    itself (SIGKILL) at the stop `point` (see src/testhook.rs)."""
    p = py_subprocess(f"""
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom_name!r}.encode())
        b = lib.virDomainBackupCreateXML(d, {xml!r}.encode(), {CREATE_WAIT})
        print("survived", bool(b), last_error())
    """, env.catalog, extra_env={"LIBVIRT_BACKUP_TEST_STOP": point})
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, (point, out, err)


# Each step of CreateXML that leaves a file: the job's lock file made, the
# summary's and the record's temporary files written (the domain's first
# backup writes the summary first), the target created, and the completed
# record's temporary file written.
FIRST_STEPS = ["create-job-locked", "atomic-tmp-written#1", "atomic-tmp-written#2",
               "create-target-created", "atomic-tmp-written#3"]


@pytest.mark.parametrize("point", FIRST_STEPS)
def test_killed_in_any_step_of_create_leaves_no_temporary_file(env, point):
    """Regression: a CreateXML killed in its first milliseconds left
    `<uuid>.lock` and `.<uuid>.xml.tmp` in the domain's folder that nothing
    ever removed. The next reader of the domain sweeps every temporary name
    the library makes (and only those), and the backup's UUID is free
    again."""
    uri, dom = env.node_domain(size=16 * MiB)
    u = "3c0e3a62-5d0b-4b8e-9d6f-0d2f1f8f6a01"
    target = env.path("t.qcow2")
    xml = backup_xml_for({"vda": target}, uuid=u)
    killed_create(env, uri, dom.name, xml, point)
    assert os.path.isdir(os.path.join(env.catalog, dom.uuid))
    assert temporary_names(env.catalog), "killed before anything was left: nothing tested"
    folder = os.path.join(env.catalog, dom.uuid)
    assert list_uuids(dom) == []
    assert temporary_names(env.catalog) == []
    assert not os.path.exists(target)
    assert catalog_entries_named(env, u) == []
    b = create(dom, xml)
    assert backup_uuid(b) == u
    free(b)
    assert temporary_names(env.catalog) == []
    assert os.listdir(folder)
