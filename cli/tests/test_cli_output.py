"""What the installed virt-backup prints: info's summary and list's sizes,
one JSON vocabulary (and errors as JSON), UUID prefixes, what a live
backup reports as written, the first verification of a backup without a
digest index, and the shell completion scripts (run with $VIRT_BACKUP as
test_cli.py is)."""

import json
import os
import re
import shutil
import subprocess
import uuid as uuidlib

import pytest

from test_cli import MiB, URI, VB, env, run, vb, vbj  # noqa: F401 (env: a fixture)

STAGE = os.path.dirname(os.path.dirname(os.path.abspath(VB))) if os.sep in VB else None
COMMON = ("uuid", "state", "kind", "parent", "creation_time", "domain", "domain_uuid")


def stage_file(rel):
    if STAGE is None:
        pytest.skip("VIRT_BACKUP is not an installed binary's path")
    return os.path.join(STAGE, rel)


def allocated(path):
    return os.stat(path).st_blocks * 512


def test_info_summary_list_sizes_and_json_vocabulary(env):
    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)])
    raw = env.path("full.raw")
    full = vbj("create", dom, "--disk", f"vda={raw}", "--format", "raw",
               "--description", "first")
    run("qemu-io", "-f", "qcow2", "-c", f"write -q -P 0x42 {8 * MiB} {MiB}", vda)
    inc = vbj("create", dom, "--incremental")
    inc_target = inc["disks"][0]["target"]

    # info: "Name: value" lines and a disk table, sizes of both kinds.
    out = vb("info", full["uuid"]).stdout
    fields = dict(re.findall(r"^([A-Z][A-Za-z ]+):\s+(.*)$", out, re.M))
    assert fields["UUID"] == full["uuid"] and fields["Kind"] == "full", out
    assert fields["State"] == "completed" and fields["Parent"] == "-", out
    assert fields["Domain"] == dom and fields["Description"] == "first", out
    assert fields["Disk Size"] == "64.0 MiB", out
    assert "<domainbackup>" not in out
    row = [ln.split() for ln in out.splitlines() if ln.startswith(" vda ")]
    assert row and row[0][1:4] == ["full", "raw", "64.0"] and row[0][-1] == raw, out
    out = vb("info", inc["uuid"]).stdout
    assert re.search(rf"^Parent:\s+{full['uuid']}$", out, re.M), out
    assert re.search(r"^Kind:\s+incremental$", out, re.M), out
    assert vb("info", "--xml", inc["uuid"]).stdout.startswith("<domainbackup>")

    # --json: stored size = the target's allocated bytes; disk size = 64 MiB
    # (raw: the file's size; qcow2: its header's).
    for b, target in ((full, raw), (inc, inc_target)):
        j = vbj("info", b["uuid"])
        d = j["disks"][0]
        assert d["virtual_size"] == 64 * MiB and j["virtual_size"] == 64 * MiB
        assert d["stored_size"] == allocated(target) == j["stored_size"]
    assert vbj("info", inc["uuid"])["stored_size"] < 8 * MiB

    # list: a Size column (stored), and the same sizes in --json.
    table = vb("list", dom).stdout
    assert re.search(r"\bSize\b", table.splitlines()[0]), table
    listed = vbj("list", dom)
    assert [b["stored_size"] for b in listed] == [allocated(raw), allocated(inc_target)]
    # One vocabulary: list, info, create and status say the same things
    # with the same keys, the state as a word.
    st = vbj("status", inc["uuid"])
    assert st["state"] == "completed" and st["kind"] == "incremental", st
    assert st["uuid"] == inc["uuid"] and st["bytes_written"] == inc["bytes_written"] == MiB
    assert st["disks"][0]["name"] == "vda" and st["disks"][0]["bytes_total"] == 64 * MiB
    info = vbj("info", inc["uuid"])
    for k in COMMON:
        assert listed[1][k] == info[k] == inc[k], k
    assert listed[1]["parent"] == full["uuid"]
    plain = vb("status", inc["uuid"]).stdout
    assert re.search(r"^state:\s+completed$", plain, re.M), plain


def test_errors_in_json_mode(env):
    missing = str(uuidlib.uuid4())
    p = vb("--json", "info", missing, rc=1)
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    e = json.loads(lines[0])["error"]
    assert e["code"] > 0 and missing in e["message"], e
    assert not e["message"].startswith("error:")
    p = vb("info", missing, rc=1)
    assert p.stderr.startswith("error: ") and missing in p.stderr
    # Not a library error (a domain libvirt does not know): code 0.
    p = vb("--json", "list", "no-such-domain-" + uuidlib.uuid4().hex[:6], rc=1)
    e = json.loads(p.stderr)["error"]
    assert e["code"] == 0 and e["message"].startswith("failed to get domain"), e


def test_uuid_prefixes(env):
    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)])
    a = vbj("create", dom)["uuid"]
    b = vbj("create", dom, "--incremental")["uuid"]
    for u in (a, b):
        assert vbj("info", u[:8])["uuid"] == u
        assert vbj("status", u[:8].upper())["uuid"] == u
        assert vbj("info", u[:13])["uuid"] == u
    out = vb("verify", b[:8]).stdout
    assert f"Backup {b}: OK" in out, out
    free = next(p for p in ("0000", "ffff", "abcd", "1234") if not a.startswith(p)
                and not b.startswith(p))
    p = vb("info", free, rc=1)
    assert f"no backup with UUID prefix '{free}'" in p.stderr, p.stderr
    p = vb("delete", free + "0", rc=1)
    assert "no backup with UUID prefix" in p.stderr
    # Shorter than 4 characters: not a prefix (the library's own error).
    p = vb("info", a[:3], rc=1)
    assert p.stderr.startswith("error: ")
    vb("delete", b[:8])
    assert [x["uuid"] for x in vbj("list", dom)] == [a]


def test_live_full_backup_counts_only_data_written(env):
    # A 64 MiB disk holding 4 MiB of data, read over NBD from a running
    # domain: what is written is the data, not the disk's size.
    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)], start=True)
    full = vbj("create", dom)
    assert full["kind"] == "full"
    assert 4 * MiB <= full["bytes_written"] < 5 * MiB, full
    st = vbj("status", full["uuid"])
    assert st["bytes_written"] == full["bytes_written"]
    assert st["bytes_processed"] == st["bytes_total"] == 64 * MiB
    info = vbj("info", full["uuid"])
    assert info["virtual_size"] == 64 * MiB and info["stored_size"] < 16 * MiB


def test_first_verify_of_a_backup_without_index_says_it_recorded(env):
    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)], start=True)
    full = vbj("create", dom)
    u = full["uuid"]
    # As an earlier version left a live backup: QEMU wrote it (a checkpoint
    # of another name) and no digest index was kept.
    root = os.environ["LIBVIRT_BACKUP_DIR"]
    rec = os.path.join(root, full["domain_uuid"], u + ".xml")
    with open(rec) as f:
        text = f.read()
    assert f"libvirt-backup-{u}" in text
    with open(rec, "w") as f:
        f.write(text.replace(f"libvirt-backup-{u}", f"backup-{u}"))
    shutil.rmtree(os.path.join(root, full["domain_uuid"], u + ".index"))

    out = vb("verify", u).stdout
    assert "index recorded" in out and ": OK" not in out, out
    j = vbj("verify", u)
    assert j["backups"] == [{"uuid": u, "ok": True, "recorded": False}], j
    assert "OK" in vb("verify", u).stdout


def complete(words, cword=None, uri_env=None):
    """COMPREPLY of the installed bash completion for `words` (the last
    one being completed)."""
    script = stage_file("share/bash-completion/completions/virt-backup")
    cword = len(words) if cword is None else cword
    arr = " ".join("'" + w.replace("'", "'\\''") + "'" for w in [VB, *words])
    prog = (f"source '{script}'\nCOMP_WORDS=({arr})\nCOMP_CWORD={cword}\n"
            "COMP_LINE=\"${COMP_WORDS[*]}\"\n_virt_backup\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", prog], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.split("\n") if w]


def test_bash_completion(env):
    assert complete(["cre"]) == ["create"]
    opts = complete(["create", "--"])
    assert "--disk" in opts and "--rate" in opts and "--tree" not in opts
    assert "--tree" in complete(["list", "--t"])
    assert complete(["create", "x", "--format", ""]) == ["qcow2", "raw"]
    assert sorted(complete(["config", ""])) == ["check", "help"]

    vda = env.disk("vda.qcow2")
    dom = env.domain([("vda", vda)])
    assert dom in complete(["-c", URI, "list", ""])
    # bash splits the URI at ':' (COMP_WORDBREAKS): joined again.
    assert dom in complete(["-c", "qemu", ":", "///system", "list", "lvb-clitest-"])
    assert dom in complete(["create", "--connect", URI, ""])
    test_dom = complete(["-c", "test:///default", "list", ""])
    assert "test" in test_dom and dom not in test_dom
    # A connection that fails: nothing, silently.
    assert complete(["-c", "test:///no-such-file.xml", "list", ""]) == []

    u = vbj("create", dom)["uuid"]
    assert u in complete(["info", ""])
    assert complete(["status", u[:6]]) == [u]
    assert u in complete(["create", dom, "--parent", ""])
    both = complete(["-c", URI, "verify", ""])
    assert u in both and dom in both
    # After its one positional argument, info takes nothing more.
    assert complete(["info", u, ""]) == []


def test_zsh_and_fish_scripts_parse():
    zsh = stage_file("share/zsh/vendor-completions/_virt-backup")
    fish = stage_file("share/fish/vendor_completions.d/virt-backup.fish")
    assert os.path.exists(zsh) and os.path.exists(fish)
    assert "prune" in open(zsh).read() and "complete-words" in open(fish).read()
    checked = False
    path = os.path.dirname(os.path.abspath(VB)) + os.pathsep + os.environ["PATH"]
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n", zsh], check=True)
        checked = True
        # Domain names of the connection on the line, compadd stubbed.
        prog = (f"compdef() {{ :; }}; compadd() {{ print -l -- $found }}; source '{zsh}'; "
                f"BUFFER='{VB} -c test:///default list '; _virt-backup_domains")
        p = subprocess.run(["zsh", "-f", "-c", prog], capture_output=True, text=True,
                           timeout=60)
        assert p.stdout.split() == ["test"], p
    if shutil.which("fish"):
        subprocess.run(["fish", "--no-execute", fish], check=True)
        checked = True
        p = subprocess.run(["fish", "--no-config", "-c",
                            f"source '{fish}'; complete -C 'virt-backup list '"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PATH": path,
                                "LIBVIRT_DEFAULT_URI": "test:///default"})
        assert "test" in [ln.split("\t")[0] for ln in p.stdout.splitlines()], p
    if not checked:
        pytest.skip("neither zsh nor fish is installed")
