"""ctypes bindings of libvirt-backup.so.0 and the few libvirt calls the
package needs. Private: the public API is in ``libvirt_backup``.

The shared library is found, in order, through ``$LIBVIRT_BACKUP_LIB``, the
path ``make install`` wrote into ``_paths.py``, then the dynamic loader's
search path. libvirt itself is the ``libvirt.so.0`` libvirt-python already
loaded, so C pointers pass freely between the two bindings.
"""

import ctypes
import importlib
import os
from ctypes import POINTER, c_char, c_char_p, c_double, c_int, c_longlong, c_uint, c_ulonglong, c_void_p
from typing import List, Optional

SONAME = "libvirt-backup.so.0"


def _candidates() -> List[str]:
    tried = []
    env = os.environ.get("LIBVIRT_BACKUP_LIB")
    if env:
        tried.append(env)
    try:  # written by `make install`
        tried.append(importlib.import_module(__package__ + "._paths").LIBRARY)
    except ImportError:
        pass
    tried.append(SONAME)  # the loader's search path (ld.so.cache, LD_LIBRARY_PATH)
    return tried


def _load() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("libvirt_backup: cannot load the libvirt-backup library; tried "
                      "$LIBVIRT_BACKUP_LIB, the install prefix, then the loader's search path:\n  "
                      + "\n  ".join(errors))


lib = _load()
virt = ctypes.CDLL("libvirt.so.0")
libc = ctypes.CDLL("libc.so.6")


class _TypedParamValue(ctypes.Union):
    _fields_ = [("i", c_int), ("ui", c_uint), ("l", c_longlong), ("ul", c_ulonglong),
                ("d", c_double), ("b", c_char), ("s", c_void_p)]


class virTypedParameter(ctypes.Structure):
    _fields_ = [("field", c_char * 80),  # VIR_TYPED_PARAM_FIELD_LENGTH
                ("type", c_int), ("value", _TypedParamValue)]


class virError(ctypes.Structure):
    _fields_ = [("code", c_int), ("domain", c_int), ("message", c_char_p), ("level", c_int),
                ("conn", c_void_p), ("dom", c_void_p), ("str1", c_char_p), ("str2", c_char_p),
                ("str3", c_char_p), ("int1", c_int), ("int2", c_int), ("net", c_void_p)]


BackupArray = POINTER(c_void_p)  # virDomainBackupPtr *


def _decl(so: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    f = getattr(so, name)
    f.restype = restype
    f.argtypes = list(argtypes)


# Handles and strings the library returns are c_void_p so that they can be
# freed (ctypes would copy a c_char_p and lose the pointer).
_decl(lib, "virDomainBackupCreateXML", c_void_p, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupStartUnmanaged", c_void_p, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupList", c_int, c_void_p, POINTER(BackupArray), c_uint)
_decl(lib, "virDomainBackupListChildren", c_int, c_void_p, POINTER(BackupArray), c_uint)
_decl(lib, "virDomainBackupRestore", c_int, c_char_p, c_uint)
_decl(lib, "virDomainBackupRestoreUnmanaged", c_int, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupDelete", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupRef", c_int, c_void_p)
_decl(lib, "virDomainBackupFree", c_int, c_void_p)
# The unambiguous name: libvirt's virDomainBackupGetXMLDesc takes a domain.
_decl(lib, "virDomainBackupObjGetXMLDesc", c_void_p, c_void_p, c_uint)
_decl(lib, "virDomainBackupLookupByUUID", c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupGetJobHistory", c_void_p, c_void_p, c_uint)
_decl(lib, "virDomainBackupGetDomain", c_void_p, c_void_p)
_decl(lib, "virDomainBackupFinishJob", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupAbortJob", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupGetParameters", c_int, c_void_p,
      POINTER(virTypedParameter), POINTER(c_int), c_uint)
_decl(lib, "virDomainSetDefaultTarget", c_int, c_void_p, c_char_p, c_uint)
_decl(lib, "virDomainBackupUndefineFlags", c_int, c_void_p, c_uint)
_decl(lib, "virDomainBackupGetLastError", POINTER(virError))
_decl(lib, "virDomainBackupResetLastError", None)

# virDomainBackupVerify is newer than the rest: absent from older builds.
HAVE_VERIFY = hasattr(lib, "virDomainBackupVerify")
if HAVE_VERIFY:
    _decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)

# The accessors (API.md EXTENSIONS) are newer too; the package falls back on
# the XML without them.
HAVE_ACCESSORS = all(hasattr(lib, n) for n in (
    "virDomainBackupGetUUID", "virDomainBackupGetUUIDString", "virDomainBackupGetParent"))
if HAVE_ACCESSORS:
    _decl(lib, "virDomainBackupGetUUID", c_int, c_void_p, POINTER(c_char))
    _decl(lib, "virDomainBackupGetUUIDString", c_int, c_void_p, POINTER(c_char))
    _decl(lib, "virDomainBackupGetParent", c_void_p, c_void_p, c_uint)

_decl(virt, "virDomainGetUUIDString", c_int, c_void_p, c_char_p)
_decl(virt, "virDomainGetConnect", c_void_p, c_void_p)
_decl(virt, "virConnectGetURI", c_void_p, c_void_p)
_decl(virt, "virTypedParamsClear", None, POINTER(virTypedParameter), c_int)
_decl(libc, "free", None, c_void_p)


# libvirt-python objects keep their C pointer in a PyCapsule (`_o`); read
# it only where virDomain.c_pointer() is missing (libvirt-python < 1.3.5).
_api = ctypes.pythonapi
_api.PyCapsule_GetName.restype = c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_GetPointer.restype = c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, c_char_p]


def capsule_pointer(capsule: object) -> int:
    """The pointer a libvirt-python PyCapsule holds (0 if none)."""
    return _api.PyCapsule_GetPointer(capsule, _api.PyCapsule_GetName(capsule)) or 0


def take_string(ptr: Optional[int]) -> Optional[str]:
    """Copy a malloc'd C string and free() it."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode()
    finally:
        libc.free(ptr)
