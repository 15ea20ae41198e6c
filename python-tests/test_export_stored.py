"""Export of a stored backup: virDomainBackupStartUnmanaged(NULL, xml, 0)
with the <uuid> of a completed backup serves that point in time read-only
over NBD (qemu-storage-daemon over the backup's own chain), read back here
with nbdcopy/nbdinfo; the backup is pinned while it is served; FinishJob and
AbortJob end it; the backup's domain need not exist."""

import os
import signal
import subprocess

import pytest

from conftest import (K64, daemons_serving, MiB, Nbd, STATE_RUNNING, VIR_ERR_INVALID_ARG,
                      VIR_ERR_NO_DOMAIN, VIR_ERR_NO_DOMAIN_BACKUP, VIR_ERR_NO_SUPPORT,
                      VIR_ERR_OPERATION_INVALID, assert_byte_exact, backup_uuid, backup_xml_for,
                      delete, expect_error, free_port, kill_process, lib, nbd_copy, nbd_exports,
                      nbd_reachable, param, py_subprocess, virt, wait_until, write_disk,
                      xml_tree)

DELETE_ALL_CHILDREN = 1 << 1


def stored_xml(uuid, server, disks=None, parent=None):
    parts = [f"<domainbackup><uuid>{uuid}</uuid>", server.server_xml()]
    if parent:
        parts.append(f"<parent><uuid>{parent}</uuid></parent>")
    if disks is not None:
        parts.append("<disks>" + "".join(
            f"<disk name='{d}' exportname='{e}'/>" for d, e in disks.items()) + "</disks>")
    return "".join(parts) + "</domainbackup>"


def start_stored(env, xml, flags=0):
    b = lib.virDomainBackupStartUnmanaged(None, xml.encode(), flags)
    assert b, f"export failed: {lib.virDomainBackupGetLastErrorMessage()}"
    env._handles.append(b)
    return b


def read_range(uri, offset, length):
    """`length` bytes at `offset` of an NBD export, through nbdcopy into a
    pipe (libnbd's tools; no client of the library's own)."""
    r = subprocess.run(["nbdcopy", "--synchronous", uri, "-"], stdout=subprocess.PIPE,
                       check=True)
    return r.stdout[offset:offset + length]


def test_points_in_time_read_back_through_nbd(env):
    size = 32 * MiB
    disks = [("vda", env.disk("a.raw", size, writes=[(3 * MiB, 1 * MiB, 0x41)]), "raw"),
             ("vdb", env.disk("b.qcow2", 8 * MiB, "qcow2", writes=[(0, K64, 0x42)]), "qcow2")]
    dom = env.domain(disks=disks)
    full = env.backup(dom, backup_xml_for({"vda": env.path("f-vda.qcow2"),
                                           "vdb": env.path("f-vdb.qcow2")}))
    at_full = env.snapshot(disks[0][1], "vda-at-full.raw")
    write_disk(disks[0][1], "raw", [(3 * MiB + K64, 2 * K64, 0x5A)])
    inc = env.backup(dom, backup_xml_for({"vda": env.path("i-vda.qcow2"),
                                          "vdb": env.path("i-vdb.qcow2")},
                                         parent=backup_uuid(full)))
    at_inc = env.snapshot(disks[0][1], "vda-at-inc.raw")
    # The domain is gone: the catalog and the files are enough.
    assert virt.virDomainUndefine(dom.ptr) == 0

    old = Nbd(socket=env.path("old.sock"))
    new = Nbd(port=free_port())
    e_old = start_stored(env, stored_xml(backup_uuid(full), old, {"vda": "disk"}))
    e_new = start_stored(env, stored_xml(backup_uuid(inc), new))
    assert sorted(nbd_exports(old.uri())) == ["disk"]
    assert sorted(nbd_exports(new.uri())) == ["vda", "vdb"]
    assert nbd_exports(new.uri())["vda"]["is_read_only"]
    # The known pattern at its offset, each point in time its own.
    assert read_range(old.uri("disk"), 3 * MiB + K64, K64) == b"\x41" * K64
    assert read_range(new.uri("vda"), 3 * MiB + K64, K64) == b"\x5a" * K64
    assert_byte_exact(nbd_copy(old.uri("disk"), env.path("got-old.raw")), "raw", at_full, "raw")
    assert_byte_exact(nbd_copy(new.uri("vda"), env.path("got-new.raw")), "raw", at_inc, "raw")
    # What a client needs, from the handle.
    root = xml_tree(e_new)
    assert root.find("server").get("port") == str(new.port)
    assert [d.get("exportname") for d in root.iter("disk")] == ["vda", "vdb"]
    assert param(e_new, "state") == STATE_RUNNING
    assert lib.virDomainBackupGetDomain(e_new) is None
    expect_error(VIR_ERR_NO_DOMAIN)
    # Served backups and their ancestors are pinned.
    for b in (full, inc):
        assert lib.virDomainBackupDelete(b, DELETE_ALL_CHILDREN) == -1
        expect_error(VIR_ERR_OPERATION_INVALID, "being exported")
    assert lib.virDomainBackupFinishJob(e_old, 0) == 0
    assert not nbd_reachable(old.uri())
    assert lib.virDomainBackupAbortJob(e_new, 0) == 0
    assert not nbd_reachable(new.uri())
    assert not [n for n in os.listdir(env.catalog) if n.startswith(".scratch")]
    delete(full, DELETE_ALL_CHILDREN)


def test_refusals(env):
    dom = env.domain(size=4 * MiB)
    b = env.backup(dom, backup_xml_for({"vda": env.path("b.qcow2")}))
    u = backup_uuid(b)
    srv = Nbd(port=free_port())
    cases = [
        (f"<domainbackup>{srv.server_xml()}</domainbackup>", 0, VIR_ERR_INVALID_ARG,
         "valid virDomainPtr"),
        (stored_xml(u, srv), 1, VIR_ERR_INVALID_ARG, "unsupported flags (0x1)"),
        (stored_xml("6f1c1f55-3e36-4b4b-8f7f-2e2b5e0f7a11", srv), 0, VIR_ERR_NO_DOMAIN_BACKUP,
         "6f1c1f55"),
        (stored_xml(u, srv, {"vdz": "x"}), 0, VIR_ERR_INVALID_ARG, "vdz"),
        (stored_xml(u, srv, parent=u), 0, VIR_ERR_NO_SUPPORT, "not supported yet"),
    ]
    for xml, flags, code, frag in cases:
        assert lib.virDomainBackupStartUnmanaged(None, xml.encode(), flags) is None
        expect_error(code, frag)
        assert not nbd_reachable(srv.uri())
    # With a domain, a <uuid> is not an export of the domain.
    assert lib.virDomainBackupStartUnmanaged(dom, stored_xml(u, srv).encode(), 0) is None
    expect_error(VIR_ERR_INVALID_ARG, "stored backup")
    assert lib.virDomainBackupStartUnmanaged(None, None, 0) is None
    expect_error(VIR_ERR_INVALID_ARG, "xmlDesc")


# ------------------------------------------------ an export in another process
def start_exporter(env, xml):
    """A helper process that exports a stored backup, prints 'serving',
    serves until a line arrives on its stdin, then ends the export
    (FinishJob), prints 'ended' and waits to be killed."""
    p = py_subprocess(f"""
        import time
        b = lib.virDomainBackupStartUnmanaged(None, {xml!r}.encode(), 0)
        assert b, last_error()
        print("serving", flush=True)
        sys.stdin.readline()
        assert lib.virDomainBackupFinishJob(b, 0) == 0, last_error()
        print("ended", flush=True)
        time.sleep(300)
    """, env.catalog, stdin=subprocess.PIPE)
    line = p.stdout.readline().strip()
    if line != "serving":
        kill_process(p)
        pytest.fail(f"exporter failed: {line!r}")
    return p


def test_an_export_by_another_process_pins_the_backup(env):
    """Regression: a stored backup exported by another process could be
    deleted (its parent merged into it) under the export, which then served
    other bytes. Every process sees every export (a lock file the exporter
    holds in the catalog): Delete is refused while it runs, with the same
    message as for an export of this process, and works once the export
    ended, or once the exporter was killed (its stale lock file and scratch
    folder are swept)."""
    dom = env.domain(size=8 * MiB)
    full = env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    write_disk(dom.disks[0][1], "raw", [(1 * MiB, K64, 0x61)])
    inc = env.backup(dom, backup_xml_for({"vda": env.path("inc.qcow2")},
                                         parent=backup_uuid(full)))
    at_inc = env.snapshot(dom.disks[0][1], "at-inc.raw")
    first = Nbd(socket=env.path("first.sock"))
    p = start_exporter(env, stored_xml(backup_uuid(inc), first))
    try:
        # The child is served: neither it nor its parent (merged into it
        # first) may go.
        for b, flags in ((inc, 0), (full, 0), (full, DELETE_ALL_CHILDREN)):
            assert lib.virDomainBackupDelete(b, flags) == -1, "deleted under an export"
            expect_error(VIR_ERR_OPERATION_INVALID, "being exported", "end the export first")
        assert_byte_exact(nbd_copy(first.uri("vda"), env.path("got.raw")), "raw", at_inc, "raw")
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ended"
        delete(inc)
    finally:
        kill_process(p)
        for pid in daemons_serving(first.socket):
            os.kill(pid, signal.SIGKILL)

    second = Nbd(socket=env.path("second.sock"))
    p = start_exporter(env, stored_xml(backup_uuid(full), second))
    try:
        assert lib.virDomainBackupDelete(full, 0) == -1
        expect_error(VIR_ERR_OPERATION_INVALID, "being exported")
        assert daemons_serving(second.socket)
    finally:
        kill_process(p)
    # The daemon ends with the process that started it.
    ended = wait_until(lambda: not daemons_serving(second.socket), timeout=10)
    for pid in daemons_serving(second.socket):
        os.kill(pid, signal.SIGKILL)
    assert ended, "the export outlived its process"
    gone = backup_uuid(full)
    delete(full)
    assert os.listdir(os.path.join(env.catalog, ".exports")) == []
    # The next call that opens the catalog removes the dead export's scratch.
    assert lib.virDomainBackupLookupByUUID(gone.encode(), 0) is None
    assert not [n for n in os.listdir(env.catalog) if n.startswith(".scratch")]


def test_paths_of_any_spelling_are_served(env, monkeypatch):
    """The daemon's JSON arguments carry a catalog and targets whose names
    hold a non-ASCII letter, quotes, a backslash, spaces and a line end."""
    odd = env.path('f\u00fcr "q" \\ two\nlines')
    os.mkdir(odd)
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", os.path.join(odd, "catalog"))
    env.catalog = os.path.join(odd, "catalog")
    dom = env.domain(size=8 * MiB)
    full = env.backup(dom, "<domainbackup/>")  # in the catalog
    write_disk(dom.disks[0][1], "raw", [(2 * MiB, K64, 0x62)])
    inc_target = os.path.join(odd, "inc \u00fc.qcow2")
    inc = env.backup(dom, (
        f"<domainbackup><parent><uuid>{backup_uuid(full)}</uuid></parent><disks>"
        "<disk name='vda'><target file='" + inc_target.replace("\n", "&#10;").replace(
            '"', "&quot;") + "'/></disk></disks></domainbackup>"))
    at_inc = env.snapshot(dom.disks[0][1], "at-inc.raw")
    srv = Nbd(socket=env.path("odd.sock"))
    e = start_stored(env, stored_xml(backup_uuid(inc), srv))
    assert_byte_exact(nbd_copy(srv.uri("vda"), env.path("got.raw")), "raw", at_inc, "raw")
    assert lib.virDomainBackupFinishJob(e, 0) == 0
