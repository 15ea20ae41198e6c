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
removed, while the secret is missing); instant restore, export,
compression with encryption and raw targets with encryption refused."""

import os
import subprocess
import uuid as uuidlib

import pytest

from conftest import (CREATE_WAIT, MiB, Nbd, RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED, _decl,
                      backing_chain,
                      backup_uuid, count_backups, create_fails, delete, disk_element,
                      expect_error, img_info, lib, lookup_domain, restore, restore_fails,
                      restore_xml_for, run, sha256, virt)
from ctypes import c_int, c_uint, c_void_p

libvirt = pytest.importorskip("libvirt")

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
VIR_ERR_CONFIG_UNSUPPORTED = 67
VIR_ERR_NO_SECRET = 66
VIR_ERR_NO_SUPPORT = 3
FILES_ONLY = 1 << 4
INSTANT = 1 << 2
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

    # Instant restore and export of an encrypted backup: not yet.
    restore_fails(restore_xml_for(u1, domain="lvb-pytest-no-" + u1[:8]),
                  RESTORE_NEW_DOMAIN | INSTANT, VIR_ERR_NO_SUPPORT, "encrypted")
    sock = Nbd(socket=env.path("nbd.sock"))
    assert lib.virDomainBackupStartUnmanaged(
        None, f"<domainbackup><uuid>{u1}</uuid>{sock.server_xml()}</domainbackup>".encode(),
        0) is None
    expect_error(VIR_ERR_NO_SUPPORT, "encrypted")

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
