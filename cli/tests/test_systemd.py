"""The systemd units `make install` puts in $(SYSTEMDUNITDIR) next to the
installed command ($VIRT_BACKUP: $(PREFIX)/bin, units in
$(PREFIX)/lib/systemd/system): ExecStart names the installed binary, and
`systemd-analyze verify` passes them with nothing to say about them (it
checks that the binary exists and that `man virt-backup` finds the page
named in Documentation=, hence MANPATH)."""

import os
import shutil
import subprocess

import pytest

VB = os.path.abspath(os.environ.get("VIRT_BACKUP", "virt-backup"))
PREFIX = os.path.dirname(os.path.dirname(VB))
UNITDIR = os.path.join(PREFIX, "lib", "systemd", "system")
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def unit(name):
    with open(os.path.join(UNITDIR, name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_units_are_installed_with_the_binary_path():
    assert sorted(os.listdir(UNITDIR)) == sorted(
        ["virt-backup.service", "virt-backup.timer", "virt-backup@.service",
         "virt-backup@.timer"])
    svc = unit("virt-backup.service")
    assert f"ExecStart={VB} run --all" in svc
    assert "Type=oneshot" in svc and "IOSchedulingClass=idle" in svc
    assert "After=libvirtd.service virtqemud.service local-fs.target remote-fs.target" in svc
    assert f"ExecStart={VB} run %I" in unit("virt-backup@.service")
    for t in ("virt-backup.timer", "virt-backup@.timer"):
        timer = unit(t)
        assert "OnCalendar=daily" in timer and "Persistent=true" in timer
        assert any(line.startswith("RandomizedDelaySec=") for line in timer)
        assert "WantedBy=timers.target" in timer
    # Nothing left to substitute.
    for name in os.listdir(UNITDIR):
        assert "@BINDIR@" not in open(os.path.join(UNITDIR, name)).read(), name


@pytest.mark.skipif(not os.access(ANALYZE, os.X_OK), reason="no systemd-analyze")
def test_systemd_analyze_verify_passes(tmp_path):
    # The template through instances, one of them an escaped name.
    inst = subprocess.run(["systemd-escape", "my vm-1"], capture_output=True,
                          text=True, check=True).stdout.strip()
    names = ["virt-backup.service", "virt-backup.timer", "virt-backup@vm1.service",
             "virt-backup@vm1.timer", f"virt-backup@{inst}.service"]
    env = {**os.environ, "MANPATH": os.path.join(PREFIX, "share", "man"),
           "SYSTEMD_LOG_LEVEL": "notice"}
    p = subprocess.run([ANALYZE, "verify", *[os.path.join(UNITDIR, n) for n in names]],
                       capture_output=True, text=True, env=env, timeout=120)
    said = [line for line in (p.stdout + p.stderr).splitlines() if "virt-backup" in line]
    assert p.returncode == 0 and said == [], p.stdout + p.stderr


@pytest.mark.skipif(not os.access(ANALYZE, os.X_OK), reason="no systemd-analyze")
def test_systemd_analyze_verify_sees_a_broken_unit(tmp_path):
    """The check above can fail: a unit with an unknown key and a binary
    that is not there is reported."""
    bad = tmp_path / "virt-backup.service"
    text = open(os.path.join(UNITDIR, "virt-backup.service")).read()
    bad.write_text(text.replace(f"ExecStart={VB}", "ExecStart=/nonexistent/virt-backup")
                   .replace("Type=oneshot", "Type=oneshot\nFrobnicate=yes"))
    env = {**os.environ, "MANPATH": os.path.join(PREFIX, "share", "man")}
    p = subprocess.run([ANALYZE, "verify", str(bad)], capture_output=True, text=True,
                       env=env, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "/nonexistent/virt-backup" in out, out
    assert "Frobnicate" in out, out
