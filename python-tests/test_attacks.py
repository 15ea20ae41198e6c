"""Local attacks on the library run as root: another user (`nobody`) plants
files in a catalog it can write to, a guest writes a qcow2 header naming a
host file at the start of its raw disk, exports listen where anyone can
read them. Each test fails on a library that trusts what it finds."""

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid as uuidlib

import pytest

from conftest import (RESTORE_REWRITE_EXISTING_DISK as REWRITE, MiB, VIR_ERR_INVALID_ARG,
                      VIR_ERR_OPERATION_FAILED, VIR_ERR_XML_ERROR, Nbd,
                      backup_uuid, backup_xml_for, count_backups, create_fails, domain_uuid,
                      domain_xml, expect_error, lib, make_disk, restore, restore_fails,
                      restore_xml_for, run, sha256, target_of, unmanaged_xml, virt,
                      free_port, SUBPROCESS_PRELUDE)

if os.geteuid() != 0:
    pytest.skip("the attacks need root (the library's user) and nobody", allow_module_level=True)

NOBODY = pwd.getpwnam("nobody")
SECRET = b"host secret, readable by root only\n" * 100


def as_nobody(*cmd):
    """Run `cmd` as nobody; its CompletedProcess."""
    return subprocess.run(["runuser", "-u", "nobody", "--", *cmd], capture_output=True)


@pytest.fixture
def victim():
    """A root-owned file (0644, as most of /etc) in a folder only root can
    write: what an attacker wants root to delete or overwrite."""
    d = tempfile.mkdtemp(prefix="victim-", dir="/var/tmp")
    path = os.path.join(d, "victim")
    with open(path, "wb") as f:
        f.write(SECRET)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d)


@pytest.fixture
def reachable(env, monkeypatch):
    """env, with its catalog in a folder nobody can reach (pytest's own
    temporary folders are root's only): what an attacker can plant in
    then depends on the catalog's own modes."""
    d = tempfile.mkdtemp(prefix="catalog-", dir="/var/tmp")
    os.chmod(d, 0o755)
    env.catalog = os.path.join(d, "catalog")
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", env.catalog)
    yield env
    shutil.rmtree(d, ignore_errors=True)


def intact(path):
    with open(path, "rb") as f:
        return f.read() == SECRET


def any_call(dom):
    """A call that reads the catalog (lists the domain's backups): 0 or -1."""
    return 0 if lib.virDomainBackupList(dom, None, 0) >= 0 else -1


def note_naming(path):
    return (path + "\n").encode()


# ---------------------------------------------------------- catalog folders
def test_root_owned_by_another_user_is_refused(reachable, victim):
    env = reachable
    dom = env.domain()
    os.makedirs(env.catalog, mode=0o700)
    os.chown(env.catalog, NOBODY.pw_uid, NOBODY.pw_gid)
    note = os.path.join(env.catalog, ".restoring-" + uuidlib.uuid4().hex)
    r = as_nobody("sh", "-c", f"printf '%s\\n' '{victim}' > '{note}'")
    assert r.returncode == 0, r.stderr
    assert any_call(dom) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, env.catalog, "owned by uid")
    create_fails(dom, "<domainbackup/>", 0, VIR_ERR_OPERATION_FAILED, "owned by uid")
    assert intact(victim)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_root_writable_by_others_is_refused(reachable, victim, mode):
    env = reachable
    dom = env.domain()
    os.makedirs(env.catalog)
    os.chmod(env.catalog, mode)
    note = os.path.join(env.catalog, ".restoring-" + uuidlib.uuid4().hex)
    if mode & 0o002:
        r = as_nobody("sh", "-c", f"printf '%s\\n' '{victim}' > '{note}'")
        assert r.returncode == 0, r.stderr
    assert any_call(dom) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, env.catalog, "writable by group or others")
    assert intact(victim)


def test_root_readable_by_others_is_tightened(env):
    dom = env.domain()
    os.makedirs(env.catalog)
    os.chmod(env.catalog, 0o755)
    assert any_call(dom) == 0
    assert stat.S_IMODE(os.stat(env.catalog).st_mode) == 0o700
    env.backup(dom, "<domainbackup/>")
    assert stat.S_IMODE(os.stat(os.path.join(env.catalog, ".lock")).st_mode) == 0o600


def test_root_that_is_a_symlink_is_refused(env, tmp_path):
    dom = env.domain()
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    os.symlink(real, env.catalog)
    assert any_call(dom) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "symbolic link")


def test_domain_folder_writable_by_others_is_refused(reachable, victim):
    """nobody plants a record of a job 'running' whose target is the victim."""
    env = reachable
    dom = env.domain()
    env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    ddir = os.path.join(env.catalog, domain_uuid(dom))
    os.chmod(env.catalog, 0o711)  # traversable (the library tightens it again)
    os.chmod(ddir, 0o777)
    forged = forged_record(dom, victim)
    path = os.path.join(ddir, f"{forged[0]}.xml")
    r = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", f"cat > '{path}'"],
                       input=forged[1].encode(), capture_output=True)
    assert r.returncode == 0, r.stderr
    assert any_call(dom) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, ddir, "writable by group or others")
    assert intact(victim)


def forged_record(dom, target):
    """(uuid, text) of a catalog record of a backup whose job 'runs', with
    `target` as its disk's copy."""
    u = str(uuidlib.uuid4())
    return u, (
        f"<domainbackup><uuid>{u}</uuid><creationTime>1</creationTime><state>running</state>"
        f"<domain uuid='{domain_uuid(dom)}' name='x'/><disks><disk name='vda' type='file' "
        f"backupmode='full'><source file='/nonexistent'/><target file='{target}'/>"
        "<driver type='qcow2'/></disk></disks><connection uri='test:///default'/>"
        "<domainxml>&lt;domain/&gt;</domainxml></domainbackup>")


# ------------------------------------------ what crash cleanup may remove
def test_planted_running_record_does_not_delete_its_targets(env, victim):
    """Even in a catalog that passes the checks, a dead job's cleanup only
    removes private regular files of ours: never a file such as the victim."""
    dom = env.domain()
    env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    ddir = os.path.join(env.catalog, domain_uuid(dom))
    u, text = forged_record(dom, victim)
    with open(os.path.join(ddir, f"{u}.xml"), "w") as f:
        f.write(text)
    # No job lock file says a job ever ran: not a dead job but a damaged
    # record, reported when read and kept, and nothing it names is touched.
    assert count_backups(dom) == 1
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    assert intact(victim)
    assert os.path.exists(os.path.join(ddir, f"{u}.xml"))
    # With a job lock file too (a dead job, as far as anyone can tell): the
    # record goes, the victim stays (it is not a private file of ours).
    fd = os.open(os.path.join(ddir, f"{u}.lock"), os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    assert count_backups(dom) == 1
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    assert intact(victim)
    assert not os.path.exists(os.path.join(ddir, f"{u}.xml"))


def test_planted_restore_note_does_not_delete_what_it_names(env, victim):
    dom = env.domain()
    assert any_call(dom) == 0
    link = env.path("link-to-victim")
    os.symlink(victim, link)
    own = env.path("own-private-file")
    with open(own, "wb") as f:
        f.write(b"x")
    os.chmod(own, 0o600)
    note = os.path.join(env.catalog, ".restoring-" + uuidlib.uuid4().hex)
    with open(note, "wb") as f:
        f.write(note_naming(victim) + note_naming(link) + b"../../relative\n")
    os.chmod(note, 0o600)
    # A note owned by someone else is not read at all.
    foreign = os.path.join(env.catalog, ".restoring-" + uuidlib.uuid4().hex)
    with open(foreign, "wb") as f:
        f.write(note_naming(own))
    os.chmod(foreign, 0o600)
    os.chown(foreign, NOBODY.pw_uid, NOBODY.pw_gid)
    assert any_call(dom) == 0
    assert intact(victim) and os.path.islink(link)
    assert os.path.exists(own)
    assert not os.path.exists(note)


def test_planted_merge_marker_does_not_delete_what_it_names(env, victim):
    dom = env.domain()
    b = env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    ddir = os.path.join(env.catalog, domain_uuid(dom))
    with open(os.path.join(ddir, f"{backup_uuid(b)}.vda.merging"), "wb") as f:
        f.write(victim.encode())
    assert count_backups(dom) == 1
    assert intact(victim)


# --------------------------------------- links planted at the catalog's names
def test_links_at_lock_temporary_and_index_names_are_not_followed(env, tmp_path, victim):
    dom = env.domain()
    env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    ddir = os.path.join(env.catalog, domain_uuid(dom))

    # The catalog lock: a link there is refused, the file it names untouched.
    missing = str(tmp_path / "would-be-created")
    lock = os.path.join(env.catalog, ".lock")
    os.unlink(lock)
    os.symlink(missing, lock)
    create_fails(dom, backup_xml_for({"vda": env.path("a.qcow2")}), 0,
                 VIR_ERR_OPERATION_FAILED, "lock")
    assert not os.path.exists(missing)
    os.unlink(lock)

    # A job lock and an index folder of a backup whose UUID is known ahead.
    u = str(uuidlib.uuid4())
    os.symlink(victim, os.path.join(ddir, f"{u}.lock"))
    create_fails(dom, backup_xml_for({"vda": env.path("b.qcow2")}, uuid=u), 0,
                 VIR_ERR_OPERATION_FAILED)
    assert intact(victim)
    os.unlink(os.path.join(ddir, f"{u}.lock"))
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    os.symlink(victim_dir, os.path.join(ddir, f"{u}.index"))
    create_fails(dom, backup_xml_for({"vda": env.path("c.qcow2")}, uuid=u), 0,
                 VIR_ERR_OPERATION_FAILED, "symbolic link")
    assert list(victim_dir.iterdir()) == []
    if os.path.lexists(os.path.join(ddir, f"{u}.index")):
        os.unlink(os.path.join(ddir, f"{u}.index"))

    # The temporary name of a record: replaced, never written through.
    os.symlink(victim, os.path.join(ddir, f".{u}.xml.tmp"))
    env.backup(dom, backup_xml_for({"vda": env.path("d.qcow2")}, uuid=u))
    assert intact(victim)
    assert count_backups(dom) == 2


# ------------------------------------------ folders swapped while in use
# The library, run as nobody on nobody's catalog, creates and deletes
# backups; a second process of the same user keeps exchanging the domain's
# folder with a link to a victim folder that holds files named as the
# library's (renameat2 RENAME_EXCHANGE, so the folder's name never goes
# missing). Only the catalog's owner can rename in the catalog, so this is
# the case where a folder checked by path could change before its use.
SWAPPER = """
import ctypes, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
folder, link, victim, stop = (a.encode() for a in sys.argv[1:5])
os.symlink(victim, link)
swaps, end = 0, time.monotonic() + 600
# Until told to stop, or its test is gone.
while not os.path.exists(stop) and os.path.isdir(os.path.dirname(stop)) \
        and time.monotonic() < end:
    if libc.renameat2(-100, folder, -100, link, 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        swaps += 1
        os.sched_yield()
        assert libc.renameat2(-100, folder, -100, link, 2) == 0
    # The library gets some calls through between the swaps.
    until = time.perf_counter() + random.random() / 2000
    while time.perf_counter() < until:
        pass
print(swaps)
"""

LIBRARY_USER = """
work, dom_uuid, backups = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
conn = virt.virConnectOpen(b"test:///default")
disk = make_disk(os.path.join(work, "disk.raw"), 4 * MiB, writes=[(0, MiB, 0xab)])
xml = domain_xml("openat-race", [("vda", disk, "raw")], uuid=dom_uuid)
d = virt.virDomainDefineXML(conn, xml.encode())
assert d, "cannot define the domain"
# A backup kept throughout, so that the domain's folder stays.
assert lib.virDomainBackupCreateXML(
    d, backup_xml_for({"vda": os.path.join(work, "keep.qcow2")}).encode(), CREATE_WAIT), \
    last_error()
print("ready", flush=True)
done, errors = 0, set()
for i, u in enumerate(backups):
    t = os.path.join(work, f"t{i}.qcow2")
    b = lib.virDomainBackupCreateXML(d, backup_xml_for({"vda": t}, uuid=u).encode(), CREATE_WAIT)
    ok = bool(b) and lib.virDomainBackupDelete(b, 0) == 0
    done += ok
    errors.add("" if ok else last_error()[1])
print(done, sorted(errors), flush=True)
"""


def files_under(top):
    """{path: content} of every file under `top`, links not followed."""
    out = {}
    for d, _, files in os.walk(top):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.join(d, f)] = fh.read()
    return out


def victim_folder(path, backups):
    """A folder of nobody's holding what a domain's folder holds for
    `backups`: what a library following a link to it would overwrite or
    remove."""
    os.makedirs(os.path.join(path, "merging"))
    names = ["summary", ".summary.tmp", "default-target.xml"]
    for u in backups:
        names += [f"{u}.xml", f".{u}.xml.tmp", f"{u}.deleting", f"{u}.lock", f"{u}.cancel",
                  f"{u}.index/vda.b3"]
        os.makedirs(os.path.join(path, f"{u}.index"))
    for n in names:
        with open(os.path.join(path, n), "wb") as f:
            f.write(b"victim " + n.encode())
    subprocess.run(["chown", "-R", "nobody:", path], check=True)


def test_domain_folder_swapped_for_a_link_is_never_followed():
    top = tempfile.mkdtemp(prefix="openat-race-", dir="/var/tmp")
    try:
        os.chmod(top, 0o755)
        work, victim = os.path.join(top, "work"), os.path.join(top, "victim")
        catalog = os.path.join(top, "catalog")
        for d in (work, catalog):
            os.mkdir(d, 0o700)
            subprocess.run(["chown", "nobody:", d], check=True)
        dom_uuid = str(uuidlib.uuid4())
        backups = [str(uuidlib.uuid4()) for _ in range(200)]
        victim_folder(victim, backups)
        before = files_under(victim)
        user = subprocess.Popen(
            ["runuser", "-u", "nobody", "--", "env", f"LIBVIRT_BACKUP_DIR={catalog}",
             sys.executable, "-c", SUBPROCESS_PRELUDE + LIBRARY_USER, work, dom_uuid,
             ",".join(backups)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert user.stdout.readline().strip() == "ready", user.communicate()[1]
        stop = os.path.join(work, "stop")
        folder = os.path.join(catalog, dom_uuid)
        swapper = subprocess.Popen(
            ["runuser", "-u", "nobody", "--", sys.executable, "-c", SWAPPER, folder,
             folder + ".link", victim, stop], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        out, err = user.communicate(timeout=600)
        open(stop, "w").close()
        swaps, serr = swapper.communicate(timeout=60)
        assert user.returncode == 0, err
        assert swapper.returncode == 0 and int(swaps) > 20, (swaps, serr)
        after = files_under(victim)
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        assert not changed, (f"{len(changed)} victim files written or removed: {changed[:4]}; "
                             f"backups done and errors: {out[:300]}")
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ------------------------------------------------------ targets in the catalog
def test_targets_inside_the_catalog_are_refused(env):
    dom = env.domain()
    other = env.domain()
    b = env.backup(other, "<domainbackup/>")  # default place, in the catalog
    theirs = target_of(b)
    assert theirs.startswith(env.catalog)
    before = sha256(theirs)
    odir = os.path.dirname(theirs)
    create_fails(dom, backup_xml_for({"vda": os.path.join(odir, "x.qcow2")}), 0,
                 VIR_ERR_INVALID_ARG, "inside the backup catalog")
    create_fails(dom, backup_xml_for({"vda": os.path.join(env.catalog, "x.qcow2")}), 0,
                 VIR_ERR_INVALID_ARG, "inside the backup catalog")
    # Through a link to the catalog, too.
    link = env.path("into-catalog")
    os.symlink(odir, link)
    create_fails(dom, backup_xml_for({"vda": os.path.join(link, "y.qcow2")}), 0,
                 VIR_ERR_INVALID_ARG, "inside the backup catalog")
    for d in (env.catalog, odir):
        xml = f"<target type='dir'><path>{d}</path></target>"
        assert lib.virDomainSetDefaultTarget(dom, xml.encode(), 0) == -1
        expect_error(VIR_ERR_INVALID_ARG, "inside the backup catalog")
    # Restores write nothing there either (here over the other's image).
    mine = env.backup(dom, backup_xml_for({"vda": env.path("mine.qcow2")}))
    restore_fails(restore_xml_for(backup_uuid(mine), {"vda": (theirs, "qcow2")}), REWRITE,
                  VIR_ERR_INVALID_ARG, "inside the backup catalog")
    assert sha256(theirs) == before


# ---------------------------------------------- formats a guest could forge
@pytest.fixture
def host_secret():
    d = tempfile.mkdtemp(prefix="secret-", dir="/var/tmp")
    path = os.path.join(d, "secret.raw")
    with open(path, "wb") as f:
        f.write(SECRET.ljust(MiB, b"S"))
    os.chmod(path, 0o600)
    yield path
    shutil.rmtree(d)


def guest_forged_disk(env, name, secret):
    """A raw disk whose guest wrote, at its start, a qcow2 header naming the
    host file `secret` as backing file."""
    header = env.path(name + ".hdr")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", secret, "-F", "raw",
         header, "1M"])
    disk = make_disk(env.path(name), 8 * MiB)
    with open(header, "rb") as h, open(disk, "r+b") as f:
        f.write(h.read())
    os.unlink(header)
    return disk


def holds_secret(path, fmt):
    return SECRET[:64] in guest_view(path, fmt)


def guest_view(path, fmt):
    """The image's bytes as a guest sees them (the format stated, never
    probed: qemu-img info would take the forged header for a qcow2 image)."""
    raw = path + ".read"
    run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw])
    with open(raw, "rb") as f:
        data = f.read()
    os.unlink(raw)
    return data


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_restore_unmanaged_never_probes_a_guest_written_header(env, host_secret):
    forged = guest_forged_disk(env, "guest.raw", host_secret)
    dom = env.domain(disks=[("vda", env.disk("d.raw", 8 * MiB), "raw")])
    target = env.path("d.raw")
    before = sha256(target)
    # Without a stated format: refused, nothing written.
    xml = ("<domainbackup><disks><disk name='vda'>"
           f"<source file='{forged}'/></disk></disks></domainbackup>")
    restore_fails(xml, REWRITE, VIR_ERR_XML_ERROR, "<driver type> is required", dom=dom)
    assert sha256(target) == before
    # Stated raw: the guest's bytes, header included, and no host file.
    restore(restore_xml_for(None, sources={"vda": forged}), REWRITE, dom=dom)
    assert file_bytes(target) == file_bytes(forged)
    assert not holds_secret(target, "raw")
    # Stated qcow2: an image given to the library may not have a backing file.
    xml = ("<domainbackup><disks><disk name='vda'><source file='" + forged + "'>"
           "<driver type='qcow2'/></source></disk></disks></domainbackup>")
    restore_fails(xml, REWRITE, VIR_ERR_INVALID_ARG, "backing file", dom=dom)


def test_guest_written_header_in_a_raw_domain_disk_is_data(env, host_secret):
    """The disk of a domain is read in the format its definition states; with
    no <driver type>, as raw (libvirt's default), never probed."""
    forged = guest_forged_disk(env, "vm.raw", host_secret)
    dom = env.domain(disks=[("vda", forged, "raw")])
    for tag in ("stated", "unstated"):
        b = env.backup(dom, backup_xml_for({"vda": env.path(f"copy-{tag}.qcow2")}))
        assert not holds_secret(target_of(b), "qcow2")
        assert guest_view(target_of(b), "qcow2") == file_bytes(forged)
        # The same domain without <driver type>.
        xml = domain_xml(dom.name, dom.disks, uuid=dom.uuid).replace(" type='raw'/>", "/>")
        ptr = virt.virDomainDefineXML(dom.conn, xml.encode())
        assert ptr
        virt.virDomainFree(ptr)


# ------------------------------------------------------------------ exports
@pytest.fixture
def open_dir():
    """A folder anyone can reach (the caller's choice of socket folder)."""
    d = tempfile.mkdtemp(prefix="sock-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_export_socket_is_private_even_under_umask_0(env, open_dir):
    dom = env.domain()
    sock = os.path.join(open_dir, "nbd.sock")
    old = os.umask(0)
    try:
        b = env.start_unmanaged(dom, unmanaged_xml(Nbd(socket=sock)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    r = as_nobody("nbdinfo", "--size", Nbd(socket=sock).uri("vda"))
    assert r.returncode != 0
    assert lib.virDomainBackupFinishJob(b, 0) == 0


def refused(dom, xml):
    """StartUnmanaged must fail (an export it started anyway is ended)."""
    b = lib.virDomainBackupStartUnmanaged(dom, xml.encode(), 0)
    if b:
        lib.virDomainBackupAbortJob(b, 0)
        lib.virDomainBackupFree(b)
        raise AssertionError("the export started")
    return b


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_tcp_export_on_a_non_loopback_address_is_refused(env, host):
    dom = env.domain()
    xml = f"<domainbackup><server transport='tcp' name='{host}' port='{free_port()}'/></domainbackup>"
    refused(dom, xml)
    expect_error(VIR_ERR_INVALID_ARG, "not a loopback address", "readable by anyone")

