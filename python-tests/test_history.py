"""The job history (virDomainBackupGetJobHistory) and the progress of a job
seen from another process.

A backup whose job runs in another process shows its live figures here
(LookupByUUID + GetParameters read what the job publishes next to its
record), growing until it completes; a job whose process is killed midway
shows as 'interrupted' in the history, read by any later process.
"""

import os
import signal
import time
import xml.etree.ElementTree as ET

from conftest import (MiB, Nbd, backup_uuid, c_uint, c_void_p, free_port, get_params,
                      kill_process, last_error, lib, py_subprocess, select, take_string,
                      unmanaged_xml)

lib.virDomainBackupGetJobHistory.argtypes = [c_void_p, c_uint]
lib.virDomainBackupGetJobHistory.restype = c_void_p
JOB_HISTORY_FAILED = 1 << 0
STATE_RUNNING, STATE_COMPLETED = 1, 2
RESTORE_FILES_ONLY = 1 << 4


def history(dom=None, flags=0):
    """The <job> elements of the history (of `dom`, or of every domain)."""
    s = take_string(lib.virDomainBackupGetJobHistory(dom.ptr if dom else None, flags))
    assert s is not None, last_error()
    root = ET.fromstring(s)
    assert root.tag == "jobhistory"
    return root.findall("job")


def start_job_process(env, uri, dom_name, xml, extra_env=None):
    """A helper process that starts a backup (without WAIT) of `dom_name`,
    prints its UUID and its pid, then sleeps. Returns (Popen, uuid)."""
    p = py_subprocess(f"""
        import time
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom_name!r}.encode())
        b = lib.virDomainBackupCreateXML(d, {xml!r}.encode(), 0)
        assert b, last_error()
        print(backup_uuid(b), flush=True)
        time.sleep(300)
    """, env.catalog, extra_env=extra_env)
    ready, _, _ = select.select([p.stdout], [], [], 30)
    assert ready, "the backup process printed nothing in 30 s"
    line = p.stdout.readline().strip()
    assert line, p.communicate()[1]
    return p, line


def test_progress_of_a_job_running_in_another_process(env):
    """48 MiB of data at 12 MiB/s: about 4 s, during which this process
    sees bytes.processed above 0 and growing, per disk too, while the
    state says running; then the completed figures."""
    disk = env.disk("progress.raw", 48 * MiB, writes=[(0, 48 * MiB, 0xAB)])
    uri, dom = env.node_domain(disks=[("vda", disk, "raw")])
    xml = "<domainbackup><bandwidth bytes='%d'/></domainbackup>" % (12 * MiB)
    p, uuid = start_job_process(env, uri, dom.name, xml)
    try:
        h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
        assert h, last_error()
        seen = []
        deadline = time.time() + 60
        while time.time() < deadline:
            params = get_params(h)
            state = params["state"][1]
            if state != STATE_RUNNING:
                break
            seen.append((params["bytes.processed"][1], params["disk.0.bytes.processed"][1],
                         params["time.elapsed"][1]))
            time.sleep(0.2)
        assert state == STATE_COMPLETED, params
        done = get_params(h)
        assert done["bytes.processed"][1] == done["bytes.total"][1] == 48 * MiB
        lib.virDomainBackupFree(h)
        live = [s for s in seen if s[0] > 0]
        assert len(live) >= 3, f"no live figures seen from another process: {seen}"
        # The copy may be whole while the job still fsyncs and records.
        assert all(0 < s[0] <= 48 * MiB for s in live), seen
        assert [s for s in live if s[0] < 48 * MiB], f"no figure seen mid-copy: {seen}"
        assert live[-1][0] > live[0][0], f"bytes.processed did not grow: {seen}"
        assert all(a[0] <= b[0] for a, b in zip(live, live[1:])), seen
        assert all(s[1] == s[0] for s in live), "one disk: its figures are the job's"
        assert live[-1][2] > live[0][2], "time.elapsed did not move"
        # The published figures are gone with the job.
        assert not [n for n in os.listdir(os.path.join(env.catalog, dom.uuid))
                    if "progress" in n]
    finally:
        kill_process(p)
    (job,) = history()
    assert (job.get("kind"), job.get("state")) == ("create", "completed")
    assert job.find("backup").get("uuid") == uuid
    assert job.findtext("bytes") == str(48 * MiB)
    assert int(job.findtext("pid")) == p.pid


def test_a_job_whose_process_was_killed_is_interrupted(env):
    """The job's process is held at its second copy window, then killed:
    while it lives its job shows as running, then as interrupted, with no
    <end>, and VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED lists it."""
    disk = env.disk("killed.raw", 32 * MiB, writes=[(0, 32 * MiB, 0x5A)])
    uri, dom = env.node_domain(disks=[("vda", disk, "raw")])
    resume = env.path("resume")
    p, uuid = start_job_process(env, uri, dom.name, "<domainbackup/>", extra_env={
        "LIBVIRT_BACKUP_TEST_PAUSE": "copy-window#2",
        "LIBVIRT_BACKUP_TEST_RESUME": resume,
    })
    try:
        deadline = time.time() + 30
        while not os.path.exists(resume + ".paused"):
            assert time.time() < deadline, "the job never reached its pause point"
            time.sleep(0.05)
        (job,) = history()
        assert (job.get("kind"), job.get("state")) == ("create", "running")
        assert job.find("end") is None
        assert history(flags=JOB_HISTORY_FAILED) == []
        # Its figures are seen from here meanwhile.
        h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
        assert h, last_error()
        deadline = time.time() + 5
        while get_params(h)["bytes.processed"][1] == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert get_params(h)["bytes.processed"][1] >= 4 * MiB
        lib.virDomainBackupFree(h)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
    (job,) = history()
    assert job.get("state") == "interrupted", ET.tostring(job)
    assert job.find("end") is None
    assert job.find("domain").get("uuid") == dom.uuid
    assert job.find("domain").get("name") == dom.name
    assert job.find("backup").get("uuid") == uuid
    assert int(job.findtext("pid")) == p.pid
    assert int(job.findtext("start")) <= int(time.time())
    (failed,) = history(flags=JOB_HISTORY_FAILED)
    assert failed.get("id") == job.get("id")


def test_restores_and_exports_are_jobs_of_the_history(env):
    """A files-only restore (completed), a restore of an unknown backup
    (failed, no domain), an export ended by FinishJob (completed, the
    export's UUID as its backup) and one ended by AbortJob (cancelled)."""
    dom = env.domain(size=4 * MiB)
    b = env.backup(dom, "<domainbackup/>")
    u = backup_uuid(b)
    out = env.path("out")
    os.mkdir(out)
    xml = f"<domainbackup><uuid>{u}</uuid><target dir='{out}'/></domainbackup>"
    assert lib.virDomainBackupRestore(xml.encode(), RESTORE_FILES_ONLY) == 0, last_error()
    unknown = "<domainbackup><uuid>0b0b0b0b-0000-4000-8000-000000000000</uuid></domainbackup>"
    assert lib.virDomainBackupRestore(unknown.encode(), 0) == -1
    exports = []
    for end in (lib.virDomainBackupFinishJob, lib.virDomainBackupAbortJob):
        ex = env.start_unmanaged(dom, unmanaged_xml(Nbd(port=free_port())))
        exports.append(backup_uuid(ex))
        (running,) = [j for j in history() if j.get("kind") == "export"
                      and j.get("state") == "running"]
        assert running.find("backup").get("uuid") == exports[-1]
        assert end(ex, 0) == 0, last_error()
    jobs = [(j.get("kind"), j.get("state")) for j in history()]
    assert jobs == [("create", "completed"), ("restore", "completed"),
                    ("restore", "failed"), ("export", "completed"),
                    ("export", "cancelled")], jobs
    restored, failed, finished, aborted = history()[1:]
    assert restored.find("backup").get("uuid") == u
    assert restored.find("domain").get("uuid") == dom.uuid
    assert failed.find("domain") is None
    assert failed.find("error").get("code") == "104"
    assert [finished.find("backup").get("uuid"), aborted.find("backup").get("uuid")] == exports
    assert all(j.find("end") is not None for j in (finished, aborted))
    # Only this domain's jobs, and only the failures.
    assert len(history(dom)) == 4
    assert [j.get("state") for j in history(flags=JOB_HISTORY_FAILED)] == ["failed", "cancelled"]
