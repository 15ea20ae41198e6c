"""GetXMLDesc output (API.md "XML") and its round trip as CreateXML input."""

import re
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

from conftest import (MiB, VIR_DOMAIN_XML_SECURE, VIR_ERR_INVALID_ARG,
                      VIR_ERR_XML_ERROR, assert_same_image, backup_uuid,
                      backup_xml_for, count_backups, create, expect_error,
                      free, get_xml, last_error, lib, xml_tree)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_xml_fields(env):
    dom = env.domain()
    src = dom.disks[0][1]
    target = env.path("fields.qcow2")
    t0 = int(time.time())
    b = create(dom, backup_xml_for({"vda": (target, "qcow2")}, description="Any string"))
    t1 = int(time.time())
    try:
        t = xml_tree(b)
        assert t.tag == "domainbackup"
        assert UUID_RE.match(t.findtext("uuid"))
        ct = int(t.findtext("creationTime"))
        assert t0 - 1 <= ct <= t1 + 1
        assert t.findtext("description") == "Any string"
        assert t.findtext("state") == "completed"
        assert t.find("parent") is None  # a full backup
        d = t.find("domain")
        assert d.get("uuid") == dom.uuid
        assert d.get("name") == dom.name
        disks = t.find("disks").findall("disk")
        assert len(disks) == 1
        disk = disks[0]
        assert disk.get("name") == "vda"
        assert disk.get("type") == "file"
        assert disk.get("backupmode") == "full"
        assert disk.find("source").get("file") == src
        assert disk.find("target").get("file") == target
        assert disk.find("driver").get("type") == "qcow2"
    finally:
        free(b)


def test_xml_raw_target_driver(env):
    dom = env.domain(fmt="qcow2")
    target = env.path("raw-target.raw")
    b = create(dom, backup_xml_for({"vda": (target, "raw")}))
    try:
        disk = xml_tree(b).find("disks/disk")
        assert disk.find("driver").get("type") == "raw"
        assert disk.find("source").get("file") == dom.disks[0][1]
    finally:
        free(b)


def test_xml_no_description(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("nd.qcow2")}))
    try:
        t = xml_tree(b)
        assert t.find("description") is None or (t.findtext("description") or "") == ""
    finally:
        free(b)


def test_xml_description_escaping(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("esc.qcow2")},
                                   description="a &amp; b &lt;c&gt; \"q\" 'x' é"))
    try:
        t = xml_tree(b)
        assert t.findtext("description") == "a & b <c> \"q\" 'x' é"
    finally:
        free(b)


def test_xml_secure_flag(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("sec.qcow2")}))
    try:
        assert get_xml(b, VIR_DOMAIN_XML_SECURE) == get_xml(b, 0)
        assert lib.virDomainBackupGetXMLDesc(b, 1 << 1) is None
        expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x2)")
    finally:
        free(b)


def test_xml_stable_across_calls_and_handles(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("st.qcow2")}))
    try:
        x1 = get_xml(b)
        h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
        assert h
        assert get_xml(h) == x1
        assert get_xml(b) == x1
        free(h)
    finally:
        free(b)


def test_output_parses_back_as_input(env):
    """The output is valid CreateXML input: with a new uuid and target it
    makes a new backup with the same settings."""
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("rt1.qcow2")}, description="rt"))
    text = get_xml(b)
    free(b)

    # As-is it names a used uuid and an existing target: refused, but as a
    # valid document (not an XML error), and nothing new is created.
    assert lib.virDomainBackupCreateXML(dom, text.encode(), 0) is None
    code, msg = last_error()
    assert code not in (0, VIR_ERR_XML_ERROR), msg
    assert count_backups(dom) == 1

    t = ET.fromstring(text)
    new_uuid = str(uuidlib.uuid4())
    t.find("uuid").text = new_uuid
    new_target = env.path("rt2.qcow2")
    t.find("disks/disk/target").set("file", new_target)
    b2 = create(dom, ET.tostring(t, encoding="unicode"))
    try:
        t2 = xml_tree(b2)
        assert t2.findtext("uuid") == new_uuid
        assert t2.findtext("description") == "rt"
        assert t2.find("disks/disk/target").get("file") == new_target
        assert_same_image(dom.disks[0][1], "raw", new_target, "qcow2")
    finally:
        free(b2)
    assert count_backups(dom) == 2


def test_api_example_input_form(env):
    """The documented input form (backup='yes' type='file', <driver>, a
    backup='no' disk) is accepted."""
    a = env.disk("ex-a.raw", 8 * MiB)
    c = env.disk("ex-c.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", a, "raw"), ("vdc", c, "raw")])
    u = str(uuidlib.uuid4())
    target = env.path("vm1-vda.qcow2")
    xml = f"""<domainbackup>
      <uuid>{u}</uuid>
      <description>Any string</description>
      <disks>
        <disk name='vda' backup='yes' type='file'>
          <target file='{target}'/>
          <driver type='qcow2'/>
        </disk>
        <disk name='vdc' backup='no'/>
      </disks>
    </domainbackup>"""
    b = create(dom, xml)
    try:
        t = xml_tree(b)
        assert t.findtext("uuid") == u
        assert [d.get("name") for d in t.find("disks").findall("disk")] == ["vda"]
        assert_same_image(a, "raw", target, "qcow2")
    finally:
        free(b)


def test_xml_special_characters_in_paths(env):
    """Paths with XML-special characters survive the catalog and the output."""
    src = env.disk("src & 'q' <x>.raw", 8 * MiB)
    dom_xml_path = src.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;").replace(">", "&gt;")
    from conftest import domain_xml, virt
    name = "pytest-special-" + uuidlib.uuid4().hex[:8]
    ptr = virt.virDomainDefineXML(env.conn, domain_xml(name, [("vda", dom_xml_path, "raw")]).encode())
    assert ptr
    env._defined.append(ptr)
    target = env.path("t & 'q' <x>.qcow2")
    esc = target.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;").replace(">", "&gt;")
    b = create(ptr, f"<domainbackup><disks><disk name='vda'><target file='{esc}'/></disk></disks></domainbackup>")
    try:
        h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
        assert h
        t = xml_tree(h)
        free(h)
        assert t.find("disks/disk/source").get("file") == src
        assert t.find("disks/disk/target").get("file") == target
        assert_same_image(src, "raw", target, "qcow2")
    finally:
        free(b)
