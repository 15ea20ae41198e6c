"""Unmanaged backups (virDomainBackupStartUnmanaged): a read-only NBD
export of a domain's disks as they were at the start, read with libnbd's
tools (nbdcopy, nbdinfo). A running QEMU domain is exported by libvirt's
pull-mode job, an inactive QEMU domain or a test:///default domain by
qemu-storage-daemon; over tcp or a unix socket; every disk under its name,
or the disks chosen under their exportname; with a <parent>, the changes
since it as a dirty bitmap (exportbitmap). FinishJob(0) / AbortJob end the
export (server gone, scratch files removed); it is never listed and Delete
refuses it. Then virDomainBackupRestoreUnmanaged from such exports."""

import os

from conftest import (assert_new_domain_starts, CREATE_WAIT, FINISH_JOB_CHECK, K64, MiB, Nbd, RESTORE_NEW_DOMAIN,
                      RESTORE_REWRITE_EXISTING_DISK, STATE_CANCELLED, STATE_COMPLETED,
                      STATE_RUNNING, VIR_ERR_OPERATION_FAILED, VIR_ERR_OPERATION_INVALID,
                      assert_byte_exact, backup_uuid, backup_xml_for, count_backups,
                      create_fails, expect_error, export_of, free_port, lib, list_uuids,
                      live_snapshot, lookup_domain, nbd_copy, nbd_dirty, nbd_exports,
                      nbd_reachable, param, restore, restore_fails, restore_xml_for,
                      unmanaged_xml, virt, write_disk)

REWRITE = RESTORE_REWRITE_EXISTING_DISK


def scratch(env):
    """What the exports left in the catalog: their .scratch-<id> folders."""
    if not os.path.isdir(env.catalog):
        return []
    return [n for n in os.listdir(env.catalog) if n.startswith(".scratch")]


def check_export(env, server, want):
    """The server exports exactly the disks of `want` ({export name: raw
    image}), read-only, each equal byte for byte to its image."""
    exports = nbd_exports(server.uri())
    assert sorted(exports) == sorted(want)
    for name, image in want.items():
        assert exports[name]["is_read_only"]
        got = nbd_copy(server.uri(name), env.path(f"got-{name}.raw"))
        assert_byte_exact(got, "raw", image, "raw")
        os.unlink(got)


def check_running(b, dom):
    assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1
    assert param(b, "state") == STATE_RUNNING
    # Never listed; catalog operations refuse it.
    assert backup_uuid(b) not in list_uuids(dom)
    assert lib.virDomainBackupDelete(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)


def check_ended(env, b, server, state):
    """The export ended with `state`: no server, no scratch file; a second
    end is refused."""
    assert param(b, "state") == state
    assert not nbd_reachable(server.uri())
    if server.socket:
        assert not os.path.exists(server.socket)
    assert scratch(env) == []
    assert lib.virDomainBackupAbortJob(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)


# ------------------------------------------------------------ QEMU, running
def test_running_qemu_domain_pull_mode(qenv):
    env = qenv
    a = env.disk("pull-a.qcow2", 32 * MiB, "qcow2")
    b = env.disk("pull-b.qcow2", 16 * MiB, "qcow2")
    dom = env.qemu_domain(disks=[("vda", a, "qcow2"), ("vdb", b, "qcow2")])
    parent = env.backup(dom, backup_xml_for(env.targets("parent", ("vda", "vdb"))))
    pu = backup_uuid(parent)
    dom.guest_io("write -P 0x52 8M 1M")
    then = env.live_snapshots(dom, "then")

    # tcp, every disk under its name, the changes since the parent.
    tcp = Nbd(port=free_port())
    ex = env.start_unmanaged(dom, unmanaged_xml(tcp, parent=pu))
    assert export_of(ex) == ({"transport": "tcp", "name": "127.0.0.1", "port": str(tcp.port)},
                             {"vda": ("vda", "vda-changes"), "vdb": ("vdb", "vdb-changes")})
    check_running(ex, dom)
    assert list_uuids(dom) == [pu]
    assert dom.job_active()
    # What the guest writes now is not in the export.
    dom.guest_io("write -P 0x53 0 4M")
    check_export(env, tcp, then)
    assert nbd_dirty(tcp.uri("vda"), "vda-changes") == [(8 * MiB, 1 * MiB)]
    assert nbd_dirty(tcp.uri("vdb"), "vdb-changes") == []
    # One job at a time.
    create_fails(dom, "<domainbackup/>", CREATE_WAIT, VIR_ERR_OPERATION_INVALID)
    assert lib.virDomainBackupStartUnmanaged(dom, unmanaged_xml(Nbd(port=free_port())).encode(),
                                             0) is None
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert lib.virDomainBackupFinishJob(ex, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    check_ended(env, ex, tcp, STATE_COMPLETED)
    assert not dom.job_active()
    assert count_backups(dom) == 1

    # A unix socket, vdb only, under another name, no parent; aborted.
    unix = Nbd(socket=env.path("pull.sock"))
    ex = env.start_unmanaged(dom, unmanaged_xml(unix, {"vdb": "second"}))
    assert export_of(ex) == ({"transport": "unix", "socket": unix.socket},
                             {"vdb": ("second", None)})
    check_running(ex, dom)
    check_export(env, unix, {"second": then["vdb"]})
    assert lib.virDomainBackupAbortJob(ex, 0) == 0
    check_ended(env, ex, unix, STATE_CANCELLED)
    assert not dom.job_active()


# ----------------------------------------------------------- QEMU, inactive
def test_inactive_qemu_domain_storage_daemon(qenv):
    env = qenv
    dom = env.qemu_domain(size=32 * MiB)
    vda = dom.disks[0][1]
    parent = env.backup(dom, "<domainbackup/>")
    pu = backup_uuid(parent)
    dom.guest_io("write -P 0x62 2M 64k")
    dom.stop()
    then = env.snapshot(vda, "then.qcow2")

    unix = Nbd(socket=env.path("off.sock"))
    ex = env.start_unmanaged(dom, unmanaged_xml(unix, parent=pu))
    # The bitmap of the parent's checkpoint, in the image.
    cp = "libvirt-backup-" + pu
    assert export_of(ex) == ({"transport": "unix", "socket": unix.socket}, {"vda": ("vda", cp)})
    check_running(ex, dom)
    got = nbd_copy(unix.uri("vda"), env.path("got.raw"))
    assert_byte_exact(got, "raw", then, "qcow2")
    assert nbd_dirty(unix.uri("vda"), cp) == [(2 * MiB, K64)]
    assert lib.virDomainBackupFinishJob(ex, 0) == 0
    check_ended(env, ex, unix, STATE_COMPLETED)


# ------------------------------------------------------------ test driver
def test_test_driver_domain(env):
    a = env.disk("td-a.qcow2", 16 * MiB, "qcow2")
    b = env.disk("td-b.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", a, "qcow2"), ("vdb", b, "raw")])
    parent = env.backup(dom, backup_xml_for(env.targets("parent", ("vda", "vdb"))))
    write_disk(a, "qcow2", [(4 * MiB, K64, 0x44), (9 * MiB, 3 * K64, 0x45)])
    raw = {"vda": live_snapshot(a, "qcow2", env.path("a.raw")), "vdb": b}
    tcp = Nbd(port=free_port())

    # Every disk, over tcp; the domain runs (the test driver's images do
    # not change under it).
    assert virt.virDomainCreate(dom) == 0
    ex = env.start_unmanaged(dom, unmanaged_xml(tcp))
    assert export_of(ex)[1] == {"vda": ("vda", None), "vdb": ("vdb", None)}
    check_running(ex, dom)
    check_export(env, tcp, raw)
    assert lib.virDomainBackupFinishJob(ex, 0) == 0
    check_ended(env, ex, tcp, STATE_COMPLETED)
    assert virt.virDomainDestroy(dom) == 0

    # vda only, as 'first', with the changes since a parent without a
    # checkpoint (computed from its digest index).
    unix = Nbd(socket=env.path("td.sock"))
    ex = env.start_unmanaged(dom, unmanaged_xml(unix, {"vda": "first"}, parent=backup_uuid(parent)))
    assert export_of(ex) == ({"transport": "unix", "socket": unix.socket},
                             {"vda": ("first", "first-changes")})
    check_export(env, unix, {"first": raw["vda"]})
    assert nbd_dirty(unix.uri("first"), "first-changes") == [(4 * MiB, K64), (9 * MiB, 3 * K64)]
    assert lib.virDomainBackupAbortJob(ex, 0) == 0
    check_ended(env, ex, unix, STATE_CANCELLED)
    assert count_backups(dom) == 1


# -------------------------------------------------- restore from NBD exports
def test_restore_unmanaged_from_exports(qenv):
    env = qenv
    # A test-driver domain exported over a unix socket...
    src = env.disk("src.qcow2", 16 * MiB, "qcow2", writes=[(0, 3 * MiB, 0x71)])
    src_dom = env.domain(disks=[("vda", src, "qcow2")])
    unix = Nbd(socket=env.path("src.sock"))
    env.start_unmanaged(src_dom, unmanaged_xml(unix))
    # ... into another one's raw disk.
    dst = env.disk("dst.raw", 16 * MiB, writes=[(0, MiB, 0x72)])
    dst_dom = env.domain(disks=[("vda", dst, "raw")])
    from_unix = restore_xml_for(None, sources={"vda": (unix, "vda")})

    before = env.files()
    restore_fails(from_unix, 0, VIR_ERR_OPERATION_INVALID, "REWRITE_EXISTING_DISK", dom=dst_dom)
    restore_fails(restore_xml_for(None, sources={"vda": (unix, "nope")}), REWRITE,
                  VIR_ERR_OPERATION_FAILED, "nope", dom=dst_dom)
    assert env.files() == before
    restore(from_unix, REWRITE, dom=dst_dom)
    assert_byte_exact(dst, "raw", src, "qcow2")

    # A running QEMU domain exported over tcp, restored as a new QEMU
    # domain, which starts.
    live = env.qemu_domain(size=16 * MiB, writes=[(MiB, 2 * MiB, 0x73)])
    live.guest_io("write -P 0x74 8M 1M")
    then = env.live_snapshots(live, "then")["vda"]
    tcp = Nbd(port=free_port())
    ex = env.start_unmanaged(live, unmanaged_xml(tcp))
    live.guest_io("write -P 0x75 0 4M")
    name = env.expect_domain(live.name + "-nbd", env.qemu)
    restore(restore_xml_for(None, domain=name, sources={"vda": (tcp, "vda")}),
            RESTORE_NEW_DOMAIN, dom=live)
    assert lib.virDomainBackupFinishJob(ex, 0) == 0
    assert_new_domain_starts(env.qemu, name, env.path(f"{name}-vda.qcow2"), then)
