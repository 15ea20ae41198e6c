"""Scale limits that are behaviour, not timing: a backup holds descriptors
for its disks, not for every level of their chains."""

import os
import resource

from conftest import (MiB, assert_byte_exact, backing_chain, backup_uuid,
                      backup_xml_for, create, free, restore, restore_xml_for,
                      write_disk)

DISKS = 16
DEPTH = 40  # 16 disks x 40 levels: far past 256 descriptors if chains were opened
LIMIT = 256


def test_deep_chains_of_many_disks_back_up_under_a_low_descriptor_limit(env):
    names = [f"vd{chr(ord('a') + i)}" for i in range(DISKS)]
    disks = [(n, env.disk(f"fd-{n}.raw", 4 * MiB, "raw", [(0, 64 * 1024, 0x10 + i)]), "raw")
             for i, n in enumerate(names)]
    dom = env.domain(disks=disks)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
    try:
        b = create(dom, "<domainbackup/>")
        ids = [backup_uuid(b)]
        free(b)
        for level in range(1, DEPTH):
            # One 64 KiB cluster changes on every disk at each level.
            for i, (_, path, _) in enumerate(disks):
                write_disk(path, "raw", [(level * 64 * 1024, 64 * 1024, (level + i) % 250 + 1)])
            b = create(dom, backup_xml_for(parent=ids[-1]))
            ids.append(backup_uuid(b))
            free(b)
        # The process never came near the limit: count what it holds now.
        assert len(os.listdir("/proc/self/fd")) < LIMIT // 2
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    # The leaf reads back as the disks are now, through all its levels.
    leaf = env.path("leaf-vdp.raw")
    restore(restore_xml_for(ids[-1], {"vdp": (leaf, "raw")}))
    assert_byte_exact(leaf, "raw", disks[-1][1], "raw")
    target = os.path.join(env.catalog, dom.uuid, ids[-1], "vdp.qcow2")
    assert len(backing_chain(target)) == DEPTH
