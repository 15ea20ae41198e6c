//! Managed backups: the operations behind the public API, on safe types.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::files::{remove_backup, volume_connection};
// The per-domain settings, where the integration tests find them.
pub use super::domain_settings::{set_default_target, undefine};
use super::{create, gate};
use crate::engine::{background, live};
use crate::error::{Error, ErrorCode, Result};
use crate::hv::libvirt::{self, DomainRef};
use crate::job::{self, Job};
use crate::ops::export;
use crate::ops::options::{
    ChildScope, CreateOptions, DeleteOptions, DeleteScope, ExportOptions, FinishMode, ListFilter,
    ListKind, RestoreOptions, XmlOptions,
};
use crate::ops::recovery;
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::summary::Entry;
use crate::xml::backup::{BackupMode, BackupRecord, BackupState, JobStats, UnmanagedRequest};
use crate::xml::dom::Element;

mod parent;

/// A backup as seen through a handle.
#[derive(Debug)]
pub struct Backup {
    /// The backup's UUID.
    pub uuid: Uuid,
    /// The UUID of the backup's domain.
    pub domain_uuid: Uuid,
    /// `None` when the backup was looked up and its domain no longer exists.
    pub domain: Option<DomainRef>,
    catalog: Catalog,
    /// The job, when it ran (or runs) in this process.
    job: Option<Arc<Job>>,
    /// Set for an unmanaged backup (an NBD export): it has no record.
    export: Option<Arc<export::Export>>,
}

/// A job's figures as `GetParameters` reports them (see `Backup::figures`).
struct Figures {
    state: BackupState,
    stats: JobStats,
    disks: u32,
    incremental: bool,
    error: Option<Error>,
    /// Each disk's name, bytes to examine and examined.
    per_disk: Vec<(String, u64, u64)>,
}

/// Typed parameters of `GetParameters`, in API.md's order.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A signed int (`VIR_TYPED_PARAM_INT`).
    Int(i32),
    /// An unsigned int (`VIR_TYPED_PARAM_UINT`).
    UInt(u32),
    /// An unsigned long long (`VIR_TYPED_PARAM_ULLONG`).
    ULLong(u64),
    /// A boolean (`VIR_TYPED_PARAM_BOOLEAN`).
    Boolean(bool),
    /// A string (`VIR_TYPED_PARAM_STRING`).
    String(String),
}

impl Backup {
    fn new(
        uuid: Uuid,
        domain_uuid: Uuid,
        domain: Option<DomainRef>,
        catalog: Catalog,
    ) -> Arc<Backup> {
        let job = job::running(&uuid);
        Arc::new(Backup {
            uuid,
            domain_uuid,
            domain,
            catalog,
            job,
            export: None,
        })
    }

    /// `virDomainBackupCreateXML` (see `ops::create`).
    pub fn create(dom: &DomainRef, xml: &str, opts: CreateOptions) -> Result<Arc<Backup>> {
        let created = create::create(dom, xml, opts)?;
        let backup = Arc::new(Backup {
            uuid: created.uuid,
            domain_uuid: created.domain_uuid,
            domain: Some(dom.clone()),
            catalog: created.catalog,
            job: Some(created.job),
            export: None,
        });
        if opts.wait {
            backup.job.as_ref().unwrap().wait()?;
        }
        Ok(backup)
    }

    /// `virDomainBackupStartUnmanaged`.
    pub fn start_unmanaged(dom: &DomainRef, xml: &str, opts: ExportOptions) -> Result<Arc<Backup>> {
        let req = UnmanagedRequest::parse(xml)?;
        if req.backup.is_some() {
            return Err(Error::invalid_arg(
                "a <uuid> names a stored backup to export: pass no domain for that",
            ));
        }
        let catalog = recovery::open_catalog()?;
        let domain_uuid = dom.uuid()?;
        let parent = match req.parent {
            Some(p) => Some(create::check_parent(&catalog, &domain_uuid, &p)?),
            None => None,
        };
        let export = export::start(dom, &req, parent, opts.quiesce)?;
        Ok(Arc::new(Backup {
            uuid: export.uuid,
            domain_uuid,
            domain: Some(dom.clone()),
            catalog,
            job: None,
            export: Some(export),
        }))
    }

    /// `virDomainBackupStartUnmanaged(NULL, …)`: export a stored backup.
    pub fn export_stored(xml: &str) -> Result<Arc<Backup>> {
        let export = crate::ops::export_stored::start(xml)?;
        Ok(Arc::new(Backup {
            uuid: export.uuid,
            domain_uuid: export.domain_uuid,
            domain: None,
            catalog: recovery::open_catalog()?,
            job: None,
            export: Some(export),
        }))
    }

    /// Refuse catalog operations on an unmanaged backup.
    fn managed_only(&self) -> Result<()> {
        if self.export.is_some() {
            return Err(Error::operation_invalid(
                "an unmanaged backup is not in the catalog; end it with FinishJob or AbortJob",
            ));
        }
        Ok(())
    }

    /// `virDomainBackupList`.
    pub fn list(dom: &DomainRef, filter: ListFilter) -> Result<Vec<Arc<Backup>>> {
        let catalog = recovery::open_catalog()?;
        let domain_uuid = dom.uuid()?;
        let entries = recovery::entries(&catalog, &domain_uuid)?;
        let chosen = filter_entries(&entries, entries.iter().collect(), filter);
        Ok(chosen
            .into_iter()
            .map(|e| Backup::new(e.uuid, domain_uuid, Some(dom.clone()), catalog.clone()))
            .collect())
    }

    /// `virDomainBackupList(NULL, …)`: the backups of every domain in the
    /// catalog, whether the domain is still defined or not, under the same
    /// filter and order as `list`: oldest first across domains, LATEST the
    /// newest of them all, LEAVES those no backup builds on. Each domain is
    /// looked up once, through the connection URI its newest listed
    /// backup's record keeps (one connection per URI); one that cannot be
    /// found there leaves its backups without a domain (`domain`:
    /// `VIR_ERR_NO_DOMAIN`).
    pub fn list_all(filter: ListFilter) -> Result<Vec<Arc<Backup>>> {
        let catalog = recovery::open_catalog()?;
        let mut all: Vec<(Uuid, Entry)> = Vec::new();
        for domain in catalog.domains()? {
            let entries = recovery::entries(&catalog, &domain)?;
            all.extend(entries.into_iter().map(|e| (domain, e)));
        }
        all.sort_by_key(|(_, e)| (e.created_ns, e.uuid));
        let domain_of: HashMap<Uuid, Uuid> = all.iter().map(|(d, e)| (e.uuid, *d)).collect();
        let entries: Vec<Entry> = all.into_iter().map(|(_, e)| e).collect();
        let chosen = filter_entries(&entries, entries.iter().collect(), filter);
        let mut conns = libvirt::Connections::default();
        let mut found: HashMap<Uuid, Option<DomainRef>> = HashMap::new();
        for e in chosen.iter().rev() {
            let d = domain_of[&e.uuid];
            (found.entry(d)).or_insert_with(|| find_domain(&catalog, &mut conns, &d, &e.uuid));
        }
        Ok(chosen
            .into_iter()
            .map(|e| {
                let d = domain_of[&e.uuid];
                Backup::new(e.uuid, d, found[&d].clone(), catalog.clone())
            })
            .collect())
    }

    /// `virDomainBackupListChildren`.
    pub fn list_children(&self, scope: ChildScope, filter: ListFilter) -> Result<Vec<Arc<Backup>>> {
        self.managed_only()?;
        let entries = recovery::entries(&self.catalog, &self.domain_uuid)?;
        if !entries.iter().any(|e| e.uuid == self.uuid) {
            return Err(Error::no_backup(&self.uuid.to_string()));
        }
        let children = children_of(&entries);
        let mut found: Vec<&Entry> = Vec::new();
        let mut frontier = vec![self.uuid];
        while let Some(p) = frontier.pop() {
            for e in children.get(&p).into_iter().flatten() {
                found.push(e);
                if scope == ChildScope::Descendants {
                    frontier.push(e.uuid);
                }
            }
        }
        found.sort_by_key(|e| (e.created_ns, e.uuid));
        let chosen = filter_entries(&entries, found, filter);
        Ok(chosen
            .into_iter()
            .map(|e| {
                Backup::new(
                    e.uuid,
                    self.domain_uuid,
                    self.domain.clone(),
                    self.catalog.clone(),
                )
            })
            .collect())
    }

    /// `virDomainBackupLookupByUUID`.
    pub fn lookup(uuid: &str) -> Result<Arc<Backup>> {
        let uuid = Uuid::parse_str(uuid.trim())
            .map_err(|_| Error::invalid_arg(format!("malformed backup uuid '{uuid}'")))?;
        let catalog = recovery::open_catalog()?;
        let rec =
            recovery::find(&catalog, &uuid)?.ok_or_else(|| Error::no_backup(&uuid.to_string()))?;
        let domain = libvirt::open_domain(&rec.uri, &rec.domain_uuid).ok();
        Ok(Backup::new(uuid, rec.domain_uuid, domain, catalog))
    }

    /// The catalog record, or "no such backup" once it is gone.
    pub fn record(&self) -> Result<BackupRecord> {
        recovery::reload(&self.catalog, &self.domain_uuid, &self.uuid)?
            .ok_or_else(|| Error::no_backup(&self.uuid.to_string()))
    }

    /// Ok while the backup exists: its job runs or ended without a record
    /// (failed, cancelled) in this process, or the catalog has it.
    pub fn ensure_exists(&self) -> Result<()> {
        if self.export.is_some() {
            return Ok(());
        }
        if self
            .job
            .as_ref()
            .is_some_and(|j| j.state() != BackupState::Completed)
        {
            return Ok(());
        }
        self.record().map(|_| ())
    }

    /// The job's final state when it failed or was cancelled (no record is left).
    fn ended_without_record(&self) -> Option<(&Job, BackupState)> {
        let job = self.job.as_ref()?;
        match job.state() {
            s @ (BackupState::Failed | BackupState::Cancelled) => Some((job, s)),
            _ => None,
        }
    }

    /// `virDomainBackupGetXMLDesc` with flags 0 (see `xml_desc_with`).
    pub fn xml_desc(&self) -> Result<String> {
        self.xml_desc_with(XmlOptions::default())
    }

    /// `virDomainBackupGetXMLDesc`: the record's description, with the
    /// backups pinning it and the domain's saved definition.
    pub fn xml_desc_with(&self, opts: XmlOptions) -> Result<String> {
        if let Some(e) = &self.export {
            return e.xml_desc();
        }
        if let Some((job, state)) = self.ended_without_record() {
            return Element::new("domainbackup")
                .with_child(Element::new("uuid").with_text(self.uuid.to_string()))
                .with_child(Element::new("state").with_text(state.as_str()))
                .with_child(Element::new("domain").with_attr("uuid", job.domain.to_string()))
                .to_xml();
        }
        let rec = self.record()?;
        let mut el = rec.public_element()?;
        crate::ops::pins::add_pinned_by(&self.catalog, &rec, &mut el)?;
        // A running job's rate limit (the record does not keep it).
        let running = self
            .job
            .as_ref()
            .filter(|j| j.state() == BackupState::Running);
        if let Some(bytes) = running.and_then(|j| j.bandwidth()) {
            el.push(Element::new("bandwidth").with_attr("bytes", bytes.to_string()));
        }
        el.children.extend(rec.definition_element(opts.secure));
        el.to_xml()
    }

    /// The backup's domain; an error if the backup or its domain no longer exists.
    pub fn domain(&self) -> Result<&DomainRef> {
        self.ensure_exists()?;
        self.domain.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::NoDomain,
                format!(
                    "Domain not found: domain '{}' of backup '{}' no longer exists",
                    self.domain_uuid, self.uuid
                ),
            )
        })
    }

    /// `virDomainBackupGetParameters`, all of them.
    pub fn parameters(&self) -> Result<Vec<(String, ParamValue)>> {
        self.ensure_exists()?;
        let f = self.figures()?;
        let mut out: Vec<(String, ParamValue)> = Vec::new();
        let mut add = |k: &str, v| out.push((k.to_string(), v));
        add("state", ParamValue::Int(f.state as i32));
        add("incremental", ParamValue::Boolean(f.incremental));
        add("bytes.total", ParamValue::ULLong(f.stats.total));
        add("bytes.processed", ParamValue::ULLong(f.stats.processed));
        add("bytes.written", ParamValue::ULLong(f.stats.written));
        add("time.elapsed", ParamValue::ULLong(f.stats.elapsed_ms));
        add("disks", ParamValue::UInt(f.disks));
        for (i, (name, total, processed)) in f.per_disk.into_iter().enumerate() {
            add(&format!("disk.{i}.name"), ParamValue::String(name));
            add(&format!("disk.{i}.bytes.total"), ParamValue::ULLong(total));
            add(
                &format!("disk.{i}.bytes.processed"),
                ParamValue::ULLong(processed),
            );
        }
        if f.state == BackupState::Failed {
            let msg = (f.error.map(|e| e.message)).unwrap_or_else(|| "backup job failed".into());
            add("error", ParamValue::String(msg));
        }
        for (k, v) in super::verify::parameters(&self.uuid) {
            add(k, ParamValue::ULLong(v));
        }
        if let Some(r) = super::verify::recorded(&self.uuid) {
            add("verify.recorded", ParamValue::Boolean(r));
        }
        Ok(out)
    }

    /// What `parameters` reports, read once. Each disk's name, size and
    /// bytes examined, in the record's disk order: a job's counters while
    /// it runs (or ran) in this process, read together with the job's
    /// figures, which add them up; else the record's (a completed backup
    /// examined all of each disk; a job running in another process shows
    /// none here, as in its job-wide figures). An export shows none.
    fn figures(&self) -> Result<Figures> {
        if let Some(e) = &self.export {
            return Ok(Figures {
                state: e.state(),
                stats: JobStats {
                    elapsed_ms: e.elapsed_ms(),
                    ..JobStats::default()
                },
                disks: e.disk_count(),
                incremental: e.has_bitmaps(),
                error: None,
                per_disk: Vec::new(),
            });
        }
        if let Some(job) = &self.job {
            let (stats, processed) = job.snapshot();
            return Ok(Figures {
                state: job.state(),
                stats,
                disks: job.disks,
                incremental: job.incremental,
                error: job.error(),
                per_disk: (job.disk_progress.iter().zip(processed))
                    .map(|(d, p)| (d.name.clone(), d.total, p))
                    .collect(),
            });
        }
        let rec = self.record()?;
        let done = rec.state == BackupState::Completed;
        // A job of another process: the figures it published, if any.
        let live = (rec.state == BackupState::Running)
            .then(|| job::published_figures(&self.catalog, &rec))
            .flatten();
        let seen = |i: usize| live.as_ref().map(|l| l.1.get(i).copied().unwrap_or(0));
        Ok(Figures {
            state: rec.state,
            stats: live.as_ref().map_or(rec.stats, |l| l.0),
            disks: rec.disks.len() as u32,
            incremental: rec.disks.iter().any(|d| d.mode == BackupMode::Incremental),
            error: None,
            per_disk: (rec.disks.into_iter().enumerate())
                .map(|(i, d)| {
                    let done = if done { d.virtual_size } else { 0 };
                    (d.name, d.virtual_size, seen(i).unwrap_or(done))
                })
                .collect(),
        })
    }

    /// `virDomainBackupFinishJob`: 0 completed, 1 still running (CHECK).
    pub fn finish_job(&self, mode: FinishMode) -> Result<i32> {
        if mode == FinishMode::Cancel {
            self.abort()?;
            return Ok(0);
        }
        let check = mode == FinishMode::Check;
        if let Some(e) = &self.export {
            return match e.state() {
                BackupState::Running if check => Ok(1),
                BackupState::Running => e.finish(false).map(|()| 0),
                BackupState::Completed => Ok(0),
                s => Err(Error::operation_invalid(format!(
                    "the export was {}",
                    s.as_str()
                ))),
            };
        }
        if let Some(job) = &self.job {
            if check && job.state() == BackupState::Running {
                return Ok(1);
            }
            job.wait()?;
            self.record()?;
            return Ok(0);
        }
        // The job, if any, belongs to another process: follow the catalog.
        loop {
            let rec = self.record()?;
            match rec.state {
                BackupState::Completed => return Ok(0),
                BackupState::Running if check => return Ok(1),
                BackupState::Running => std::thread::sleep(Duration::from_millis(50)),
                s => {
                    return Err(Error::operation_failed(format!(
                        "backup job ended {}",
                        s.as_str()
                    )));
                }
            }
        }
    }

    /// The job of the backup, when it runs (or ran) in this process.
    pub(crate) fn job(&self) -> Option<&Arc<Job>> {
        self.job.as_ref()
    }

    /// The state of an unmanaged backup (an export); `None` for a managed one.
    pub(crate) fn export_state(&self) -> Option<BackupState> {
        self.export.as_ref().map(|e| e.state())
    }

    /// `virDomainBackupVerify`: every stored block checked against the
    /// backup's digest index; the bytes read.
    pub fn verify(&self) -> Result<u64> {
        super::verify::verify(&self.record()?)
    }

    /// `virDomainBackupAbortJob` and `FinishJob(CANCEL)`.
    pub fn abort(&self) -> Result<()> {
        if let Some(stopped) = super::verify::abort(&self.uuid) {
            return stopped;
        }
        self.ensure_exists()?;
        if let Some(e) = &self.export {
            return e.finish(true);
        }
        if let Some(job) = &self.job {
            return job.cancel();
        }
        // The job runs in another process: leave it a cancel marker and
        // wait until it has removed its data (or completed first).
        let rec = self.record()?;
        if rec.state != BackupState::Running {
            return Err(Error::operation_invalid("the backup job has already ended"));
        }
        let backup = self.catalog.backup_of(&rec);
        backup.request_cancel()?;
        loop {
            match recovery::reload(&self.catalog, &self.domain_uuid, &self.uuid)? {
                // The job's process removes the record first and keeps the
                // domain's lock until its other files are gone: wait for it.
                None => return backup.domain().lock().map(drop),
                Some(r) if r.state == BackupState::Running => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Some(_) => {
                    backup.clear_cancel();
                    return Err(Error::operation_invalid(
                        "the backup job completed before it could be cancelled",
                    ));
                }
            }
        }
    }

    /// `virDomainBackupDelete`.
    pub fn delete(&self, opts: DeleteOptions) -> Result<()> {
        self.managed_only()?;
        // Only this domain's lock: a merge never holds up other domains.
        let _guard = self.catalog.domain(&self.domain_uuid).lock()?;
        let rec = self.record()?;
        let all = recovery::entries(&self.catalog, &self.domain_uuid)?;
        let children = children_of(&all);
        let doomed: Vec<&Entry> = if opts.scope == DeleteScope::All {
            all.iter().collect()
        } else {
            let Some(own) = all.iter().find(|e| e.uuid == rec.uuid) else {
                return Err(Error::no_backup(&rec.uuid.to_string()));
            };
            let mut set = vec![own];
            let mut i = 0;
            while i < set.len() {
                set.extend(children.get(&set[i].uuid).into_iter().flatten());
                i += 1;
            }
            if opts.scope != DeleteScope::WithChildren {
                // Only this backup goes; its children keep their data.
                set.truncate(1);
            }
            set
        };
        let metadata_only = opts.metadata_only;
        let records = self.doomed_records(&rec, &doomed)?;
        crate::ops::pins::check_delete(&self.catalog, &records.iter().collect::<Vec<_>>())?;
        if !metadata_only {
            for r in &records {
                super::moved::check(&self.catalog, r)?;
            }
            check_target_folders(&records)?;
        }
        if let Some(e) = doomed.iter().find(|e| e.state == BackupState::Running) {
            return Err(Error::operation_invalid(format!(
                "backup '{}' has a job running; abort it first",
                e.uuid
            )));
        }
        if doomed.len() == 1 && opts.scope != DeleteScope::All {
            self.merge_before_delete(&rec, children.get(&rec.uuid), metadata_only)?;
        }
        if !metadata_only {
            // After the merge, no listed child reads through `rec` any more:
            // an image that still does is one the records do not know of.
            let users = self.possible_backing_users(&all, &records)?;
            recovery::check_no_backing_users(&users, &records.iter().collect::<Vec<_>>())?;
        }
        // Children first, so a crash midway never leaves a child without its parent.
        for r in records.iter().rev() {
            ::log::info!(
                "backup {}: deleting {}",
                r.uuid,
                if opts.metadata_only {
                    "its record (its files stay)"
                } else {
                    "its record and files"
                }
            );
            // A checkpoint nobody will use again only slows the guest's writes.
            if let (Some(cp), Some(dom)) = (&r.checkpoint, &self.domain) {
                live::remove_checkpoint(dom, cp)?;
            }
            if metadata_only {
                self.catalog.backup_of(r).remove_record()?;
            } else {
                let conn = volume_connection(r, self.domain.as_ref());
                // Freeing a large image's blocks is housekeeping too; this
                // thread holds the domain's lock, so it stays on it.
                background::paced(gate(&self.catalog), || {
                    remove_backup(&self.catalog, r, conn.as_ref())
                })?;
            }
        }
        Ok(())
    }

    /// The records of the backups whose images could read through the
    /// files of `doomed`: every record file in the domain's folder that the
    /// summary does not know, and every backup made since the oldest of
    /// `doomed` (the library only ever points an image at an older
    /// backup's file: a new incremental at its parent, a merge at the
    /// grandparent). Deleting a leaf so reads no other record; a damaged
    /// record among them fails the delete.
    fn possible_backing_users(
        &self,
        all: &[Entry],
        doomed: &[BackupRecord],
    ) -> Result<Vec<BackupRecord>> {
        let since = doomed.iter().map(|r| r.created_ns).min().unwrap_or(0);
        let known: HashMap<Uuid, u64> = all.iter().map(|e| (e.uuid, e.created_ns)).collect();
        let gone: HashSet<Uuid> = doomed.iter().map(|r| r.uuid).collect();
        let domain = self.catalog.domain(&self.domain_uuid);
        let mut ids = domain.record_ids()?;
        ids.retain(|u| !gone.contains(u) && known.get(u).is_none_or(|&ns| ns >= since));
        domain.records_of(&ids)
    }

    /// The full records of the backups a delete removes (`rec` and its
    /// descendants among `doomed`), read only for those.
    fn doomed_records(&self, rec: &BackupRecord, doomed: &[&Entry]) -> Result<Vec<BackupRecord>> {
        let mut out = Vec::with_capacity(doomed.len());
        for e in doomed {
            if e.uuid == rec.uuid {
                out.push(rec.clone());
            } else if let Some(r) = self.catalog.backup(&self.domain_uuid, &e.uuid).record()? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Merge `rec` into its children before it goes alone: only the
    /// children's and the parent's records are read.
    fn merge_before_delete(
        &self,
        rec: &BackupRecord,
        children: Option<&Vec<&Entry>>,
        metadata_only: bool,
    ) -> Result<()> {
        let children = children.map(|c| c.as_slice()).unwrap_or(&[]);
        if let Some(e) = children.iter().find(|e| e.state == BackupState::Running) {
            return Err(Error::operation_invalid(format!(
                "child backup '{}' has a job running; abort it first",
                e.uuid
            )));
        }
        if children.is_empty() {
            return Ok(());
        }
        let mut near: Vec<BackupRecord> = Vec::with_capacity(children.len() + 1);
        for u in children.iter().map(|e| e.uuid).chain(rec.parent) {
            if let Some(r) = self.catalog.backup(&self.domain_uuid, &u).record()? {
                if !metadata_only {
                    super::moved::check(&self.catalog, &r)?;
                }
                near.push(r);
            }
        }
        crate::ops::merge::merge_into_children(&self.catalog, rec, &near, metadata_only)
    }

    /// `virDomainBackupRestore`.
    pub fn restore(xml: &str, opts: RestoreOptions) -> Result<()> {
        crate::ops::restore::restore(xml, opts)
    }

    /// `virDomainBackupRestoreUnmanaged`.
    pub fn restore_unmanaged(dom: &DomainRef, xml: &str, opts: RestoreOptions) -> Result<()> {
        crate::ops::restore::restore_unmanaged(dom, xml, opts)
    }
}

/// The domain of `backup` (of `domain`), found through the connection URI
/// its record keeps; `None` when it cannot be found (its error logged).
fn find_domain(
    catalog: &Catalog,
    conns: &mut libvirt::Connections,
    domain: &Uuid,
    backup: &Uuid,
) -> Option<DomainRef> {
    let found = catalog
        .backup(domain, backup)
        .record()
        .and_then(|r| r.ok_or_else(|| Error::no_backup(&backup.to_string())))
        .and_then(|r| conns.domain(&r.uri, domain));
    match found {
        Ok(d) => Some(d),
        Err(e) => {
            ::log::debug!("domain {domain} of backup {backup}: {}", e.message);
            None
        }
    }
}

/// Each backup's direct children, oldest first, built once.
fn children_of(all: &[Entry]) -> HashMap<Uuid, Vec<&Entry>> {
    let mut map: HashMap<Uuid, Vec<&Entry>> = HashMap::new();
    for e in all {
        if let Some(p) = e.parent {
            map.entry(p).or_default().push(e);
        }
    }
    map
}

/// Keep only the entries `filter` asks for (full/incremental, leaves, latest).
fn filter_entries<'a>(
    all: &[Entry],
    candidates: Vec<&'a Entry>,
    filter: ListFilter,
) -> Vec<&'a Entry> {
    // The set of parents is built once: leaves stays O(N).
    let parents: HashSet<Uuid> = match filter.leaves {
        false => HashSet::new(),
        true => all.iter().filter_map(|e| e.parent).collect(),
    };
    let mut out: Vec<&Entry> = candidates
        .into_iter()
        .filter(|e| match filter.kind {
            ListKind::Any => true,
            ListKind::Full => e.parent.is_none(),
            ListKind::Incremental => e.parent.is_some(),
        })
        .filter(|e| !filter.leaves || !parents.contains(&e.uuid))
        .collect();
    if filter.latest {
        out.sort_by_key(|e| (e.created_ns, e.uuid));
        out = out.pop().into_iter().collect();
    }
    out
}

/// Refuse, before anything is changed, a delete whose files lie in a
/// folder the removal will not go through (`Folder::open_outside`): it
/// would stop midway.
fn check_target_folders(records: &[BackupRecord]) -> Result<()> {
    for r in records {
        for d in &r.disks {
            Folder::outside_parent(&d.target, "backup target")?;
        }
    }
    Ok(())
}
