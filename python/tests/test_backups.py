"""The package on test:///default through libvirt-python objects: full and
incremental backups (byte for byte), listing with every flag, XML,
parameters, the domain bridge, restore, delete, default targets, undefine."""

import gc
import os
import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest

import libvirt_backup as lb
from conftest import MiB, backing_chain, disk_of, run, same_image, write_disk

WAIT = lb.VIR_DOMAIN_BACKUP_CREATE_WAIT


def bxml(target=None, parent=None, description=None):
    parts = ["<domainbackup>"]
    if description is not None:
        parts.append(f"<description>{description}</description>")
    if parent is not None:
        parts.append(f"<parent><uuid>{parent.UUIDString()}</uuid></parent>")
    if target is not None:
        parts.append(f"<disks><disk name='vda' type='file'><target file='{target}'/></disk></disks>")
    parts.append("</domainbackup>")
    return "".join(parts)


def target_of(b):
    return ET.fromstring(b.getXMLDesc()).find("disks/disk/target").get("file")


def uuids(backups):
    return [b.UUIDString() for b in backups]


class Chain:
    """full -> inc1 -> inc2, and full -> branch, each with a copy of the
    disk as it was when it was taken."""

    def __init__(self, env):
        self.env = env
        self.dom = env.domain()
        self.src = disk_of(self.dom)
        self.copies = {}
        self.full = self.take("full", None, [])
        self.inc1 = self.take("inc1", self.full, [(2 * MiB, 1 * MiB, 0x11)])
        self.inc2 = self.take("inc2", self.inc1, [(5 * MiB, 64 << 10, 0x22)])
        self.branch = self.take("branch", self.full, [(9 * MiB, 256 << 10, 0x33)])

    def take(self, tag, parent, writes):
        write_disk(self.src, "raw", writes)
        b = lb.createXML(self.dom, bxml(self.env.path(tag + ".qcow2"), parent), WAIT)
        self.copies[b.UUIDString()] = self.env.copy(self.src, tag + "-at-backup.raw")
        return b


def test_full_and_incremental_hold_the_disk_byte_for_byte(env):
    c = Chain(env)
    for b in (c.full, c.inc1, c.inc2, c.branch):
        assert same_image(target_of(b), "qcow2", c.copies[b.UUIDString()], "raw")
    assert backing_chain(target_of(c.inc2)) == [target_of(c.inc2), target_of(c.inc1), target_of(c.full)]
    p = c.inc2.parameters()
    assert p["incremental"] is True
    assert p["bytes.written"] == 64 << 10  # only the chunk that changed
    assert c.full.parameters()["incremental"] is False


def test_list_with_every_flag(env):
    c = Chain(env)
    full, inc1, inc2, br = (x.UUIDString() for x in (c.full, c.inc1, c.inc2, c.branch))
    assert uuids(lb.listBackups(c.dom)) == [full, inc1, inc2, br]
    assert uuids(lb.listBackups(c.dom, lb.VIR_DOMAIN_BACKUP_LIST_FULL)) == [full]
    assert uuids(lb.listBackups(c.dom, lb.VIR_DOMAIN_BACKUP_LIST_INCREMENTAL)) == [inc1, inc2, br]
    assert uuids(lb.listBackups(c.dom, lb.VIR_DOMAIN_BACKUP_LIST_LATEST)) == [br]
    assert uuids(lb.listBackups(c.dom, lb.VIR_DOMAIN_BACKUP_LIST_LEAVES)) == [inc2, br]
    assert uuids(lb.listBackups(c.dom, lb.VIR_DOMAIN_BACKUP_LIST_LEAVES
                                | lb.VIR_DOMAIN_BACKUP_LIST_INCREMENTAL)) == [inc2, br]
    assert uuids(c.full.listChildren()) == [inc1, br]
    assert uuids(c.full.listChildren(lb.VIR_DOMAIN_BACKUP_LIST_DESCENDANTS)) == [inc1, inc2, br]
    assert uuids(c.full.listChildren(lb.VIR_DOMAIN_BACKUP_LIST_DESCENDANTS
                                     | lb.VIR_DOMAIN_BACKUP_LIST_LEAVES)) == [inc2, br]
    assert uuids(c.inc2.listChildren()) == []
    with pytest.raises(libvirt.libvirtError) as e:
        lb.listBackups(c.dom, lb.VIR_DOMAIN_BACKUP_LIST_FULL | lb.VIR_DOMAIN_BACKUP_LIST_INCREMENTAL)
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    # Children keep the caller's connection for domain().
    assert c.full.listChildren()[0].domain().connect() is env.conn


def test_xml_uuid_and_lookup(env):
    dom = env.domain()
    b = lb.createXML(dom, bxml(env.path("x.qcow2"), description="nightly &amp; weekly"), WAIT)
    t = ET.fromstring(b.getXMLDesc())
    assert t.findtext("uuid") == b.UUIDString()
    assert t.findtext("state") == "completed"
    assert t.findtext("description") == "nightly & weekly"
    assert t.find("domain").get("name") == dom.name()
    assert t.find("domain").get("uuid") == dom.UUIDString()
    assert b.getXMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) == b.getXMLDesc()
    same = lb.lookupByUUID(b.UUIDString())
    assert same.getXMLDesc() == b.getXMLDesc()
    with pytest.raises(libvirt.libvirtError) as e:
        lb.lookupByUUID("00000000-0000-0000-0000-000000000001")
    assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP


def test_parameters_are_typed(env):
    dom = env.domain()
    b = lb.createXML(dom, bxml(env.path("p.qcow2")), WAIT)
    p = b.parameters()
    assert p["state"] == lb.VIR_DOMAIN_BACKUP_STATE_COMPLETED
    assert type(p["incremental"]) is bool and p["incremental"] is False
    assert p["disks"] == 1
    assert p["bytes.total"] == 16 * MiB == p["bytes.processed"]
    assert 0 < p["bytes.written"] <= 16 * MiB
    for k in ("state", "disks", "bytes.total", "bytes.processed", "bytes.written", "time.elapsed"):
        assert type(p[k]) is int, k
    assert "error" not in p
    # Per disk: the name a str, the figures ints.
    assert p["disk.0.name"] == "vda"
    assert p["disk.0.bytes.total"] == p["disk.0.bytes.processed"] == 16 * MiB
    assert b.diskProgress(p) == b.diskProgress() == [
        {"name": "vda", "bytes.total": 16 * MiB, "bytes.processed": 16 * MiB}]


def test_parameters_during_a_job_and_finish(env, big_disk):
    dom = env.domain(disk=big_disk)
    b = lb.createXML(dom, bxml(env.path("big.qcow2")))  # no WAIT: returns with the job running
    assert b.finishJob(lb.VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1
    p = b.parameters()
    assert b.finishJob(lb.VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1, "job ended too soon to prove anything"
    assert p["state"] == lb.VIR_DOMAIN_BACKUP_STATE_RUNNING
    assert p["bytes.total"] == 2 << 30
    assert 0 <= p["bytes.processed"] < p["bytes.total"]
    (d,) = b.diskProgress(p)
    assert d["name"] == "vda" and d["bytes.total"] == 2 << 30
    assert d["bytes.processed"] == p["bytes.processed"]
    assert ET.fromstring(b.getXMLDesc()).findtext("state") == "running"
    assert uuids(lb.listBackups(dom)) == [b.UUIDString()]
    assert b.finishJob() == 0
    p = b.parameters()
    assert p["state"] == lb.VIR_DOMAIN_BACKUP_STATE_COMPLETED
    assert p["bytes.processed"] == p["bytes.total"]
    assert same_image(target_of(b), "qcow2", big_disk, "raw")


def test_abort_a_running_job(env, big_disk):
    dom = env.domain(disk=big_disk)
    target = env.path("ab.qcow2")
    b = lb.createXML(dom, bxml(target))
    assert b.abortJob() == 0
    assert b.parameters()["state"] == lb.VIR_DOMAIN_BACKUP_STATE_CANCELLED
    assert not os.path.exists(target)
    assert lb.listBackups(dom) == []
    with pytest.raises(libvirt.libvirtError) as e:
        b.finishJob()
    assert e.value.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED
    with pytest.raises(libvirt.libvirtError) as e:
        b.abortJob()
    assert e.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID


def test_domain_is_a_libvirt_domain_on_the_callers_connection(env):
    dom = env.domain()
    b = lb.createXML(dom, bxml(env.path("d.qcow2")), WAIT)
    d = b.domain()
    assert isinstance(d, libvirt.virDomain)
    assert d.connect() is env.conn
    assert d.UUIDString() == dom.UUIDString() and d.name() == dom.name()
    # Found without a caller's connection: one the package opened, to the
    # same URI; the domain object holds its own reference.
    looked = lb.lookupByUUID(b.UUIDString())
    d2 = looked.domain()
    assert d2.connect() is not env.conn
    assert d2.connect().getURI() == "test:///default"
    del looked, b
    gc.collect()
    assert d2.UUIDString() == dom.UUIDString() and d2.info()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    # A domain object of another connection with the same URI works as input.
    assert uuids(lb.listBackups(d2)) == uuids(lb.listBackups(dom))


def test_restore_as_new_domain_visible_on_callers_connection(env):
    dom = env.domain()
    src = disk_of(dom)
    b = lb.createXML(dom, bxml(env.path("r.qcow2")), WAIT)
    at_backup = env.copy(src, "at-backup.raw")
    write_disk(src, "raw", [(0, 4 * MiB, 0xEE)])
    name = env.expect_domain(dom.name() + "-new")
    assert lb.restore(f"<domainbackup><uuid>{b.UUIDString()}</uuid><domain name='{name}'/>"
                      "</domainbackup>", lb.VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) == 0
    new = env.conn.lookupByName(name)
    assert new.UUIDString() != dom.UUIDString()
    assert same_image(disk_of(new), "qcow2", at_backup, "raw")

    # Into its own (shut off) domain: refused without REWRITE, then done.
    with pytest.raises(libvirt.libvirtError) as e:
        lb.restore(f"<domainbackup><uuid>{b.UUIDString()}</uuid></domainbackup>")
    assert e.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    assert not same_image(src, "raw", at_backup, "raw")
    lb.restore(f"<domainbackup><uuid>{b.UUIDString()}</uuid></domainbackup>",
               lb.VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK)
    assert same_image(src, "raw", at_backup, "raw")


def test_restore_unmanaged_from_a_file(env):
    dom = env.domain()
    src = disk_of(dom)
    b = lb.createXML(dom, bxml(env.path("u.qcow2")), WAIT)
    at_backup = env.copy(src, "at-backup.raw")
    write_disk(src, "raw", [(1 * MiB, 1 * MiB, 0x44)])
    lb.restoreUnmanaged(dom, f"<domainbackup><disks><disk name='vda'><source file='{target_of(b)}'>"
                             "<driver type='qcow2'/></source>"
                             "</disk></disks></domainbackup>",
                        lb.VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK)
    assert same_image(src, "raw", at_backup, "raw")


def test_delete_merges_then_handles_are_gone(env):
    c = Chain(env)
    inc2_u, inc1_t = c.inc2.UUIDString(), target_of(c.inc1)
    # Deleting inc1 merges it into inc2, which stays restorable.
    assert c.inc1.delete() == 0
    assert not os.path.exists(inc1_t)
    assert uuids(c.full.listChildren()) == [inc2_u, c.branch.UUIDString()]
    assert same_image(target_of(c.inc2), "qcow2", c.copies[inc2_u], "raw")
    with pytest.raises(libvirt.libvirtError) as e:
        c.inc1.getXMLDesc()
    assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP
    # The whole tree.
    full_t = target_of(c.full)
    assert c.full.delete(lb.VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN) == 0
    assert lb.listBackups(c.dom) == []
    assert not os.path.exists(full_t)
    with pytest.raises(libvirt.libvirtError) as e:
        lb.lookupByUUID(inc2_u)
    assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP


def test_default_target(env):
    dom = env.domain()
    folder = env.path("defaults")
    os.mkdir(folder)
    assert lb.setDefaultTarget(dom, f"<target type='dir'><path>{folder}</path></target>",
                               libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 0
    b = lb.createXML(dom, "<domainbackup/>", WAIT)
    assert target_of(b).startswith(folder + os.sep + b.UUIDString())
    assert same_image(target_of(b), "qcow2", disk_of(dom), "raw")


def test_undefine(env):
    dom = env.domain()
    lb.createXML(dom, "<domainbackup/>", WAIT)
    with pytest.raises(libvirt.libvirtError) as e:
        lb.undefine(dom)
    assert e.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    env.conn.lookupByName(dom.name())  # still there
    assert lb.undefine(dom, lb.VIR_DOMAIN_UNDEFINE_BACKUP) == 0
    with pytest.raises(libvirt.libvirtError):
        env.conn.lookupByName(dom.name())


def test_verify(env):
    dom = env.domain()
    b = lb.createXML(dom, bxml(env.path("v.qcow2")), WAIT)
    from libvirt_backup import _capi
    if not _capi.HAVE_VERIFY:
        with pytest.raises(libvirt.libvirtError) as e:
            b.verify()
        assert e.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert "not supported by this library build" in e.value.get_error_message()
        return
    assert b.verify() == 0
    # Change a stored byte behind the library's back.
    write_disk(target_of(b), "qcow2", [(0, 512, 0x01)])
    with pytest.raises(libvirt.libvirtError) as e:
        b.verify()
    assert e.value.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
    assert "vda" in e.value.get_error_message()


def test_unmanaged_export_and_restore_from_it(env):
    """startUnmanaged: an NBD export the caller reads (nbdcopy), ended by
    finishJob(); the copy restores the disk through restoreUnmanaged."""
    dom = env.domain()
    src = disk_of(dom)
    sock = env.path("nbd.sock")
    ex = lb.startUnmanaged(dom, f"<domainbackup><server transport='unix' socket='{sock}'/>"
                                "<disks><disk name='vda' exportname='disk0'/></disks></domainbackup>")
    t = ET.fromstring(ex.getXMLDesc())
    assert t.find("server").get("socket") == sock
    assert t.find("disks/disk").get("exportname") == "disk0"
    assert ex.finishJob(lb.VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1
    assert ex.parameters()["state"] == lb.VIR_DOMAIN_BACKUP_STATE_RUNNING
    assert lb.listBackups(dom) == []  # never listed
    copy = env.path("copy.raw")
    run(["nbdcopy", f"nbd+unix:///disk0?socket={sock}", copy])
    assert ex.finishJob() == 0  # ends the export (no waiting for a job to end by itself)
    assert ex.parameters()["state"] == lb.VIR_DOMAIN_BACKUP_STATE_COMPLETED
    assert subprocess.run(["nbdinfo", "--size", f"nbd+unix:///disk0?socket={sock}"],
                          capture_output=True).returncode != 0
    assert same_image(copy, "raw", src, "raw")
    at_export = env.copy(src, "at-export.raw")
    write_disk(src, "raw", [(0, 2 * MiB, 0x99)])
    lb.restoreUnmanaged(dom, f"<domainbackup><disks><disk name='vda'><source file='{copy}'>"
                             "<driver type='raw'/></source>"
                             "</disk></disks></domainbackup>",
                        lb.VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK)
    assert same_image(src, "raw", at_export, "raw")


def test_list_all_backups_of_the_catalog_and_of_an_undefined_domain(env):
    """listAllBackups: every backup of the catalog, oldest first across
    domains, the flags as for listBackups; a domain undefined with
    libvirt-python's own undefine (which knows nothing of backups) keeps its
    backups listed: domain() raises VIR_ERR_NO_DOMAIN, the XML names the
    domain and holds its saved definition, and it restores as a new domain."""
    gone, kept = env.domain(), env.domain()
    src = disk_of(gone)
    full = lb.createXML(gone, "<domainbackup/>", WAIT)
    write_disk(src, "raw", [(3 * MiB, 64 << 10, 0x5C)])
    inc = lb.createXML(gone, bxml(parent=full), WAIT)
    at_inc = env.copy(src, "gone-at-inc.raw")
    other = lb.createXML(kept, "<domainbackup/>", WAIT)
    name, uuid = gone.name(), gone.UUIDString()
    gone.undefine()

    everything = lb.listAllBackups()
    assert uuids(everything) == uuids([full, inc, other])
    assert uuids(lb.listAllBackups(lb.VIR_DOMAIN_BACKUP_LIST_LATEST)) == [other.UUIDString()]
    assert uuids(lb.listAllBackups(lb.VIR_DOMAIN_BACKUP_LIST_INCREMENTAL)) == [inc.UUIDString()]
    assert everything[2].domain().UUIDString() == kept.UUIDString()
    for b in everything[:2]:
        with pytest.raises(libvirt.libvirtError) as e:
            b.domain()
        assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        root = ET.fromstring(b.getXMLDesc())
        assert root.find("domain").attrib == {"uuid": uuid, "name": name}
        assert root.find("definition/domain").findtext("name") == name
    assert uuids(everything[0].listChildren()) == [inc.UUIDString()]

    new_name = env.expect_domain(name + "-back")
    lb.restore(f"<domainbackup><uuid>{inc.UUIDString()}</uuid><domain name='{new_name}'/>"
               "</domainbackup>", lb.VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN)
    assert same_image(disk_of(env.conn.lookupByName(new_name)), "qcow2", at_inc, "raw")
