//! `virDomainBackupGetParent`: the backup an incremental one was made on.

use std::sync::Arc;

use uuid::Uuid;

use super::Backup;
use crate::error::{Error, ErrorCode, Result};
use crate::ops::recovery;

impl Backup {
    /// The backup this one builds on, as a new `Backup` of the same domain:
    /// the record's `<parent>` as it is now (deleting a parent re-parents
    /// its children, so this follows merges), or, for an unmanaged export,
    /// the backup whose changes it exports. `VIR_ERR_NO_DOMAIN_BACKUP` when
    /// there is none (a full backup, an export without a parent), when this
    /// backup is gone, or when the parent was deleted meanwhile.
    pub fn parent(&self) -> Result<Arc<Backup>> {
        let parent = match &self.export {
            Some(e) => e.parent,
            None => self.record()?.parent,
        };
        let parent = parent.ok_or_else(|| self.no_parent())?;
        self.parent_handle(parent)
    }

    /// A handle on `parent` if the catalog still has it.
    fn parent_handle(&self, parent: Uuid) -> Result<Arc<Backup>> {
        match recovery::reload(&self.catalog, &self.domain_uuid, &parent)? {
            Some(_) => Ok(Backup::new(
                parent,
                self.domain_uuid,
                self.domain.clone(),
                self.catalog.clone(),
            )),
            None => Err(Error::new(
                ErrorCode::NoDomainBackup,
                format!(
                    "Domain backup not found: parent '{parent}' of backup '{}' no longer exists",
                    self.uuid
                ),
            )),
        }
    }

    fn no_parent(&self) -> Error {
        let what = if self.export.is_some() {
            "an export without <parent>"
        } else {
            "a full backup"
        };
        Error::new(
            ErrorCode::NoDomainBackup,
            format!(
                "Domain backup not found: backup '{}' does not have a parent ({what})",
                self.uuid
            ),
        )
    }
}
