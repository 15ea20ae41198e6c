"""Managed backups of libvirt domains, for libvirt-python programs.

A pure-Python binding of libvirt-backup (the ``virDomainBackup*`` C API),
shaped like libvirt-python: module-level constants with the C names,
functions taking ``libvirt.virDomain`` objects, a :class:`Backup` object per
backup handle, and errors raised as :class:`libvirtBackupError`, a
``libvirt.libvirtError``::

    import libvirt, libvirt_backup as lb
    conn = libvirt.open("qemu:///system")
    dom = conn.lookupByName("vm1")
    full = lb.createXML(dom, "<domainbackup/>", lb.VIR_DOMAIN_BACKUP_CREATE_WAIT)
    print(full.UUIDString(), full.parameters()["bytes.written"])

Handles are released by the garbage collector or at the end of a ``with``
block; nothing is freed by hand.

Arguments are checked before they reach C, as libvirt-python checks them:
flags that do not fit in a C ``unsigned int`` (negative, or ``2**32`` and
up) raise ``OverflowError`` rather than lose their high bits, and a string
with a NUL character in it raises ``ValueError`` rather than reach the
library cut short at the NUL.

Bridging the two bindings (the one supported way, kept in this package):

* Python to C: a ``libvirt.virDomain`` gives its ``virDomainPtr`` through
  libvirt-python's public ``virDomain.c_pointer()``. The pointer is only
  borrowed for the duration of a call (the library takes its own reference
  on the domains it keeps), so nothing of libvirt-python's object changes.
* C to Python: :meth:`Backup.domain` never wraps a C pointer into a
  ``libvirt.virDomain`` (that would need libvirt-python's private
  constructor and a reference it would later free). It reads the domain's
  UUID and connection URI from the library and looks the domain up by UUID
  on the caller's connection (the one the backup came from, when its URI is
  the same), else on a connection this package opens to that URI and keeps
  open. The result is an ordinary ``libvirt.virDomain`` holding its own
  reference, independent of the :class:`Backup`.

Interrupting a wait (Ctrl-C): :func:`createXML` with
``VIR_DOMAIN_BACKUP_CREATE_WAIT`` and :meth:`Backup.finishJob` with no
flags wait in short slices, so ``KeyboardInterrupt`` arrives within 0.1 s.
In ``createXML`` the caller has no handle yet, so the job is *aborted*
(partial data removed, as after a failure) before the interrupt propagates;
if the job had completed in the meantime the backup is kept and listed.
In ``Backup.finishJob`` the caller holds the handle, so the job *keeps
running*: call ``finishJob()`` again, or ``abortJob()``.
"""

import ctypes
import os
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from ctypes import byref, c_int, c_void_p
from typing import Dict, List, Optional, Tuple, Union

import libvirt

from . import _capi
from ._capi import lib, virt

__all__ = [
    "Backup", "libvirtBackupError", "createXML", "startUnmanaged", "listBackups",
    "listAllBackups", "getJobHistory", "lookupByUUID", "restore", "restoreUnmanaged", "setDefaultTarget", "undefine",
]

# --------------------------------------------------------------------------
# Constants (API.md; values fixed)
# --------------------------------------------------------------------------
# virDomainBackupCreateFlags
VIR_DOMAIN_BACKUP_CREATE_QUIESCE = 1 << 0
VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK = 1 << 1
VIR_DOMAIN_BACKUP_CREATE_WAIT = 1 << 2
# virDomainBackupListFlags
VIR_DOMAIN_BACKUP_LIST_FULL = 1 << 0
VIR_DOMAIN_BACKUP_LIST_LATEST = 1 << 1
VIR_DOMAIN_BACKUP_LIST_INCREMENTAL = 1 << 2
VIR_DOMAIN_BACKUP_LIST_LEAVES = 1 << 3
VIR_DOMAIN_BACKUP_LIST_DESCENDANTS = 1 << 4
# virDomainBackupRestoreFlags
VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN = 1 << 0
VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK = 1 << 1
VIR_DOMAIN_BACKUP_RESTORE_INSTANT = 1 << 2
VIR_DOMAIN_BACKUP_RESTORE_START = 1 << 3
VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY = 1 << 4
# virDomainBackupDeleteFlags
VIR_DOMAIN_BACKUP_DELETE_ALL = 1 << 0
VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN = 1 << 1
VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY = 1 << 2
# virDomainBackupFinishJobFlags
VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL = 1 << 0
VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK = 1 << 1
# virDomainBackupState
VIR_DOMAIN_BACKUP_STATE_RUNNING = 1
VIR_DOMAIN_BACKUP_STATE_COMPLETED = 2
VIR_DOMAIN_BACKUP_STATE_FAILED = 3
VIR_DOMAIN_BACKUP_STATE_CANCELLED = 4
# virDomainBackupJobHistoryFlags
VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED = 1 << 0
# virDomainBackupUndefineFlags(): with libvirt's virDomainUndefineFlagsValues
VIR_DOMAIN_UNDEFINE_BACKUP = 1 << 30

# Longest sleep between two checks of a job we wait for: the delay of Ctrl-C.
_WAIT_SLICE = 0.1

ParamValue = Union[int, bool, str, float]

_UINT_MAX = 0xFFFFFFFF


# --------------------------------------------------------------------------
# Arguments to C, checked as libvirt-python checks them
# --------------------------------------------------------------------------
def _flags(flags: int) -> int:
    """`flags` as a C ``unsigned int``. ctypes would keep the low 32 bits of
    a larger int (``2**33`` would pass as 0, ``-1`` as ``0xffffffff``), so the
    library could not refuse the bits it does not know; like libvirt-python,
    raise ``OverflowError`` for what does not fit."""
    if not isinstance(flags, int):
        raise TypeError(f"flags must be an int, not {type(flags).__name__}")
    if not 0 <= flags <= _UINT_MAX:
        raise OverflowError(f"flags {flags} do not fit in a C unsigned int")
    return int(flags)


def _cstr(s: str, what: str) -> bytes:
    """`s` as a NUL-terminated C string. A NUL inside would end it there and
    the library would read only the part before; like libvirt-python, raise
    ``ValueError`` instead."""
    if not isinstance(s, str):
        raise TypeError(f"{what} must be a str, not {type(s).__name__}")
    b = s.encode()
    if b"\0" in b:
        raise ValueError(f"embedded null character in {what}")
    return b


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
class libvirtBackupError(libvirt.libvirtError):
    """An error of libvirt-backup. A ``libvirt.libvirtError``, so existing
    ``except libvirt.libvirtError`` handlers catch it; ``get_error_code()``,
    ``get_error_domain()``, ``get_error_message()`` (and the other getters)
    give the library's error, not libvirt's last one."""

    def __init__(self, defmsg: str, err: Optional[Tuple] = None) -> None:
        # Not libvirtError.__init__: it would read libvirt's own last error.
        Exception.__init__(self, err[2] if err else defmsg)
        self.err = err


def _error(func: str) -> libvirtBackupError:
    """The library's last error on this thread, read right after a failed
    call (the next library call resets it)."""
    e = lib.virDomainBackupGetLastError()
    if not e:
        return _own_error(libvirt.VIR_ERR_INTERNAL_ERROR, f"{func} failed")
    e = e.contents

    def s(v: Optional[bytes]) -> Optional[str]:
        return v.decode(errors="replace") if v is not None else None
    return libvirtBackupError(f"{func} failed", (e.code, e.domain, s(e.message), e.level,
                                                 s(e.str1), s(e.str2), s(e.str3), e.int1, e.int2))


def _own_error(code: int, msg: str) -> libvirtBackupError:
    """An error raised by the package itself, shaped like the library's."""
    return libvirtBackupError(msg, (code, libvirt.VIR_FROM_DOMAIN, msg, libvirt.VIR_ERR_ERROR,
                                    None, None, None, 0, 0))


# --------------------------------------------------------------------------
# libvirt-python <-> C
# --------------------------------------------------------------------------
def _domain_ptr(dom: "libvirt.virDomain", func: str) -> int:
    """The virDomainPtr of a libvirt-python domain, borrowed: valid while
    the caller holds `dom`, which it does for the duration of the call."""
    if not isinstance(dom, libvirt.virDomain):
        raise _own_error(libvirt.VIR_ERR_INVALID_ARG,
                         f"domain in {func} must be a libvirt.virDomain, not {type(dom).__name__}")
    o = getattr(dom, "_o", None)
    if o is None:  # libvirt-python already let go of the pointer
        ptr = 0
    elif hasattr(dom, "c_pointer"):
        ptr = dom.c_pointer()
    else:
        ptr = _capi.capsule_pointer(o)
    if not ptr:
        raise _own_error(libvirt.VIR_ERR_INVALID_ARG, f"domain in {func} is no longer valid")
    return ptr


_own_conns: Dict[str, "libvirt.virConnect"] = {}
_own_conns_lock = threading.Lock()


def _connection(uri: str) -> "libvirt.virConnect":
    """A connection to `uri` this package opened and keeps (for domains of
    backups that came without a caller's connection)."""
    with _own_conns_lock:
        c = _own_conns.get(uri)
        if c is None or not c.isAlive():
            c = _own_conns[uri] = libvirt.open(uri)
        return c


def _same_uri(conn: Optional["libvirt.virConnect"], uri: str) -> bool:
    if conn is None:
        return False
    try:
        return conn.getURI() == uri
    except libvirt.libvirtError:  # closed
        return False


# --------------------------------------------------------------------------
# Backup objects
# --------------------------------------------------------------------------
class Backup:
    """A backup handle (``virDomainBackupPtr``), obtained from
    :func:`createXML`, :func:`startUnmanaged`, :func:`listBackups`,
    :func:`listAllBackups`, :meth:`listChildren` or :func:`lookupByUUID`. The handle is released
    when the object is garbage collected or at the end of a ``with`` block
    (after which every method raises ``VIR_ERR_INVALID_ARG``); releasing it
    does not touch the backup itself or a running job. Thread-safe."""

    def __init__(self, _ptr: int, _conn: Optional["libvirt.virConnect"] = None,
                 _unmanaged: bool = False) -> None:
        # Private: Backups come from the functions above, never from users.
        self._ptr: Optional[int] = _ptr
        self._conn = _conn
        self._unmanaged = _unmanaged
        self._uuid: Optional[str] = None
        self._lock = threading.Lock()
        self._busy = 0          # calls in flight on the handle
        self._closing = False   # released once they are done

    # ---------------------------------------------------------- lifetime
    class _Use:
        __slots__ = ("b", "ptr")

        def __init__(self, b: "Backup") -> None:
            self.b = b

        def __enter__(self) -> int:
            b = self.b
            with b._lock:
                if b._closing or b._ptr is None:
                    raise _own_error(libvirt.VIR_ERR_INVALID_ARG,
                                     "backup handle was released (used after its 'with' block)")
                b._busy += 1
                return b._ptr

        def __exit__(self, *exc) -> None:
            b = self.b
            with b._lock:
                b._busy -= 1
                if b._busy == 0 and b._closing:
                    b._free_locked()

    def _use(self) -> "Backup._Use":
        """Borrow the handle for one call: a release meanwhile (another
        thread's ``with`` block ending) waits for the call to return."""
        return Backup._Use(self)

    def _free_locked(self) -> None:
        if self._ptr is not None:
            lib.virDomainBackupFree(self._ptr)
            self._ptr = None

    def _release(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if self._busy == 0:
                self._free_locked()

    def __enter__(self) -> "Backup":
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # interpreter shutdown: modules already torn down
            pass

    def __repr__(self) -> str:
        try:
            return f"<libvirt_backup.Backup {self.UUIDString()}>"
        except libvirt.libvirtError:
            return "<libvirt_backup.Backup (unavailable)>"

    # ---------------------------------------------------------- queries
    def UUIDString(self) -> str:
        """The backup's UUID, as a string (``virDomainBackupGetUUIDString``;
        read once, then kept). An unmanaged export has a UUID of its own."""
        if self._uuid is None:
            if _capi.HAVE_ACCESSORS:
                buf = ctypes.create_string_buffer(37)  # VIR_UUID_STRING_BUFLEN
                with self._use() as p:
                    if lib.virDomainBackupGetUUIDString(p, buf) < 0:
                        raise _error("virDomainBackupGetUUIDString")
                self._uuid = buf.value.decode()
            else:  # a library older than the accessors
                u = self._desc().findtext("uuid")
                if u is None:
                    raise _own_error(libvirt.VIR_ERR_NO_SUPPORT, "this backup has no UUID")
                self._uuid = u.strip()
        return self._uuid

    def UUID(self) -> bytes:
        """The backup's UUID, as its 16 raw bytes (``virDomainBackupGetUUID``;
        libvirt-python's ``virDomain.UUID()``)."""
        if not _capi.HAVE_ACCESSORS:
            return uuidlib.UUID(self.UUIDString()).bytes
        buf = ctypes.create_string_buffer(16)  # VIR_UUID_BUFLEN
        with self._use() as p:
            if lib.virDomainBackupGetUUID(p, buf) < 0:
                raise _error("virDomainBackupGetUUID")
        return buf.raw

    def getParent(self, flags: int = 0) -> "Backup":
        """The backup this one was made on (``virDomainBackupGetParent``,
        as libvirt-python's ``virDomainSnapshot.getParent()``): a new
        :class:`Backup`. Raises ``VIR_ERR_NO_DOMAIN_BACKUP`` for a full
        backup (see :attr:`parent` for ``None`` instead)."""
        flags = _flags(flags)
        if not _capi.HAVE_ACCESSORS:  # a library older than the accessors
            u = self._desc().findtext("parent/uuid")
            if u is None or flags:
                raise _own_error(libvirt.VIR_ERR_NO_DOMAIN_BACKUP if u is None
                                 else libvirt.VIR_ERR_INVALID_ARG, "virDomainBackupGetParent failed")
            b = lookupByUUID(u.strip())
            b._conn = self._conn
            return b
        with self._use() as p:
            h = lib.virDomainBackupGetParent(p, flags)
            if not h:
                raise _error("virDomainBackupGetParent")
        return Backup(h, self._conn)

    # ---------------------------------------------------------- properties
    # Each reads the backup's XML again (or asks the library): a running
    # backup's state changes, a deleted one raises VIR_ERR_NO_DOMAIN_BACKUP.
    def _desc(self) -> ET.Element:
        return ET.fromstring(self.getXMLDesc())

    @property
    def uuid(self) -> str:
        """The backup's UUID (:meth:`UUIDString`)."""
        return self.UUIDString()

    @property
    def parent(self) -> Optional["Backup"]:
        """The backup this one was made on, a new :class:`Backup`, or
        ``None`` for a full backup (``virDomainBackupGetParent``). Deleting
        a parent re-parents its children, so this follows merges."""
        try:
            return self.getParent()
        except libvirtBackupError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_BACKUP:
                raise
        # No parent, or the parent was deleted meanwhile (the child then has
        # a new one): the XML tells, and raises if this backup is gone.
        if self._desc().find("parent") is None:
            return None
        return self.getParent()

    @property
    def kind(self) -> str:
        """``"incremental"`` for a backup made on a parent (a
        ``VIR_DOMAIN_BACKUP_LIST_INCREMENTAL`` one), ``"full"`` for a chain
        root (``VIR_DOMAIN_BACKUP_LIST_FULL``). How each disk was copied is
        its ``mode`` in :attr:`disks`."""
        return "incremental" if self._desc().find("parent") is not None else "full"

    @property
    def time(self) -> Optional[int]:
        """Creation time, seconds since 1970 (``<creationTime>``); ``None``
        for an unmanaged export."""
        t = self._desc().findtext("creationTime")
        return int(t) if t is not None else None

    @property
    def state(self) -> str:
        """``"running"``, ``"completed"``, ``"failed"`` or ``"cancelled"``."""
        return (self._desc().findtext("state") or "").strip()

    @property
    def description(self) -> Optional[str]:
        """The ``<description>`` given at creation, or ``None``."""
        return self._desc().findtext("description")

    @property
    def domainName(self) -> Optional[str]:
        """The domain's name at backup time (also when the domain is gone)."""
        d = self._desc().find("domain")
        return d.get("name") if d is not None else None

    @property
    def domainUUID(self) -> Optional[str]:
        """The domain's UUID (also when the domain is gone)."""
        d = self._desc().find("domain")
        return d.get("uuid") if d is not None else None

    @property
    def disks(self) -> List[Dict[str, Union[str, int, None]]]:
        """One dict per disk, in the backup's order: ``name``, ``type``
        (``file``/``volume``), ``mode`` (``full``/``incremental``),
        ``source``, ``target`` (files), ``format`` (``qcow2``/``raw``),
        ``pool``/``volume`` for a volume target, ``exportname``/
        ``exportbitmap`` for an unmanaged export (absent values are
        ``None``), and ``storedSize``: see :func:`_disk_of`."""
        return [_disk_of(d) for d in self._desc().findall("disks/disk")]

    @property
    def storedSize(self) -> Optional[int]:
        """Bytes this backup's own target files take on disk (the sum of
        its disks' ``storedSize``; an incremental's parents are not
        counted), ``None`` when no target file could be read."""
        sizes = [d["storedSize"] for d in self.disks if d["storedSize"] is not None]
        return sum(sizes) if sizes else None

    def getXMLDesc(self, flags: int = 0) -> str:
        """The ``<domainbackup>`` document of the backup (flags: 0 or
        ``libvirt.VIR_DOMAIN_XML_SECURE``)."""
        flags = _flags(flags)
        with self._use() as p:
            s = _capi.take_string(lib.virDomainBackupObjGetXMLDesc(p, flags))
            if s is None:
                raise _error("virDomainBackupGetXMLDesc")
        return s

    def domain(self) -> "libvirt.virDomain":
        """The backed-up domain, as a ``libvirt.virDomain`` with its own
        reference: on the connection the backup came from when its URI is
        the backup's, else on one this package opens (see the module
        docstring)."""
        buf = ctypes.create_string_buffer(37)  # VIR_UUID_STRING_BUFLEN
        with self._use() as p:
            d = lib.virDomainBackupGetDomain(p)  # borrowed, valid while p is
            if not d:
                raise _error("virDomainBackupGetDomain")
            if virt.virDomainGetUUIDString(d, buf) < 0:
                raise libvirt.libvirtError("virDomainGetUUIDString failed")
            uri = _capi.take_string(virt.virConnectGetURI(virt.virDomainGetConnect(d)))
            if uri is None:
                raise libvirt.libvirtError("virConnectGetURI failed")
        conn = self._conn
        if conn is None or not _same_uri(conn, uri):
            conn = _connection(uri)
        return conn.lookupByUUIDString(buf.value.decode())

    def listChildren(self, flags: int = 0) -> List["Backup"]:
        """Direct children (backups made on top of this one), or all
        descendants with ``VIR_DOMAIN_BACKUP_LIST_DESCENDANTS``; other
        ``VIR_DOMAIN_BACKUP_LIST_*`` flags filter, as in :func:`listBackups`."""
        flags = _flags(flags)
        with self._use() as p:
            return _collect(lib.virDomainBackupListChildren, p, flags,
                            "virDomainBackupListChildren", self._conn)

    def parameters(self) -> Dict[str, ParamValue]:
        """The job's typed parameters: ``state`` (a
        ``VIR_DOMAIN_BACKUP_STATE_*``), ``incremental`` (bool),
        ``bytes.total``, ``bytes.processed``, ``bytes.written``,
        ``time.elapsed`` (ms), ``disks``, for each disk *i* from 0
        ``disk.<i>.name`` (str), ``disk.<i>.bytes.total`` and
        ``disk.<i>.bytes.processed`` (see :meth:`diskProgress`), and
        ``error`` (str, failed jobs); live while the job runs."""
        with self._use() as p:
            n = c_int(0)
            if lib.virDomainBackupGetParameters(p, None, byref(n), 0) < 0:
                raise _error("virDomainBackupGetParameters")
            arr = (_capi.virTypedParameter * max(n.value, 1))()
            n = c_int(n.value)
            if lib.virDomainBackupGetParameters(p, arr, byref(n), 0) < 0:
                raise _error("virDomainBackupGetParameters")
        try:
            return {arr[i].field.decode(): _typed_value(arr[i]) for i in range(n.value)}
        finally:
            virt.virTypedParamsClear(arr, n.value)

    def diskProgress(self, params: Optional[Dict[str, ParamValue]] = None
                     ) -> List[Dict[str, ParamValue]]:
        """Each disk's progress, in the backup's disk order:
        ``{"name": str, "bytes.total": int, "bytes.processed": int}``, from
        `params` (a result of :meth:`parameters`, whose job-wide
        ``bytes.processed`` is the sum of these) or a new reading."""
        return _disk_progress(self.parameters() if params is None else params)

    # ---------------------------------------------------------- jobs
    def finishJob(self, flags: int = 0) -> int:
        """With 0: wait for the job to end (0 completed; raises if it failed
        or was cancelled). ``VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK``: do not
        block, 1 while it runs. ``VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL``:
        cancel it. For an unmanaged backup, 0 ends the export. Ctrl-C
        interrupts a wait and leaves the job running."""
        flags = _flags(flags)
        if flags == 0 and not self._unmanaged:
            self._wait()
        with self._use() as p:
            r = lib.virDomainBackupFinishJob(p, flags)
            if r < 0:
                raise _error("virDomainBackupFinishJob")
        return r

    def _wait(self) -> None:
        """Poll until the job ends, in slices short enough for Ctrl-C (a
        blocking C call would hold KeyboardInterrupt until the job ends)."""
        delay = 0.001
        while True:
            with self._use() as p:
                r = lib.virDomainBackupFinishJob(p, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK)
                if r < 0:
                    raise _error("virDomainBackupFinishJob")
            if r != 1:
                return
            time.sleep(delay)
            delay = min(delay * 2, _WAIT_SLICE)

    def abortJob(self) -> int:
        """Cancel the job (or a running :meth:`verify`) and wait until its
        partial data is removed. Raises ``VIR_ERR_OPERATION_INVALID`` if it
        has already ended."""
        with self._use() as p:
            if lib.virDomainBackupAbortJob(p, 0) < 0:
                raise _error("virDomainBackupAbortJob")
        return 0

    def delete(self, flags: int = 0) -> int:
        """Delete the backup (``VIR_DOMAIN_BACKUP_DELETE_*``); children are
        merged so they stay restorable. Afterwards only releasing is left."""
        flags = _flags(flags)
        with self._use() as p:
            if lib.virDomainBackupDelete(p, flags) < 0:
                raise _error("virDomainBackupDelete")
        return 0

    def verify(self, flags: int = 0) -> int:
        """Re-read the stored backup and check it against its digests
        (``virDomainBackupVerify``); raises ``VIR_ERR_OPERATION_FAILED``
        naming the first mismatch, or ``VIR_ERR_NO_SUPPORT`` when the loaded
        library has no such call."""
        flags = _flags(flags)
        if not _capi.HAVE_VERIFY:
            raise _own_error(libvirt.VIR_ERR_NO_SUPPORT,
                             "virDomainBackupVerify: not supported by this library build")
        with self._use() as p:
            if lib.virDomainBackupVerify(p, flags) < 0:
                raise _error("virDomainBackupVerify")
        return 0


def _disk_of(el: ET.Element) -> Dict[str, Union[str, int, None]]:
    """A ``<disk>`` of a backup's XML as a dict (:attr:`Backup.disks`).

    Sizes: the XML carries none, so ``storedSize`` is what the target file
    takes on disk, from ``os.stat`` (allocated blocks x 512, as ``du``
    counts): an incremental's own delta, not its chain. It is ``None`` when
    the file cannot be stat'ed by this process (another host's path, no
    permission on its folder, a deleted file) and for an unmanaged export,
    which stores nothing."""
    target, source, driver = el.find("target"), el.find("source"), el.find("driver")
    d: Dict[str, Union[str, int, None]] = {
        "name": el.get("name"),
        "type": el.get("type"),
        "mode": el.get("backupmode"),
        "source": source.get("file") if source is not None else None,
        "target": target.get("file") if target is not None else None,
        "format": driver.get("type") if driver is not None else None,
    }
    if target is not None and target.get("pool") is not None:
        d["pool"], d["volume"] = target.get("pool"), target.get("volume")
    if el.get("exportname") is not None:
        d["exportname"], d["exportbitmap"] = el.get("exportname"), el.get("exportbitmap")
    d["storedSize"] = _stored_size(d["target"])
    return d


def _stored_size(path: Union[str, int, None]) -> Optional[int]:
    if not isinstance(path, str):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_blocks * 512


def _disk_progress(params: Dict[str, ParamValue]) -> List[Dict[str, ParamValue]]:
    """The ``disk.<i>.*`` entries of :meth:`Backup.parameters`, one dict
    per disk in order: ``name``, ``bytes.total``, ``bytes.processed``."""
    out: List[Dict[str, ParamValue]] = []
    while f"disk.{len(out)}.name" in params:
        i = len(out)
        out.append({k: params[f"disk.{i}.{k}"]
                    for k in ("name", "bytes.total", "bytes.processed")
                    if f"disk.{i}.{k}" in params})
    return out


def _typed_value(p: "_capi.virTypedParameter") -> ParamValue:
    t, v = p.type, p.value
    if t == libvirt.VIR_TYPED_PARAM_INT:
        return v.i
    if t == libvirt.VIR_TYPED_PARAM_UINT:
        return v.ui
    if t == libvirt.VIR_TYPED_PARAM_LLONG:
        return v.l
    if t == libvirt.VIR_TYPED_PARAM_ULLONG:
        return v.ul
    if t == libvirt.VIR_TYPED_PARAM_DOUBLE:
        return v.d
    if t == libvirt.VIR_TYPED_PARAM_BOOLEAN:
        return v.b != b"\0"
    if t == libvirt.VIR_TYPED_PARAM_STRING:
        return ctypes.string_at(v.s).decode() if v.s else ""
    raise _own_error(libvirt.VIR_ERR_INTERNAL_ERROR,
                     f"unknown type {t} of typed parameter {p.field.decode()}")


def _collect(func, obj: int, flags: int, name: str,
             conn: Optional["libvirt.virConnect"]) -> List[Backup]:
    """Run a virDomainBackupList-shaped call; each handle goes into a
    Backup at once (so none is lost), then the array is freed."""
    arr = _capi.BackupArray()
    n = func(obj, byref(arr), flags)
    if n < 0:
        raise _error(name)
    try:
        return [Backup(arr[i], conn) for i in range(n)]
    finally:
        _capi.libc.free(ctypes.cast(arr, c_void_p))


# --------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------
def createXML(dom: "libvirt.virDomain", xml: Optional[str] = None, flags: int = 0) -> Backup:
    """Start a managed backup of `dom` described by a ``<domainbackup>``
    document (flags: ``VIR_DOMAIN_BACKUP_CREATE_*``); ``""`` or ``None``
    means ``<domainbackup/>``: every disk, to its default target. Returns
    at once with the job running, or, with ``VIR_DOMAIN_BACKUP_CREATE_WAIT``,
    when it has completed (raises if it failed). Ctrl-C during that wait
    aborts the job."""
    ptr = _domain_ptr(dom, "createXML")
    x, flags = _cstr(xml or "<domainbackup/>", "xml"), _flags(flags)
    # WAIT is done here, in slices, so that Ctrl-C is not held up.
    h = lib.virDomainBackupCreateXML(ptr, x, flags & ~VIR_DOMAIN_BACKUP_CREATE_WAIT)
    if not h:
        raise _error("virDomainBackupCreateXML")
    b = Backup(h, dom.connect())
    if flags & VIR_DOMAIN_BACKUP_CREATE_WAIT:
        try:
            b._wait()
        except KeyboardInterrupt:
            try:
                b.abortJob()
            except libvirt.libvirtError:
                pass  # it ended meanwhile: a completed backup stays listed
            raise
        b.finishJob(0)  # raises the job's error if it failed
    return b


def startUnmanaged(dom: Optional["libvirt.virDomain"], xml: str, flags: int = 0) -> Backup:
    """Start a read-only NBD export of `dom`'s disks (a ``<server>`` and
    the disks in `xml`); end it with ``finishJob()`` or ``abortJob()``.
    With `dom` ``None``, export a stored backup instead: `xml` names a
    completed managed backup by its ``<uuid>`` and that point in time is
    served (``virDomainBackupStartUnmanaged`` with a NULL domain)."""
    ptr = None if dom is None else _domain_ptr(dom, "startUnmanaged")
    h = lib.virDomainBackupStartUnmanaged(ptr, _cstr(xml, "xml"), _flags(flags))
    if not h:
        raise _error("virDomainBackupStartUnmanaged")
    return Backup(h, None if dom is None else dom.connect(), _unmanaged=True)


def listBackups(dom: "libvirt.virDomain", flags: int = 0) -> List[Backup]:
    """`dom`'s managed backups, oldest first, filtered by
    ``VIR_DOMAIN_BACKUP_LIST_*`` flags."""
    ptr = _domain_ptr(dom, "listBackups")
    return _collect(lib.virDomainBackupList, ptr, _flags(flags), "virDomainBackupList",
                    dom.connect())


def listAllBackups(flags: int = 0) -> List[Backup]:
    """Every managed backup of the catalog, of every domain, whether the
    domain is still defined or not (``virDomainBackupList`` with a NULL
    domain), oldest first, filtered by ``VIR_DOMAIN_BACKUP_LIST_*`` flags
    as :func:`listBackups` (``VIR_DOMAIN_BACKUP_LIST_LATEST``: the newest of
    the whole catalog). :meth:`Backup.domain` of a backup whose domain no
    longer exists raises ``VIR_ERR_NO_DOMAIN``; its :meth:`Backup.getXMLDesc`
    still names the domain and holds its saved ``<definition>``, and it
    restores as a new domain."""
    return _collect(lib.virDomainBackupList, None, _flags(flags), "virDomainBackupList", None)


def getJobHistory(dom: Optional["libvirt.virDomain"] = None, flags: int = 0) -> str:
    """The catalog's job history as a ``<jobhistory>`` document, oldest
    first (``virDomainBackupGetJobHistory``): `dom`'s jobs, or every
    domain's with None; ``VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED``: only jobs
    that failed, were cancelled or were interrupted."""
    ptr = None if dom is None else _domain_ptr(dom, "getJobHistory")
    s = _capi.take_string(lib.virDomainBackupGetJobHistory(ptr, _flags(flags)))
    if s is None:
        raise _error("virDomainBackupGetJobHistory")
    return s


def lookupByUUID(*args, flags: int = 0) -> Backup:
    """The managed backup with this UUID, of any domain (raises
    ``VIR_ERR_NO_DOMAIN_BACKUP`` if there is none). Called as
    ``lookupByUUID(uuid[, flags])`` or, in libvirt-python's
    ``conn.lookupByUUID`` habit, ``lookupByUUID(conn, uuid[, flags])``: the
    catalog is the same whatever the connection, which is only kept to
    find :meth:`Backup.domain` on. `uuid` is a string or the 16 raw bytes
    (``Backup.UUID()``, ``virDomain.UUID()``'s form); a ``uuid.UUID``
    works too."""
    conn, uuid, flags = _lookup_args(args, flags)
    h = lib.virDomainBackupLookupByUUID(_cstr(uuid, "uuid"), _flags(flags))
    if not h:
        raise _error("virDomainBackupLookupByUUID")
    return Backup(h, conn)


def _lookup_args(args: Tuple, flags: int) -> Tuple[Optional["libvirt.virConnect"], str, int]:
    """(conn, uuid as a str, flags) from lookupByUUID's arguments."""
    args = list(args)
    conn = None
    if args and (args[0] is None or isinstance(args[0], libvirt.virConnect)):
        conn = args.pop(0)
    if not args:
        raise TypeError("lookupByUUID() missing its uuid argument")
    if len(args) > 2 or (len(args) == 2 and flags):
        raise TypeError("lookupByUUID() takes ([conn,] uuid[, flags])")
    uuid = args[0]
    if len(args) == 2:
        flags = args[1]
    if isinstance(uuid, uuidlib.UUID):
        uuid = str(uuid)
    elif isinstance(uuid, (bytes, bytearray)):
        if len(uuid) != 16:
            raise TypeError(f"uuid must be a str or 16 raw bytes, not {len(uuid)} bytes")
        uuid = str(uuidlib.UUID(bytes=bytes(uuid)))
    return conn, uuid, flags


def restore(xml: str, flags: int = 0) -> int:
    """Restore the backup named by the ``<uuid>`` of `xml` into its own
    (shut off) domain or, with ``VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN``, as
    a new persistent domain (then found with ``conn.lookupByName``)."""
    if lib.virDomainBackupRestore(_cstr(xml, "xml"), _flags(flags)) < 0:
        raise _error("virDomainBackupRestore")
    return 0


def restoreUnmanaged(dom: "libvirt.virDomain", xml: str, flags: int = 0) -> int:
    """Write `dom`'s disks from sources the library did not make (files or
    NBD exports named in `xml`)."""
    ptr = _domain_ptr(dom, "restoreUnmanaged")
    if lib.virDomainBackupRestoreUnmanaged(ptr, _cstr(xml, "xml"), _flags(flags)) < 0:
        raise _error("virDomainBackupRestoreUnmanaged")
    return 0


def setDefaultTarget(dom: "libvirt.virDomain", xml: str, flags: int = 0) -> int:
    """Set where `dom`'s backups go when a disk has no ``<target>``
    (flags: ``libvirt.VIR_DOMAIN_AFFECT_*``)."""
    ptr = _domain_ptr(dom, "setDefaultTarget")
    if lib.virDomainSetDefaultTarget(ptr, _cstr(xml, "xml"), _flags(flags)) < 0:
        raise _error("virDomainSetDefaultTarget")
    return 0


def undefine(dom: "libvirt.virDomain", flags: int = 0) -> int:
    """``dom.undefineFlags(flags)`` that knows about managed backups: with
    ``VIR_DOMAIN_UNDEFINE_BACKUP`` their metadata goes too (data files
    stay); without it a domain that has some is refused
    (``VIR_ERR_OPERATION_INVALID``)."""
    ptr = _domain_ptr(dom, "undefine")
    if lib.virDomainBackupUndefineFlags(ptr, _flags(flags)) < 0:
        raise _error("virDomainBackupUndefineFlags")
    return 0
