"""A job's rate limit (<bandwidth bytes='N'/>) and per-disk progress
(GetParameters' disk.<i>.*), seen from another thread while the job runs."""

import threading
import time

from conftest import (MiB, STATE_COMPLETED, STATE_RUNNING, VIR_ERR_XML_ERROR,
                      backup_uuid, backup_xml_for, create, create_fails, free,
                      get_params, get_xml, images_equal, lib)


def bandwidth_xml(rate, targets):
    """backup_xml_for(targets) with <bandwidth bytes='rate'/>."""
    return backup_xml_for(targets).replace(
        "<domainbackup>", f"<domainbackup><bandwidth bytes='{rate}'/>", 1)


def full_disk(env, name, size):
    """A raw disk all of whose bytes are data."""
    return env.disk(name, size, writes=[(0, size, 0x3C)])


def test_per_disk_progress_from_another_thread(env):
    a = full_disk(env, "pd-a.raw", 24 * MiB)
    b_ = full_disk(env, "pd-b.raw", 8 * MiB)
    dom = env.domain(disks=[("vda", a, "raw"), ("vdb", b_, "raw")])
    targets = env.targets("pd", ["vda", "vdb"])
    # 32 MiB at 12 MiB/s, both disks together: about 2.7 s.
    start = time.monotonic()
    b = create(dom, bandwidth_xml(12 * MiB, targets), flags=0)
    try:
        assert f"<bandwidth bytes='{12 * MiB}'/>" in get_xml(b)
        uuid = backup_uuid(b).encode()
        seen, errors = [], []

        def watch():
            # Another handle on the same job, in another thread.
            h = lib.virDomainBackupLookupByUUID(uuid, 0)
            try:
                while True:
                    p = get_params(h)
                    seen.append(p)
                    if p["state"][1] != STATE_RUNNING:
                        return
                    time.sleep(0.05)
            except AssertionError as e:
                errors.append(e)
            finally:
                free(h)

        t = threading.Thread(target=watch)
        t.start()
        t.join(60)
        assert not errors, errors
        assert lib.virDomainBackupFinishJob(b, 0) == 0
        took = time.monotonic() - start
        running = [p for p in seen if p["state"][1] == STATE_RUNNING]
        assert len(running) >= 5, (took, len(seen))
        for p in seen:
            assert p["disk.0.name"][1] == "vda" and p["disk.1.name"][1] == "vdb"
            assert p["disk.0.bytes.total"][1] == 24 * MiB
            assert p["disk.1.bytes.total"][1] == 8 * MiB
            d0, d1 = p["disk.0.bytes.processed"][1], p["disk.1.bytes.processed"][1]
            assert d0 + d1 == p["bytes.processed"][1]
            assert d0 <= 24 * MiB and d1 <= 8 * MiB
        # Both disks moved while the job ran, and the figures only grow.
        assert any(p["disk.0.bytes.processed"][1] > 0 and p["disk.1.bytes.processed"][1] > 0
                   for p in running)
        for k in ("disk.0.bytes.processed", "disk.1.bytes.processed"):
            vals = [p[k][1] for p in seen]
            assert vals == sorted(vals), k
        assert took >= 2.3, took
        end = get_params(b)
        assert end["state"][1] == STATE_COMPLETED
        assert end["disk.0.bytes.processed"][1] == 24 * MiB
        assert end["disk.1.bytes.processed"][1] == 8 * MiB
        assert end["bytes.processed"][1] == end["bytes.total"][1] == 32 * MiB
        assert "bandwidth" not in get_xml(b)
        assert images_equal(a, "raw", targets["vda"], "qcow2")
        assert images_equal(b_, "raw", targets["vdb"], "qcow2")
    finally:
        free(b)


def test_bad_bandwidth_refused_and_nothing_changes(env):
    dom = env.domain()
    targets = env.targets("bw", ["vda"])
    before = env.files()
    for value in ("0", "-1", "+5", "1.5", "", "fast", "10M", " 7",
                  "18446744073709551616"):
        create_fails(dom, bandwidth_xml(value, targets), 0, VIR_ERR_XML_ERROR,
                     f"bytes='{value}'")
        assert env.files() == before, value
    create_fails(dom, backup_xml_for(targets).replace(
        "<domainbackup>", "<domainbackup><bandwidth/>", 1), 0, VIR_ERR_XML_ERROR,
        "<bandwidth> needs a bytes attribute")
    assert env.files() == before
