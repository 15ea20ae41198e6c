"""virt-backup's modes: disk selection and backup level of `create`,
`default-target` (persistent, --show, --clear), the restore modes, and the
export of a stored backup. Run against the installed command, as
test_cli.py is."""

import json
import os
import re
import signal
import subprocess

from test_cli import MiB, URI, VB, env, qemu_io, run, same, vb, vbj, virsh  # noqa: F401


def two_disk_domain(env, start=False):
    vda = env.disk("a.qcow2", 16 * MiB)
    vdb = env.disk("b.qcow2", 16 * MiB, writes=(("0x22", 0, MiB),))
    return env.domain([("vda", vda), ("vdb", vdb)], start=start), vda, vdb


def test_disk_selects_only_the_named_disks_and_exclude(env):
    """--disk vda backed up vdb too; now only the named disks are, and
    --exclude leaves out the named ones. A disk the domain does not have is
    named in a clear error, with the domain's disks."""
    dom, vda, vdb = two_disk_domain(env)
    only_a = vbj("create", dom, "--disk", "vda")
    assert [d["name"] for d in only_a["disks"]] == ["vda"], only_a
    t = env.path("b-copy.qcow2")
    only_b = vbj("create", dom, "--disk", f"vdb={t}")
    assert [d["name"] for d in only_b["disks"]] == ["vdb"] and same(t, vdb)
    not_a = vbj("create", dom, "--exclude", "vda")
    assert [d["name"] for d in not_a["disks"]] == ["vdb"], not_a
    for opt in ("--disk", "--exclude"):
        p = vb("create", dom, opt, "vdz", rc=1)
        assert p.stderr.startswith("error: ") and "no disk 'vdz'" in p.stderr, p.stderr
        assert "vda, vdb" in p.stderr, p.stderr
    p = vb("create", dom, "--disk", "vda", "--exclude", "vdb", rc=2)
    assert "cannot be used with" in p.stderr
    assert len(vbj("list", dom)) == 3


def test_level_auto_full_incremental(env):
    """--level auto: full when the domain has no backup, else incremental on
    its latest completed one, saying which and why; --incremental stays a
    synonym of --level incremental; full stays the default."""
    vda = env.disk("l.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    p = vb("--json", "create", dom, "--level", "incremental", rc=1)
    assert "no backup to be incremental on" in p.stderr
    p = vb("create", dom, "--level", "auto")
    m = re.search(r"^Backup (\S+) completed \(full: no earlier backup, \d+ bytes written\)$",
                  p.stdout, re.M)
    assert m, p.stdout
    first = m.group(1)
    qemu_io(vda, "write -q -P 0x33 8M 1M")
    j = vbj("create", dom, "--level", "auto")
    assert j["level"] == "incremental" and j["kind"] == "incremental", j
    assert first in j["reason"] and j["parent"] == first, j
    assert j["bytes_written"] == MiB
    j2 = vbj("create", dom, "--incremental")
    assert j2["level"] == "incremental" and j2["parent"] == j["uuid"], j2
    j3 = vbj("create", dom)
    assert j3["level"] == "full" and j3["kind"] == "full", j3
    vb("create", dom, "--level", "full", "--incremental", rc=2)


def test_default_target_is_persistent_shown_and_cleared(env):
    """On a running domain `default-target DOM DIR` said "set" but lasted
    only for its own process. Now it is persistent: another process shows
    it and a backup without a target goes there; --clear removes it."""
    vda = env.disk("d.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)], start=True)
    assert vb("default-target", dom, "--show").stdout.startswith("none")
    folder = env.path("default")
    os.mkdir(folder)
    p = vb("default-target", dom, folder)
    assert "set (persistent)" in p.stdout
    assert vb("default-target", dom, "--show").stdout.strip() == folder
    assert vbj("default-target", dom, "--show")["target"] == folder
    b = vbj("create", dom)
    assert b["disks"][0]["target"].startswith(folder + "/"), b
    vb("default-target", dom, "--clear")
    assert vb("default-target", dom, "--show").stdout.startswith("none")
    assert vbj("default-target", dom, "--show")["target"] is None
    b = vbj("create", dom)
    assert not b["disks"][0]["target"].startswith(folder + "/"), b
    vb("default-target", dom, rc=2)
    vb("default-target", dom, folder, "--clear", rc=2)


def test_restore_modes(env):
    """--files-only writes image files and touches no domain; messages name
    options (--rewrite), not the library's flags; --new-domain prints the
    name it made; --instant redefines the domain on overlays; --start starts
    it."""
    vda = env.disk("r.qcow2", 16 * MiB, writes=(("0x44", 2 * MiB, MiB),))
    dom = env.domain([("vda", vda)])
    snap = env.snapshot(vda, "r-at-backup.raw")
    u = vbj("create", dom)["uuid"]
    qemu_io(vda, "write -q -P 0x55 0 1M")
    before = virsh("dumpxml", dom).stdout

    out = env.path("files")
    os.mkdir(out)
    p = vb("restore", u, "--files-only", out)
    assert "no domain changed" in p.stdout, p.stdout
    assert os.listdir(out) == ["vda.qcow2"] and same(os.path.join(out, "vda.qcow2"), snap)
    assert virsh("dumpxml", dom).stdout == before
    p = vb("restore", u, "--files-only", out, rc=1)
    assert "--rewrite" in p.stderr and "VIR_" not in p.stderr, p.stderr
    vb("restore", u, "--files-only", out, "--rewrite")
    vb("restore", u, "--files-only", out, "--new-domain", rc=2)

    p = vb("restore", u, "--new-domain")
    name = env.expect_domain(f"{dom}-restore-{u[:8]}")
    assert f"as new domain {name}" in p.stdout, p.stdout
    assert virsh("domstate", name).stdout.strip() == "shut off"

    p = vb("restore", u, "--new-domain", dom + "-i", "--instant", "--start")
    inst = env.expect_domain(dom + "-i")
    assert "started" in p.stdout, p.stdout
    assert virsh("domstate", inst).stdout.strip() == "running"
    src = re.search(r"<source file='([^']+)'", virsh("dumpxml", inst).stdout).group(1)
    virsh("destroy", inst)
    assert same(src, snap)
    assert virsh("dumpxml", dom).stdout == before


def test_export_of_a_stored_backup(env):
    """`export UUID` serves a stored backup (the disk as it was at backup
    time, not as it is now) over a UNIX socket until SIGTERM (exit 143)."""
    vda = env.disk("e.qcow2", 16 * MiB, writes=(("0x66", 3 * MiB, MiB),))
    dom = env.domain([("vda", vda)])
    snap = env.snapshot(vda, "e-at-backup.raw")
    u = vbj("create", dom)["uuid"]
    qemu_io(vda, "write -q -P 0x77 3M 1M")
    sock = env.path("stored.sock")
    p = subprocess.Popen([VB, "-c", URI, "export", u, "--unix", sock, "--timeout", "120"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line == "disk vda: export 'vda'\n", \
            line + (p.stderr.read() if p.poll() is not None else "")
        serving = p.stdout.readline()
        assert serving.startswith(f"serving stored backup {u} of domain {dom}"), serving
        url = f"nbd+unix:///vda?socket={sock}"
        assert json.loads(run("nbdinfo", "--json", url).stdout)["exports"][0][
            "export-size"] == 16 * MiB
        copy = env.path("exported.raw")
        run("nbdcopy", url, copy)
        assert same(copy, snap)
        assert not same(copy, vda)
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "export ended" in out
    # A domain is still a domain.
    p = vb("export", dom, "--unix", env.path("d.sock"), "--timeout", "1")
    assert f"serving domain {dom}" in p.stdout
    vb("export", u, "--unix", env.path("x.sock"), "--parent", u, rc=1)
