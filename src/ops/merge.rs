//! Deleting a backup that has children: its data is first merged into each
//! direct child, so every descendant stays restorable.
//!
//! Each incremental disk of a child is rewritten as a new file holding the
//! child's full content as a delta against the deleted backup's own parent
//! (or as a full copy when the deleted backup was a chain root), checked
//! chunk by chunk against the child's digest index, synced, and renamed over
//! the child's file. Then the child's record is rewritten with its new
//! parent, and only then is the backup removed. A crash at any point leaves
//! files and records that read back the same data: before the rename the
//! old chain is intact; after it the child no longer needs the deleted
//! backup's files; a child record that still names the deleted parent is
//! merged again (a no-op copy) by the next delete.

use std::path::{Path, PathBuf};

use super::{ensure_index, gate};
use crate::engine::background;
use crate::engine::copy::{self, Baseline};
use crate::error::{Error, Result};
use crate::image::codec::Codec;
use crate::image::disk::{self, Chain, Source, Target};
use crate::job::Progress;
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::index::{self, IndexReader, IndexVerifier};
use crate::xml::backup::{BackupMode, BackupRecord, DiskFormat, DiskRecord};

/// What a rewritten child disk is a delta against, if anything.
struct Base<'a> {
    disk: &'a DiskRecord,
    index: PathBuf,
}

/// Rewrite one incremental disk of a child so it no longer reads through
/// The new image of the child's disk `d` at `tmp`: compressed as the
/// child's was, or not.
fn merged_target(
    file: std::fs::File,
    tmp: &Path,
    d: &DiskRecord,
    size: u64,
    backing: Option<(&Path, DiskFormat)>,
) -> Result<Target> {
    if d.encryption.is_some() {
        let key = crate::image::keys::passphrase(&d.target)
            .ok_or_else(|| Error::internal(format!("no key lent for '{}'", d.target.display())))?;
        return Target::create_encrypted(file, tmp, size, backing, &key);
    }
    match Codec::of(d.compression) {
        Some(codec) => Target::create_compressed(file, tmp, size, backing, codec),
        None => Target::create_from(file, tmp, d.format, size, backing),
    }
}

/// the deleted backup. Returns the disk's new mode.
fn rewrite_disk(
    catalog: &Catalog,
    child: &BackupRecord,
    d: &DiskRecord,
    base: Option<Base>,
) -> Result<BackupMode> {
    let chain = catalog.recorded_chain(child, &d.name)?;
    let tmp = disk::sibling_tmp(&d.target, "merge");
    // The new image is made, and renamed over the child's, through the
    // descriptor of a folder nobody else can write.
    let Some((folder, name)) = Folder::outside_parent(&d.target, "backup target")? else {
        return Err(Error::operation_failed(format!(
            "folder of '{}' is gone",
            d.target.display()
        )));
    };
    let tmp_name = tmp
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let own_index = ensure_index(catalog, child, &d.name)?;
    let domain = catalog.domain(&child.domain_uuid);
    domain.mark_merge(&child.uuid, &d.name, &tmp)?;
    let work = || -> Result<BackupMode> {
        // Opened on the housekeeping thread: its reads of the levels go
        // without read-ahead from the first one (see `cache::no_read_ahead`).
        let src = Source::open(&d.target, d.format, Chain::Recorded(&chain))?;
        let mut verify = IndexVerifier::new(IndexReader::open(&own_index)?);
        let mut parent = base
            .as_ref()
            .map(|b| IndexReader::open(&b.index))
            .transpose()?;
        // Named as a new incremental names its parent (`backing_name`).
        let named = (base.as_ref()).map(|b| (catalog.backing_name(&d.target, &b.disk.target), b));
        let backing = (named.as_ref()).map(|(n, b)| (n.as_path(), b.disk.format));
        let file = folder
            .create_new(&tmp_name)
            .map_err(|e| Error::io("cannot create target image", &tmp, e))?;
        let dst = merged_target(file, &tmp, d, src.size(), backing)?;
        let baseline = Baseline::of(parent.as_mut());
        copy::copy_image(&src, &dst, &Progress::default(), baseline, &mut verify)?;
        dst.finish(&tmp)?;
        folder
            .rename(&tmp_name, &name)
            .map_err(|e| Error::io("cannot rename over", &d.target, e))?;
        folder.sync();
        ::log::info!(
            "disk '{}' of backup '{}' merged into a new image at '{}'",
            d.name,
            child.uuid,
            d.target.display()
        );
        Ok(if base.is_some() {
            BackupMode::Incremental
        } else {
            BackupMode::Full
        })
    };
    // Housekeeping: other domains' jobs get the CPU first.
    let result = background::run_as_housekeeping(gate(catalog), work);
    if result.is_err() {
        // The work may have failed before it made the file.
        crate::warn_if_err!(
            folder.remove_if_exists(&tmp_name),
            "cannot remove the merge's file '{}'",
            tmp.display()
        );
    }
    domain.unmark_merge(&child.uuid, &d.name);
    result.map_err(|mut e| {
        e.message = format!(
            "cannot merge into disk '{}' of backup '{}': {}",
            d.name, child.uuid, e.message
        );
        e
    })
}

/// A child's digest indexes that are deltas against `doomed`'s are
/// rewritten against the grandparent's index of the same disk (or flat), so
/// that removing `doomed`'s indexes leaves every index readable. The
/// digests do not change: the index describes the disk, not the files.
fn rebase_indexes(
    catalog: &Catalog,
    doomed: &BackupRecord,
    grandparent: Option<&BackupRecord>,
    child: &BackupRecord,
) -> Result<()> {
    let doomed_dir = catalog.backup_of(doomed).index_dir();
    for d in &child.disks {
        let own = catalog.backup_of(child).index_path(&d.name);
        if !own.exists() {
            continue;
        }
        // A delta names its parent as `../<backup>.index/<disk>.b3`.
        let refers = index::parent_of(&own)?
            .is_some_and(|p| p.parent().and_then(|f| f.file_name()) == doomed_dir.file_name());
        if !refers {
            continue;
        }
        let new_parent = grandparent
            .filter(|g| g.disks.iter().any(|x| x.name == d.name))
            .map(|g| catalog.backup_of(g).index_path(&d.name))
            .filter(|p| p.exists());
        index::rebase(&own, new_parent.as_deref()).map_err(|mut e| {
            e.message = format!(
                "cannot rewrite the digest index of disk '{}' of backup '{}': {}",
                d.name, child.uuid, e.message
            );
            e
        })?;
    }
    Ok(())
}

/// Merge `doomed` into each of its direct children among `all`, re-parenting
/// them onto its parent. With `metadata_only` the files stay as they are (the
/// children keep reading through the doomed backup's files) and only the
/// records change.
pub(crate) fn merge_into_children(
    catalog: &Catalog,
    doomed: &BackupRecord,
    all: &[BackupRecord],
    metadata_only: bool,
) -> Result<()> {
    let grandparent = doomed.parent.and_then(|p| all.iter().find(|r| r.uuid == p));
    let find = |u: &uuid::Uuid| (all.iter().chain([doomed])).find(|r| &r.uuid == u).cloned();
    for child in all.iter().filter(|r| r.parent == Some(doomed.uuid)) {
        // An encrypted chain's keys, read again from libvirt.
        let _keys = match metadata_only {
            true => None,
            false => Some(super::keys::lend_chain(child, &find)?),
        };
        let mut updated = child.clone();
        updated.parent = doomed.parent;
        if !metadata_only {
            for d in updated.disks.iter_mut() {
                if d.mode != BackupMode::Incremental {
                    continue;
                }
                // The deleted backup's copy of this disk was itself a delta
                // against the grandparent's: the child becomes one too.
                let via = doomed
                    .disks
                    .iter()
                    .find(|x| x.name == d.name && x.mode == BackupMode::Incremental);
                let base = match grandparent.zip(via) {
                    Some((g, _)) => match g.disks.iter().find(|x| x.name == d.name) {
                        Some(disk) => Some(Base {
                            disk,
                            index: ensure_index(catalog, g, &d.name)?,
                        }),
                        None => None,
                    },
                    None => None,
                };
                let backing = match (&base, grandparent) {
                    (Some(_), Some(g)) => catalog.chain_from(g, &d.name)?,
                    _ => Vec::new(),
                };
                d.mode = rewrite_disk(catalog, child, d, base)?;
                d.backing = backing;
            }
        }
        rebase_indexes(catalog, doomed, grandparent, child)?;
        catalog.backup_of(&updated).write_record(&updated)?;
    }
    Ok(())
}
