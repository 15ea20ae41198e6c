"""The library's log (README, "Logging"): silent on a quiet run; with
LIBVIRT_BACKUP_DEBUG set, one backup says what was decided and why (which
engine copies, the locks taken, the files written, the record's state);
filters pick modules; outputs go where they are told."""

from conftest import MiB, py_subprocess

BACKUP = """
conn = virt.virConnectOpen(b"test:///default")
make_disk({disk!r}, 4 * MiB)
ptr = virt.virDomainDefineXML(conn, domain_xml("logged", [("vda", {disk!r}, "raw")]).encode())
b = create(ptr, "<domainbackup/>")
print("done")
"""


def backup_in_a_process(env, extra_env):
    code = BACKUP.format(disk=env.path("logged.raw"))
    p = py_subprocess(code, env.catalog, extra_env=extra_env)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.strip() == "done"
    return err


def library_lines(err):
    """The lines of the library's log: `TIME: PID: LEVEL : MODULE: text`."""
    return [line for line in err.splitlines() if " : " in line and "+0000: " in line]


def test_a_quiet_run_prints_nothing(env):
    assert backup_in_a_process(env, {}) == ""


def test_one_backup_says_what_was_decided_and_why(env):
    lines = library_lines(backup_in_a_process(env, {"LIBVIRT_BACKUP_DEBUG": "1"}))
    text = "\n".join(lines)
    for what in ("ops::create: domain 'logged' (", "shut off): the library copies",
                 "job lock taken",
                 "ops::create_targets: disk 'vda': full target",
                 "image::disk: formatting",
                 "store::records: backup", "record written, state running",
                 "record written, state completed"):
        assert what in text, f"{what!r} not logged:\n{text}"
    assert all(" : " in line for line in lines)


def test_filters_pick_modules_and_outputs_a_file(env):
    log = env.path("lvb.log")
    err = backup_in_a_process(env, {"LIBVIRT_BACKUP_LOG_FILTERS": "1:ops::create",
                                    "LIBVIRT_BACKUP_LOG_OUTPUTS": f"file:{log}"})
    assert err == ""
    with open(log) as f:
        text = f.read()
    assert "ops::create_targets: disk 'vda': full target" in text
    assert "store::" not in text and "image::" not in text


def test_warning_level_is_silent_on_a_good_run(env):
    assert backup_in_a_process(env, {"LIBVIRT_BACKUP_DEBUG": "warning"}) == ""
