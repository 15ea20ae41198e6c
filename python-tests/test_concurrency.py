"""Thread safety and several processes on one catalog (API.md: "All
functions are thread-safe; handles may be shared")."""

import os
import threading

from conftest import (CREATE_WAIT, MiB, assert_same_image, backup_uuid,
                      backup_xml_for, count_backups, create, free, get_params,
                      last_error, lib, list_uuids, py_subprocess, target_of,
                      virt, write_node_file, make_disk)


def test_two_threads_two_domains(env):
    doms = [env.domain(size=192 * MiB,
                       disks=[("vda", env.disk(f"t{i}.raw", 192 * MiB,
                                               writes=[(0, 64 * MiB, 0x10 + i),
                                                       (128 * MiB, 32 * MiB, 0x20 + i)]), "raw")])
            for i in range(2)]
    targets = [env.path(f"t{i}.qcow2") for i in range(2)]
    barrier = threading.Barrier(2)
    results = [None, None]

    def worker(i):
        barrier.wait()
        b = lib.virDomainBackupCreateXML(
            doms[i], backup_xml_for({"vda": targets[i]}).encode(), CREATE_WAIT)
        err = last_error()
        uuid = backup_uuid(b) if b else None
        if b:
            lib.virDomainBackupFree(b)
        results[i] = (bool(b), err, uuid)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(2):
        ok, err, uuid = results[i]
        assert ok, f"thread {i}: {err}"
        assert err == (0, "no error")
        assert list_uuids(doms[i]) == [uuid]
        assert_same_image(doms[i].disks[0][1], "raw", targets[i], "qcow2")


def test_many_threads_many_backups(env):
    n_threads, per_thread = 4, 4
    doms = [env.domain(size=16 * MiB) for _ in range(n_threads)]
    errors = []
    made = [[] for _ in range(n_threads)]

    def worker(i):
        for j in range(per_thread):
            b = lib.virDomainBackupCreateXML(
                doms[i], backup_xml_for({"vda": env.path(f"m{i}-{j}.qcow2")}).encode(),
                CREATE_WAIT)
            if not b:
                errors.append((i, j, last_error()))
                continue
            made[i].append(backup_uuid(b))
            lib.virDomainBackupFree(b)
            # Lists from other threads while they write.
            if lib.virDomainBackupList(doms[(i + 1) % n_threads], None, 0) < 0:
                errors.append((i, j, "list", last_error()))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for i in range(n_threads):
        assert sorted(list_uuids(doms[i])) == sorted(made[i])
        assert len(made[i]) == per_thread


def test_shared_handle_across_threads(env):
    dom = env.domain(size=16 * MiB)
    b = create(dom, backup_xml_for({"vda": env.path("sh.qcow2")}))
    u = backup_uuid(b)
    errors = []

    def worker():
        for _ in range(50):
            if lib.virDomainBackupRef(b) != 0:
                errors.append(("ref", last_error()))
                continue
            try:
                if backup_uuid(b) != u:
                    errors.append("uuid")
                if get_params(b)["state"][1] != 2:
                    errors.append("state")
            except AssertionError as e:
                errors.append(str(e))
            if lib.virDomainBackupFree(b) != 0:
                errors.append(("free", last_error()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    # Exactly the original reference is left.
    free(b)
    assert lib.virDomainBackupFree(b) == -1


def test_two_processes_same_catalog(env):
    """Two processes, each backing up its own domain of one node file several
    times, at the same time, into one catalog: every backup ends up listed."""
    n = 5
    disks = [make_disk(env.path(f"p{i}.raw"), 16 * MiB, writes=[(0, MiB, 0x30 + i)])
             for i in range(2)]
    names = [f"proc{i}" for i in range(2)]
    uuids = ["11111111-2222-4333-8444-%012d" % i for i in range(2)]
    uri = write_node_file(env.path("node.xml"),
                          [(names[i], uuids[i], [("vda", disks[i], "raw")]) for i in range(2)])
    go = env.path("go")
    procs = []
    for i in range(2):
        procs.append(py_subprocess(f"""
            import time
            conn = virt.virConnectOpen({uri!r}.encode())
            d = virt.virDomainLookupByName(conn, {names[i]!r}.encode())
            assert d
            while not os.path.exists({go!r}):
                time.sleep(0.005)
            for j in range({n}):
                t = os.path.join({env.tmp!r}, "p{i}-%d.qcow2" % j)
                b = lib.virDomainBackupCreateXML(d, backup_xml_for({{"vda": t}}).encode(), CREATE_WAIT)
                assert b, last_error()
                print(backup_uuid(b), flush=True)
                free(b)
        """, env.catalog))
    open(go, "w").close()
    made = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        made.append(out.split())
    conn = env.open(uri)
    for i in range(2):
        d = virt.virDomainLookupByName(conn, names[i].encode())
        assert d
        try:
            listed = list_uuids(d)
        finally:
            virt.virDomainFree(d)
        assert len(made[i]) == n
        assert sorted(listed) == sorted(made[i])
        for u in made[i]:
            h = lib.virDomainBackupLookupByUUID(u.encode(), 0)
            assert h, last_error()
            t = target_of(h)
            free(h)
            assert_same_image(disks[i], "raw", t, "qcow2")


def test_two_processes_same_domain_sequential_records(env):
    """Two processes back up the same node-file domain one after the other
    (the second starts when the first is done): both backups are listed."""
    uri, dom = env.node_domain(size=16 * MiB)
    made = []
    for i in range(2):
        p = py_subprocess(f"""
            conn = virt.virConnectOpen({uri!r}.encode())
            d = virt.virDomainLookupByName(conn, {dom.name!r}.encode())
            b = create(d, backup_xml_for({{"vda": {env.path(f"sd{i}.qcow2")!r}}}))
            print(backup_uuid(b))
            free(b)
        """, env.catalog)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        made.append(out.strip())
    assert sorted(list_uuids(dom)) == sorted(made)
