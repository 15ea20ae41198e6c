"""VIR_DOMAIN_BACKUP_RESTORE_INSTANT (with START): disks restored as thin
qcow2 overlays on the backup's own chain, the domain defined (and started)
at once; the backup never modified while the restored guest writes; the
backup and its ancestors pinned (Delete refused, <pinnedby> in the XML)
until virsh blockpull flattens the disk or the domain goes."""

import os
import subprocess
import sys

import pytest

from conftest import (K64, hmp, MiB, RESTORE_NEW_DOMAIN, VIR_ERR_INVALID_ARG,
                      SUBPROCESS_PRELUDE, VIR_ERR_OPERATION_INVALID, Domain, assert_byte_exact, backing_chain,
                      backup_uuid, backup_xml_for, chain_with_branch, delete, domain_definition,
                      domain_disks, expect_error, get_xml, img_info, lib, lookup_domain, make_disk,
                      qemu_io, restore, restore_fails, restore_xml_for, sha256, target_of, virt,
                      write_disk, xml_tree)

INSTANT = 1 << 2
START = 1 << 3
NEW = RESTORE_NEW_DOMAIN
DELETE_ALL_CHILDREN = 1 << 1


def instant_xml(uuid, name=None, disks=None):
    return restore_xml_for(uuid, disks=disks or None, domain=name)


def pinned_by(backup):
    return [(p.get("domain"), p.get("disk")) for p in xml_tree(backup).iter("pinnedby")]


def delete_fails(backup, flags, code, *fragments):
    assert lib.virDomainBackupDelete(backup, flags) == -1, "delete succeeded"
    return expect_error(code, *fragments)


def test_new_domain_on_overlays_pinned_until_undefined(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "qcow2")
    name = env.expect_domain("pytest-instant-" + os.urandom(4).hex())
    digests = {t.target: sha256(t.target) for t in h.taken}
    restore(instant_xml(leaf.uuid, name), NEW | INSTANT)
    overlay = env.path(f"{name}-vda.qcow2")
    new = lookup_domain(env.conn, name)
    assert new
    try:
        assert domain_disks(new) == {"vda": (overlay, "qcow2")}
    finally:
        virt.virDomainFree(new)
    # A thin overlay on the backup's own file, its format named.
    info = img_info(overlay)
    assert info["backing-filename"] == leaf.target
    assert info["backing-filename-format"] == "qcow2"
    assert os.path.getsize(overlay) < 1 * MiB
    assert backing_chain(overlay)[:2] == [overlay, leaf.target]
    assert_byte_exact(overlay, "qcow2", leaf.copy, "qcow2")
    # Pinned: leaf and its ancestors, not its children nor the branch.
    assert pinned_by(leaf.handle) == [(name, "vda")]
    assert pinned_by(full.handle) == [(name, "vda")]
    assert pinned_by(tip.handle) == [] and pinned_by(br.handle) == []
    for t, flags in ((leaf, 0), (mid, 0), (full, 0), (full, DELETE_ALL_CHILDREN)):
        delete_fails(t.handle, flags, VIR_ERR_OPERATION_INVALID, name, "'vda'", "in use")
    # Writes into the restored disk go to the overlay only.
    qemu_io(overlay, "qcow2", "write -P 0x99 1M 64k")
    assert {p: sha256(p) for p in digests} == digests
    # The tip (not read by the overlay) can go.
    delete(tip.handle)
    # Once the domain is gone the pin is dropped at the next look.
    new = lookup_domain(env.conn, name)
    assert virt.virDomainUndefine(new) == 0
    virt.virDomainFree(new)
    assert pinned_by(leaf.handle) == []
    delete(full.handle, DELETE_ALL_CHILDREN)


def test_into_own_shut_off_domain_keeps_its_file(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "raw")
    disk_now = sha256(h.src)
    restore(instant_xml(mid.uuid), INSTANT)
    (path, fmt), = domain_disks(h.dom.ptr).values()
    assert fmt == "qcow2" and path != h.src
    assert os.path.basename(path) == f"{h.dom.name}-vda-instant-{mid.uuid}.qcow2"
    assert img_info(path)["backing-filename"] == mid.target
    assert_byte_exact(path, "qcow2", mid.copy, "raw")
    assert sha256(h.src) == disk_now
    assert pinned_by(mid.handle) == [(h.dom.name, "vda")]
    delete_fails(full.handle, 0, VIR_ERR_OPERATION_INVALID, h.dom.name)
    # Flattened while shut off (the overlay takes in its backing chain):
    # the pin goes by itself, the data stays.
    subprocess.run(["qemu-img", "rebase", "-q", "-b", "", path], check=True)
    assert pinned_by(mid.handle) == []
    delete(full.handle, DELETE_ALL_CHILDREN)
    assert_byte_exact(path, "qcow2", mid.copy, "raw")


def test_refusals_leave_nothing(env):
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "qcow2")
    name = env.expect_domain("pytest-instant-" + os.urandom(4).hex())
    taken = env.path("taken.qcow2")
    open(taken, "w").close()
    before, definition = env.files(), domain_definition(h.dom)
    cases = [
        (instant_xml(leaf.uuid, name, {"vda": (None, "raw")}), NEW | INSTANT,
         VIR_ERR_INVALID_ARG, "qcow2"),
        (instant_xml(leaf.uuid, name, {"vda": (taken, None)}), NEW | INSTANT,
         VIR_ERR_OPERATION_INVALID, "exists"),
        (instant_xml(leaf.uuid, name, {"vda": (env.path("no/x.qcow2"), None)}), NEW | INSTANT,
         VIR_ERR_INVALID_ARG, "does not exist"),
        (instant_xml(leaf.uuid, h.dom.name), NEW | INSTANT, VIR_ERR_OPERATION_INVALID,
         "already exists"),
        (instant_xml(leaf.uuid, name, {"vdz": (None, None)}), NEW | INSTANT,
         VIR_ERR_INVALID_ARG, "vdz"),
    ]
    for xml, flags, code, frag in cases:
        restore_fails(xml, flags, code, frag)
        assert env.files() == before
        assert lookup_domain(env.conn, name) is None
    assert domain_definition(h.dom) == definition
    assert pinned_by(leaf.handle) == []


# ------------------------------------------------ qemu:///system, running
def test_instant_start_guest_writes_blockpull_releases_pin(qenv):
    env = qenv
    dom = env.qemu_domain(size=64 * MiB, start=False,
                          writes=[(0, 2 * MiB, 0x11), (40 * MiB, 1 * MiB, 0x12)])
    (disk, src, fmt), = dom.disks
    full = env.backup(dom, backup_xml_for({"vda": env.path("full.qcow2")}))
    write_disk(src, fmt, [(8 * MiB, 3 * K64, 0x13)])
    inc = env.backup(dom, backup_xml_for({"vda": env.path("inc.qcow2")},
                                         parent=backup_uuid(full)))
    at_inc = env.snapshot(src, "at-inc.qcow2")
    files = [env.path("full.qcow2"), env.path("inc.qcow2")]
    digests = {p: sha256(p) for p in files}
    name = env.expect_domain("lvb-pytest-instant-" + os.urandom(4).hex(), conn=env.qemu)

    # How fast an instant restore is: bench/instant_restore.py (make bench).
    restore(instant_xml(backup_uuid(inc), name), NEW | INSTANT | START)
    ptr = lookup_domain(env.qemu, name)
    assert ptr
    new = Domain(ptr, name, [], env.qemu, "qemu")
    env._defined.append(ptr)
    assert new.active(), "START did not start the domain"
    overlay = env.path(f"{name}-vda.qcow2")
    # Nothing copied: the new disk is an overlay on the backup's chain.
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", overlay],
                          stdout=subprocess.PIPE, text=True, check=True).stdout
    assert "backing-filename" in info, info

    # The guest writes through the running restored domain.
    hmp(name, "write -P 0xcd 16M 1M")
    hmp(name, "write -P 0xce 0 64k")
    qemu_io(at_inc, "qcow2", "write -P 0xcd 16M 1M", "write -P 0xce 0 64k")
    assert {p: sha256(p) for p in files} == digests, "the backup changed"
    # Through the overlay, the disk is the backup plus the guest's writes.
    r = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2",
                        overlay, at_inc], stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stdout

    assert pinned_by(inc) == [(name, "vda")] and pinned_by(full) == [(name, "vda")]
    delete_fails(full, 0, VIR_ERR_OPERATION_INVALID, name, "'vda'")
    delete_fails(inc, 0, VIR_ERR_OPERATION_INVALID, name, "'vda'")

    # Flatten while it runs: the overlay then holds everything.
    subprocess.run(["virsh", "-c", "qemu:///system", "blockpull", name, "vda", "--wait"],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert new.active()
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", overlay],
                          stdout=subprocess.PIPE, text=True, check=True).stdout
    assert "backing-filename" not in info
    assert pinned_by(inc) == [] and pinned_by(full) == []
    delete(full, DELETE_ALL_CHILDREN)
    assert not os.path.exists(files[0]) and not os.path.exists(files[1])
    # The running guest still reads its data, now all in the overlay.
    hmp(name, "read -P 0x13 8M 192k")
    hmp(name, "read -P 0xcd 16M 1M")
    hmp(name, "read -P 0x12 40M 1M")
    r = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2",
                        overlay, at_inc], stdout=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stdout


def killed_restore(env, name, backup, point):
    """Run an instant restore as a new domain in a child process of the
    test build that kills itself (SIGKILL) at the named stop `point`."""
    code = (SUBPROCESS_PRELUDE + f"rc = lib.virDomainBackupRestore("
            f"{instant_xml(backup_uuid(backup), name)!r}.encode(), {NEW | INSTANT})\n"
            "print('survived', rc)\n")
    r = subprocess.run([sys.executable, "-c", code],
                       env=dict(os.environ, LIBVIRT_BACKUP_DIR=env.catalog,
                                LIBVIRT_BACKUP_TEST_STOP=point),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert "survived" not in r.stdout, (r.stdout, r.stderr)


def test_killed_midway_leaves_no_domain_and_no_overlay(qenv):
    """The restoring process is killed (SIGKILL, at a stop point of the test
    build) once the first overlay and its pin exist: no domain is defined, and the next process that opens the
    catalog removes the overlay; the stale pin is dropped when read."""
    env = qenv
    disks = [("vda", env.disk("k-vda.qcow2", 8 * MiB, "qcow2"), "qcow2"),
             ("vdb", env.disk("k-vdb.qcow2", 8 * MiB, "qcow2"), "qcow2")]
    dom = env.qemu_domain(disks=disks, start=False)
    b = env.backup(dom, backup_xml_for({"vda": env.path("b-vda.qcow2"),
                                        "vdb": env.path("b-vdb.qcow2")}))
    name = env.expect_domain("lvb-pytest-killed-" + os.urandom(4).hex(), conn=env.qemu)
    killed_restore(env, name, b, "instant-pin-written")
    overlays = [env.path(f"{name}-{d}.qcow2") for d in ("vda", "vdb")]
    assert os.path.exists(overlays[0]), "killed too early to test anything"
    assert lookup_domain(env.qemu, name) is None
    # Any call that opens the catalog cleans up; the pin goes when read.
    again = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert again
    lib.virDomainBackupFree(again)
    assert not any(os.path.exists(p) for p in overlays)
    assert pinned_by(b) == []
    assert [n for n in os.listdir(env.catalog) if n.startswith(".restoring")] == []
    delete(b)


def test_killed_after_the_definition_keeps_the_domain_whole(qenv):
    """Killed right after libvirt defined the domain, before the note is
    removed: the next sweep finds the domain
    named in the note using the overlays and keeps them; the domain starts
    and reads the backup."""
    env = qenv
    dom = env.qemu_domain(size=16 * MiB, start=False, writes=[(0, 1 * MiB, 0x3C)])
    (disk, src, fmt), = dom.disks
    b = env.backup(dom, backup_xml_for({"vda": env.path("b.qcow2")}))
    name = env.expect_domain("lvb-pytest-killed-" + os.urandom(4).hex(), conn=env.qemu)
    killed_restore(env, name, b, "instant-defined")
    overlay = env.path(f"{name}-vda.qcow2")
    ptr = lookup_domain(env.qemu, name)
    assert ptr, "killed before the definition"
    env._defined.append(ptr)
    assert [n for n in os.listdir(env.catalog) if n.startswith(".restoring")]
    again = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert again
    lib.virDomainBackupFree(again)
    assert [n for n in os.listdir(env.catalog) if n.startswith(".restoring")] == []
    assert os.path.exists(overlay)
    assert pinned_by(b) == [(name, "vda")]
    new = Domain(ptr, name, [], env.qemu, "qemu")
    new.start()
    hmp(name, "read -P 0x3c 0 1M")


def test_start_after_a_full_restore_and_an_instant_one(env):
    """START with a copying restore (NEW_DOMAIN) and with INSTANT into the
    own shut-off domain: each domain runs when the call returns."""
    h, (full, mid, leaf, tip, br) = chain_with_branch(env, "qcow2")
    name = env.expect_domain("pytest-start-" + os.urandom(4).hex())
    restore(instant_xml(mid.uuid, name), NEW | START)
    new = lookup_domain(env.conn, name)
    assert new and virt.virDomainIsActive(new) == 1
    assert_byte_exact(env.path(f"{name}-vda.qcow2"), "qcow2", mid.copy, "qcow2")
    virt.virDomainDestroy(new)
    virt.virDomainFree(new)
    restore(instant_xml(tip.uuid), INSTANT | START)
    assert h.dom.active()
    virt.virDomainDestroy(h.dom.ptr)


# ------------------------------------------------ paths of any spelling
def xml_attr(s):
    """`s` as an attribute value between single quotes: white space other
    than the space as character references, which XML keeps."""
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("'", "&apos;"),
                 ('"', "&quot;"), ("\n", "&#10;"), ("\t", "&#9;"), ("\r", "&#13;")):
        s = s.replace(a, b)
    return s


# A letter qemu-img's JSON escapes as \u00fc, a quote and a backslash it
# escapes, spaces; and a line end.
ODD_NAMES = ['f\u00fcr "q" \\ b', "two\nlines \u00fc"]


@pytest.mark.parametrize("odd", ODD_NAMES, ids=["quote-backslash-umlaut", "line-end"])
def test_pins_hold_on_paths_of_any_spelling(env, monkeypatch, odd):
    """Regression: an instant restore of a backup whose files (the catalog's
    own folder, a target given, the overlay) have a name with a non-ASCII
    letter, a quote, a backslash, spaces or a line end records its pin: the
    chain qemu-img reports is read as JSON, not scanned for quotes. Delete
    of the backup or its parent is refused while the pin holds. (libvirt
    writes a line end in a domain's disk path as is, which any XML reader
    reads back as a space: the domain's files have none.)"""
    folder = env.path(odd)
    os.mkdir(folder)
    catalog = os.path.join(folder, "catalog " + odd)
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", catalog)
    env.catalog = catalog
    domain_folder = env.path(odd.replace("\n", " "))
    os.makedirs(domain_folder, exist_ok=True)
    src = make_disk(os.path.join(domain_folder, f"disk {odd}.qcow2".replace("\n", " ")),
                    8 * MiB, "qcow2", [(0, 1 * MiB, 0x5C)])
    dom_name = "pytest-odd-" + os.urandom(4).hex()
    ptr = virt.virDomainDefineXML(env.conn, (
        f"<domain type='test'><name>{dom_name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{xml_attr(src)}'/>"
        "<target dev='vda'/></disk></devices></domain>").encode())
    assert ptr
    env._defined.append(ptr)
    dom = Domain(ptr, dom_name, [("vda", src, "qcow2")])
    full = env.backup(dom, "<domainbackup/>")  # the default target, in the catalog
    full_target = target_of(full)
    assert full_target.startswith(catalog)
    write_disk(src, "qcow2", [(2 * MiB, K64, 0x5D)])
    inc_target = os.path.join(folder, f"inc {odd}.qcow2")
    inc = env.backup(dom, (
        f"<domainbackup><parent><uuid>{backup_uuid(full)}</uuid></parent><disks>"
        f"<disk name='vda'><target file='{xml_attr(inc_target)}'/></disk>"
        "</disks></domainbackup>"))
    assert target_of(inc) == inc_target
    assert backing_chain(inc_target) == [inc_target, full_target]

    name = env.expect_domain("pytest-instant-odd-" + os.urandom(4).hex())
    overlay = os.path.join(domain_folder, f"overlay {odd}.qcow2".replace("\n", " "))
    restore((f"<domainbackup><uuid>{backup_uuid(inc)}</uuid><domain name='{name}'/>"
             f"<disks><disk name='vda'><target file='{xml_attr(overlay)}'/></disk>"
             "</disks></domainbackup>"), NEW | INSTANT)
    assert backing_chain(overlay) == [overlay, inc_target, full_target]
    new = lookup_domain(env.conn, name)
    assert new
    try:
        assert domain_disks(new) == {"vda": (overlay, "qcow2")}
    finally:
        virt.virDomainFree(new)
    assert pinned_by(inc) == [(name, "vda")]
    assert pinned_by(full) == [(name, "vda")]
    for b, flags in ((inc, 0), (full, 0), (full, DELETE_ALL_CHILDREN)):
        delete_fails(b, flags, VIR_ERR_OPERATION_INVALID, name, "'vda'", "in use")
    assert os.path.exists(inc_target) and os.path.exists(full_target)
    # Once the domain is gone, the pin goes with it.
    new = lookup_domain(env.conn, name)
    assert virt.virDomainUndefine(new) == 0
    virt.virDomainFree(new)
    assert pinned_by(full) == []
    delete(full, DELETE_ALL_CHILDREN)
    assert not os.path.exists(inc_target) and not os.path.exists(full_target)


# ------------------------------------------------ cut short
def test_killed_while_writing_a_pin_leaves_no_temporary_file(env):
    """Regression: an instant restore killed while it wrote a pin left
    `.pins/.<pin>.xml.tmp`, which nothing removed. The next process that
    opens the catalog removes it, with the overlay (its restore note)."""
    dom = env.domain(fmt="qcow2", size=8 * MiB)
    b = env.backup(dom, backup_xml_for({"vda": env.path("b.qcow2")}))
    name = "pytest-killed-" + os.urandom(4).hex()
    killed_restore(env, name, b, "atomic-tmp-written#1")
    pins = os.path.join(env.catalog, ".pins")
    assert [n for n in os.listdir(pins) if n.endswith(".tmp")], "nothing left to test"
    assert os.path.exists(env.path(f"{name}-vda.qcow2"))
    again = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert again
    lib.virDomainBackupFree(again)
    assert os.listdir(pins) == []
    assert not os.path.exists(env.path(f"{name}-vda.qcow2"))
    assert [n for n in os.listdir(env.catalog) if n.startswith(".restoring")] == []
    delete(b)


def test_a_restore_failing_for_want_of_descriptors_leaves_nothing(env):
    """Regression: an instant restore that ran out of file descriptors
    (EMFILE) once its overlay was made, but before qemu-img had written it,
    left the empty overlay behind, and a retry was refused ('exists'). A
    child process tries with 0, 1, 2... free descriptors until the restore
    succeeds; after each failure nothing is left, and a retry with
    descriptors to spare succeeds."""
    dom = env.domain(fmt="qcow2", size=8 * MiB)
    b = env.backup(dom, backup_xml_for({"vda": env.path("b.qcow2")}))
    folder = env.path("overlays")
    os.mkdir(folder)
    code = SUBPROCESS_PRELUDE + f"""
import resource
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
for free_fds in range(60):
    name = "pytest-emfile-{os.urandom(4).hex()}-%d" % free_fds
    overlay = os.path.join({folder!r}, name + ".qcow2")
    xml = ("<domainbackup><uuid>{backup_uuid(b)}</uuid><domain name='%s'/><disks>"
           "<disk name='vda'><target file='%s'/></disk></disks></domainbackup>" % (name, overlay))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for fd in held[:free_fds]:
        os.close(fd)
    rc = lib.virDomainBackupRestore(xml.encode(), {NEW | INSTANT})
    err = last_error()
    for fd in held[free_fds:]:
        os.close(fd)
    if rc == 0:
        print("DONE", free_fds, flush=True)
        break
    print("FAILED", free_fds, os.path.exists(overlay), sorted(os.listdir({folder!r})),
          repr(err), flush=True)
    rc = lib.virDomainBackupRestore(xml.encode(), {NEW | INSTANT})
    print("RETRY", free_fds, rc, repr(last_error()), flush=True)
    os.unlink(overlay)
"""
    r = subprocess.run([sys.executable, "-c", code],
                       env=dict(os.environ, LIBVIRT_BACKUP_DIR=env.catalog),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines and lines[-1].startswith("DONE"), (r.stdout, r.stderr)
    failed = [line for line in lines if line.startswith("FAILED")]
    assert any("Too many open files" in line for line in failed), r.stdout
    for line in failed:
        assert line.split()[2:4] == ["False", "[]"], line
    for line in lines:
        if line.startswith("RETRY"):
            assert line.split()[2] == "0", line


def test_killed_restore_removes_only_what_it_noted_whatever_the_names(env):
    """Regression: a restore's note named one file a line, so an overlay
    whose name held a line end named two files, the second one anybody's:
    the sweep after a kill removed it. Paths in a note now end with a NUL."""
    dom = env.domain(fmt="qcow2", size=8 * MiB)
    b = env.backup(dom, backup_xml_for({"vda": env.path("b.qcow2")}))
    victim = env.path("victim.qcow2")
    with open(victim, "wb") as f:
        f.write(b"not the restore's")
    os.chmod(victim, 0o600)
    overlay = env.path("ov\n") + victim
    os.makedirs(os.path.dirname(overlay))
    name = "pytest-killed-" + os.urandom(4).hex()
    code = (SUBPROCESS_PRELUDE + "rc = lib.virDomainBackupRestore(" +
            repr(f"<domainbackup><uuid>{backup_uuid(b)}</uuid><domain name='{name}'/><disks>"
                 f"<disk name='vda'><target file='{xml_attr(overlay)}'/></disk>"
                 "</disks></domainbackup>") +
            f".encode(), {NEW | INSTANT})\nprint('survived', rc, last_error())\n")
    r = subprocess.run([sys.executable, "-c", code],
                       env=dict(os.environ, LIBVIRT_BACKUP_DIR=env.catalog,
                                LIBVIRT_BACKUP_TEST_STOP="instant-pin-written"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert "survived" not in r.stdout, (r.stdout, r.stderr)
    assert os.path.exists(overlay)
    again = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
    assert again
    lib.virDomainBackupFree(again)
    assert not os.path.exists(overlay)
    with open(victim, "rb") as f:
        assert f.read() == b"not the restore's"
