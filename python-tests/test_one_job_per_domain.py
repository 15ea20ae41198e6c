"""One backup job per domain, when many callers race for it (README "Jobs"):
8 threads of one process, or 2 processes, call CreateXML on one domain at
the same moment; exactly one job starts, every other call fails with
VIR_ERR_OPERATION_INVALID and leaves nothing behind.

The domain's disk is the 2 GiB `big_disk`, so the winning job is still
copying when the others ask; it is aborted at the end."""

import os
import threading
import time

from conftest import (VIR_ERR_OPERATION_INVALID, backup_xml_for, count_backups,
                      last_error, lib, py_subprocess)


def test_eight_threads_race_one_domain(env, big_disk):
    dom = env.domain(disks=[("vda", big_disk, "raw")])
    n = 8
    barrier = threading.Barrier(n)
    results = [None] * n

    def worker(i):
        xml = backup_xml_for({"vda": env.path(f"race-{i}.qcow2")}).encode()
        barrier.wait()
        b = lib.virDomainBackupCreateXML(dom, xml, 0)
        results[i] = (b, last_error())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [(i, b) for i, (b, _) in enumerate(results) if b]
    try:
        assert len(winners) == 1, f"{len(winners)} jobs started on one domain: {results}"
        for i, (b, (code, msg)) in enumerate(results):
            if not b:
                assert code == VIR_ERR_OPERATION_INVALID, (i, code, msg)
                assert "already has a backup job" in msg, msg
                assert not os.path.exists(env.path(f"race-{i}.qcow2"))
        assert count_backups(dom) == 1
    finally:
        aborted = 0
        for _, b in winners:
            # The job may have completed already (then it stays listed).
            aborted += lib.virDomainBackupAbortJob(b, 0) == 0
            lib.virDomainBackupFree(b)
    assert count_backups(dom) == len(winners) - aborted
    # The lock went with the job: the domain can be backed up again.
    b = lib.virDomainBackupCreateXML(
        dom, backup_xml_for({"vda": env.path("after.qcow2")}).encode(), 0)
    assert b, last_error()
    assert lib.virDomainBackupAbortJob(b, 0) == 0, last_error()
    lib.virDomainBackupFree(b)


def test_two_processes_race_one_domain(env, big_disk):
    uri, dom = env.node_domain(disks=[("vda", big_disk, "raw")])
    start_at = time.time() + 2.0  # both interpreters are up by then
    procs = []
    for i in range(2):
        xml = backup_xml_for({"vda": env.path(f"proc-{i}.qcow2")})
        procs.append(py_subprocess(f"""
            import time
            conn = virt.virConnectOpen({uri!r}.encode())
            d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
            assert d
            while time.time() < {start_at!r}:
                pass
            b = lib.virDomainBackupCreateXML(d, {xml!r}.encode(), 0)
            print("OK" if b else "ERR", *last_error(), flush=True)
            if b:
                time.sleep(1)  # the other one asked meanwhile
                # The job may have completed already (then it stays listed).
                rc = lib.virDomainBackupAbortJob(b, 0)
                print("ABORTED" if rc == 0 else "ENDED", flush=True)
        """, env.catalog))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    ended = sum("ENDED" in o for o in outs)
    assert sorted(o.split()[0] for o in outs) == ["ERR", "OK"], outs
    loser = next(o for o in outs if o.startswith("ERR"))
    assert loser.split()[1] == str(VIR_ERR_OPERATION_INVALID), loser
    assert "already has a backup job" in loser
    assert count_backups(dom) == ended
