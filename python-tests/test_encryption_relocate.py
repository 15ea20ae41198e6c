"""Encrypted backups on "another host": a catalog holding an encrypted full
backup and its incremental (of a shut-off QEMU domain on qemu:///system,
both in the catalog's default folders) copied with `cp -a` as README,
"Moving a catalog", says, the original removed and LIBVIRT_BACKUP_DIR
pointed at the copy, and the secret undefined, as on a host that never had
it (records keep the secret's id, never its value). There Verify and a
files-only restore of either backup fail with VIR_ERR_NO_SECRET naming the
backup, the disk and the secret, and change nothing; once the other host's
admin defines a secret of the same UUID with the value `virsh
secret-get-value` printed on the first host, Verify passes and the
files-only restores are equal (qemu-img compare) to the disk as it was at
each backup."""

import base64
import os
import shutil
import subprocess
import uuid as uuidlib
from ctypes import c_int, c_uint, c_void_p

import pytest

from conftest import (MiB, _decl, backup_uuid, backup_xml_for, expect_error,
                      img_info, lib, restore, restore_fails, restore_xml_for, target_of,
                      write_disk)

libvirt = pytest.importorskip("libvirt")

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
VIR_ERR_NO_SECRET = 66
FILES_ONLY = 1 << 4
SIZE = 16 * MiB


def virsh(*args, stdin=None):
    p = subprocess.run(["virsh", "-q", "-c", "qemu:///system", *args], input=stdin,
                       capture_output=True, text=True)
    assert p.returncode == 0, f"virsh {args}: {p.stdout}{p.stderr}"
    return p.stdout


def lookup(env, uuid):
    """A handle through the catalog as it is now (a handle keeps the
    catalog it was made in)."""
    h = lib.virDomainBackupLookupByUUID(uuid.encode(), 0)
    assert h, lib.virDomainBackupGetLastErrorMessage()
    env._handles.append(h)
    return h


def cp_catalog(env, monkeypatch):
    """`cp -a` the catalog elsewhere, remove the original, point
    LIBVIRT_BACKUP_DIR at the copy."""
    old, new = env.catalog, env.path("other-host/catalog")
    os.makedirs(os.path.dirname(new), mode=0o700)
    subprocess.run(["cp", "-a", old, new], check=True)
    shutil.rmtree(old)
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", new)
    env.catalog = new
    return new


def files(env):
    """env.files(), but the moved catalog's lock files and job history too
    (env.files() knows them at the catalog's first place only)."""
    moved = os.path.relpath(env.catalog, env.tmp)
    return {p: h for p, h in env.files().items()
            if p != os.path.join(moved, ".lock")
            and not p.startswith((os.path.join(moved, ".history") + os.sep,
                                  os.path.join(moved, ".domain-locks") + os.sep))}


def same(restored, want):
    r = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", want, restored],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def secret_xml():
    """The XML of a persistent secret on qemu:///system (undefined at the
    end, whichever host the test pretends to be on)."""
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        pytest.skip("qemu:///system is not reachable")
    u = str(uuidlib.uuid4())
    xml = (f"<secret ephemeral='no' private='no'><uuid>{u}</uuid>"
           f"<usage type='volume'><volume>lvb-pytest-relocate-{u[:8]}</volume></usage>"
           "</secret>")
    yield u, xml
    try:
        conn.secretLookupByUUIDString(u).undefine()
    except libvirt.libvirtError:
        pass
    conn.close()


def test_relocated_encrypted_catalog_needs_its_secret_on_the_new_host(
        qenv, monkeypatch, secret_xml):
    env = qenv
    su, sxml = secret_xml
    xml_file = env.path("secret.xml")
    with open(xml_file, "w") as f:
        f.write(sxml)
    virsh("secret-define", xml_file)
    # Text, as QEMU takes a LUKS passphrase: random bytes in base64.
    key = base64.b64encode(os.urandom(32))
    virsh("secret-set-value", "--secret", su, "--base64", base64.b64encode(key).decode())
    # What the first host's admin keeps somewhere safe.
    kept = virsh("secret-get-value", su).strip()
    assert base64.b64decode(kept) == key

    vda = env.disk("rel-vda.qcow2", SIZE, "qcow2")
    dom = env.qemu_domain(disks=[("vda", vda, "qcow2")], start=False)
    enc = ("<disks><encryption format='luks'>"
           f"<secret type='passphrase' uuid='{su}'/></encryption></disks>")
    full = env.backup(dom, f"<domainbackup>{enc}</domainbackup>")
    u0 = backup_uuid(full)
    at0 = env.snapshot(vda, "at-full.qcow2")
    write_disk(vda, "qcow2", [(3 * MiB, 2 * MiB, 0x44), (11 * MiB, 64 * 1024, 0x45)])
    inc = env.backup(dom, backup_xml_for(parent=u0))  # the parent's secret
    u1 = backup_uuid(inc)
    at1 = env.snapshot(vda, "at-inc.qcow2")
    for h in (full, inc):
        t = target_of(h)
        assert t.startswith(env.catalog + "/"), t
        assert img_info(t).get("encrypted") is True

    new = cp_catalog(env, monkeypatch)
    # The other host: no such secret.
    virsh("secret-undefine", su)
    before = files(env)
    for u in (u0, u1):
        h = lookup(env, u)
        assert target_of(h).startswith(new + "/")
        assert lib.virDomainBackupVerify(h, 0) == -1
        expect_error(VIR_ERR_NO_SECRET, f"backup '{u}'", "disk 'vda'", su)
        out = env.path(f"nokey-{u}.qcow2")
        restore_fails(restore_xml_for(u, {"vda": (out, "qcow2")}), FILES_ONLY,
                      VIR_ERR_NO_SECRET, f"backup '{u}'", "disk 'vda'", su)
        assert not os.path.exists(out)
    assert files(env) == before, "a failed verify or restore changed files"

    # Its admin defines the secret again: same UUID, the kept value.
    virsh("secret-define", xml_file)
    virsh("secret-set-value", "--secret", su, "--base64", kept)
    for u, want in ((u0, at0), (u1, at1)):
        h = lookup(env, u)
        assert lib.virDomainBackupVerify(h, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
        out = env.path(f"restored-{u}.qcow2")
        restore(restore_xml_for(u, {"vda": (out, "qcow2")}), FILES_ONLY)
        same(out, want)
