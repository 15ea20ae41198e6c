//! The backing chains of backups' images, as the catalog recorded them: a
//! backup's image is opened with this chain, never with the one its own
//! qcow2 header names (`image::disk::Chain::Recorded`).

use std::path::PathBuf;

use super::catalog::Catalog;
use crate::error::{Error, Result};
use crate::xml::backup::{BackupMode, BackupRecord, DiskFormat};

/// Longest chain of records walked for a record written before chains were
/// recorded (a loop of parents would otherwise never end).
const MAX_DEPTH: usize = 10_000;

impl Catalog {
    /// The images `rec`'s copy of `disk` reads through, nearest first.
    pub fn recorded_chain(
        &self,
        rec: &BackupRecord,
        disk: &str,
    ) -> Result<Vec<(PathBuf, DiskFormat)>> {
        let d = rec.disks.iter().find(|d| d.name == disk).ok_or_else(|| {
            Error::internal(format!("backup '{}' has no disk '{disk}'", rec.uuid))
        })?;
        if d.mode == BackupMode::Full {
            return Ok(Vec::new());
        }
        if !d.backing.is_empty() {
            return Ok(d.backing.clone());
        }
        // A record from before chains were kept: each incremental copy
        // reads through its parent's copy of the same disk.
        let mut out = Vec::new();
        let mut cur = rec.clone();
        while out.len() < MAX_DEPTH {
            let parent = cur
                .parent
                .map(|p| match self.domain_of(&p)? {
                    Some(d) => self.backup(&d, &p).record(),
                    None => Ok(None),
                })
                .transpose()?
                .flatten()
                .ok_or_else(|| missing_parent(rec, disk))?;
            let pd = parent
                .disks
                .iter()
                .find(|x| x.name == disk)
                .ok_or_else(|| missing_parent(rec, disk))?;
            out.push((pd.target.clone(), pd.format));
            if pd.mode == BackupMode::Full {
                return Ok(out);
            }
            cur = parent;
        }
        Err(missing_parent(rec, disk))
    }

    /// What a new incremental copy of `disk` on top of `parent` reads
    /// through: the parent's copy, then the parent's chain.
    pub fn chain_from(
        &self,
        parent: &BackupRecord,
        disk: &str,
    ) -> Result<Vec<(PathBuf, DiskFormat)>> {
        let d = parent
            .disks
            .iter()
            .find(|d| d.name == disk)
            .ok_or_else(|| {
                Error::internal(format!("backup '{}' has no disk '{disk}'", parent.uuid))
            })?;
        let mut out = vec![(d.target.clone(), d.format)];
        out.extend(self.recorded_chain(parent, disk)?);
        Ok(out)
    }
}

fn missing_parent(rec: &BackupRecord, disk: &str) -> Error {
    Error::operation_failed(format!(
        "backup '{}': the chain of disk '{disk}' is broken (a parent's record is missing)",
        rec.uuid
    ))
}
