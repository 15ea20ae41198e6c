"""A catalog copied or moved to another path (cp -a, tar, rsync -a), the
original removed and LIBVIRT_BACKUP_DIR pointed at the copy: its backups
list, verify, restore byte for byte, delete (merging into a child) and
export as they did, because the catalog names the files it owns relative
to its root (records, qcow2 backing files between backups' images, merge
markers; digest indexes already were). Files a user named outside the
catalog keep their absolute names. A record an earlier version wrote with
absolute names reads as it did in place, and in a moved catalog fails
with an error that says what happened."""

import os
import shutil
import subprocess
import uuid as uuidlib
from ctypes import c_int, c_uint, c_void_p

import pytest

from conftest import (K64, MiB, Nbd, RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED, _decl,
                      assert_byte_exact, backing_chain, backup_uuid, backup_xml_for, delete,
                      disk_modes, domain_disks, expect_error, free, get_xml, lib, list_handles,
                      list_uuids, nbd_copy, parent_of, restore, restore_fails, restore_xml_for,
                      target_of, write_disk)

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
FILES_ONLY = 1 << 4


def verify(b):
    assert lib.virDomainBackupVerify(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()


def lookup(env, uuid):
    """A handle of the backup through the catalog as it is now (handles
    keep the catalog they were made in: a test moves it under them)."""
    h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    assert h, lib.virDomainBackupGetLastErrorMessage()
    env._handles.append(h)
    return h


def move_catalog(env, monkeypatch, how="cp"):
    """Copy the catalog to a new path with `how` (cp -a, tar, rsync -a),
    remove the original, and point LIBVIRT_BACKUP_DIR at the copy."""
    old, new = env.catalog, env.path(f"moved-{how}/catalog")
    os.makedirs(os.path.dirname(new), mode=0o700)
    if how == "cp":
        subprocess.run(["cp", "-a", old, new], check=True)
    elif how == "tar":
        os.mkdir(new, 0o700)
        tar = subprocess.Popen(["tar", "-C", old, "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", new, "-xpf", "-"], stdin=tar.stdout, check=True)
        assert tar.wait() == 0
    else:
        subprocess.run(["rsync", "-a", old + "/", new + "/"], check=True)
    shutil.rmtree(old)
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", new)
    env.catalog = new
    return old, new


def files_naming(root, text):
    """Files under `root` whose bytes hold `text` (records, images, notes)."""
    hits = []
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                if text.encode() in fh.read():
                    hits.append(os.path.relpath(p, root))
    return hits


def chain_in_catalog(env, fmt="raw", size=16 * MiB):
    """A one-disk domain and three backups to the catalog's default
    folders, full -> inc1 -> inc2, with a copy of the disk at each."""
    dom = env.domain(fmt=fmt, size=size)
    _, src, _ = dom.disks[0]
    taken = []
    for i, writes in enumerate([[], [(2 * MiB, 1 * MiB, 0x31)],
                                [(5 * MiB, 2 * K64, 0x32), (2 * MiB, K64, None)]]):
        write_disk(src, fmt, writes)
        parent = taken[-1][0] if taken else None
        b = env.backup(dom, backup_xml_for(parent=parent))
        taken.append((backup_uuid(b), b, env.snapshot(src, f"at-{i}.{fmt}")))
    return dom, taken


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_moved_catalog_lists_verifies_restores_merges_and_exports(env, monkeypatch, fmt):
    dom, taken = chain_in_catalog(env, fmt)
    (full, _, at_full), (inc1, _, at_inc1), (inc2, _, at_inc2) = taken
    old, new = move_catalog(env, monkeypatch)
    assert not os.path.exists(old)
    # Nothing in the copy names the old root: not a record, not an image.
    assert files_naming(new, old) == []

    # List, and the handles' XML: targets under the new root.
    assert list_uuids(dom) == [full, inc1, inc2]
    handles = {backup_uuid(h): h for h in list_handles(dom)}
    env._handles.extend(handles.values())
    for u in (full, inc1, inc2):
        assert target_of(handles[u]).startswith(new + "/")
        verify(handles[u])
    assert disk_modes(handles[inc2]) == {"vda": "incremental"}
    # The chain as qemu-img follows it from the newest file.
    chain = backing_chain(target_of(handles[inc2]))
    assert [os.path.realpath(p) for p in chain] == [
        os.path.realpath(target_of(handles[u])) for u in (inc2, inc1, full)]

    # Restore, byte for byte: as files, and as a new domain.
    for u, want in ((full, at_full), (inc2, at_inc2)):
        out = env.path(f"files-{u}.raw")
        restore(restore_xml_for(u, {"vda": (out, "raw")}), FILES_ONLY)
        assert_byte_exact(out, "raw", want, fmt)
    name = env.expect_domain(f"{dom.name}-moved")
    restored = env.path(f"{name}-vda.qcow2")
    restore(restore_xml_for(inc1, {"vda": restored}, domain=name), RESTORE_NEW_DOMAIN)
    assert_byte_exact(restored, "qcow2", at_inc1, fmt)

    # Export of a stored backup, read back over NBD.
    nbd = Nbd(socket=env.path("moved.sock"))
    xml = f"<domainbackup><uuid>{inc1}</uuid>{nbd.server_xml()}</domainbackup>"
    e = lib.virDomainBackupStartUnmanaged(None, xml.encode(), 0)
    assert e, lib.virDomainBackupGetLastErrorMessage()
    env._handles.append(e)
    assert_byte_exact(nbd_copy(nbd.uri("vda"), env.path("nbd.raw")), "raw", at_inc1, fmt)
    assert lib.virDomainBackupFinishJob(e, 0) == 0, lib.virDomainBackupGetLastErrorMessage()

    # Delete the middle backup: merged into inc2, whose new image names
    # the full backup's, relative to its own folder.
    delete(handles[inc1])
    assert list_uuids(dom) == [full, inc2]
    assert parent_of(handles[inc2]) == full
    verify(handles[inc2])
    out = env.path("after-merge.raw")
    restore(restore_xml_for(inc2, {"vda": (out, "raw")}), FILES_ONLY)
    assert_byte_exact(out, "raw", at_inc2, fmt)
    # And the full one: inc2 becomes a full copy.
    delete(handles[full])
    assert list_uuids(dom) == [inc2]
    assert disk_modes(handles[inc2]) == {"vda": "full"}
    verify(handles[inc2])
    # Moved once more, after the merges rewrote its image and record.
    _, again = move_catalog(env, monkeypatch, "tar")
    assert files_naming(again, new) == []
    h, = list_handles(dom)
    env._handles.append(h)
    verify(h)
    out = env.path("after-second-move.raw")
    restore(restore_xml_for(inc2, {"vda": (out, "raw")}), FILES_ONLY)
    assert_byte_exact(out, "raw", at_inc2, fmt)


@pytest.mark.parametrize("how", ["cp", "tar", "rsync"])
def test_each_way_of_copying_keeps_the_catalog_whole(env, monkeypatch, how):
    if how == "rsync" and not shutil.which("rsync"):
        pytest.skip("rsync is not installed")
    dom, taken = chain_in_catalog(env, size=8 * MiB)
    move_catalog(env, monkeypatch, how)
    assert list_uuids(dom) == [u for u, _, _ in taken]
    for u, _, want in taken:
        verify(lookup(env, u))
        out = env.path(f"{how}-{u}.raw")
        restore(restore_xml_for(u, {"vda": (out, "raw")}), FILES_ONLY)
        assert_byte_exact(out, "raw", want, "raw")
    # New backups go on in the moved catalog: an incremental on the last.
    write_disk(dom.disks[0][1], "raw", [(6 * MiB, 2 * K64, 0x3A)])
    nxt = env.backup(dom, backup_xml_for(parent=taken[-1][0]))
    at_nxt = env.snapshot(dom.disks[0][1], f"{how}-at-next.raw")
    assert disk_modes(nxt) == {"vda": "incremental"}
    assert target_of(nxt).startswith(env.catalog + "/")
    verify(nxt)
    out = env.path(f"{how}-next.raw")
    restore(restore_xml_for(backup_uuid(nxt), {"vda": (out, "raw")}), FILES_ONLY)
    assert_byte_exact(out, "raw", at_nxt, "raw")


def test_targets_outside_the_catalog_keep_their_absolute_names(env, monkeypatch):
    """A chain whose images a user placed outside the catalog: the records
    and headers name them by absolute paths, which stay right when only
    the catalog moves."""
    dom = env.domain(size=8 * MiB)
    _, src, _ = dom.disks[0]
    full = env.backup(dom, backup_xml_for({"vda": env.path("user-full.qcow2")}))
    write_disk(src, "raw", [(1 * MiB, K64, 0x44)])
    inc = env.backup(dom, backup_xml_for({"vda": env.path("user-inc.qcow2")},
                                         parent=backup_uuid(full)))
    at_inc = env.snapshot(src, "user-at-inc.raw")
    assert backing_chain(env.path("user-inc.qcow2"))[1] == env.path("user-full.qcow2")
    inc_uuid = backup_uuid(inc)
    move_catalog(env, monkeypatch)
    inc = lookup(env, inc_uuid)
    assert target_of(inc) == env.path("user-inc.qcow2")
    verify(inc)
    out = env.path("user-out.raw")
    restore(restore_xml_for(inc_uuid, {"vda": (out, "raw")}), FILES_ONLY)
    assert_byte_exact(out, "raw", at_inc, "raw")


def test_an_image_outside_on_a_parent_inside_explains_a_move(env, monkeypatch):
    """An incremental a user placed outside the catalog, on a backup in a
    default folder: its header names the parent by its absolute path, which
    a move leaves behind; its backup says so, the parent is unaffected."""
    dom = env.domain(size=8 * MiB)
    full = env.backup(dom, "<domainbackup/>")
    u_full = backup_uuid(full)
    write_disk(dom.disks[0][1], "raw", [(1 * MiB, K64, 0x4D)])
    outside = env.path("outside-inc.qcow2")
    inc = env.backup(dom, backup_xml_for({"vda": outside}, parent=u_full))
    u_inc = backup_uuid(inc)
    assert backing_chain(outside)[1] == target_of(full)
    old, new = move_catalog(env, monkeypatch)
    verify(lookup(env, u_full))
    assert lib.virDomainBackupVerify(lookup(env, u_inc), 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, f"its image '{outside}' names its backing file",
                 f"'{old}'", f"'{new}'")


def old_record(env, dom, backup, target, source, size):
    """A record as the versions before relative names wrote it (this
    version's format, absolute paths), for a full qcow2 copy of vda."""
    return f"""<domainbackup>
  <uuid>{backup}</uuid>
  <creationTime>1764100000</creationTime>
  <description>written by an earlier version</description>
  <state>completed</state>
  <domain uuid='{dom.uuid}' name='{dom.name}'/>
  <disks>
    <disk name='vda' type='file' backupmode='full'>
      <source file='{source}'/>
      <target file='{target}'/>
      <driver type='qcow2'/>
    </disk>
  </disks>
  <connection uri='test:///default'/>
  <created ns='1764100000123456789'/>
  <diskinfo>
    <disk name='vda' sourceformat='raw' size='{size}'/>
  </diskinfo>
  <createddirs><dir path='{os.path.dirname(target)}'/></createddirs>
  <stats total='{size}' processed='{size}' written='{size}' elapsed='10'/>
  <domainxml></domainxml>
</domainbackup>
"""


def plant_old_backup(env, dom):
    """Make a backup, then rewrite its record as an earlier version wrote
    it: absolute paths into the catalog. Returns its UUID and disk copy."""
    b = env.backup(dom, "<domainbackup/>")
    u, target = backup_uuid(b), target_of(b)
    rec = os.path.join(env.catalog, dom.uuid, f"{u}.xml")
    _, src, _ = dom.disks[0]
    size = os.path.getsize(src)
    with open(rec, "w") as f:
        f.write(old_record(env, dom, u, target, src, size))
    os.remove(os.path.join(env.catalog, dom.uuid, "summary"))
    return u, target


def test_an_old_record_with_absolute_names_reads_in_place_and_explains_a_move(env, monkeypatch):
    dom = env.domain(size=8 * MiB)
    at = env.snapshot(dom.disks[0][1], "old-at.raw")
    u, target = plant_old_backup(env, dom)
    # In place: listed, verified, restored.
    assert list_uuids(dom) == [u]
    h = lookup(env, u)
    assert target_of(h) == target
    assert "earlier version" in get_xml(h)
    verify(h)
    out = env.path("old-out.raw")
    restore(restore_xml_for(u, {"vda": (out, "raw")}), FILES_ONLY)
    assert_byte_exact(out, "raw", at, "raw")

    # Moved: still listed and described, but its image is named under the
    # root the catalog left: each use says so.
    old, new = move_catalog(env, monkeypatch)
    assert list_uuids(dom) == [u]
    h = lookup(env, u)
    assert target_of(h) == target  # the record's word, as written
    assert lib.virDomainBackupVerify(h, 0) == -1
    msg = expect_error(VIR_ERR_OPERATION_FAILED, "earlier version", f"'{old}'", f"'{new}'",
                       f"its record names the file '{target}'", target.replace(old, new))
    assert "symbolic link" in msg
    restore_fails(restore_xml_for(u, {"vda": (env.path("x.raw"), "raw")}), FILES_ONLY,
                  VIR_ERR_OPERATION_FAILED, "earlier version", f"'{old}'")
    assert lib.virDomainBackupDelete(h, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "earlier version")
    assert list_uuids(dom) == [u]
    # The way out it names: the old path as a link to the new catalog.
    os.symlink(new, old)
    verify(h)
    delete(h)
    assert list_uuids(dom) == []
    assert not os.path.exists(target.replace(old, new))


def test_a_record_naming_a_file_outside_its_backups_folder_is_damaged(env):
    dom = env.domain(size=8 * MiB)
    b = env.backup(dom, "<domainbackup/>")
    u = backup_uuid(b)
    rec = os.path.join(env.catalog, dom.uuid, f"{u}.xml")
    with open(rec) as f:
        text = f.read()
    mine = f"{dom.uuid}/{u}/vda.qcow2"
    assert f"<target file='{mine}'/>" in text
    for bad in (f"{dom.uuid}/{u}/../../../etc/passwd", f"{uuidlib.uuid4()}/{u}/vda.qcow2",
                "vda.qcow2"):
        with open(rec, "w") as f:
            f.write(text.replace(f"file='{mine}'", f"file='{bad}'"))
        assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
        expect_error(VIR_ERR_OPERATION_FAILED, "is damaged", bad, "<target file> of disk 'vda'")
