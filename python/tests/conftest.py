"""Fixtures for the libvirt_backup package tests.

Tests use only libvirt-python objects and the package (no ctypes), except
where they check the package against the C ABI (leaked handles). The
package under test is ../libvirt_backup; the library it loads is
$LIBVIRT_BACKUP_LIB (set by `make python-pkg-tests`), else the build tree's.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid as uuidlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)            # python/
REPO = os.path.dirname(PKG_ROOT)
sys.path.insert(0, PKG_ROOT)
os.environ.setdefault("LIBVIRT_BACKUP_LIB", os.path.join(REPO, "build", "libvirt-backup.so.0"))

import libvirt  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no libvirt noise on stderr


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------
def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def make_disk(path, size, fmt="raw", writes=()):
    """An image of `size` with (offset, length, byte) runs written in it."""
    run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)])
    write_disk(path, fmt, writes)
    return str(path)


def write_disk(path, fmt, writes):
    if fmt == "raw":
        with open(path, "r+b") as f:
            for off, n, byte in writes:
                f.seek(off)
                f.write(bytes([byte]) * n)
    else:
        for off, n, byte in writes:
            run(["qemu-io", "-f", fmt, "-c", f"write -q -P {byte:#x} {off} {n}", str(path)])


def same_image(a, fa, b, fb):
    """Same virtual size and same guest-visible bytes (qemu-img compare)."""
    info = [json.loads(run(["qemu-img", "info", "--output=json", "-U", str(p)]).stdout)
            for p in (a, b)]
    if info[0]["virtual-size"] != info[1]["virtual-size"]:
        return False
    r = subprocess.run(["qemu-img", "compare", "-U", "-f", fa, "-F", fb, str(a), str(b)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def backing_chain(path):
    out = run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)]).stdout
    return [i["filename"] for i in json.loads(out)]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------
def domain_xml(name, disks, kind="test"):
    """disks: [(dev, path, fmt)]; kind 'test' or 'qemu' (TCG, no guest OS)."""
    bus, os_type = "", "<type>hvm</type>"
    if kind == "qemu":
        bus, os_type = " bus='virtio'", "<type arch='x86_64' machine='pc'>hvm</type>"
    devs = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
                   f"<source file='{path}'/><target dev='{dev}'{bus}/></disk>"
                   for dev, path, fmt in disks)
    return (f"<domain type='{kind}'><name>{name}</name><memory>65536</memory>"
            f"<os>{os_type}</os><devices>{devs}</devices></domain>")


def disk_of(dom, dev="vda"):
    """The source file of a domain's disk, from its libvirt definition."""
    import xml.etree.ElementTree as ET
    for d in ET.fromstring(dom.XMLDesc(0)).iter("disk"):
        if d.find("target").get("dev") == dev:
            return d.find("source").get("file")
    raise AssertionError(f"no disk {dev}")


def unique(prefix="pypkg"):
    return f"{prefix}-{uuidlib.uuid4().hex[:12]}"


def write_node_file(path, name, disk, fmt="raw"):
    """A test-driver node file with one shut-off domain: a URI other
    processes can open to see it."""
    shutoff = ("<test:runstate xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>5"
               "</test:runstate>")
    xml = domain_xml(name, [("vda", disk, fmt)]).replace("</domain>", shutoff + "</domain>")
    with open(path, "w") as f:
        f.write(f"<node>{xml}</node>")
    return "test://" + os.path.abspath(path)


class Env:
    """Per-test workspace: temp dir, catalog, domains undefined at the end."""

    def __init__(self, tmp, catalog, conn):
        self.tmp, self.catalog, self.conn = tmp, catalog, conn
        self._names = []   # (conn, name) to destroy and undefine
        self._cleanup_tmp = False

    def path(self, name):
        return os.path.join(self.tmp, name)

    def disk(self, name, size=16 * MiB, fmt="raw", writes=None):
        if writes is None:
            writes = [(0, 1 * MiB, 0xAB), (size // 2, 512 << 10, 0x5A), (size - (256 << 10), 256 << 10, 0x77)]
        return make_disk(self.path(name), size, fmt, writes)

    def copy(self, src, name):
        dst = self.path(name)
        shutil.copyfile(src, dst)
        return dst

    def domain(self, size=16 * MiB, fmt="raw", disk=None, conn=None, kind="test", start=False):
        """A new persistent domain with one disk vda (a fresh image unless
        `disk`), as a libvirt.virDomain."""
        conn = conn or self.conn
        name = unique("pypkg" if kind == "test" else "lvb-pypkg")
        disk = disk or self.disk(name + "-vda." + fmt, size, fmt)
        dom = conn.defineXML(domain_xml(name, [("vda", disk, fmt)], kind))
        self._names.append((conn, name))
        if start:
            dom.create()
        return dom

    def expect_domain(self, name, conn=None):
        """A domain the library may define (restore): removed at the end."""
        self._names.append((conn or self.conn, name))
        return name

    def cleanup(self):
        for conn, name in self._names:
            try:
                d = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if d.isActive():
                    d.destroy()
                d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            except libvirt.libvirtError:
                pass
        if self._cleanup_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.fixture(scope="session")
def qemu_conn():
    try:
        c = libvirt.open("qemu:///system")
    except libvirt.libvirtError as e:
        pytest.skip(f"qemu:///system not reachable (scripts/start-libvirtd.sh): {e}")
    yield c
    c.close()


@pytest.fixture
def env(tmp_path, monkeypatch, conn):
    """Own catalog (LIBVIRT_BACKUP_DIR, read by the library at each call)."""
    catalog = str(tmp_path / "catalog")
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", catalog)
    e = Env(str(tmp_path), catalog, conn)
    yield e
    e.cleanup()


@pytest.fixture(scope="session")
def big_disk(tmp_path_factory):
    """A 2 GiB raw image full of data (no holes): its backup runs for a
    while on test:///default, long enough to look at or interrupt."""
    path = str(tmp_path_factory.mktemp("big") / "big.raw")
    chunk = bytes(range(256)) * (64 << 10)  # 16 MiB, not all one byte
    with open(path, "wb") as f:
        for _ in range((2 * GiB) // len(chunk)):
            f.write(chunk)
    yield path
    os.unlink(path)


def in_threads(n, fn):
    """Run fn(i) in n threads; re-raise the first exception."""
    errors = []

    def body(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)
    ts = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
