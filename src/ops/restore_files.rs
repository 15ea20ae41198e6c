//! `VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY`: write the selected disks of a
//! backup (or of unmanaged sources) to image files and touch no domain.
//!
//! Nothing here opens a hypervisor connection: the catalog record and the
//! images are all it reads, so it works when the backup's domain is gone
//! and when no libvirt daemon runs. Each disk goes to its `<target file>`,
//! else to `<target dir>/<disk>.<format>` (qcow2 unless `<driver type>`
//! says raw). An existing file is refused unless
//! `VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK` is given, which follows
//! the rules of a restore into a domain (same format and size: rewritten in
//! place, only differing chunks; else replaced by a new file renamed over
//! it). A file of the backup's own chain is never a target.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ops::restore::{DiskPlan, Item, check_distinct, execute};
use crate::store::catalog::Catalog;
use crate::xml::backup::{BackupRecord, DiskFormat};

/// Where one disk is written: its own `<target file>`, else the folder.
fn target_of(it: &Item, dir: Option<&Path>) -> Result<(PathBuf, Option<DiskFormat>)> {
    let format = it.asked.and_then(|a| a.format);
    if let Some(t) = it.asked.and_then(|a| a.target.clone()) {
        return Ok((t, format));
    }
    let dir = dir.ok_or_else(|| {
        Error::invalid_arg(format!(
            "disk '{}': VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY needs a <target file> or a <target dir>",
            it.name
        ))
    })?;
    if !dir.is_dir() {
        return Err(Error::invalid_arg(format!(
            "restore target dir '{}' is not a folder",
            dir.display()
        )));
    }
    let ext = format.unwrap_or(DiskFormat::Qcow2).as_str();
    Ok((dir.join(format!("{}.{ext}", it.name)), format))
}

/// `path` with its folder resolved (the file itself may not exist yet), so
/// two spellings of one file compare equal.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    match (path.parent().map(fs::canonicalize), path.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// Every image file `rec` reads through: its own and its ancestors'.
pub(crate) fn chain_files(catalog: &Catalog, rec: &BackupRecord) -> Result<Vec<PathBuf>> {
    let all = catalog.list_domain(&rec.domain_uuid)?;
    let mut out = Vec::new();
    let mut cur = Some(rec.clone());
    while let Some(r) = cur {
        out.extend(r.disks.iter().map(|d| resolved(&d.target)));
        cur = r
            .parent
            .and_then(|p| all.iter().find(|x| x.uuid == p).cloned());
    }
    Ok(out)
}

/// Write every item to its file. `protected`: files that must not be
/// written (the backup's chain).
pub(crate) fn write_files(
    items: Vec<Item>,
    dir: Option<&Path>,
    protected: &[PathBuf],
    flags: u32,
) -> Result<()> {
    let mut plans = Vec::new();
    for it in items {
        let (target, format) = target_of(&it, dir)?;
        if protected.contains(&resolved(&target)) {
            return Err(Error::invalid_arg(format!(
                "disk '{}': '{}' is a file of the backup itself",
                it.name,
                target.display()
            )));
        }
        plans.push(DiskPlan::new(
            it.name, it.origin, target, format, None, flags,
        )?);
    }
    check_distinct(&plans)?;
    execute(&Catalog::open()?, &plans)
}
