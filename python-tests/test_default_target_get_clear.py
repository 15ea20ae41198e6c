"""virDomainGetDefaultTarget reads the setting back (as the document
virDomainSetDefaultTarget takes), and <target type='none'/> clears it."""

import os
from ctypes import c_uint, c_void_p

from conftest import (VIR_DOMAIN_AFFECT_CONFIG, VIR_DOMAIN_AFFECT_CURRENT,
                      VIR_DOMAIN_AFFECT_LIVE, VIR_ERR_INVALID_ARG, VIR_ERR_XML_ERROR,
                      create, expect_error, free, lib, take_string, target_of)

lib.virDomainGetDefaultTarget.restype = c_void_p
lib.virDomainGetDefaultTarget.argtypes = [c_void_p, c_uint]

NONE = "<target type='none'/>"


def get(dom, flags):
    s = take_string(lib.virDomainGetDefaultTarget(dom, flags))
    assert s is not None, lib.virDomainBackupGetLastErrorMessage()
    return s


def set_target(dom, xml, flags=VIR_DOMAIN_AFFECT_CONFIG):
    assert lib.virDomainSetDefaultTarget(dom, xml.encode(), flags) == 0, \
        lib.virDomainBackupGetLastErrorMessage()


def test_get_then_clear_the_persistent_default_target(env):
    dom = env.domain()
    assert get(dom, VIR_DOMAIN_AFFECT_CONFIG) == NONE
    assert get(dom, VIR_DOMAIN_AFFECT_CURRENT) == NONE
    d = env.path("defaults")
    os.mkdir(d)
    xml = f"<target type='dir'><path>{d}</path></target>"
    set_target(dom, xml)
    got = get(dom, VIR_DOMAIN_AFFECT_CONFIG)
    assert f"<path>{d}</path>" in got and "type='dir'" in got.replace('"', "'"), got
    assert get(dom, VIR_DOMAIN_AFFECT_CURRENT) == got

    set_target(dom, NONE)
    assert get(dom, VIR_DOMAIN_AFFECT_CONFIG) == NONE
    b = create(dom, "<domainbackup/>")
    try:
        assert target_of(b).startswith(env.catalog + "/"), target_of(b)
    finally:
        free(b)
    # Clearing what is not set is no error.
    set_target(dom, NONE)


def test_bad_requests(env):
    dom = env.domain()
    # The domain of the fixture is shut off: no live setting to read.
    assert lib.virDomainGetDefaultTarget(dom, VIR_DOMAIN_AFFECT_LIVE) is None
    assert lib.virDomainGetDefaultTarget(
        dom, VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG) is None
    expect_error(VIR_ERR_INVALID_ARG, "exclude each other")
    bad = f"<target type='none'><path>{env.tmp}</path></target>"
    assert lib.virDomainSetDefaultTarget(dom, bad.encode(), VIR_DOMAIN_AFFECT_CONFIG) == -1
    expect_error(VIR_ERR_XML_ERROR, "takes no <path>")
