"""Files the library writes, chowns or removes outside the catalog, played
by an attacker (`nobody`) and by odd files: restore targets and their
temporary files, instant-restore overlays, default target folders, disk
names made into file names, device nodes, and files of other backups.
Each test fails on a library that works by path in a folder another user
can write, or that writes over whatever it finds."""

import ctypes
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading

import pytest

from conftest import (MiB, RESTORE_NEW_DOMAIN, RESTORE_REWRITE_EXISTING_DISK as REWRITE,
                      VIR_ERR_INVALID_ARG, VIR_ERR_OPERATION_INVALID, assert_byte_exact,
                      backup_uuid, backup_xml_for, count_backups, expect_error, last_error, lib,
                      restore, restore_fails, restore_xml_for, run, sha256, target_of, virt,
                      _decl)



if os.geteuid() != 0:
    pytest.skip("the attacks need root (the library's user) and nobody", allow_module_level=True)

FILES_ONLY = 1 << 4
INSTANT = 1 << 2
NOBODY = pwd.getpwnam("nobody")
SECRET = b"host secret, readable by root only\n" * 100

_decl(lib, "virDomainBackupVerify", ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)


def as_nobody(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "nobody", "--", *cmd], capture_output=True, **kw)


@pytest.fixture
def victim():
    """A root-only file in a folder only root can write."""
    d = tempfile.mkdtemp(prefix="victim-", dir="/var/tmp")
    path = os.path.join(d, "victim")
    with open(path, "wb") as f:
        f.write(SECRET)
    os.chmod(path, 0o600)
    yield path
    shutil.rmtree(d)


@pytest.fixture
def nobodys():
    """A folder nobody owns (0755), reachable by nobody."""
    d = tempfile.mkdtemp(prefix="nobodys-", dir="/var/tmp")
    os.chmod(d, 0o755)
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def untouched(path):
    st = os.lstat(path)
    with open(path, "rb") as f:
        return f.read() == SECRET and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600


def one_backup(env, size=4 * MiB):
    dom = env.domain(size=size)
    b = env.backup(dom, "<domainbackup/>")
    return dom, b, backup_uuid(b)


def files_xml(uuid, disks=None, target_dir=None):
    return restore_xml_for(uuid, disks=disks, target_dir=target_dir)


# ------------------------------------------------- 1. FILES_ONLY | REWRITE
def test_rewrite_into_a_folder_another_user_writes_is_refused(env, nobodys, victim):
    """nobody swaps the restore's temporary file for a link to a root-only
    file: the old library chowned and chmodded through the link. Now the
    folder is refused before anything is written."""
    _, _, uuid = one_backup(env)
    target = os.path.join(nobodys, "disk.qcow2")
    as_nobody("sh", "-c", f"head -c 1M /dev/zero > '{target}'", check=True)
    before = sha256(target)
    stop = threading.Event()

    def swap():
        # Every temporary name the restore makes becomes a link to the victim.
        while not stop.is_set():
            as_nobody("sh", "-c", f"cd '{nobodys}' && for f in .disk.qcow2.*; do "
                      f"[ -e \"$f\" ] && rm -f \"$f\" && ln -s '{victim}' \"$f\"; done; true")

    t = threading.Thread(target=swap)
    t.start()
    try:
        rc = lib.virDomainBackupRestore(files_xml(uuid, {"vda": (target, "qcow2")}).encode(),
                                        FILES_ONLY | REWRITE)
    finally:
        stop.set()
        t.join()
    assert rc == -1, "a restore into a folder nobody can write was accepted"
    expect_error(VIR_ERR_OPERATION_INVALID, "refusing folder", nobodys, "restore target")
    assert untouched(victim)
    assert sha256(target) == before


def test_a_folder_on_the_way_swapped_for_a_link_is_not_followed(env, nobodys):
    """The target's own folder is root's, but it lies in nobody's folder:
    nobody swaps it for a link to a root folder holding a file of the same
    name. A link at a folder's name is followed only where nobody else
    could have made it."""
    _, _, uuid = one_backup(env)
    sub = os.path.join(nobodys, "sub")
    os.mkdir(sub, 0o755)
    elsewhere = tempfile.mkdtemp(prefix="root-images-", dir="/var/tmp")
    try:
        victim = os.path.join(elsewhere, "disk.qcow2")
        with open(victim, "wb") as f:
            f.write(SECRET)
        os.chmod(victim, 0o600)
        r = as_nobody("sh", "-c", f"cd '{nobodys}' && mv sub gone && ln -s '{elsewhere}' sub")
        assert r.returncode == 0, r.stderr
        restore_fails(files_xml(uuid, {"vda": (os.path.join(sub, "disk.qcow2"), "qcow2")}),
                      FILES_ONLY | REWRITE, VIR_ERR_OPERATION_INVALID, "refusing folder", sub,
                      "symbolic link")
        assert untouched(victim)
        assert os.listdir(elsewhere) == ["disk.qcow2"]
    finally:
        shutil.rmtree(elsewhere)


def test_replacement_keeps_the_owner_and_mode_of_the_file_it_replaces(env):
    """The replace step still gives the new file the old one's owner and
    mode (set on the open file, in a folder only root can write)."""
    dom, b, uuid = one_backup(env)
    out = env.path("out")
    os.mkdir(out, 0o755)
    target = os.path.join(out, "disk.img")
    with open(target, "wb") as f:
        f.write(b"x" * 4096)
    os.chown(target, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chmod(target, 0o640)
    restore(files_xml(uuid, {"vda": (target, "raw")}), FILES_ONLY | REWRITE)
    st = os.stat(target)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY.pw_uid, 0o640)
    assert_byte_exact(target, "raw", dom.disks[0][1], "raw")
    assert sorted(os.listdir(out)) == ["disk.img"]


# ------------------------------------------------------ 2. instant overlay
def test_instant_overlay_in_a_folder_another_user_writes_is_refused(env, nobodys, victim):
    """The old library made the overlay with O_EXCL, then ran qemu-img on
    the path again: a link swapped in between had a root file overwritten
    with a qcow2 header."""
    _, _, uuid = one_backup(env)
    overlay = os.path.join(nobodys, "overlay.qcow2")
    name = "pytest-instant-" + uuid[:8]
    xml = restore_xml_for(uuid, disks={"vda": (overlay, None)}, domain=name)
    restore_fails(xml, RESTORE_NEW_DOMAIN | INSTANT, VIR_ERR_OPERATION_INVALID,
                  "refusing folder", nobodys)
    assert os.listdir(nobodys) == []
    assert untouched(victim)
    assert not virt.virDomainLookupByName(env.conn, name.encode())


def test_instant_overlay_is_made_by_the_library_and_reads_the_backup(env):
    """The overlay the library now writes itself (no qemu-img on a path)
    is a qcow2 image over the backup, with the backup's data."""
    dom, b, uuid = one_backup(env)
    overlay = env.path("ov.qcow2")
    name = "pytest-instant-" + uuid[:8]
    restore(restore_xml_for(uuid, disks={"vda": (overlay, None)}, domain=name),
            RESTORE_NEW_DOMAIN | INSTANT)
    try:
        info = run(["qemu-img", "info", "--output=json", overlay])
        assert target_of(b) in info.stdout
        assert stat.S_IMODE(os.stat(overlay).st_mode) == 0o600
        assert_byte_exact(overlay, "qcow2", dom.disks[0][1], "raw")
    finally:
        d = virt.virDomainLookupByName(env.conn, name.encode())
        if d:
            virt.virDomainUndefine(d)
            virt.virDomainFree(d)


# ------------------------------------------------------- 3. default target
def test_default_target_owned_by_another_user_is_refused(env, nobodys):
    dom = env.domain(size=4 * MiB)
    xml = f"<target type='dir'><path>{nobodys}</path></target>"
    assert lib.virDomainSetDefaultTarget(dom, xml.encode(), 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID, nobodys, "owned by uid")


def test_delete_never_follows_a_backup_folder_swapped_for_a_link(env, nobodys):
    """The default target folder passes to nobody after a backup was made
    there (a careless chown); nobody swaps the backup's folder for a link to
    another VM's image folder. Delete must not remove that VM's disk."""
    dom = env.domain(size=4 * MiB)
    home = tempfile.mkdtemp(prefix="targets-", dir="/var/tmp")
    os.chmod(home, 0o755)
    xml = f"<target type='dir'><path>{home}</path></target>"
    assert lib.virDomainSetDefaultTarget(dom, xml.encode(), 0) == 0, last_error()
    b = env.backup(dom, "<domainbackup/>")
    uuid = backup_uuid(b)
    assert os.path.dirname(target_of(b)) == os.path.join(home, uuid)
    images = tempfile.mkdtemp(prefix="images-", dir="/var/tmp")
    try:
        vm_disk = os.path.join(images, os.path.basename(target_of(b)))
        with open(vm_disk, "wb") as f:
            f.write(SECRET)
        os.chmod(vm_disk, 0o600)
        os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
        r = as_nobody("sh", "-c", f"cd '{home}' && mv '{uuid}' old && ln -s '{images}' '{uuid}'")
        assert r.returncode == 0, r.stderr
        assert lib.virDomainBackupDelete(b, 0) == -1, "the delete went through a swapped folder"
        expect_error(VIR_ERR_OPERATION_INVALID, "refusing folder", uuid, "symbolic link")
        assert untouched(vm_disk)
        # Nothing changed: the backup is still listed.
        assert count_backups(dom) == 1
    finally:
        shutil.rmtree(images)
        shutil.rmtree(home)


# ------------------------------------------------ 5. another backup's file
@pytest.mark.parametrize("how", ["path", "hard link", "symbolic link"])
def test_restore_onto_any_backup_file_is_refused(env, how):
    """Backup B1 of one domain has a child C; a files-only restore of
    another domain's backup must not write over B1's image, however named."""
    dom = env.domain(size=4 * MiB)
    b1 = env.backup(dom, backup_xml_for({"vda": env.path("b1.qcow2")}))
    c = env.backup(dom, backup_xml_for({"vda": env.path("c.qcow2")}, parent=backup_uuid(b1)))
    _, _, other = one_backup(env)
    b1_file = target_of(b1)
    target = {"path": b1_file,
              "hard link": env.path("hard.qcow2"),
              "symbolic link": env.path("sym.qcow2")}[how]
    if how == "hard link":
        os.link(b1_file, target)
    elif how == "symbolic link":
        os.symlink(b1_file, target)
    before = sha256(b1_file)
    fmt = "qcow2" if b1_file.endswith("qcow2") else "raw"
    restore_fails(files_xml(other, {"vda": (target, fmt)}), FILES_ONLY | REWRITE,
                  VIR_ERR_INVALID_ARG, "file of a backup in the catalog")
    assert sha256(b1_file) == before
    assert lib.virDomainBackupVerify(b1, 0) == 0
    assert lib.virDomainBackupVerify(c, 0) == 0


# ------------------------------------------------ 8. disk names as paths
@pytest.mark.parametrize("name", ["../x", "/abs/x", "..", ".hidden", "a/b"])
def test_unmanaged_files_only_disk_names_never_leave_the_folder(env, name):
    src = env.disk("src.raw", 1 * MiB)
    dom = env.domain(size=1 * MiB)
    out = env.path("out")
    os.makedirs(out)
    before = set(os.listdir(env.tmp))
    xml = restore_xml_for(None, sources={name: src}, target_dir=out)
    restore_fails(xml, FILES_ONLY, VIR_ERR_INVALID_ARG, "cannot name a file", dom=dom)
    assert os.listdir(out) == []
    assert set(os.listdir(env.tmp)) == before
    assert not os.path.exists("/abs")


# ---------------------------------------------------- 9. device nodes
@pytest.fixture
def loop_device(env):
    backing = env.path("lv.img")
    with open(backing, "wb") as f:
        f.truncate(8 * MiB)
    r = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no loop device: {r.stderr.strip()}")
    dev = r.stdout.strip()
    yield dev, backing
    subprocess.run(["losetup", "-d", dev])


def test_rewrite_onto_a_block_device_writes_the_device_in_place(env, loop_device):
    """An LVM user restores onto the volume itself: the device node stays,
    and the device holds the disk, zeroes included (it was full of 0xee)."""
    dev, backing = loop_device
    dom = env.domain(size=4 * MiB)
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 1M", dom.disks[0][1]])
    b = env.backup(dom, "<domainbackup/>")
    with open(dev, "r+b") as f:
        f.write(b"\xee" * 8 * MiB)
    folder = env.path("dev")
    os.mkdir(folder, 0o755)
    node = os.path.join(folder, "lv")
    os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(dev).st_rdev)
    restore(files_xml(backup_uuid(b), {"vda": (node, "raw")}), FILES_ONLY | REWRITE)
    assert stat.S_ISBLK(os.lstat(node).st_mode), "the device node was replaced"
    with open(backing, "rb") as f:
        data = f.read()
    with open(dom.disks[0][1], "rb") as f:
        want = f.read()
    assert data[:4 * MiB] == want
    assert data[4 * MiB:] == b"\xee" * 4 * MiB


def test_a_block_device_too_small_is_refused(env, loop_device):
    dev, _ = loop_device
    dom = env.domain(size=16 * MiB)
    b = env.backup(dom, "<domainbackup/>")
    restore_fails(files_xml(backup_uuid(b), {"vda": (dev, "raw")}), FILES_ONLY | REWRITE,
                  VIR_ERR_INVALID_ARG, "block device", "the disk needs")


@pytest.mark.parametrize("kind", ["char", "fifo"])
def test_other_special_files_are_never_targets(env, kind):
    """A 0666 character node would have become a world-readable guest
    image; a FIFO would block."""
    _, b, uuid = one_backup(env)
    folder = env.path("dev")
    os.mkdir(folder, 0o755)
    node = os.path.join(folder, "node")
    if kind == "char":
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        os.mkfifo(node, 0o666)
    restore_fails(files_xml(uuid, {"vda": (node, "qcow2")}), FILES_ONLY | REWRITE,
                  VIR_ERR_INVALID_ARG, "not a regular file or a block device")
    st = os.lstat(node)
    assert (stat.S_ISCHR if kind == "char" else stat.S_ISFIFO)(st.st_mode)
    assert os.listdir(folder) == ["node"]
