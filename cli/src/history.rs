//! `virt-backup log`: the catalog's job history (every create, delete,
//! verify, restore and export, as the library records it, with failed and
//! interrupted ones), and what `run` reads of it (when each backup was last
//! verified).

use std::collections::HashMap;

use clap::Args;
use serde_json::json;
use virt::domain::Domain;

use crate::api::{self, err};
use crate::{Ctx, Res};

#[derive(Args)]
pub(crate) struct LogArgs {
    /// Only this domain's jobs (name or UUID; it need not exist any more)
    domain: Option<String>,
    /// Only jobs started since: a date (2026-12-01, "2026-12-01 03:00"),
    /// or an age (90m, 12h, 7d)
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    since: Option<Since>,
    /// Only jobs that failed, were cancelled or were interrupted
    #[arg(long)]
    failed: bool,
}

/// One job of the history document.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Job {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub domain: String,
    pub domain_uuid: String,
    pub backup: Option<String>,
    pub start: i64,
    pub end: Option<i64>,
    pub bytes: Option<u64>,
    pub written: Option<u64>,
    pub host: String,
    pub pid: Option<u64>,
    pub error: Option<String>,
}

impl Job {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id, "job": self.kind, "state": self.state,
            "domain": self.domain, "domain_uuid": self.domain_uuid, "uuid": self.backup,
            "start": self.start, "end": self.end, "bytes_processed": self.bytes,
            "bytes_written": self.written, "host": self.host, "pid": self.pid,
            "error": self.error,
        })
    }
}

/// The jobs of a `<jobhistory>` document, oldest first.
pub(crate) fn parse(xml: &str) -> Result<Vec<Job>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("job history: {e}"))?;
    let text = |n: roxmltree::Node, tag: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(str::to_string)
    };
    let attr = |n: roxmltree::Node, tag: &str, a: &str| {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.attribute(a))
            .map(str::to_string)
    };
    Ok(doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("job"))
        .map(|n| Job {
            id: n.attribute("id").unwrap_or_default().into(),
            kind: n.attribute("kind").unwrap_or_default().into(),
            state: n.attribute("state").unwrap_or_default().into(),
            domain: attr(n, "domain", "name").unwrap_or_default(),
            domain_uuid: attr(n, "domain", "uuid").unwrap_or_default(),
            backup: attr(n, "backup", "uuid"),
            start: text(n, "start").and_then(|t| t.parse().ok()).unwrap_or(0),
            end: text(n, "end").and_then(|t| t.parse().ok()),
            bytes: text(n, "bytes").and_then(|t| t.parse().ok()),
            written: text(n, "written").and_then(|t| t.parse().ok()),
            host: text(n, "host").unwrap_or_default(),
            pid: text(n, "pid").and_then(|t| t.parse().ok()),
            error: text(n, "error"),
        })
        .collect())
}

/// When each backup of `dom` was last verified successfully (Unix time).
pub(crate) fn last_verified(dom: &Domain) -> api::Result<HashMap<String, i64>> {
    let jobs = parse(&api::job_history(Some(dom), 0)?).map_err(err)?;
    let mut out: HashMap<String, i64> = HashMap::new();
    for j in jobs
        .iter()
        .filter(|j| j.kind == "verify" && j.state == "completed")
    {
        if let Some(b) = &j.backup {
            let t = j.end.unwrap_or(j.start);
            let e = out.entry(b.clone()).or_insert(t);
            *e = (*e).max(t);
        }
    }
    Ok(out)
}

/// `--since`, as a Unix time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Since(i64);

fn parse_since(s: &str) -> Result<Since, String> {
    let now = crate::run_domain::now();
    let s = s.trim();
    for (suffix, unit) in [("m", 60), ("h", 3600), ("d", 86400), ("w", 7 * 86400)] {
        if let Some(n) = s.strip_suffix(suffix)
            && let Ok(n) = n.parse::<i64>()
        {
            return Ok(Since(now - n * unit));
        }
    }
    local_time(s).map(Since).ok_or_else(|| {
        format!(
            "'{s}': give a date (2026-12-01, \"2026-12-01 03:00\") or an age (90m, 12h, 7d, 2w)"
        )
    })
}

/// "YYYY-MM-DD[ HH:MM[:SS]]" in local time.
fn local_time(s: &str) -> Option<i64> {
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00"));
    let d: Vec<i32> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i32> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || !(2..=3).contains(&t.len()) {
        return None;
    }
    // SAFETY: libc::tm is a plain C struct for which all zeroes is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = d[0] - 1900;
    tm.tm_mon = d[1] - 1;
    tm.tm_mday = d[2];
    tm.tm_hour = t[0];
    tm.tm_min = t[1];
    tm.tm_sec = t.get(2).copied().unwrap_or(0);
    tm.tm_isdst = -1;
    // SAFETY: mktime reads and normalizes the live local `tm`.
    let v = unsafe { libc::mktime(&mut tm) };
    (v != -1).then_some(v as i64)
}

fn short(u: &str) -> &str {
    &u[..8.min(u.len())]
}

pub(crate) fn cmd_log(ctx: &mut Ctx, a: &LogArgs) -> Res<()> {
    let flags = if a.failed { api::JOB_HISTORY_FAILED } else { 0 };
    let jobs = parse(&api::job_history(None, flags)?).map_err(err)?;
    let jobs: Vec<Job> = jobs
        .into_iter()
        .filter(|j| {
            a.domain
                .as_deref()
                .is_none_or(|d| j.domain == d || j.domain_uuid == d)
        })
        .filter(|j| a.since.is_none_or(|s| j.start >= s.0))
        .collect();
    if ctx.json {
        ctx.print_json(jobs.iter().map(Job::to_json).collect::<Vec<_>>().into());
        return Ok(());
    }
    if ctx.quiet {
        return Ok(());
    }
    println!(
        "{:<25}  {:<8}  {:<16}  {:<8}  {:<11}  {:>8}  {:>10}  ERROR",
        "START", "KIND", "DOMAIN", "BACKUP", "STATE", "TIME", "BYTES"
    );
    for j in &jobs {
        let took = j
            .end
            .map(|e| format!("{}s", e - j.start))
            .unwrap_or("-".into());
        println!(
            "{:<25}  {:<8}  {:<16}  {:<8}  {:<11}  {:>8}  {:>10}  {}",
            crate::info::local_time(j.start),
            j.kind,
            j.domain,
            j.backup.as_deref().map(short).unwrap_or("-"),
            j.state,
            took,
            crate::output::human(j.bytes),
            j.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_document_reads() {
        let xml = "<jobhistory>\
            <job id='j1' kind='verify' state='completed'><domain uuid='du' name='vm'/>\
            <backup uuid='b1'/><start>10</start><end>12</end><bytes>5</bytes>\
            <host>h</host><pid>7</pid></job>\
            <job id='j2' kind='create' state='interrupted'><domain uuid='du' name='vm'/>\
            <start>20</start><error code='1'>killed</error></job></jobhistory>";
        let j = parse(xml).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(
            (j[0].backup.as_deref(), j[0].end, j[0].bytes),
            (Some("b1"), Some(12), Some(5))
        );
        assert_eq!(
            (j[1].state.as_str(), j[1].error.as_deref()),
            ("interrupted", Some("killed"))
        );
        assert!(parse("<jobhistory>").is_err());
    }

    #[test]
    fn since_takes_dates_and_ages() {
        assert!(parse_since("7d").is_ok() && parse_since("90m").is_ok());
        assert!(parse_since("2026-12-01").is_ok() && parse_since("2026-12-01 03:00").is_ok());
        assert!(parse_since("yesterday").is_err() && parse_since("2026-12").is_err());
        let a = parse_since("2026-12-01 03:00").unwrap().0;
        let b = parse_since("2026-12-01T03:00:30").unwrap().0;
        assert_eq!(b - a, 30);
    }
}
