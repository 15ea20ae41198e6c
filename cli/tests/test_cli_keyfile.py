"""`virt-backup create --encrypt-key-file FILE` (and `restore
--encrypt-key-file`) on qemu:///system: the file's bytes, as they are,
registered as one persistent libvirt secret whose usage id and UUID come
from the key's digest, found again by the next create; key files others
could read, symlinks, empty files, and a secret of the key's usage with
another value refused; the catalog copied to "another host" (`cp -a`,
the secret undefined) restores only once the key file is registered
there again, byte for byte."""

import base64
import glob
import json
import os
import shutil
import subprocess

import pytest

from test_cli import MiB, env, qemu_io, run, same, vb, vbj, virsh  # noqa: F401


def key_file(env, name, data, mode=0o600):
    p = env.path(name)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)
    os.chmod(p, mode)
    return p


def secrets_of_usage(usage):
    """UUIDs of the secrets `virsh secret-list` shows with `usage`."""
    out = virsh("secret-list").stdout
    return [line.split()[0] for line in out.splitlines() if usage in line.split()]


def undefine(uuid):
    virsh("secret-undefine", uuid, check=False)


def backups(dom):
    """The domain's backups, oldest first."""
    return [b["uuid"] for b in sorted(vbj("list", dom), key=lambda b: b["creation_time"])]


def reads_with_key_file(image, kf, want):
    """qemu-img opens `image` with the key file itself (`--object
    secret,file=`) and finds it equal to `want`."""
    obj = ["--object", f"secret,id=s0,file={kf}", "--image-opts"]
    opts = f"driver=qcow2,file.filename={image},encrypt.key-secret=s0"
    p = run("qemu-img", "compare", *obj, opts, f"driver=raw,file.filename={want}", check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_key_file_registers_one_secret_and_restores_on_another_host(env, monkeypatch):
    # As README makes one: base64 text and its newline, kept as qemu-img's
    # `--object secret,file=` keeps it.
    key = base64.b64encode(os.urandom(32)) + b"\n"
    kf = key_file(env, "vm.key", key)
    vda = env.disk("k.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    registered = []
    try:
        j = vbj("create", dom, "--encrypt-key-file", kf)
        s = j["secret"]
        registered.append(s["uuid"])
        assert s["registered"] is True and s["usage"].startswith("virt-backup/key-"), s
        full, full_t = j["uuid"], j["disks"][0]["target"]
        at_full = env.snapshot(vda, "at-full.raw")
        assert secrets_of_usage(s["usage"]) == [s["uuid"]]
        xml = virsh("secret-dumpxml", s["uuid"]).stdout
        assert "ephemeral='no'" in xml and "private='no'" in xml, xml
        reads_with_key_file(full_t, kf, at_full)

        qemu_io(vda, "write -q -P 0x22 4M 2M")
        p = vb("create", dom, "--incremental", "--encrypt-key-file", kf)
        assert f"is libvirt secret {s['uuid']}" in p.stdout, p.stdout
        inc = backups(dom)[-1]
        at_inc = env.snapshot(vda, "at-inc.raw")
        assert secrets_of_usage(s["usage"]) == [s["uuid"]], "a second secret"
        for text in (p.stdout, p.stderr):
            assert key.decode().strip() not in text
            assert base64.b64encode(key).decode() not in text

        # Refused before anything is registered or backed up.
        n = len(backups(dom))
        other = base64.b64encode(os.urandom(32))
        for path, why in (
                (key_file(env, "open.key", other, 0o644), "mode 0644"),
                (key_file(env, "group.key", other, 0o640), "mode 0640"),
                (key_file(env, "empty.key", b""), "is empty"),
                (key_file(env, "binary.key", b"\xff" + os.urandom(31)), "not UTF-8"),
                (env.path("missing.key"), "cannot open"),
        ):
            p = vb("create", dom, "--encrypt-key-file", path, rc=1)
            assert why in p.stderr, p.stderr
        link = env.path("link.key")
        os.symlink(kf, link)
        p = vb("create", dom, "--encrypt-key-file", link, rc=1)
        assert "symlink" in p.stderr, p.stderr
        p = vb("create", dom, "--encrypt-key-file", kf, "--encrypt-secret", s["uuid"], rc=2)
        assert len(backups(dom)) == n
        assert "virt-backup/key-" not in virsh("secret-list").stdout.replace(s["usage"], "")

        # The key's usage id holding another value: refused, left alone.
        virsh("secret-set-value", "--secret", s["uuid"], "--base64",
              base64.b64encode(b"not the key").decode())
        p = vb("create", dom, "--encrypt-key-file", kf, rc=1)
        assert "another value" in p.stderr and s["uuid"] in p.stderr, p.stderr
        assert len(backups(dom)) == n
        virsh("secret-set-value", "--secret", s["uuid"], "--base64",
              base64.b64encode(key).decode())

        # Another host: the catalog copied there, no secret.
        old = os.environ["LIBVIRT_BACKUP_DIR"]
        new = env.path("other-host/catalog")
        os.makedirs(os.path.dirname(new), mode=0o700)
        run("cp", "-a", old, new)
        shutil.rmtree(old)
        monkeypatch.setenv("LIBVIRT_BACKUP_DIR", new)
        undefine(s["uuid"])
        out = env.path("restored")
        os.mkdir(out)
        p = vb("restore", inc, "--files-only", out, rc=1)
        assert "secret" in p.stderr and s["uuid"] in p.stderr, p.stderr
        assert os.listdir(out) == []
        p = vb("restore", inc, "--files-only", out, "--encrypt-key-file", kf)
        assert f"registered as libvirt secret {s['uuid']}" in p.stdout, p.stdout
        [restored] = glob.glob(os.path.join(out, "vda.*"))
        assert same(restored, at_inc)
        vb("verify", full)
        out2 = env.path("restored-full")
        os.mkdir(out2)
        p = vb("restore", full, "--files-only", out2, "--encrypt-key-file", kf)
        assert f"is libvirt secret {s['uuid']}" in p.stdout, p.stdout
        assert same(glob.glob(os.path.join(out2, "vda.*"))[0], at_full)
    finally:
        for u in registered:
            undefine(u)


def test_policy_encrypt_key_file(env):
    """`encrypt-key-file` in a [[policy]]: `run` registers the key the same
    way and makes encrypted backups."""
    key = base64.b64encode(os.urandom(32))
    kf = key_file(env, "run.key", key)
    vda = env.disk("r.qcow2", 16 * MiB)
    dom = env.domain([("vda", vda)])
    cfg = env.path("config.toml")
    with open(cfg, "w") as f:
        f.write(f'[[policy]]\ndomains = ["{dom}"]\nlevel = "full"\nencrypt-key-file = "{kf}"\n')
    p = vb("config", "check", "--config", cfg)
    assert "encrypted with the key file" in p.stdout, p.stdout
    try:
        vb("run", "--config", cfg, dom)
        [b] = backups(dom)
        t = vbj("info", b)["disks"][0]["target"]
        info = json.loads(run("qemu-img", "info", "--output=json", t).stdout)
        assert info["encrypted"] is True
        reads_with_key_file(t, kf, env.snapshot(vda, "now.raw"))
    finally:
        for line in virsh("secret-list").stdout.splitlines():
            if "virt-backup/key-" in line:
                u = line.split()[0]
                if virsh("secret-get-value", u, check=False).stdout.strip() == \
                        base64.b64encode(key).decode():
                    undefine(u)
