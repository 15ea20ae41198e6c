"""Backup properties (uuid, parent, kind, time, state, disks, sizes,
description, domain), the accessors behind them, and the calls fixed with
them: lookupByUUID with a connection or raw bytes, createXML with an empty
document, startUnmanaged of a stored backup (no domain)."""

import os
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

import libvirt_backup as lb
from conftest import MiB, disk_of, run, same_image, write_disk

WAIT = lb.VIR_DOMAIN_BACKUP_CREATE_WAIT


def bxml(target, parent=None, description=None):
    return ("<domainbackup>"
            + (f"<description>{description}</description>" if description else "")
            + (f"<parent><uuid>{parent.uuid}</uuid></parent>" if parent else "")
            + f"<disks><disk name='vda' type='file'><target file='{target}'/></disk></disks>"
            + "</domainbackup>")


def code_of(call):
    with pytest.raises(libvirt.libvirtError) as e:
        call()
    return e.value.get_error_code()


def test_properties_of_a_full_and_an_incremental(env):
    dom = env.domain()
    t0 = int(time.time())
    full = lb.createXML(dom, bxml(env.path("full.qcow2"), description="nightly &amp; all"), WAIT)
    write_disk(disk_of(dom), "raw", [(3 * MiB, 1 * MiB, 0x42)])
    inc = lb.createXML(dom, bxml(env.path("inc.qcow2"), parent=full), WAIT)
    t1 = int(time.time())

    for b in (full, inc):
        x = ET.fromstring(b.getXMLDesc())
        assert b.uuid == b.UUIDString() == x.findtext("uuid")
        assert b.UUID() == uuidlib.UUID(b.uuid).bytes and len(b.UUID()) == 16
        assert t0 <= b.time <= t1 and b.time == int(x.findtext("creationTime"))
        assert b.state == "completed"
        assert b.domainName == dom.name() and b.domainUUID == dom.UUIDString()
    assert full.description == "nightly & all" and inc.description is None
    assert (full.kind, inc.kind) == ("full", "incremental")

    # parent: a new Backup on the full one; None for the full one.
    p = inc.parent
    assert isinstance(p, lb.Backup) and p is not full and p.uuid == full.uuid
    assert p.domain().connect() is env.conn  # keeps the caller's connection
    assert full.parent is None
    assert code_of(full.getParent) == libvirt.VIR_ERR_NO_DOMAIN_BACKUP
    assert code_of(lambda: inc.getParent(1)) == libvirt.VIR_ERR_INVALID_ARG

    # disks: what the XML says, and the target files' sizes on disk.
    (fd,), (idisk,) = full.disks, inc.disks
    assert fd["name"] == "vda" and fd["type"] == "file" and fd["format"] == "qcow2"
    assert (fd["mode"], idisk["mode"]) == ("full", "incremental")
    assert fd["source"] == disk_of(dom)
    assert (fd["target"], idisk["target"]) == (env.path("full.qcow2"), env.path("inc.qcow2"))
    for b, d in ((full, fd), (inc, idisk)):
        assert d["storedSize"] == os.stat(d["target"]).st_blocks * 512 > 0
        assert b.storedSize == d["storedSize"]
    assert inc.storedSize < full.storedSize  # its own delta only


def test_stored_size_of_an_unreadable_target_is_none(env):
    dom = env.domain()
    b = lb.createXML(dom, bxml(env.path("t.qcow2")), WAIT)
    os.rename(env.path("t.qcow2"), env.path("away.qcow2"))
    try:
        assert b.disks[0]["storedSize"] is None and b.storedSize is None
        assert b.disks[0]["target"] == env.path("t.qcow2")
    finally:
        os.rename(env.path("away.qcow2"), env.path("t.qcow2"))
    assert b.storedSize > 0


def test_parent_follows_a_merge_and_a_deleted_backup_raises(env):
    dom = env.domain()
    full = lb.createXML(dom, bxml(env.path("f.qcow2")), WAIT)
    mid = lb.createXML(dom, bxml(env.path("m.qcow2"), parent=full), WAIT)
    leaf = lb.createXML(dom, bxml(env.path("l.qcow2"), parent=mid), WAIT)
    assert leaf.parent.uuid == mid.uuid and leaf.parent.parent.uuid == full.uuid
    handle = leaf.parent
    mid.delete()  # leaf is merged onto full
    assert leaf.parent.uuid == full.uuid and leaf.kind == "incremental"
    for get in (lambda: handle.parent, lambda: handle.state, lambda: handle.getParent(),
                lambda: mid.kind, lambda: mid.disks):
        assert code_of(get) == libvirt.VIR_ERR_NO_DOMAIN_BACKUP
    full.delete()  # leaf becomes a full copy
    assert leaf.parent is None and leaf.kind == "full"


def test_state_of_a_running_then_cancelled_backup(env, big_disk):
    dom = env.domain(disk=big_disk)
    b = lb.createXML(dom, bxml(env.path("big.qcow2")))
    assert b.state == "running"
    assert b.time is not None and b.kind == "full"
    b.abortJob()
    assert b.state == "cancelled"


def test_lookup_by_uuid_with_or_without_a_connection(env):
    dom = env.domain()
    b = lb.createXML(dom, "<domainbackup/>", WAIT)
    u = b.uuid
    for args in ((u,), (env.conn, u), (None, u), (b.UUID(),), (env.conn, b.UUID()),
                 (bytearray(b.UUID()),), (uuidlib.UUID(u),), (u.upper(),), (u, 0),
                 (env.conn, u, 0)):
        assert lb.lookupByUUID(*args).uuid == u, args
    assert lb.lookupByUUID(env.conn, u, flags=0).uuid == u
    # The connection given is the one domain() answers on.
    assert lb.lookupByUUID(env.conn, u).domain().connect() is env.conn
    assert code_of(lambda: lb.lookupByUUID(env.conn, u, 1)) == libvirt.VIR_ERR_INVALID_ARG
    assert code_of(lambda: lb.lookupByUUID(env.conn, bytes(16))) == libvirt.VIR_ERR_NO_DOMAIN_BACKUP
    with pytest.raises(TypeError):
        lb.lookupByUUID(env.conn)
    with pytest.raises(TypeError):
        lb.lookupByUUID(b.UUID()[:15])
    with pytest.raises(TypeError):
        lb.lookupByUUID(env.conn, u, 0, 0)


@pytest.mark.parametrize("doc", ["", None, "absent"])
def test_create_xml_with_an_empty_document_backs_up_every_disk(env, doc):
    dom = env.domain()
    b = lb.createXML(dom, flags=WAIT) if doc == "absent" else lb.createXML(dom, doc, WAIT)
    assert b.state == "completed"
    (d,) = b.disks
    assert d["name"] == "vda" and d["mode"] == "full"
    assert same_image(d["target"], d["format"], disk_of(dom), "raw")


def test_start_unmanaged_without_a_domain_exports_a_stored_backup(env):
    dom = env.domain()
    src = disk_of(dom)
    at_backup = env.copy(src, "at-backup.raw")
    b = lb.createXML(dom, "<domainbackup/>", WAIT)
    write_disk(src, "raw", [(0, 1 * MiB, 0x99)])  # later changes are not served
    sock = env.path("stored.sock")
    ex = lb.startUnmanaged(None, f"<domainbackup><uuid>{b.uuid}</uuid>"
                                 f"<server transport='unix' socket='{sock}'/></domainbackup>")
    try:
        assert ex.state == "running" and ex.time is None
        assert ex.disks[0]["exportname"] == "vda" and ex.disks[0]["storedSize"] is None
        assert ex.parent is None and ex.uuid != b.uuid
        assert code_of(ex.domain) == libvirt.VIR_ERR_NO_DOMAIN
        copy = env.path("copy.raw")
        run(["nbdcopy", f"nbd+unix:///vda?socket={sock}", copy])
        assert same_image(copy, "raw", at_backup, "raw")
    finally:
        assert ex.finishJob() == 0
    assert ex.state == "completed"
    # Without a <uuid>, a missing domain is the library's refusal, not ours.
    assert code_of(lambda: lb.startUnmanaged(
        None, f"<domainbackup><server transport='unix' socket='{sock}'/></domainbackup>")
    ) == libvirt.VIR_ERR_INVALID_ARG


def test_job_history(env):
    """getJobHistory: the catalog's jobs as a document, a domain's or all,
    failed ones only with the flag."""
    dom = env.domain()
    b = lb.createXML(dom, "", WAIT)
    with pytest.raises(lb.libvirtBackupError):
        lb.createXML(dom, "<domainbackup><disks><disk name='vdz'/></disks></domainbackup>")
    jobs = ET.fromstring(lb.getJobHistory(dom)).findall("job")
    assert [(j.get("kind"), j.get("state")) for j in jobs][-2:] == [
        ("create", "completed"), ("create", "failed")]
    assert jobs[-2].find("backup").get("uuid") == b.UUIDString()
    failed = ET.fromstring(lb.getJobHistory(None, lb.VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED))
    assert [j.get("state") for j in failed.findall("job")][-1] == "failed"
    with pytest.raises(lb.libvirtBackupError):
        lb.getJobHistory(dom, 1 << 7)
