//! How a restore writes each disk: where its data comes from (`Origin`),
//! how its target is written (`How`: a new file, an in-place rewrite of
//! the chunks that differ, a replacement renamed over the old file, a
//! block device written whole), what no target may be (`Untouchable`),
//! and the order every plan is carried out in (`execute`; see `restore`'s
//! module comment for what a failure leaves behind).

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::engine::copy::{self, Baseline, Rewrite};
use crate::error::{Error, Result};
use crate::image::disk::{self, Chain, Source, Target};
use crate::job::Progress;
use crate::ops::options::RestoreOptions;
use crate::ops::recovery;
use crate::ops::restore_target::{FileId, Kind, Place, backup_files, file_id};
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::index::{DigestSink, IndexReader, IndexVerifier, NoDigests};
use crate::store::notes::StagedFiles;
use crate::store::secure;
use crate::xml::backup::{DiskFormat, NbdServer};
use crate::xml::domain::RestoredDisk;

/// Where one disk's data comes from.
pub(super) struct Origin {
    pub(super) image: OriginImage,
    /// The backup's digest index: verifies what is read, and lets an
    /// in-place restore find what differs without reading the backup.
    pub(super) index: Option<PathBuf>,
}

pub(super) enum OriginImage {
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
pub(super) enum How {
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

pub(super) struct DiskPlan {
    pub(super) name: String,
    origin: Origin,
    /// The target as the request or the definition names it.
    pub(super) target: PathBuf,
    /// Its checked folder, the file written, and its name there.
    pub(super) place: Place,
    pub(super) format: DiskFormat,
    pub(super) how: How,
}

fn open_index(p: &Option<PathBuf>) -> Result<Option<IndexReader>> {
    p.as_deref().map(IndexReader::open).transpose()
}

impl DiskPlan {
    /// Decide how to write the target, refusing an existing file without
    /// `REWRITE_EXISTING_DISK`. `current` is the target's format as the
    /// domain knows it, if it is one of the domain's disks.
    pub(super) fn new(
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
    pub(super) fn remove_staged(&self, path: &Path) {
        crate::warn_if_err!(
            self.place.folder.remove_if_exists(&tmp_name(path)),
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
pub(super) struct Untouchable {
    /// Whether existing files may be written over (`REWRITE_EXISTING_DISK`).
    rewrite: bool,
    sources: Vec<FileId>,
    backups: Option<HashSet<FileId>>,
}

impl Untouchable {
    pub(super) fn new(opts: RestoreOptions, sources: &[PathBuf]) -> Untouchable {
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
pub(super) fn execute(catalog: &Catalog, plans: &[DiskPlan]) -> Result<StagedFiles> {
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

pub(super) fn check_distinct(plans: &[DiskPlan]) -> Result<()> {
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

pub(super) fn restored<'a>(plans: &'a [DiskPlan]) -> Vec<RestoredDisk<'a>> {
    plans
        .iter()
        .map(|p| RestoredDisk {
            name: &p.name,
            path: &p.target,
            format: p.format,
        })
        .collect()
}
