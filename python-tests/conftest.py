"""Shared bindings and fixtures for the libvirt-backup Python tests.

The library under test is loaded with ctypes from $LIBVIRT_BACKUP_LIB; libvirt
itself is loaded from libvirt.so.0 (the Python binding is not used). Every
function of API.md gets argtypes/restype; handles are c_void_p.

QEMU domains (qenv fixture, Env.qemu_domain) run on qemu:///system; NBD
exports are read with libnbd's tools (Nbd, nbd_copy, nbd_dirty).

This module is also imported by the helper subprocesses some tests start
(``import conftest``), so it must not depend on running under pytest except
for the fixtures it defines.
"""

import ctypes
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
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
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_ARGUMENT_UNSUPPORTED = 74  # e.g. quiesce without a guest agent
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
VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA = 1 << 4

MiB = 1 << 20
GiB = 1 << 30
K64 = 64 << 10  # the chunk an incremental backup stores or skips


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


class virDomainJobInfo(ctypes.Structure):
    _fields_ = [("type", c_int)] + [(f, c_ulonglong) for f in (
        "timeElapsed", "timeRemaining", "dataTotal", "dataProcessed", "dataRemaining",
        "memTotal", "memProcessed", "memRemaining", "fileTotal", "fileProcessed",
        "fileRemaining")]


assert ctypes.sizeof(virTypedParameter) == 96

# --------------------------------------------------------------------------
# Libraries
# --------------------------------------------------------------------------
# `make python-tests` names the freshly linked library; a bare
# `python3 -m pytest python-tests` after `make stage` uses the staged one.
LIB_PATH = os.environ.get("LIBVIRT_BACKUP_LIB") or os.path.join(
    os.path.dirname(HERE), "build", "stage", "lib", "libvirt-backup.so.0")
if not os.path.exists(LIB_PATH):
    raise ImportError(f"{LIB_PATH} not found: run 'make all stage' or set LIBVIRT_BACKUP_LIB")
os.environ["LIBVIRT_BACKUP_LIB"] = LIB_PATH  # for the helper subprocesses
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
_decl(virt, "virDomainGetXMLDesc", c_void_p, c_void_p, c_uint)
_decl(virt, "virDomainUndefine", c_int, c_void_p)
_decl(virt, "virDomainFree", c_int, c_void_p)
_decl(virt, "virDomainGetUUIDString", c_int, c_void_p, c_char_p)
_decl(virt, "virDomainGetName", c_char_p, c_void_p)
_decl(virt, "virDomainLookupByName", c_void_p, c_void_p, c_char_p)
_decl(virt, "virDomainLookupByUUIDString", c_void_p, c_void_p, c_char_p)
_decl(virt, "virDomainIsActive", c_int, c_void_p)
_decl(virt, "virDomainIsPersistent", c_int, c_void_p)
_decl(virt, "virDomainDestroy", c_int, c_void_p)
_decl(virt, "virDomainCreate", c_int, c_void_p)
_decl(virt, "virDomainBackupGetXMLDesc", c_void_p, c_void_p, c_uint)
_decl(virt, "virTypedParamsClear", None, POINTER(virTypedParameter), c_int)
_decl(virt, "virStoragePoolCreateXML", c_void_p, c_void_p, c_char_p, c_uint)
_decl(virt, "virStoragePoolDestroy", c_int, c_void_p)
_decl(virt, "virStoragePoolFree", c_int, c_void_p)
_decl(virt, "virStoragePoolNumOfVolumes", c_int, c_void_p)
_decl(virt, "virGetLastErrorCode", c_int)
_decl(virt, "virDomainUndefineFlags", c_int, c_void_p, c_uint)
_decl(virt, "virDomainGetJobInfo", c_int, c_void_p, POINTER(virDomainJobInfo))
_decl(virt, "virDomainAbortJob", c_int, c_void_p)
_decl(virt, "virDomainListAllCheckpoints", c_int, c_void_p, POINTER(POINTER(c_void_p)), c_uint)
_decl(virt, "virDomainCheckpointGetName", c_char_p, c_void_p)
_decl(virt, "virDomainCheckpointLookupByName", c_void_p, c_void_p, c_char_p, c_uint)
_decl(virt, "virDomainCheckpointDelete", c_int, c_void_p, c_uint)
_decl(virt, "virDomainCheckpointFree", c_int, c_void_p)

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


def disk_element(backup, disk="vda"):
    """The <disk> of the backup's XML named `disk`."""
    for d in xml_tree(backup).find("disks").findall("disk"):
        if d.get("name") == disk:
            return d
    raise AssertionError(f"disk {disk} not in backup XML")


def target_of(backup, disk="vda"):
    return disk_element(backup, disk).find("target").get("file")


def disk_modes(backup):
    """{disk name: backupmode} of a backup's XML."""
    return {d.get("name"): d.get("backupmode")
            for d in xml_tree(backup).find("disks").findall("disk")}


def parent_of(backup):
    """The parent's UUID in a backup's XML, or None for a full backup."""
    p = xml_tree(backup).find("parent")
    return None if p is None else p.findtext("uuid").strip()


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


def _listed_uuids(func, obj, flags):
    """UUIDs returned by a virDomainBackupList-shaped call (order kept);
    handles and array freed element first, then the array."""
    arr = BackupArray()
    n = func(obj, byref(arr), flags)
    assert n >= 0, f"{func.__name__} failed: {last_error()}"
    assert func(obj, None, flags) == n, "count without an array differs"
    out = []
    for i in range(n):
        out.append(backup_uuid(arr[i]))
    assert arr[n] is None
    for i in range(n):
        assert lib.virDomainBackupFree(arr[i]) == 0
    libc.free(ctypes.cast(arr, c_void_p))
    return out


def list_uuids(dom, flags=0):
    """UUIDs of the domain's backups, as virDomainBackupList orders them."""
    return _listed_uuids(lib.virDomainBackupList, dom, flags)


def children_uuids(backup, flags=0):
    """UUIDs virDomainBackupListChildren gives for `backup`."""
    return _listed_uuids(lib.virDomainBackupListChildren, backup, flags)


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


def param(backup, name):
    """The value of one typed parameter."""
    return get_params(backup)[name][1]


def catalog_entries_named(env, uuid):
    """Every file or folder of the catalog whose name holds `uuid`."""
    hits = []
    for root, dirs, files in os.walk(env.catalog):
        hits += [os.path.join(root, n) for n in dirs + files if uuid in n]
    return hits


def assert_backup_holds(backup, want):
    """Each disk of `want` ({disk: raw image}) reads back from the backup's
    target byte for byte."""
    for dev, image in want.items():
        fmt = disk_element(backup, dev).find("driver").get("type")
        assert_byte_exact(target_of(backup, dev), fmt, image, "raw")


def create(dom, xml, flags=CREATE_WAIT):
    """CreateXML that must succeed; returns the handle."""
    b = lib.virDomainBackupCreateXML(dom, xml.encode(), flags)
    assert b, f"virDomainBackupCreateXML failed: {last_error()}"
    return b


def create_fails(dom, xml, flags, code, *fragments):
    """CreateXML that must fail with `code` (message containing `fragments`)."""
    b = lib.virDomainBackupCreateXML(dom, xml.encode(), flags)
    if b:
        free(b)
        raise AssertionError("virDomainBackupCreateXML succeeded")
    return expect_error(code, *fragments)


def _restore_call(xml, flags, dom):
    if dom is None:
        return lib.virDomainBackupRestore(xml.encode(), flags)
    return lib.virDomainBackupRestoreUnmanaged(dom, xml.encode(), flags)


def restore(xml, flags=0, dom=None):
    """virDomainBackupRestore (with `dom`: RestoreUnmanaged) that must succeed."""
    assert _restore_call(xml, flags, dom) == 0, f"restore failed: {last_error()}"


def restore_fails(xml, flags, code, *fragments, dom=None):
    """virDomainBackupRestore (with `dom`: RestoreUnmanaged) that must fail
    with `code`."""
    assert _restore_call(xml, flags, dom) == -1, "restore succeeded"
    return expect_error(code, *fragments)


def delete(backup, flags=0):
    assert lib.virDomainBackupDelete(backup, flags) == 0, \
        f"virDomainBackupDelete failed: {last_error()}"


def free(backup):
    assert lib.virDomainBackupFree(backup) == 0, last_error()


class Volume:
    """A storage-pool volume as a backup target (type='volume')."""

    def __init__(self, pool, name):
        self.pool, self.name = pool, name


class Nbd:
    """An NBD server address: a unix socket, or 127.0.0.1:`port` over tcp.
    `server_xml()` is the <server> of StartUnmanaged, `source_xml(export)`
    a RestoreUnmanaged <source>, `uri(export)` what libnbd's tools take."""

    def __init__(self, socket=None, port=None):
        assert (socket is None) != (port is None)
        self.socket, self.port = socket, port

    def server_xml(self):
        if self.socket:
            return f"<server transport='unix' socket='{self.socket}'/>"
        return f"<server transport='tcp' name='127.0.0.1' port='{self.port}'/>"

    def source_xml(self, export):
        host = (f"<host transport='unix' socket='{self.socket}'/>" if self.socket
                else f"<host name='127.0.0.1' port='{self.port}'/>")
        return f"<source protocol='nbd' name='{export}'>{host}</source>"

    def uri(self, export=""):
        if self.socket:
            return f"nbd+unix:///{export}?socket={self.socket}"
        return f"nbd://127.0.0.1:{self.port}/{export}"


def _disks_xml(disks, create, sources=None):
    """<disks> of a create (`create`) or restore document. Each value is a
    target (a path or a Volume), (target or None, format), or None: a disk
    with backup='no' (create) or with no <target>/<driver> (restore).
    `sources` maps a disk to what RestoreUnmanaged reads: an image path
    (<source file>) or (Nbd, export name)."""
    sources = sources or {}
    parts = ["<disks>"]
    for name, spec in disks.items():
        if spec is None and create:
            parts.append(f"<disk name='{name}' backup='no'/>")
            continue
        target, fmt = spec if isinstance(spec, tuple) else (spec, None)
        kind = "volume" if isinstance(target, Volume) else "file"
        parts.append(f"<disk name='{name}' backup='yes' type='{kind}'>" if create
                     else f"<disk name='{name}'>")
        if isinstance(sources.get(name), tuple):
            server, export = sources[name]
            parts.append(server.source_xml(export))
        elif name in sources:
            # The test files' names end with their format.
            src_fmt = "qcow2" if str(sources[name]).endswith(".qcow2") else "raw"
            parts.append(f"<source file='{sources[name]}'><driver type='{src_fmt}'/></source>")
        if isinstance(target, Volume):
            parts.append(f"<target pool='{target.pool}' volume='{target.name}'/>")
        elif target is not None:
            parts.append(f"<target file='{target}'/>")
        if fmt:
            parts.append(f"<driver type='{fmt}'/>")
        parts.append("</disk>")
    parts.append("</disks>")
    return "".join(parts)


def backup_xml_for(disks=None, uuid=None, description=None, parent=None):
    """A <domainbackup> create document. `disks` maps a disk name to a target
    (a path or a Volume), to (target, format), or to None (backup='no')."""
    parts = ["<domainbackup>"]
    if uuid:
        parts.append(f"<uuid>{uuid}</uuid>")
    if description is not None:
        parts.append(f"<description>{description}</description>")
    if parent:
        parts.append(f"<parent><uuid>{parent}</uuid></parent>")
    if disks is not None:
        parts.append(_disks_xml(disks, create=True))
    parts.append("</domainbackup>")
    return "".join(parts)


def unmanaged_xml(server, disks=None, parent=None):
    """A StartUnmanaged document: `server` an Nbd, `disks` {disk: export
    name or None (no exportname)} (None: no <disks>), `parent` a UUID."""
    parts = ["<domainbackup>"]
    if parent:
        parts.append(f"<parent><uuid>{parent}</uuid></parent>")
    parts.append(server.server_xml())
    if disks is not None:
        parts.append("<disks>")
        for d, export in disks.items():
            parts.append(f"<disk name='{d}'" + (f" exportname='{export}'/>" if export else "/>"))
        parts.append("</disks>")
    parts.append("</domainbackup>")
    return "".join(parts)


def export_of(backup):
    """An unmanaged backup's XML: (attributes of <server>, {disk:
    (exportname, exportbitmap or None)})."""
    t = xml_tree(backup)
    disks = {d.get("name"): (d.get("exportname"), d.get("exportbitmap"))
             for d in t.find("disks").findall("disk")}
    return dict(t.find("server").attrib), disks


def restore_xml_for(uuid, disks=None, domain=None, sources=None, target_dir=None):
    """A virDomainBackupRestore document for backup `uuid` (None: a
    RestoreUnmanaged one). `disks` maps a disk name to a target path, to
    (path or None, format), or to None (no <target>/<driver>); `domain` is
    the NEW_DOMAIN name; `sources` maps disks to RestoreUnmanaged's sources
    (a path or (Nbd, export); each is added to `disks`); `target_dir` is a
    FILES_ONLY restore's <target dir>."""
    parts = ["<domainbackup>"]
    if uuid is not None:
        parts.append(f"<uuid>{uuid}</uuid>")
    if domain is not None:
        parts.append(f"<domain name='{domain}'/>")
    if target_dir:
        parts.append(f"<target dir='{target_dir}'/>")
    if sources:
        disks = {**{d: None for d in sources}, **(disks or {})}
    if disks is not None:
        parts.append(_disks_xml(disks, create=False, sources=sources))
    parts.append("</domainbackup>")
    return "".join(parts)


# --------------------------------------------------------------------------
# Disk images
# --------------------------------------------------------------------------
def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def qemu_io(path, fmt, *cmds):
    """Run qemu-io commands (e.g. "write -P 0x22 1M 64k", "write -z 0 1M") on
    an image, in one qemu-io process."""
    args = []
    for c in cmds:
        args += ["-c", c]
    run(["qemu-io", "-f", fmt] + args + [str(path)])


def write_disk(path, fmt, writes):
    """Write (offset, length, byte) runs into an image; byte None writes zeroes
    (a zero write, which qcow2 may store as a zero cluster)."""
    if fmt == "raw":
        with open(path, "r+b") as f:
            for off, length, byte in writes:
                f.seek(off)
                f.write(bytes([byte or 0]) * length)
    elif writes:
        qemu_io(path, fmt, *(f"write -q -z {o} {n}" if b is None else
                             f"write -q -P {b:#x} {o} {n}" for o, n, b in writes))


def make_disk(path, size, fmt="raw", writes=()):
    """Create an image with qemu-img and write (offset, length, byte) runs."""
    path = str(path)
    run(["qemu-img", "create", "-q", "-f", fmt, path, str(size)])
    write_disk(path, fmt, writes)
    return path


def resize_disk(path, fmt, size):
    args = ["qemu-img", "resize", "-q", "-f", fmt]
    if size < img_info(path)["virtual-size"]:
        args.append("--shrink")
    run(args + [str(path), str(size)])


def backing_chain(path):
    """Filenames of `path`'s backing chain, `path` first."""
    out = run(["qemu-img", "info", "--backing-chain", "--output=json", str(path)]).stdout
    return [i["filename"] for i in json.loads(out)]


def header_chain(path):
    """`path` and the images its qcow2 headers name, each backing name read
    from the header itself and a relative one joined to its image's folder
    with `..` resolved (QEMU joins it to the path it reached the image by,
    `..` and all: a deep chain of relative names, as the catalog's images
    have, grows past PATH_MAX in qemu-img's hands)."""
    out = [str(path)]
    while True:
        with open(out[-1], "rb") as f:
            head = f.read(20)
            if head[:4] != b"QFI\xfb":
                return out
            offset = int.from_bytes(head[8:16], "big")
            size = int.from_bytes(head[16:20], "big")
            if not offset or not size:
                return out
            f.seek(offset)
            name = f.read(size).decode()
        out.append(os.path.normpath(os.path.join(os.path.dirname(out[-1]), name)))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_state(root):
    """{relative path: sha256} of every file under `root`, to show that a
    refused call created, removed and changed nothing."""
    out = {}
    for d, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p):  # not an NBD server's socket
                out[os.path.relpath(p, root)] = sha256(p)
    return out


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


def assert_byte_exact(path, fmt, want, want_fmt):
    """`path` holds, byte for byte over its virtual size, what `want` holds:
    the same virtual size and the same data (qemu-img compare), or the same
    bytes for two raw files."""
    if fmt == want_fmt == "raw":
        assert sha256(path) == sha256(want), f"{path} differs from {want}"
        return
    assert img_info(path)["virtual-size"] == img_info(want)["virtual-size"], path
    assert_same_image(want, want_fmt, path, fmt)


def live_snapshot(image, fmt, dst, base=None):
    """A copy of the image of a running domain as it is now (after a guest
    flush), read with --force-share: raw, or, with `base` (the image's own
    backing file), a qcow2 holding only what lies above `base`."""
    args = ["qemu-img", "convert", "-U", "-f", fmt]
    args += ["-O", "qcow2", "-B", base, "-F", "qcow2"] if base else ["-O", "raw"]
    run(args + [str(image), str(dst)])
    return str(dst)


# --------------------------------------------------------------------------
# NBD (libnbd's tools)
# --------------------------------------------------------------------------
def free_port():
    """A tcp port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nbd_copy(uri, dst):
    """Copy an NBD export into the raw file `dst` with nbdcopy."""
    run(["nbdcopy", uri, str(dst)])
    return str(dst)


def nbd_exports(uri):
    """{export name: nbdinfo's JSON of it} of the server at `uri`."""
    out = run(["nbdinfo", "--list", "--json", uri]).stdout
    return {e["export-name"]: e for e in json.loads(out)["exports"]}


def nbd_dirty(uri, bitmap):
    """The dirty extents [(offset, length)] of the export's bitmap
    `bitmap`, adjacent ones merged."""
    out = run(["nbdinfo", "--json", f"--map=qemu:dirty-bitmap:{bitmap}", uri]).stdout
    runs = []
    for e in json.loads(out):
        if not e["type"] & 1:
            continue
        if runs and runs[-1][0] + runs[-1][1] == e["offset"]:
            runs[-1] = (runs[-1][0], runs[-1][1] + e["length"])
        else:
            runs.append((e["offset"], e["length"]))
    return runs


def nbd_reachable(uri):
    """Whether a server answers at `uri`."""
    return subprocess.run(["nbdinfo", "--size", uri], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


# --------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
# A node-file domain starts running unless the test driver's namespace says
# otherwise; 5 is VIR_DOMAIN_SHUTOFF.
SHUTOFF_STATE = f"<test:runstate xmlns:test='{TEST_NS}'>5</test:runstate>"


def domain_xml(name, disks, uuid=None, extra="", devices="", kind="test"):
    """disks: list of (dev, path, fmt); `devices`: more devices (XML);
    `kind`: 'test' (test:///default) or 'qemu' (TCG, no guest OS)."""
    bus, os_type = "", "<type>hvm</type>"
    if kind == "qemu":
        bus, os_type = " bus='virtio'", "<type arch='x86_64' machine='pc'>hvm</type>"
    devs = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='{dev}'{bus}/></disk>"
        for dev, path, fmt in disks)
    u = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (f"<domain type='{kind}'><name>{name}</name>{u}<memory>65536</memory>"
            f"<os>{os_type}</os><devices>{devs}{devices}</devices>{extra}</domain>")


def domain_uuid(dom):
    buf = ctypes.create_string_buffer(37)
    assert virt.virDomainGetUUIDString(dom, buf) == 0
    return buf.value.decode()


def domain_definition(dom):
    """The domain's current XML, as libvirt has it."""
    s = take_string(virt.virDomainGetXMLDesc(dom, 0))
    assert s is not None, "virDomainGetXMLDesc failed"
    return s


def domain_disks(dom):
    """{dev: (source file, driver type)} of the domain's current definition."""
    out = {}
    for d in ET.fromstring(domain_definition(dom)).iter("disk"):
        src, drv = d.find("source"), d.find("driver")
        out[d.find("target").get("dev")] = (
            src.get("file") if src is not None else None,
            drv.get("type") if drv is not None else None)
    return out


def lookup_domain(conn, name):
    """The domain named `name` (caller frees it with virDomainFree), or None."""
    return virt.virDomainLookupByName(conn, name.encode())


def write_node_file(path, domains, running=False):
    """A test-driver node file; domains: list of (name, uuid, disks). The
    domains are shut off unless `running`."""
    extra = "" if running else SHUTOFF_STATE
    body = "".join(domain_xml(n, d, uuid=u, extra=extra) for n, u, d in domains)
    with open(path, "w") as f:
        f.write(f"<node>{body}</node>")
    return "test://" + os.path.abspath(path)


class Domain:
    def __init__(self, ptr, name, disks, conn=None, kind="test", devices=""):
        self.ptr = ptr
        self.name = name
        self.disks = disks  # [(dev, path, fmt)]
        self.uuid = domain_uuid(ptr)
        self.conn, self.kind, self.devices = conn, kind, devices  # for redefine

    @property
    def _as_parameter_(self):
        return c_void_p(self.ptr)

    # QEMU domains (qemu:///system, TCG, no guest OS)
    def start(self):
        assert virt.virDomainCreate(self.ptr) == 0, f"cannot start {self.name}"

    def stop(self):
        assert virt.virDomainDestroy(self.ptr) == 0, f"cannot stop {self.name}"

    def active(self):
        return virt.virDomainIsActive(self.ptr) == 1

    def guest_io(self, cmd, device="virtio-disk0"):
        """Run a qemu-io command (e.g. "write -P 0xcd 32M 4M") on a virtio
        disk through QEMU's monitor, as the guest would write, then flush
        so the image file is consistent for readers outside QEMU."""
        for c in (cmd, "flush"):
            hmp = f'qemu-io -d /machine/peripheral/{device}/virtio-backend "{c}"'
            r = subprocess.run(["virsh", "-c", "qemu:///system", "qemu-monitor-command",
                                self.name, "--hmp", hmp], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            assert r.returncode == 0 and "rror" not in r.stdout, f"guest io {c!r}: {r.stdout}"

    def checkpoints(self):
        """Names of the domain's libvirt checkpoints, sorted."""
        arr = POINTER(c_void_p)()
        n = virt.virDomainListAllCheckpoints(self.ptr, byref(arr), 0)
        assert n >= 0, "virDomainListAllCheckpoints failed"
        names = sorted(virt.virDomainCheckpointGetName(arr[i]).decode() for i in range(n))
        for i in range(n):
            virt.virDomainCheckpointFree(arr[i])
        libc.free(ctypes.cast(arr, c_void_p))
        return names

    def delete_checkpoint(self, name):
        """Delete a checkpoint through libvirt, behind the library's back."""
        cp = virt.virDomainCheckpointLookupByName(self.ptr, name.encode(), 0)
        assert cp, f"no checkpoint {name}"
        try:
            assert virt.virDomainCheckpointDelete(cp, 0) == 0
        finally:
            virt.virDomainCheckpointFree(cp)

    def job_active(self):
        """Whether libvirt runs a job (e.g. a backup) on the domain."""
        info = virDomainJobInfo()
        assert virt.virDomainGetJobInfo(self.ptr, byref(info)) == 0
        return info.type in (1, 2)  # VIR_DOMAIN_JOB_BOUNDED, _UNBOUNDED


class Taken:
    """One backup of a History: its handle, UUID, vda target and a copy of
    the source disk made right after the backup."""

    def __init__(self, handle, target, copy):
        self.handle = handle
        self.uuid = backup_uuid(handle)
        self.target = target
        self.copy = copy

    @property
    def _as_parameter_(self):
        return c_void_p(self.handle)


class History:
    """Backups of a one-disk domain, full or on top of each other, each with
    a copy of the disk as it was when it was taken (Env.history)."""

    def __init__(self, env, dom):
        self.env = env
        self.dom = dom
        (self.disk, self.src, self.fmt), = dom.disks
        self.taken = []

    def take(self, name, parent=None, writes=()):
        """Write `writes` (see write_disk) into the disk, then back it up to
        <tmp>/<name>.qcow2 on top of `parent` (a Taken, or None: full)."""
        write_disk(self.src, self.fmt, writes)
        target = self.env.path(name + ".qcow2")
        b = self.env.backup(self.dom, backup_xml_for({self.disk: target},
                                                     parent=parent and parent.uuid))
        t = Taken(b, target, self.env.snapshot(self.src, f"{name}-at-backup.{self.fmt}"))
        self.taken.append(t)
        return t

    def check(self, *taken):
        """Each backup (default: all) reads back as the disk at its time."""
        for t in taken or self.taken:
            assert_byte_exact(t.target, "qcow2", t.copy, self.fmt)


def chain_with_branch(env, fmt="qcow2"):
    """A History of a 16 MiB disk: full -> mid -> leaf -> tip, and mid -> br.
    Each step changes whole 64 KiB chunks: mid 1 MiB, leaf 64 KiB of data
    and 128 KiB of data to zeroes, tip 128 KiB, br 256 KiB."""
    h = env.history(env.domain(fmt=fmt, size=16 * MiB))
    full = h.take("full")
    mid = h.take("mid", full, [(1 * MiB, 1 * MiB, 0x72)])
    leaf = h.take("leaf", mid, [(3 * MiB, K64, 0x73), (0, 2 * K64, None)])
    tip = h.take("tip", leaf, [(15 * MiB, 2 * K64, 0x74)])
    br = h.take("br", mid, [(9 * MiB, 4 * K64, 0x75)])
    return h, (full, mid, leaf, tip, br)


class Pool:
    def __init__(self, ptr, name, path):
        self.ptr, self.name, self.path = ptr, name, path

    def volume(self, name):
        """A Volume target in this pool."""
        return Volume(self.name, name)

    def count(self):
        """How many volumes libvirt lists in the pool."""
        n = virt.virStoragePoolNumOfVolumes(self.ptr)
        assert n >= 0
        return n


class Env:
    """Per-test workspace: a temp dir, a catalog dir, and domains."""

    def __init__(self, tmp, catalog, conn):
        self.tmp = tmp
        self.catalog = catalog
        self.conn = conn
        self._defined = []
        self._expected = []
        self._handles = []
        self._pools = []
        self._conns = []
        self.qemu = None  # qemu:///system, set by the qenv fixture
        self._remove_tmp = False

    def path(self, name):
        return os.path.join(self.tmp, name)

    def snapshot(self, src, name):
        """A copy of the image `src` as it is now (to compare a backup or a
        restored disk with later)."""
        dst = self.path(name)
        shutil.copyfile(src, dst)
        return dst

    def live_snapshots(self, dom, tag):
        """{disk: <tmp>/<tag>-<disk>.raw}: raw copies of every disk of a
        (running) domain as it is now (see live_snapshot)."""
        return {dev: live_snapshot(path, fmt, self.path(f"{tag}-{dev}.raw"))
                for dev, path, fmt in dom.disks}

    def targets(self, tag, disks):
        """{disk: <tmp>/<tag>-<disk>.qcow2} for backup_xml_for."""
        return {d: self.path(f"{tag}-{d}.qcow2") for d in disks}

    def files(self):
        """tree_state of the whole workspace (disks, targets, catalog), but
        the catalog's lock files: `.lock` (made by the first call that
        writes) and the domains' job locks in `.domain-locks/` (made by the
        first job, backup, export or restore, that asks for one), and the
        job history in `.history/`, which notes failed calls too; and a
        running job's published figures (`<backup>.progress`), rewritten
        twice a second whatever other calls do."""
        return {p: h for p, h in tree_state(self.tmp).items()
                if p != os.path.join("catalog", ".lock")
                and not p.startswith(os.path.join("catalog", ".domain-locks") + os.sep)
                and not p.startswith(os.path.join("catalog", ".history") + os.sep)
                and not p.endswith((".progress", ".progress.tmp"))}

    def disk(self, name, size=64 * MiB, fmt="raw", writes=None):
        if writes is None:
            writes = [(0, 1 * MiB, 0xAB), (size // 2, 512 * 1024, 0x5A),
                      (size - 256 * 1024, 256 * 1024, 0x77)]
        return make_disk(self.path(name), size, fmt, writes)

    def domain(self, disks=None, name=None, fmt="raw", size=64 * MiB,
               conn=None, kind="test", devices=""):
        """Define an (inactive) domain on test:///default (or on `conn`, of
        type `kind`), undefined when the test ends. disks: list of (dev, path,
        fmt); default: one fresh disk vda."""
        name = name or "pytest-" + uuidlib.uuid4().hex[:12]
        if disks is None:
            disks = [("vda", self.disk(name + "-vda." + fmt, size, fmt), fmt)]
        xml = domain_xml(name, disks, devices=devices, kind=kind)
        ptr = virt.virDomainDefineXML(conn or self.conn, xml.encode())
        assert ptr, "virDomainDefineXML failed"
        self._defined.append(ptr)
        return Domain(ptr, name, disks, conn or self.conn, kind, devices)

    def qemu_domain(self, disks=None, size=64 * MiB, writes=None, start=True, name=None):
        """A QEMU domain on qemu:///system (TCG, no guest OS, virtio disks)
        named lvb-pytest-*, started unless `start` is false; destroyed and
        undefined with its checkpoints, and the whole workspace removed, when
        the test ends. Default disks: vda, a fresh qcow2 of `size` with
        `writes` (see Env.disk)."""
        assert self.qemu, "use the qenv fixture"
        name = name or "lvb-pytest-" + uuidlib.uuid4().hex[:12]
        if disks is None:
            disks = [("vda", self.disk(name + "-vda.qcow2", size, "qcow2", writes), "qcow2")]
        self._remove_tmp = True
        dom = self.domain(disks=disks, name=name, conn=self.qemu, kind="qemu")
        if start:
            dom.start()
        return dom

    def overlay(self, base, name):
        """A qcow2 image <tmp>/`name` backed by the qcow2 image `base`."""
        path = self.path(name)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", path])
        return path

    def redefine(self, dom, disks):
        """Give `dom` (same name and UUID) these disks."""
        xml = domain_xml(dom.name, disks, uuid=dom.uuid, devices=dom.devices, kind=dom.kind)
        ptr = virt.virDomainDefineXML(dom.conn, xml.encode())
        assert ptr, "virDomainDefineXML (redefine) failed"
        virt.virDomainFree(ptr)
        dom.disks = disks

    def backup(self, dom, xml, flags=CREATE_WAIT):
        """create(), the handle freed when the test ends."""
        b = create(dom, xml, flags)
        self._handles.append(b)
        return b

    def start_unmanaged(self, dom, xml, flags=0):
        """virDomainBackupStartUnmanaged that must succeed; the export is
        ended (if still running) and the handle freed when the test ends."""
        b = lib.virDomainBackupStartUnmanaged(dom, xml.encode(), flags)
        assert b, f"virDomainBackupStartUnmanaged failed: {last_error()}"
        self._handles.append(b)
        return b

    def history(self, dom):
        return History(self, dom)

    def pool(self):
        """A started, transient dir pool on test:///default over a fresh
        folder, destroyed when the test ends."""
        name = "pytest-pool-" + uuidlib.uuid4().hex[:8]
        path = self.path(name)
        os.mkdir(path)
        xml = f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
        ptr = virt.virStoragePoolCreateXML(self.conn, xml.encode(), 0)
        assert ptr, "virStoragePoolCreateXML failed"
        self._pools.append(ptr)
        return Pool(ptr, name, path)

    def expect_domain(self, name, conn=None):
        """A domain named `name` may be defined by the library (a restore as
        a new domain): undefine it when the test ends, whatever happens."""
        self._expected.append((conn or self.conn, name))
        return name

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
        for b in self._handles:
            # Never leave a job or an export running behind a test.
            if lib.virDomainBackupFinishJob(b, FINISH_JOB_CHECK) == 1:
                lib.virDomainBackupAbortJob(b, 0)
            lib.virDomainBackupFree(b)
        for conn, name in self._expected:
            ptr = lookup_domain(conn, name)
            if ptr:
                self._defined.append(ptr)
        if self.qemu:
            # libvirtd takes seconds to notice a destroyed QEMU has exited:
            # let that overlap with the next tests (joined at the end).
            domains, tmp, self._defined = self._defined, self._remove_tmp and self.tmp, []
            self._remove_tmp = False
            reap_later(lambda: _drop_domains(domains, tmp))
        _drop_domains(self._defined, None)
        for ptr in getattr(self, "_owned_domains", []):
            virt.virDomainFree(ptr)
        for ptr in self._pools:
            virt.virStoragePoolDestroy(ptr)
            virt.virStoragePoolFree(ptr)
        for c in self._conns:
            virt.virConnectClose(c)


def _drop_domains(ptrs, tmp):
    """Destroy, undefine and free domains, then remove the folder `tmp`
    (QEMU tests' images and copies are big)."""
    for ptr in ptrs:
        if virt.virDomainIsActive(ptr) == 1:
            virt.virDomainDestroy(ptr)
        # QEMU domains may keep checkpoints, which plain undefine refuses.
        if virt.virDomainUndefineFlags(ptr, VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA) < 0:
            virt.virDomainUndefine(ptr)
        virt.virDomainFree(ptr)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


_REAPERS = []


def reap_later(fn):
    """Run a cleanup `fn` in a thread; join_reapers() waits for them all."""
    t = threading.Thread(target=fn)
    t.start()
    _REAPERS.append(t)


def join_reapers():
    while _REAPERS:
        _REAPERS.pop().join()


@pytest.fixture(scope="session", autouse=True)
def _reapers():
    yield
    join_reapers()


@pytest.fixture(scope="session")
def default_conn():
    conn = virt.virConnectOpen(b"test:///default")
    assert conn, "cannot open test:///default"
    yield conn
    virt.virConnectClose(conn)


@pytest.fixture(scope="session")
def qemu_conn():
    """qemu:///system (libvirtd, see scripts/start-libvirtd.sh); the test is
    skipped when it is not reachable."""
    conn = virt.virConnectOpen(b"qemu:///system")
    if not conn:
        pytest.skip("qemu:///system is not reachable (scripts/start-libvirtd.sh starts it)")
    yield conn
    join_reapers()
    virt.virConnectClose(conn)


@pytest.fixture
def qenv(env, qemu_conn):
    """env, with QEMU domains on qemu:///system (Env.qemu_domain)."""
    env.qemu = qemu_conn
    return env


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


def py_subprocess(code, catalog, stdout=subprocess.PIPE, extra_env=None, **kw):
    """Start `sys.executable -c` with our bindings imported and the given
    catalog dir (and `extra_env` variables); returns the Popen."""
    env = dict(os.environ)
    env["LIBVIRT_BACKUP_DIR"] = catalog
    env.update(extra_env or {})
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


def start_backup_process(env, uri, dom_name, xml, stop=True):
    """A helper process that opens `uri`, starts a backup (without WAIT) of
    the domain named `dom_name`, prints the backup's UUID and vda target,
    then sleeps. Once it printed, it is stopped with SIGSTOP if `stop` (so a
    job the library runs cannot go on). Returns (Popen, uuid, target)."""
    p = py_subprocess(f"""
        import time
        conn = virt.virConnectOpen({uri!r}.encode())
        d = virt.virDomainLookupByName(conn, {dom_name!r}.encode())
        assert d
        b = lib.virDomainBackupCreateXML(d, {xml!r}.encode(), 0)
        assert b, last_error()
        print(backup_uuid(b), target_of(b), flush=True)
        time.sleep(300)
    """, env.catalog)
    ready, _, _ = select.select([p.stdout], [], [], 30)
    if not ready:
        p.kill()
        pytest.fail("backup process printed nothing in 30 s")
    line = p.stdout.readline().split()
    if len(line) != 2:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"backup process failed: {line} {err}")
    if stop:
        os.kill(p.pid, signal.SIGSTOP)
    return p, line[0], line[1]


def kill_process(p):
    """SIGKILL a helper process and reap it."""
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert p.returncode == -signal.SIGKILL
    p.stdout.close()
    p.stderr.close()


# --------------------------------------------------------------------------
# A big disk with data everywhere, for jobs that must run for a while
# --------------------------------------------------------------------------
BIG_DISK_SIZE = 2 * GiB
BIG_DATA = 1536 * MiB


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


@pytest.fixture(scope="session")
def big_qcow2(tmp_path_factory):
    """A 2 GiB qcow2 image holding 1.5 GiB of 0x31 from offset 0, made once:
    QEMU domains run on overlays of it (Env.overlay), so that a backup job
    of theirs runs long enough (about 2 s) to be looked at, cancelled or
    outlived."""
    path = str(tmp_path_factory.mktemp("bigq") / "big.qcow2")
    make_disk(path, BIG_DISK_SIZE, "qcow2", [(0, BIG_DATA, 0x31)])
    yield path
    join_reapers()  # domains on overlays of it
    os.unlink(path)


def wait_until(pred, timeout=30, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def assert_new_domain_starts(conn, name, disk_file, want):
    """The domain `name` a restore defined on `conn` exists, its disk file
    holds `want` (raw) byte for byte, and it starts."""
    dom = lookup_domain(conn, name)
    assert dom
    try:
        assert_byte_exact(disk_file, "qcow2", want, "raw")
        assert virt.virDomainCreate(dom) == 0
    finally:
        virt.virDomainFree(dom)


def daemons_serving(socket):
    """The pids of qemu-storage-daemon processes serving on `socket`."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-storage-daemon") and any(
                socket.encode() in a for a in argv):
            out.append(int(pid))
    return out


def hmp(dom_name, cmd):
    """A qemu-io command (then a flush) on a running domain's vda, through
    its monitor."""
    for c in (cmd, "flush"):
        r = subprocess.run(
            ["virsh", "-c", "qemu:///system", "qemu-monitor-command", dom_name, "--hmp",
             f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "{c}"'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert r.returncode == 0 and "rror" not in r.stdout and "failed" not in r.stdout, r.stdout
