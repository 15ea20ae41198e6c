//! The files and volumes of a backup, as a whole: removing them.

use virt::connect::Connect;

use crate::engine::background;
use crate::error::Result;
use crate::hv::libvirt::{self, DomainRef};
use crate::hv::storage_pool;
use crate::store::catalog::Catalog;
use crate::store::locks::JobLock;
use crate::xml::backup::BackupRecord;

/// Remove a backup's record and data in crash order (see `store::delete`);
/// its pool volumes are deleted through libvirt when `conn` is given (else
/// only their files go), once the backup is no longer listed.
pub(super) fn remove_backup(
    catalog: &Catalog,
    rec: &BackupRecord,
    conn: Option<&Connect>,
) -> Result<()> {
    let marked = catalog.backup_of(rec).mark_deleting(rec)?;
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
    // In a housekeeping thread, each step of a file's removal waits its
    // turn behind other domains' jobs (see `background::pace`).
    marked.remove_data(&mut background::pace)?.finish()
}

/// Remove the backup of a job that failed (or never started), its job lock
/// held until the record is gone. Removing a record writes the summary,
/// which a full disk refuses: the backup's own files then go first, as a
/// dead job's would (`BackupDir::remove_dead_data`), which frees what the
/// job filled. If the record still cannot go, the lock file stays behind,
/// unlocked (`JobLock::abandon`): the next reader settles the record as a
/// dead job's instead of finding a `running` record with no job, which
/// would fail every List and Delete of the domain.
pub(super) fn discard_failed(
    catalog: &Catalog,
    rec: &BackupRecord,
    conn: Option<&Connect>,
    lock: Option<JobLock>,
) {
    let removed =
        remove_backup(catalog, rec, conn).or_else(|_| catalog.backup_of(rec).remove_dead_data(rec));
    match (removed, lock) {
        (Err(_), Some(lock)) => lock.abandon(),
        (_, lock) => drop(lock),
    }
}

/// A connection for volume work on a backup's pools, if it has any.
pub(super) fn volume_connection(rec: &BackupRecord, dom: Option<&DomainRef>) -> Option<Connect> {
    if rec.disks.iter().all(|d| d.volume.is_none()) {
        return None;
    }
    dom.and_then(|d| d.connect().ok())
        .or_else(|| libvirt::open_connection(&rec.uri).ok())
}
