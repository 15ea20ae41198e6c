"""Ctrl-C during a long wait: SIGINT sent to a subprocess that waits in
createXML(..., CREATE_WAIT) or Backup.finishJob(). KeyboardInterrupt must
arrive while the call still waits (the copy takes seconds: an interrupt
that waited for its end would find the backup made, or the job ended);
createXML aborts the job (nothing left behind), finishJob leaves it running
on a handle that still works. How soon it arrives is not timed here."""

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

from conftest import PKG_ROOT, domain_xml, same_image, unique

PRELUDE = """
import json, os, sys, time
import libvirt, libvirt_backup as lb
libvirt.registerErrorHandler(lambda c, e: None, None)
conn = libvirt.open("test:///default")
dom = conn.defineXML(sys.argv[1])
target = sys.argv[2]
xml = f"<domainbackup><disks><disk name='vda'><target file='{target}'/></disk></disks></domainbackup>"
def say(**kw):
    print(json.dumps(kw), flush=True)
"""


def start(env, big_disk, body):
    xml = domain_xml(unique(), [("vda", big_disk, "raw")])
    target = env.path("t.qcow2")
    p = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body), xml, target],
                         env=dict(os.environ, PYTHONPATH=PKG_ROOT), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    return p, target


def read(p, timeout=60):
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, "the subprocess said nothing"
    line = p.stdout.readline()
    assert line, f"the subprocess ended: {p.communicate()[1]}"
    return json.loads(line)


def interrupt(p):
    """SIGINT, then what the subprocess reports."""
    os.kill(p.pid, signal.SIGINT)
    return read(p, 30)


def test_ctrl_c_in_create_wait_aborts_the_job(env, big_disk):
    p, target = start(env, big_disk, """
        say(ready=1)
        try:
            lb.createXML(dom, xml, lb.VIR_DOMAIN_BACKUP_CREATE_WAIT)
            say(interrupted=False)
        except KeyboardInterrupt:
            say(interrupted=True, left=len(lb.listBackups(dom)), target=os.path.exists(target))
    """)
    try:
        assert read(p) == {"ready": 1}
        time.sleep(0.5)  # well into the copy (it takes seconds)
        msg = interrupt(p)
        # Interrupted mid-copy: no backup made, the partial target removed.
        assert msg == {"interrupted": True, "left": 0, "target": False}
        assert p.wait(30) == 0
    finally:
        p.kill()
        p.wait()


def test_ctrl_c_in_finish_job_keeps_the_job(env, big_disk):
    p, target = start(env, big_disk, """
        b = lb.createXML(dom, xml)
        say(ready=1)
        try:
            b.finishJob()
            say(interrupted=False)
        except KeyboardInterrupt:
            say(interrupted=True, check=b.finishJob(lb.VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK),
                state=b.parameters()["state"])
        say(finished=b.finishJob(), state=b.parameters()["state"], listed=len(lb.listBackups(dom)))
    """)
    try:
        assert read(p) == {"ready": 1}
        time.sleep(0.5)
        msg = interrupt(p)
        assert msg == {"interrupted": True, "check": 1, "state": 1}  # still running
        assert read(p, 120) == {"finished": 0, "state": 2, "listed": 1}
        assert p.wait(30) == 0
    finally:
        p.kill()
        p.wait()
    assert same_image(target, "qcow2", big_disk, "raw")
