//! What damaged metadata or a killed process must not cost: deletes left
//! half done are finished, and a backup's images are never removed while
//! another image of the domain still reads through them.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::image::backing::backing_file;
use crate::store::catalog::Catalog;
use crate::xml::backup::BackupRecord;

/// Finish the deletes of `domain` a dead process left half done (their
/// record renamed to `<backup>.deleting`, some data maybe gone): remove what
/// is left. Skipped while anyone holds the catalog lock (deletes run under
/// it). A note that cannot be read is left alone: it is not listed, and
/// whatever it names is better kept than guessed.
pub fn finish_deletes(catalog: &Catalog, domain: &Uuid) {
    let pending = catalog.pending_deletes(domain);
    if pending.is_empty() {
        return;
    }
    let Some(_guard) = catalog.try_lock() else {
        return;
    };
    for (_, rec) in catalog.pending_deletes(domain) {
        let Ok(rec) = rec else {
            continue;
        };
        // A note is a record the delete renamed: its volumes lose their
        // files here, and a pool refresh drops them from libvirt's list.
        let _ = catalog
            .remove_data(&rec)
            .and_then(|()| catalog.finish_delete(&rec));
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Refuse to remove the images of `doomed` while an image of another backup
/// of the same domain (`all`) names one of them as its backing file: the
/// records may say otherwise (a `<parent>` edited away, a re-parenting gone
/// wrong), the qcow2 headers are what a reader follows. One header read per
/// image of the domain; only direct backing files are checked (an image
/// reading through a file no record names was re-parented on purpose, with
/// `DELETE_METADATA_ONLY`).
pub fn check_no_backing_users(all: &[BackupRecord], doomed: &[&BackupRecord]) -> Result<()> {
    let gone: Vec<(PathBuf, &BackupRecord)> = doomed
        .iter()
        .flat_map(|r| r.disks.iter().map(move |d| (canonical(&d.target), *r)))
        .collect();
    let kept = all
        .iter()
        .filter(|r| !doomed.iter().any(|d| d.uuid == r.uuid));
    for r in kept {
        for d in &r.disks {
            let Some(backing) = backing_file(&d.target) else {
                continue;
            };
            let backing = canonical(&backing);
            if let Some((_, owner)) = gone.iter().find(|(p, _)| *p == backing) {
                return Err(Error::operation_invalid(format!(
                    "backup '{}' cannot be deleted: image '{}' of backup '{}' reads through its file '{}' (the catalog's records do not say so; check them)",
                    owner.uuid,
                    d.target.display(),
                    r.uuid,
                    backing.display()
                )));
            }
        }
    }
    Ok(())
}
