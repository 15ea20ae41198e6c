"""virDomainBackupGetParameters (API.md "Typed parameters")."""

import ctypes
import time
from ctypes import byref, c_int

from conftest import (MiB, STATE_COMPLETED, VIR_ERR_INVALID_ARG,
                      VIR_TYPED_PARAM_BOOLEAN, VIR_TYPED_PARAM_INT,
                      VIR_TYPED_PARAM_STRING, VIR_TYPED_PARAM_UINT,
                      VIR_TYPED_PARAM_ULLONG,
                      backup_uuid, backup_xml_for, create, expect_error, free,
                      get_params, lib, list_handles, virt, virTypedParameter)

EXPECTED_TYPES = {
    "state": VIR_TYPED_PARAM_INT,
    "incremental": VIR_TYPED_PARAM_BOOLEAN,
    "bytes.total": VIR_TYPED_PARAM_ULLONG,
    "bytes.processed": VIR_TYPED_PARAM_ULLONG,
    "bytes.written": VIR_TYPED_PARAM_ULLONG,
    "time.elapsed": VIR_TYPED_PARAM_ULLONG,
    "disks": VIR_TYPED_PARAM_UINT,
    # One disk (the tests' default domain): disk.<i>.* for i = 0.
    "disk.0.name": VIR_TYPED_PARAM_STRING,
    "disk.0.bytes.total": VIR_TYPED_PARAM_ULLONG,
    "disk.0.bytes.processed": VIR_TYPED_PARAM_ULLONG,
}


def test_count_with_null_params(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("c.qcow2")}))
    try:
        n = c_int(0)
        assert lib.virDomainBackupGetParameters(b, None, byref(n), 0) == 0
        # A completed backup has no "error" parameter.
        assert n.value == len(EXPECTED_TYPES)
    finally:
        free(b)


def test_values_of_completed_backup(env):
    size = 64 * MiB
    writes = [(0, 1 * MiB, 0xAB), (10 * MiB, 3 * MiB, 0x01), (size - 64 * 1024, 64 * 1024, 0xFE)]
    data = sum(w[1] for w in writes)
    src = env.disk("pv.raw", size, writes=writes)
    dom = env.domain(disks=[("vda", src, "raw")])
    b = create(dom, backup_xml_for({"vda": env.path("pv.qcow2")}))
    try:
        p = get_params(b)
        assert set(p) == set(EXPECTED_TYPES), p
        for name, t in EXPECTED_TYPES.items():
            assert p[name][0] == t, f"{name} has type {p[name][0]}, expected {t}"
        assert p["state"][1] == STATE_COMPLETED
        assert p["incremental"][1] == 0
        assert p["bytes.total"][1] == size
        assert p["bytes.processed"][1] == size
        assert 0 < p["bytes.written"][1] <= data
        assert p["disks"][1] == 1
        assert p["disk.0.name"][1] == "vda"
        assert p["disk.0.bytes.total"][1] == size
        assert p["disk.0.bytes.processed"][1] == size
        assert p["time.elapsed"][1] >= 0
        assert "error" not in p
    finally:
        free(b)


def test_values_qcow2_source_two_disks(env):
    a = env.disk("pa.qcow2", 32 * MiB, "qcow2", [(0, 2 * MiB, 0x42)])
    c = env.disk("pc.raw", 16 * MiB, writes=[(4 * MiB, 1 * MiB, 0x43)])
    dom = env.domain(disks=[("vda", a, "qcow2"), ("vdb", c, "raw")])
    b = create(dom, backup_xml_for({"vda": env.path("pa-b.qcow2"), "vdb": (env.path("pc-b.raw"), "raw")}))
    try:
        p = get_params(b)
        assert p["disks"][1] == 2
        assert p["bytes.total"][1] == 48 * MiB
        assert p["bytes.processed"][1] == 48 * MiB
        assert 0 < p["bytes.written"][1] <= 3 * MiB
        # Per disk, in the record's order; the job's figure is their sum.
        assert [p[f"disk.{i}.name"][1] for i in range(2)] == ["vda", "vdb"]
        assert p["disk.0.bytes.total"][1] == 32 * MiB
        assert p["disk.1.bytes.total"][1] == 16 * MiB
        assert (p["disk.0.bytes.processed"][1] + p["disk.1.bytes.processed"][1]
                == p["bytes.processed"][1])
        assert "disk.2.name" not in p
    finally:
        free(b)


def test_elapsed_frozen_after_end(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("fr.qcow2")}))
    try:
        e1 = get_params(b)["time.elapsed"][1]
        time.sleep(0.15)
        e2 = get_params(b)["time.elapsed"][1]
        assert e1 == e2
    finally:
        free(b)


def test_same_values_from_other_handles(env):
    """Values are kept with the backup: a listed or looked-up handle gives
    the same numbers as the creating one."""
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("sv.qcow2")}))
    try:
        p = get_params(b)
        h = lib.virDomainBackupLookupByUUID(backup_uuid(b).encode(), 0)
        assert h
        ph = get_params(h)
        free(h)
        (lh,) = list_handles(dom)
        pl = get_params(lh)
        free(lh)
        for other in (ph, pl):
            assert other["state"] == p["state"]
            assert other["bytes.total"] == p["bytes.total"]
            assert other["bytes.processed"] == p["bytes.processed"]
            assert other["bytes.written"] == p["bytes.written"]
            assert other["disks"] == p["disks"]
            assert other["incremental"] == p["incremental"]
            for k in ("disk.0.name", "disk.0.bytes.total", "disk.0.bytes.processed"):
                assert other[k] == p[k], k
    finally:
        free(b)


def test_partial_fill(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("pf.qcow2")}))
    try:
        arr = (virTypedParameter * 3)()
        n = c_int(3)
        assert lib.virDomainBackupGetParameters(b, arr, byref(n), 0) == 0
        assert n.value == 3
        names = [arr[i].field.decode() for i in range(3)]
        assert len(set(names)) == 3
        assert set(names) <= set(EXPECTED_TYPES)
        virt.virTypedParamsClear(arr, n.value)
    finally:
        free(b)


def test_oversized_array(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("os.qcow2")}))
    try:
        arr = (virTypedParameter * 32)()
        n = c_int(32)
        assert lib.virDomainBackupGetParameters(b, arr, byref(n), 0) == 0
        assert n.value == len(EXPECTED_TYPES)
        # Slots past the count are untouched.
        assert arr[n.value].field == b""
        virt.virTypedParamsClear(arr, n.value)
    finally:
        free(b)


def test_zero_size_array(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("zs.qcow2")}))
    try:
        arr = (virTypedParameter * 1)()
        n = c_int(0)
        r = lib.virDomainBackupGetParameters(b, arr, byref(n), 0)
        # Either nothing is filled, or it is refused as a bad argument.
        if r == 0:
            assert n.value == 0
        else:
            expect_error(VIR_ERR_INVALID_ARG)
    finally:
        free(b)


def test_bad_arguments(env):
    dom = env.domain()
    b = create(dom, backup_xml_for({"vda": env.path("ba.qcow2")}))
    try:
        assert lib.virDomainBackupGetParameters(b, None, None, 0) == -1
        expect_error(VIR_ERR_INVALID_ARG)
        n = c_int(-1)
        arr = (virTypedParameter * 4)()
        assert lib.virDomainBackupGetParameters(b, arr, byref(n), 0) == -1
        expect_error(VIR_ERR_INVALID_ARG)
        n = c_int(3)
        assert lib.virDomainBackupGetParameters(b, None, byref(n), 0) == -1
        expect_error(VIR_ERR_INVALID_ARG)
        n = c_int(0)
        assert lib.virDomainBackupGetParameters(b, None, byref(n), 1) == -1
        expect_error(VIR_ERR_INVALID_ARG, "unsupported flags (0x1)")
    finally:
        free(b)
