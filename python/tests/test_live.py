"""The package on qemu:///system with a running TCG domain (type='qemu', no
guest OS): full and incremental backups done by libvirt in push mode while
the domain runs, with a guest write in between, checked byte for byte;
list, parameters, the domain bridge, restore as a new domain visible on the
caller's connection (and it starts), delete (checkpoints go too)."""

import os
import subprocess

import libvirt
import pytest

import libvirt_backup as lb
from conftest import MiB, backing_chain, disk_of, run, same_image

WAIT = lb.VIR_DOMAIN_BACKUP_CREATE_WAIT


@pytest.fixture
def qenv(env, qemu_conn):
    env._cleanup_tmp = True  # images are big enough not to keep them around
    return env


def guest_write(dom, cmd):
    """A write the guest would do (qemu-io through QEMU's monitor), flushed."""
    for c in (cmd, "flush"):
        hmp = f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "{c}"'
        r = subprocess.run(["virsh", "-c", "qemu:///system", "qemu-monitor-command", dom.name(),
                            "--hmp", hmp], capture_output=True, text=True)
        assert r.returncode == 0 and "rror" not in r.stdout, r.stdout + r.stderr


def snapshot(path, dst):
    """The running domain's disk as it is now, as a raw file."""
    run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", path, dst])
    return dst


def target_xml(path, parent=None):
    p = f"<parent><uuid>{parent.UUIDString()}</uuid></parent>" if parent else ""
    return (f"<domainbackup>{p}<disks><disk name='vda' type='file'><target file='{path}'/>"
            "</disk></disks></domainbackup>")


def test_running_qemu_domain(qenv, qemu_conn):
    env = qenv
    disk = env.disk("vda.qcow2", 64 * MiB, "qcow2")
    dom = env.domain(disk=disk, fmt="qcow2", conn=qemu_conn, kind="qemu", start=True)
    assert dom.isActive()

    full_t = env.path("full.qcow2")
    full = lb.createXML(dom, target_xml(full_t), WAIT)
    at_full = snapshot(disk, env.path("at-full.raw"))
    assert same_image(full_t, "qcow2", at_full, "raw")
    assert full.parameters()["incremental"] is False
    assert [c.getName() for c in dom.listAllCheckpoints()] == ["libvirt-backup-" + full.UUIDString()]

    guest_write(dom, "write -P 0xcd 32M 4M")
    at_inc = snapshot(disk, env.path("at-inc.raw"))
    assert not same_image(at_inc, "raw", at_full, "raw")
    inc_t = env.path("inc.qcow2")
    inc = lb.createXML(dom, target_xml(inc_t, full))  # no WAIT: the job runs
    p = inc.parameters()
    assert p["state"] in (lb.VIR_DOMAIN_BACKUP_STATE_RUNNING, lb.VIR_DOMAIN_BACKUP_STATE_COMPLETED)
    assert inc.finishJob() == 0
    p = inc.parameters()
    assert p["state"] == lb.VIR_DOMAIN_BACKUP_STATE_COMPLETED
    assert p["incremental"] is True
    # Read through libvirt's pull-mode export: the whole disk to go through,
    # only the guest's write (found by the checkpoint's bitmap) stored.
    assert p["bytes.total"] == 64 * MiB
    assert p["bytes.written"] == 4 * MiB
    assert backing_chain(inc_t) == [inc_t, full_t]
    assert same_image(inc_t, "qcow2", at_inc, "raw")

    assert [b.UUIDString() for b in lb.listBackups(dom)] == [full.UUIDString(), inc.UUIDString()]
    assert [b.UUIDString() for b in lb.listBackups(dom, lb.VIR_DOMAIN_BACKUP_LIST_LATEST)] == \
        [inc.UUIDString()]
    d = inc.domain()
    assert d.connect() is qemu_conn and d.UUIDString() == dom.UUIDString()

    # Restore the incremental as a new domain: on the caller's connection,
    # disk as it was, and it starts.
    name = env.expect_domain(dom.name() + "-r", qemu_conn)
    lb.restore(f"<domainbackup><uuid>{inc.UUIDString()}</uuid><domain name='{name}'/></domainbackup>",
               lb.VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN)
    new = qemu_conn.lookupByName(name)
    assert os.path.dirname(disk_of(new)) == env.tmp
    assert same_image(disk_of(new), "qcow2", at_inc, "raw")
    new.create()
    assert new.isActive()
    new.destroy()

    # Errors from a live domain are libvirt errors too: one job at a time.
    big = lb.createXML(dom, target_xml(env.path("again.qcow2")))
    try:
        with pytest.raises(libvirt.libvirtError) as e:
            lb.createXML(dom, target_xml(env.path("second.qcow2")))
        assert e.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    finally:
        big.finishJob()
    big.delete()

    full.delete(lb.VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN)
    assert lb.listBackups(dom) == []
    assert dom.listAllCheckpoints() == []
    assert not os.path.exists(full_t) and not os.path.exists(inc_t)
    assert dom.isActive()
