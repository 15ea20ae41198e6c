"""The job lines virt-backup sends to the journal (syslog datagrams, RFC
3164 style, `<PRI>virt-backup[PID]: MESSAGE`, facility daemon) when its
standard error is not a terminal, or always with `--log syslog`, never
with `--log stderr`. Sent to the socket VIRT_BACKUP_SYSLOG_SOCKET names
(/dev/log otherwise), bound here by the test. And `--log-level`, which sets
the library's log level."""

import os
import re
import signal
import socket
import subprocess
import tempfile

import pytest

from test_cli import MiB, URI, VB, env, pty_run, vb, vbj  # noqa: F401

INFO, WARNING, ERR = 3 * 8 + 6, 3 * 8 + 4, 3 * 8 + 3


def parse(data):
    m = re.fullmatch(r"<(\d+)>virt-backup\[(\d+)\]: (.*)", data)
    assert m, repr(data)
    return int(m.group(1)), int(m.group(2)), m.group(3)


@pytest.fixture
def syslog(monkeypatch):
    """A datagram socket standing for /dev/log; `.lines()` returns what
    arrived since the last call, as (priority, pid, message)."""
    d = tempfile.TemporaryDirectory(prefix="vbj-", dir="/tmp")
    path = os.path.join(d.name, "log")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    monkeypatch.setenv("VIRT_BACKUP_SYSLOG_SOCKET", path)

    class Log:
        def lines(self, want=0, timeout=30):
            """`want`: wait up to `timeout` seconds for that many."""
            out = []
            s.settimeout(timeout)
            while len(out) < want:
                out.append(parse(s.recv(65536).decode()))
            s.setblocking(False)
            while True:
                try:
                    data = s.recv(65536).decode()
                except BlockingIOError:
                    return out
                out.append(parse(data))

    yield Log()
    s.close()
    d.cleanup()


def small_domain(env):
    vda = env.disk("j.qcow2", 16 * MiB)
    return env.domain([("vda", vda)])


def test_job_start_result_and_errors(env, syslog):
    dom = small_domain(env)
    b = vbj("create", dom)  # stderr is a pipe: not a terminal
    lines = syslog.lines()
    assert [(pr, msg) for pr, _, msg in lines] == [
        (INFO, f"create {dom}: started"),
        (INFO, f"create {dom}: completed: backup {b['uuid']} "
               f"(full, {b['bytes_written']} bytes written)"),
    ]
    assert b["bytes_written"] > 0
    # A failed job: one line, the job's, at priority err.
    p = vb("create", dom, "--disk", "vdz", rc=1)
    lines = syslog.lines()
    assert [(pr, msg.split(": failed: ")[0]) for pr, _, msg in lines] == [
        (INFO, f"create {dom}: started"), (ERR, f"create {dom}")], lines
    assert "vdz" in lines[1][2] and p.stderr.strip().endswith(lines[1][2].split(": failed: ")[1])
    # Another command's error.
    vb("list", "no-such-domain-j", rc=1)
    assert [(pr, msg) for pr, _, msg in syslog.lines()] == [
        (ERR, "error: failed to get domain 'no-such-domain-j'")]
    # Verify, delete: start and result.
    vb("verify", b["uuid"])
    vb("delete", b["uuid"])
    assert [(pr, msg) for pr, _, msg in syslog.lines()] == [
        (INFO, f"verify {b['uuid']}: started"),
        (INFO, f"verify {b['uuid']}: completed: 1 backups verified"),
        (INFO, f"delete {dom}: started"),
        (INFO, f"delete {dom}: completed: backup {b['uuid']}"),
    ]


def test_no_lines_when_asked_or_on_a_terminal(env, syslog, monkeypatch):
    dom = small_domain(env)
    vb("--log", "stderr", "list", dom)
    vb("--log", "stderr", "create", dom)
    monkeypatch.setenv("VIRT_BACKUP_LOG", "stderr")
    vb("create", dom)
    assert syslog.lines() == []
    monkeypatch.delenv("VIRT_BACKUP_LOG")
    rc, out = pty_run([VB, "-c", URI, "create", dom])
    assert rc == 0, out
    assert syslog.lines() == []
    rc, out = pty_run([VB, "-c", URI, "--log", "syslog", "create", dom, "--incremental"])
    assert rc == 0, out
    msgs = [msg for _, _, msg in syslog.lines()]
    assert msgs[0] == f"create {dom}: started" and "(incremental, " in msgs[1], msgs


def test_interrupted_and_detached_jobs(env, syslog):
    vda = env.disk("big.qcow2", 128 * MiB, writes=(("0x31", 0, 128 * MiB),))
    dom = env.domain([("vda", vda)])
    p = subprocess.Popen([VB, "-c", URI, "create", dom, "--rate", "16M"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("backup: ")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    lines = syslog.lines()
    assert [(pr, pid) for pr, pid, _ in lines] == [(INFO, p.pid), (WARNING, p.pid)]
    assert lines[1][2] == f"create {dom}: " + err.strip(), (lines, err)
    assert "interrupted by SIGTERM: backup job " in lines[1][2]

    # create --no-wait: the detached process says when its job ends.
    j = vbj("create", dom, "--no-wait")
    vb("wait", j["uuid"])
    # The detached process writes its line after `wait` saw the job end.
    lines = syslog.lines(want=2)
    assert [msg.split(": ")[1] for _, _, msg in lines] == ["started", "completed"], lines
    assert f"backup {j['uuid']} (full, {128 * MiB} bytes written)" in lines[1][2]


def test_log_level_sets_the_library_level(env, monkeypatch):
    dom = small_domain(env)
    monkeypatch.setenv("LIBVIRT_BACKUP_LOG_OUTPUTS", "stderr")
    p = vb("--log-level", "debug", "create", dom)
    assert re.search(r"^\S+ \S+: \d+: (debug|info) : ", p.stderr, re.M), p.stderr
    p = vb("--log-level", "error", "create", dom, "--incremental")
    assert p.stderr == "", p.stderr
    p = vb("--log-level", "loud", "list", dom, rc=2)
    assert "--log-level" in p.stderr
