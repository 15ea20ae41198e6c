"""A full disk (ENOSPC) at any step of a backup that fails must leave a
catalog the next call repairs, never one that blocks the domain.

The catalog lives on a small tmpfs of its own (`mount -t tmpfs -o size=`,
root only), with the target of the failing backup, which fills it. On a
full tmpfs a write still goes into a page the file already has, and fails
once it needs a new one: the test steers the domain's summary (one line
per change, appended) so that the first line the cleanup of the failed
backup appends crosses into a new page."""

import os
import subprocess
import time
import uuid as uuidlib

import pytest

from conftest import (MiB, backup_uuid, backup_xml_for, catalog_entries_named, create,
                      delete, free, lib, list_uuids, run_py)

PAGE = 4096


@pytest.fixture
def small_catalog(env, monkeypatch):
    """A 16 MiB tmpfs mounted in the test's folder, holding the catalog."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = env.path("small")
    os.mkdir(mnt, 0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", mnt],
                   check=True)
    catalog = os.path.join(mnt, "catalog")
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", catalog)
    env.catalog = catalog
    yield mnt
    # Lazily: the library may still hold the catalog's folder open.
    subprocess.run(["umount", "-l", mnt], check=True)


def random_disk(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def test_a_full_disk_while_a_failed_backup_is_removed_blocks_nothing(env, small_catalog):
    """Regression: the failed job dropped its lock file before removing its
    record, and ignored the removal's error: with the disk full, the
    domain kept a `running` record with no job behind it, which made every
    List and Delete of the domain fail until repaired by hand. Now the
    failed job's own files go first (which frees the disk), its lock is
    kept until the record is gone, and a record that cannot go keeps its
    lock file, so that the next call settles it as a dead job's."""
    tiny = env.disk("tiny.raw", 1 * MiB, writes=[(0, 64 << 10, 0x11)])
    big = random_disk(env.path("big.raw"), 24 * MiB)
    uri, dom = env.node_domain(disks=[("vda", tiny, "raw"), ("vdb", big, "raw")])
    summary = os.path.join(env.catalog, dom.uuid, "summary")
    kept = []

    def small_backup():
        b = create(dom, backup_xml_for({"vda": env.path(f"t{len(kept)}.qcow2"), "vdb": None}))
        assert b, lib.virDomainBackupGetLastErrorMessage()
        kept.append(b)

    def drop_newest():
        b = kept.pop()
        delete(b)
        free(b)

    # What the failing backup appends to the summary as it registers: its
    # "? <uuid>" line and its "+ <uuid> <ns> - running" line.
    failing = str(uuidlib.uuid4())
    registered = len(f"? {failing}\n") + len(f"+ {failing} {time.time_ns()} - running\n")
    first_cleanup_line = len(f"? {failing}\n")

    def room():
        """Bytes left in the summary's last page once the failing backup
        registered."""
        return -(os.path.getsize(summary) + registered) % PAGE

    small_backup()
    size = os.path.getsize(summary)
    small_backup()
    per_backup = os.path.getsize(summary) - size
    size = os.path.getsize(summary)
    drop_newest()
    per_delete = os.path.getsize(summary) - size
    # Steer the summary: a creates and b deletes, the fewest that leave
    # less room than the cleanup's first line (short of the summary's
    # compaction, at about 7 KiB).
    for _ in range(3):
        if room() < first_cleanup_line:
            break
        size = os.path.getsize(summary)
        a, b = min(((a, b) for a in range(40) for b in range(a + len(kept))
                    if -(size + a * per_backup + b * per_delete + registered) % PAGE
                    < first_cleanup_line
                    and size + a * per_backup + b * per_delete < 6500),
                   key=sum)
        for _ in range(a):
            small_backup()
        for _ in range(b):
            drop_newest()
    assert room() < first_cleanup_line, "could not steer the summary"
    before = sorted(backup_uuid(b) for b in kept)

    # The backup of the big disk fills the file system and fails.
    target = os.path.join(small_catalog, "big.qcow2")
    b = lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": None, "vdb": target}, uuid=failing).encode(), 4)
    assert b is None, "the backup fitted: nothing tested"
    assert "space" in lib.virDomainBackupGetLastErrorMessage().decode()

    # List and Delete of the domain work, in this process and in a fresh one.
    assert sorted(list_uuids(dom)) == before
    out = run_py(f"""
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
        print("LIST", lib.virDomainBackupList(d, None, 0), last_error())
    """, env.catalog)
    assert f"LIST {len(before)} " in out, out
    assert not os.path.exists(target), "the failed backup's target is left"
    assert catalog_entries_named(env, failing) == []
    drop_newest()
    assert sorted(list_uuids(dom)) == sorted(backup_uuid(b) for b in kept)
    # And the domain can be backed up again.
    small_backup()
    for b in kept:
        free(b)
