//! The job history (`store::history`) as the operations write it and as
//! `virDomainBackupGetJobHistory` reads it. Each operation that is a job
//! (create, delete, verify, restore, export) runs through one function
//! here, which notes its start and its end; a backup's job notes its own
//! end when it ends (`Job::record_end`), an export when FinishJob or
//! AbortJob ends it. Writing the history never fails an operation
//! (`store::history` logs what it could not write).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use uuid::Uuid;

use crate::error::{Error, ErrorCode, Result};
use crate::hv::libvirt::DomainRef;
use crate::ops::backup::Backup;
use crate::ops::options::{
    CreateOptions, DeleteOptions, ExportOptions, FinishMode, HistoryFilter, RestoreOptions,
};
use crate::ops::recovery;
use crate::store::catalog::Catalog;
use crate::store::history::{self, JobEnd, JobEntry, JobKind, JobState, Started};
use crate::xml::backup::{BackupState, CreateRequest, RestoreRequest, UnmanagedRequest};
use crate::xml::dom::Element;

/// Exports of this process whose end is still to be written, by the
/// export's UUID.
static EXPORTS: LazyLock<Mutex<HashMap<Uuid, Started>>> = LazyLock::new(Default::default);

/// A domain's UUID and name, as far as libvirt still knows them.
fn named(dom: &DomainRef) -> Option<(Uuid, String)> {
    let uuid = dom.uuid().ok()?;
    Some((uuid, dom.name().unwrap_or_default()))
}

/// The domain of the stored backup `backup` (its record's UUID and name).
fn domain_of_backup(backup: &Uuid) -> Option<(Uuid, String)> {
    let catalog = Catalog::open().ok()?;
    let rec = recovery::find(&catalog, backup).ok()??;
    Some((rec.domain_uuid, rec.domain_name))
}

/// The domain of a handle's backup.
fn domain_of_handle(b: &Backup) -> Option<(Uuid, String)> {
    let name = (b.domain.as_ref().and_then(|d| d.name().ok()))
        .or_else(|| b.record().ok().map(|r| r.domain_name));
    Some((b.domain_uuid, name.unwrap_or_default()))
}

/// How a job that returned `result` ended.
fn end_of<T>(result: &Result<T>, bytes: Option<u64>) -> JobEnd {
    match result {
        Ok(_) => JobEnd {
            state: Some(JobState::Completed),
            bytes,
            ..JobEnd::default()
        },
        Err(e) => failure(e),
    }
}

/// How a job that failed with `e` ended.
fn failure(e: &Error) -> JobEnd {
    JobEnd {
        state: Some(match e.is(ErrorCode::OperationAborted) {
            true => JobState::Cancelled,
            false => JobState::Failed,
        }),
        error: Some((e.code, e.message.clone())),
        ..JobEnd::default()
    }
}

/// Note `entry`'s start in the history; `None` while there is no catalog
/// (a job that needs none, such as a files-only restore on a host
/// without backups, makes none for its history) or it cannot be opened
/// (the reason is logged).
fn start(entry: JobEntry) -> Option<Started> {
    match Catalog::open_existing() {
        Ok(Some(catalog)) => Some(history::start(&catalog, entry)),
        Ok(None) => None,
        Err(e) => {
            ::log::warn!("cannot write the job history: {e}");
            None
        }
    }
}

/// Note a job that failed before it started (its start and end at once);
/// returns its error.
fn refused(entry: JobEntry, e: Error) -> Error {
    if let Some(s) = start(entry) {
        s.finish(failure(&e));
    }
    e
}

/// Run `work` as a job of the history: its start noted, then its end.
fn journal<T>(
    entry: JobEntry,
    work: impl FnOnce() -> Result<T>,
    bytes: fn(&T) -> Option<u64>,
) -> Result<T> {
    let started = start(entry.clone());
    let result = work();
    // A catalog the job made (the first of a host) has its line too.
    if let Some(s) = started.or_else(|| start(entry)) {
        s.finish(end_of(&result, result.as_ref().ok().and_then(bytes)));
    }
    result
}

/// `virDomainBackupCreateXML`: the job's end is noted when the job ends.
pub(crate) fn create(dom: &DomainRef, xml: &str, opts: CreateOptions) -> Result<Arc<Backup>> {
    let asked = CreateRequest::parse(xml).ok().and_then(|r| r.uuid);
    let mut entry = JobEntry::new(JobKind::Create, named(dom), asked);
    // The job is waited for here, once its start is noted.
    let created = Backup::create(
        dom,
        xml,
        CreateOptions {
            wait: false,
            ..opts
        },
    );
    let b = match created {
        Ok(b) => b,
        Err(e) => return Err(refused(entry, e)),
    };
    entry.backup = Some(b.uuid);
    let job = b.job().expect("a new backup's job").clone();
    if let Some(s) = start(entry) {
        job.record_end(s);
    }
    if opts.wait {
        job.wait()?;
    }
    Ok(b)
}

/// `virDomainBackupDelete`.
pub(crate) fn delete(b: &Backup, opts: DeleteOptions) -> Result<()> {
    let entry = JobEntry::new(JobKind::Delete, domain_of_handle(b), Some(b.uuid));
    journal(entry, || b.delete(opts), |_| None)
}

/// `virDomainBackupVerify`; the bytes noted are those it read.
pub(crate) fn verify(b: &Backup) -> Result<()> {
    let entry = JobEntry::new(JobKind::Verify, domain_of_handle(b), Some(b.uuid));
    journal(entry, || b.verify(), |n| Some(*n)).map(drop)
}

/// `virDomainBackupRestore`.
pub(crate) fn restore(xml: &str, opts: RestoreOptions) -> Result<()> {
    let backup = RestoreRequest::parse(xml).ok().map(|r| r.uuid);
    let domain = backup.as_ref().and_then(domain_of_backup);
    let entry = JobEntry::new(JobKind::Restore, domain, backup);
    journal(entry, || Backup::restore(xml, opts), |_| None)
}

/// `virDomainBackupRestoreUnmanaged`.
pub(crate) fn restore_unmanaged(dom: &DomainRef, xml: &str, opts: RestoreOptions) -> Result<()> {
    let entry = JobEntry::new(JobKind::Restore, named(dom), None);
    journal(
        entry,
        || Backup::restore_unmanaged(dom, xml, opts),
        |_| None,
    )
}

/// Note the start of an export that `started` (the export's handle, or
/// the error that kept it from starting); its end is noted by
/// `finish_job` or `abort`.
fn export_started(entry: JobEntry, started: Result<Arc<Backup>>) -> Result<Arc<Backup>> {
    match started {
        Ok(b) => {
            let entry = JobEntry {
                backup: entry.backup.or(Some(b.uuid)),
                ..entry
            };
            if let Some(s) = start(entry) {
                EXPORTS.lock().unwrap().insert(b.uuid, s);
            }
            Ok(b)
        }
        Err(e) => Err(refused(entry, e)),
    }
}

/// `virDomainBackupStartUnmanaged` of a domain.
pub(crate) fn start_unmanaged(
    dom: &DomainRef,
    xml: &str,
    opts: ExportOptions,
) -> Result<Arc<Backup>> {
    let entry = JobEntry::new(JobKind::Export, named(dom), None);
    export_started(entry, Backup::start_unmanaged(dom, xml, opts))
}

/// `virDomainBackupStartUnmanaged(NULL, …)`: the export of a stored backup.
pub(crate) fn export_stored(xml: &str) -> Result<Arc<Backup>> {
    let backup = UnmanagedRequest::parse(xml).ok().and_then(|r| r.backup);
    let domain = backup.as_ref().and_then(domain_of_backup);
    let entry = JobEntry::new(JobKind::Export, domain, backup);
    export_started(entry, Backup::export_stored(xml))
}

/// Note the end of `b`'s export once it has ended (`result`: what ended it).
fn export_ended<T>(b: &Backup, result: &Result<T>) {
    let state = match b.export_state() {
        None | Some(BackupState::Running) => return,
        Some(s) => s,
    };
    let Some(s) = EXPORTS.lock().unwrap().remove(&b.uuid) else {
        return;
    };
    let mut end = end_of(result, None);
    end.state = Some(match state {
        BackupState::Completed if result.is_ok() => JobState::Completed,
        BackupState::Cancelled => JobState::Cancelled,
        _ => JobState::Failed,
    });
    s.finish(end);
}

/// `virDomainBackupFinishJob`.
pub(crate) fn finish_job(b: &Backup, mode: FinishMode) -> Result<i32> {
    let result = b.finish_job(mode);
    export_ended(b, &result);
    result
}

/// `virDomainBackupAbortJob`.
pub(crate) fn abort(b: &Backup) -> Result<()> {
    let result = b.abort();
    export_ended(b, &result);
    result
}

/// `s` with what XML 1.0 cannot carry (a crafted history's control
/// characters) replaced, so that one line never fails the document.
fn clean(s: &str) -> String {
    let ok = |c: char| !c.is_control() || matches!(c, '\t' | '\n' | '\r');
    s.chars()
        .map(|c| {
            if ok(c) && c != '\u{fffe}' && c != '\u{ffff}' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// One job as `<job>` of `virDomainBackupGetJobHistory`.
fn job_element(j: &JobEntry) -> Element {
    let mut el = Element::new("job")
        .with_attr("id", j.id.to_string())
        .with_attr("kind", j.kind.as_str())
        .with_attr("state", j.state.as_str());
    if let Some((uuid, name)) = &j.domain {
        let dom = Element::new("domain")
            .with_attr("uuid", uuid.to_string())
            .with_attr("name", clean(name));
        el.push(dom);
    }
    if let Some(b) = j.backup {
        el.push(Element::new("backup").with_attr("uuid", b.to_string()));
    }
    let text = |name: &str, v: String| Element::new(name).with_text(v);
    el.push(text("start", j.start.to_string()));
    if let Some(end) = j.end.filter(|_| j.state != JobState::Interrupted) {
        el.push(text("end", end.to_string()));
    }
    for (name, v) in [("bytes", j.bytes), ("written", j.written)] {
        if let Some(v) = v {
            el.push(text(name, v.to_string()));
        }
    }
    el.push(text("host", clean(&j.host)));
    el.push(text("pid", j.pid.to_string()));
    if let Some((code, msg)) = &j.error {
        el.push(
            Element::new("error")
                .with_attr("code", code.to_string())
                .with_text(clean(msg)),
        );
    }
    el
}

/// `virDomainBackupGetJobHistory`: the history of `domain` (every
/// domain's with `None`), oldest first, as XML.
pub(crate) fn history_xml(domain: Option<&DomainRef>, filter: HistoryFilter) -> Result<String> {
    let want = domain.map(|d| d.uuid()).transpose()?;
    let mut root = Element::new("jobhistory");
    // No catalog yet: no history, and none is made for reading it.
    let jobs = Catalog::open_existing()?.map_or_else(Vec::new, |c| history::read(&c));
    for j in jobs {
        let mine = want.is_none_or(|w| j.domain.as_ref().is_some_and(|(u, _)| *u == w));
        if mine && (!filter.failed_only || j.state.is_failure()) {
            root.push(job_element(&j));
        }
    }
    root.to_xml()
        .map_err(|e| Error::internal(format!("cannot write the job history: {e}")))
}
