"""virDomainBackupVerify: a stored backup re-read through its chain and
checked against its digest index. A byte flipped in a stored image (at a
host offset found with qemu-img map, so the qcow2 metadata stays intact) is
reported with the disk and the guest offset of its 64 KiB chunk; progress
is visible from another thread; AbortJob stops it."""

import json
import subprocess
import threading
from ctypes import c_int, c_uint, c_void_p

from conftest import (K64, MiB, VIR_ERR_INVALID_ARG, VIR_ERR_NO_DOMAIN_BACKUP,
                      VIR_ERR_OPERATION_ABORTED, VIR_ERR_OPERATION_FAILED,
                      VIR_ERR_OPERATION_INVALID, _decl, backup_uuid, backup_xml_for,
                      delete, expect_error, get_params, lib, qemu_io, wait_until)

_decl(lib, "virDomainBackupVerify", c_int, c_void_p, c_uint)
verify = lib.virDomainBackupVerify


def host_offset(image, guest_offset):
    """Where the byte at `guest_offset` of `image` is stored in the file
    itself (it must be allocated in that layer, not in a backing file)."""
    out = subprocess.run(["qemu-img", "map", "--output=json", image],
                         check=True, capture_output=True, text=True).stdout
    for e in json.loads(out):
        if (e["start"] <= guest_offset < e["start"] + e["length"] and e["data"]
                and e.get("depth", 0) == 0 and "offset" in e):
            return e["offset"] + guest_offset - e["start"]
    raise AssertionError(f"guest offset {guest_offset} is not stored in {image}")


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_finds_a_flipped_byte_through_the_chain(env):
    dom = env.domain(fmt="qcow2", disks=[
        ("vda", env.disk("vda.qcow2", 64 * MiB, "qcow2"), "qcow2"),
        ("vdb", env.disk("vdb.raw", 16 * MiB, "raw"), "raw")])
    vda = dom.disks[0][1]
    full_t = env.targets("full", ["vda", "vdb"])
    full = env.backup(dom, backup_xml_for(full_t))
    assert verify(full, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    p = get_params(full)
    assert "verify.bytes.total" not in p  # only while a verification runs

    qemu_io(vda, "qcow2", "write -P 0x42 8M 1M")
    inc_t = env.targets("inc", ["vda", "vdb"])
    inc = env.backup(dom, backup_xml_for(inc_t, parent=backup_uuid(full)))
    assert verify(inc, 0) == 0, lib.virDomainBackupGetLastErrorMessage()

    # A byte of the incremental's own data (guest offset 8 MiB + 70000).
    bad = 8 * MiB + 70000
    flip_byte(inc_t["vda"], host_offset(inc_t["vda"], bad))
    assert verify(inc, 0) == -1
    msg = expect_error(VIR_ERR_OPERATION_FAILED, "disk 'vda'",
                       f"offset {bad // K64 * K64}")
    assert msg.startswith("operation failed: "), msg
    assert verify(full, 0) == 0  # the parent does not hold that chunk
    flip_byte(inc_t["vda"], host_offset(inc_t["vda"], bad))  # mend it
    assert verify(inc, 0) == 0

    # A byte of the parent read through the child's chain (vda's first MiB
    # is not in the incremental), and one of the raw-format second disk.
    flip_byte(full_t["vda"], host_offset(full_t["vda"], 4096))
    assert verify(inc, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "disk 'vda'", "offset 0 ")
    assert verify(full, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "disk 'vda'", "offset 0 ")
    flip_byte(full_t["vda"], host_offset(full_t["vda"], 4096))
    flip_byte(full_t["vdb"], host_offset(full_t["vdb"], 16 * MiB - 10))
    assert verify(full, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "disk 'vdb'", f"offset {16 * MiB - K64}")


def test_verify_errors(env):
    dom = env.domain()
    b = env.backup(dom, backup_xml_for({"vda": env.path("t.qcow2")}))
    assert verify(b, 1) == -1
    expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x1) in function virDomainBackupVerify")
    assert verify(None, 0) == -1
    expect_error(VIR_ERR_INVALID_ARG, "virDomainBackupVerify")
    # A missing image is the error that stopped it.
    import os
    os.rename(env.path("t.qcow2"), env.path("gone.qcow2"))
    assert verify(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_FAILED, "disk 'vda'")
    os.rename(env.path("gone.qcow2"), env.path("t.qcow2"))
    assert verify(b, 0) == 0
    delete(b)
    assert verify(b, 0) == -1
    expect_error(VIR_ERR_NO_DOMAIN_BACKUP)


def test_verify_progress_and_abort(env, big_disk):
    dom = env.domain(disks=[("vda", big_disk, "raw")])
    b = env.backup(dom, backup_xml_for({"vda": env.path("big.qcow2")}))
    total = 2048 * MiB

    # Progress seen from another thread while Verify runs in this one.
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            p = get_params(b)
            if "verify.bytes.processed" in p:
                seen.append((p["verify.bytes.total"][1], p["verify.bytes.processed"][1]))

    t = threading.Thread(target=watch)
    t.start()
    try:
        assert verify(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    finally:
        stop.set()
        t.join()
    assert seen, "no verify.bytes.* parameters seen while Verify ran"
    assert all(tot == total for tot, _ in seen)
    done = [d for _, d in seen]
    assert done == sorted(done) and 0 < max(done) <= total
    assert any(0 < d < total for d in done), "progress never seen midway"

    # AbortJob from another thread stops it.
    result = {}

    def run():
        result["rc"] = verify(b, 0)
        result["err"] = (lib.virDomainBackupGetLastErrorCode(),
                         lib.virDomainBackupGetLastErrorMessage())

    t = threading.Thread(target=run)
    t.start()
    assert wait_until(lambda: get_params(b).get("verify.bytes.processed", (0, 0))[1] > 0,
                      timeout=30, step=0.001)
    assert lib.virDomainBackupAbortJob(b, 0) == 0, lib.virDomainBackupGetLastErrorMessage()
    t.join()
    assert result["rc"] == -1
    assert result["err"][0] == VIR_ERR_OPERATION_ABORTED, result
    assert "verify.bytes.total" not in get_params(b)
    # Nothing is running any more: abort is refused, verify works again.
    assert lib.virDomainBackupAbortJob(b, 0) == -1
    expect_error(VIR_ERR_OPERATION_INVALID)
    assert verify(b, 0) == 0
