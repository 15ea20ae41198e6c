"""Scale limits that are behaviour, not timing: a backup holds descriptors
for its disks, not for every level of their chains, and a restore, a merge
or a verification reads a chain a few levels at a time."""

import os
import resource
import time
from ctypes import c_int, c_uint, c_void_p

from conftest import (MiB, Nbd, _decl, assert_byte_exact, backup_uuid, backup_xml_for,
                      create, delete, free, header_chain, last_error, lib, nbd_copy, restore,
                      restore_xml_for, write_disk)

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)

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
    assert len(header_chain(target)) == DEPTH


DEEP = 200
K64 = 64 * 1024


def test_deep_chains_of_many_disks_back_up_restore_merge_and_verify_under_a_low_descriptor_limit(env):
    """16 disks, 200 levels, all under RLIMIT_NOFILE 256: the backups that
    build the chains, restore of the leaf, delete of a middle backup (merged
    into its child) and verification."""
    names = [f"vd{chr(ord('a') + i)}" for i in range(DISKS)]
    disks = [(n, env.disk(f"deep-{n}.raw", 1 * MiB, "raw", [(0, K64, 0x10 + i)]), "raw")
             for i, n in enumerate(names)]
    dom = env.domain(disks=disks)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
    try:
        leaf = deep_chain_under_the_limit(env, names, disks, dom)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Served over NBD from the catalog: the daemon is handed the 199 levels
    # node by node (following the images' relative backing names itself,
    # QEMU would grow their paths past PATH_MAX).
    nbd = Nbd(socket=env.path("deep.sock"))
    xml = (f"<domainbackup><uuid>{leaf}</uuid>{nbd.server_xml()}"
           "<disks><disk name='vdp' exportname='vdp'/></disks></domainbackup>")
    e = lib.virDomainBackupStartUnmanaged(None, xml.encode(), 0)
    assert e, last_error()
    try:
        assert_byte_exact(nbd_copy(nbd.uri("vdp"), env.path("deep-nbd.raw")), "raw",
                          disks[-1][1], "raw")
    finally:
        assert lib.virDomainBackupFinishJob(e, 0) == 0, last_error()
        free(e)


def deep_chain_under_the_limit(env, names, disks, dom):
    started = time.monotonic()
    handles = [create(dom, "<domainbackup/>")]
    for level in range(1, DEEP):
        # One 64 KiB cluster changes on every disk at each level.
        for i, (_, path, _) in enumerate(disks):
            write_disk(path, "raw", [((level % 16) * K64, K64, (level + i) % 250 + 1)])
        b = create(dom, backup_xml_for(parent=backup_uuid(handles[-1])))
        handles.append(b)
    built = time.monotonic() - started
    leaf = backup_uuid(handles[-1])
    top = os.path.join(env.catalog, dom.uuid, leaf, "vdp.qcow2")
    assert len(header_chain(top)) == DEEP, f"chain built in {built:.1f} s"

    def restore_all(tag):
        targets = {n: env.path(f"{tag}-{n}.raw") for n in names}
        restore(restore_xml_for(leaf, {n: (p, "raw") for n, p in targets.items()}))
        for (n, path, _) in disks:
            assert_byte_exact(targets[n], "raw", path, "raw")

    try:
        restore_all("first")
        # A middle backup goes: its data is merged into its child.
        middle = handles.pop(DEEP // 2)
        delete(middle)
        free(middle)
        assert len(header_chain(top)) == DEEP - 1
        restore_all("again")
        assert lib.virDomainBackupVerify(handles[-1], 0) == 0, last_error()
        assert len(os.listdir("/proc/self/fd")) < LIMIT // 2
    finally:
        for b in handles:
            free(b)
    return leaf
