"""Shared bindings and fixtures for the libvirt-backup Python tests.

The library under test is loaded with ctypes from $LIBVIRT_BACKUP_LIB; libvirt
itself is loaded from libvirt.so.0 (the Python binding is not used). Every
function of API.md gets argtypes/restype; handles are c_void_p.

This module is also imported by the helper subprocesses some tests start
(``import conftest``), so it must not depend on running under pytest except
for the fixtures it defines.
"""

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from ctypes import (POINTER, byref, c_char, c_char_p, c_double, c_int,
                    c_longlong, c_uint, c_ulonglong, c_void_p)

try:
    import pytest
except ImportError:  # a helper subprocess run by an interpreter without pytest
    class _NoPytest:
        @staticmethod
        def fixture(*a, **k):
            return (lambda f: f) if not a or not callable(a[0]) else a[0]
    pytest = _NoPytest()

HERE = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------
# libvirt constants (libvirt's ABI)
# --------------------------------------------------------------------------
VIR_ERR_OK = 0
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_INVALID_ARG = 8
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_XML_ERROR = 27
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_OPERATION_ABORTED = 78
VIR_ERR_NO_DOMAIN_BACKUP = 104

VIR_TYPED_PARAM_INT = 1
VIR_TYPED_PARAM_UINT = 2
VIR_TYPED_PARAM_LLONG = 3
VIR_TYPED_PARAM_ULLONG = 4
VIR_TYPED_PARAM_DOUBLE = 5
VIR_TYPED_PARAM_BOOLEAN = 6
VIR_TYPED_PARAM_STRING = 7

VIR_DOMAIN_XML_SECURE = 1 << 0
VIR_DOMAIN_AFFECT_CURRENT = 0
VIR_DOMAIN_AFFECT_LIVE = 1 << 0
VIR_DOMAIN_AFFECT_CONFIG = 1 << 1

# --------------------------------------------------------------------------
# libvirt-backup flags (API.md "Flags")
# --------------------------------------------------------------------------
CREATE_QUIESCE = 1 << 0
CREATE_NO_FALLBACK = 1 << 1
CREATE_WAIT = 1 << 2

LIST_FULL = 1 << 0
LIST_LATEST = 1 << 1
LIST_INCREMENTAL = 1 << 2
LIST_LEAVES = 1 << 3
LIST_DESCENDANTS = 1 << 4

RESTORE_NEW_DOMAIN = 1 << 0
RESTORE_REWRITE_EXISTING_DISK = 1 << 1

DELETE_ALL = 1 << 0
DELETE_ALL_CHILDREN = 1 << 1
DELETE_METADATA_ONLY = 1 << 2

FINISH_JOB_CANCEL = 1 << 0
FINISH_JOB_CHECK = 1 << 1

STATE_RUNNING = 1
STATE_COMPLETED = 2
STATE_FAILED = 3
STATE_CANCELLED = 4

VIR_DOMAIN_UNDEFINE_BACKUP = 1 << 30

MiB = 1 << 20
GiB = 1 << 30


# --------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------
class _TypedParamValue(ctypes.Union):
    _fields_ = [
        ("i", c_int),
        ("ui", c_uint),
        ("l", c_longlong),
        ("ul", c_ulonglong),
        ("d", c_double),
        ("b", c_char),
        ("s", c_void_p),  # char *, read with ctypes.string_at
    ]


class virTypedParameter(ctypes.Structure):
    _fields_ = [
        ("field", c_char * 80),  # VIR_TYPED_PARAM_FIELD_LENGTH
        ("type", c_int),
        ("value", _TypedParamValue),
    ]


class virError(ctypes.Structure):
    _fields_ = [
        ("code", c_int),
        ("domain", c_int),
        ("message", c_char_p),
        ("level", c_int),
        ("conn", c_void_p),
        ("dom", c_void_p),
        ("str1", c_char_p),
        ("str2", c_char_p),
        ("str3", c_char_p),
        ("int1", c_int),
        ("int2", c_int),
        ("net", c_void_p),
    ]


assert ctypes.sizeof(virTypedParameter) == 96

# --------------------------------------------------------------------------
# Libraries
# --------------------------------------------------------------------------
LIB_PATH = os.environ["LIBVIRT_BACKUP_LIB"]
lib = ctypes.CDLL(LIB_PATH)
virt = ctypes.CDLL("libvirt.so.0")
libc = ctypes.CDLL("libc.so.6")

libc.free.argtypes = [c_void_p]
libc.free.restype = None


def _decl(so, name, restype, *argtypes):
    f = getattr(so, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


BackupArray = POINTER(c_void_p)  # virDomainBackupPtr *

# The API of API.md, in its order.
_decl(lib, "virDomainBackupCreateXML", c_void_p, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupStartUnmanaged", c_void_p, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupList", c_int, c_void_p, POINTER(BackupArray), c_uint)
_decl(lib, "virDomainBackupListChildren", c_int, c_void_p, POINTER(BackupArray), c_uint)
_decl(lib, "virDomainBackupRestore", c_int, c_char_p, c_uint)
_decl(lib, "virDomainBackupRestoreUnmanaged", c_int, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupDelete", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupRef", c_int, c_void_p)
_decl(lib, "virDomainBackupFree", c_int, c_void_p)
# API.md point 3: the exact name, resolved from our library, gives our XML.
_decl(lib, "virDomainBackupGetXMLDesc", c_void_p, c_void_p, c_uint)
_decl(lib, "virDomainBackupLookupByUUID", c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupGetDomain", c_void_p, c_void_p)
_decl(lib, "virDomainBackupFinishJob", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupAbortJob", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupGetParameters", c_int, c_void_p,
      POINTER(virTypedParameter), POINTER(c_int), c_uint)
_decl(lib, "virDomainSetDefaultTarget", c_int, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupUndefineFlags", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupGetLastError", POINTER(virError))
_decl(lib, "virDomainBackupGetLastErrorMessage", c_char_p)
_decl(lib, "virDomainBackupGetLastErrorCode", c_int)
_decl(lib, "virDomainBackupResetLastError", None)
# The unambiguous name the header routes backup handles to.
_decl(lib, "virDomainBackupObjGetXMLDesc", c_void_p, c_void_p, c_uint)

# libvirt
_decl(virt, "virConnectOpen", c_void_p, c_char_p)
_decl(virt, "virConnectClose", c_int, c_void_p)
_decl(virt, "virDomainDefineXML", c_void_p, c_void_p, c_char_p)
_decl(virt, "virDomainUndefine", c_int, c_void_p)
_decl(virt, "virDomainFree", c_int, c_void_p)
_decl(virt, "virDomainGetUUIDString", c_int, c_void_p, c_char_p)
_decl(virt, "virDomainGetName", c_char_p, c_void_p)
_decl(virt, "virDomainLookupByName", c_void_p, c_void_p, c_char_p)
_decl(virt, "virDomainLookupByUUIDString", c_void_p, c_void_p, c_char_p)
_decl(virt, "virDomainIsActive", c_int, c_void_p)
_decl(virt, "virDomainDestroy", c_int, c_void_p)
_decl(virt, "virDomainCreate", c_int, c_void_p)
_decl(virt, "virDomainBackupGetXMLDesc", c_void_p, c_void_p, c_uint)
_decl(virt, "virTypedParamsClear", None, POINTER(virTypedParameter), c_int)
_decl(virt, "virGetLastErrorCode", c_int)

_VIR_ERROR_FUNC = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)


@_VIR_ERROR_FUNC
def _silent_error(_userdata, _err):
    pass


_decl(virt, "virSetErrorFunc", None, c_void_p, _VIR_ERROR_FUNC)
virt.virSetErrorFunc(None, _silent_error)  # keep libvirt from printing to stderr
_decl(virt, "virInitialize", c_int)
assert virt.virInitialize() == 0


# --------------------------------------------------------------------------
# Error helpers
# --------------------------------------------------------------------------
def last_error():
    """(code, message) of the last libvirt-backup error on this thread."""
    code = lib.virDomainBackupGetLastErrorCode()
    msg = lib.virDomainBackupGetLastErrorMessage()
    return code, (msg.decode() if msg is not None else None)


def expect_error(code, *fragments):
    """Assert the last error has `code` and a message containing `fragments`."""
    got, msg = last_error()
    assert got == code, f"expected error code {code}, got {got}: {msg!r}"
    for f in fragments:
        assert f in msg, f"{f!r} not in error message {msg!r}"
    return msg


def take_string(ptr):
    """Copy a malloc'd C string returned by the library and free() it."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        libc.free(ptr)


# --------------------------------------------------------------------------
# Backup helpers
# --------------------------------------------------------------------------
def get_xml(backup, flags=0):
    """GetXMLDesc through the exact exported name; raises on failure."""
    s = take_string(lib.virDomainBackupGetXMLDesc(backup, flags))
    assert s is not None, f"GetXMLDesc failed: {last_error()}"
    return s


def xml_tree(backup, flags=0):
    return ET.fromstring(get_xml(backup, flags))


def backup_uuid(backup):
    return xml_tree(backup).findtext("uuid").strip()


def backup_state(backup):
    return xml_tree(backup).findtext("state").strip()


def target_of(backup, disk="vda"):
    for d in xml_tree(backup).find("disks").findall("disk"):
        if d.get("name") == disk:
            return d.find("target").get("file")
    raise AssertionError(f"disk {disk} not in backup XML")


def list_handles(dom, flags=0):
    """virDomainBackupList with an array; returns the handles (caller frees
    each with virDomainBackupFree) after freeing the array with free()."""
    arr = BackupArray()
    n = lib.virDomainBackupList(dom, byref(arr), flags)
    assert n >= 0, f"virDomainBackupList failed: {last_error()}"
    assert arr, "array not set"
    handles = [arr[i] for i in range(n)]
    assert arr[n] is None, "array is not NULL-terminated"
    assert all(handles)
    libc.free(ctypes.cast(arr, c_void_p))
    return handles


def list_uuids(dom, flags=0):
    """UUIDs of the domain's backups (order kept); handles and array freed
    element first, then the array."""
    arr = BackupArray()
    n = lib.virDomainBackupList(dom, byref(arr), flags)
    assert n >= 0, f"virDomainBackupList failed: {last_error()}"
    out = []
    for i in range(n):
        out.append(backup_uuid(arr[i]))
    assert arr[n] is None
    for i in range(n):
        assert lib.virDomainBackupFree(arr[i]) == 0
    libc.free(ctypes.cast(arr, c_void_p))
    return out


def count_backups(dom, flags=0):
    n = lib.virDomainBackupList(dom, None, flags)
    assert n >= 0, f"virDomainBackupList failed: {last_error()}"
    return n


def get_params(backup):
    """All typed parameters as {name: (type, value)}; strings copied, then
    the array is cleared with virTypedParamsClear."""
    n = c_int(0)
    assert lib.virDomainBackupGetParameters(backup, None, byref(n), 0) == 0, last_error()
    assert n.value > 0
    arr = (virTypedParameter * n.value)()
    filled = c_int(n.value)
    assert lib.virDomainBackupGetParameters(backup, arr, byref(filled), 0) == 0, last_error()
    out = {}
    for i in range(filled.value):
        p = arr[i]
        name = p.field.decode()
        t = p.type
        if t == VIR_TYPED_PARAM_INT:
            v = p.value.i
        elif t == VIR_TYPED_PARAM_UINT:
            v = p.value.ui
        elif t == VIR_TYPED_PARAM_LLONG:
            v = p.value.l
        elif t == VIR_TYPED_PARAM_ULLONG:
            v = p.value.ul
        elif t == VIR_TYPED_PARAM_DOUBLE:
            v = p.value.d
        elif t == VIR_TYPED_PARAM_BOOLEAN:
            v = ord(p.value.b)
        elif t == VIR_TYPED_PARAM_STRING:
            v = ctypes.string_at(p.value.s).decode() if p.value.s else None
        else:
            raise AssertionError(f"unknown typed parameter type {t} for {name}")
        assert name not in out, f"parameter {name} given twice"
        out[name] = (t, v)
    virt.virTypedParamsClear(arr, filled.value)
    return out


def create(dom, xml, flags=CREATE_WAIT):
    """CreateXML that must succeed; returns the handle."""
    b = lib.virDomainBackupCreateXML(dom, xml.encode(), flags)
    assert b, f"virDomainBackupCreateXML failed: {last_error()}"
    return b


def free(backup):
    assert lib.virDomainBackupFree(backup) == 0, last_error()


def backup_xml_for(disks=None, uuid=None, description=None, parent=None):
    """A <domainbackup> create document. `disks` maps a disk name to a target
    path (str), to (path, format), or to None (backup='no')."""
    parts = ["<domainbackup>"]
    if uuid:
        parts.append(f"<uuid>{uuid}</uuid>")
    if description is not None:
        parts.append(f"<description>{description}</description>")
    if parent:
        parts.append(f"<parent><uuid>{parent}</uuid></parent>")
    if disks is not None:
        parts.append("<disks>")
        for name, spec in disks.items():
            if spec is None:
                parts.append(f"<disk name='{name}' backup='no'/>")
                continue
            if isinstance(spec, tuple):
                path, fmt = spec
            else:
                path, fmt = spec, None
            parts.append(f"<disk name='{name}' backup='yes' type='file'>")
            if path is not None:
                parts.append(f"<target file='{path}'/>")
            if fmt:
                parts.append(f"<driver type='{fmt}'/>")
            parts.append("</disk>")
        parts.append("</disks>")
    parts.append("</domainbackup>")
    return "".join(parts)


# --------------------------------------------------------------------------
# Disk images
# --------------------------------------------------------------------------
def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def make_disk(path, size, fmt="raw", writes=()):
    """Create an image with qemu-img and write (offset, length, byte) runs."""
    path = str(path)
    run(["qemu-img", "create", "-q", "-f", fmt, path, str(size)])
    if fmt == "raw":
        with open(path, "r+b") as f:
            for off, length, byte in writes:
                f.seek(off)
                f.write(bytes([byte]) * length)
    else:
        cmds = []
        for off, length, byte in writes:
            cmds += ["-c", f"write -q -P {byte:#x} {off} {length}"]
        if cmds:
            run(["qemu-io", "-f", fmt] + cmds + [path])
    return path


def img_info(path):
    return json.loads(run(["qemu-img", "info", "--output=json", str(path)]).stdout)


def images_equal(a, fa, b, fb):
    """qemu-img compare: True when the guest-visible contents are equal."""
    r = subprocess.run(["qemu-img", "compare", "-f", fa, "-F", fb, str(a), str(b)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode not in (0, 1):
        raise AssertionError(f"qemu-img compare failed: {r.stderr}")
    return r.returncode == 0


def assert_same_image(a, fa, b, fb):
    assert images_equal(a, fa, b, fb), f"{b} ({fb}) differs from {a} ({fa})"


# --------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
# A node-file domain starts running unless the test driver's namespace says
# otherwise; 5 is VIR_DOMAIN_SHUTOFF.
SHUTOFF_STATE = f"<test:runstate xmlns:test='{TEST_NS}'>5</test:runstate>"


def domain_xml(name, disks, uuid=None, extra=""):
    """disks: list of (dev, path, fmt)."""
    devs = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='{dev}'/></disk>"
        for dev, path, fmt in disks)
    u = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (f"<domain type='test'><name>{name}</name>{u}<memory>65536</memory>"
            f"<os><type>hvm</type></os><devices>{devs}</devices>{extra}</domain>")


def domain_uuid(dom):
    buf = ctypes.create_string_buffer(37)
    assert virt.virDomainGetUUIDString(dom, buf) == 0
    return buf.value.decode()


def write_node_file(path, domains, running=False):
    """A test-driver node file; domains: list of (name, uuid, disks). The
    domains are shut off unless `running`."""
    extra = "" if running else SHUTOFF_STATE
    body = "".join(domain_xml(n, d, uuid=u, extra=extra) for n, u, d in domains)
    with open(path, "w") as f:
        f.write(f"<node>{body}</node>")
    return "test://" + os.path.abspath(path)


class Domain:
    def __init__(self, ptr, name, disks):
        self.ptr = ptr
        self.name = name
        self.disks = disks  # [(dev, path, fmt)]
        self.uuid = domain_uuid(ptr)

    @property
    def _as_parameter_(self):
        return c_void_p(self.ptr)


class Env:
    """Per-test workspace: a temp dir, a catalog dir, and domains."""

    def __init__(self, tmp, catalog, conn):
        self.tmp = tmp
        self.catalog = catalog
        self.conn = conn
        self._defined = []
        self._conns = []

    def path(self, name):
        return os.path.join(self.tmp, name)

    def disk(self, name, size=64 * MiB, fmt="raw", writes=None):
        if writes is None:
            writes = [(0, 1 * MiB, 0xAB), (size // 2, 512 * 1024, 0x5A),
                      (size - 256 * 1024, 256 * 1024, 0x77)]
        return make_disk(self.path(name), size, fmt, writes)

    def domain(self, disks=None, name=None, fmt="raw", size=64 * MiB):
        """Define an (inactive) domain on test:///default. disks: list of
        (dev, path, fmt); default: one fresh disk vda."""
        name = name or "pytest-" + uuidlib.uuid4().hex[:12]
        if disks is None:
            disks = [("vda", self.disk(name + "-vda." + fmt, size, fmt), fmt)]
        ptr = virt.virDomainDefineXML(self.conn, domain_xml(name, disks).encode())
        assert ptr, "virDomainDefineXML failed"
        self._defined.append(ptr)
        return Domain(ptr, name, disks)

    def node_domain(self, disks=None, name=None, fmt="raw", size=64 * MiB,
                    node_file=None, uuid=None, running=False):
        """A domain of a test-driver node file, visible to every process
        that opens the returned URI. Returns (uri, Domain)."""
        name = name or "node-" + uuidlib.uuid4().hex[:12]
        uuid = uuid or str(uuidlib.uuid4())
        if disks is None:
            disks = [("vda", self.disk(name + "-vda." + fmt, size, fmt), fmt)]
        uri = write_node_file(node_file or self.path(name + "-node.xml"),
                              [(name, uuid, disks)], running=running)
        conn = virt.virConnectOpen(uri.encode())
        assert conn, f"cannot open {uri}"
        self._conns.append(conn)
        ptr = virt.virDomainLookupByName(conn, name.encode())
        assert ptr
        assert virt.virDomainIsActive(ptr) == int(running)
        self._owned_domains = getattr(self, "_owned_domains", []) + [ptr]
        return uri, Domain(ptr, name, disks)

    def open(self, uri):
        conn = virt.virConnectOpen(uri.encode())
        assert conn, f"cannot open {uri}"
        self._conns.append(conn)
        return conn

    def cleanup(self):
        for ptr in self._defined:
            if virt.virDomainIsActive(ptr) == 1:
                virt.virDomainDestroy(ptr)
            virt.virDomainUndefine(ptr)
            virt.virDomainFree(ptr)
        for ptr in getattr(self, "_owned_domains", []):
            virt.virDomainFree(ptr)
        for c in self._conns:
            virt.virConnectClose(c)


@pytest.fixture(scope="session")
def default_conn():
    conn = virt.virConnectOpen(b"test:///default")
    assert conn, "cannot open test:///default"
    yield conn
    virt.virConnectClose(conn)


@pytest.fixture
def env(tmp_path, monkeypatch, default_conn):
    """Own LIBVIRT_BACKUP_DIR (set in os.environ: the library reads it at
    each call) and temp dir for each test."""
    catalog = str(tmp_path / "catalog")
    monkeypatch.setenv("LIBVIRT_BACKUP_DIR", catalog)
    assert os.environ["LIBVIRT_BACKUP_DIR"] == catalog
    lib.virDomainBackupResetLastError()
    e = Env(str(tmp_path), catalog, default_conn)
    yield e
    e.cleanup()


# --------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------
SUBPROCESS_PRELUDE = (
    "import sys, os, ctypes\n"
    f"sys.path.insert(0, {HERE!r})\n"
    "from conftest import *\n"
)


def py_subprocess(code, catalog, stdout=subprocess.PIPE, **kw):
    """Start `sys.executable -c` with our bindings imported and the given
    catalog dir; returns the Popen."""
    env = dict(os.environ)
    env["LIBVIRT_BACKUP_DIR"] = catalog
    return subprocess.Popen(
        [sys.executable, "-c", SUBPROCESS_PRELUDE + textwrap.dedent(code)],
        env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, **kw)


def run_py(code, catalog, timeout=60, check=True):
    """Run `code` in a fresh interpreter. check=True: assert it succeeded
    and return its stdout; else return a CompletedProcess."""
    p = py_subprocess(code, catalog)
    out, err = p.communicate(timeout=timeout)
    if not check:
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert p.returncode == 0, f"subprocess failed ({p.returncode}):\n{out}\n{err}"
    return out


# --------------------------------------------------------------------------
# A big disk with data everywhere, for jobs that must run for a while
# --------------------------------------------------------------------------
BIG_DISK_SIZE = 2 * GiB


@pytest.fixture(scope="session")
def big_disk(tmp_path_factory):
    """A 2 GiB raw image filled with 0xab (no holes), made once."""
    path = str(tmp_path_factory.mktemp("big") / "big.raw")
    chunk = b"\xab" * (16 * MiB)
    with open(path, "wb") as f:
        for _ in range(BIG_DISK_SIZE // len(chunk)):
            f.write(chunk)
    yield path
    os.unlink(path)  # do not keep 2 GiB in pytest's retained temp dirs


def wait_until(pred, timeout=30, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
