"""virDomainBackupList (of a domain, and of the whole catalog with a NULL
domain), ListChildren, LookupByUUID, GetDomain, Ref/Free."""

import ctypes
import uuid as uuidlib

from conftest import (BackupArray, VIR_ERR_NO_DOMAIN, LIST_FULL, LIST_INCREMENTAL, LIST_LATEST,
                      LIST_LEAVES, LIST_DESCENDANTS, RESTORE_NEW_DOMAIN, VIR_DOMAIN_XML_SECURE,
                      VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN_BACKUP, assert_byte_exact,
                      assert_same_image, backup_uuid, backup_xml_for, children_uuids,
                      count_backups, create, domain_disks, domain_uuid, expect_error, free,
                      get_xml, lib, libc, list_handles, list_uuids, lookup_domain, restore,
                      restore_xml_for, run_py, target_of, virt, write_disk, xml_tree,
                      MiB)
from ctypes import byref, c_void_p


def make_backups(env, dom, n):
    uuids = []
    for i in range(n):
        b = create(dom, backup_xml_for({"vda": env.path(f"b{i}.qcow2")}))
        uuids.append(backup_uuid(b))
        free(b)
    return uuids


def test_list_empty(env):
    dom = env.domain()
    assert lib.virDomainBackupList(dom, None, 0) == 0
    arr = BackupArray()
    assert lib.virDomainBackupList(dom, byref(arr), 0) == 0
    assert arr, "an empty list still gives a 1-entry array"
    assert arr[0] is None
    libc.free(ctypes.cast(arr, c_void_p))


def test_list_count_and_free(env):
    dom = env.domain()
    uuids = make_backups(env, dom, 3)
    assert count_backups(dom) == 3
    assert sorted(list_uuids(dom)) == sorted(uuids)
    # Element-then-array freeing, done explicitly.
    arr = BackupArray()
    n = lib.virDomainBackupList(dom, byref(arr), 0)
    assert n == 3
    assert arr[3] is None
    for i in range(n):
        assert lib.virDomainBackupFree(arr[i]) == 0
    libc.free(ctypes.cast(arr, c_void_p))


def test_list_oldest_first(env):
    """The header documents virDomainBackupList as "oldest first". Backups
    taken within the same second, with UUIDs in descending order, must still
    come back in creation order."""
    dom = env.domain()
    uuids = [f"{c * 8}-{c * 4}-4{c * 3}-8{c * 3}-{c * 12}" for c in "fedcb"]
    for i, u in enumerate(uuids):
        free(create(dom, backup_xml_for({"vda": env.path(f"o{i}.qcow2")}, uuid=u)))
    assert list_uuids(dom, LIST_LATEST) == [uuids[-1]]
    assert list_uuids(dom) == uuids


def test_list_only_own_domain(env):
    d1, d2 = env.domain(), env.domain()
    u1 = make_backups(env, d1, 2)
    b = create(d2, backup_xml_for({"vda": env.path("other.qcow2")}))
    u2 = backup_uuid(b)
    free(b)
    assert sorted(list_uuids(d1)) == sorted(u1)
    assert list_uuids(d2) == [u2]


def test_list_filters(env):
    dom = env.domain()
    uuids = make_backups(env, dom, 3)
    assert list_uuids(dom, LIST_LATEST) == [uuids[-1]]
    assert sorted(list_uuids(dom, LIST_FULL)) == sorted(uuids)
    assert list_uuids(dom, LIST_INCREMENTAL) == []
    assert sorted(list_uuids(dom, LIST_LEAVES)) == sorted(uuids)
    assert list_uuids(dom, LIST_FULL | LIST_LATEST) == [uuids[-1]]
    assert count_backups(dom, LIST_LATEST) == 1


def test_list_children_of_full_backup(env):
    dom = env.domain()
    make_backups(env, dom, 1)
    (h,) = list_handles(dom)
    try:
        assert lib.virDomainBackupListChildren(h, None, 0) == 0
        assert lib.virDomainBackupListChildren(h, None, LIST_DESCENDANTS) == 0
        arr = BackupArray()
        assert lib.virDomainBackupListChildren(h, byref(arr), 0) == 0
        assert arr and arr[0] is None
        libc.free(ctypes.cast(arr, c_void_p))
    finally:
        free(h)


def test_list_rejects_descendants_flag(env):
    dom = env.domain()
    assert lib.virDomainBackupList(dom, None, LIST_DESCENDANTS) == -1
    expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x10)")


def test_listed_handles_work(env):
    dom = env.domain()
    (u,) = make_backups(env, dom, 1)
    (h,) = list_handles(dom)
    try:
        assert backup_uuid(h) == u
        assert xml_tree(h).findtext("state") == "completed"
        assert lib.virDomainBackupGetDomain(h) is not None
    finally:
        free(h)


def test_lookup_by_uuid(env):
    dom = env.domain()
    target = env.path("lk.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    expected_xml = get_xml(b)
    free(b)
    h = lib.virDomainBackupLookupByUUID(u.encode(), 0)
    assert h, lib.virDomainBackupGetLastErrorMessage()
    try:
        assert get_xml(h) == expected_xml
        assert target_of(h) == target
        # Upper-case form of the same UUID.
        h2 = lib.virDomainBackupLookupByUUID(u.upper().encode(), 0)
        assert h2, lib.virDomainBackupGetLastErrorMessage()
        assert backup_uuid(h2) == u
        free(h2)
    finally:
        free(h)


def test_lookup_unknown_uuid(env):
    dom = env.domain()
    make_backups(env, dom, 1)
    u = str(uuidlib.uuid4())
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP, u)


def test_lookup_in_empty_catalog(env):
    assert lib.virDomainBackupLookupByUUID(str(uuidlib.uuid4()).encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)


def test_lookup_malformed_uuid(env):
    assert lib.virDomainBackupLookupByUUID(b"not-a-uuid", 0) is None
    expect_error(VIR_ERR_INVALID_ARG)


def test_get_domain(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("gd.qcow2")}))
    try:
        d = lib.virDomainBackupGetDomain(b)
        assert d
        assert domain_uuid(d) == dom.uuid
        # No reference added: calling it again gives the same pointer and
        # nothing needs freeing.
        assert lib.virDomainBackupGetDomain(b) == d
    finally:
        free(b)


def test_get_domain_after_lookup(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("gd2.qcow2")}))
    u = backup_uuid(b)
    free(b)
    h = lib.virDomainBackupLookupByUUID(u.encode(), 0)
    assert h
    try:
        d = lib.virDomainBackupGetDomain(h)
        assert d, lib.virDomainBackupGetLastErrorMessage()
        assert domain_uuid(d) == dom.uuid
    finally:
        free(h)


def test_xml_desc_same_through_both_names(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("n.qcow2")}))
    try:
        p = lib.virDomainBackupObjGetXMLDesc(b, 0)
        assert p
        obj = ctypes.string_at(p).decode()
        libc.free(p)
        assert get_xml(b) == obj
    finally:
        free(b)


def test_ref_free_balance(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("rf.qcow2")}))
    assert lib.virDomainBackupRef(b) == 0
    assert lib.virDomainBackupFree(b) == 0
    # Still alive after one Free: one reference left.
    assert backup_uuid(b)
    assert lib.virDomainBackupFree(b) == 0
    # Freed to zero: the handle is no longer valid, and is refused, not a crash.
    assert lib.virDomainBackupFree(b) == -1
    expect_error(VIR_ERR_INVALID_ARG)
    assert lib.virDomainBackupRef(b) == -1
    expect_error(VIR_ERR_INVALID_ARG)
    assert lib.virDomainBackupObjGetXMLDesc(b, 0) is None
    expect_error(VIR_ERR_INVALID_ARG)
    n = ctypes.c_int(0)
    assert lib.virDomainBackupGetParameters(b, None, byref(n), 0) == -1
    expect_error(VIR_ERR_INVALID_ARG)
    # The backup itself is not affected by freeing handles.
    assert count_backups(dom) == 1


def test_freed_handle_through_exact_xml_name(env):
    """virDomainBackupGetXMLDesc (the exact exported name, API.md point 3)
    given a handle freed to zero must fail with VIR_ERR_INVALID_ARG, not
    crash. Run in a subprocess so a crash cannot take the suite down."""
    dom_disk = env.disk("fx.raw", 8 * MiB)
    out = run_py(f"""
        conn = virt.virConnectOpen(b"test:///default")
        d = virt.virDomainDefineXML(conn, domain_xml("fx", [("vda", {dom_disk!r}, "raw")]).encode())
        b = create(d, backup_xml_for({{"vda": {env.path("fx.qcow2")!r}}}))
        assert lib.virDomainBackupFree(b) == 0
        sys.stdout.write("freed\\n"); sys.stdout.flush()
        r = lib.virDomainBackupGetXMLDesc(b, 0)
        print("RESULT", r, last_error()[0])
    """, env.catalog, check=False)
    assert out.returncode == 0, (
        f"process died with status {out.returncode} calling "
        f"virDomainBackupGetXMLDesc on a freed handle; output: {out.stdout!r}")
    assert f"RESULT None {VIR_ERR_INVALID_ARG}" in out.stdout


def test_many_refs(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("mr.qcow2")}))
    for _ in range(10):
        assert lib.virDomainBackupRef(b) == 0
    for _ in range(11):
        assert lib.virDomainBackupFree(b) == 0
    assert lib.virDomainBackupFree(b) == -1
    expect_error(VIR_ERR_INVALID_ARG)


def test_handles_independent(env):
    """Handles from List, Lookup and Create on the same backup are separate objects."""
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("ind.qcow2")}))
    u = backup_uuid(b)
    (h,) = list_handles(dom)
    l = lib.virDomainBackupLookupByUUID(u.encode(), 0)
    assert l
    assert len({b, h, l}) == 3
    free(b)
    assert backup_uuid(h) == u
    free(h)
    assert backup_uuid(l) == u
    free(l)


def test_lookup_from_fresh_process(env):
    """A process that has only the UUID and the catalog dir finds the
    backup, its XML and its domain (a node-file domain every process sees)."""
    uri, dom = env.node_domain()
    target = env.path("fresh.qcow2")
    b = create(dom, backup_xml_for({"vda": target}, description="from parent"))
    u = backup_uuid(b)
    here_xml = get_xml(b)
    free(b)
    out = run_py(f"""
        h = lib.virDomainBackupLookupByUUID({u!r}.encode(), 0)
        assert h, last_error()
        print(get_xml(h))
        d = lib.virDomainBackupGetDomain(h)
        assert d, last_error()
        print("DOMAIN", domain_uuid(d))
        print("PARAMS", get_params(h)["state"][1])
        free(h)
        bogus = lib.virDomainBackupLookupByUUID({str(uuidlib.uuid4())!r}.encode(), 0)
        print("BOGUS", bogus, last_error()[0])
    """, env.catalog)
    lines = out.splitlines()
    xml_text = "\n".join(l for l in lines if not l.startswith(("DOMAIN", "PARAMS", "BOGUS")))
    import xml.etree.ElementTree as ET
    t = ET.fromstring(xml_text)
    assert t.findtext("uuid") == u
    assert t.findtext("state") == "completed"
    assert t.findtext("description") == "from parent"
    assert t.find("domain").get("uuid") == dom.uuid
    assert t.find("disks/disk/target").get("file") == target
    assert ET.tostring(t) == ET.tostring(ET.fromstring(here_xml))
    assert f"DOMAIN {dom.uuid}" in lines
    assert "PARAMS 2" in lines
    assert f"BOGUS None {VIR_ERR_NO_DOMAIN_BACKUP}" in lines
    assert_same_image(dom.disks[0][1], "raw", target, "qcow2")


def test_list_from_fresh_process(env):
    uri, dom = env.node_domain()
    b = create(dom, backup_xml_for({"vda": env.path("lf.qcow2")}))
    u = backup_uuid(b)
    free(b)
    out = run_py(f"""
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
        print(" ".join(list_uuids(d)))
        virt.virDomainFree(d)
        virt.virConnectClose(conn)
    """, env.catalog)
    assert out.split() == [u]


def test_catalog_dir_read_at_each_call(env, monkeypatch):
    """LIBVIRT_BACKUP_DIR is read at each call: switching it switches catalogs."""
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("cat-a.qcow2")}))
    u = backup_uuid(b)
    free(b)
    other = env.path("other-catalog")
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", other)
    assert count_backups(dom) == 0
    assert lib.virDomainBackupLookupByUUID(u.encode(), 0) is None
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)
    b2 = create(dom, "<domainbackup/>")
    assert target_of(b2).startswith(other + "/")
    free(b2)
    assert count_backups(dom) == 1
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", env.catalog)
    assert list_uuids(dom) == [u]


def test_lookup_when_domain_is_gone(env):
    """A backup found by UUID whose domain no longer exists: the handle
    works, GetDomain fails with VIR_ERR_NO_DOMAIN (header documentation)."""
    node = env.path("gone-node.xml")
    uri, dom = env.node_domain(node_file=node)
    target = env.path("gone.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    u = backup_uuid(b)
    free(b)
    # The node file no longer defines the domain: other processes don't see it.
    with open(node, "w") as f:
        f.write("<node></node>")
    out = run_py(f"""
        h = lib.virDomainBackupLookupByUUID({u!r}.encode(), 0)
        assert h, last_error()
        print("XML", xml_tree(h).findtext("uuid"))
        print("DOMAIN", lib.virDomainBackupGetDomain(h), last_error()[0])
        free(h)
    """, env.catalog)
    assert f"XML {u}" in out
    assert f"DOMAIN None {VIR_ERR_NO_DOMAIN}" in out


def default_backups(dom, n=1):
    """`n` full backups of `dom` to the catalog's default folders."""
    uuids = []
    for _ in range(n):
        b = create(dom, "<domainbackup/>")
        uuids.append(backup_uuid(b))
        free(b)
    return uuids


def test_list_with_a_null_domain_gives_the_whole_catalog(env):
    """virDomainBackupList(NULL, ...): every backup of every domain, oldest
    first across domains, the flags applied to the whole set (LATEST: the
    catalog's newest); each handle's GetDomain is its own domain."""
    d1, d2 = env.domain(), env.domain()
    a = default_backups(d1)
    b = default_backups(d2)
    a += default_backups(d1)
    everything = [a[0], b[0], a[1]]
    assert list_uuids(None) == everything
    assert count_backups(None) == 3
    assert list_uuids(None, LIST_LATEST) == [a[1]]
    assert list_uuids(None, LIST_FULL) == everything
    assert list_uuids(None, LIST_INCREMENTAL) == []
    assert list_uuids(None, LIST_LEAVES) == everything
    for h in list_handles(None):
        try:
            d = lib.virDomainBackupGetDomain(h)
            assert d, lib.virDomainBackupGetLastErrorMessage()
            want = d1.uuid if backup_uuid(h) in a else d2.uuid
            assert domain_uuid(d) == want
        finally:
            free(h)
    # Children through a handle of the whole listing.
    inc = create(d1, backup_xml_for({"vda": env.path("inc-null.qcow2")}, parent=a[1]))
    u_inc = backup_uuid(inc)
    free(inc)
    assert list_uuids(None, LIST_INCREMENTAL) == [u_inc]
    assert list_uuids(None, LIST_LEAVES) == [a[0], b[0], u_inc]
    (h,) = [h for h in list_handles(None, LIST_FULL | LIST_LATEST)]
    assert children_uuids(h) == [u_inc]
    free(h)
    assert lib.virDomainBackupList(None, None, LIST_DESCENDANTS) == -1
    expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x10)")
    assert lib.virDomainBackupList(None, None, LIST_FULL | LIST_INCREMENTAL) == -1
    expect_error(VIR_ERR_INVALID_ARG)


def test_an_undefined_domains_backups_stay_listed_and_restorable(env):
    """virsh undefine knows nothing of backups: the domain's backups stay
    in the catalog, listed with a NULL domain; GetDomain fails with
    VIR_ERR_NO_DOMAIN; the XML names the domain and holds its saved
    definition (secrets only with VIR_DOMAIN_XML_SECURE); restored as a
    new domain, byte for byte."""
    graphics = "<graphics type='vnc' port='-1' passwd='s3cret-pw'/>"
    dom = env.domain(devices=graphics)
    other = env.domain()
    full = create(dom, "<domainbackup/>")
    u_full = backup_uuid(full)
    free(full)
    write_disk(dom.disks[0][1], "raw", [(1 * MiB, 64 << 10, 0x6A)])
    inc = create(dom, backup_xml_for(parent=u_full))
    u_inc = backup_uuid(inc)
    free(inc)
    at_inc = env.snapshot(dom.disks[0][1], "undef-at-inc.raw")
    (u_other,) = default_backups(other)
    assert virt.virDomainUndefine(dom.ptr) == 0
    assert lookup_domain(env.conn, dom.name) is None

    assert list_uuids(None) == [u_full, u_inc, u_other]
    handles = list_handles(None)
    try:
        gone, kept = handles[:2], handles[2]
        for h in gone:
            assert lib.virDomainBackupGetDomain(h) is None
            expect_error(VIR_ERR_NO_DOMAIN, dom.uuid)
            root = xml_tree(h)
            assert root.find("domain").attrib == {"uuid": dom.uuid, "name": dom.name}
            saved = root.find("definition").find("domain")
            assert saved.findtext("name") == dom.name
            assert saved.findtext("uuid") == dom.uuid
            assert "s3cret-pw" not in get_xml(h)
            assert "s3cret-pw" in get_xml(h, VIR_DOMAIN_XML_SECURE)
        assert domain_uuid(lib.virDomainBackupGetDomain(kept)) == other.uuid
        assert children_uuids(gone[0]) == [u_inc]
    finally:
        for h in handles:
            free(h)
    # By UUID, the same.
    h = lib.virDomainBackupLookupByUUID(u_inc.encode(), 0)
    assert h and lib.virDomainBackupGetDomain(h) is None
    expect_error(VIR_ERR_NO_DOMAIN)
    free(h)

    name = env.expect_domain(dom.name + "-back")
    restore(restore_xml_for(u_inc, domain=name), RESTORE_NEW_DOMAIN)
    back = lookup_domain(env.conn, name)
    assert back
    try:
        (disk, _fmt), = domain_disks(back).values()
        assert_byte_exact(disk, "qcow2", at_inc, "raw")
    finally:
        virt.virDomainFree(back)
