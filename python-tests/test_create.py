"""virDomainBackupCreateXML: full backups of inactive test-driver domains,
verified byte for byte with qemu-img compare."""

import os

import pytest

from conftest import (CREATE_WAIT, FINISH_JOB_CHECK, MiB, STATE_COMPLETED,
                      VIR_DOMAIN_AFFECT_CONFIG, VIR_ERR_INVALID_ARG,
                      assert_same_image, backup_state, backup_uuid,
                      backup_xml_for, count_backups, create, expect_error,
                      free, get_params, images_equal, img_info, lib, virt,
                      list_uuids, target_of, xml_tree)


@pytest.mark.parametrize("src_fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("dst_fmt", ["qcow2", "raw"])
def test_create_wait_copies_disk(env, src_fmt, dst_fmt):
    size = 64 * MiB
    dom = env.domain(fmt=src_fmt, size=size)
    src = dom.disks[0][1]
    target = env.path(f"backup-vda.{dst_fmt}")
    b = create(dom, backup_xml_for({"vda": (target, dst_fmt)}), CREATE_WAIT)
    try:
        assert os.path.exists(target)
        info = img_info(target)
        assert info["format"] == dst_fmt
        assert info["virtual-size"] == size
        assert_same_image(src, src_fmt, target, dst_fmt)
        assert backup_state(b) == "completed"
        assert target_of(b) == target
        assert count_backups(dom) == 1
    finally:
        free(b)


def test_default_format_is_qcow2(env):
    dom = env.domain()
    target = env.path("vda-backup.img")
    b = create(dom, backup_xml_for({"vda": target}))
    try:
        assert img_info(target)["format"] == "qcow2"
        assert xml_tree(b).find("disks/disk/driver").get("type") == "qcow2"
        assert_same_image(dom.disks[0][1], "raw", target, "qcow2")
    finally:
        free(b)


def test_qcow2_source_with_backing_chain(env):
    """A qcow2 source whose data is partly in its backing file."""
    base = env.disk("base.qcow2", 32 * MiB, "qcow2",
                    [(0, 2 * MiB, 0x11), (20 * MiB, 1 * MiB, 0x22)])
    top = env.path("top.qcow2")
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", base, top], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x33 1M 2M", top],
                   check=True)
    dom = env.domain(disks=[("vda", top, "qcow2")])
    target = env.path("chain-backup.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    try:
        assert_same_image(top, "qcow2", target, "qcow2")
        # The backup is self-contained: no backing file.
        assert "backing-filename" not in img_info(target)
    finally:
        free(b)


def test_create_without_wait_then_finish_job(env):
    dom = env.domain(size=256 * MiB)
    target = env.path("nowait.qcow2")
    b = create(dom, backup_xml_for({"vda": target}), 0)
    try:
        # Listed from the moment CreateXML returns (running or completed).
        assert count_backups(dom) == 1
        assert backup_state(b) in ("running", "completed")
        assert os.path.exists(target)
        assert lib.virDomainBackupFinishJob(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
        assert backup_state(b) == "completed"
        assert get_params(b)["state"][1] == STATE_COMPLETED
        assert lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 0
        # Waiting again on an ended job still says completed.
        assert lib.virDomainBackupFinishJob(b, 0) == 0
        assert_same_image(dom.disks[0][1], "raw", target, "qcow2")
    finally:
        free(b)


def test_default_target_in_catalog(env):
    """A disk without <target> goes to <catalog>/<domain uuid>/<backup uuid>/vda.qcow2."""
    dom = env.domain()
    b = create(dom, "<domainbackup/>")
    try:
        uuid = backup_uuid(b)
        expected = os.path.join(env.catalog, dom.uuid, uuid, "vda.qcow2")
        assert target_of(b) == expected
        assert os.path.exists(expected)
        assert_same_image(dom.disks[0][1], "raw", expected, "qcow2")
    finally:
        free(b)


def test_disk_without_target_raw_driver(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": (None, "raw")}))
    try:
        expected = os.path.join(env.catalog, dom.uuid, backup_uuid(b), "vda.raw")
        assert target_of(b) == expected
        assert_same_image(dom.disks[0][1], "raw", expected, "raw")
    finally:
        free(b)


def test_set_default_target_dir(env):
    dom = env.domain()
    d = env.path("defaults")
    os.mkdir(d)
    xml = f"<target type='dir'><path>{d}</path></target>"
    assert lib.virDomainSetDefaultTarget(dom, xml.encode(), VIR_DOMAIN_AFFECT_CONFIG) == 0, \
        lib.virDomainBackupGetLastErrorMessage()
    b = create(dom, "<domainbackup/>")
    try:
        expected = os.path.join(d, backup_uuid(b), "vda.qcow2")
        assert target_of(b) == expected
        assert_same_image(dom.disks[0][1], "raw", expected, "qcow2")
    finally:
        free(b)


def test_set_default_target_bad_flags(env):
    dom = env.domain()
    xml = f"<target type='dir'><path>{env.tmp}</path></target>"
    assert lib.virDomainSetDefaultTarget(dom, xml.encode(), 1 << 5) == -1
    expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x20)")


def test_given_uuid_and_description(env):
    dom = env.domain()
    u = "54c70d40-26bb-48cd-9639-b3a1e9adf650"
    b = create(dom, backup_xml_for({"vda": env.path("u.qcow2")}, uuid=u,
                                   description="nightly"))
    try:
        t = xml_tree(b)
        assert t.findtext("uuid") == u
        assert t.findtext("description") == "nightly"
        assert list_uuids(dom) == [u]
    finally:
        free(b)


def test_two_disks_one_excluded(env):
    a = env.disk("a.raw", 16 * MiB)
    c = env.disk("c.qcow2", 16 * MiB, "qcow2")
    d = env.disk("d.raw", 16 * MiB)
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", c, "qcow2"), ("vdc", d, "raw")])
    ta, tb = env.path("ta.qcow2"), env.path("tb.raw")
    b = create(dom, backup_xml_for({"vda": ta, "vdb": (tb, "raw"), "vdc": None}))
    try:
        names = [x.get("name") for x in xml_tree(b).find("disks").findall("disk")]
        assert sorted(names) == ["vda", "vdb"]
        assert_same_image(a, "raw", ta, "qcow2")
        assert_same_image(c, "qcow2", tb, "raw")
        assert get_params(b)["disks"][1] == 2
    finally:
        free(b)


def test_disks_not_listed_are_included(env):
    """Disks absent from <disks> are backed up (to the default target)."""
    a = env.disk("a.raw", 8 * MiB)
    c = env.disk("c.raw", 8 * MiB, writes=[(0, MiB, 0xCC)])
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", c, "raw")])
    ta = env.path("only-a.qcow2")
    b = create(dom, backup_xml_for({"vda": ta}))
    try:
        names = {x.get("name") for x in xml_tree(b).find("disks").findall("disk")}
        assert names == {"vda", "vdb"}
        assert_same_image(c, "raw", target_of(b, "vdb"), "qcow2")
    finally:
        free(b)


def test_empty_and_sparse_disk(env):
    """An all-hole disk backs up to an equal, (nearly) empty image."""
    dom = env.domain(disks=[("vda", env.disk("empty.raw", 128 * MiB, writes=[]), "raw")])
    target = env.path("empty.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    try:
        assert_same_image(dom.disks[0][1], "raw", target, "qcow2")
        assert get_params(b)["bytes.written"][1] == 0
        assert os.path.getsize(target) < 4 * MiB
    finally:
        free(b)


def test_backup_of_changed_disk_differs(env):
    """Sanity of the comparison: a later change to the source is not in the backup."""
    dom = env.domain()
    src = dom.disks[0][1]
    target = env.path("before.qcow2")
    b = create(dom, backup_xml_for({"vda": target}))
    free(b)
    with open(src, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"\x01" * 4096)
    assert not images_equal(src, "raw", target, "qcow2")


def test_running_test_driver_domain(env):
    """API.md DESIGN NOTES: drivers with no backup support (the built-in test
    driver) get their images copied by the library, running or not."""
    dom = env.domain()
    assert virt.virDomainCreate(dom) == 0
    assert virt.virDomainIsActive(dom) == 1
    target = env.path("running.qcow2")
    b = lib.virDomainBackupCreateXML(dom, backup_xml_for({"vda": target}).encode(), CREATE_WAIT)
    assert b, f"backup of a running test-driver domain failed: {lib.virDomainBackupGetLastErrorMessage()}"
    try:
        assert_same_image(dom.disks[0][1], "raw", target, "qcow2")
    finally:
        free(b)
