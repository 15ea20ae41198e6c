"""examples/full_incremental_restore.py, run as a user would: full,
incremental, restore as a new domain, delete; the restored disk is checked
byte for byte against the source. In this process on test:///default (the
test driver's state is per process), and as a program on qemu:///system
with a running domain."""

import os
import runpy
import subprocess
import sys


from conftest import PKG_ROOT, REPO, MiB, disk_of, run, same_image

SCRIPT = os.path.join(PKG_ROOT, "examples", "full_incremental_restore.py")


def test_example_is_short_and_plain():
    with open(SCRIPT) as f:
        text = f.read()
    assert len(text.splitlines()) < 30
    assert "ctypes" not in text and "_o" not in text and "c_pointer" not in text
    # README.md shows it whole, from `import sys` on.
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    code = text[text.index("import sys"):]
    assert "```python\n" + code + "```" in readme


def check_output(env, out, dom, at_backup, fmt):
    lines = out.splitlines()
    assert lines[0].startswith("incremental ") and lines[0].endswith(" bytes")
    name = dom.name() + "-restored"
    assert lines[1:] == [f"restored {name}", "backups left 0"]
    new = dom.connect().lookupByName(name)
    # Default place: '<folder of the original>/<name>-vda.qcow2'.
    assert disk_of(new) == env.path(f"{name}-vda.qcow2")
    assert same_image(disk_of(new), "qcow2", at_backup, fmt)
    # Deleted with their data: the catalog holds no backup files any more.
    assert not [f for _d, _s, fs in os.walk(env.catalog) for f in fs if f.endswith(".qcow2")]


def test_example_on_test_driver(env, monkeypatch, capsys):
    dom = env.domain()
    env.expect_domain(dom.name() + "-restored")
    monkeypatch.setattr(sys, "argv", [SCRIPT, "test:///default", dom.name()])
    runpy.run_path(SCRIPT, run_name="__main__")
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(" 0 bytes")  # nothing changed in between
    check_output(env, out, dom, disk_of(dom), "raw")


def test_example_on_running_qemu_domain(env, qemu_conn):
    env._cleanup_tmp = True
    disk = env.disk("vda.qcow2", 32 * MiB, "qcow2")
    dom = env.domain(disk=disk, fmt="qcow2", conn=qemu_conn, kind="qemu", start=True)
    env.expect_domain(dom.name() + "-restored", qemu_conn)
    at_backup = env.path("at-backup.raw")
    run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk, at_backup])
    r = subprocess.run([sys.executable, SCRIPT, "qemu:///system", dom.name()], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=PKG_ROOT), timeout=300)
    assert r.returncode == 0, r.stderr
    check_output(env, r.stdout, dom, at_backup, "raw")
    assert dom.isActive() and dom.listAllCheckpoints() == []
