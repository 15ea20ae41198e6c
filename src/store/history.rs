//! The job history: every job (create, delete, verify, restore, export)
//! appends one line when it starts and one when it ends to
//! `<root>/.history/jobs.jsonl`, each line a JSON object written with one
//! `write` on a file opened `O_APPEND`, under the exclusive flock of
//! `.history/.lock`, so that writers of every process and host add whole
//! lines. Readers take the lock shared.
//!
//! A start line: `{"v":1,"ev":"start","id":JOB,"kind":KIND,"domain":UUID,
//! "name":NAME,"backup":UUID,"start":SECS,"host":HOST,"pid":PID,
//! "pstart":TICKS}` (`domain`, `name`, `backup` only when known; `pstart`
//! is field 22 of `/proc/PID/stat`, the process's start time). An end line
//! repeats them with `"ev":"end"` and adds `"state"` (completed, failed,
//! cancelled), `"end"`, and, when known, `"bytes"`, `"written"`, `"code"`
//! and `"error"`: an end line alone tells the whole job, so a start line
//! lost to rotation loses nothing.
//!
//! Bounded: once the file passes `ROTATE_AT` it is renamed to
//! `jobs.jsonl.1` (replacing the one before) and a new one is begun;
//! reading reads both, old first, and pairs lines by job id across them.
//!
//! A start line without an end line is a job that runs, or whose process
//! died: on this host, a process that no longer exists, or whose start
//! time differs (its pid was reused), makes it `interrupted`; a job of
//! another host shows as `running`.
//!
//! Nothing here fails a job: a history that cannot be written is logged
//! (warning) and skipped. The history is never trusted: a line that does
//! not parse is skipped, a file that is not a regular file of ours (a
//! link, a FIFO) is neither read nor written.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::catalog::Catalog;
use super::folder::Folder;
use super::names;
use super::secure;

/// The size past which the history file is rotated (smaller in unit
/// tests, which fill it).
#[cfg(not(test))]
pub(crate) const ROTATE_AT: u64 = 1 << 20;
#[cfg(test)]
pub(crate) const ROTATE_AT: u64 = 64 << 10;
/// The most bytes read of one history file (a rotated one is about
/// `ROTATE_AT`; more is someone else's doing).
const READ_LIMIT: u64 = 8 << 20;
/// The longest error message and domain name a line keeps, in bytes.
const TEXT_LIMIT: usize = 1024;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    Create,
    Delete,
    Verify,
    Restore,
    Export,
}

/// Where a job stands, as the history tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Its process died before it ended.
    Interrupted,
}

impl JobKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobKind::Create => "create",
            JobKind::Delete => "delete",
            JobKind::Verify => "verify",
            JobKind::Restore => "restore",
            JobKind::Export => "export",
        }
    }

    fn parse(s: &str) -> Option<JobKind> {
        [
            JobKind::Create,
            JobKind::Delete,
            JobKind::Verify,
            JobKind::Restore,
            JobKind::Export,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    /// An end line's state (a job that ended: never running nor interrupted).
    fn parse_end(s: &str) -> Option<JobState> {
        [JobState::Completed, JobState::Failed, JobState::Cancelled]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// Whether the job did not complete (failed, cancelled, interrupted).
    pub(crate) fn is_failure(self) -> bool {
        !matches!(self, JobState::Running | JobState::Completed)
    }
}

/// A job as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobEntry {
    pub id: Uuid,
    pub kind: JobKind,
    pub state: JobState,
    /// The domain's UUID and name.
    pub domain: Option<(Uuid, String)>,
    pub backup: Option<Uuid>,
    /// Unix seconds.
    pub start: i64,
    pub end: Option<i64>,
    pub bytes: Option<u64>,
    pub written: Option<u64>,
    pub host: String,
    pub pid: u32,
    /// The process's start time (`/proc/PID/stat` field 22).
    pub pstart: u64,
    /// A libvirt error number and message.
    pub error: Option<(i32, String)>,
}

/// How a job ended, for its end line.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobEnd {
    /// `Completed`, `Failed` or `Cancelled`.
    pub state: Option<JobState>,
    pub bytes: Option<u64>,
    pub written: Option<u64>,
    pub error: Option<(i32, String)>,
}

/// A job whose start line was written (or tried): `finish` writes its end.
#[derive(Debug)]
pub(crate) struct Started {
    catalog: Catalog,
    entry: JobEntry,
}

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    d.map_or(0, |d| d.as_secs() as i64)
}

/// This host's name (read once per process).
pub(crate) fn host_name() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let read = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    };
    HOST.get_or_init(read).clone()
}

/// This process's start time (see `process_start`), read once.
fn own_start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| process_start(std::process::id()).unwrap_or(0))
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, clock
/// ticks since boot), or `None` when it does not exist.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `s` cut to at most `TEXT_LIMIT` bytes, on a character boundary.
fn bounded(s: &str) -> String {
    let mut end = s.len().min(TEXT_LIMIT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl JobEntry {
    /// A job of `kind` starting now in this process.
    pub(crate) fn new(kind: JobKind, domain: Option<(Uuid, String)>, backup: Option<Uuid>) -> Self {
        let pid = std::process::id();
        JobEntry {
            id: Uuid::new_v4(),
            kind,
            state: JobState::Running,
            domain: domain.map(|(u, n)| (u, bounded(&n))),
            backup,
            start: now(),
            end: None,
            bytes: None,
            written: None,
            host: bounded(&host_name()),
            pid,
            pstart: own_start(),
            error: None,
        }
    }

    /// The line that tells this entry (a start line while it runs).
    fn to_line(&self) -> String {
        let ended = self.state != JobState::Running;
        let mut o = Map::new();
        o.insert("v".into(), json!(1));
        o.insert("ev".into(), json!(if ended { "end" } else { "start" }));
        o.insert("id".into(), json!(self.id.to_string()));
        o.insert("kind".into(), json!(self.kind.as_str()));
        if let Some((u, n)) = &self.domain {
            o.insert("domain".into(), json!(u.to_string()));
            o.insert("name".into(), json!(n));
        }
        if let Some(b) = self.backup {
            o.insert("backup".into(), json!(b.to_string()));
        }
        o.insert("start".into(), json!(self.start));
        o.insert("host".into(), json!(self.host));
        o.insert("pid".into(), json!(self.pid));
        o.insert("pstart".into(), json!(self.pstart));
        if ended {
            o.insert("state".into(), json!(self.state.as_str()));
            o.insert("end".into(), json!(self.end.unwrap_or(self.start)));
            let mut opt = |k: &str, v: Option<u64>| {
                if let Some(v) = v {
                    o.insert(k.into(), json!(v));
                }
            };
            opt("bytes", self.bytes);
            opt("written", self.written);
            if let Some((code, msg)) = &self.error {
                o.insert("code".into(), json!(code));
                o.insert("error".into(), json!(msg));
            }
        }
        let mut line = Value::Object(o).to_string();
        line.push('\n');
        line
    }

    /// The entry a line tells, and whether it is an end line; `None` for
    /// a line that is not one of ours.
    fn from_line(line: &str) -> Option<(JobEntry, bool)> {
        let v: Value = serde_json::from_str(line).ok()?;
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(Value::as_str);
        let n = |k: &str| o.get(k).and_then(Value::as_u64);
        let uuid = |k: &str| s(k).and_then(|x| Uuid::parse_str(x).ok());
        if n("v") != Some(1) {
            return None;
        }
        let ended = match s("ev")? {
            "start" => false,
            "end" => true,
            _ => return None,
        };
        let state = match ended {
            true => JobState::parse_end(s("state")?)?,
            false => JobState::Running,
        };
        let error = match (o.get("code").and_then(Value::as_i64), s("error")) {
            (Some(c), Some(m)) => Some((i32::try_from(c).ok()?, bounded(m))),
            _ => None,
        };
        let entry = JobEntry {
            id: uuid("id")?,
            kind: JobKind::parse(s("kind")?)?,
            state,
            domain: uuid("domain").map(|u| (u, bounded(s("name").unwrap_or("")))),
            backup: uuid("backup"),
            start: o.get("start").and_then(Value::as_i64)?,
            end: if ended {
                o.get("end").and_then(Value::as_i64)
            } else {
                None
            },
            bytes: n("bytes").filter(|_| ended),
            written: n("written").filter(|_| ended),
            host: bounded(s("host")?),
            pid: u32::try_from(n("pid")?).ok()?,
            pstart: n("pstart").unwrap_or(0),
            error: error.filter(|_| ended),
        };
        Some((entry, ended))
    }
}

/// The history's folder, created if missing; its lock file, flocked
/// (`exclusive` for writers).
fn open_locked(catalog: &Catalog, exclusive: bool) -> std::io::Result<(Folder, std::fs::File)> {
    let dir = catalog
        .private_folder(names::HISTORY)
        .map_err(|e| std::io::Error::other(e.message))?;
    let lock = secure::open_lock(&dir, names::HISTORY_LOCK)?;
    match exclusive {
        true => lock.lock()?,
        false => lock.lock_shared()?,
    }
    Ok((dir, lock))
}

/// Append `line` to the history, rotating the file first when it has
/// grown past `ROTATE_AT`.
fn append(catalog: &Catalog, line: &str) -> std::io::Result<()> {
    let (dir, _lock) = open_locked(catalog, true)?;
    let flags = OFlags::RDWR | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK;
    let mut file = dir.open(names::HISTORY_FILE, flags)?;
    let st = rustix::fs::fstat(&file)?;
    if !secure::own_private_file(&st) {
        return Err(std::io::Error::other(
            "the history file is not a private file of ours",
        ));
    }
    if st.st_size as u64 >= ROTATE_AT {
        dir.rename(names::HISTORY_FILE, names::HISTORY_OLD)?;
        file = dir.open(names::HISTORY_FILE, flags | OFlags::EXCL)?;
    }
    // A line cut short (a full disk, a crafted file) is ended first, so
    // that this one parses.
    let mut last = [0u8; 1];
    let size = rustix::fs::fstat(&file)?.st_size as u64;
    let cut = size > 0 && file.read_at(&mut last, size - 1)? == 1 && last[0] != b'\n';
    let line = if cut {
        format!("\n{line}")
    } else {
        line.to_string()
    };
    // One write: the line goes in whole, after every other writer's.
    match file.write(line.as_bytes())? {
        n if n == line.len() => Ok(()),
        n => Err(std::io::Error::other(format!(
            "only {n} of {} bytes written",
            line.len()
        ))),
    }
}

/// Append `entry`'s line; a failure is logged, never returned.
fn record(catalog: &Catalog, entry: &JobEntry) {
    crate::warn_if_err!(
        append(catalog, &entry.to_line()),
        "cannot write the job history in '{}'",
        catalog.root().join(names::HISTORY).display()
    );
}

/// Note in the history that `entry` (a new job, `JobEntry::new`) starts.
pub(crate) fn start(catalog: &Catalog, entry: JobEntry) -> Started {
    record(catalog, &entry);
    Started {
        catalog: catalog.clone(),
        entry,
    }
}

impl Started {
    /// The job's entry as its start line told it.
    #[cfg(test)]
    pub(crate) fn entry(&self) -> &JobEntry {
        &self.entry
    }

    /// Note in the history how the job ended.
    pub(crate) fn finish(self, end: JobEnd) {
        let mut entry = self.entry;
        entry.state = end.state.unwrap_or(JobState::Failed);
        entry.end = Some(now().max(entry.start));
        entry.bytes = end.bytes;
        entry.written = end.written;
        entry.error = end.error.map(|(c, m)| (c, bounded(&m)));
        record(&self.catalog, &entry);
    }
}

/// Whether the job of a start line without its end still runs.
fn still_running(entry: &JobEntry, host: &str) -> bool {
    entry.host != host || process_start(entry.pid).is_some_and(|t| t == entry.pstart)
}

/// The jobs the lines of `texts` (oldest file first) tell, oldest first.
fn pair(texts: &[Vec<u8>], host: &str) -> Vec<JobEntry> {
    let mut out: Vec<JobEntry> = Vec::new();
    let mut at: HashMap<Uuid, (usize, bool)> = HashMap::new();
    let lines = texts.iter().flat_map(|t| t.split(|&b| b == b'\n'));
    for line in lines.filter_map(|l| std::str::from_utf8(l).ok()) {
        let Some((entry, ended)) = JobEntry::from_line(line) else {
            continue;
        };
        match at.get(&entry.id).copied() {
            None => {
                at.insert(entry.id, (out.len(), ended));
                out.push(entry);
            }
            // The end line tells the whole job; a second start or end
            // line of the same job changes nothing.
            Some((i, false)) if ended => {
                at.insert(entry.id, (i, true));
                out[i] = entry;
            }
            Some(_) => {}
        }
    }
    for e in out.iter_mut() {
        if e.state == JobState::Running && !still_running(e, host) {
            e.state = JobState::Interrupted;
        }
    }
    out.sort_by_key(|e| e.start);
    out
}

/// Every job the history tells, oldest first (none when there is no
/// history or it cannot be read: the reason is logged).
pub(crate) fn read(catalog: &Catalog) -> Vec<JobEntry> {
    let dir = match catalog.folder(names::HISTORY) {
        Ok(Some(d)) => d,
        Ok(None) => return Vec::new(),
        Err(e) => {
            ::log::warn!("cannot read the job history: {e}");
            return Vec::new();
        }
    };
    let lock = secure::open_lock(&dir, names::HISTORY_LOCK).and_then(|f| {
        f.lock_shared()?;
        Ok(f)
    });
    crate::warn_if_err!(lock.as_ref(), "cannot lock the job history");
    let mut texts = Vec::new();
    for name in [names::HISTORY_OLD, names::HISTORY_FILE] {
        match dir.read_own(name, READ_LIMIT) {
            Ok(t) => texts.push(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => ::log::warn!("skipping history file '{}': {e}", dir.join(name).display()),
        }
    }
    drop(lock);
    pair(&texts, &host_name())
}

#[cfg(test)]
mod tests;
