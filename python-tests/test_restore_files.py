"""VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY: a backup's disks written to image
files, no domain touched (the backup's own domain may be gone), no
hypervisor connection needed; and the same for RestoreUnmanaged. The last
test runs the restore with no libvirt daemon reachable at all (a mount
namespace hides /run/libvirt) under strace, and checks it never tried to
connect."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import (HERE, K64, MiB, RESTORE_NEW_DOMAIN, RESTORE_REWRITE_EXISTING_DISK,
                      SUBPROCESS_PRELUDE, VIR_ERR_INVALID_ARG, VIR_ERR_OPERATION_INVALID,
                      VIR_ERR_XML_ERROR, assert_byte_exact, backup_uuid, backup_xml_for, chain_with_branch,
                      domain_definition, img_info, lib, last_error, restore, restore_fails, restore_xml_for,
                      sha256, virt, write_disk)

FILES_ONLY = 1 << 4
INSTANT = 1 << 2
START = 1 << 3
REWRITE = RESTORE_REWRITE_EXISTING_DISK


def files_xml(uuid, disks=None, target_dir=None):
    """A FILES_ONLY document: `disks` maps a disk to (path or None, format or None)."""
    return restore_xml_for(uuid, disks=disks, target_dir=target_dir)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_every_backup_of_a_chain_to_files_domain_untouched(env, fmt):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, fmt)
    write_disk(h.src, fmt, [(0, 4 * MiB, 0x66)])
    disk_now, definition = sha256(h.src), domain_definition(h.dom)
    for t in (leaf, full, br, tip, mid):
        for out_fmt in ("qcow2", "raw"):
            out = env.path(f"{t.uuid}.{out_fmt}")
            restore(files_xml(t.uuid, {"vda": (out, out_fmt)}), FILES_ONLY)
            assert img_info(out)["format"] == out_fmt
            assert_byte_exact(out, out_fmt, t.copy, fmt)
    # Neither the domain's disk nor its definition moved.
    assert sha256(h.src) == disk_now
    assert domain_definition(h.dom) == definition


def test_target_dir_gives_disk_dot_format_for_each_disk(env):
    disks = [("vda", env.disk("a.raw", 8 * MiB), "raw"),
             ("vdb", env.disk("b.qcow2", 4 * MiB, "qcow2"), "qcow2")]
    dom = env.domain(disks=disks)
    copies = {d: env.snapshot(p, f"{d}-copy.{f}") for d, p, f in disks}
    b = env.backup(dom, backup_xml_for(env.targets("bk", ["vda", "vdb"])))
    uuid = backup_uuid(b)
    out = env.path("out")
    os.mkdir(out)
    # vdb raw through its <driver>, vda qcow2 by default.
    restore(files_xml(uuid, {"vda": (None, None), "vdb": (None, "raw")}, target_dir=out),
            FILES_ONLY)
    assert sorted(os.listdir(out)) == ["vda.qcow2", "vdb.raw"]
    assert_byte_exact(os.path.join(out, "vda.qcow2"), "qcow2", copies["vda"], "raw")
    assert_byte_exact(os.path.join(out, "vdb.raw"), "raw", copies["vdb"], "qcow2")
    # Without <disks>: every disk of the backup.
    every = env.path("every")
    os.mkdir(every)
    restore(files_xml(uuid, target_dir=every), FILES_ONLY)
    assert sorted(os.listdir(every)) == ["vda.qcow2", "vdb.qcow2"]
    assert_byte_exact(os.path.join(every, "vda.qcow2"), "qcow2", copies["vda"], "raw")
    # One disk only, to its own file, the folder given too.
    one = env.path("only-vdb.qcow2")
    restore(files_xml(uuid, {"vdb": (one, None)}, target_dir=out), FILES_ONLY)
    assert_byte_exact(one, "qcow2", copies["vdb"], "qcow2")


def test_existing_file_needs_rewrite_then_is_rewritten(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "qcow2")
    out = env.path("out.qcow2")
    restore(files_xml(tip.uuid, {"vda": (out, None)}), FILES_ONLY)
    before = env.files()
    restore_fails(files_xml(full.uuid, {"vda": (out, None)}), FILES_ONLY,
                  VIR_ERR_OPERATION_INVALID, "exists", "REWRITE_EXISTING_DISK")
    assert env.files() == before
    # Same format and size: rewritten in place to the older point in time.
    restore(files_xml(full.uuid, {"vda": (out, None)}), FILES_ONLY | REWRITE)
    assert_byte_exact(out, "qcow2", full.copy, "qcow2")
    # Another format: replaced whole.
    restore(files_xml(br.uuid, {"vda": (out, "raw")}), FILES_ONLY | REWRITE)
    assert img_info(out)["format"] == "raw"
    assert_byte_exact(out, "raw", br.copy, "qcow2")


def test_refusals_touch_nothing(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "raw")
    out = env.path("x.qcow2")
    before = env.files()
    cases = [
        # No target for the disk.
        (files_xml(leaf.uuid), FILES_ONLY, VIR_ERR_INVALID_ARG, "needs a <target file>"),
        # A file of the backup's own chain (of any backup), even with REWRITE.
        (files_xml(leaf.uuid, {"vda": (mid.target, None)}), FILES_ONLY | REWRITE,
         VIR_ERR_INVALID_ARG, "is a file of a backup in the catalog"),
        (files_xml(leaf.uuid, {"vda": (leaf.target, None)}), FILES_ONLY | REWRITE,
         VIR_ERR_INVALID_ARG, "is a file of a backup in the catalog"),
        # A folder that does not exist.
        (files_xml(leaf.uuid, target_dir=env.path("nope")), FILES_ONLY,
         VIR_ERR_INVALID_ARG, "not a folder"),
        (files_xml(leaf.uuid, {"vda": (env.path("nope/x.qcow2"), None)}), FILES_ONLY,
         VIR_ERR_INVALID_ARG, "does not exist"),
        # A disk the backup does not have.
        (files_xml(leaf.uuid, {"vdz": (out, None)}), FILES_ONLY, VIR_ERR_INVALID_ARG, "vdz"),
        # <target dir> is only for FILES_ONLY; FILES_ONLY makes no domain.
        (files_xml(leaf.uuid, target_dir=env.tmp), REWRITE, VIR_ERR_INVALID_ARG,
         "only for VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY"),
        (files_xml(leaf.uuid, {"vda": (out, None)}), FILES_ONLY | RESTORE_NEW_DOMAIN,
         VIR_ERR_INVALID_ARG, "mutually exclusive"),
        (files_xml(leaf.uuid, {"vda": (out, None)}), FILES_ONLY | START,
         VIR_ERR_INVALID_ARG, "mutually exclusive"),
        (files_xml(leaf.uuid, {"vda": (out, None)}), FILES_ONLY | INSTANT,
         VIR_ERR_INVALID_ARG, "mutually exclusive"),
        (f"<domainbackup><uuid>{leaf.uuid}</uuid><target file='/x'/></domainbackup>",
         FILES_ONLY, VIR_ERR_XML_ERROR, "unknown attribute 'file' in <target>"),
        (files_xml(leaf.uuid, {"vda": (out, None)}), 1 << 9, VIR_ERR_INVALID_ARG,
         "unsupported flags (0x200)"),
    ]
    for xml, flags, code, frag in cases:
        restore_fails(xml, flags, code, frag)
        assert env.files() == before, (xml, flags)


def test_backup_of_a_domain_that_no_longer_exists(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "qcow2")
    assert virt.virDomainUndefine(h.dom.ptr) == 0
    out = env.path("gone.raw")
    restore(files_xml(tip.uuid, {"vda": (out, "raw")}), FILES_ONLY)
    assert_byte_exact(out, "raw", tip.copy, "qcow2")


def test_restore_unmanaged_files_only_leaves_the_domain_alone(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "qcow2")
    definition, disk_now = domain_definition(h.dom), sha256(h.src)
    out = env.path("um")
    os.mkdir(out)
    # The disk name is only the file's name: the domain has no 'sdz'. A
    # caller-named source states its format and has no backing file.
    xml = (f"<domainbackup><target dir='{out}'/><disks><disk name='sdz'>"
           f"<source file='{leaf.copy}'><driver type='qcow2'/></source><driver type='raw'/>"
           "</disk></disks></domainbackup>")
    assert lib.virDomainBackupRestoreUnmanaged(h.dom, xml.encode(), FILES_ONLY) == 0, last_error()
    assert_byte_exact(os.path.join(out, "sdz.raw"), "raw", leaf.copy, "qcow2")
    assert domain_definition(h.dom) == definition and sha256(h.src) == disk_now
    # Its own source is never a target.
    bad = (f"<domainbackup><disks><disk name='vda'><source file='{leaf.copy}'>"
           f"<driver type='qcow2'/></source><target file='{leaf.copy}'/></disk></disks>"
           "</domainbackup>")
    assert lib.virDomainBackupRestoreUnmanaged(h.dom, bad.encode(), FILES_ONLY | REWRITE) == -1
    assert last_error()[0] == VIR_ERR_INVALID_ARG


# ------------------------------------------------ no libvirt daemon at all
CHILD = """
    # Runs with /run/libvirt hidden: no daemon can be reached.
    rc = lib.virDomainBackupRestore({xml!r}.encode(), {flags})
    assert rc == 0, last_error()
    # RestoreUnmanaged needs a domain pointer: the in-process test driver
    # gives one without any daemon.
    conn = virt.virConnectOpen(b"test:///default")
    assert conn
    dom = virt.virDomainLookupByName(conn, b"test")
    assert dom
    rc = lib.virDomainBackupRestoreUnmanaged(dom, {uxml!r}.encode(), {flags})
    assert rc == 0, last_error()
    # And into a test-driver domain's own disk (not FILES_ONLY).
    own = virt.virDomainDefineXML(conn, domain_xml("nodaemon", [("vda", {own!r}, "raw")]).encode())
    assert own
    xml = ("<domainbackup><disks><disk name='vda'><source file='{inc}'>"
           "<driver type='{fmt}'/></source></disk></disks></domainbackup>")
    rc = lib.virDomainBackupRestoreUnmanaged(own, xml.encode(), {rewrite})
    assert rc == 0, last_error()
    print("restored")
"""


def test_files_only_with_no_libvirtd_reachable(qenv):
    """A backup of a QEMU domain of qemu:///system, the domain then
    undefined; the restore runs in a child in its own mount namespace where
    an empty tmpfs covers /run/libvirt (the shared daemon keeps running for
    everybody else), under strace: it succeeds and no connect() ever aimed
    at a libvirt socket."""
    env = qenv
    dom = env.qemu_domain(size=32 * MiB, start=False)
    (disk, src, fmt), = dom.disks
    full = env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    write_disk(src, fmt, [(5 * MiB, 3 * K64, 0x5E)])
    want = env.snapshot(src, "want.qcow2")
    inc = env.backup(dom, backup_xml_for({"vda": env.path("inc.qcow2")},
                                         parent=backup_uuid(full)))
    assert virt.virDomainUndefine(dom.ptr) == 0
    out = env.path("out")
    os.mkdir(out)
    xml = files_xml(backup_uuid(inc), target_dir=out)
    # Caller-named sources state their format and have no backing file:
    # the flat copy of the disk at incremental time.
    uxml = (f"<domainbackup><disks><disk name='vda'><source file='{want}'><driver type='{fmt}'/>"
            "</source>"
            f"<target file='{out}/unmanaged.raw'/><driver type='raw'/></disk></disks>"
            "</domainbackup>")
    own = env.path("own.raw")
    with open(own, "wb") as f:
        f.truncate(32 * MiB)
    code = SUBPROCESS_PRELUDE + textwrap.dedent(CHILD.format(
        xml=xml, uxml=uxml, flags=FILES_ONLY, own=own, inc=want, fmt=fmt, rewrite=REWRITE))
    trace = env.path("strace.log")
    script = (
        "set -e; mount -t tmpfs none /run/libvirt; "
        # The proof that nothing is reachable here.
        "if virsh -q -c qemu:///system uri >/dev/null 2>&1; then echo REACHABLE; exit 3; fi; "
        f'exec strace -f -qq -e trace=connect -o {trace} "$0" -c "$1"')
    child_env = dict(os.environ, LIBVIRT_BACKUP_DIR=env.catalog, PYTHONPATH=HERE)
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, sys.executable, code],
                       env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    assert r.returncode == 0 and "restored" in r.stdout, (r.stdout, r.stderr)
    with open(trace) as f:
        connects = [line for line in f if "connect(" in line]
    assert not [c for c in connects if "libvirt" in c], connects
    assert_byte_exact(os.path.join(out, "vda.qcow2"), "qcow2", want, fmt)
    assert_byte_exact(os.path.join(out, "unmanaged.raw"), "raw", want, fmt)
    assert_byte_exact(own, "raw", want, fmt)
    # The shared daemon was never disturbed.
    assert virt.virConnectIsAlive(env.qemu) == 1
