"""A catalog shared by hosts on CephFS (README "A catalog shared by hosts").

A single-node Ceph (scripts/ceph-single-node.sh, `make ceph`) mounts one
CephFS twice with ceph-fuse, as two clients with keys of their own: two
"hosts". Every library call of a host runs in a process of its own, in a
mount namespace of its own (unshare) where the other host's mount is gone
and its own is bound at one common path, <ceph dir>/mnt/cephfs: as two
machines that mount CephFS at the same place, which is what the records'
absolute paths need (the test with a different path on each host shows
where that breaks). The pytest process itself only looks at files, through
mount A.

Domains are test-driver node files (test://<file>), which every process
opening the URI sees alike; their disks are local files (shared storage of
the VMs is not what is tested here); the catalog, and so the backups'
images in their default folders, are on CephFS.

The module is skipped, with the script's reason, only when the cluster
cannot start on this machine (no Ceph packages, no /dev/fuse, not root:
the script's exit 77); a cluster that fails to start fails the tests."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib

import pytest

from conftest import (HERE, LIST_LATEST, MiB, SUBPROCESS_PRELUDE,
                      VIR_ERR_OPERATION_INVALID, assert_byte_exact, wait_until, write_disk)

SCRIPT = os.path.join(os.path.dirname(HERE), "scripts", "ceph-single-node.sh")
HOSTS = ("a", "b")

# Bound in every host process (after conftest's bindings).
HOST_PRELUDE = textwrap.dedent("""
    import json
    from conftest import _decl
    _decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
    conn = virt.virConnectOpen(os.environ["LVB_URI"].encode())
    assert conn, "cannot open " + os.environ["LVB_URI"]
    dom = virt.virDomainLookupByName(conn, os.environ["LVB_DOMAIN"].encode())
    assert dom

    def out(**kw):
        print(json.dumps(kw), flush=True)

    def by_uuid(u):
        b = lib.virDomainBackupLookupByUUID(u.encode(), 0)
        assert b, last_error()
        return b

    def verify_msg(u):
        \"\"\"None when backup `u` verifies, else the error message.\"\"\"
        b = by_uuid(u)
        try:
            return None if lib.virDomainBackupVerify(b, 0) == 0 else last_error()[1]
        finally:
            free(b)
""")


class Ceph:
    """The running cluster: its two mounts and the path each host process
    sees its own mount at."""

    def __init__(self, env):
        self.mnt = {"a": env["CEPH_MNT_A"], "b": env["CEPH_MNT_B"]}
        self.shared = os.path.join(os.path.dirname(self.mnt["a"]), "cephfs")
        self.conf = env["CEPH_CONF"]
        os.makedirs(self.shared, exist_ok=True)

    def fuse_pid(self, host):
        run_dir = os.path.join(os.path.dirname(self.conf), "run")
        with open(os.path.join(run_dir, f"client.host-{host}.pid")) as f:
            return int(f.read())


def _script(*args, timeout=240):
    return subprocess.run(["sh", SCRIPT, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ceph():
    if os.geteuid() != 0:
        pytest.skip("the CephFS tests need root (ceph-fuse, mount namespaces)")
    r = _script("start")
    if r.returncode == 77:
        pytest.skip(f"the single-node Ceph cannot start here: {r.stderr.strip()[-500:]}")
    assert r.returncode == 0, f"the single-node Ceph did not start: {r.stderr.strip()[-1500:]}"
    env = dict(line.split("=", 1) for line in _script("env").stdout.split())
    yield Ceph(env)
    # A test that killed a host's client remounts it itself; this is the
    # net under it. The cluster is left running (`make ceph-stop`).
    _script("start")


class Shared:
    """One test's catalog, `<mount>/tests/<id>/catalog` on every host."""

    def __init__(self, ceph, env):
        self.ceph, self.env = ceph, env
        self.rel = os.path.join("tests", uuidlib.uuid4().hex[:12])
        os.makedirs(self.on("a"), mode=0o755)
        self.procs = []

    def on(self, host):
        """The test's folder seen through `host`'s mount (from pytest)."""
        return os.path.join(self.ceph.mnt[host], self.rel)

    def domain(self, disks=None, size=64 * MiB):
        """A node-file domain every host process opens by its URI; the
        first one is the one host processes work on unless told (`start`)."""
        uri, dom = self.env.node_domain(disks=disks, size=size)
        dom.uri = uri
        self.dom = getattr(self, "dom", None) or dom
        return dom

    def start(self, host, code, same_path=True, dom=None):
        """Start `code` as `host`: a process in a mount namespace without
        the other host's mount, its own bound at the common path (or, not
        `same_path`, at its own mount point), LIBVIRT_BACKUP_DIR the test's
        catalog there, `dom` the domain `dom` (default: the first one)."""
        dom = dom or self.dom
        other = self.ceph.mnt["b" if host == "a" else "a"]
        own = self.ceph.mnt[host]
        at = self.ceph.shared if same_path else own
        env = dict(os.environ, LVB_URI=dom.uri, LVB_DOMAIN=dom.name,
                   LIBVIRT_BACKUP_DIR=os.path.join(at, self.rel, "catalog"))
        wrap = ('other=$0 own=$1 at=$2; shift 2; umount -l "$other"; '
                'if [ "$own" != "$at" ]; then mount --bind "$own" "$at"; fi; exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", wrap,
                other, own, at, sys.executable, "-c",
                SUBPROCESS_PRELUDE + HOST_PRELUDE + textwrap.dedent(code)]
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def run(self, host, code, timeout=120, **kw):
        """Run `code` as `host` (see `start`); returns the JSON objects it
        printed with out(), one a line."""
        p = self.start(host, code, **kw)
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
            pytest.fail(f"host {host} timed out:\n{stdout}\n{stderr}")
        assert p.returncode == 0, f"host {host} failed ({p.returncode}):\n{stdout}\n{stderr}"
        return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]

    def one(self, host, code, **kw):
        got = self.run(host, code, **kw)
        assert len(got) == 1, got
        return got[0]

    def create(self, host, parent=None, **kw):
        """A backup of the domain by `host` (CREATE_WAIT), into default
        targets in the catalog: {uuid, target (vda's, as recorded), parent,
        modes}."""
        r = self.one(host, f"""
            b = create(dom, backup_xml_for(parent={parent!r}))
            out(uuid=backup_uuid(b), target=target_of(b), parent=parent_of(b),
                modes=disk_modes(b))
        """, **kw)
        return r

    def listed(self, host, flags=0, **kw):
        return self.one(host, f"out(uuids=list_uuids(dom, {flags}))", **kw)["uuids"]

    def verify(self, host, u, **kw):
        """None when backup `u` verifies through `host`, else the error."""
        return self.one(host, f"out(error=verify_msg({u!r}))", **kw)["error"]

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        shutil.rmtree(self.on("a"), ignore_errors=True)


@pytest.fixture
def shared(ceph, env):
    s = Shared(ceph, env)
    yield s
    s.cleanup()


def restore_to(shared, host, u, path):
    """Restore backup `u` through `host` into the new raw file `path`."""
    shared.run(host, f"""
        restore(restore_xml_for({u!r}, {{"vda": ({path!r}, "raw")}}))
    """)


# ------------------------------------------------------------------ tests
def test_merge_through_one_host_then_verify_through_the_other(shared):
    """A delete through host A merges the full backup into its child (a new
    image renamed over the child's); then each host, B having read the old
    images before, verifies and restores the child. With the merge's
    O_DIRECT writes, host A's client served stale pages of the new image
    (those of its buffered formatting): "backup data does not match its
    digest index at offset 0" there, B right. The library now writes
    buffered on FUSE and CephFS."""
    dom = shared.domain()
    src = dom.disks[0][1]
    full = shared.create("a")
    write_disk(src, "raw", [(0, 2 * MiB, 0x31), (40 * MiB, 1 * MiB, 0x32)])
    want = shared.env.snapshot(src, "at-child.raw")
    child = shared.create("a", parent=full["uuid"])
    assert child["modes"] == {"vda": "incremental"}
    # B reads both images (its client caches them).
    assert shared.verify("b", child["uuid"]) is None
    assert shared.verify("b", full["uuid"]) is None
    shared.run("a", f"delete(by_uuid({full['uuid']!r}))")
    assert shared.listed("b") == [child["uuid"]]
    errors = {h: shared.verify(h, child["uuid"]) for h in HOSTS}
    assert errors == {"a": None, "b": None}
    for h in HOSTS:
        out = shared.env.path(f"restored-{h}.raw")
        restore_to(shared, h, child["uuid"], out)
        assert_byte_exact(out, "raw", want, "raw")


def test_created_on_one_host_listed_verified_restored_deleted_on_the_other(shared):
    dom = shared.domain()
    want = shared.env.snapshot(dom.disks[0][1], "at-backup.raw")
    b = shared.create("a")
    assert b["target"].startswith(shared.ceph.shared + "/")
    assert shared.listed("b") == [b["uuid"]]
    assert shared.verify("b", b["uuid"]) is None
    out = shared.env.path("restored.raw")
    restore_to(shared, "b", b["uuid"], out)
    assert_byte_exact(out, "raw", want, "raw")
    shared.run("b", f"delete(by_uuid({b['uuid']!r}))")
    assert shared.listed("a") == []
    image_dir = os.path.dirname(b["target"]).replace(shared.ceph.shared, shared.ceph.mnt["a"])
    assert not os.path.exists(image_dir)


def test_catalog_at_a_different_path_on_each_host(shared):
    """The same catalog, at <mount A>/... on host A and <mount B>/... on
    host B (each host without the other's mount)."""
    dom = shared.domain()
    want = shared.env.snapshot(dom.disks[0][1], "at-backup.raw")
    b = shared.create("a", same_path=False)
    assert shared.listed("b", same_path=False) == [b["uuid"]]
    assert shared.one("b", f"out(error=verify_msg({b['uuid']!r}))",
                      same_path=False)["error"] is None
    out = shared.env.path("restored.raw")
    shared.run("b", f"""
        restore(restore_xml_for({b['uuid']!r}, {{"vda": ({out!r}, "raw")}}))
    """, same_path=False)
    assert_byte_exact(out, "raw", want, "raw")


RACE = """
    import time
    xml = backup_xml_for().encode()
    while time.time() < {at}:
        time.sleep(0.0005)
    b = lib.virDomainBackupCreateXML(dom, xml, 0)
    out(uuid=b and backup_uuid(b), error=None if b else last_error())
    time.sleep(300)  # killed by the test: the job never ends on its own
"""

# CreateXML without waiting; a job that starts is aborted at once.
CREATE_AND_ABORT = """
    b = lib.virDomainBackupCreateXML(dom, backup_xml_for().encode(), 0)
    out(uuid=b and backup_uuid(b), error=None if b else last_error())
    if b:
        assert lib.virDomainBackupAbortJob(b, 0) == 0, last_error()
"""

SMALL_ONLY = {"vda": (None, "qcow2"), "vdb": None}


def long_job_domain(shared, big_disk):
    """vda: a small disk; vdb: the 2 GiB `big_disk`, so that a backup of
    both runs for seconds (a backup of SMALL_ONLY does not)."""
    small = shared.env.disk("small.raw", 16 * MiB)
    return shared.domain(disks=[("vda", small, "raw"), ("vdb", big_disk, "raw")])


def test_two_hosts_race_for_one_domain(shared, big_disk):
    """CreateXML at the same moment from a process on each host: the
    domain's job lock (an flock on CephFS) lets exactly one start its job;
    the other gets VIR_ERR_OPERATION_INVALID "the domain already has a
    backup job running", whichever host it is on (either may win)."""
    long_job_domain(shared, big_disk)
    at = time.time() + 3.0  # both interpreters are up by then
    procs = {h: shared.start(h, RACE.format(at=at)) for h in HOSTS}
    got = {}
    for h, p in procs.items():
        line = p.stdout.readline()
        assert line, f"host {h} printed nothing: {p.stderr.read() if p.poll() else ''}"
        got[h] = json.loads(line)
    winners = [h for h in HOSTS if got[h]["uuid"]]
    assert len(winners) == 1, got
    code, msg = got["b" if winners == ["a"] else "a"]["error"]
    assert code == VIR_ERR_OPERATION_INVALID, got
    assert "the domain already has a backup job running" in msg
    # The winner dies mid-copy; its client is alive and drops its locks at
    # once, and the next caller (on either host) discards the dead job.
    procs[winners[0]].kill()
    procs[winners[0]].wait()
    again = shared.one("b", CREATE_AND_ABORT)
    assert again["uuid"], again
    assert shared.listed("a") == []


def test_a_host_killed_mid_job(shared, big_disk):
    """Both hosts use the catalog; then host A dies (its ceph-fuse, then
    its process, killed) with a completed backup and a job copying the
    next one, of domain `dom`. Host B's calls wait (none fails) wherever
    they need capabilities A's client held: on CephFS that is anything A
    had open or had listed (here a new file in another domain's folder,
    which A's recovery scan read), until the MDS gives A's session up at
    session_timeout (30 s in the test cluster, the least Ceph allows; 60 s
    by default), with A's flocks. B then finds A's job dead and discards
    it as after a crash, keeps the completed backup, and backs up both
    domains."""
    dom = long_job_domain(shared, big_disk)
    other = shared.domain(size=16 * MiB)
    done = shared.one("a", f"""
        b = create(dom, backup_xml_for({SMALL_ONLY!r}))
        out(uuid=backup_uuid(b))
    """)["uuid"]
    shared.create("b", dom=other)
    job = shared.start("a", """
        b = lib.virDomainBackupCreateXML(dom, backup_xml_for().encode(), 0)
        assert b, last_error()
        out(uuid=backup_uuid(b))
        __import__("time").sleep(300)
    """)
    json.loads(job.stdout.readline())
    os.kill(job.pid, signal.SIGSTOP)
    killed_at = time.monotonic()
    kill_client(shared.ceph, "a")
    job.kill()
    job.wait()
    try:
        shared.create("b", dom=other)
        took = time.monotonic() - killed_at
        print(f"host B's next backup ended {took:.0f} s after host A died")
        assert took < 60, "the dead host's session outlived session_timeout"
        assert shared.listed("b") == [done], "the dead job was not discarded"
        assert shared.verify("b", done) is None
        assert shared.one("b", CREATE_AND_ABORT)["uuid"], "the domain's lock is still held"
    finally:
        _script("start")  # host A comes back
    assert shared.listed("a") == [done]


def kill_client(ceph, host):
    """Kill a host's ceph-fuse: the host is gone, its MDS session (and the
    flocks it holds) stays until the MDS evicts it."""
    os.kill(ceph.fuse_pid(host), signal.SIGKILL)


def test_incremental_from_the_other_host_picks_the_latest(shared):
    """Host A makes a full and an incremental backup; host B, after A is
    done, backs up on top of the latest one it lists (LIST_LATEST, what
    `virt-backup create --incremental` does): the right parent, and the
    new backup reads back as the disk."""
    dom = shared.domain()
    src = dom.disks[0][1]
    full = shared.create("a")
    write_disk(src, "raw", [(1 * MiB, 1 * MiB, 0x41)])
    inc = shared.create("a", parent=full["uuid"])
    write_disk(src, "raw", [(8 * MiB, 1 * MiB, 0x42)])
    want = shared.env.snapshot(src, "at-third.raw")
    latest = shared.listed("b", LIST_LATEST)
    assert latest == [inc["uuid"]]
    third = shared.create("b", parent=latest[0])
    assert third["parent"] == inc["uuid"] and third["modes"] == {"vda": "incremental"}
    assert shared.verify("a", third["uuid"]) is None
    out = shared.env.path("restored.raw")
    restore_to(shared, "a", third["uuid"], out)
    assert_byte_exact(out, "raw", want, "raw")

