//! The files and volumes of a backup, as a whole: removing them.

use virt::connect::Connect;

use crate::engine::background;
use crate::error::Result;
use crate::hv::libvirt::{self, DomainRef};
use crate::hv::storage_pool;
use crate::store::catalog::Catalog;
use crate::xml::backup::BackupRecord;

/// Remove a backup's record and data in crash order (see
/// `Catalog::remove_with_data`); its pool volumes are deleted through
/// libvirt when `conn` is given (else only their files go).
pub(super) fn remove_backup(
    catalog: &Catalog,
    rec: &BackupRecord,
    conn: Option<&Connect>,
) -> Result<()> {
    catalog.mark_deleting(rec)?;
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
    catalog.remove_data(rec, &mut background::pace)?;
    catalog.finish_delete(rec)
}

/// A connection for volume work on a backup's pools, if it has any.
pub(super) fn volume_connection(rec: &BackupRecord, dom: Option<&DomainRef>) -> Option<Connect> {
    if rec.disks.iter().all(|d| d.volume.is_none()) {
        return None;
    }
    dom.and_then(|d| d.connect().ok())
        .or_else(|| libvirt::open_connection(&rec.uri).ok())
}
