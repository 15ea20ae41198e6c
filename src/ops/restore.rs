//! Restore: write a backup's disks back, into its own (shut off) domain, to
//! new files, or as a new domain.
//!
//! What a failure leaves behind:
//! - nothing is written until every target has been validated;
//! - new files (new targets, and the temporary files that replace an
//!   existing disk of another format or size) are written and synced first;
//!   if any of them fails, all of them are removed and no existing disk has
//!   been touched;
//! - an existing disk of the same format and size is rewritten in place,
//!   writing only the chunks that differ, and only after every one of those
//!   chunks has been read from the backup and matched its recorded digest.
//!   An I/O error on the disk itself (or a killed process) during that last
//!   pass can leave it partly restored: running the restore again finishes
//!   it, writing only what still differs.

use std::path::{Path, PathBuf};

use uuid::Uuid;
use virt::connect::Connect;

use crate::error::{Error, Result};
use crate::hv::libvirt::{self, DomainRef};
use crate::ops::options::{RestoreMode, RestoreOptions};
use crate::ops::recovery;
use crate::ops::restore_plan::{
    DiskPlan, How, Origin, OriginImage, Untouchable, check_distinct, execute, restored,
};
use crate::ops::restore_steps::{select, start_if_asked};
use crate::ops::restore_target::check_disk_file_name;
use crate::store::catalog::Catalog;
use crate::store::notes::StagedFiles;
use crate::xml::backup::{
    BackupState, DiskFormat, RestoreDisk, RestoreRequest, UnmanagedRestoreDisk,
    UnmanagedRestoreRequest, UnmanagedSource,
};
use crate::xml::domain::{self, DomainDisk};

/// The shut-off domain a restore writes into.
fn shut_off(dom: &DomainRef) -> Result<()> {
    refuse_running(dom)?;
    // An export of the domain must keep serving its images unchanged.
    super::claim::DomainClaim::check(dom, &dom.uuid()?, false)
}

fn refuse_running(dom: &DomainRef) -> Result<()> {
    if dom.is_active()? {
        return Err(Error::operation_invalid(
            "the domain is running; shut it off before restoring its disks",
        ));
    }
    Ok(())
}

/// The domain's claim for a restore about to write, with the checks of
/// `shut_off` made again under it: held until the restore ends, it keeps
/// any backup, export or other restore out. Taken once the request is
/// checked, so that a refused request leaves no lock file behind.
fn lock_for_restore(catalog: &Catalog, dom: &DomainRef) -> Result<super::claim::DomainClaim> {
    let claim = super::claim::DomainClaim::take(catalog, dom, &dom.uuid()?, false)?;
    refuse_running(dom)?;
    Ok(claim)
}

fn current_disk<'a>(disks: &'a [DomainDisk], name: &str) -> Result<&'a DomainDisk> {
    disks.iter().find(|d| d.name == name).ok_or_else(|| {
        Error::invalid_arg(format!(
            "the domain has no disk '{name}' any more; give a <target> or restore as a new domain"
        ))
    })
}

/// One disk to restore, whatever it comes from.
struct Item<'a> {
    name: &'a str,
    origin: Origin,
    asked: Option<&'a RestoreDisk>,
    /// The disk's file when its data was saved: a new domain's default
    /// files go next to it.
    original: Option<PathBuf>,
}

/// Restore into `dom` itself (shut off): each disk's current file by
/// default, repointing the definition at any other file or format.
fn into_own_domain(dom: &DomainRef, items: Vec<Item>, opts: RestoreOptions) -> Result<()> {
    shut_off(dom)?;
    let now_xml = dom.xml()?;
    let now = domain::parse_disks(&now_xml)?;
    let mut plans = Vec::new();
    let mut guard = Untouchable::new(opts, &[]);
    for it in items {
        let d = current_disk(&now, it.name)?;
        let given = it.asked.and_then(|a| a.target.clone());
        let current = match &given {
            Some(t) if Some(t) != d.source.as_ref() => None,
            _ => Some(d.image_format()?),
        };
        let target = given.or_else(|| d.source.clone()).ok_or_else(|| {
            Error::invalid_arg(format!("disk '{}' has no source to restore into", it.name))
        })?;
        let format = it.asked.and_then(|a| a.format);
        plans.push(DiskPlan::new(
            it.name, it.origin, target, format, current, &mut guard,
        )?);
    }
    check_distinct(&plans)?;
    let catalog = recovery::open_catalog()?;
    let _lock = lock_for_restore(&catalog, dom)?;
    let note = execute(&catalog, &plans)?;
    let changed = plans.iter().any(|p| {
        let d = now.iter().find(|d| d.name == p.name).unwrap();
        d.source.as_ref() != Some(&p.target) || d.image_format().ok() != Some(p.format)
    });
    if changed {
        dom.redefine(&domain::restored_definition(
            &now_xml,
            None,
            &restored(&plans),
        )?)?;
    }
    note.done();
    start_if_asked(dom, opts)
}

/// Define a new domain named `name` from `base_xml`, its disks restored to
/// new files (by default `<folder of the original>/<name>-<disk>.<format>`).
fn as_new_domain(
    conn: &Connect,
    base_xml: &str,
    name: &str,
    items: Vec<Item>,
    opts: RestoreOptions,
) -> Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::invalid_arg(format!("bad domain name '{name}'")));
    }
    if libvirt::domain_name_taken(conn, name)? {
        return Err(Error::operation_invalid(format!(
            "a domain named '{name}' already exists"
        )));
    }
    let mut plans = Vec::new();
    let mut guard = Untouchable::new(opts, &[]);
    for it in items {
        let format = it.asked.and_then(|a| a.format);
        let target = match it.asked.and_then(|a| a.target.clone()) {
            Some(t) => t,
            None => {
                check_disk_file_name(it.name)?;
                let dir = it
                    .original
                    .as_deref()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("/"));
                let ext = format.unwrap_or(DiskFormat::Qcow2).as_str();
                dir.join(format!("{name}-{}.{ext}", it.name))
            }
        };
        plans.push(DiskPlan::new(
            it.name, it.origin, target, format, None, &mut guard,
        )?);
    }
    check_distinct(&plans)?;
    let xml = domain::restored_definition(base_xml, Some(name), &restored(&plans))?;
    let note = execute(&recovery::open_catalog()?, &plans)?;
    crate::test_stop!("restore-before-define");
    match libvirt::define_domain(conn, &xml) {
        Ok(dom) => {
            note.done();
            start_if_asked(&dom, opts)
        }
        Err(e) => {
            for p in plans.iter().filter(|p| matches!(p.how, How::New)) {
                p.remove_staged(&p.place.path);
            }
            Err(e)
        }
    }
}

/// Whether the restore writes files only; a `<target dir>` is only for that.
fn files_only_asked(mode: RestoreMode, dir: &Option<PathBuf>) -> Result<bool> {
    let asked = mode.files_only();
    if !asked && dir.is_some() {
        return Err(Error::invalid_arg(
            "<target dir> is only for VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY",
        ));
    }
    Ok(asked)
}

fn new_domain_asked(mode: RestoreMode, name: &Option<String>) -> Result<bool> {
    let asked = mode.new_domain();
    if !asked && name.is_some() {
        return Err(Error::invalid_arg(
            "<domain name> is only for VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN",
        ));
    }
    Ok(asked)
}

/// `virDomainBackupRestore`.
pub(crate) fn restore(xml: &str, opts: RestoreOptions) -> Result<()> {
    let req = RestoreRequest::parse(xml)?;
    let catalog = recovery::open_catalog()?;
    let rec = recovery::find(&catalog, &req.uuid)?
        .ok_or_else(|| Error::no_backup(&req.uuid.to_string()))?;
    if rec.state != BackupState::Completed {
        return Err(Error::operation_invalid(format!(
            "backup '{}' is not completed",
            rec.uuid
        )));
    }
    super::moved::check(&catalog, &rec)?;
    let files_only = files_only_asked(opts.mode, &req.target_dir)?;
    let new_domain = new_domain_asked(opts.mode, &req.domain_name)?;
    // Refuse a running domain before any work (building a missing index).
    let own = match new_domain || files_only {
        true => None,
        false => {
            let dom = libvirt::open_domain(&rec.uri, &rec.domain_uuid)?;
            shut_off(&dom)?;
            Some(dom)
        }
    };
    let find = |u: &uuid::Uuid| recovery::find(&catalog, u).ok().flatten();
    if opts.mode.instant() {
        return crate::ops::instant::restore(&catalog, &rec, &req, own, opts);
    }
    // An encrypted backup's keys, read again from libvirt.
    let _keys = super::keys::lend_chain(&rec, &find)?;
    let names: Vec<&str> = rec.disks.iter().map(|d| d.name.as_str()).collect();
    let items = select(req.disks.as_deref(), &names, |d| d.name.as_str())?
        .into_iter()
        .map(|(name, asked)| {
            let d = rec.disks.iter().find(|d| d.name == name).unwrap();
            Ok(Item {
                name,
                origin: Origin {
                    image: OriginImage::File(
                        d.target.clone(),
                        d.format,
                        Some(catalog.recorded_chain(&rec, name)?),
                    ),
                    index: Some(super::verified_index(&catalog, &rec, name)?),
                },
                asked,
                original: Some(d.source.clone()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if files_only {
        return write_files(items, req.target_dir.as_deref(), &[], opts);
    }
    let Some(dom) = own else {
        let name = req.domain_name.clone().unwrap_or_else(|| {
            format!("{}-restore-{}", rec.domain_name, &rec.uuid.to_string()[..8])
        });
        let conn = libvirt::open_connection(&rec.uri)?;
        return as_new_domain(&conn, &rec.domain_xml, &name, items, opts);
    };
    into_own_domain(&dom, items, opts)
}

/// Where an unmanaged restore reads one disk from.
fn unmanaged_origin(r: &UnmanagedRestoreDisk) -> Result<Origin> {
    let image = match &r.source {
        UnmanagedSource::File(f, format) if f.is_file() => {
            OriginImage::File(f.clone(), *format, None)
        }
        UnmanagedSource::File(f, _) => {
            return Err(Error::invalid_arg(format!(
                "disk '{}': source file '{}' does not exist",
                r.disk.name,
                f.display()
            )));
        }
        UnmanagedSource::Nbd { name, server } => OriginImage::Nbd(server.clone(), name.clone()),
    };
    Ok(Origin { image, index: None })
}

/// `RestoreUnmanaged` with FILES_ONLY: the domain is not asked anything,
/// disk names only name the files.
fn unmanaged_to_files(req: &UnmanagedRestoreRequest, opts: RestoreOptions) -> Result<()> {
    let items = req
        .disks
        .iter()
        .map(|r| {
            Ok(Item {
                name: &r.disk.name,
                origin: unmanaged_origin(r)?,
                asked: Some(&r.disk),
                original: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let sources: Vec<PathBuf> = req
        .disks
        .iter()
        .filter_map(|r| match &r.source {
            UnmanagedSource::File(f, _) => Some(f.clone()),
            UnmanagedSource::Nbd { .. } => None,
        })
        .collect();
    write_files(items, req.target_dir.as_deref(), &sources, opts)
}

/// `virDomainBackupRestoreUnmanaged`: the same rules, from files the library
/// did not make (in the format the caller states, never with a backing file).
pub(crate) fn restore_unmanaged(dom: &DomainRef, xml: &str, opts: RestoreOptions) -> Result<()> {
    let req = UnmanagedRestoreRequest::parse(xml)?;
    if opts.mode.instant() {
        return Err(Error::not_supported_yet(
            "VIR_DOMAIN_BACKUP_RESTORE_INSTANT from unmanaged sources",
        ));
    }
    let new_domain = new_domain_asked(opts.mode, &req.domain_name)?;
    if files_only_asked(opts.mode, &req.target_dir)? {
        return unmanaged_to_files(&req, opts);
    }
    let def = dom.xml()?;
    let disks = domain::parse_disks(&def)?;
    let mut items = Vec::new();
    for r in &req.disks {
        let d = disks
            .iter()
            .find(|d| d.name == r.disk.name)
            .ok_or_else(|| {
                Error::invalid_arg(format!("domain has no disk named '{}'", r.disk.name))
            })?;
        let image = unmanaged_origin(r)?.image;
        items.push(Item {
            name: &r.disk.name,
            origin: Origin { image, index: None },
            asked: Some(&r.disk),
            original: d.source.clone(),
        });
    }
    if new_domain {
        let name = req.domain_name.clone().unwrap_or_else(|| {
            format!(
                "{}-restore-{}",
                dom.name().unwrap_or_default(),
                &Uuid::new_v4().to_string()[..8]
            )
        });
        return as_new_domain(&dom.connect()?, &def, &name, items, opts);
    }
    into_own_domain(dom, items, opts)
}

// `VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY`: write the selected disks of a
// backup (or of unmanaged sources) to image files and touch no domain.
//
// Nothing here opens a hypervisor connection: the catalog record and the
// images are all it reads, so it works when the backup's domain is gone
// and when no libvirt daemon runs. Each disk goes to its `<target file>`,
// else to `<target dir>/<disk>.<format>` (qcow2 unless `<driver type>`
// says raw). An existing file is refused unless
// `VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK` is given, which follows
// the rules of a restore into a domain (same format and size: rewritten in
// place, only differing chunks; else replaced by a new file renamed over
// it). A file of the backup's own chain is never a target.

/// Where one disk is written: its own `<target file>`, else the folder.
fn target_of(it: &Item, dir: Option<&Path>) -> Result<(PathBuf, Option<DiskFormat>)> {
    let format = it.asked.and_then(|a| a.format);
    if let Some(t) = it.asked.and_then(|a| a.target.clone()) {
        return Ok((t, format));
    }
    let dir = dir.ok_or_else(|| {
        Error::invalid_arg(format!(
            "disk '{}': VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY needs a <target file> or a <target dir>",
            it.name
        ))
    })?;
    if !dir.is_dir() {
        return Err(Error::invalid_arg(format!(
            "restore target dir '{}' is not a folder",
            dir.display()
        )));
    }
    check_disk_file_name(it.name)?;
    let ext = format.unwrap_or(DiskFormat::Qcow2).as_str();
    Ok((dir.join(format!("{}.{ext}", it.name)), format))
}

/// Write every item to its file. `sources`: files the restore reads,
/// which it must not write (besides every backup's files).
fn write_files(
    items: Vec<Item>,
    dir: Option<&Path>,
    sources: &[PathBuf],
    opts: RestoreOptions,
) -> Result<()> {
    let mut plans = Vec::new();
    let mut guard = Untouchable::new(opts, sources);
    for it in items {
        let (target, format) = target_of(&it, dir)?;
        plans.push(DiskPlan::new(
            it.name, it.origin, target, format, None, &mut guard,
        )?);
    }
    check_distinct(&plans)?;
    // The files are all there is to it: once written, nothing to undo.
    execute(&recovery::open_catalog()?, &plans).map(StagedFiles::done)
}
