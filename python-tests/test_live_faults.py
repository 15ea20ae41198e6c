"""Live backups through libvirt's pull mode, when things go wrong, and what
the one data path gives that push mode did not.

- The digest index is there the moment the backup completes, so a byte
  flipped in the target right after fails Verify (QEMU-written backups of
  earlier versions got theirs at their first verification, from whatever
  was on disk by then).
- The domain destroyed while the library copies (QEMU's NBD server goes
  with it), libvirt's job aborted behind the library's back (the export
  closes), libvirtd restarted during the copy: the job fails with a clear
  error, no backup is recorded, no libvirt job, checkpoint, scratch folder
  or target is left, and the domain's next backup works.
- Checkpoints of other tools on the same domain are left alone: ours carry
  the libvirt-backup- prefix, theirs survive our backups and deletes.

Domains are TCG guests without an OS on overlays of the 2 GiB `big_qcow2`
image (a full copy runs for a second or two)."""

import os
import subprocess

from conftest import (FINISH_JOB_CHECK, K64, MiB, VIR_ERR_OPERATION_FAILED,
                      VIR_TYPED_PARAM_BOOLEAN, _decl, assert_byte_exact, backup_uuid,
                      backup_xml_for, catalog_entries_named, count_backups, delete,
                      expect_error, get_params, lib, list_uuids, live_snapshot, wait_until)
from test_verify import flip_byte, host_offset
from ctypes import c_int, c_uint, c_void_p

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)

HERE = os.path.dirname(os.path.abspath(__file__))


def cp(uuid):
    return "libvirt-backup-" + uuid


def big_domain(env, big_qcow2, name):
    return env.qemu_domain(disks=[("vda", env.overlay(big_qcow2, name + ".qcow2"), "qcow2")])


def index_files(env, uuid):
    """The digest index files of a backup (in its <uuid>.index folder)."""
    return [os.path.join(d, n) for d in catalog_entries_named(env, uuid)
            if d.endswith(".index") for n in os.listdir(d) if n.endswith(".b3")]


def scratch_folders(env):
    return [n for n in os.listdir(env.catalog) if n.startswith(".scratch-")]


def test_index_is_written_with_the_backup_and_a_flipped_byte_fails_verify(qenv, big_qcow2):
    env = qenv
    dom = big_domain(env, big_qcow2, "ix")
    target = env.path("ix-full.qcow2")
    b = env.backup(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    # Right after completion, before anyone verified it.
    assert len(index_files(env, u)) == 1, catalog_entries_named(env, u)
    bad = 3 * MiB + 12345
    flip_byte(target, host_offset(target, bad))
    assert lib.virDomainBackupVerify(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "disk 'vda'", f"offset {bad // K64 * K64}")
    flip_byte(target, host_offset(target, bad))
    assert lib.virDomainBackupVerify(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()


def assert_nothing_left(env, dom, u, target):
    """The failed backup left nothing: no record, target, job, checkpoint or
    scratch folder."""
    assert u not in list_uuids(dom)
    assert catalog_entries_named(env, u) == []
    assert not os.path.exists(target)
    assert scratch_folders(env) == []
    assert cp(u) not in dom.checkpoints()
    if dom.active():
        assert not dom.job_active()


def started(env, dom, target):
    """A backup started without waiting, seen copying."""
    b = env.backup(dom, backup_xml_for({"vda": target}), 0)
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1, "the job ended at once"
    return b, backup_uuid(b)


def finish_fails(b, *fragments):
    assert lib.virDomainBackupFinishJob(b, 0) == -1, "the backup completed"
    return expect_error(VIR_ERR_OPERATION_FAILED, *fragments)


def next_backup_works(env, dom, big_qcow2, tag):
    vda = dom.disks[0][1]
    then = live_snapshot(vda, "qcow2", env.path(tag + "-then.qcow2"), base=big_qcow2)
    t = env.path(tag + "-next.qcow2")
    b = env.backup(dom, backup_xml_for({"vda": t}))
    assert_byte_exact(t, "qcow2", then, "qcow2")
    delete(b)


def test_domain_destroyed_mid_copy(qenv, big_qcow2):
    env = qenv
    dom = big_domain(env, big_qcow2, "ds")
    target = env.path("ds-full.qcow2")
    b, u = started(env, dom, target)
    dom.stop()
    msg = finish_fails(b, "disk 'vda'")
    assert "NBD" in msg, msg
    assert_nothing_left(env, dom, u, target)
    dom.start()
    assert count_backups(dom) == 0
    next_backup_works(env, dom, big_qcow2, "ds")


def test_libvirt_job_aborted_behind_the_librarys_back(qenv, big_qcow2):
    env = qenv
    dom = big_domain(env, big_qcow2, "ab")
    target = env.path("ab-full.qcow2")
    b, u = started(env, dom, target)
    # virsh domjobabort: libvirt ends the pull-mode job, QEMU its export.
    subprocess.run(["virsh", "-c", "qemu:///system", "domjobabort", dom.name], check=True,
                   capture_output=True)
    finish_fails(b, "disk 'vda'")
    assert_nothing_left(env, dom, u, target)
    next_backup_works(env, dom, big_qcow2, "ab")


def test_checkpoints_of_other_tools_are_left_alone(qenv, big_qcow2):
    """Another tool's checkpoint on the domain (virtnbdbackup names its own
    virtnbdbackup.N) survives our backups, incrementals and deletes; ours
    are recognised by their prefix."""
    env = qenv
    dom = big_domain(env, big_qcow2, "fo")
    subprocess.run(["virsh", "-c", "qemu:///system", "checkpoint-create-as", dom.name,
                    "--name", "virtnbdbackup.0"], check=True, capture_output=True)
    full = env.backup(dom, backup_xml_for({"vda": env.path("fo-full.qcow2")}))
    fu = backup_uuid(full)
    dom.guest_io("write -P 0x42 64M 1M")
    inc = env.backup(dom, backup_xml_for({"vda": env.path("fo-inc.qcow2")}, parent=fu))
    iu = backup_uuid(inc)
    assert dom.checkpoints() == sorted(["virtnbdbackup.0", cp(fu), cp(iu)])
    assert lib.virDomainBackupVerify(inc, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    delete(full)
    delete(inc)
    assert dom.checkpoints() == ["virtnbdbackup.0"]


def hmp(dom, cmd):
    """An HMP command on the domain's monitor; its output (errors included)."""
    return subprocess.run(["virsh", "-c", "qemu:///system", "qemu-monitor-command", dom.name,
                           "--hmp", cmd], capture_output=True, text=True).stdout


def test_scratch_files_disk_full(qenv, big_qcow2, monkeypatch):
    """The catalog (where QEMU keeps what the guest overwrites during the
    backup) on a 48 MiB file system while the guest overwrites 64 MiB the
    copy has not reached yet. QEMU then either fails the backup job (the
    library's copy fails, nothing is recorded) or refuses the guest's
    write (the backup is still one point in time): never a completed
    backup mixing the two."""
    env = qenv
    catalog = env.path("small-catalog")
    os.makedirs(catalog)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", catalog],
                   check=True)
    try:
        monkeypatch.setenv("LIBVIRT_BACKUP_DIR", catalog)
        env.catalog = catalog
        dom = big_domain(env, big_qcow2, "sf")
        vda = dom.disks[0][1]
        then = live_snapshot(vda, "qcow2", env.path("sf-then.qcow2"), base=big_qcow2)
        target = env.path("sf-full.qcow2")
        b, u = started(env, dom, target)
        out = hmp(dom, 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend '
                       '"write -P 0x77 1024M 64M"')
        rc = lib.virDomainBackupFinishJob(b, 0)
        if rc == 0:
            # QEMU kept the point in time at the guest's expense.
            assert "rror" in out, f"the guest's write went through: {out!r}"
            assert_byte_exact(target, "qcow2", then, "qcow2")
            delete(b)
        else:
            expect_error(VIR_ERR_OPERATION_FAILED)
            assert_nothing_left(env, dom, u, target)
        assert not dom.job_active()
        assert scratch_folders(env) == []
        next_backup_works(env, dom, big_qcow2, "sf")
        dom.stop()
    finally:
        subprocess.run(["umount", "-l", catalog], check=False)


def test_old_live_backup_without_index_gets_one_at_first_verify(qenv, big_qcow2):
    """A live backup made by an earlier version (QEMU wrote it: no digest
    index, a checkpoint named after the bare UUID) still verifies: its first
    verification records the index and says so in the log. The same missing
    index on a backup of this version is damage: Verify refuses."""
    env = qenv
    dom = big_domain(env, big_qcow2, "old")
    b = env.backup(dom, backup_xml_for({"vda": env.path("old-full.qcow2")}))
    u = backup_uuid(b)
    [index] = index_files(env, u)
    os.unlink(index)
    assert lib.virDomainBackupVerify(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "digest index", "is missing")

    [record] = [p for p in catalog_entries_named(env, u) if p.endswith(u + ".xml")]
    with open(record) as f:
        text = f.read()
    assert f"'{cp(u)}'" in text, text
    with open(record, "w") as f:
        f.write(text.replace(f"'{cp(u)}'", f"'{u}'"))
    assert lib.virDomainBackupVerify(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    assert os.path.exists(index)
    # GetParameters tells a caller that this verification recorded the index.
    assert get_params(b)["verify.recorded"] == (VIR_TYPED_PARAM_BOOLEAN, 1)
    assert lib.virDomainBackupVerify(b, 0) == 0
    assert get_params(b)["verify.recorded"] == (VIR_TYPED_PARAM_BOOLEAN, 0)
