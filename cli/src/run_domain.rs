//! One domain's turn in `virt-backup run`: take its lock, run the
//! pre-hook, choose full or incremental, back up, run the post-hook,
//! verify, prune. Every step's failure ends in the report, never in a
//! panic or an early exit: the other domains go on.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use virt::connect::Connect;
use virt::domain::Domain;

use crate::api::{self, Backup, Param};
use crate::config::{Config, Level, Policy};
use crate::info::BackupInfo;
use crate::run::Item;
use crate::{history, hooks, info_of, interrupted, journal, xml_escape};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    /// Not this run's to do (another run holds the domain), or a dry run.
    Skipped,
    Planned,
}

impl Outcome {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Planned => "planned",
        }
    }
}

/// What happened to one domain.
pub(crate) struct Report {
    pub domain: String,
    pub policy: String,
    pub outcome: Outcome,
    /// full or incremental: what was made (or planned).
    pub level: Option<String>,
    /// Why that level.
    pub reason: String,
    pub backup: Option<String>,
    pub written: u64,
    pub seconds: f64,
    pub pruned: Vec<String>,
    pub verified: Vec<String>,
    pub error: Option<String>,
}

impl Report {
    fn new(item: &Item) -> Report {
        Report {
            domain: item.domain.clone(),
            policy: item.label.clone(),
            outcome: Outcome::Failed,
            level: None,
            reason: String::new(),
            backup: None,
            written: 0,
            seconds: 0.0,
            pruned: Vec::new(),
            verified: Vec::new(),
            error: None,
        }
    }

    /// One line as the domain finishes.
    pub(crate) fn line(&self) -> String {
        let what = match (&self.level, &self.backup) {
            (Some(l), Some(b)) => format!("{l} backup {b}"),
            (Some(l), None) => format!("{l} backup"),
            _ => "backup".into(),
        };
        let mut s = format!("{}: {what} {}", self.domain, self.outcome.word());
        if !self.reason.is_empty() {
            s += &format!(" ({})", self.reason);
        }
        if self.outcome == Outcome::Completed {
            s += &format!(
                ", {} written in {:.1} s",
                crate::output::human(Some(self.written)),
                self.seconds
            );
        }
        if !self.verified.is_empty() {
            s += &format!(", {} verified", self.verified.len());
        }
        if !self.pruned.is_empty() {
            s += &format!(", {} pruned", self.pruned.len());
        }
        if let Some(e) = &self.error {
            s += &format!(": {e}");
        }
        s
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "domain": self.domain, "policy": self.policy, "result": self.outcome.word(),
            "level": self.level, "reason": self.reason, "uuid": self.backup,
            "bytes_written": self.written, "seconds": self.seconds,
            "pruned": self.pruned, "verified": self.verified, "error": self.error,
        })
    }
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The per-domain lock of `run`: a second run (or a template unit for the
/// same domain) skips a domain this one is backing up.
pub(crate) struct DomainLock(#[allow(dead_code)] File);

/// Where the locks live: a folder of ours, not one another user could
/// have prepared.
fn lock_dir() -> PathBuf {
    // SAFETY: geteuid takes nothing and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/virt-backup");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("virt-backup"),
        _ => std::env::temp_dir().join(format!("virt-backup-{uid}")),
    }
}

/// Lock domain `uuid`; Ok(Err(pid)) when another process holds it.
pub(crate) fn lock_domain(uuid: &str) -> Result<Result<DomainLock, String>, String> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let dir = lock_dir();
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let md = std::fs::symlink_metadata(&dir)
        .map_err(|e| format!("lock folder {}: {e}", dir.display()))?;
    // SAFETY: geteuid takes nothing and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !md.is_dir() || md.uid() != uid || md.mode() & 0o022 != 0 {
        return Err(format!(
            "lock folder {} is not a folder of ours that only we can write: refused",
            dir.display()
        ));
    }
    let path = dir.join(format!("{uuid}.lock"));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("lock {}: {e}", path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no pointer.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Ok(Err(pid.trim().to_string()));
    }
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = write!(f, "{}", std::process::id());
    Ok(Ok(DomainLock(f)))
}

/// Full or incremental, on which parent, and why: the policy's level
/// applied to the domain's completed backups (`now` in Unix seconds).
pub(crate) fn choose_level(
    p: &Policy,
    done: &[BackupInfo],
    now: i64,
) -> Result<(Option<String>, String), String> {
    let latest = done.iter().max_by_key(|i| i.creation_time);
    let latest = match (p.level, latest) {
        (Level::Full, _) => return Ok((None, "the policy makes full backups".into())),
        (Level::Incremental, None) => {
            return Err("no completed backup to be incremental on \
                        (level = \"auto\" makes a full one then)"
                .into());
        }
        (Level::Auto, None) => return Ok((None, "no earlier backup".into())),
        (_, Some(l)) => l,
    };
    if p.level == Level::Incremental {
        return Ok((Some(latest.uuid.clone()), String::new()));
    }
    // The chain the new backup would extend, newest first.
    let by_uuid: HashMap<&str, &BackupInfo> = done.iter().map(|i| (i.uuid.as_str(), i)).collect();
    let mut chain = vec![latest];
    while let Some(parent) = chain.last().and_then(|i| i.parent.as_deref()) {
        match by_uuid.get(parent) {
            Some(i) if chain.len() <= done.len() => chain.push(i),
            _ => break,
        }
    }
    let depth = chain.len() + 1;
    if let Some(max) = p.max_chain
        && depth > max
    {
        return Ok((
            None,
            format!("an incremental would make the chain {depth} deep (max-chain {max})"),
        ));
    }
    let root = chain.last().unwrap();
    if let Some(days) = p.full_after_days {
        let age = (now - root.creation_time).max(0) as u64 / 86400;
        if age >= days {
            return Ok((
                None,
                format!("the last full backup is {age} days old (full-after-days {days})"),
            ));
        }
    }
    Ok((Some(latest.uuid.clone()), String::new()))
}

/// The `<domainbackup>` of a policy's backup.
fn backup_xml(
    p: &Policy,
    dom: &Domain,
    uuid: &str,
    parent: Option<&str>,
    label: &str,
) -> Result<String, String> {
    let mut x = format!(
        "<domainbackup><uuid>{uuid}</uuid><description>{}</description>",
        xml_escape(&format!("virt-backup run, {label}"))
    );
    if let Some(par) = parent {
        x += &format!("<parent><uuid>{}</uuid></parent>", xml_escape(par));
    }
    if let Some(rate) = p.rate {
        x += &format!("<bandwidth bytes='{rate}'/>");
    }
    let disks = crate::domain_disks(dom).map_err(|e| e.message)?;
    if disks.iter().all(|d| p.exclude_disks.contains(d)) {
        return Err(format!(
            "every disk of the domain ({}) is excluded",
            disks.join(", ")
        ));
    }
    let dom_uuid = dom.uuid_string().unwrap_or_default();
    let dom_name = dom.name().unwrap_or_default();
    let fmt = p.format.map(|f| f.name()).unwrap_or("qcow2");
    let driver = p
        .format
        .map(|f| format!("<driver type='{}'/>", f.name()))
        .unwrap_or_default();
    x += "<disks>";
    if let Some(c) = p.compression {
        x += &format!("<compression type='{}'/>", c.name());
    }
    x += &encryption(p, dom)?;
    for d in &disks {
        let n = xml_escape(d);
        if p.exclude_disks.contains(d) {
            x += &format!("<disk name='{n}' backup='no'/>");
            continue;
        }
        x += &match p.target.as_deref() {
            Some(t) if t.starts_with("pool:") => format!(
                "<disk name='{n}' type='volume'><target pool='{}' volume='{}'/>{driver}</disk>",
                xml_escape(&t[5..]),
                xml_escape(&format!("{dom_name}-{d}-{}.{fmt}", &uuid[..8]))
            ),
            Some(t) => {
                let folder = PathBuf::from(t).join(&dom_uuid).join(uuid);
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&folder)
                    .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
                let file = folder.join(format!("{d}.{fmt}"));
                let file = file
                    .to_str()
                    .ok_or("the target folder is not valid UTF-8")?;
                format!(
                    "<disk name='{n}' type='file'><target file='{}'/>{driver}</disk>",
                    xml_escape(file)
                )
            }
            None => format!("<disk name='{n}'>{driver}</disk>"),
        };
    }
    Ok(x + "</disks></domainbackup>")
}

/// The `<encryption>` of a policy's `encrypt-secret` or `encrypt-key-file`
/// (its key registered as a libvirt secret on the domain's connection, or
/// found there), or nothing.
fn encryption(p: &Policy, dom: &Domain) -> Result<String, String> {
    let secret = match (&p.encrypt_secret, &p.encrypt_key_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => {
            let conn = dom.connect().map_err(|e| e.message().to_string())?;
            crate::keyfile::register(&conn, f)?.uuid
        }
        (None, None) => return Ok(String::new()),
    };
    Ok(crate::create::encryption_xml(&secret))
}

fn new_uuid() -> Result<String, String> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot make a UUID: {e}"))
}

/// Wait for a job; a signal aborts it.
fn wait_job(b: &Backup) -> Result<(), String> {
    let mut aborted = false;
    while let Ok(1) = b.finish(api::FINISH_CHECK) {
        if interrupted() && !aborted {
            aborted = true;
            let _ = b.abort();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    b.finish(0).map(drop).map_err(|e| e.message)
}

/// Verify on a thread of its own, so that a signal can abort it.
fn verify(b: &Backup) -> Result<(), String> {
    std::thread::scope(|s| {
        let worker = s.spawn(|| b.verify());
        let mut aborted = false;
        while !worker.is_finished() {
            if interrupted() && !aborted {
                aborted = true;
                let _ = b.abort();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        worker.join().unwrap().map_err(|e| e.message)
    })
}

/// The hooks' environment.
fn hook_env(
    item: &Item,
    phase: &str,
    uuid: &str,
    level: &str,
    parent: Option<&str>,
) -> Vec<(&'static str, String)> {
    vec![
        ("VIRT_BACKUP_PHASE", phase.to_string()),
        ("VIRT_BACKUP_POLICY", item.label.clone()),
        ("VIRT_BACKUP_URI", item.uri.clone().unwrap_or_default()),
        ("VIRT_BACKUP_DOMAIN", item.domain.clone()),
        ("VIRT_BACKUP_DOMAIN_UUID", item.uuid.clone()),
        ("VIRT_BACKUP_UUID", uuid.to_string()),
        ("VIRT_BACKUP_LEVEL", level.to_string()),
        ("VIRT_BACKUP_PARENT", parent.unwrap_or_default().to_string()),
    ]
}

/// One domain, start to end.
pub(crate) fn run(cfg: &Config, item: &Item, dry_run: bool) -> Report {
    let start = Instant::now();
    let mut r = Report::new(item);
    if let Some(e) = &item.error {
        r.error = Some(e.clone());
    } else if interrupted() {
        r.error = Some("not started: interrupted".into());
    } else {
        if !dry_run {
            journal::job_started("run", &item.domain);
        }
        if let Err(e) = steps(cfg, item, dry_run, &mut r) {
            r.outcome = Outcome::Failed;
            r.error = Some(e);
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    if !dry_run {
        let summary = format!("{}: {}", item.label, r.line());
        let failed = r
            .error
            .as_ref()
            .map(|e| crate::err(format!("{}: {e}", item.label)));
        let result = match &failed {
            Some(e) if interrupted() => Err(crate::signals::stopped(e.message.clone())),
            Some(e) => Err(e.clone()),
            None => Ok(summary),
        };
        journal::job_ended(
            "run",
            &item.domain,
            r.backup.as_deref(),
            result.as_ref().map(String::as_str),
        );
    }
    r
}

fn steps(cfg: &Config, item: &Item, dry_run: bool, r: &mut Report) -> Result<(), String> {
    let p = cfg.policies[item.policy].get_ref();
    let _lock = match lock_domain(&item.uuid)? {
        Ok(l) => l,
        Err(pid) => {
            r.outcome = Outcome::Skipped;
            r.reason = format!("another virt-backup run (pid {pid}) is backing it up");
            return Ok(());
        }
    };
    let conn = Connect::open(item.uri.as_deref())
        .map_err(|e| format!("failed to connect to the hypervisor: {}", e.message()))?;
    let dom = conn
        .lookup_domain_by_uuid_string(&item.uuid)
        .map_err(|e| format!("domain '{}' is gone: {}", item.domain, e.message()))?;
    let done = completed(&dom)?;
    let (parent, reason) = choose_level(p, &done, now())?;
    let level = if parent.is_some() {
        "incremental"
    } else {
        "full"
    };
    r.level = Some(level.into());
    r.reason = match &parent {
        Some(par) if reason.is_empty() => format!("on {}", &par[..8.min(par.len())]),
        _ => reason,
    };
    if dry_run {
        r.outcome = Outcome::Planned;
        return Ok(());
    }
    let uuid = new_uuid()?;
    let xml = backup_xml(p, &dom, &uuid, parent.as_deref(), &item.label)?;
    let env = hook_env(item, "pre", &uuid, level, parent.as_deref());
    let hook_timeout = Duration::from_secs(p.hooks.timeout);
    if let Some(pre) = &p.hooks.pre {
        hooks::run("pre-hook", pre, &env, None, hook_timeout, interrupted)
            .map_err(|e| format!("{e}; domain skipped"))?;
    }
    let made = back_up(&dom, p, &xml, &uuid, r);
    if let Some(post) = &p.hooks.post {
        let mut env = hook_env(item, "post", &uuid, level, parent.as_deref());
        env.push((
            "VIRT_BACKUP_RESULT",
            if made.is_ok() { "completed" } else { "failed" }.into(),
        ));
        env.push((
            "VIRT_BACKUP_ERROR",
            made.as_ref().err().cloned().unwrap_or_default(),
        ));
        env.push(("VIRT_BACKUP_BYTES_WRITTEN", r.written.to_string()));
        let post = hooks::run("post-hook", post, &env, None, hook_timeout, interrupted);
        if let (Ok(_), Err(e)) = (&made, post) {
            return Err(format!("backup {uuid} completed, but {e}"));
        }
    }
    let b = made?;
    if p.verify.new {
        verify(&b).map_err(|e| format!("verification of the new backup {uuid} failed: {e}"))?;
        r.verified.push(uuid.clone());
    }
    reverify_outdated(&dom, p, &uuid, r)?;
    let policy = p.retention.policy();
    if policy.keeps_something() {
        let pruned =
            crate::prune_cmd::prune_domain(&dom, &item.domain, &policy, false, false, |_, _| {})
                .map_err(|e| format!("prune: {}", e.message))?;
        r.pruned = pruned.removed;
    }
    r.outcome = Outcome::Completed;
    Ok(())
}

/// The domain's completed backups.
fn completed(dom: &Domain) -> Result<Vec<BackupInfo>, String> {
    let mut done = Vec::new();
    for b in Backup::list(dom, 0).map_err(|e| e.message)? {
        let i = info_of(&b).map_err(|e| e.message)?;
        if i.state == "completed" {
            done.push(i);
        }
    }
    Ok(done)
}

/// Make the backup and wait for it; fills in what was made.
fn back_up(
    dom: &Domain,
    p: &Policy,
    xml: &str,
    uuid: &str,
    r: &mut Report,
) -> Result<Backup, String> {
    let flags = if p.quiesce { api::CREATE_QUIESCE } else { 0 };
    let b = Backup::create(dom, xml, flags).map_err(|e| e.message)?;
    r.backup = Some(uuid.to_string());
    wait_job(&b)?;
    if let Ok(params) = b.parameters() {
        r.written = api::param(&params, "bytes.written")
            .and_then(Param::as_u64)
            .unwrap_or(0);
    }
    // What was made: a disk whose parent was unusable was copied in full.
    if let Ok(i) = info_of(&b) {
        if r.level.as_deref() != Some(i.kind()) {
            r.reason = format!("{} (a disk's parent was unusable)", r.reason);
        }
        r.level = Some(i.kind().into());
    }
    Ok(b)
}

/// Re-verify the domain's completed backups (except `new`) whose last
/// successful verification, by the catalog's job history, is older than
/// the policy's `outdated-after-days` (never verified: outdated).
fn reverify_outdated(dom: &Domain, p: &Policy, new: &str, r: &mut Report) -> Result<(), String> {
    let Some(days) = p.verify.outdated_after_days else {
        return Ok(());
    };
    let last = history::last_verified(dom).map_err(|e| e.message)?;
    let limit = now() - (days as i64) * 86400;
    for b in Backup::list(dom, 0).map_err(|e| e.message)? {
        let i = info_of(&b).map_err(|e| e.message)?;
        if i.state != "completed" || i.uuid == new || r.verified.contains(&i.uuid) {
            continue;
        }
        if last.get(&i.uuid).is_some_and(|t| *t > limit) {
            continue;
        }
        if interrupted() {
            return Err("interrupted".into());
        }
        verify(&b).map_err(|e| format!("re-verification of backup {} failed: {e}", i.uuid))?;
        r.verified.push(i.uuid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DAY: i64 = 86400;

    fn info(uuid: &str, parent: Option<&str>, t: i64) -> BackupInfo {
        BackupInfo {
            uuid: uuid.into(),
            creation_time: t,
            description: String::new(),
            state: "completed".into(),
            parent: parent.map(Into::into),
            domain: "vm".into(),
            domain_uuid: String::new(),
            disks: Vec::new(),
        }
    }

    fn policy(text: &str) -> Policy {
        let c = crate::config::parse(Path::new("t"), &format!("[[policy]]\nall = true\n{text}"))
            .unwrap();
        c.policies.into_iter().next().unwrap().into_inner()
    }

    #[test]
    fn auto_is_full_when_nothing_to_build_on_too_deep_or_too_old() {
        let p = policy("max-chain = 3\nfull-after-days = 7\n");
        let (par, why) = choose_level(&p, &[], 0).unwrap();
        assert_eq!((par, why.as_str()), (None, "no earlier backup"));
        let a = info("a", None, 0);
        let b = info("b", Some("a"), DAY);
        let c = info("c", Some("b"), 2 * DAY);
        assert_eq!(
            choose_level(&p, std::slice::from_ref(&a), DAY)
                .unwrap()
                .0
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            choose_level(&p, &[a.clone(), b.clone()], 2 * DAY)
                .unwrap()
                .0
                .as_deref(),
            Some("b")
        );
        let (par, why) = choose_level(&p, &[a.clone(), b.clone(), c], 3 * DAY).unwrap();
        assert!(
            par.is_none() && why.contains("4 deep (max-chain 3)"),
            "{why}"
        );
        let (par, why) = choose_level(&p, &[a.clone(), b], 7 * DAY).unwrap();
        assert!(par.is_none() && why.contains("7 days old"), "{why}");
        assert!(choose_level(&policy("level = \"incremental\""), &[], 0).is_err());
        assert!(
            choose_level(&policy("level = \"full\""), &[a], 0)
                .unwrap()
                .0
                .is_none()
        );
    }
}
