//! `virDomainBackupCreateXML`: parse the request, plan the disks
//! (`ops::plan`, pure), check the plan against the world (sources, targets,
//! the parent for an incremental), register the backup in the catalog with
//! its target files, start libvirt's pull-mode job for a running domain,
//! then run the job (its body is `create_job`).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::claim::DomainClaim;
use super::create_job::{CopyRun, CopySource, LiveRun, ReadFrom, run_copy};
use super::create_targets::{self, Baseline, PlannedDisk, create_targets, note_dirs};
use super::files::{discard_failed, volume_connection};
use super::options::CreateOptions;
use super::plan::{self, DiskPlan, DomainFacts, TargetPlan};
use super::recovery;
use crate::engine::live;
use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::storage_pool;
use crate::image::disk::{Chain, Source, Target as ImageTarget};
use crate::job::{Job, JobPlan};
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::index::IndexReader;
use crate::store::locks::JobLock;
use crate::store::secure;
use crate::xml::backup::{
    BackupMode, BackupRecord, BackupState, CreateRequest, DefaultTarget, DiskFormat, DiskRecord,
    JobStats,
};
use crate::xml::domain::{self, DomainDisk};

/// Default targets set with `VIR_DOMAIN_AFFECT_LIVE`: they last for this process.
pub(super) static LIVE_TARGETS: LazyLock<Mutex<HashMap<Uuid, DefaultTarget>>> =
    LazyLock::new(Default::default);

fn now() -> (i64, u64) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.as_nanos() as u64)
}

/// A backup whose job has started.
pub(crate) struct Created {
    pub uuid: Uuid,
    pub domain_uuid: Uuid,
    pub catalog: Catalog,
    pub job: Arc<Job>,
}

/// What a new backup is made of once planned and checked.
struct Prepared {
    record: BackupRecord,
    disks: Vec<PlannedDisk>,
    dom_disks: Vec<DomainDisk>,
    is_live: bool,
    quiesce: bool,
    /// The job's rate limit (`<bandwidth>`), bytes per second.
    bandwidth: Option<u64>,
}

/// `virDomainBackupCreateXML`: parse → plan → register → run.
pub(crate) fn create(dom: &DomainRef, xml: &str, opts: CreateOptions) -> Result<Created> {
    let req = CreateRequest::parse(xml)?;
    if req.encrypted() && req.compressed() {
        return Err(Error::config_unsupported(
            "<compression> and <encryption> together: QEMU never encrypts a \
             compressed cluster, so compressed clusters would be stored in clear; \
             choose one",
        ));
    }
    let catalog = recovery::open_catalog()?;
    let mut prepared = prepare(&catalog, dom, &req, opts)?;
    // One job per domain: the domain's job lock is taken, the check is made
    // again under it, and the job holds it until it ends, so a check and
    // the job it admits are one step for every thread and process (the
    // check in `prepare` only spares the planning; see `claim`).
    let domain_uuid = prepared.record.domain_uuid;
    let claim = DomainClaim::take(&catalog, dom, &domain_uuid, prepared.is_live)?;
    let (targets, lock) = register(&catalog, dom, &mut prepared.record, &prepared.disks, claim)?;
    let job = run(&catalog, dom, prepared, targets, lock)?;
    Ok(Created {
        uuid: job.uuid,
        domain_uuid: job.domain,
        catalog,
        job,
    })
}

/// What the planner needs of the domain (its disks are read once it is
/// known to be free).
fn domain_facts(dom: &DomainRef) -> Result<DomainFacts> {
    let active = dom.is_active()?;
    let is_live = live::is_live(dom, active)?;
    let images_quiet = is_live || dom.images_are_quiet(active)?;
    let facts = DomainFacts {
        name: dom.name()?,
        driver: dom.driver()?,
        active,
        is_live,
        images_quiet,
        disks: Vec::new(),
    };
    ::log::info!(
        "domain '{}' ({} driver, {}): {}",
        facts.name,
        facts.driver,
        if active { "running" } else { "shut off" },
        if is_live {
            "libvirt's pull-mode backup job serves its disks, the library copies them"
        } else if images_quiet {
            "the library copies its disks' images, locked against writers"
        } else {
            "the library copies its disks itself; the driver gives no backup job"
        }
    );
    Ok(facts)
}

/// Check the domain and the parent, plan the disks, and check the plan
/// against the sources and targets it names.
fn prepare(
    catalog: &Catalog,
    dom: &DomainRef,
    req: &CreateRequest,
    opts: CreateOptions,
) -> Result<Prepared> {
    let domain_uuid = dom.uuid()?;
    let parent = match req.parent {
        Some(p) => Some(check_parent(catalog, &domain_uuid, &p)?),
        None => None,
    };
    let mut facts = domain_facts(dom)?;
    let quiesce = opts.quiesce;
    plan::check_domain(&facts, quiesce)?;
    DomainClaim::check(dom, &domain_uuid, facts.is_live)?;
    let domain_xml = dom.xml()?;
    facts.disks = domain::parse_disks(&domain_xml)?;
    let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
    let default_target = effective_default_target(catalog, &domain_uuid, facts.active)?;
    let data_dir = catalog.backup(&domain_uuid, &uuid).data_dir();
    let plans = plan::plan_disks(
        &facts,
        (req.disks.as_deref().unwrap_or(&[]), req.compression),
        default_target.as_ref(),
        &data_dir,
        &uuid,
    )?;
    let mut disks = plans
        .into_iter()
        .map(|p| resolve_disk(dom, p, !facts.is_live))
        .collect::<Result<Vec<_>>>()?;
    if let Some(parent) = &parent {
        for p in &mut disks {
            if facts.is_live {
                choose_live_mode(catalog, dom, parent, p, &facts.disks, opts)?;
            } else {
                choose_mode(catalog, parent, p, opts)?;
                use_offline_bitmap(dom, parent, p, &facts.disks);
            }
            record_chain(catalog, parent, p)?;
        }
    }
    create_targets::choose_encryption(dom, req, parent.as_ref(), &mut disks)?;
    check_targets(catalog, &data_dir, &disks)?;
    let record = new_record(
        dom,
        req,
        uuid,
        parent.as_ref(),
        &disks,
        domain_xml,
        facts.is_live,
    )?;
    Ok(Prepared {
        record,
        disks,
        dom_disks: facts.disks,
        is_live: facts.is_live,
        quiesce,
        bandwidth: req.bandwidth,
    })
}

/// A planned disk checked against the world: the folder of a file target
/// exists, a volume can be made, the source opens (which gives its size);
/// one the library copies (`copied`) is locked as QEMU locks it.
fn resolve_disk(dom: &DomainRef, p: DiskPlan, copied: bool) -> Result<PlannedDisk> {
    let (target, volume) = match p.target {
        TargetPlan::File { path, checked } => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            if !checked && !dir.is_dir() {
                return Err(Error::invalid_arg(format!(
                    "folder of target '{}' does not exist",
                    path.display()
                )));
            }
            // Refused here, before the record is written, rather than
            // when the target is made (`create_targets`).
            Folder::check_outside(dir, "backup target")?;
            (path, None)
        }
        TargetPlan::Volume { pool, volume } => {
            let path = storage_pool::check_new_volume(&dom.connect()?, &pool, &volume)?;
            (path, Some((pool, volume)))
        }
    };
    // The format libvirt's definition states (raw when it states none).
    // A disk the library copies is locked from here to the end of its job
    // (see `image::qemu_lock`): the domain cannot start meanwhile.
    let src = match copied {
        true => Source::open_locked(&p.source, p.source_format, &p.name)?,
        false => Source::open(&p.source, p.source_format, Chain::Header)?,
    };
    Ok(PlannedDisk {
        record: DiskRecord {
            name: p.name,
            source: p.source,
            source_format: p.source_format,
            target,
            format: p.format,
            mode: BackupMode::Full,
            virtual_size: src.size(),
            volume,
            backing: Vec::new(),
            compression: p.compression,
            encryption: None,
        },
        source: src,
        baseline: None,
        since: None,
        passphrase: None,
    })
}

/// Refuse a target given to two disks, or one that exists already.
/// Only the library's own default place, `own`, lies inside the catalog.
fn check_targets(catalog: &Catalog, own: &Path, disks: &[PlannedDisk]) -> Result<()> {
    for (i, p) in disks.iter().enumerate() {
        plan::check_distinct(disks[..=i].iter().map(|o| o.record.target.as_path()))?;
        if p.record.target.parent() != Some(own) {
            let what = match p.record.volume {
                Some(_) => "target volume",
                None => "backup target",
            };
            secure::refuse_inside(catalog.root(), &p.record.target, what)?;
        }
        // symlink_metadata: a dangling link is an existing target too.
        if fs::symlink_metadata(&p.record.target).is_ok() {
            return Err(Error::invalid_arg(format!(
                "target file '{}' already exists",
                p.record.target.display()
            )));
        }
    }
    Ok(())
}

/// The record of the new backup, in state running.
fn new_record(
    dom: &DomainRef,
    req: &CreateRequest,
    uuid: Uuid,
    parent: Option<&BackupRecord>,
    disks: &[PlannedDisk],
    domain_xml: String,
    is_live: bool,
) -> Result<BackupRecord> {
    let (creation_time, created_ns) = now();
    Ok(BackupRecord {
        uuid,
        creation_time,
        created_ns,
        description: req.description.clone(),
        state: BackupState::Running,
        parent: parent.map(|p| p.uuid),
        domain_uuid: dom.uuid()?,
        domain_name: dom.name()?,
        disks: disks.iter().map(|p| p.record.clone()).collect(),
        uri: dom.uri()?,
        domain_xml,
        stats: JobStats::default(),
        created_dirs: Vec::new(),
        checkpoint: is_live.then(|| live::checkpoint_name(&uuid)),
    })
}

/// Register the backup under the domain's lock, creating its files, so that
/// a failure here leaves nothing behind. Returns the open targets and the
/// job lock. The job lock file and the record (state running, naming every
/// target and every folder to create) are written before any of them is
/// created: a process killed meanwhile leaves a dead job whose record
/// names all it made, which the next process removes.
fn register(
    catalog: &Catalog,
    dom: &DomainRef,
    record: &mut BackupRecord,
    disks: &[PlannedDisk],
    claim: DomainClaim,
) -> Result<(Vec<ImageTarget>, JobLock)> {
    // The domain's lock, then (only to make the UUID unique among all
    // domains) the catalog-wide one, which no data work ever holds.
    let backup = catalog.backup_of(record);
    let _guard = backup.domain().lock()?;
    let _names = catalog.lock()?;
    let uuid = record.uuid;
    if catalog.domain_of(&uuid)?.is_some() || crate::job::running(&uuid).is_some() {
        return Err(Error::invalid_arg(format!(
            "a backup with uuid '{uuid}' already exists"
        )));
    }
    let mut targets = Vec::new();
    note_dirs(record, disks);
    let lock = backup.lock_job(claim)?;
    crate::test_stop!("create-job-locked");
    let prepared = (|| {
        backup.write_record(record)?;
        create_targets(catalog, dom, disks, &mut targets)?;
        backup.create_index_dir()
    })();
    match prepared {
        Ok(()) => Ok((targets, lock)),
        Err(e) => {
            drop(targets);
            let conn = volume_connection(record, Some(dom));
            discard_failed(catalog, record, conn.as_ref(), Some(lock));
            Err(e)
        }
    }
}

/// Start the job: for a live domain libvirt's pull-mode job first (its
/// failure is CreateXML's), then the library's copy of every disk, from
/// the job's NBD exports or from the image files. A failure to start
/// discards the backup.
fn run(
    catalog: &Catalog,
    dom: &DomainRef,
    prepared: Prepared,
    targets: Vec<ImageTarget>,
    lock: JobLock,
) -> Result<Arc<Job>> {
    let Prepared {
        record,
        disks,
        dom_disks,
        is_live,
        quiesce,
        bandwidth,
    } = prepared;
    let discard = |rec: &BackupRecord, lock: Option<JobLock>| {
        discard_failed(
            catalog,
            rec,
            volume_connection(rec, Some(dom)).as_ref(),
            lock,
        );
    };
    let live = if is_live {
        match LiveRun::begin(catalog, dom, &record, &disks, &dom_disks, quiesce) {
            Ok(l) => Some(l),
            Err(e) => {
                // The record goes while the job lock is held: a running
                // record without its lock file reads as damaged.
                discard(&record, Some(lock));
                return Err(e);
            }
        }
    } else {
        None
    };
    let job = new_job(catalog, &record, bandwidth);
    let sources: Vec<CopySource> = disks
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let (parent, bitmap) = p.baseline.map_or((None, None), |b| (b.index, b.bitmap));
            let from = match is_live {
                // The image was opened only to size it: the export is read.
                true => ReadFrom::Export(i),
                false => ReadFrom::Image(p.source, bitmap),
            };
            CopySource { from, parent }
        })
        .collect();
    let (work_catalog, work_record, work_dom) = (catalog.clone(), record.clone(), dom.clone());
    let conn = volume_connection(&record, Some(dom));
    // The thread takes the job lock and the live run from here; if it
    // cannot start, they are still here for the discard.
    let slot = Arc::new(Mutex::new(Some((lock, live))));
    let work_slot = Arc::clone(&slot);
    let take = move || work_slot.lock().unwrap().take().expect("the job lock");
    let spawned = job.spawn(move |job| {
        let (lock, live) = take();
        let run = CopyRun {
            catalog: &work_catalog,
            dom: &work_dom,
            lock,
            conn,
            live,
        };
        run_copy(job, run, work_record, sources, targets)
    });
    if let Err(e) = spawned {
        if let Some((lock, live)) = slot.lock().unwrap().take() {
            if let Some(live) = live {
                live.fail(catalog, &record);
            }
            discard(&record, Some(lock));
        }
        return Err(e);
    }
    Ok(job)
}

/// The job of a new backup, its disks and totals taken from the record.
fn new_job(catalog: &Catalog, record: &BackupRecord, bandwidth: Option<u64>) -> Arc<Job> {
    let (uuid, domain) = (record.uuid, record.domain_uuid);
    let plan = JobPlan {
        uuid,
        domain,
        disks: (record.disks.iter())
            .map(|d| (d.name.clone(), d.virtual_size))
            .collect(),
        incremental: (record.disks.iter()).any(|d| d.mode == BackupMode::Incremental),
        bandwidth,
        publish: Some(catalog.backup(&domain, &uuid).progress_file()),
    };
    Job::new(plan, catalog.backup(&domain, &uuid).cancel_marker())
}

/// Check that `parent` can be the parent of a new backup of `domain`.
pub(super) fn check_parent(
    catalog: &Catalog,
    domain: &Uuid,
    parent: &Uuid,
) -> Result<BackupRecord> {
    let rec =
        recovery::find(catalog, parent)?.ok_or_else(|| Error::no_backup(&parent.to_string()))?;
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
    catalog.domain(domain).default_target()
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
    opts: CreateOptions,
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
    // A parent whose index is missing gets one rebuilt from its image. For
    // a backup that is only a baseline: a chunk that differs from a
    // damaged parent is copied again, so a wrong index costs size, not
    // data (a restore, which must verify, refuses a missing index).
    let index = match (why_not, base) {
        (None, Some(b)) => super::ensure_index(catalog, parent, &b.name)
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
                bitmap: None,
            });
            Ok(())
        }
        other => {
            let why = match other {
                Ok(_) => "the parent's digest index does not match its disk size".to_string(),
                Err(w) => w,
            };
            refuse_fallback(name, &why, opts)
        }
    }
}

/// What an incremental copy reads through: the parent's copy and its chain,
/// kept in the record (images are opened with it, never with the chain
/// their headers name).
fn record_chain(catalog: &Catalog, parent: &BackupRecord, p: &mut PlannedDisk) -> Result<()> {
    if p.record.mode == BackupMode::Incremental {
        p.record.backing = catalog.chain_from(parent, &p.record.name)?;
    }
    Ok(())
}

/// An incremental disk of a shut-off domain whose parent was taken live:
/// when the parent's checkpoint's bitmap in the image can be trusted (see
/// `live::usable_offline_bitmap`), the copy reads only what it marks;
/// otherwise it compares every chunk against the parent's index.
fn use_offline_bitmap(
    dom: &DomainRef,
    parent: &BackupRecord,
    p: &mut PlannedDisk,
    dom_disks: &[DomainDisk],
) {
    let Some(b) = p.baseline.as_mut() else { return };
    if parent.checkpoint.is_none() || p.record.source_format != DiskFormat::Qcow2 {
        return;
    }
    let base = parent.disks.iter().find(|d| d.name == p.record.name);
    let Some(disk) = dom_disks.iter().find(|d| d.name == p.record.name) else {
        return;
    };
    if let Ok(name) = live::usable_offline_bitmap(dom, parent, base, disk, p.record.virtual_size) {
        b.bitmap = Some((p.record.source.clone(), name));
    }
}

/// The live engine's choice for one disk of an incremental backup (see
/// `live::usable_checkpoint` for what is checked).
fn choose_live_mode(
    catalog: &Catalog,
    dom: &DomainRef,
    parent: &BackupRecord,
    p: &mut PlannedDisk,
    dom_disks: &[DomainDisk],
    opts: CreateOptions,
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
            // The parent's index: chunks the bitmap marks but that did
            // not change are not stored again, and the new index is a
            // delta against it. A parent from an older version whose
            // index was never written gets one built from its image.
            let index = match super::ensure_index(catalog, parent, &b.name)
                .and_then(|p| IndexReader::open(&p))
            {
                Ok(index) if index.size() == b.virtual_size => index,
                Ok(_) => {
                    let why = "the parent's digest index does not match its disk size";
                    return refuse_fallback(&name, why, opts);
                }
                Err(e) => return refuse_fallback(&name, &e.message, opts),
            };
            p.record.mode = BackupMode::Incremental;
            p.baseline = Some(Baseline {
                target: b.target.clone(),
                format: b.format,
                index: Some(index),
                bitmap: None,
            });
            p.since = Some(cp);
            Ok(())
        }
        Err(why) => refuse_fallback(&name, &why, opts),
    }
}

/// A raw target asked for a disk that would be copied incrementally.
fn raw_incremental(name: &str) -> Error {
    Error::invalid_arg(format!(
        "disk '{name}': a raw target holds only full copies; an incremental copy needs qcow2"
    ))
}

/// A disk falls back to a full copy, unless `CREATE_NO_FALLBACK` forbids it.
fn refuse_fallback(name: &str, why: &str, opts: CreateOptions) -> Result<()> {
    if opts.no_fallback {
        return Err(Error::operation_invalid(format!(
            "disk '{name}' cannot be backed up incrementally ({why}) and VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK forbids a full copy"
        )));
    }
    ::log::info!("disk '{name}': a full copy instead of an incremental: {why}");
    Ok(())
}
