//! Backups that name the catalog's files by absolute paths, in a catalog
//! that has moved since.
//!
//! This version names the files of the catalog's backup folders relative
//! to the root (`store::paths`), in records and in qcow2 headers alike.
//! Earlier versions wrote absolute paths, and an image a user placed
//! outside the catalog names a parent inside it by its absolute path: once
//! the catalog is copied or moved, those name files under the root it
//! left. Before a backup's images are read, served or removed, that is
//! said plainly (where the catalog was, where it is, where the file is
//! now) rather than as an image that cannot be opened.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::image::backing::backing_file;
use crate::store::catalog::Catalog;
use crate::xml::backup::BackupRecord;

/// A file of a backup folder named by its absolute path under the root a
/// catalog left: that root, and where the file is in this catalog.
struct LeftBehind {
    old_root: PathBuf,
    here: PathBuf,
}

/// Fail, explaining why, if `rec` (or the qcow2 header of one of its
/// images) names a file of the catalog by an absolute path into a root
/// the catalog has left, where that file no longer is.
pub(crate) fn check(catalog: &Catalog, rec: &BackupRecord) -> Result<()> {
    for d in &rec.disks {
        let named = std::iter::once(&d.target).chain(d.backing.iter().map(|(p, _)| p));
        for p in named {
            if let Some(l) = left_behind(catalog, &rec.domain_uuid, p) {
                let what = format!("its record names the file '{}'", p.display());
                return Err(explained(catalog, rec, &what, &l));
            }
        }
        if let Some(b) = backing_file(&d.target)
            && let Some(l) = left_behind(catalog, &rec.domain_uuid, &b)
        {
            let what = format!(
                "its image '{}' names its backing file '{}'",
                d.target.display(),
                b.display()
            );
            return Err(explained(catalog, rec, &what, &l));
        }
    }
    Ok(())
}

/// `path`, if it is an absolute name of a file of a backup folder of
/// `domain` under another root than the catalog's, which is not there,
/// while the catalog has that file.
fn left_behind(catalog: &Catalog, domain: &Uuid, path: &Path) -> Option<LeftBehind> {
    if !path.is_absolute() || path.starts_with(catalog.root()) {
        return None;
    }
    let backup_dir = path.parent()?;
    let domain_dir = backup_dir.parent()?;
    let rel = Path::new(domain_dir.file_name()?)
        .join(backup_dir.file_name()?)
        .join(path.file_name()?);
    let here = catalog.root().join(&rel);
    let ours = catalog.is_data_path(domain, &here);
    let moved =
        std::fs::symlink_metadata(path).is_err() && std::fs::symlink_metadata(&here).is_ok();
    (ours && moved).then(|| LeftBehind {
        old_root: domain_dir.parent().unwrap_or(Path::new("/")).to_path_buf(),
        here,
    })
}

fn explained(catalog: &Catalog, rec: &BackupRecord, what: &str, l: &LeftBehind) -> Error {
    Error::operation_failed(format!(
        "backup '{}' names a file of the catalog by its absolute path, as an earlier version \
         of libvirt-backup wrote them (and as an image outside the catalog names a parent in \
         it): {what} in the catalog at '{}', which is gone; the catalog is now at '{}' (moved \
         or copied), where that file is '{}'. Only relative names move with the catalog: to \
         use this backup, put the catalog back at '{}' (or make that path a symbolic link to \
         '{}')",
        rec.uuid,
        l.old_root.display(),
        catalog.root().display(),
        l.here.display(),
        l.old_root.display(),
        catalog.root().display()
    ))
}
