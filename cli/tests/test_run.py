"""`virt-backup run` and its configuration file, as a timer runs them:
policies over a running and a shut-off qemu:///system domain (by name and
by pattern) and every domain of a test:// driver node, run several times with
the clock moved by libfaketime (the library, in the same process, records
the faked times, so retention and "full after N days" see them); hooks,
notifications (a command and sendmail), the job history (`log`), and two
runs at once."""

import json
import os
import subprocess
import textwrap
import threading
import time
import uuid as uuidlib

import pytest

from test_cli import MiB, VB, URI, env, qemu_io, run, same, vb, vbj, virsh  # noqa: F401


def write_config(env, text):
    p = env.path("config.toml")
    with open(p, "w") as f:
        f.write(textwrap.dedent(text))
    return p


def vb_run(*args, at=None, rc=None, extra_env=None):
    """`virt-backup run`, at the faked local time `at` ("2026-01-05 03:00")."""
    cmd = [VB, "-c", URI, *args]
    if at:
        cmd = ["faketime", "-m", at, *cmd]
    e = dict(os.environ, **(extra_env or {}))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=e)
    if rc is not None:
        assert p.returncode == rc, f"{args}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def run_json(config, *args, at=None, rc=0, **kw):
    p = vb_run("--json", "run", "--config", config, *args, at=at, rc=rc, **kw)
    return json.loads(p.stdout)


def by_domain(j):
    return {d["domain"]: d for d in j["domains"]}


def test_config_check_reports_mistakes_with_their_line(env):
    bad = [
        ("[[policy]]\ndomains = ['a']\nlevle = 'full'\n", ":3:", "unknown field `levle`"),
        ("[[policy]]\ndomains = ['a']\nrate = 'fast'\n", ":3:", "fast"),
        ("[[policy]]\nname = 'x'\n", ":1:", "covers no domain"),
        ("[[policy]]\ndomains = ['a']\n[notify]\nwhen = 'sometimes'\n", ":4:", "sometimes"),
    ]
    for text, line, what in bad:
        cfg = write_config(env, text)
        p = vb("config", "check", "--config", cfg, rc=1)
        assert p.stderr.startswith(f"error: {cfg}{line}") and what in p.stderr, p.stderr
        # `run` reads the file the same way and does nothing.
        p = vb_run("run", "--config", cfg, "--all", rc=1)
        assert f"{cfg}{line}" in p.stderr, p.stderr
    cfg = write_config(env, """
        [[policy]]
        name = "web"
        domains = ["web-*"]
        max-chain = 4
        retention = { keep-last = 2, keep-daily = 7 }
        verify = { new = true }
        hooks = { pre = "true" }
        """)
    out = vb("config", "check", "--config", cfg).stdout
    assert "OK, 1 policy" in out and "web: web-*; level auto, max-chain 4" in out, out
    assert "keep last 2, daily 7; verifies new backups; pre-hook" in out, out
    p = vb("config", "check", "--config", env.path("nope.toml"), rc=1)
    assert "cannot read the configuration" in p.stderr


def node_of_domains(env, names):
    """A test:// driver node of shut-off domains with real raw disks: every
    process that opens it sees the same domains (fixed UUIDs)."""
    doms = ""
    for n in names:
        disk = env.path(n + ".raw")
        with open(disk, "wb") as f:
            f.truncate(8 * MiB)
            f.write(n.encode() * 1000)
        doms += (f"<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
                 f"<name>{n}</name><uuid>{uuidlib.uuid4()}</uuid><memory>65536</memory>"
                 f"<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                 f"<driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda'/>"
                 f"</disk></devices><test:runstate>5</test:runstate></domain>")
    node = env.path("node.xml")
    with open(node, "w") as f:
        f.write(f"<node>{doms}</node>")
    return "test://" + node


def chain(dom):
    """The domain's backups, oldest first: (kind, parent, uuid)."""
    return [(b["kind"], b["parent"], b["uuid"]) for b in vbj("list", dom)]


def test_run_three_times_with_the_clock_moved(env):
    tag = "lvb-run-" + uuidlib.uuid4().hex[:6]
    on = env.domain([("vda", env.disk("on.qcow2", 32 * MiB))], start=True, name=tag + "-on")
    off_disk = env.disk("off.qcow2", 32 * MiB)
    off = env.domain([("vda", off_disk), ("vdb", env.disk("off-b.qcow2", 16 * MiB))],
                     name=tag + "-off1")
    node = node_of_domains(env, ["tn-1", "tn-2"])
    cfg = write_config(env, f"""
        [run]
        parallel = 2
        [[policy]]
        name = "running"
        domains = ["{on}"]
        max-chain = 2
        retention = {{ keep-last = 2 }}
        verify = {{ new = true }}
        [[policy]]
        name = "by-pattern"
        domains = ["{tag}-off*"]
        full-after-days = 7
        exclude-disks = ["vdb"]
        retention = {{ keep-daily = 2 }}
        [[policy]]
        name = "test-driver"
        connect = "{node}"
        all = true
        level = "full"
        retention = {{ keep-last = 1 }}
        """)
    plan = run_json(cfg, "--all", "--dry-run", at="2026-01-05 03:00:00")
    assert plan["dry_run"] is True
    p = by_domain(plan)
    assert p[on]["result"] == "planned" and p[on]["level"] == "full"
    assert p[off]["reason"] == "no earlier backup" and p[off]["policy"] == "by-pattern"
    assert p["tn-1"]["policy"] == p["tn-2"]["policy"] == "test-driver"
    assert chain(on) == [] and chain(off) == []

    days = ["2026-01-05 03:00:00", "2026-01-06 03:00:00", "2026-01-14 03:00:00"]
    made = {on: [], off: []}
    copies = {}
    for n, day in enumerate(days):
        qemu_io(off_disk, f"write -q -P 0x{0x30 + n:x} {(4 + 4 * n) * MiB} {MiB}")
        j = run_json(cfg, "--all", at=day)
        r = by_domain(j)
        assert j["ok"] is True and all(d["result"] == "completed" for d in j["domains"]), j
        for d in (on, off):
            made[d].append((r[d]["level"], r[d]["uuid"]))
        copies[r[off]["uuid"]] = env.snapshot(off_disk, f"off-at-{n}.raw")
        assert r[on]["verified"] == [r[on]["uuid"]]
        assert r["tn-1"]["level"] == r["tn-2"]["level"] == "full"
    # max-chain 2: full, incremental, then full again.
    assert [lv for lv, _ in made[on]] == ["full", "incremental", "full"], made[on]
    # full-after-days 7: full on day 0, incremental on day 1, full on day 9.
    assert [lv for lv, _ in made[off]] == ["full", "incremental", "full"], made[off]
    # keep-last 2 on the running domain: the first full is gone.
    assert [u for _, _, u in chain(on)] == [u for _, u in made[on][1:]]
    # keep-daily 2: the newest of the last two days with backups (day 9 and
    # day 1); day 0's full was merged into day 1's incremental.
    kept = chain(off)
    assert [u for _, _, u in kept] == [made[off][1][1], made[off][2][1]], kept
    assert kept[0][0] == "full", kept
    # Each kept backup holds the disk as it was, byte for byte (vdb excluded).
    for b in vbj("list", off):
        assert [d["name"] for d in b["disks"]] == ["vda"], b
        assert same(b["disks"][0]["target"], copies[b["uuid"]]), b["uuid"]
    # The times the library recorded are the faked ones.
    times = [b["creation_time"] for b in vbj("list", off)]
    assert time.strftime("%Y-%m-%d", time.localtime(times[-1])) == "2026-01-14", times
    # Every domain of the test:// node: full each time, one kept.
    for n in ("tn-1", "tn-2"):
        listed = json.loads(run(VB, "-c", node, "--json", "list", n).stdout)
        assert len(listed) == 1 and listed[0]["kind"] == "full", listed
    # The history has every job of the three runs.
    log = json.loads(vb("--json", "log", off).stdout)
    kinds = [(j["job"], j["state"]) for j in log]
    assert kinds.count(("create", "completed")) == 3 and ("delete", "completed") in kinds, kinds


def test_failing_pre_hook_skips_its_domain_and_the_others_go_on(env):
    tag = "lvb-hook-" + uuidlib.uuid4().hex[:6]
    doms = [env.domain([("vda", env.disk(f"d{i}.qcow2", 16 * MiB))], name=f"{tag}-{i}")
            for i in range(3)]
    post_log = env.path("post.log")
    report = env.path("report.txt")
    cfg = write_config(env, f"""
        [run]
        parallel = 2
        [notify]
        command = "cat > {report}; echo \\"$VIRT_BACKUP_STATUS $VIRT_BACKUP_FAILED_DOMAINS\\" >> {report}"
        [[policy]]
        domains = ["{tag}-*"]
        [policy.hooks]
        pre = "if [ \\"$VIRT_BACKUP_DOMAIN\\" = {doms[1]} ]; then echo 'cannot quiesce the database' >&2; exit 3; fi"
        post = "echo \\"$VIRT_BACKUP_DOMAIN $VIRT_BACKUP_RESULT $VIRT_BACKUP_LEVEL $VIRT_BACKUP_UUID\\" >> {post_log}"
        """)
    j = run_json(cfg, "--all", rc=1)
    r = by_domain(j)
    assert j["ok"] is False
    assert r[doms[0]]["result"] == r[doms[2]]["result"] == "completed", j
    assert r[doms[1]]["result"] == "failed" and r[doms[1]]["uuid"] is None, j
    assert "pre-hook failed (exit status 3): cannot quiesce the database" in r[doms[1]]["error"]
    assert chain(doms[1]) == []
    posts = sorted(open(post_log).read().splitlines())
    assert posts == sorted(f"{d} completed full {r[d]['uuid']}" for d in (doms[0], doms[2]))
    text = open(report).read()
    assert "cannot quiesce the database" in text and f"failed {doms[1]}" in text, text
    # The text summary says the same.
    p = vb_run("run", "--config", cfg, doms[1], rc=1)
    assert "1 of 1 domains failed" in p.stderr and "pre-hook failed" in p.stdout, p.stdout


def test_failed_backup_in_log_and_notified_by_mail(env):
    tag = "lvb-fail-" + uuidlib.uuid4().hex[:6]
    dom = env.domain([("vda", env.disk("f.qcow2", 16 * MiB))], name=tag)
    mailbox = env.path("mailbox")
    sendmail = env.path("sendmail")
    with open(sendmail, "w") as f:
        f.write(f"#!/bin/sh\necho \"args: $*\" > {mailbox}\ncat >> {mailbox}\n")
    os.chmod(sendmail, 0o755)
    cfg = write_config(env, f"""
        [notify]
        mail-to = ["root@localhost", "ops@example.org"]
        sendmail = "{sendmail}"
        [[policy]]
        domains = ["{tag}"]
        target = "pool:no-such-pool-{tag}"
        """)
    j = run_json(cfg, dom, rc=1)
    err = by_domain(j)[dom]["error"]
    assert "no-such-pool" in err, j
    mail = open(mailbox).read()
    assert mail.startswith("args: -t -oi\nTo: root@localhost, ops@example.org\n"), mail
    assert f"Subject: virt-backup on" in mail and f"FAILED ({dom})" in mail, mail
    assert "no-such-pool" in mail
    failed = json.loads(vb("--json", "log", dom, "--failed").stdout)
    assert [(f["job"], f["state"]) for f in failed] == [("create", "failed")], failed
    assert "no-such-pool" in failed[0]["error"]
    assert "no-such-pool" in vb("log", "--failed", "--since", "1h").stdout
    assert json.loads(vb("--json", "log", dom, "--since", "2000-01-01").stdout)
    # Nothing failed: no mail (the default is to mail on failure only).
    os.unlink(mailbox)
    cfg = write_config(env, f"""
        [notify]
        mail-to = ["root@localhost"]
        sendmail = "{sendmail}"
        [[policy]]
        domains = ["{tag}"]
        """)
    run_json(cfg, dom)
    assert not os.path.exists(mailbox)


def test_two_runs_at_once_one_skips_the_busy_domain(env):
    tag = "lvb-twice-" + uuidlib.uuid4().hex[:6]
    disk = env.disk("t.qcow2", 128 * MiB, writes=(("0x21", 0, 96 * MiB),))
    dom = env.domain([("vda", disk)], name=tag)
    release = env.path("release")
    cfg = write_config(env, f"""
        [[policy]]
        domains = ["{tag}"]
        rate = "12M"
        hooks = {{ post = "while [ ! -e '{release}' ]; do sleep 0.1; done", timeout = 120 }}
        """)
    first = subprocess.Popen([VB, "-c", URI, "--json", "run", "--config", cfg, dom],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not vbj("list", dom) and time.time() < deadline:
        time.sleep(0.2)
    # Another process sees the running job's progress (its published figures).
    running = vbj("list", dom)[0]["uuid"]
    # (96 MiB at 12 MiB/s: about 8 s to see the figures move.)
    seen = []
    while len(set(seen)) < 2 and time.time() < deadline:
        st = vbj("status", running)
        if st["state"] == "running" and st["bytes_processed"] > 0:
            seen.append(st["bytes_processed"])
        time.sleep(0.3)
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen
    # The first run holds the domain until its post-hook sees the release
    # file, however long the copy took on a loaded machine.
    second = run_json(cfg, dom)
    r = by_domain(second)[dom]
    assert r["result"] == "skipped" and f"(pid {first.pid})" in r["reason"], second
    open(release, "w").close()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert by_domain(json.loads(out))[dom]["result"] == "completed"
    assert len(vbj("list", dom)) == 1


def test_reverify_outdated_backups(env):
    tag = "lvb-rever-" + uuidlib.uuid4().hex[:6]
    dom = env.domain([("vda", env.disk("r.qcow2", 16 * MiB))], name=tag)
    cfg = write_config(env, f"""
        [[policy]]
        domains = ["{tag}"]
        verify = {{ outdated-after-days = 3 }}
        """)
    a = by_domain(run_json(cfg, dom, at="2026-02-01 03:00:00"))[dom]
    assert a["verified"] == []          # new backups are not verified by this policy
    b = by_domain(run_json(cfg, dom, at="2026-02-02 03:00:00"))[dom]
    assert b["verified"] == [a["uuid"]]  # never verified: outdated
    c = by_domain(run_json(cfg, dom, at="2026-02-03 03:00:00"))[dom]
    assert c["verified"] == [b["uuid"]]  # a's check is a day old
    d = by_domain(run_json(cfg, dom, at="2026-02-05 12:00:00"))[dom]
    assert sorted(d["verified"]) == sorted([a["uuid"], c["uuid"]]), d  # a: 3.4 days, b: 2.4


def test_policy_compression(env):
    """A policy's `compression` puts <compression> on every disk of its
    backups; an unknown value is a configuration error."""
    disk = env.disk("z.qcow2", 16 * MiB)
    dom = env.domain([("vda", disk)], name="lvb-run-z-" + uuidlib.uuid4().hex[:6])
    cfg = write_config(env, f"""
        [[policy]]
        domains = ["{dom}"]
        level = "full"
        compression = "zstd"
        """)
    run_json(cfg, "--all")
    [b] = vbj("list", dom)
    xml = vb("info", "--xml", b["uuid"]).stdout
    assert "<compression type='zstd'/>" in xml, xml
    bad = write_config(env, f"""
        [[policy]]
        domains = ["{dom}"]
        compression = "lz4"
        """)
    p = vb("config", "check", "--config", bad, rc=1)
    assert "lz4" in p.stdout + p.stderr
