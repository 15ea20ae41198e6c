//! Managed backups: the operations behind the public API, on safe types.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;
use virt::connect::Connect;

use crate::engine::copy;
use crate::engine::live;
use crate::error::{Error, ErrorCode, Result};
use crate::flags::bits::*;
use crate::hv::libvirt::{self, DomainRef};
use crate::hv::storage_pool;
use crate::image::disk::{Chain, Source, Target as ImageTarget};
use crate::job::{self, Job};
use crate::ops::export;
use crate::store::catalog::{Catalog, JobLock};
use crate::store::index::{IndexReader, IndexWriter};
use crate::store::secure;
use crate::xml::backup::{
    BackupMode, BackupRecord, BackupState, CreateRequest, DefaultTarget, DiskFormat, DiskRecord,
    JobStats, Target, UnmanagedRequest,
};
use crate::xml::dom::Element;
use crate::xml::domain::{self, DomainDisk};

/// A backup as seen through a handle.
#[derive(Debug)]
pub struct Backup {
    pub uuid: Uuid,
    pub domain_uuid: Uuid,
    /// `None` when the backup was looked up and its domain no longer exists.
    pub domain: Option<DomainRef>,
    catalog: Catalog,
    /// The job, when it ran (or runs) in this process.
    job: Option<Arc<Job>>,
    /// Set for an unmanaged backup (an NBD export): it has no record.
    export: Option<Arc<export::Export>>,
}

/// Typed parameters of `GetParameters`, in API.md's order.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Int(i32),
    UInt(u32),
    ULLong(u64),
    Boolean(bool),
    String(String),
}

/// Default targets set with `VIR_DOMAIN_AFFECT_LIVE`: they last for this process.
static LIVE_TARGETS: LazyLock<Mutex<HashMap<Uuid, DefaultTarget>>> =
    LazyLock::new(Default::default);

fn now() -> (i64, u64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.as_nanos() as u64)
}

/// One disk of a backup being prepared: where it comes from and goes to.
struct PlannedDisk {
    record: DiskRecord,
    source: Source,
    /// Set for an incremental disk: what its target is a delta against.
    baseline: Option<Baseline>,
}

/// The parent's copy of a disk an incremental target builds on, and what
/// tells the changes since: its digest index (the library's engine) or its
/// checkpoint (libvirt's).
struct Baseline {
    target: PathBuf,
    format: DiskFormat,
    index: Option<IndexReader>,
    checkpoint: Option<String>,
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

    /// `virDomainBackupCreateXML`.
    pub fn create(dom: &DomainRef, xml: &str, flags: u32) -> Result<Arc<Backup>> {
        let req = CreateRequest::parse(xml)?;
        let catalog = Catalog::open()?;
        let domain_uuid = dom.uuid()?;
        let parent = match req.parent {
            Some(p) => Some(check_parent(&catalog, &domain_uuid, &p)?),
            None => None,
        };
        let active = dom.is_active()?;
        let is_live = live::is_live(dom, active)?;
        let quiesce = flags & VIR_DOMAIN_BACKUP_CREATE_QUIESCE != 0;
        if quiesce && !active {
            return Err(Error::operation_invalid(
                "cannot quiesce the file systems of an inactive domain",
            ));
        }
        if quiesce && !is_live {
            return Err(Error::not_supported_yet(format!(
                "quiescing the guest file systems of a '{}' domain",
                dom.driver()?
            )));
        }
        if !is_live && !dom.images_are_quiet(active)? {
            return Err(Error::not_supported_yet(format!(
                "backup of a running domain of the '{}' driver",
                dom.driver()?
            )));
        }
        job::check_domain_idle(dom, &domain_uuid, is_live)?;
        let domain_xml = dom.xml()?;
        let dom_disks = domain::parse_disks(&domain_xml)?;
        let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
        let default_target = effective_default_target(&catalog, &domain_uuid, active)?;

        let requested = req.disks.as_deref().unwrap_or(&[]);
        if let Some(r) = requested
            .iter()
            .find(|r| !dom_disks.iter().any(|d| d.name == r.name))
        {
            return Err(Error::invalid_arg(format!(
                "domain has no disk named '{}'",
                r.name
            )));
        }
        let mut planned = Vec::new();
        for d in &dom_disks {
            let asked = requested.iter().find(|r| r.name == d.name);
            if let Some(p) = planned_disk(
                &catalog,
                dom,
                &domain_uuid,
                &uuid,
                d,
                asked,
                default_target.as_ref(),
            )? {
                planned.push(p);
            }
        }
        if planned.is_empty() {
            return Err(Error::invalid_arg("the backup would include no disk"));
        }
        if let Some(parent) = &parent {
            for p in &mut planned {
                if is_live {
                    choose_live_mode(dom, parent, p, &dom_disks, flags)?;
                } else {
                    choose_mode(&catalog, parent, p, flags)?;
                }
                if p.record.mode == BackupMode::Incremental {
                    p.record.backing = catalog.chain_from(parent, &p.record.name)?;
                }
            }
        }
        for (i, p) in planned.iter().enumerate() {
            if planned[..i]
                .iter()
                .any(|o| o.record.target == p.record.target)
            {
                return Err(Error::invalid_arg(format!(
                    "target '{}' is given to two disks",
                    p.record.target.display()
                )));
            }
            // symlink_metadata: a dangling link is an existing target too.
            if fs::symlink_metadata(&p.record.target).is_ok() {
                return Err(Error::invalid_arg(format!(
                    "target file '{}' already exists",
                    p.record.target.display()
                )));
            }
        }

        let (creation_time, created_ns) = now();
        let mut record = BackupRecord {
            uuid,
            creation_time,
            created_ns,
            description: req.description.clone(),
            state: BackupState::Running,
            parent: parent.as_ref().map(|p| p.uuid),
            domain_uuid,
            domain_name: dom.name()?,
            disks: planned.iter().map(|p| p.record.clone()).collect(),
            uri: dom.uri()?,
            domain_xml,
            stats: JobStats::default(),
            created_dirs: Vec::new(),
            checkpoint: is_live.then(|| live::checkpoint_name(&uuid)),
        };

        // Register the backup under the catalog lock, creating its files, so
        // that a failure here leaves nothing behind.
        let guard = catalog.lock()?;
        if catalog.find(&uuid)?.is_some() || job::running(&uuid).is_some() {
            return Err(Error::invalid_arg(format!(
                "a backup with uuid '{uuid}' already exists"
            )));
        }
        let mut targets = Vec::new();
        let prepared = (|| -> Result<JobLock> {
            for p in &planned {
                let dir = p.record.target.parent().unwrap_or(Path::new("/"));
                record.created_dirs.extend(create_dirs(dir)?);
                let backing = p.baseline.as_ref().map(|b| (b.target.as_path(), b.format));
                if let Some((pool, volume)) = &p.record.volume {
                    let v = storage_pool::create_volume(
                        &dom.connect()?,
                        pool,
                        volume,
                        p.record.format,
                        p.record.virtual_size,
                    )?;
                    if v.path != p.record.target {
                        let _ = storage_pool::delete_volume(Some(&dom.connect()?), &v);
                        return Err(Error::operation_failed(format!(
                            "volume '{volume}' was created at '{}', not at '{}'",
                            v.path.display(),
                            p.record.target.display()
                        )));
                    }
                }
                targets.push(ImageTarget::create(
                    &p.record.target,
                    p.record.format,
                    p.record.virtual_size,
                    backing,
                    p.record.volume.is_some(),
                )?);
            }
            catalog.create_index_dir(&domain_uuid, &uuid)?;
            let lock = catalog.lock_job(&domain_uuid, &uuid)?;
            catalog.write_record(&record)?;
            Ok(lock)
        })();
        let lock = match prepared {
            Ok(l) => l,
            Err(e) => {
                drop(targets);
                let _ = remove_backup(
                    &catalog,
                    &record,
                    volume_connection(&record, Some(dom)).as_ref(),
                );
                return Err(e);
            }
        };
        drop(guard);
        let discard = |rec: &BackupRecord| {
            let _ = remove_backup(&catalog, rec, volume_connection(rec, Some(dom)).as_ref());
        };
        if is_live {
            // QEMU writes the targets: close them first.
            targets.clear();
            let mut disks: Vec<live::LiveDisk> = Vec::with_capacity(planned.len());
            for p in &planned {
                let since = match &p.baseline {
                    Some(Baseline {
                        checkpoint: Some(cp),
                        ..
                    }) => Some(cp.as_str()),
                    _ => None,
                };
                disks.push(live::LiveDisk {
                    record: &p.record,
                    since,
                });
            }
            if let Err(e) = live::begin(dom, &record, &disks, &dom_disks, quiesce) {
                drop(lock);
                discard(&record);
                return Err(e);
            }
        }

        let total = record.disks.iter().map(|d| d.virtual_size).sum();
        let job = Job::new(
            uuid,
            domain_uuid,
            total,
            record.disks.len() as u32,
            record
                .disks
                .iter()
                .any(|d| d.mode == BackupMode::Incremental),
            catalog.cancel_path(&domain_uuid, &uuid),
        );
        let sources: Vec<(Source, Option<IndexReader>)> = planned
            .into_iter()
            .map(|p| (p.source, p.baseline.and_then(|b| b.index)))
            .collect();
        let work_catalog = catalog.clone();
        let work_record = record.clone();
        let conn = volume_connection(&record, Some(dom));
        let work_dom = dom.clone();
        let spawned = if is_live {
            job.spawn(move |job| {
                let discard_catalog = work_catalog.clone();
                live::run(job, &work_catalog, work_record, work_dom, lock, |rec| {
                    let _ = remove_backup(&discard_catalog, rec, conn.as_ref());
                })
            })
        } else {
            job.spawn(move |job| {
                run_copy(
                    job,
                    &work_catalog,
                    work_record,
                    sources,
                    targets,
                    lock,
                    conn,
                )
            })
        };
        if let Err(e) = spawned {
            discard(&record);
            return Err(e);
        }
        let backup = Arc::new(Backup {
            uuid,
            domain_uuid,
            domain: Some(dom.clone()),
            catalog,
            job: Some(job),
            export: None,
        });
        if flags & VIR_DOMAIN_BACKUP_CREATE_WAIT != 0 {
            backup.job.as_ref().unwrap().wait()?;
        }
        Ok(backup)
    }

    /// `virDomainBackupStartUnmanaged`.
    pub fn start_unmanaged(dom: &DomainRef, xml: &str, flags: u32) -> Result<Arc<Backup>> {
        let req = UnmanagedRequest::parse(xml)?;
        let catalog = Catalog::open()?;
        let domain_uuid = dom.uuid()?;
        let parent = match req.parent {
            Some(p) => Some(check_parent(&catalog, &domain_uuid, &p)?),
            None => None,
        };
        let export = export::start(
            dom,
            &req,
            parent,
            flags & VIR_DOMAIN_BACKUP_CREATE_QUIESCE != 0,
        )?;
        Ok(Arc::new(Backup {
            uuid: export.uuid,
            domain_uuid,
            domain: Some(dom.clone()),
            catalog,
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
    pub fn list(dom: &DomainRef, flags: u32) -> Result<Vec<Arc<Backup>>> {
        let catalog = Catalog::open()?;
        let domain_uuid = dom.uuid()?;
        let records = catalog.list_domain(&domain_uuid)?;
        let chosen = filter_records(&records, records.iter().collect(), flags);
        Ok(chosen
            .into_iter()
            .map(|r| Backup::new(r.uuid, domain_uuid, Some(dom.clone()), catalog.clone()))
            .collect())
    }

    /// `virDomainBackupListChildren`.
    pub fn list_children(&self, flags: u32) -> Result<Vec<Arc<Backup>>> {
        self.managed_only()?;
        let records = self.catalog.list_domain(&self.domain_uuid)?;
        if !records.iter().any(|r| r.uuid == self.uuid) {
            return Err(Error::no_backup(&self.uuid.to_string()));
        }
        let mut found: Vec<&BackupRecord> = Vec::new();
        let mut frontier = vec![self.uuid];
        while let Some(p) = frontier.pop() {
            for r in records.iter().filter(|r| r.parent == Some(p)) {
                found.push(r);
                if flags & VIR_DOMAIN_BACKUP_LIST_DESCENDANTS != 0 {
                    frontier.push(r.uuid);
                }
            }
        }
        found.sort_by_key(|r| r.created_ns);
        let chosen = filter_records(&records, found, flags);
        Ok(chosen
            .into_iter()
            .map(|r| {
                Backup::new(
                    r.uuid,
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
        let catalog = Catalog::open()?;
        let rec = catalog
            .find(&uuid)?
            .ok_or_else(|| Error::no_backup(&uuid.to_string()))?;
        let domain = libvirt::open_domain(&rec.uri, &rec.domain_uuid).ok();
        Ok(Backup::new(uuid, rec.domain_uuid, domain, catalog))
    }

    /// The catalog record, or "no such backup" once it is gone.
    pub fn record(&self) -> Result<BackupRecord> {
        self.catalog
            .reload(&self.domain_uuid, &self.uuid)?
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

    /// `virDomainBackupGetXMLDesc`.
    pub fn xml_desc(&self) -> Result<String> {
        if let Some(e) = &self.export {
            return Ok(e.xml_desc());
        }
        if let Some((job, state)) = self.ended_without_record() {
            return Ok(Element::new("domainbackup")
                .with_child(Element::new("uuid").with_text(self.uuid.to_string()))
                .with_child(Element::new("state").with_text(state.as_str()))
                .with_child(Element::new("domain").with_attr("uuid", job.domain.to_string()))
                .to_xml());
        }
        Ok(self.record()?.public_element().to_xml())
    }

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
    pub fn parameters(&self) -> Result<Vec<(&'static str, ParamValue)>> {
        self.ensure_exists()?;
        let (state, stats, disks, incremental, error) = match (&self.job, &self.export) {
            (_, Some(e)) => (
                e.state(),
                JobStats {
                    elapsed_ms: e.elapsed_ms(),
                    ..JobStats::default()
                },
                e.disk_count(),
                e.has_bitmaps(),
                None,
            ),
            (Some(job), None) => (
                job.state(),
                job.stats(),
                job.disks,
                job.incremental,
                job.error(),
            ),
            (None, None) => {
                let rec = self.record()?;
                let incremental = rec.disks.iter().any(|d| d.mode == BackupMode::Incremental);
                (
                    rec.state,
                    rec.stats,
                    rec.disks.len() as u32,
                    incremental,
                    None,
                )
            }
        };
        let mut out = vec![
            ("state", ParamValue::Int(state as i32)),
            ("incremental", ParamValue::Boolean(incremental)),
            ("bytes.total", ParamValue::ULLong(stats.total)),
            ("bytes.processed", ParamValue::ULLong(stats.processed)),
            ("bytes.written", ParamValue::ULLong(stats.written)),
            ("time.elapsed", ParamValue::ULLong(stats.elapsed_ms)),
            ("disks", ParamValue::UInt(disks)),
        ];
        if state == BackupState::Failed {
            let msg = error
                .map(|e| e.message)
                .unwrap_or_else(|| "backup job failed".into());
            out.push(("error", ParamValue::String(msg)));
        }
        Ok(out)
    }

    /// `virDomainBackupFinishJob`: 0 completed, 1 still running (CHECK).
    pub fn finish_job(&self, flags: u32) -> Result<i32> {
        if flags & VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL != 0 {
            self.abort()?;
            return Ok(0);
        }
        let check = flags & VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK != 0;
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

    /// `virDomainBackupAbortJob` and `FinishJob(CANCEL)`.
    pub fn abort(&self) -> Result<()> {
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
        self.catalog.request_cancel(&rec)?;
        loop {
            match self.catalog.reload(&self.domain_uuid, &self.uuid)? {
                None => return Ok(()),
                Some(r) if r.state == BackupState::Running => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Some(_) => {
                    let _ =
                        fs::remove_file(self.catalog.cancel_path(&self.domain_uuid, &self.uuid));
                    return Err(Error::operation_invalid(
                        "the backup job completed before it could be cancelled",
                    ));
                }
            }
        }
    }

    /// `virDomainBackupDelete`.
    pub fn delete(&self, flags: u32) -> Result<()> {
        self.managed_only()?;
        let _guard = self.catalog.lock()?;
        let rec = self.record()?;
        let all = self.catalog.list_domain(&self.domain_uuid)?;
        let doomed: Vec<&BackupRecord> = if flags & VIR_DOMAIN_BACKUP_DELETE_ALL != 0 {
            all.iter().collect()
        } else {
            let mut set = vec![&rec];
            let mut i = 0;
            while i < set.len() {
                let p = set[i].uuid;
                set.extend(all.iter().filter(|r| r.parent == Some(p)));
                i += 1;
            }
            if flags & VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN == 0 {
                // Only this backup goes; its children keep their data.
                set.truncate(1);
            }
            set
        };
        let metadata_only = flags & VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY != 0;
        if let Some(r) = doomed.iter().find(|r| r.state == BackupState::Running) {
            return Err(Error::operation_invalid(format!(
                "backup '{}' has a job running; abort it first",
                r.uuid
            )));
        }
        if doomed.len() == 1 && flags & VIR_DOMAIN_BACKUP_DELETE_ALL == 0 {
            if let Some(r) = all
                .iter()
                .find(|r| r.parent == Some(rec.uuid) && r.state == BackupState::Running)
            {
                return Err(Error::operation_invalid(format!(
                    "child backup '{}' has a job running; abort it first",
                    r.uuid
                )));
            }
            crate::ops::merge::merge_into_children(&self.catalog, &rec, &all, metadata_only)?;
        }
        // Children first, so a crash midway never leaves a child without its parent.
        for r in doomed.iter().rev() {
            // A checkpoint nobody will use again only slows the guest's writes.
            if let (Some(cp), Some(dom)) = (&r.checkpoint, &self.domain) {
                live::remove_checkpoint(dom, cp)?;
            }
            if metadata_only {
                self.catalog.remove_record(r)?;
            } else {
                remove_backup(
                    &self.catalog,
                    r,
                    volume_connection(r, self.domain.as_ref()).as_ref(),
                )?;
            }
        }
        Ok(())
    }

    /// `virDomainBackupRestore`.
    pub fn restore(xml: &str, flags: u32) -> Result<()> {
        crate::ops::restore::restore(xml, flags)
    }

    /// `virDomainBackupRestoreUnmanaged`.
    pub fn restore_unmanaged(dom: &DomainRef, xml: &str, flags: u32) -> Result<()> {
        crate::ops::restore::restore_unmanaged(dom, xml, flags)
    }
}

/// Check that `parent` can be the parent of a new backup of `domain`.
fn check_parent(catalog: &Catalog, domain: &Uuid, parent: &Uuid) -> Result<BackupRecord> {
    let rec = catalog
        .find(parent)?
        .ok_or_else(|| Error::no_backup(&parent.to_string()))?;
    if rec.domain_uuid != *domain {
        return Err(Error::operation_invalid(format!(
            "parent backup '{parent}' belongs to another domain ({})",
            rec.domain_name
        )));
    }
    if rec.state != BackupState::Completed {
        return Err(Error::operation_invalid(format!(
            "parent backup '{parent}' is not completed"
        )));
    }
    Ok(rec)
}

/// The default target in force for a new backup: the LIVE one while the
/// domain runs, else the persistent one.
fn effective_default_target(
    catalog: &Catalog,
    domain: &Uuid,
    active: bool,
) -> Result<Option<DefaultTarget>> {
    if let Some(t) = LIVE_TARGETS.lock().unwrap().get(domain).filter(|_| active) {
        return Ok(Some(t.clone()));
    }
    catalog.default_target(domain)
}

/// Plan one domain disk: `None` if it is not part of the backup. Disks the
/// request does not list are included, as libvirt does for checkpoints;
/// `backup='no'` leaves a disk out.
fn planned_disk(
    catalog: &Catalog,
    dom: &DomainRef,
    domain: &Uuid,
    backup: &Uuid,
    d: &DomainDisk,
    asked: Option<&crate::xml::backup::DiskRequest>,
    default_target: Option<&DefaultTarget>,
) -> Result<Option<PlannedDisk>> {
    match asked {
        Some(r) if !r.backup => return Ok(None),
        None if d.device != "disk" => return Ok(None),
        Some(_) if d.device != "disk" => {
            return Err(Error::invalid_arg(format!(
                "disk '{}' is a {}; only device='disk' can be backed up",
                d.name, d.device
            )));
        }
        _ => {}
    }
    if d.kind != "file" && d.kind != "block" {
        return Err(Error::no_support(format!(
            "disk '{}' of type '{}' cannot be backed up (file and block disks can)",
            d.name, d.kind
        )));
    }
    let source = d
        .source
        .clone()
        .ok_or_else(|| Error::invalid_arg(format!("disk '{}' has no source to back up", d.name)))?;
    let source_format = d.image_format()?;
    let format = asked.and_then(|r| r.format).unwrap_or(DiskFormat::Qcow2);
    let file_name = format!("{}.{}", d.name, format.as_str());
    let volume = |pool: &str, volume: &str| -> Result<(PathBuf, Option<(String, String)>)> {
        let path = storage_pool::check_new_volume(&dom.connect()?, pool, volume)?;
        secure::refuse_inside(catalog.root(), &path, "target volume")?;
        Ok((path, Some((pool.to_string(), volume.to_string()))))
    };
    let (target, volume) = match asked.and_then(|r| r.target.clone()) {
        // Only the library's own default place lies inside the catalog.
        Some(Target::File(p)) => {
            let dir = p.parent().unwrap_or(Path::new("/"));
            if !dir.is_dir() {
                return Err(Error::invalid_arg(format!(
                    "folder of target '{}' does not exist",
                    p.display()
                )));
            }
            secure::refuse_inside(catalog.root(), &p, "backup target")?;
            (p, None)
        }
        Some(Target::Volume { pool, volume: v }) => volume(&pool, &v)?,
        None => match default_target {
            Some(DefaultTarget::Dir(dir)) => {
                secure::refuse_inside(catalog.root(), dir, "default target folder")?;
                (dir.join(backup.to_string()).join(file_name), None)
            }
            Some(DefaultTarget::Pool(pool)) => volume(
                pool,
                &storage_pool::default_volume_name(&dom.name()?, backup, &d.name, format),
            )?,
            None => (catalog.data_dir(domain, backup).join(file_name), None),
        },
    };
    // The format libvirt's definition states (raw when it states none).
    let src = Source::open(&source, source_format, Chain::Header)?;
    Ok(Some(PlannedDisk {
        record: DiskRecord {
            name: d.name.clone(),
            source,
            source_format,
            target,
            format,
            mode: BackupMode::Full,
            virtual_size: src.size(),
            volume,
            backing: Vec::new(),
        },
        source: src,
        baseline: None,
    }))
}

/// Decide whether a disk of an incremental backup can be stored as a delta
/// against `parent`'s copy, and if so set it up. A disk falls back to a full
/// copy (`backupmode='full'`) when the parent has no copy of it, its disk
/// shrank or changed format since, or the parent's target or digest index
/// is gone or unreadable; `CREATE_NO_FALLBACK` makes each of these an error.
fn choose_mode(
    catalog: &Catalog,
    parent: &BackupRecord,
    p: &mut PlannedDisk,
    flags: u32,
) -> Result<()> {
    let name = &p.record.name;
    let base = parent.disks.iter().find(|d| &d.name == name);
    let why_not = match base {
        None => Some("the parent backup has no copy of it".to_string()),
        Some(b) if p.record.virtual_size < b.virtual_size => Some(format!(
            "it shrank since the parent backup ({} -> {} bytes)",
            b.virtual_size, p.record.virtual_size
        )),
        Some(b) if p.record.source_format != b.source_format => Some(format!(
            "its format changed since the parent backup ({} -> {})",
            b.source_format.as_str(),
            p.record.source_format.as_str()
        )),
        Some(b) if fs::metadata(&b.target).is_err() => Some(format!(
            "the parent's copy '{}' is missing",
            b.target.display()
        )),
        Some(_) => None,
    };
    let index = match (why_not, base) {
        (None, Some(b)) => crate::engine::copy::ensure_index(catalog, parent, &b.name)
            .and_then(|p| IndexReader::open(&p))
            .map_err(|e| e.message),
        (why, _) => Err(why.unwrap_or_default()),
    };
    match index {
        Ok(index) if index.size() == base.unwrap().virtual_size => {
            if p.record.format == DiskFormat::Raw {
                return Err(raw_incremental(name));
            }
            let b = base.unwrap();
            p.record.mode = BackupMode::Incremental;
            p.baseline = Some(Baseline {
                target: b.target.clone(),
                format: b.format,
                index: Some(index),
                checkpoint: None,
            });
            Ok(())
        }
        other => {
            let why = match other {
                Ok(_) => "the parent's digest index does not match its disk size".to_string(),
                Err(w) => w,
            };
            refuse_fallback(name, &why, flags)
        }
    }
}

/// The live engine's choice for one disk of an incremental backup (see
/// `live::usable_checkpoint` for what is checked).
fn choose_live_mode(
    dom: &DomainRef,
    parent: &BackupRecord,
    p: &mut PlannedDisk,
    dom_disks: &[DomainDisk],
    flags: u32,
) -> Result<()> {
    let name = p.record.name.clone();
    let base = parent.disks.iter().find(|d| d.name == name);
    let disk = dom_disks.iter().find(|d| d.name == name).unwrap();
    match live::usable_checkpoint(dom, parent, base, disk, p.record.virtual_size) {
        Ok(cp) => {
            if p.record.format == DiskFormat::Raw {
                return Err(raw_incremental(&name));
            }
            let b = base.unwrap();
            p.record.mode = BackupMode::Incremental;
            p.baseline = Some(Baseline {
                target: b.target.clone(),
                format: b.format,
                index: None,
                checkpoint: Some(cp),
            });
            Ok(())
        }
        Err(why) => refuse_fallback(&name, &why, flags),
    }
}

/// A raw target asked for a disk that would be copied incrementally.
fn raw_incremental(name: &str) -> Error {
    Error::invalid_arg(format!(
        "disk '{name}': a raw target holds only full copies; an incremental copy needs qcow2"
    ))
}

/// A disk falls back to a full copy, unless `CREATE_NO_FALLBACK` forbids it.
fn refuse_fallback(name: &str, why: &str, flags: u32) -> Result<()> {
    if flags & VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK != 0 {
        return Err(Error::operation_invalid(format!(
            "disk '{name}' cannot be backed up incrementally ({why}) and VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK forbids a full copy"
        )));
    }
    Ok(())
}

/// Remove a backup's data and record; its pool volumes are deleted through
/// libvirt when `conn` is given (else only their files go).
fn remove_backup(catalog: &Catalog, rec: &BackupRecord, conn: Option<&Connect>) -> Result<()> {
    for d in &rec.disks {
        if let Some((pool, volume)) = &d.volume {
            storage_pool::delete_volume(
                conn,
                &storage_pool::PoolVolume {
                    pool: pool.clone(),
                    volume: volume.clone(),
                    path: d.target.clone(),
                },
            )?;
        }
    }
    catalog.remove_with_data(rec)
}

/// A connection for volume work on a backup's pools, if it has any.
fn volume_connection(rec: &BackupRecord, dom: Option<&DomainRef>) -> Option<Connect> {
    if rec.disks.iter().all(|d| d.volume.is_none()) {
        return None;
    }
    dom.and_then(|d| d.connect().ok())
        .or_else(|| libvirt::open_connection(&rec.uri).ok())
}

/// Create `dir` and its missing ancestors; returns the folders created, outermost first.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    for d in &missing {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(|e| Error::io("cannot create folder", d, e))?;
    }
    Ok(missing)
}

/// The body of a backup job on the library's own disk engine.
fn run_copy(
    job: &Job,
    catalog: &Catalog,
    mut record: BackupRecord,
    sources: Vec<(Source, Option<IndexReader>)>,
    targets: Vec<ImageTarget>,
    lock: JobLock,
    conn: Option<Connect>,
) -> Result<()> {
    let copy = || -> Result<()> {
        for (((src, parent), dst), d) in sources.into_iter().zip(targets).zip(&record.disks) {
            let index_path = catalog.index_path(&record.domain_uuid, &record.uuid, &d.name);
            let mut parent = parent;
            let baseline = copy::Baseline::of(parent.as_mut());
            IndexWriter::create(&index_path, d.virtual_size)
                .and_then(|mut index| {
                    copy::copy_image(&src, &dst, &job.progress, baseline, &mut index)?;
                    index.finish()
                })
                .and_then(|()| dst.finish(&d.target))
                .map_err(|mut e| {
                    e.message = format!("disk '{}': {}", d.name, e.message);
                    e
                })?;
        }
        Ok(())
    };
    let copied = copy();
    let (result, _guard) = job.settle(catalog, &mut record, copied, lock);
    if result.is_err() {
        let _ = remove_backup(catalog, &record, conn.as_ref());
    } else if let Some(conn) = &conn {
        // Let libvirt see the volumes' real size and allocation.
        for (pool, _) in record.disks.iter().filter_map(|d| d.volume.as_ref()) {
            storage_pool::refresh(conn, pool);
        }
    }
    result
}

/// Keep only the records `flags` asks for (FULL/INCREMENTAL, LEAVES, LATEST).
fn filter_records<'a>(
    all: &[BackupRecord],
    candidates: Vec<&'a BackupRecord>,
    flags: u32,
) -> Vec<&'a BackupRecord> {
    let mut out: Vec<&BackupRecord> = candidates
        .into_iter()
        .filter(|r| flags & VIR_DOMAIN_BACKUP_LIST_FULL == 0 || r.parent.is_none())
        .filter(|r| flags & VIR_DOMAIN_BACKUP_LIST_INCREMENTAL == 0 || r.parent.is_some())
        .filter(|r| {
            flags & VIR_DOMAIN_BACKUP_LIST_LEAVES == 0
                || !all.iter().any(|c| c.parent == Some(r.uuid))
        })
        .collect();
    if flags & VIR_DOMAIN_BACKUP_LIST_LATEST != 0 {
        out.sort_by_key(|r| r.created_ns);
        out = out.pop().into_iter().collect();
    }
    out
}

/// `virDomainSetDefaultTarget`.
pub fn set_default_target(dom: &DomainRef, xml: &str, flags: u32) -> Result<()> {
    let target = DefaultTarget::parse(xml)?;
    match &target {
        DefaultTarget::Pool(p) => storage_pool::check_pool(&dom.connect()?, p)?,
        DefaultTarget::Dir(p) if !p.is_dir() => {
            return Err(Error::invalid_arg(format!(
                "default target folder '{}' does not exist",
                p.display()
            )));
        }
        DefaultTarget::Dir(p) => {
            secure::refuse_inside(Catalog::open()?.root(), p, "default target folder")?
        }
    }
    let uuid = dom.uuid()?;
    let active = dom.is_active()?;
    let (mut live, mut config) = (
        flags & VIR_DOMAIN_AFFECT_LIVE != 0,
        flags & VIR_DOMAIN_AFFECT_CONFIG != 0,
    );
    if !live && !config {
        // VIR_DOMAIN_AFFECT_CURRENT: the live state of a running domain, else its config.
        (live, config) = (active, !active);
    }
    if live && !active {
        return Err(Error::operation_invalid("domain is not running"));
    }
    if config {
        Catalog::open()?.set_default_target(&uuid, &target)?;
    }
    if live {
        LIVE_TARGETS.lock().unwrap().insert(uuid, target);
    }
    Ok(())
}

/// `virDomainBackupUndefineFlags`.
pub fn undefine(dom: &DomainRef, flags: u32) -> Result<()> {
    let catalog = Catalog::open()?;
    let uuid = dom.uuid()?;
    let _guard = catalog.lock()?;
    let records = catalog.list_domain(&uuid)?;
    if flags & VIR_DOMAIN_UNDEFINE_BACKUP == 0 && !records.is_empty() {
        return Err(Error::operation_invalid(format!(
            "cannot undefine domain with {} managed backups",
            records.len()
        )));
    }
    if job::running_for_domain(&uuid).is_some()
        || records.iter().any(|r| r.state == BackupState::Running)
    {
        return Err(Error::operation_invalid(
            "cannot undefine a domain while a backup job runs",
        ));
    }
    let mut flags = flags & !VIR_DOMAIN_UNDEFINE_BACKUP;
    if records.iter().any(|r| r.checkpoint.is_some()) {
        // The checkpoints of our backups go with the backups' metadata.
        flags |= virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
    }
    dom.undefine(flags)?;
    catalog.forget_domain(&uuid)?;
    LIVE_TARGETS.lock().unwrap().remove(&uuid);
    Ok(())
}
