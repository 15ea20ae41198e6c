//! The operations behind the C API: create, list and lookup, restore,
//! delete and merge, exports, and recovery of what a dead process left.

use std::path::PathBuf;

use crate::engine::{background, copy};
use crate::error::{Error, Result};
use crate::image::disk::Chain;
use crate::store::catalog::Catalog;
use crate::xml::backup::BackupRecord;

pub(crate) use crate::hv::libvirt::DomainRef;

pub mod backup;
mod claim;
pub(crate) mod create;
mod create_job;
mod create_targets;
pub(crate) mod domain_settings;
pub(crate) mod export;
pub(crate) mod export_access;
pub(crate) mod export_stored;
mod files;
pub(crate) mod history;
pub(crate) mod instant;
mod instant_keys;
pub(crate) mod keys;
pub(crate) mod merge;
pub(crate) mod moved;
pub mod options;
pub(crate) mod pins;
pub(crate) mod plan;
pub(crate) mod recovery;
pub(crate) mod restore;
mod restore_plan;
pub(crate) mod restore_steps;
mod restore_target;
pub(crate) mod verify;

/// What housekeeping on `catalog` yields to (see `background::pace`).
fn gate(catalog: &Catalog) -> Option<background::Gate> {
    catalog.foreground_probe().map(|probe| background::Gate {
        foreground: probe.foreground,
        waiting: probe.waiting,
    })
}

/// Whether QEMU wrote the backup's files (a live backup of an earlier
/// version, in push mode), so that it has no digest index of its own.
/// Those have a checkpoint named after the backup alone; this version's
/// checkpoints carry `live::CHECKPOINT_PREFIX`, and their backups were
/// indexed as they were written.
fn made_by_qemu(rec: &BackupRecord) -> bool {
    rec.checkpoint
        .as_deref()
        .is_some_and(|cp| !cp.starts_with(crate::engine::live::CHECKPOINT_PREFIX))
}

/// The digest index of one disk of a completed backup, built from the
/// backup's own files if the backup has none. Every backup this version
/// makes has its index at completion; backups of running domains made by
/// earlier versions (QEMU wrote them in push mode) have none, and get it
/// the first time a verify, an incremental, a restore or a merge needs it.
pub(crate) fn ensure_index(catalog: &Catalog, rec: &BackupRecord, disk: &str) -> Result<PathBuf> {
    let backup = catalog.backup_of(rec);
    let path = backup.index_path(disk);
    if path.exists() {
        return Ok(path);
    }
    let d =
        rec.disks.iter().find(|d| d.name == disk).ok_or_else(|| {
            Error::internal(format!("backup '{}' has no disk '{disk}'", rec.uuid))
        })?;
    ::log::warn!(
        "backup {} disk '{disk}' has no digest index{}: recording one from its image now; it proves the data reads back, not that it is what the guest had",
        rec.uuid,
        if made_by_qemu(rec) {
            " (QEMU wrote it, for an earlier version)"
        } else {
            ""
        }
    );
    backup.create_index_dir()?;
    let chain = catalog.recorded_chain(rec, disk)?;
    copy::write_index_file(&path, &d.target, d.format, Chain::Recorded(&chain))?;
    Ok(path)
}

/// The digest index a restore or a verification checks `disk` of `rec`
/// against. The library's engine writes it with the backup, so a missing
/// one means the catalog was damaged: an index rebuilt from the image would
/// only check the image against itself, so this fails instead. A live
/// backup made by an earlier version (QEMU copied it; it has a checkpoint)
/// never had one: its index is built from its image the first time
/// (`ensure_index`, which says so in the log).
pub(crate) fn verified_index(catalog: &Catalog, rec: &BackupRecord, disk: &str) -> Result<PathBuf> {
    let path = catalog.backup_of(rec).index_path(disk);
    if !made_by_qemu(rec) && !path.exists() {
        return Err(Error::operation_failed(format!(
            "digest index of disk '{disk}' of backup '{}' is missing ('{}'): the data cannot be verified",
            rec.uuid,
            path.display()
        )));
    }
    ensure_index(catalog, rec, disk)
}
