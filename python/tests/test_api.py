"""The package's shape: constants, errors as libvirt.libvirtError, handle
lifetime checked through the C ABI, threads, the library search order."""

import gc
import os
import re
import subprocess
import sys
import threading

import libvirt
import pytest

import libvirt_backup as lb
from conftest import PKG_ROOT, REPO, disk_of, in_threads
from libvirt_backup import _capi

WAIT = lb.VIR_DOMAIN_BACKUP_CREATE_WAIT

# API.md, "Flags" and "EXTENSIONS": exact names and values.
API_CONSTANTS = {
    "VIR_DOMAIN_BACKUP_CREATE_QUIESCE": 1, "VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK": 2,
    "VIR_DOMAIN_BACKUP_CREATE_WAIT": 4,
    "VIR_DOMAIN_BACKUP_LIST_FULL": 1, "VIR_DOMAIN_BACKUP_LIST_LATEST": 2,
    "VIR_DOMAIN_BACKUP_LIST_INCREMENTAL": 4, "VIR_DOMAIN_BACKUP_LIST_LEAVES": 8,
    "VIR_DOMAIN_BACKUP_LIST_DESCENDANTS": 16,
    "VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN": 1, "VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK": 2,
    "VIR_DOMAIN_BACKUP_RESTORE_INSTANT": 4, "VIR_DOMAIN_BACKUP_RESTORE_START": 8,
    "VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY": 16,
    "VIR_DOMAIN_BACKUP_DELETE_ALL": 1, "VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN": 2,
    "VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY": 4,
    "VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL": 1, "VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK": 2,
    "VIR_DOMAIN_BACKUP_STATE_RUNNING": 1, "VIR_DOMAIN_BACKUP_STATE_COMPLETED": 2,
    "VIR_DOMAIN_BACKUP_STATE_FAILED": 3, "VIR_DOMAIN_BACKUP_STATE_CANCELLED": 4,
    "VIR_DOMAIN_UNDEFINE_BACKUP": 1 << 30,
}


def test_constants_match_api_and_header():
    for name, value in API_CONSTANTS.items():
        assert getattr(lb, name) == value, name
    # Every VIR_ constant the header defines has the same value here.
    with open(os.path.join(REPO, "include", "libvirt-backup", "libvirt-backup.h")) as f:
        header = f.read()
    found = re.findall(r"\b(VIR_[A-Z_]+)\s*=\s*\(?(\d+)(?:\s*<<\s*(\d+))?\)?", header)
    found += re.findall(r"#define (VIR_[A-Z_]+) \((\d+) << (\d+)\)", header)
    assert len(found) >= 20
    for name, base, shift in found:
        assert getattr(lb, name) == int(base) << int(shift or 0), name
    assert set(API_CONSTANTS) <= {n for n in dir(lb) if n.startswith("VIR_")}


def test_package_is_typed():
    assert os.path.exists(os.path.join(PKG_ROOT, "libvirt_backup", "py.typed"))
    assert lb.createXML.__annotations__["return"] is lb.Backup
    for f in lb.__all__:
        assert getattr(lb, f).__doc__, f


def test_errors_are_libvirt_errors(env):
    dom = env.domain()
    # Malformed XML: the library's code, domain and message.
    try:
        lb.createXML(dom, "<domainbackup>", WAIT)
    except libvirt.libvirtError as e:
        assert isinstance(e, lb.libvirtBackupError)
        assert e.get_error_code() == libvirt.VIR_ERR_XML_ERROR
        assert e.get_error_domain() == libvirt.VIR_FROM_DOMAIN
        assert e.get_error_message() and str(e) == e.get_error_message()
        assert e.get_error_level() == libvirt.VIR_ERR_ERROR
    else:
        pytest.fail("no error")
    # Unknown flags, in libvirt's words.
    with pytest.raises(libvirt.libvirtError) as e:
        lb.createXML(dom, "<domainbackup/>", 1 << 20)
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert "unsupported flags (0x100000)" in e.value.get_error_message()
    # A disk the domain does not have: nothing created.
    with pytest.raises(libvirt.libvirtError) as e:
        lb.createXML(dom, "<domainbackup><disks><disk name='vdz'/></disks></domainbackup>", WAIT)
    assert "vdz" in e.value.get_error_message()
    assert lb.listBackups(dom) == []
    # Not a domain at all, or one whose object was freed.
    for bad in (None, "vm1", env.conn):
        with pytest.raises(libvirt.libvirtError) as e:
            lb.listBackups(bad)
        assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    stale = env.conn.lookupByName(dom.name())
    stale.__del__()  # what libvirt-python does when it lets go of the pointer
    with pytest.raises(libvirt.libvirtError) as e:
        lb.listBackups(stale)
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    # The error is the library's, not libvirt's last one.
    with pytest.raises(libvirt.libvirtError):
        env.conn.lookupByName("no-such-domain-xyz")
    with pytest.raises(libvirt.libvirtError) as e:
        lb.lookupByUUID("not-a-uuid")
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert "not-a-uuid" in e.value.get_error_message()


def test_domain_pointer_both_ways(env, monkeypatch):
    """c_pointer() and the capsule fallback (libvirt-python without
    c_pointer) read the same virDomainPtr."""
    dom = env.domain()
    b = lb.createXML(dom, "<domainbackup/>", WAIT)
    assert dom.c_pointer() and _capi.capsule_pointer(dom._o) == dom.c_pointer()
    monkeypatch.delattr(libvirt.virDomain, "c_pointer")
    assert [x.UUIDString() for x in lb.listBackups(dom)] == [b.UUIDString()]


def test_released_handles_are_refused(env):
    dom = env.domain()
    lb.createXML(dom, "<domainbackup/>", WAIT)
    with lb.listBackups(dom)[0] as b:
        u = b.UUIDString()
        ptr = b._ptr
    assert _is_live(ptr) is False  # released by the with block
    with pytest.raises(libvirt.libvirtError) as e:
        b.getXMLDesc()
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    b = lb.lookupByUUID(u)
    ptr = b._ptr
    assert _is_live(ptr) is True
    del b
    gc.collect()
    assert _is_live(ptr) is False  # released by the garbage collector


def _is_live(ptr):
    """Whether the library still holds `ptr` as a handle: a released one is
    refused with VIR_ERR_INVALID_ARG."""
    s = _capi.take_string(_capi.lib.virDomainBackupObjGetXMLDesc(ptr, 0))
    if s is not None:
        return True
    assert _capi.lib.virDomainBackupGetLastError().contents.code == libvirt.VIR_ERR_INVALID_ARG
    return False


def test_no_leaked_handles(env):
    """Many calls that hand out handles: none is live once the objects are
    gone (the library refuses a released handle), and no address was handed
    out twice (the library never reuses one)."""
    dom = env.domain()
    full = lb.createXML(dom, "<domainbackup/>", WAIT)
    lb.createXML(dom, f"<domainbackup><parent><uuid>{full.UUIDString()}</uuid></parent></domainbackup>",
                 WAIT)
    u = full.UUIDString()
    del full
    gc.collect()
    seen = []
    for _ in range(100):
        for b in lb.listBackups(dom):
            seen.append(b._ptr)
            b.parameters()
        with lb.lookupByUUID(u) as b:
            seen.append(b._ptr)
            for c in b.listChildren(lb.VIR_DOMAIN_BACKUP_LIST_DESCENDANTS):
                seen.append(c._ptr)
                c.domain()
        b = c = None
    gc.collect()
    assert len(seen) == 400 and len(set(seen)) == 400, "a handle address was handed out twice"
    live = [p for p in seen if _is_live(p)]
    assert not live, f"{len(live)} of {len(seen)} handles still held by the library"


def test_threads_share_handles_and_keep_their_errors(env):
    dom = env.domain()
    full = lb.createXML(dom, "<domainbackup/>", WAIT)
    inc = lb.createXML(dom, f"<domainbackup><parent><uuid>{full.UUIDString()}</uuid></parent>"
                            "</domainbackup>", WAIT)
    want = [full.UUIDString(), inc.UUIDString()]

    def work(i):
        for _ in range(30):
            if i % 2:
                assert [b.UUIDString() for b in lb.listBackups(dom)] == want
                assert inc.parameters()["state"] == lb.VIR_DOMAIN_BACKUP_STATE_COMPLETED
                assert full.domain().name() == dom.name()
                assert [c.UUIDString() for c in full.listChildren()] == want[1:]
            else:
                # Errors are per thread: each sees its own.
                with pytest.raises(libvirt.libvirtError) as e:
                    lb.lookupByUUID("00000000-0000-0000-0000-00000000000%d" % i)
                assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP
                assert f"00000000000{i}" in e.value.get_error_message()
    in_threads(6, work)

    # A handle released by one thread while others use it: calls in flight
    # finish, later ones are refused, nothing crashes.
    b = lb.lookupByUUID(want[0])
    stop = threading.Event()
    refused = []

    def user(_i):
        while not stop.is_set():
            try:
                b.getXMLDesc()
            except libvirt.libvirtError as e:
                assert e.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
                refused.append(1)
                return
    ts = [threading.Thread(target=user, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    b.__exit__(None, None, None)
    for t in ts:
        t.join(10)
    stop.set()
    assert len(refused) == 3


def test_library_search_order(tmp_path):
    """$LIBVIRT_BACKUP_LIB first, then the installed path, then the loader;
    a missing library is an ImportError naming what was tried."""
    code = "import libvirt_backup as lb; print(lb._capi.lib._name)"
    env = dict(os.environ, PYTHONPATH=PKG_ROOT, LIBVIRT_BACKUP_LIB="/nonexistent/libvirt-backup.so.0",
               LD_LIBRARY_PATH="")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "/nonexistent/libvirt-backup.so.0" in r.stderr
    assert "libvirt-backup.so.0" in r.stderr.split("/nonexistent/libvirt-backup.so.0", 1)[1]
    # Through the loader's search path alone.
    real = os.environ["LIBVIRT_BACKUP_LIB"]
    env = dict(os.environ, PYTHONPATH=PKG_ROOT, LD_LIBRARY_PATH=os.path.dirname(real))
    env.pop("LIBVIRT_BACKUP_LIB")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "libvirt-backup.so.0"
    # Through a _paths.py as `make install` writes it.
    pkg = tmp_path / "libvirt_backup"
    pkg.mkdir()
    for f in ("__init__.py", "_capi.py"):
        (pkg / f).write_text(open(os.path.join(PKG_ROOT, "libvirt_backup", f)).read())
    (pkg / "_paths.py").write_text(f"LIBRARY = {real!r}\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LD_LIBRARY_PATH="")
    env.pop("LIBVIRT_BACKUP_LIB")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == real


def _entry_points(env, dom, b, flags, xml_tail=""):
    """Every call of the package that passes flags or strings to C, each as
    (name, thunk), with `flags` and `xml_tail` added to its arguments."""
    u = b.UUIDString()
    sock = env.path("never.sock")
    new = env.expect_domain(dom.name() + "-r")
    restore_xml = (f"<domainbackup><uuid>{u}</uuid><domain name='{new}'/></domainbackup>"
                   + xml_tail)
    # Sources that exist: were the call to run, it would do something.
    src = env.copy(disk_of(dom), "src.raw")
    return [
        ("Backup.delete", lambda: b.delete(flags)),
        ("Backup.getXMLDesc", lambda: b.getXMLDesc(flags)),
        ("Backup.listChildren", lambda: b.listChildren(flags)),
        ("Backup.finishJob", lambda: b.finishJob(flags)),
        ("Backup.verify", lambda: b.verify(flags)),
        ("createXML", lambda: lb.createXML(dom, "<domainbackup/>" + xml_tail, flags)),
        ("startUnmanaged", lambda: lb.startUnmanaged(
            dom, f"<domainbackup><server transport='unix' socket='{sock}'/></domainbackup>"
            + xml_tail, flags)),
        ("listBackups", lambda: lb.listBackups(dom, flags)),
        ("lookupByUUID", lambda: lb.lookupByUUID(u + xml_tail, flags)),
        ("restore", lambda: lb.restore(restore_xml, flags)),
        ("restoreUnmanaged", lambda: lb.restoreUnmanaged(
            dom, f"<domainbackup><disks><disk name='vda'><source file='{src}'>"
                 "<driver type='raw'/></source></disk></disks></domainbackup>" + xml_tail, flags)),
        ("setDefaultTarget", lambda: lb.setDefaultTarget(
            dom, f"<target type='dir'><path>{env.tmp}</path></target>" + xml_tail, flags)),
        ("undefine", lambda: lb.undefine(dom, flags)),
    ]


def _nothing_changed(env, dom, u):
    assert [x.UUIDString() for x in lb.listBackups(dom)] == [u]
    assert env.conn.lookupByName(dom.name()).name() == dom.name()
    assert not os.path.exists(env.path("never.sock"))
    with pytest.raises(libvirt.libvirtError):
        env.conn.lookupByName(dom.name() + "-r")


def test_flags_that_do_not_fit_unsigned_int_raise_overflow_error(env):
    """ctypes keeps the low 32 bits of an int passed as c_uint: delete(2**33)
    ran as delete(0), and deleted the backup. Like libvirt-python, every
    entry point raises OverflowError for flags outside C unsigned int (a
    negative one too), before anything reaches the library."""
    dom = env.domain()
    b = lb.createXML(dom, "<domainbackup/>", WAIT)
    u = b.UUIDString()
    for bad in (2**33, 2**32 + WAIT, 2**64 + lb.VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY, -1,
                -(2**32)):
        for name, call in _entry_points(env, dom, b, bad):
            with pytest.raises(OverflowError, match="unsigned int"):
                call()
                pytest.fail(f"{name}({bad:#x}) reached the library")
        _nothing_changed(env, dom, u)
    # The largest unsigned int reaches the library, which refuses the bits
    # it does not know.
    with pytest.raises(libvirt.libvirtError) as e:
        b.delete(2**32 - 1)
    assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert "unsupported flags" in e.value.get_error_message()
    # Not an int at all, as libvirt-python: TypeError.
    with pytest.raises(TypeError):
        b.delete(1.0)
    _nothing_changed(env, dom, u)


def test_nul_in_a_string_raises_value_error(env):
    """A NUL inside a str ended the C string there: the library read a
    shorter document (or UUID) than the caller wrote. Like libvirt-python,
    every string argument with a NUL raises ValueError."""
    dom = env.domain()
    b = lb.createXML(dom, "<domainbackup/>", WAIT)
    u = b.UUIDString()
    # What follows the NUL would make each call fail, were it read.
    for tail in ("\0<not-xml", "\0", "\0" + "x" * 100):
        for name, call in _entry_points(env, dom, b, 0, xml_tail=tail):
            if name.startswith("Backup.") or name in ("listBackups", "undefine"):
                continue  # no string argument
            with pytest.raises(ValueError, match="null character"):
                call()
                pytest.fail(f"{name} took a string with a NUL")
        _nothing_changed(env, dom, u)
    with pytest.raises(TypeError):
        lb.lookupByUUID(u.encode())
    _nothing_changed(env, dom, u)
