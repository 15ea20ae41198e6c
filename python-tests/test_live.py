"""Managed backups of running QEMU domains on qemu:///system: libvirt serves
the disks in pull mode and the library copies them, with one checkpoint per
backup (named libvirt-backup-<uuid>) and incremental copies of what changed
since the parent's checkpoint; disks whose parent checkpoint is unusable are
copied in full (or, with NO_FALLBACK, nothing is created); quiesce without a
guest agent, cancel and one job at a time; Delete and undefine drop the
checkpoints; restore refused into a running domain, restored domains start;
and the pull-mode job of a process that was killed, ended at the next open.

Domains are TCG guests without an OS; the guest's writes go through QEMU
(qemu-io over the HMP monitor, Domain.guest_io). Jobs that must run for a
while (about 2 s) back up an overlay of the 2 GiB `big_qcow2` image; every
backup is compared byte for byte (qemu-img compare and virtual size) with a
copy of the disk made when it was taken."""

import os

from conftest import (assert_new_domain_starts, BIG_DISK_SIZE, CREATE_NO_FALLBACK, CREATE_QUIESCE, CREATE_WAIT,
                      FINISH_JOB_CANCEL, FINISH_JOB_CHECK, K64, MiB, RESTORE_NEW_DOMAIN,
                      RESTORE_REWRITE_EXISTING_DISK, STATE_CANCELLED, STATE_COMPLETED,
                      STATE_RUNNING, VIR_DOMAIN_UNDEFINE_BACKUP, VIR_ERR_ARGUMENT_UNSUPPORTED,
                      VIR_ERR_NO_DOMAIN_BACKUP,
                      VIR_ERR_OPERATION_ABORTED, VIR_ERR_OPERATION_INVALID, Nbd,
                      assert_backup_holds, assert_byte_exact, backing_chain, backup_state,
                      backup_uuid, backup_xml_for, catalog_entries_named, count_backups,
                      create_fails, delete, disk_modes, expect_error, free, get_params,
                      kill_process, lib, list_uuids, live_snapshot, lookup_domain, param,
                      parent_of, restore, restore_fails, restore_xml_for,
                      start_backup_process, target_of, unmanaged_xml, virt, wait_until,
                      xml_tree)

REWRITE = RESTORE_REWRITE_EXISTING_DISK


def big_domain(env, big_qcow2):
    """A running QEMU domain whose vda is an overlay of the big image (a
    full backup of it runs for about 2 s)."""
    return env.qemu_domain(disks=[("vda", env.overlay(big_qcow2, "big-vda.qcow2"), "qcow2")])


def cp(uuid):
    """The name of the checkpoint a live backup creates."""
    return "libvirt-backup-" + uuid


def checkpoint_of(backup):
    """The name in the backup's <checkpoint name='...'/> (None if absent)."""
    el = xml_tree(backup).find("checkpoint")
    return None if el is None else el.get("name")


def lookup(uuid):
    h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    assert h, f"LookupByUUID {uuid}: {lib.virDomainBackupGetLastErrorMessage()}"
    return h


def assert_gone(env, dom, uuid, target):
    """Nothing of the backup is left: no record, no target, no checkpoint."""
    assert lib.virDomainBackupLookupByUUID(uuid.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert uuid not in list_uuids(dom)
    assert catalog_entries_named(env, uuid) == []
    assert not os.path.exists(target)
    assert cp(uuid) not in dom.checkpoints()


# ------------------------------------------------------------ push mode
def test_full_then_incremental_while_the_guest_writes(qenv, big_qcow2):
    env = qenv
    dom = big_domain(env, big_qcow2)
    vda = dom.disks[0][1]

    # Full, without WAIT; the guest writes while libvirt copies.
    full_t = env.path("full.qcow2")
    full = env.backup(dom, backup_xml_for({"vda": full_t}), 0)
    u = backup_uuid(full)
    assert list_uuids(dom) == [u]
    assert backup_state(full) == "running"
    assert lib.virDomainBackupFinishJob(full, FINISH_JOB_CHECK) == 1
    assert dom.job_active()
    dom.guest_io("write -P 0xcd 32M 4M")
    assert lib.virDomainBackupFinishJob(full, FINISH_JOB_CHECK) == 1, \
        "the job ended before the guest wrote: it proves nothing"
    assert lib.virDomainBackupFinishJob(full, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    assert not dom.job_active()
    # The disk as it was when CreateXML returned: the base image, without
    # the guest's write.
    assert_byte_exact(full_t, "qcow2", big_qcow2, "qcow2")
    assert disk_modes(full) == {"vda": "full"}
    assert checkpoint_of(full) == cp(u)
    assert dom.checkpoints() == [cp(u)]
    p = get_params(full)
    assert p["state"][1] == STATE_COMPLETED
    assert p["incremental"][1] == 0
    assert p["bytes.total"][1] == BIG_DISK_SIZE
    assert p["bytes.processed"][1] == BIG_DISK_SIZE

    # Incremental: the 4 MiB the guest wrote since the full backup's
    # checkpoint, in a qcow2 backed by the full backup's target.
    now = live_snapshot(vda, "qcow2", env.path("now.qcow2"), base=big_qcow2)
    inc_t = env.path("inc.qcow2")
    inc = env.backup(dom, backup_xml_for({"vda": inc_t}, parent=u))
    iu = backup_uuid(inc)
    assert disk_modes(inc) == {"vda": "incremental"}
    assert parent_of(inc) == u
    assert backing_chain(inc_t) == [inc_t, full_t]
    assert_byte_exact(inc_t, "qcow2", now, "qcow2")
    assert param(inc, "incremental") == 1
    # The library read the disk through libvirt's export: only the 4 MiB
    # the checkpoint's bitmap marks were read and written.
    assert param(inc, "bytes.total") == BIG_DISK_SIZE
    assert param(inc, "bytes.written") == 4 * MiB
    assert checkpoint_of(inc) == cp(iu)
    assert dom.checkpoints() == sorted([cp(u), cp(iu)])

    # Delete removes each backup's checkpoint.
    delete(inc)
    assert dom.checkpoints() == [cp(u)]
    delete(full)
    assert dom.checkpoints() == []
    assert count_backups(dom) == 0


def test_cancel_and_one_job_at_a_time(qenv, big_qcow2):
    env = qenv
    dom = big_domain(env, big_qcow2)
    for how, cancel in [("abort", lambda b: lib.virDomainBackupAbortJob(b, 0)),
                        ("finish-cancel", lambda b: lib.virDomainBackupFinishJob(
                            b, FINISH_JOB_CANCEL))]:
        target = env.path(how + ".qcow2")
        b = env.backup(dom, backup_xml_for({"vda": target}), 0)
        u = backup_uuid(b)
        assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1
        assert dom.checkpoints() == [cp(u)]

        # A second job of the same domain, managed or not, is refused.
        second = env.path("second.qcow2")
        create_fails(dom, backup_xml_for({"vda": second}), 0, VIR_ERR_OPERATION_INVALID)
        assert lib.virDomainBackupStartUnmanaged(
            dom, unmanaged_xml(Nbd(socket=env.path("s.sock"))).encode(), 0) is None
        expect_error(VIR_ERR_OPERATION_INVALID)
        assert not os.path.exists(second) and not os.path.exists(env.path("s.sock"))
        assert list_uuids(dom) == [u]
        assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1, \
            "the job ended before it could be cancelled"

        assert cancel(b) == 0, lib.virDomainBackupGetLastErrorMessage()
        assert param(b, "state") == STATE_CANCELLED
        assert not dom.job_active()
        assert_gone(env, dom, u, target)
        assert count_backups(dom) == 0
        assert lib.virDomainBackupFinishJob(b, 0) == -1
        expect_error(VIR_ERR_OPERATION_ABORTED)
        assert lib.virDomainBackupAbortJob(b, 0) == -1
    assert dom.active()


def test_quiesce_without_guest_agent(qenv):
    env = qenv
    dom = env.qemu_domain(size=16 * MiB)
    target = env.path("q.qcow2")
    before = env.files()
    for flags in (CREATE_QUIESCE, CREATE_QUIESCE | CREATE_WAIT):
        # libvirt's error is carried over.
        create_fails(dom, backup_xml_for({"vda": target}), flags,
                     VIR_ERR_ARGUMENT_UNSUPPORTED, "quiesce", "agent")
    assert env.files() == before  # no target, no record
    assert count_backups(dom) == 0
    assert dom.checkpoints() == []
    assert not dom.job_active()


# ------------------------------------------------------------ fallbacks
def test_unusable_parent_checkpoints_fall_back_to_full_copies(qenv):
    env = qenv
    a = env.disk("fb-a.qcow2", 16 * MiB, "qcow2")
    b = env.disk("fb-b.raw", 8 * MiB)
    dom = env.qemu_domain(disks=[("vda", a, "qcow2"), ("vdb", b, "raw")], start=False)
    disks = ("vda", "vdb")

    def refused(tag, parent, *fragments):
        before = env.files()
        n = count_backups(dom)
        cps = dom.checkpoints()
        create_fails(dom, backup_xml_for(env.targets(tag, disks), parent=parent),
                     CREATE_WAIT | CREATE_NO_FALLBACK, VIR_ERR_OPERATION_INVALID, *fragments)
        assert env.files() == before
        assert count_backups(dom) == n
        assert dom.checkpoints() == cps

    # A parent taken while the domain was off has no checkpoint.
    off = env.backup(dom, backup_xml_for(env.targets("off", disks)))
    off_u = backup_uuid(off)
    assert checkpoint_of(off) is None
    dom.start()
    refused("on", off_u, "vda")
    on = env.backup(dom, backup_xml_for(env.targets("on", disks), parent=off_u))
    on_u = backup_uuid(on)
    assert parent_of(on) == off_u
    assert disk_modes(on) == {"vda": "full", "vdb": "full"}
    assert_backup_holds(on, env.live_snapshots(dom, "on"))

    # A raw disk keeps no bitmap: copied in full; qcow2 vda incremental.
    dom.guest_io("write -P 0x23 1M 1M")
    dom.guest_io("write -P 0x24 0 64k", device="virtio-disk1")
    inc = env.backup(dom, backup_xml_for(env.targets("inc", disks), parent=on_u))
    inc_u = backup_uuid(inc)
    assert disk_modes(inc) == {"vda": "incremental", "vdb": "full"}
    assert param(inc, "bytes.total") == 16 * MiB + 8 * MiB  # both disks read through the export
    assert_backup_holds(inc, env.live_snapshots(dom, "inc"))
    refused("inc-nf", on_u, "vdb")

    # The parent's checkpoint deleted behind the library's back.
    dom.delete_checkpoint(cp(inc_u))
    refused("gone", inc_u, "no longer exists")
    after = env.backup(dom, backup_xml_for(env.targets("after", disks), parent=inc_u))
    after_u = backup_uuid(after)
    assert disk_modes(after) == {"vda": "full", "vdb": "full"}
    assert param(after, "incremental") == 0
    assert_backup_holds(after, env.live_snapshots(dom, "after"))

    # A running parent and an inactive child: the library's own engine
    # stores what differs from the parent's copy.
    dom.guest_io("write -P 0x25 2M 64k")
    dom.stop()
    offline = env.backup(dom, backup_xml_for(env.targets("offline", disks), parent=after_u))
    assert disk_modes(offline)["vda"] == "incremental"
    assert param(offline, "bytes.written") == K64
    assert_byte_exact(target_of(offline, "vda"), "qcow2", a, "qcow2")
    assert_byte_exact(target_of(offline, "vdb"), "qcow2", b, "raw")
    assert checkpoint_of(offline) is None


# ------------------------------------------------- delete and undefine
def test_undefine_drops_the_checkpoints(qenv):
    env = qenv
    dom = env.qemu_domain(size=16 * MiB)
    full = env.backup(dom, "<domainbackup/>")
    fu = backup_uuid(full)
    dom.guest_io("write -P 0x31 1M 64k")
    inc = env.backup(dom, backup_xml_for(parent=fu))
    iu = backup_uuid(inc)
    targets = [target_of(full), target_of(inc)]
    assert dom.checkpoints() == sorted([cp(fu), cp(iu)])

    # Without the flag: refused, as libvirt does for snapshots.
    assert lib.virDomainBackupUndefineFlags(dom, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert virt.virDomainIsPersistent(dom) == 1
    assert dom.checkpoints() == sorted([cp(fu), cp(iu)])

    # libvirt keeps a running domain's checkpoints until it stops: undefine
    # it shut off.
    dom.stop()
    assert lib.virDomainBackupUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP) == 0, \
        lib.virDomainBackupGetLastErrorMessage()
    assert lookup_domain(env.qemu, dom.name) is None
    for u in (fu, iu):
        assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
        expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    assert all(os.path.exists(t) for t in targets)  # data files stay
    # Defined again under the same name, it has no checkpoints left.
    again = env.qemu_domain(disks=dom.disks, name=dom.name, start=False)
    assert again.checkpoints() == []


# ------------------------------------------------------------ restore
def test_restore_refused_while_running_restored_domains_start(qenv):
    env = qenv
    dom = env.qemu_domain(size=16 * MiB)
    vda = dom.disks[0][1]
    dom.guest_io("write -P 0x41 4M 1M")
    then = env.live_snapshots(dom, "then")["vda"]
    b = env.backup(dom, backup_xml_for({"vda": env.path("b.qcow2")}))
    u = backup_uuid(b)
    dom.guest_io("write -P 0x42 0 2M")

    # Refused; no disk, target or record touched (the digest index a
    # backup made by QEMU gets when it is first needed is not looked at).
    def files():
        return {p: h for p, h in env.files().items() if ".index" not in p}
    before = files()
    restore_fails(restore_xml_for(u), REWRITE, VIR_ERR_OPERATION_INVALID, "running")
    restore_fails(restore_xml_for(u, {"vda": env.path("elsewhere.qcow2")}), 0,
                  VIR_ERR_OPERATION_INVALID)
    assert files() == before

    # As a new domain, which starts.
    name = env.expect_domain(dom.name + "-copy", env.qemu)
    restore(restore_xml_for(u, domain=name), RESTORE_NEW_DOMAIN)
    assert_new_domain_starts(env.qemu, name, env.path(f"{name}-vda.qcow2"), then)

    # In place once shut off; it starts again.
    dom.stop()
    restore(restore_xml_for(u), REWRITE)
    assert_byte_exact(vda, "qcow2", then, "raw")
    dom.start()


# ------------------------------------------------- the process dies
def test_pull_job_of_a_killed_process_is_ended_at_the_next_open(qenv, big_qcow2):
    """A process starts a backup and is killed (SIGKILL) while it copies:
    the copy died with it, but libvirt's pull-mode job (which runs until
    someone ends it) and the backup's checkpoint are still there. The next
    process that reads the catalog ends that job, removes the checkpoint,
    the scratch folder and the partial backup; the domain's next backup
    works and is byte-exact."""
    env = qenv
    dom = big_domain(env, big_qcow2)
    vda = dom.disks[0][1]
    target = env.path("orphan.qcow2")
    p, u, printed = start_backup_process(env, "qemu:///system", dom.name,
                                         backup_xml_for({"vda": target}), stop=False)
    kill_process(p)
    assert printed == target
    assert dom.job_active(), "libvirt's pull-mode job ended with the process"
    assert dom.checkpoints() == [cp(u)]
    assert any(n.startswith(".scratch-" + u) for n in os.listdir(env.catalog))

    # The next open settles it: nothing of the backup is left.
    assert list_uuids(dom) == []
    assert not dom.job_active(), "the dead process's pull-mode job was not ended"
    assert_gone(env, dom, u, target)
    assert not any(n.startswith(".scratch-") for n in os.listdir(env.catalog))

    dom.guest_io("write -P 0xcd 32M 4M")
    then = live_snapshot(vda, "qcow2", env.path("then.qcow2"), base=big_qcow2)
    again = env.path("again.qcow2")
    b = env.backup(dom, backup_xml_for({"vda": again}))
    assert_byte_exact(again, "qcow2", then, "qcow2")
    assert dom.checkpoints() == [cp(backup_uuid(b))]
