"""The installed virt-backup command, run as a user runs it ($VIRT_BACKUP,
set by `make cli-tests` to a `make install` under build/cli-stage), on
qemu:///system TCG domains (shut off and running) with a private catalog.

Every backup and restore is checked byte for byte with qemu-img compare
against a copy of the disk taken when the backup was made."""

import json
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import time
import urllib.parse
import uuid as uuidlib

import pytest

VB = os.environ.get("VIRT_BACKUP", "virt-backup")
URI = "qemu:///system"
MiB = 1 << 20


def run(*args, check=True, **kw):
    p = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    return p


def vb(*args, rc=0, env=None):
    """Run virt-backup; assert its exit status; return the process."""
    p = subprocess.run([VB, "-c", URI, *args], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == rc, f"virt-backup {args}: exit {p.returncode}, want {rc}\n" \
                               f"stdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def vbj(*args):
    return json.loads(vb("--json", *args).stdout)


def virsh(*args, check=True):
    return run("virsh", "-q", "-c", URI, *args, check=check)


def same(a, b):
    """qemu-img compare of two images (formats probed)."""
    p = run("qemu-img", "compare", a, b, check=False)
    return p.returncode == 0


def qemu_io(path, cmd):
    run("qemu-io", "-f", "qcow2", "-c", cmd, path)


class Env:
    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.domains = []

    def path(self, name):
        return os.path.join(self.tmp, name)

    def disk(self, name, size=64 * MiB, writes=(("0x11", 0, 4 * MiB),)):
        p = self.path(name)
        run("qemu-img", "create", "-q", "-f", "qcow2", p, str(size))
        for pat, off, ln in writes:
            qemu_io(p, f"write -q -P {pat} {off} {ln}")
        return p

    def domain(self, disks, start=False, name=None):
        name = name or "lvb-clitest-" + uuidlib.uuid4().hex[:10]
        devs = "".join(
            f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{p}'/><target dev='{d}' bus='virtio'/></disk>" for d, p in disks)
        xml = (f"<domain type='qemu'><name>{name}</name><memory>65536</memory>"
               f"<os><type arch='x86_64' machine='pc'>hvm</type></os>"
               f"<devices>{devs}</devices></domain>")
        f = self.path(name + ".xml")
        with open(f, "w") as fh:
            fh.write(xml)
        virsh("define", f)
        self.domains.append(name)
        if start:
            virsh("start", name)
        return name

    def expect_domain(self, name):
        self.domains.append(name)
        return name

    def snapshot(self, src, name):
        dst = self.path(name)
        run("qemu-img", "convert", "-O", "raw", src, dst)
        return dst

    def cleanup(self):
        for d in self.domains:
            virsh("destroy", d, check=False)
            virsh("undefine", "--checkpoints-metadata", d, check=False)
        # Images of a GiB: pytest would keep them in its retained temp dirs.
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def env(tmp_path, monkeypatch):
    if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode != 0:
        pytest.skip("qemu:///system is not reachable")
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", str(tmp_path / "catalog"))
    e = Env(tmp_path)
    yield e
    e.cleanup()


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def catalog_files(env):
    root = os.environ["LIBVIRT_BACKUP_DIR"]
    out = []
    for d, _, files in os.walk(root):
        # The catalog's lock and the domains' job locks stay, empty; the job
        # history records every job, the aborted ones too.
        if os.path.relpath(d, root) in (".domain-locks", ".history"):
            continue
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f != ".lock"]
    return sorted(out)


def test_usage_and_errors(env):
    p = subprocess.run([VB, "create"], capture_output=True, text=True)
    assert p.returncode == 2 and "Usage" in p.stderr
    p = subprocess.run([VB, "frobnicate"], capture_output=True, text=True)
    assert p.returncode == 2
    p = vb("list", "no-such-domain-" + uuidlib.uuid4().hex[:6], rc=1)
    assert p.stderr.startswith("error: failed to get domain"), p.stderr
    p = vb("info", str(uuidlib.uuid4()), rc=1)
    assert p.stderr.startswith("error: ") and "backup" in p.stderr.lower(), p.stderr
    for cmd in ["create", "list", "restore", "verify", "prune", "export"]:
        h = subprocess.run([VB, cmd, "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and "Usage: virt-backup " + cmd in h.stdout
    comp = os.path.join(os.path.dirname(os.path.dirname(VB)),
                        "share/bash-completion/completions/virt-backup")
    man = os.path.join(os.path.dirname(os.path.dirname(VB)), "share/man/man1/virt-backup.1")
    assert "prune" in open(comp).read() and "prune" in open(man).read()


def test_shut_off_domain_backup_verify_restore_prune(env):
    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)])

    # Full (into a raw file of our choosing), then three incrementals.
    full_t = env.path("full-vda.raw")
    full = vbj("create", dom, "--disk", f"vda={full_t}", "--format", "raw",
               "--description", "full")
    assert full["kind"] == "full" and full["state"] == "completed"
    copies = {full["uuid"]: env.snapshot(vda, "at-full.raw")}
    uuids = [full["uuid"]]
    for i in range(3):
        qemu_io(vda, f"write -q -P 0x{0x40 + i:x} {(8 + 4 * i) * MiB} {MiB}")
        b = vbj("create", dom, "--incremental", "--description", f"inc{i}")
        assert b["kind"] == "incremental" and b["parent"] == uuids[-1]
        assert b["bytes_written"] == MiB
        copies[b["uuid"]] = env.snapshot(vda, f"at-inc{i}.raw")
        uuids.append(b["uuid"])

    listed = vbj("list", dom)
    assert [b["uuid"] for b in listed] == uuids
    tree = vb("list", dom, "--tree").stdout
    want = uuids[0] + "\n"
    for depth, u in enumerate(uuids[1:]):
        pad = "    " * depth
        want += f"{pad}  |\n{pad}  +- {u}\n"
    assert tree.rstrip("\n") + "\n" == want, tree
    assert [b["uuid"] for b in vbj("list", dom, "--leaves")] == [uuids[-1]]
    assert [b["uuid"] for b in vbj("list", dom, "--full")] == [uuids[0]]
    status = vbj("status", uuids[1])
    assert status["state"] == "completed" and status["kind"] == "incremental"
    assert "<domainbackup>" in vb("info", "--xml", uuids[1]).stdout
    assert f"Parent:         {uuids[0]}" in vb("info", uuids[1]).stdout

    # verify: all good, then one flipped byte in the full backup's raw file
    # (guest offset = file offset), seen through every child's chain.
    assert vbj("verify", dom)["ok"] is True
    flip_byte(full_t, 2 * MiB + 100)
    p = vb("verify", uuids[2], rc=1)
    assert "disk 'vda'" in p.stderr and f"offset {2 * MiB}" in p.stderr, p.stderr
    assert p.stderr.startswith("error: ")
    j = json.loads(vb("--json", "verify", dom, rc=1).stdout)
    assert [b["ok"] for b in j["backups"]] == [False] * 4
    flip_byte(full_t, 2 * MiB + 100)
    vb("verify", dom, "-q")

    # restore --new-domain: byte for byte the disk at that backup.
    name = env.expect_domain(dom + "-r")
    vb("restore", uuids[2], "--new-domain", name)
    src = virsh("domblklist", name).stdout.split()[1]
    assert same(src, copies[uuids[2]])

    # prune: keep the two newest; the older ones are merged away and every
    # kept backup still restores byte for byte.
    dry = vbj("prune", dom, "--keep-last", "2", "--dry-run")
    assert dry["keep"] == uuids[2:] and dry["remove"] == uuids[:2]
    assert [b["uuid"] for b in vbj("list", dom)] == uuids
    out = vb("prune", dom, "--keep-last", "2").stdout
    assert out.count("remove ") == 2 and out.count("keep ") == 2
    assert [b["uuid"] for b in vbj("list", dom)] == uuids[2:]
    assert not os.path.exists(full_t)
    vb("verify", dom)
    for u in uuids[2:]:
        t = env.path(f"restored-{u}.qcow2")
        vb("restore", u, "--new-domain", env.expect_domain(f"{dom}-p{u[:6]}"),
           "--disk", f"vda={t}")
        assert same(t, copies[u]), f"kept backup {u} does not restore"

    # delete the rest; nothing is left in the catalog but the domain folder.
    vb("delete", uuids[2])
    assert vbj("list", dom)[0]["parent"] is None
    vb("delete", uuids[3])
    assert vbj("list", dom) == []
    assert catalog_files(env) == []


def test_prune_that_keeps_nothing_keeps_every_backup(env):
    """Every --keep-* at 0 is no policy, as in Proxmox Backup Server (which
    keeps everything when no option keeps anything), not "remove all": it
    removed every backup. Now nothing is deleted and the command says so;
    --force, which a prune removing every backup would need, is documented."""
    vda = env.disk("vda.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    uuids = [vbj("create", dom)["uuid"]]
    qemu_io(vda, f"write -q -P 0x22 {8 * MiB} {MiB}")
    uuids.append(vbj("create", dom, "--incremental")["uuid"])
    zeros = ["--keep-daily", "0", "--keep-weekly", "0", "--keep-monthly", "0"]
    for args in (["--keep-last", "0"], ["--keep-last", "0", *zeros],
                 ["--keep-last", "0", "--force"], ["--keep-last", "0", "--dry-run"]):
        j = vbj("prune", dom, *args)
        assert j["keep"] == uuids and j["remove"] == [] and j["keep_all"] is True, (args, j)
        assert [b["uuid"] for b in vbj("list", dom)] == uuids, args
    out = vb("prune", dom, "--keep-last", "0").stdout
    assert f"keeping all 2 backups of {dom}" in out, out
    assert out.count("keep   ") == 2 and "remove" not in out, out
    assert vb("-q", "prune", dom, "--keep-last", "0").stdout == ""
    assert [b["uuid"] for b in vbj("list", dom)] == uuids
    # A policy that keeps something still prunes; what it keeps verifies.
    j = vbj("prune", dom, "--keep-last", "1")
    assert j["keep"] == uuids[1:] and j["remove"] == uuids[:1] and j["keep_all"] is False, j
    assert [b["uuid"] for b in vbj("list", dom)] == uuids[1:]
    vb("verify", dom)
    h = subprocess.run([VB, "prune", "--help"], capture_output=True, text=True).stdout
    assert "--force" in h and "every --keep-* is 0 keeps every backup" in h, h
    man = os.path.join(os.path.dirname(os.path.dirname(VB)), "share/man/man1/virt-backup.1")
    assert "\\-\\-force" in open(man).read()


def test_export_unix_serves_at_exactly_the_path_given(env):
    """--unix PATH: the export listens at PATH itself, never at a rewritten
    one. A path that is not UTF-8 cannot go into the XML: it was served at a
    lossy copy (U+FFFD for the byte); now it is refused, naming the path,
    and nothing listens. A tab, line feed or carriage return in the path
    reaches the library intact (an XML parser reads them as spaces in an
    attribute value, unless written as character references)."""
    vda = env.disk("u.qcow2", 16 * MiB, writes=(("0x5e", MiB, MiB),))
    dom = env.domain([("vda", vda)])
    folder = env.path("s")
    os.mkdir(folder)
    bad = os.path.join(os.fsencode(folder), b"nbd-\xff.sock")
    p = subprocess.run([os.fsencode(VB), b"-c", URI.encode(), b"export", dom.encode(),
                        b"--unix", bad, b"--timeout", b"3"], capture_output=True, timeout=120)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stderr.startswith(b"error: --unix ") and b"nbd-\\xFF.sock" in p.stderr, p.stderr
    assert b"not valid UTF-8" in p.stderr and p.stdout == b"", p.stderr
    assert os.listdir(folder) == []

    odd = os.path.join(folder, "a\tb\nc\rd.sock")
    p = subprocess.Popen([VB, "-c", URI, "export", dom, "--unix", odd, "--timeout", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line == "disk vda: export 'vda'\n", \
            line + (p.stderr.read() if p.poll() is not None else "")
        assert os.listdir(folder) == [os.path.basename(odd)]
        assert stat.S_ISSOCK(os.stat(odd).st_mode)
        url = "nbd+unix:///vda?socket=" + urllib.parse.quote(odd, safe="/")
        info = run("nbdinfo", "--json", url).stdout
        assert json.loads(info)["exports"][0]["export-size"] == 16 * MiB
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err


def test_create_target_path_with_white_space_is_kept(env):
    """The CLI writes --disk NAME=PATH into the XML: a line feed or tab in
    PATH reached the library as a space, and the backup went to another
    file."""
    vda = env.disk("w.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    folder = env.path("t")
    os.mkdir(folder)
    target = os.path.join(folder, "full\nof\tspace.qcow2")
    vb("create", dom, "--disk", f"vda={target}")
    assert os.listdir(folder) == [os.path.basename(target)]
    assert same(target, vda)


def test_running_domain_backup_export(env):
    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)], start=True)
    full = vbj("create", dom)
    assert full["kind"] == "full"
    virsh("qemu-monitor-command", dom, "--hmp",
          "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -P 0xcd 32M 1M\"")
    inc = vbj("create", dom, "--incremental")
    assert inc["kind"] == "incremental" and inc["bytes_written"] == MiB
    vb("verify", inc["uuid"])  # records the index QEMU did not write, then checks it
    vb("verify", inc["uuid"])

    # export: an unmanaged backup over TCP until --timeout, read by nbdinfo.
    port = 20000 + os.getpid() % 20000
    p = subprocess.Popen([VB, "-c", URI, "export", dom, "--tcp", f"127.0.0.1:{port}",
                          "--parent", inc["uuid"], "--timeout", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        m = re.match(r"disk vda: export '([^']+)' bitmap '([^']+)'", line)
        assert m, line + p.stderr.read() if p.poll() is not None else line
        info = run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/{m.group(1)}").stdout
        assert json.loads(info)["exports"][0]["export-size"] == 64 * MiB
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "export ended" in out



def test_export_over_tls(env, monkeypatch):
    """export --tls of a shut-off domain on 0.0.0.0: read with the client
    certificate byte for byte; a plain client is refused; without --tls the
    address is refused."""
    certs = env.path("certs")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                          "tls-test-certs.sh")
    run("sh", script, f"{certs}/server", f"{certs}/client", f"{certs}/ca")
    monkeypatch.setenv("LIBVIRT_BACKUP_TLS_X509_DIR", f"{certs}/server")
    vda = env.disk("tls.qcow2", 16 * MiB, writes=(("0x5e", MiB, 2 * MiB),))
    dom = env.domain([("vda", vda)])
    vb("export", dom, "--tcp", "0.0.0.0:10809", rc=1)
    port = 20000 + (os.getpid() + 7) % 20000
    p = subprocess.Popen([VB, "-c", URI, "export", dom, "--tcp", f"0.0.0.0:{port}",
                          "--tls", "--timeout", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line == "disk vda: export 'vda'\n", \
            line + (p.stderr.read() if p.poll() is not None else "")
        url = f"nbds://127.0.0.1:{port}/vda?tls-certificates={certs}/client"
        run("nbdcopy", url, env.path("got.raw"))
        assert same(env.path("got.raw"), vda)
        assert run("nbdinfo", "--size", f"nbd://127.0.0.1:{port}/vda", check=False).returncode
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err

def big_domain(env):
    vda = env.disk("big.qcow2", 1024 * MiB, writes=(("0x31", 0, 1024 * MiB),))
    return env.domain([("vda", vda)])


def test_sigint_aborts_create_and_leaves_nothing(env):
    dom = big_domain(env)
    p = subprocess.Popen([VB, "-c", URI, "create", dom, "--disk",
                          f"vda={env.path('t.qcow2')}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until the job has made progress (a line per second when not a tty).
    line = p.stdout.readline()
    assert line.startswith("backup: "), line + p.stderr.read()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert err.startswith("interrupted by SIGINT: ") and "aborted" in err, err
    assert vbj("list", dom) == []
    assert not os.path.exists(env.path("t.qcow2"))
    assert catalog_files(env) == []


def pty_run(args):
    """Run under a pseudo-terminal; return (exit status, everything drawn)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["COLUMNS"] = "120"
        os.execv(args[0], args)
    out = b""
    while True:
        r, _, _ = select.select([fd], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_progress_bar_on_a_terminal(env):
    dom = big_domain(env)
    rc, out = pty_run([VB, "-c", URI, "create", dom])
    assert rc == 0, out
    uuid = re.search(r"Backup (\S+) completed", out).group(1)
    # The bar was drawn (redrawn with \r) and ends full, then the summary.
    assert "\r" in out and "[" in out and "=" in out, repr(out[:500])
    assert re.search(r"1\.00 GiB/1\.00 GiB", out), repr(out[-800:])
    assert out.rstrip().endswith("written)"), repr(out[-300:])
    rc, out = pty_run([VB, "-c", URI, "verify", uuid])
    assert rc == 0, out
    assert re.search(r"1\.00 GiB/1\.00 GiB", out) and f"Backup {uuid}: OK" in out, repr(out[-800:])
    # Not a terminal: plain lines, no escape sequences.
    p = vb("verify", uuid)
    assert "\x1b" not in p.stdout and "\r" not in p.stdout
    assert p.stdout.splitlines()[-2].endswith("bytes, done")


def test_no_wait_wait_abort_and_default_target(env):
    """create --no-wait leaves the job running in a process of its own;
    `wait` and `abort` from other processes follow and cancel it."""
    dom = big_domain(env)
    vda = env.path("big.qcow2")
    t1 = env.path("bg1.qcow2")
    j = vbj("create", dom, "--no-wait", "--disk", f"vda={t1}")
    assert j["state"] == "running"
    assert vbj("list", dom)[0]["state"] == "running"
    vb("wait", j["uuid"])
    assert vbj("status", j["uuid"])["state"] == "completed"
    assert same(t1, vda)

    t2 = env.path("bg2.qcow2")
    j2 = vbj("create", dom, "--no-wait", "--disk", f"vda={t2}")
    vb("abort", j2["uuid"])
    assert [b["uuid"] for b in vbj("list", dom)] == [j["uuid"]]
    assert not os.path.exists(t2)
    p = vb("create", dom, "--no-wait", "--disk", "vdz", rc=1)
    assert "vdz" in p.stderr and p.stderr.startswith("error: ")

    # default-target: where a backup without a target goes.
    folder = env.path("default")
    os.mkdir(folder)
    vb("default-target", dom, folder, "--config")
    b = vbj("create", dom, "--incremental")
    assert b["disks"][0]["target"].startswith(folder + "/")


def test_sigint_during_restore_leaves_nothing(env):
    dom = big_domain(env)
    b = vbj("create", dom)
    target = env.path("restored.qcow2")
    name = env.expect_domain(dom + "-r")
    p = subprocess.Popen([VB, "-c", URI, "restore", b["uuid"], "--new-domain", name,
                          "--disk", f"vda={target}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt once the new file is being written.
    deadline = time.monotonic() + 60
    while not os.path.exists(target) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert p.poll() is None, "the restore ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert err.startswith("interrupted by SIGINT: ") and "removed" in err, err
    assert not os.path.exists(target)
    assert virsh("dominfo", name, check=False).returncode != 0
    assert not [f for f in os.listdir(os.environ["LIBVIRT_BACKUP_DIR"]) if f.startswith(".restoring-")]


def test_rate_limit_and_per_disk_progress(env):
    """--rate: parsed with units (bad values are usage errors, nothing
    made), the job held to it; each disk's progress on the lines (not a
    terminal), as bars (a terminal), and in `status`."""
    vda = env.disk("r-vda.qcow2", 48 * MiB, writes=(("0x41", 0, 48 * MiB),))
    vdb = env.disk("r-vdb.qcow2", 16 * MiB, writes=(("0x42", 0, 16 * MiB),))
    dom = env.domain([("vda", vda), ("vdb", vdb)])
    for bad in ("0", "1.5G", "10X", "fast", "", "18446744073709551616"):
        p = vb("create", dom, "--rate", bad, rc=2)
        assert "--rate" in p.stderr, p.stderr
    p = vb("create", dom, "--rate", "0M", rc=2)
    assert "more than 0" in p.stderr, p.stderr
    vb("create", dom, "--rate", "1M", "--xml", env.path("none.xml"), rc=2)
    assert vbj("list", dom) == [] and catalog_files(env) == []

    # 64 MiB at 24 MiB/s: about 2.7 s. Lines name each disk.
    ta, tb = env.path("r-a.qcow2"), env.path("r-b.qcow2")
    t = time.monotonic()
    p = vb("create", dom, "--rate", "24M", "--disk", f"vda={ta}", "--disk", f"vdb={tb}")
    took = time.monotonic() - t
    assert took >= 2.4, took
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("backup: ") and "%)" in ln]
    assert lines and all(re.search(r"\(\d+%\) \[vda \d+%, vdb \d+%\]$", ln) for ln in lines), \
        p.stdout
    assert "\x1b" not in p.stdout and "\r" not in p.stdout
    assert same(ta, vda) and same(tb, vdb)
    uuid = re.search(r"Backup (\S+) completed", p.stdout).group(1)
    s = vbj("status", uuid)
    assert [d["name"] for d in s["disks"]] == ["vda", "vdb"]
    assert s["disks"][0]["bytes_total"] == s["disks"][0]["bytes_processed"] == 48 * MiB
    assert s["disks"][1]["bytes_total"] == s["disks"][1]["bytes_processed"] == 16 * MiB
    assert s["bytes_processed"] == 64 * MiB

    # On a terminal: a bar per disk, under the job's.
    rc, out = pty_run([VB, "-c", URI, "create", dom, "--rate", "32MiB/s"])
    assert rc == 0, out
    out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)  # colours and cursor moves
    assert re.search(r"vda +\[[=> ]+\] +100% 48\.00 MiB/48\.00 MiB", out), repr(out[-1500:])
    assert re.search(r"vdb +\[[=> ]+\] +100% 16\.00 MiB/16\.00 MiB", out), repr(out[-1500:])
    assert re.search(r"64\.00 MiB/64\.00 MiB", out), repr(out[-1500:])
    assert out.rstrip().endswith("written)"), repr(out[-300:])


def test_list_all_and_a_domain_that_no_longer_exists(env):
    """`list --all` lists every backup of the catalog with its domain;
    `list NAME|UUID` of a domain undefined with virsh (which knows nothing
    of backups) answers from the catalog; its backups restore as a new
    domain."""
    vda = env.disk("vda.qcow2", writes=(("0x21", 0, MiB),))
    gone = env.domain([("vda", vda)])
    gone_uuid = virsh("domuuid", gone).stdout.strip()
    kept = env.domain([("vda", env.disk("kept.qcow2"))])
    full = vbj("create", gone)
    qemu_io(vda, f"write -q -P 0x22 {2 * MiB} {MiB}")
    inc = vbj("create", gone, "--incremental")
    at_inc = env.snapshot(vda, "gone-at-inc.raw")
    other = vbj("create", kept)
    virsh("undefine", gone)

    everything = vbj("list", "--all")
    assert [b["uuid"] for b in everything] == [full["uuid"], inc["uuid"], other["uuid"]]
    assert [b["domain"] for b in everything] == [gone, gone, kept]
    assert everything[0]["domain_uuid"] == gone_uuid
    table = vb("list", "--all").stdout
    assert "Domain" in table and gone in table and kept in table
    assert [b["uuid"] for b in vbj("list", "--all", "--latest")] == [other["uuid"]]

    # By the name or the UUID the backups recorded.
    for key in (gone, gone_uuid, gone_uuid.upper()):
        assert [b["uuid"] for b in vbj("list", key)] == [full["uuid"], inc["uuid"]]
    assert [b["uuid"] for b in vbj("list", gone, "--latest")] == [inc["uuid"]]
    assert [b["uuid"] for b in vbj("list", gone, "--full")] == [full["uuid"]]
    p = vb("list", gone)
    assert "is not defined here" in p.stderr and inc["uuid"] in p.stdout
    assert vb("list", gone, "--tree").stdout.startswith(full["uuid"])
    # A name nobody recorded is still an unknown domain.
    p = vb("list", "no-such-domain-" + uuidlib.uuid4().hex[:6], rc=1)
    assert p.stderr.startswith("error: failed to get domain"), p.stderr
    # list DOMAIN and --all are exclusive, one of them is needed.
    assert subprocess.run([VB, "list"], capture_output=True).returncode == 2
    assert subprocess.run([VB, "list", kept, "--all"], capture_output=True).returncode == 2

    name = env.expect_domain(gone + "-back")
    vb("restore", inc["uuid"], "--new-domain", name)
    src = virsh("domblklist", name).stdout.split()[1]
    assert same(src, at_inc)


def test_create_compress(env):
    """--compress alone is zstd, --compress=zlib zlib: qcow2 targets of
    compressed clusters QEMU reads (`qemu-img check`, compare); a raw
    target with --compress is refused, an unknown name is a usage error."""
    vda = env.disk("c.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    for opt, kind in (("--compress", "zstd"), ("--compress=zlib", "zlib")):
        target = env.path(f"c-{kind}.qcow2")
        vb("create", dom, opt, "--disk", f"vda={target}")
        run("qemu-img", "check", "-q", target)
        info = json.loads(run("qemu-img", "info", "--output=json", target).stdout)
        assert info["format-specific"]["data"]["compression-type"] == kind
        assert same(target, vda)
        assert os.path.getsize(target) < 2 * MiB, "4 MiB of one byte shrinks"
    p = vb("create", dom, "--compress", "--format", "raw", rc=1)
    assert "raw target" in p.stderr, p.stderr
    p = vb("create", dom, "--compress=lz4", rc=2)
    assert "lz4" in p.stderr


def test_create_encrypt_secret(env):
    """--encrypt-secret UUID (or usage id): a LUKS-encrypted qcow2 target
    QEMU reads with the secret's value; the next --incremental keeps the
    secret; --compress with it is a usage error."""
    import libvirt
    conn = libvirt.open(URI)
    u = str(uuidlib.uuid4())
    usage = "lvb-cli-key-" + u[:8]
    s = conn.secretDefineXML(
        f"<secret ephemeral='yes' private='no'><uuid>{u}</uuid>"
        f"<usage type='volume'><volume>{usage}</volume></usage></secret>")
    try:
        s.setValue(b"cli key")
        vda = env.disk("e.qcow2", 16 * MiB)
        dom = env.domain([("vda", vda)])
        full = env.path("e-full.qcow2")
        vb("create", dom, "--encrypt-secret", u, "--disk", f"vda={full}")
        obj = ["--object", "secret,id=s0,data=cli key", "--image-opts"]
        opts = f"driver=qcow2,file.filename={full},encrypt.key-secret=s0"
        run("qemu-img", "check", "-q", *obj, opts)
        p = run("qemu-img", "compare", *obj, opts, f"driver=qcow2,file.filename={vda}",
                check=False)
        assert p.returncode == 0, p.stdout
        inc = env.path("e-inc.qcow2")
        vb("create", dom, "--incremental", "--disk", f"vda={inc}")
        assert json.loads(run("qemu-img", "info", "--output=json", inc).stdout)["encrypted"]
        by_usage = env.path("e-usage.qcow2")
        vb("create", dom, "--encrypt-secret", usage, "--disk", f"vda={by_usage}")
        assert json.loads(run("qemu-img", "info", "--output=json", by_usage).stdout)["encrypted"]
        p = vb("create", dom, "--encrypt-secret", u, "--compress", rc=2)
        assert "--compress" in p.stderr
    finally:
        s.undefine()
