//! The disks of a backup being made, and their targets: what each disk
//! is copied from and against (`PlannedDisk`, `Baseline`), and making the
//! targets (their folders, pool volumes and image files) through checked
//! folder descriptors.

use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::secret;
use crate::hv::storage_pool;
use crate::image::codec::Codec;
use crate::image::disk::{Source, Target as ImageTarget};
use crate::ops::plan;
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::index::IndexReader;
use crate::xml::backup::{BackupRecord, Compression, CreateRequest, DiskFormat, DiskRecord};

/// One disk of a backup being prepared: where it comes from and goes to.
pub(super) struct PlannedDisk {
    pub(super) record: DiskRecord,
    pub(super) source: Source,
    /// Set for an incremental disk: what its target is a delta against.
    pub(super) baseline: Option<Baseline>,
    /// For a live incremental disk: the parent's checkpoint, which libvirt
    /// copies the changes since.
    pub(super) since: Option<String>,
    /// For an encrypted target: its passphrase, read from libvirt.
    pub(super) passphrase: Option<Vec<u8>>,
}

/// The parent's copy of a disk an incremental target builds on, and, for
/// the library's engine, its digest index, which tells the changes since
/// (libvirt's engine uses the checkpoint, `PlannedDisk::since`).
pub(super) struct Baseline {
    pub(super) target: PathBuf,
    pub(super) format: DiskFormat,
    pub(super) index: Option<IndexReader>,
    /// Shut-off domain after a live parent: the image and the persistent
    /// bitmap of the parent's checkpoint in it, which mark the changes.
    pub(super) bitmap: Option<(PathBuf, String)>,
}

/// Note in `record.created_dirs` the folders the targets need that do not
/// exist yet, outermost first.
pub(super) fn note_dirs(record: &mut BackupRecord, disks: &[PlannedDisk]) {
    for p in disks {
        let dir = p.record.target.parent().unwrap_or(Path::new("/"));
        for d in missing_dirs(dir) {
            if !record.created_dirs.contains(&d) {
                record.created_dirs.push(d);
            }
        }
    }
}

/// Create each disk's target (and its pool volume, and missing folders).
/// An incremental target in the catalog names its parent's image in the
/// catalog relative to its own folder (`Catalog::backing_name`).
pub(super) fn create_targets(
    catalog: &Catalog,
    dom: &DomainRef,
    disks: &[PlannedDisk],
    targets: &mut Vec<ImageTarget>,
) -> Result<()> {
    for p in disks {
        let path = &p.record.target;
        let dir = path.parent().unwrap_or(Path::new("/"));
        // Every folder on the way is one only we or root can write, and
        // the file is made through its folder's descriptor: nobody can
        // swap a name under a file that Delete later removes.
        let folder = Folder::make_outside(dir, "backup target")?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some((pool, volume)) = &p.record.volume {
            create_volume(dom, pool, volume, &p.record)?;
        }
        // A pool volume libvirt has just created is ours to format.
        let file = match p.record.volume {
            Some(_) => folder.open(&name, OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC),
            None => folder.create_new(&name),
        }
        .map_err(|e| Error::io("cannot create target image", path, e))?;
        let backing_name = (p.baseline.as_ref()).map(|b| catalog.backing_name(path, &b.target));
        let backing = (p.baseline.as_ref())
            .zip(backing_name.as_deref())
            .map(|(b, name)| (name, b.format));
        ::log::info!(
            "disk '{}': {} target '{}' ({}){}",
            p.record.name,
            if backing.is_some() {
                "incremental"
            } else {
                "full"
            },
            path.display(),
            p.record.format.as_str(),
            (p.baseline.as_ref())
                .map_or(String::new(), |b| format!(" over '{}'", b.target.display()))
        );
        targets.push(new_target(
            file,
            &p.record,
            backing,
            p.passphrase.as_deref(),
        )?);
        crate::test_stop!("create-target-created");
    }
    Ok(())
}

/// Format the new `file` as `d`'s target: qcow2 of compressed clusters
/// when its record says so (see `image::qcow2_compressed`), encrypted
/// with `passphrase` when it has one (see `image::luks`).
pub(super) fn new_target(
    file: std::fs::File,
    d: &DiskRecord,
    backing: Option<(&Path, DiskFormat)>,
    passphrase: Option<&[u8]>,
) -> Result<ImageTarget> {
    if let Some(p) = passphrase {
        return ImageTarget::create_encrypted(file, &d.target, d.virtual_size, backing, p);
    }
    match Codec::of(d.compression) {
        Some(codec) => {
            ImageTarget::create_compressed(file, &d.target, d.virtual_size, backing, codec)
        }
        None => ImageTarget::create_from(file, &d.target, d.format, d.virtual_size, backing),
    }
}

/// Each disk's encryption (its own `<encryption>`, that of `<disks>`, or
/// its parent's copy's) and its passphrase, read from libvirt on the
/// domain's connection now, before anything is written.
pub(super) fn choose_encryption(
    dom: &DomainRef,
    req: &CreateRequest,
    parent: Option<&BackupRecord>,
    disks: &mut [PlannedDisk],
) -> Result<()> {
    let mut conn = None;
    for p in disks.iter_mut() {
        let name = p.record.name.clone();
        let own = (req.disks.iter().flatten())
            .find(|r| r.name == name)
            .and_then(|r| r.encryption.as_ref());
        let inherited = (parent.iter().flat_map(|r| r.disks.iter()))
            .find(|d| d.name == name)
            .and_then(|d| d.encryption.as_ref());
        let all = req.encryption.as_ref();
        let chosen = plan::encryption_of(&name, (own, all, inherited), p.record.format)?;
        let Some(e) = chosen else { continue };
        if p.record.compression != Compression::None {
            return Err(Error::config_unsupported(format!(
                "disk '{name}': compressed and encrypted (its parent's secret) together: \
                 QEMU never encrypts a compressed cluster; ask for <compression type='none'/>"
            )));
        }
        if conn.is_none() {
            conn = Some(dom.connect()?);
        }
        let conn = conn
            .as_ref()
            .ok_or_else(|| Error::internal("no connection"))?;
        let key = secret::passphrase(conn, &e.secret).map_err(|mut err| {
            err.message = format!("disk '{name}': {}", err.message);
            err
        })?;
        // QEMU takes a LUKS passphrase only as UTF-8 text without NUL:
        // with any other value qemu-img, an instant restore and an export
        // (all QEMU) could not open the backup.
        if std::str::from_utf8(&key).is_err() || key.contains(&0) {
            return Err(Error::config_unsupported(format!(
                "disk '{name}': the value of the secret is not text (UTF-8, no NUL): QEMU \
                 opens LUKS images only with a text passphrase; give the secret a text \
                 value, e.g. base64 of random bytes"
            )));
        }
        p.passphrase = Some(key);
        p.record.encryption = Some(e);
    }
    Ok(())
}

/// Create the pool volume of a disk's target, where the plan expects it.
fn create_volume(dom: &DomainRef, pool: &str, volume: &str, d: &DiskRecord) -> Result<()> {
    let v = storage_pool::create_volume(&dom.connect()?, pool, volume, d.format, d.virtual_size)?;
    if v.path != d.target {
        crate::warn_if_err!(
            storage_pool::delete_volume(Some(&dom.connect()?), &v),
            "cannot delete volume '{volume}' again"
        );
        return Err(Error::operation_failed(format!(
            "volume '{volume}' was created at '{}', not at '{}'",
            v.path.display(),
            d.target.display()
        )));
    }
    Ok(())
}

/// The folders `dir` and its ancestors that do not exist, outermost first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
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
    missing
}
