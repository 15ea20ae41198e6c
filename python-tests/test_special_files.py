"""A backup's image, or a domain's disk, replaced by a FIFO: Verify and
restore fail at once with an error naming the file and saying what it is,
instead of hanging forever on an open or a read that waits for a writer."""

import os
import threading

from conftest import (K64, MiB, RESTORE_REWRITE_EXISTING_DISK, VIR_ERR_INVALID_ARG, VIR_ERR_OPERATION_FAILED,
                      _decl, last_error, lib, restore_xml_for)
from ctypes import c_int, c_uint, c_void_p

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)

LIMIT = 30  # seconds; each call takes well under one


def bounded(fifo, call):
    """Run `call` (returning 0 or -1) on a thread and return its result and
    the (code, message) of its error. If it has not returned within LIMIT,
    it is blocked on the FIFO: unblock it (a writer opens and closes the
    FIFO: the open returns, reads find its end) and fail."""
    out = {}

    def run():
        out["rc"] = call()
        out["err"] = last_error()  # per thread

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(LIMIT)
    if t.is_alive():
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
        t.join(LIMIT)
        raise AssertionError(f"blocked on the FIFO {fifo} for {LIMIT} s")
    return out["rc"], out["err"]


def refused(fifo, call, *fragments, want=VIR_ERR_OPERATION_FAILED):
    rc, (code, msg) = bounded(fifo, call)
    assert rc == -1, "succeeded on a FIFO"
    assert code == want, (code, msg)
    for f in (fifo, "is a FIFO, not a regular file") + fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def to_fifo(path):
    """Put a FIFO at `path`, the file moved aside; returns a function that
    puts the file back."""
    os.rename(path, path + ".away")
    os.mkfifo(path, 0o600)

    def back():
        os.rename(path + ".away", path)
    return back


def test_a_backup_image_replaced_by_a_fifo_is_an_error_not_a_hang(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full", writes=[(0, MiB, 0x11)])
    inc = h.take("inc", full, [(4 * MiB, K64, 0x43)])
    verify = lib.virDomainBackupVerify
    for doomed in (full, inc):
        back = to_fifo(doomed.target)
        # The image itself, or a level of the chain read through (the
        # full backup's, read for the incremental).
        for b in (t for t in (full, inc) if t is doomed or doomed is full):
            refused(doomed.target, lambda: verify(b.handle, 0), "disk 'vda'")
            out = env.path(f"out-{os.path.basename(b.target)}.raw")
            xml = restore_xml_for(b.uuid, {"vda": (out, "raw")})
            refused(doomed.target, lambda: lib.virDomainBackupRestore(xml.encode(), 0))
            assert not os.path.exists(out)
            xml = restore_xml_for(b.uuid)
            refused(doomed.target, lambda: lib.virDomainBackupRestore(
                xml.encode(), RESTORE_REWRITE_EXISTING_DISK))
        back()
    for b in (full, inc):
        assert verify(b.handle, 0) == 0, last_error()


def test_a_domain_disk_replaced_by_a_fifo_is_an_error_not_a_hang(env):
    dom = env.domain(size=8 * MiB)
    h = env.history(dom)
    full = h.take("full", writes=[(0, MiB, 0x11)])
    back = to_fifo(h.src)
    xml = restore_xml_for(full.uuid)
    # Refused as a restore target (what is at the disk's name is checked
    # before anything is read or written).
    refused(h.src, lambda: lib.virDomainBackupRestore(xml.encode(), RESTORE_REWRITE_EXISTING_DISK),
            "or a block device", want=VIR_ERR_INVALID_ARG)
    back()
    h.check(full)
