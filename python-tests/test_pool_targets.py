"""Storage-pool volume targets (type='volume', SetDefaultTarget type='pool')
on a dir pool of test:///default: libvirt creates the volume, the library
writes the image at its path, and deleting the backup deletes the volume."""

import os

from conftest import (CREATE_WAIT, DELETE_ALL_CHILDREN, K64, MiB,
                      VIR_DOMAIN_AFFECT_CONFIG, VIR_ERR_INVALID_ARG,
                      VIR_ERR_NO_STORAGE_POOL, Volume, assert_byte_exact,
                      backing_chain, backup_uuid, backup_xml_for, count_backups,
                      create_fails, delete, disk_element, disk_modes, img_info,
                      last_error, lib, param, restore, restore_xml_for, write_disk)


def volume_target(backup):
    """(type, pool, volume, file) of vda in the backup's XML."""
    d = disk_element(backup)
    t = d.find("target")
    return d.get("type"), t.get("pool"), t.get("volume"), t.get("file")


def test_volume_targets_of_a_chain(env):
    pool = env.pool()
    dom = env.domain(fmt="qcow2", size=8 * MiB)
    src = dom.disks[0][1]
    full = env.backup(dom, backup_xml_for({"vda": pool.volume("full.qcow2")}))
    v1 = os.path.join(pool.path, "full.qcow2")
    assert volume_target(full) == ("volume", pool.name, "full.qcow2", v1)
    assert pool.count() == 1
    assert_byte_exact(v1, "qcow2", src, "qcow2")

    write_disk(src, "qcow2", [(0, K64, 0x41)])
    inc = env.backup(dom, backup_xml_for({"vda": pool.volume("inc.qcow2")},
                                         parent=backup_uuid(full)))
    v2 = os.path.join(pool.path, "inc.qcow2")
    assert disk_modes(inc) == {"vda": "incremental"}
    assert param(inc, "bytes.written") == K64
    assert backing_chain(v2) == [v2, v1]
    assert_byte_exact(v2, "qcow2", src, "qcow2")
    assert pool.count() == 2

    # A raw volume for a full copy.
    raw = env.backup(dom, backup_xml_for({"vda": (pool.volume("full.raw"), "raw")}))
    assert img_info(os.path.join(pool.path, "full.raw"))["format"] == "raw"
    assert_byte_exact(os.path.join(pool.path, "full.raw"), "raw", src, "qcow2")

    # An existing volume, an unknown pool: refused, nothing created.
    before, n = env.files(), pool.count()
    create_fails(dom, backup_xml_for({"vda": pool.volume("inc.qcow2")}), CREATE_WAIT,
                 VIR_ERR_INVALID_ARG, "inc.qcow2")
    create_fails(dom, backup_xml_for({"vda": Volume("pytest-no-such-pool", "x.qcow2")}),
                 CREATE_WAIT, VIR_ERR_NO_STORAGE_POOL, "pytest-no-such-pool")
    assert env.files() == before
    assert pool.count() == n
    assert count_backups(dom) == 3

    # Restored from the volumes; then deleted with them.
    out = env.path("restored.qcow2")
    restore(restore_xml_for(backup_uuid(inc), {"vda": out}))
    assert_byte_exact(out, "qcow2", src, "qcow2")
    delete(full, DELETE_ALL_CHILDREN)
    delete(raw)
    assert pool.count() == 0
    assert os.listdir(pool.path) == []


def test_default_target_pool(env):
    pool = env.pool()
    dom = env.domain(size=8 * MiB)
    xml = f"<target type='pool'><pool>{pool.name}</pool></target>"
    assert lib.virDomainSetDefaultTarget(dom, xml.encode(), VIR_DOMAIN_AFFECT_CONFIG) == 0, \
        last_error()
    b = env.backup(dom, "<domainbackup/>")
    vol = f"{dom.name}-{backup_uuid(b)}-vda.qcow2"
    assert volume_target(b) == ("volume", pool.name, vol, os.path.join(pool.path, vol))
    assert pool.count() == 1
    assert_byte_exact(os.path.join(pool.path, vol), "qcow2", dom.disks[0][1], "raw")
    delete(b)
    assert pool.count() == 0
    assert not os.path.exists(os.path.join(pool.path, vol))
