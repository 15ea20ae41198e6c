"""SIGTERM and SIGHUP stop a command as Ctrl-C (SIGINT) does: `create`
aborts its job and its partial data is removed, `export` ends its libvirt
job and NBD server, `restore` has its new files removed, `verify` stops,
`wait` stops waiting and leaves the job running, and the detached process
of `create --no-wait` ignores SIGHUP but aborts on SIGTERM. Each exits
with 128 + the signal's number after one line on stderr,
`interrupted by SIGNAME: what was cleaned up`.

Domains, catalog and helpers as in test_cli.py (qemu:///system TCG
domains, a private catalog through LIBVIRT_BACKUP_DIR)."""

import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

from test_cli import MiB, URI, VB, catalog_files, env, vb, vbj, virsh  # noqa: F401

STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def filled_domain(env, size=256 * MiB, start=False):
    """A domain whose one disk is all data (every byte copied)."""
    vda = env.disk("big.qcow2", size, writes=(("0x31", 0, size),))
    return env.domain([("vda", vda)], start=start), vda


def popen(*args, env=None):
    return subprocess.Popen([VB, "-c", URI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def first_line(p, prefix):
    """The first stdout line, which must start with `prefix` (a progress
    line: the job is under way)."""
    line = p.stdout.readline()
    if not line.startswith(prefix):
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"want a line starting {prefix!r}, got {line!r}\n{out}\n{err}")
    return line


def stopped(p, sig, timeout=120):
    """Send `sig`; wait for the end; check the exit status and that stderr
    is the one `interrupted by` line; return (stdout, that line)."""
    p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    name = signal.Signals(sig).name
    assert p.returncode == STATUS[sig], (p.returncode, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted by {name}: "), err
    return out, lines[0]


def no_scratch(env):
    root = os.environ["LIBVIRT_BACKUP_DIR"]
    return [f for f in os.listdir(root) if f.startswith((".scratch-", ".restoring-"))] == []


def no_job(dom):
    info = virsh("domjobinfo", dom).stdout
    return "None" in info.split("\n")[0], info


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_aborts_create_of_a_shut_off_domain(env, sig):
    dom, _ = filled_domain(env)
    target = env.path("t.qcow2")
    p = popen("create", dom, "--disk", f"vda={target}", "--rate", "32M")
    first_line(p, "backup: ")
    _, line = stopped(p, sig)
    assert "aborted, its partial data removed" in line, line
    assert vbj("list", dom) == []
    assert not os.path.exists(target)
    assert catalog_files(env) == [] and no_scratch(env)


def test_sigterm_aborts_create_of_a_running_domain(env):
    dom, vda = filled_domain(env, start=True)
    p = popen("create", dom, "--rate", "32M")
    first_line(p, "backup: ")
    _, line = stopped(p, signal.SIGTERM)
    assert "aborted, its partial data removed" in line, line
    assert vbj("list", dom) == []
    assert catalog_files(env) == [] and no_scratch(env)
    ok, info = no_job(dom)
    assert ok, info
    # The domain backs up again (no job, no checkpoint left in the way).
    assert vbj("create", dom)["kind"] == "full"


def test_sigterm_ends_export_and_the_domain_backs_up_again(env):
    """SIGTERM used to kill `export` outright: libvirt's pull job and its
    NBD server stayed, and the domain's next backup failed with "the domain
    already has a job running"."""
    vda = env.disk("e.qcow2", 64 * MiB)
    dom = env.domain([("vda", vda)], start=True)
    sock = env.path("e.sock")
    p = popen("export", dom, "--unix", sock)
    assert first_line(p, "disk vda: export ")
    assert subprocess.run(["nbdinfo", "--size", f"nbd+unix:///vda?socket={sock}"],
                          capture_output=True).returncode == 0
    out, line = stopped(p, signal.SIGTERM)
    assert "export ended" in out
    assert line == "interrupted by SIGTERM: export ended: its backup job and NBD server stopped"
    ok, info = no_job(dom)
    assert ok, info
    assert subprocess.run(["nbdinfo", "--size", f"nbd+unix:///vda?socket={sock}"],
                          capture_output=True).returncode != 0
    b = vbj("create", dom)
    assert b["kind"] == "full" and b["state"] == "completed"
    assert no_scratch(env)


def test_sighup_ends_export_of_a_shut_off_domain(env):
    """A shut-off domain is served by the library's own NBD server, with a
    scratch folder under $TMPDIR: both gone after SIGHUP."""
    vda = env.disk("s.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    # Short: the server's sockets go in it (108 bytes at most).
    tmp = tempfile.TemporaryDirectory(prefix="vbs-", dir="/tmp")
    sock = env.path("s.sock")
    p = popen("export", dom, "--unix", sock, env={**os.environ, "TMPDIR": tmp.name})
    first_line(p, "disk vda: export ")
    _, line = stopped(p, signal.SIGHUP)
    assert line.startswith("interrupted by SIGHUP: export ended"), line
    assert os.listdir(tmp.name) == []
    tmp.cleanup()
    assert subprocess.run(["nbdinfo", "--size", f"nbd+unix:///vda?socket={sock}"],
                          capture_output=True).returncode != 0
    assert vbj("create", dom)["state"] == "completed"


def test_sigterm_during_restore_leaves_nothing(env):
    dom, _ = filled_domain(env, 1024 * MiB)
    b = vbj("create", dom)
    target = env.path("restored.qcow2")
    name = env.expect_domain(dom + "-r")
    p = popen("restore", b["uuid"], "--new-domain", name, "--disk", f"vda={target}")
    deadline = time.monotonic() + 60
    while not os.path.exists(target) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert p.poll() is None, "the restore ended before it could be interrupted"
    _, line = stopped(p, signal.SIGTERM)
    assert f"restore of backup {b['uuid']} stopped" in line and "removed" in line, line
    assert not os.path.exists(target)
    assert virsh("dominfo", name, check=False).returncode != 0
    assert no_scratch(env)
    assert [x["uuid"] for x in vbj("list", dom)] == [b["uuid"]]


def test_sigterm_stops_verify(env):
    dom, _ = filled_domain(env, 1024 * MiB)
    uuids = [vbj("create", dom)["uuid"] for _ in range(2)]
    p = popen("verify", dom)
    first_line(p, "verify ")
    _, line = stopped(p, signal.SIGTERM)
    m = re.fullmatch(r"interrupted by SIGTERM: verification of backup (\S+) stopped "
                     r"\(([01]) of 2 backups verified; nothing to clean up\)", line)
    assert m and m.group(1) == uuids[int(m.group(2))], line
    # The backups are untouched: they verify.
    assert vbj("verify", dom)["ok"] is True
    assert [x["uuid"] for x in vbj("list", dom)] == uuids


def detached_pid(marker):
    """The pid of the detached `create --no-wait` whose command line holds
    `marker`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"--no-wait" in args and any(marker.encode() in a for a in args):
            return int(pid)
    raise AssertionError(f"no detached process for {marker}")


def gone(pid, timeout=60):
    """Whether `pid` ended (or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_wait_stops_waiting_and_no_wait_child_ignores_sighup(env):
    """`wait` under SIGTERM stops waiting and leaves the job running; the
    detached process of `create --no-wait` ignores SIGHUP, and SIGTERM
    aborts its job (nothing left)."""
    dom, _ = filled_domain(env)
    target = env.path("bg.qcow2")
    j = vbj("create", dom, "--no-wait", "--disk", f"vda={target}", "--rate", "16M")
    p = popen("wait", j["uuid"])
    # The job's progress is in another process: no line to wait for.
    time.sleep(2)
    assert p.poll() is None, p.communicate()
    _, line = stopped(p, signal.SIGTERM)
    assert "stopped waiting; the backup job goes on" in line, line
    assert vbj("status", j["uuid"])["state"] == "running"

    pid = detached_pid(target)
    os.kill(pid, signal.SIGHUP)
    time.sleep(1.5)
    assert not gone(pid, 0), "SIGHUP ended the detached process"
    assert vbj("status", j["uuid"])["state"] == "running"
    os.kill(pid, signal.SIGTERM)
    assert gone(pid), "SIGTERM did not end the detached process"
    assert vbj("list", dom) == []
    assert not os.path.exists(target)
    assert catalog_files(env) == [] and no_scratch(env)

