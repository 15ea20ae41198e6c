"""Encrypted backups (<encryption format='luks'><secret type='passphrase'
uuid|usage/>): qcow2 images LUKS-encrypted as QEMU writes them, whose key
is a libvirt secret. A shut-off QEMU domain (qemu:///system, where libvirt
keeps secrets: the test driver has none) backed up in full and then
incrementally (inheriting the secret); each backup `qemu-img check` clean
and equal (qemu-img compare, with `--object secret` and `--image-opts`,
the incremental through its chain) to a copy of the disk taken when it
was made; no plaintext of a marker written in the disk in the image
bytes; GetXMLDesc shows the secret's id, the catalog never its value;
Verify passes; restores (files only, new domain) byte-exact; a changed
secret value ("wrong key") and a deleted secret (VIR_ERR_NO_SECRET) fail
clearly with nothing written or removed; a delete merges the encrypted
full into its child, which stays encrypted and exact (refused, nothing
removed, while the secret is missing); compression with encryption and
raw targets with encryption refused. Instant restore of an encrypted chain
(a new domain, started under TCG: libvirt hands QEMU every level's key,
the overlay encrypted too) and export of one (qemu-storage-daemon given
the keys through pipes, none on its command line), both byte-exact, and
an instant restore into the backup's own shut-off domain; both refused
with nothing left behind while the secret is missing, wrong, or binary
(which QEMU cannot take)."""

import json
import os
import subprocess
import uuid as uuidlib

import pytest

from conftest import (CREATE_WAIT, daemons_serving, hmp, MiB, Nbd, RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED, _decl,
                      Domain, assert_byte_exact, backing_chain,
                      backup_uuid, count_backups, create_fails, delete, disk_element,
                      expect_error, img_info, lib, lookup_domain, nbd_copy, nbd_reachable,
                      restore, restore_fails, restore_xml_for, run, sha256, virt, xml_tree)
from ctypes import c_int, c_uint, c_void_p

libvirt = pytest.importorskip("libvirt")

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
VIR_ERR_CONFIG_UNSUPPORTED = 67
VIR_ERR_NO_SECRET = 66
FILES_ONLY = 1 << 4
INSTANT = 1 << 2
START = 1 << 3
SIZE = 16 * MiB
MARKER = b"LVB-ENCRYPTION-MARKER-0123456789-plaintext-must-not-appear"
KEY = b"correct horse battery staple"


@pytest.fixture
def secret():
    """A libvirt secret on qemu:///system (not private: its owner reads it
    as `virsh secret-get-value` does), undefined when the test ends."""
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        pytest.skip("qemu:///system is not reachable")
    u = str(uuidlib.uuid4())
    usage = "lvb-pytest-key-" + u[:8]
    xml = (f"<secret ephemeral='yes' private='no'><uuid>{u}</uuid>"
           f"<usage type='volume'><volume>{usage}</volume></usage></secret>")
    s = conn.secretDefineXML(xml)
    s.setValue(KEY)

    class S:
        uuid = u

        def __init__(self):
            self.usage = usage
            self.obj = s

        def set(self, value):
            self.obj.setValue(value)

        def undefine(self):
            self.obj.undefine()

        def define_again(self):
            self.obj = conn.secretDefineXML(xml)
            self.obj.setValue(KEY)
    holder = S()
    yield holder
    try:
        holder.obj.undefine()
    except libvirt.libvirtError:
        pass
    conn.close()


def enc(secret_attr):
    return (f"<encryption format='luks'><secret type='passphrase' {secret_attr}/>"
            "</encryption>")


def xml(target, parent=None, extra="", per_disk=""):
    fmt = "raw" if target.endswith(".raw") else "qcow2"
    p = f"<parent><uuid>{parent}</uuid></parent>" if parent else ""
    return (f"<domainbackup>{p}<disks>{extra}<disk name='vda'><target file='{target}'/>"
            f"<driver type='{fmt}'/>{per_disk}</disk></disks></domainbackup>")


def marked_disk(env, name):
    """A qcow2 disk holding MARKER over and over in its first MiBs."""
    raw = env.path(name + ".raw")
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        f.write(MARKER * (2 * MiB // len(MARKER)))
        f.seek(9 * MiB)
        f.write(os.urandom(MiB))
    out = env.path(name)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])
    os.unlink(raw)
    return out


def opts(path, chain=False):
    o = f"driver=qcow2,file.filename={path},encrypt.key-secret=s0"
    return o + (",backing.encrypt.key-secret=s0" if chain else "")


def qemu_reads(path, want, chain=False):
    """qemu-img check clean and compare equal to `want` (qcow2), with the key."""
    obj = ["--object", "secret,id=s0,data=" + KEY.decode()]
    r = subprocess.run(["qemu-img", "check", *obj, "--image-opts", opts(path, chain)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0 and "No errors were found" in r.stdout, r.stdout
    r = subprocess.run(["qemu-img", "compare", *obj, "--image-opts", opts(path, chain),
                        f"driver=qcow2,file.filename={want}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout


def check_encrypted(b, target, want, secret_id, chain=False):
    info = img_info(target)
    assert info.get("encrypted") is True, info
    assert info["format-specific"]["data"]["encrypt"]["format"] == "luks"
    with open(target, "rb") as f:
        data = f.read()
    assert MARKER[:24] not in data, "plaintext in the image"
    qemu_reads(target, want, chain)
    e = disk_element(b).find("encryption")
    assert e is not None and e.get("format") == "luks"
    assert e.find("secret").get("uuid") == secret_id
    assert lib.virDomainBackupVerify(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()


def catalog_text(env):
    out = b""
    for root, _, files in os.walk(env.catalog):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out += fh.read()
    return out


def test_full_incremental_restore_wrong_key_delete(qenv, secret):
    env = qenv
    vda = marked_disk(env, "e-vda.qcow2")
    dom = env.qemu_domain(disks=[("vda", vda, "qcow2")], start=False)
    t0 = env.snapshot(vda, "t0.qcow2")
    full_t = env.path("full.qcow2")
    full = env.backup(dom, xml(full_t, extra=enc(f"uuid='{secret.uuid}'")))
    u0 = backup_uuid(full)
    check_encrypted(full, full_t, t0, secret.uuid)

    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 1M 2M", vda])
    t1 = env.snapshot(vda, "t1.qcow2")
    inc_t = env.path("inc.qcow2")
    inc = env.backup(dom, xml(inc_t, parent=u0))
    u1 = backup_uuid(inc)
    assert backing_chain(inc_t) == [inc_t, full_t]
    check_encrypted(inc, inc_t, t1, secret.uuid, chain=True)
    assert KEY not in catalog_text(env), "the key in the catalog"

    for u, want in ((u0, t0), (u1, t1)):
        out = env.path(f"out-{u}.qcow2")
        restore(restore_xml_for(u, {"vda": (out, "qcow2")}), FILES_ONLY)
        r = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", want, out])
        assert r.returncode == 0

    # Restore as a new domain: its disk written in clear from the chain.
    name = env.expect_domain(f"{dom.name}-restore-{u1[:8]}", env.qemu)
    restore(restore_xml_for(u1), RESTORE_NEW_DOMAIN)
    new = lookup_domain(env.qemu, name)
    assert new
    virt.virDomainFree(new)
    restored = env.path(f"{name}-vda.qcow2")
    r = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", t1, restored])
    assert r.returncode == 0
    os.unlink(restored)

    # Wrong key: Verify and restore fail, nothing written.
    secret.set(b"not the key")
    before = env.files()
    assert lib.virDomainBackupVerify(inc, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "wrong key")
    out = env.path("wrong.qcow2")
    restore_fails(restore_xml_for(u1, {"vda": (out, "qcow2")}), FILES_ONLY,
                  VIR_ERR_OPERATION_FAILED, "wrong key")
    assert not os.path.exists(out)
    assert env.files() == before

    # Deleted secret: no new backup, no restore, nothing written or removed.
    secret.undefine()
    n = count_backups(dom)
    create_fails(dom, xml(env.path("nokey.qcow2"), parent=u1), CREATE_WAIT,
                 VIR_ERR_NO_SECRET, secret.uuid)
    restore_fails(restore_xml_for(u0, {"vda": (out, "qcow2")}), FILES_ONLY,
                  VIR_ERR_NO_SECRET, secret.uuid)
    # A delete that must merge the full into its child reads both: refused,
    # nothing removed.
    assert lib.virDomainBackupDelete(full, 0) == -1
    expect_error(VIR_ERR_NO_SECRET, secret.uuid)
    assert count_backups(dom) == n
    assert env.files() == before
    secret.define_again()

    # The full deleted: merged into its child, still encrypted and exact.
    delete(full)
    assert backing_chain(inc_t) == [inc_t]
    check_encrypted(inc, inc_t, t1, secret.uuid)
    assert sha256(inc_t) != sha256(t1)


def test_usage_id_and_refusals(qenv, secret):
    env = qenv
    vda = marked_disk(env, "u-vda.qcow2")
    dom = env.qemu_domain(disks=[("vda", vda, "qcow2")], start=False)
    before = env.files()
    for doc, code, frag in (
            (xml(env.path("r.raw"), extra=enc(f"uuid='{secret.uuid}'")),
             VIR_ERR_CONFIG_UNSUPPORTED, "raw target cannot be encrypted"),
            (xml(env.path("c.qcow2"), extra="<compression type='zstd'/>"
                 + enc(f"uuid='{secret.uuid}'")),
             VIR_ERR_CONFIG_UNSUPPORTED, "stored in clear"),
            (xml(env.path("n.qcow2"), extra=enc(f"uuid='{uuidlib.uuid4()}'")),
             VIR_ERR_NO_SECRET, "secret not found")):
        create_fails(dom, doc, CREATE_WAIT, code, frag)
        assert count_backups(dom) == 0
        assert env.files() == before
    # A value QEMU could not take as a passphrase (not UTF-8 text).
    secret.set(b"\xff\x00binary key")
    create_fails(dom, xml(env.path("b.qcow2"), extra=enc(f"uuid='{secret.uuid}'")),
                 CREATE_WAIT, VIR_ERR_CONFIG_UNSUPPORTED, "is not text")
    assert count_backups(dom) == 0
    assert env.files() == before
    secret.set(KEY)
    t0 = env.snapshot(vda, "t0.qcow2")
    t = env.path("usage.qcow2")
    b = env.backup(dom, xml(t, per_disk=enc(f"usage='{secret.usage}'")))
    e = disk_element(b).find("encryption/secret")
    assert e.get("usage") == secret.usage
    qemu_reads(t, t0)
    assert lib.virDomainBackupVerify(b, 0) == 0


# Instant restore and export of encrypted backups.

OTHER_KEY = "an other key, for the incremental \u00fc"


@pytest.fixture
def other_secret():
    """A second volume secret (value OTHER_KEY), for a chain whose levels
    have different keys; undefined when the test ends."""
    conn = libvirt.open("qemu:///system")
    u = str(uuidlib.uuid4())
    s = conn.secretDefineXML(
        f"<secret ephemeral='yes' private='no'><uuid>{u}</uuid><usage type='volume'>"
        f"<volume>lvb-pytest-other-{u[:8]}</volume></usage></secret>")
    s.setValue(OTHER_KEY.encode())
    yield u
    try:
        s.undefine()
    except libvirt.libvirtError:
        pass
    conn.close()


def encrypted_chain(env, full_enc, inc_enc=""):
    """A QEMU domain's marked disk backed up in full (`full_enc`) then
    incrementally (`inc_enc`: its own <encryption>, else inherited), with
    copies of the disk at both times. Returns (dom, full, inc, t0, t1)."""
    vda = marked_disk(env, "a-vda.qcow2")
    dom = env.qemu_domain(disks=[("vda", vda, "qcow2")], start=False)
    t0 = env.snapshot(vda, "t0.qcow2")
    full = env.backup(dom, xml(env.path("full.qcow2"), extra=full_enc))
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 1M 2M", vda])
    t1 = env.snapshot(vda, "t1.qcow2")
    inc = env.backup(dom, xml(env.path("inc.qcow2"), parent=backup_uuid(full),
                              per_disk=inc_enc))
    return dom, full, inc, t0, t1


def disk_secrets(name):
    """[(file, secret uuid or None)] of the source and each <backingStore>
    level of the domain's vda, as libvirt keeps the definition."""
    import xml.etree.ElementTree as ET
    out = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", "--inactive", name],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    disk = ET.fromstring(out).find("devices/disk")
    levels, node = [], disk
    while node is not None and node.find("source") is not None:
        src = node.find("source")
        sec = src.find("encryption/secret")
        if sec is not None:
            assert src.find("encryption").get("format") == "luks"
        levels.append((src.get("file"), sec.get("uuid") if sec is not None else None))
        node = node.find("backingStore")
    return levels


def test_instant_restore_of_encrypted_chain_starts(qenv, secret):
    env = qenv
    # By usage id: the domain names the secret by its uuid.
    dom, full, inc, t0, t1 = encrypted_chain(env, enc(f"usage='{secret.usage}'"))
    full_t, inc_t = env.path("full.qcow2"), env.path("inc.qcow2")
    digests = {p: sha256(p) for p in (full_t, inc_t)}
    u1 = backup_uuid(inc)
    name = env.expect_domain("lvb-pytest-enc-" + os.urandom(4).hex(), conn=env.qemu)
    restore(restore_xml_for(u1, domain=name), RESTORE_NEW_DOMAIN | INSTANT | START)
    ptr = lookup_domain(env.qemu, name)
    assert ptr
    new = Domain(ptr, name, [], env.qemu, "qemu")
    env._defined.append(ptr)
    assert new.active(), "START did not start the domain: QEMU could not open the chain"
    overlay = env.path(f"{name}-vda.qcow2")
    # Every level's key named, the chain given whole.
    assert disk_secrets(name) == [(overlay, secret.uuid), (inc_t, secret.uuid),
                                  (full_t, secret.uuid)]
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", overlay],
                                     stdout=subprocess.PIPE, check=True).stdout)
    assert info.get("encrypted") is True, info
    assert info["backing-filename"] == inc_t
    # The guest writes the marker through QEMU: stored encrypted.
    pattern = env.path("marker.bin")
    with open(pattern, "wb") as f:
        f.write(MARKER * (65536 // len(MARKER) + 1))
    hmp(name, f"write -s {pattern} 6M 64k")
    run(["qemu-io", "-f", "qcow2", "-c", f"write -s {pattern} 6M 64k", t1])
    with open(overlay, "rb") as f:
        assert MARKER[:24] not in f.read(), "plaintext in the overlay"
    # Through its chain, with the key, the disk is the backup plus the
    # guest's write, byte for byte.
    chain = ",".join([f"driver=qcow2,file.filename={overlay},encrypt.key-secret=s0",
                      "backing.encrypt.key-secret=s0",
                      "backing.backing.encrypt.key-secret=s0"])
    r = subprocess.run(["qemu-img", "compare", "-U", "--object",
                        "secret,id=s0,data=" + KEY.decode(), "--image-opts", chain,
                        f"driver=qcow2,file.filename={t1}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
    assert {p: sha256(p) for p in digests} == digests, "the backup changed"
    # Pinned through the encrypted overlay's chain.
    for b in (inc, full):
        assert [(p.get("domain"), p.get("disk")) for p in xml_tree(b).iter("pinnedby")] \
            == [(name, "vda")]


def stored_export(uuid, sock):
    return lib.virDomainBackupStartUnmanaged(
        None, f"<domainbackup><uuid>{uuid}</uuid>{sock.server_xml()}</domainbackup>".encode(), 0)


def test_export_of_encrypted_chain(qenv, secret, other_secret):
    env = qenv
    # The levels have different keys: one secret object (pipe) each.
    dom, full, inc, t0, t1 = encrypted_chain(env, enc(f"uuid='{secret.uuid}'"),
                                             enc(f"uuid='{other_secret}'"))
    for i, (b, want) in enumerate(((inc, t1), (full, t0))):
        # Short: a socket's path must fit in 108 bytes.
        sock = Nbd(socket=env.path(f"e{i}.sock"))
        e = stored_export(backup_uuid(b), sock)
        assert e, lib.virDomainBackupGetLastErrorMessage()
        env._handles.append(e)
        pids = daemons_serving(sock.socket)
        assert len(pids) == 1, pids
        # The keys are nowhere on its command line nor in its environment.
        for what in ("cmdline", "environ"):
            with open(f"/proc/{pids[0]}/{what}", "rb") as f:
                text = f.read()
            assert KEY not in text and OTHER_KEY.encode() not in text, what
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            assert b"key-secret" in f.read()
        got = nbd_copy(sock.uri("vda"), env.path(f"got-{backup_uuid(b)}.raw"))
        assert_byte_exact(got, "raw", want, "qcow2")
        assert lib.virDomainBackupFinishJob(e, 0) == 0
        assert not nbd_reachable(sock.uri())
        assert daemons_serving(sock.socket) == []


def test_instant_restore_and_export_without_the_key_leave_nothing(qenv, secret):
    env = qenv
    dom, full, inc, t0, t1 = encrypted_chain(env, enc(f"uuid='{secret.uuid}'"))
    u0, u1 = backup_uuid(full), backup_uuid(inc)
    secret.undefine()
    before = env.files()
    name = "lvb-pytest-nokey-" + os.urandom(4).hex()
    env.expect_domain(name, conn=env.qemu)
    for flags in (RESTORE_NEW_DOMAIN | INSTANT | START, RESTORE_NEW_DOMAIN | INSTANT):
        restore_fails(restore_xml_for(u1, domain=name), flags, VIR_ERR_NO_SECRET,
                      secret.uuid, "'vda'", "secret not found")
        assert not lookup_domain(env.qemu, name)
        assert env.files() == before
    # The full's own key is the missing one: the message names that backup.
    restore_fails(restore_xml_for(u0, domain=name), RESTORE_NEW_DOMAIN | INSTANT,
                  VIR_ERR_NO_SECRET, f"backup '{u0}'", "'vda'")
    sock = Nbd(socket=env.path("nokey.sock"))
    for u in (u1, u0):
        assert stored_export(u, sock) is None
        expect_error(VIR_ERR_NO_SECRET, secret.uuid, "'vda'", "backup '")
        assert daemons_serving(sock.socket) == []
        assert not os.path.exists(sock.socket)
        assert env.files() == before
    # A wrong key, and a binary one QEMU could not take: refused alike,
    # before anything is made.
    secret.define_again()
    for value, code, frag in ((b"not the key", VIR_ERR_OPERATION_FAILED, "wrong key"),
                              (b"\xff\x00binary", VIR_ERR_CONFIG_UNSUPPORTED, "UTF-8")):
        secret.set(value)
        restore_fails(restore_xml_for(u1, domain=name), RESTORE_NEW_DOMAIN | INSTANT | START,
                      code, frag)
        assert not lookup_domain(env.qemu, name)
        assert stored_export(u1, sock) is None
        expect_error(code, frag)
        assert daemons_serving(sock.socket) == []
        assert env.files() == before
    # The key back: both work again.
    secret.set(KEY)
    e = stored_export(u1, sock)
    assert e, lib.virDomainBackupGetLastErrorMessage()
    env._handles.append(e)
    assert lib.virDomainBackupFinishJob(e, 0) == 0


def test_instant_restore_of_encrypted_backup_into_its_own_domain(qenv, secret):
    env = qenv
    dom, full, inc, t0, t1 = encrypted_chain(env, enc(f"uuid='{secret.uuid}'"))
    full_t = env.path("full.qcow2")
    u0 = backup_uuid(full)
    restore(restore_xml_for(u0), INSTANT | START)
    assert dom.active(), "START did not start the domain: QEMU could not open the chain"
    overlay = env.path(f"{dom.name}-vda-instant-{u0}.qcow2")
    assert disk_secrets(dom.name) == [(overlay, secret.uuid), (full_t, secret.uuid)]
    # Its disk, through QEMU's overlay, is the disk at the full backup.
    r = subprocess.run(["qemu-img", "compare", "-U", "--object",
                        "secret,id=s0,data=" + KEY.decode(), "--image-opts",
                        f"driver=qcow2,file.filename={overlay},encrypt.key-secret=s0,"
                        "backing.encrypt.key-secret=s0", f"driver=qcow2,file.filename={t0}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout
