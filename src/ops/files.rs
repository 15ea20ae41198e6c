//! The files and volumes of a backup, as a whole: removing them.

use virt::connect::Connect;

use crate::error::Result;
use crate::hv::libvirt::{self, DomainRef};
use crate::hv::storage_pool;
use crate::store::catalog::Catalog;
use crate::xml::backup::BackupRecord;

/// Remove a backup's data and record; its pool volumes are deleted through
/// libvirt when `conn` is given (else only their files go).
pub(super) fn remove_backup(
    catalog: &Catalog,
    rec: &BackupRecord,
    conn: Option<&Connect>,
) -> Result<()> {
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
    catalog.remove_with_data(rec)
}

/// A connection for volume work on a backup's pools, if it has any.
pub(super) fn volume_connection(rec: &BackupRecord, dom: Option<&DomainRef>) -> Option<Connect> {
    if rec.disks.iter().all(|d| d.volume.is_none()) {
        return None;
    }
    dom.and_then(|d| d.connect().ok())
        .or_else(|| libvirt::open_connection(&rec.uri).ok())
}
