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

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;
use virt::connect::Connect;

use crate::engine::copy::{self, Baseline, Rewrite};
use crate::error::{Error, Result};
use crate::hv::libvirt::{self, DomainRef};
use crate::image::disk::{self, Chain, Source, Target};
use crate::job::Progress;
use crate::ops::options::{RestoreMode, RestoreOptions};
use crate::ops::recovery;
use crate::ops::restore_steps::{select, start_if_asked};
use crate::ops::restore_target::{
    FileId, Kind, Place, backup_files, check_disk_file_name, file_id,
};
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::index::{DigestSink, IndexReader, IndexVerifier, NoDigests};
use crate::store::notes::StagedFiles;
use crate::store::secure;
use crate::xml::backup::{
    BackupState, DiskFormat, NbdServer, RestoreDisk, RestoreRequest, UnmanagedRestoreDisk,
    UnmanagedRestoreRequest, UnmanagedSource,
};
use crate::xml::domain::{self, DomainDisk, RestoredDisk};

/// Where one disk's data comes from.
struct Origin {
    image: OriginImage,
    /// The backup's digest index: verifies what is read, and lets an
    /// in-place restore find what differs without reading the backup.
    index: Option<PathBuf>,
}

enum OriginImage {
    /// A file, its format and the chain it reads through: a backup's as
    /// the catalog recorded it, or none for a file the caller names.
    File(PathBuf, DiskFormat, Option<Vec<(PathBuf, DiskFormat)>>),
    Nbd(NbdServer, String),
}

impl Origin {
    fn open(&self) -> Result<Source> {
        match &self.image {
            OriginImage::File(p, f, chain) => {
                let chain = chain.as_deref().map_or(Chain::None, Chain::Recorded);
                Source::open(p, *f, chain)
            }
            OriginImage::Nbd(server, export) => Source::open_nbd(server, export),
        }
    }
}

/// How a target file is written.
enum How {
    /// A file that does not exist yet.
    New,
    /// An existing disk of the same format and size: changed chunks only.
    InPlace,
    /// An existing file of another format or size: a new file renamed over it.
    Replace { tmp: PathBuf },
    /// A block device (an LVM volume): written in place, raw, every chunk
    /// of the disk's size, zeroes included; what lies past it is left.
    Device,
}

struct DiskPlan {
    name: String,
    origin: Origin,
    /// The target as the request or the definition names it.
    target: PathBuf,
    /// Its checked folder, the file written, and its name there.
    place: Place,
    format: DiskFormat,
    how: How,
}

fn open_index(p: &Option<PathBuf>) -> Result<Option<IndexReader>> {
    p.as_deref().map(IndexReader::open).transpose()
}

impl DiskPlan {
    /// Decide how to write the target, refusing an existing file without
    /// `REWRITE_EXISTING_DISK`. `current` is the target's format as the
    /// domain knows it, if it is one of the domain's disks.
    fn new(
        name: &str,
        origin: Origin,
        target: PathBuf,
        asked: Option<DiskFormat>,
        current: Option<DiskFormat>,
        guard: &mut Untouchable,
    ) -> Result<DiskPlan> {
        let place = Place::of(&target)?;
        let exists = !matches!(place.kind, Kind::Missing);
        if exists && !guard.rewrite {
            return Err(Error::operation_invalid(format!(
                "disk '{name}': '{}' exists; VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK is needed to write over it",
                target.display()
            )));
        }
        secure::refuse_inside(Catalog::open()?.root(), &place.path, "restore target")?;
        if exists {
            guard.check(name, &target, &place)?;
        }
        let (format, how) = match place.kind {
            Kind::Missing => (asked.unwrap_or(DiskFormat::Qcow2), How::New),
            Kind::Device(size_now) => {
                if asked.or(current).is_some_and(|f| f != DiskFormat::Raw) {
                    return Err(Error::not_supported_yet(format!(
                        "disk '{name}': a qcow2 image on block device '{}'",
                        target.display()
                    )));
                }
                let size = origin.open()?.size();
                if size_now < size {
                    return Err(Error::invalid_arg(format!(
                        "disk '{name}': block device '{}' holds {size_now} bytes, the disk needs {size}",
                        target.display()
                    )));
                }
                (DiskFormat::Raw, How::Device)
            }
            // A file that is not the disk's current image has no format we
            // know, and guessing it from its bytes is what a guest could
            // abuse: it is replaced whole, as a new file would be written.
            Kind::Regular => match current {
                None => (asked.unwrap_or(DiskFormat::Qcow2), replace(&place.path)),
                Some(now) => {
                    let format = asked.unwrap_or(now);
                    let size_now = Source::open(&place.path, now, Chain::Header)?.size();
                    let size = origin.open()?.size();
                    let same = format == now && size_now == size && origin.index.is_some();
                    (
                        format,
                        if same {
                            How::InPlace
                        } else {
                            replace(&place.path)
                        },
                    )
                }
            },
        };
        ::log::info!(
            "disk '{name}': restore to '{}' ({}): {}",
            place.path.display(),
            format.as_str(),
            match how {
                How::New => "a new file",
                How::InPlace => "the same format and size: only the chunks that differ",
                How::Replace { .. } => "a new file renamed over the old one",
                How::Device => "a block device, written whole in place",
            }
        );
        Ok(DiskPlan {
            name: name.to_string(),
            origin,
            target,
            place,
            format,
            how,
        })
    }

    fn context(&self) -> impl Fn(Error) -> Error + '_ {
        move |mut e| {
            e.message = format!("disk '{}': {}", self.name, e.message);
            e
        }
    }

    /// The file the first pass writes, if any.
    fn staged_file(&self) -> Option<&Path> {
        match &self.how {
            How::New => Some(&self.place.path),
            How::Replace { tmp } => Some(tmp),
            How::InPlace | How::Device => None,
        }
    }

    /// The origin's digests as a sink that checks what is read.
    fn verifier(&self) -> Result<Box<dyn DigestSink>> {
        Ok(match open_index(&self.origin.index)? {
            Some(r) => Box::new(IndexVerifier::new(r)),
            None => Box::new(NoDigests),
        })
    }

    /// Create the new file `path` (named `name` in the target's folder,
    /// never through a link) and write a complete image into it from the
    /// origin. Returns the open file, for its owner and mode.
    fn write_new(&self, path: &Path, name: &str) -> Result<File> {
        let file = self
            .place
            .folder
            .create_new(name)
            .map_err(|e| Error::io("cannot create target image", path, e))?;
        let kept = file
            .try_clone()
            .map_err(|e| Error::io("cannot create target image", path, e))?;
        let src = self.origin.open()?;
        let dst = Target::create_from(file, path, self.format, src.size(), None)?;
        copy::copy_image(
            &src,
            &dst,
            &Progress::default(),
            Baseline::Empty,
            self.verifier()?.as_mut(),
        )?;
        dst.finish(path)?;
        Ok(kept)
    }

    /// Before a block device is written: every chunk of the backup read
    /// and checked against its digests, as an in-place rewrite's first
    /// pass does, so a damaged backup leaves the device untouched.
    fn verify_origin(&self) -> Result<()> {
        if self.origin.index.is_some() {
            let src = self.origin.open()?;
            copy::read_digests(&src, &Progress::default(), self.verifier()?.as_mut())?;
        }
        Ok(())
    }

    /// Write the whole disk into the block device, zeroes included.
    fn write_device(&self) -> Result<()> {
        let src = self.origin.open()?;
        let dst = Target::open_existing(&self.place.path, DiskFormat::Raw, Chain::Header)?;
        copy::copy_image(
            &src,
            &dst,
            &Progress::default(),
            Baseline::Unknown,
            self.verifier()?.as_mut(),
        )?;
        dst.finish(&self.place.path)
    }

    /// The backup's digests, from the start (an in-place rewrite reads
    /// them once per pass).
    fn wanted(&self) -> Result<IndexReader> {
        open_index(&self.origin.index)?
            .ok_or_else(|| Error::internal("in-place restore without an index"))
    }

    /// First pass of an in-place rewrite: what differs, verified readable.
    fn plan_in_place(&self) -> Result<Rewrite> {
        let src = self.origin.open()?;
        let have = Source::open(&self.place.path, self.format, Chain::Header)?;
        copy::plan_rewrite(&src, &mut self.wanted()?, &have, &Progress::default())
    }

    fn apply_in_place(&self, plan: &Rewrite) -> Result<()> {
        let src = self.origin.open()?;
        let dst = Target::open_existing(&self.place.path, self.format, Chain::Header)?;
        copy::apply_rewrite(&src, &mut self.wanted()?, &dst, plan, &Progress::default())?;
        dst.finish(&self.place.path)
    }

    /// Put the written replacement `tmp` (open as `file`) in place of the
    /// target, with the target's owner and mode so the hypervisor can still
    /// open it: read, set and renamed through the folder's descriptor and
    /// the open file, never by a path.
    fn replace_with(&self, tmp: &Path, file: &File) -> Result<()> {
        let dir = &self.place.folder;
        let st = dir
            .stat(&self.place.name)
            .map_err(|e| Error::io("cannot stat", &self.place.path, e))?;
        Folder::chown_file(file, st.st_uid, st.st_gid)
            .map_err(|e| Error::io("cannot set owner of", tmp, e))?;
        file.set_permissions(fs::Permissions::from_mode(st.st_mode & 0o7777))
            .map_err(|e| Error::io("cannot set mode of", tmp, e))?;
        dir.rename(&tmp_name(tmp), &self.place.name)
            .map_err(|e| Error::io("cannot rename over", &self.place.path, e))?;
        dir.sync();
        Ok(())
    }

    /// Remove a file the first pass created (through the folder).
    fn remove_staged(&self, path: &Path) {
        crate::warn_if_err!(
            crate::error::missing_ok(self.place.folder.remove(&tmp_name(path))),
            "cannot remove '{}'",
            path.display()
        );
    }
}

/// A new file next to `path` to build its replacement in.
fn replace(path: &Path) -> How {
    How::Replace {
        tmp: disk::sibling_tmp(path, "restore"),
    }
}

/// The name in its folder of a file the restore makes.
fn tmp_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What no restore target may be: a file of any backup in the catalog, or
/// a source the restore reads (unmanaged). The catalog's files are listed
/// only once a target exists, the only case where it matters.
struct Untouchable {
    /// Whether existing files may be written over (`REWRITE_EXISTING_DISK`).
    rewrite: bool,
    sources: Vec<FileId>,
    backups: Option<HashSet<FileId>>,
}

impl Untouchable {
    fn new(opts: RestoreOptions, sources: &[PathBuf]) -> Untouchable {
        Untouchable {
            rewrite: opts.rewrite,
            sources: sources.iter().filter_map(|p| file_id(p)).collect(),
            backups: None,
        }
    }

    fn check(&mut self, name: &str, target: &Path, place: &Place) -> Result<()> {
        let Some(id) = place.id() else {
            return Ok(());
        };
        if self.backups.is_none() {
            self.backups = Some(backup_files(&recovery::open_catalog()?)?);
        }
        let of_backup = self.backups.as_ref().is_some_and(|b| b.contains(&id));
        if of_backup || self.sources.contains(&id) {
            return Err(Error::invalid_arg(format!(
                "disk '{name}': '{}' is a file of a backup in the catalog{}; it cannot be a restore target",
                target.display(),
                if of_backup {
                    ""
                } else {
                    " (or a source of this restore)"
                }
            )));
        }
        Ok(())
    }
}

/// Write every planned disk (see the module comment for the order).
/// Returns the note of the new files: the caller forgets it (`done`) once
/// the definition that uses them is in place, so a process killed before
/// that leaves no file behind.
fn execute(catalog: &Catalog, plans: &[DiskPlan]) -> Result<StagedFiles> {
    let mut in_place = Vec::new();
    for p in plans {
        match p.how {
            How::InPlace => in_place.push(p.plan_in_place().map_err(p.context())?),
            How::Device => p.verify_origin().map_err(p.context())?,
            How::New | How::Replace { .. } => {}
        }
    }
    let note = catalog.stage_files(
        &plans
            .iter()
            .filter_map(DiskPlan::staged_file)
            .collect::<Vec<_>>(),
    )?;
    let mut staged: Vec<(&DiskPlan, &Path, File)> = Vec::new();
    let staging = plans.iter().try_for_each(|p| {
        let Some(path) = p.staged_file() else {
            return Ok(());
        };
        let file = p.write_new(path, &tmp_name(path)).map_err(|e| {
            p.remove_staged(path);
            p.context()(e)
        })?;
        staged.push((p, path, file));
        Ok(())
    });
    if let Err(e) = staging {
        for (p, path, _) in staged {
            p.remove_staged(path);
        }
        return Err(e);
    }
    let mut rewrites = in_place.iter();
    let mut replacements = staged
        .iter()
        .filter(|(p, ..)| matches!(p.how, How::Replace { .. }));
    for p in plans {
        match &p.how {
            How::New => {}
            How::InPlace => p
                .apply_in_place(rewrites.next().unwrap())
                .map_err(p.context())?,
            How::Device => p.write_device().map_err(p.context())?,
            How::Replace { tmp } => {
                let (_, _, file) = replacements.next().unwrap();
                if let Err(e) = p.replace_with(tmp, file) {
                    p.remove_staged(tmp);
                    return Err(p.context()(e));
                }
            }
        }
    }
    Ok(note)
}

fn check_distinct(plans: &[DiskPlan]) -> Result<()> {
    for (i, p) in plans.iter().enumerate() {
        let same = |o: &DiskPlan| {
            o.target == p.target
                || o.place.path == p.place.path
                || o.place.id().is_some_and(|id| p.place.id() == Some(id))
        };
        if plans[..i].iter().any(same) {
            return Err(Error::invalid_arg(format!(
                "restore target '{}' is given to two disks",
                p.target.display()
            )));
        }
    }
    Ok(())
}

fn restored<'a>(plans: &'a [DiskPlan]) -> Vec<RestoredDisk<'a>> {
    plans
        .iter()
        .map(|p| RestoredDisk {
            name: &p.name,
            path: &p.target,
            format: p.format,
        })
        .collect()
}

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
pub fn restore(xml: &str, opts: RestoreOptions) -> Result<()> {
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
    if opts.mode.instant() {
        return crate::ops::instant::restore(&catalog, &rec, &req, own, opts);
    }
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
pub fn restore_unmanaged(dom: &DomainRef, xml: &str, opts: RestoreOptions) -> Result<()> {
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
