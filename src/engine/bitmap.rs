//! The changes a persistent dirty bitmap records in a shut-off domain's
//! qcow2 image: an offline incremental after a live backup reads only
//! those, instead of hashing the whole disk against the parent's index.
//!
//! The bitmap is read the way QEMU publishes it: a read-only
//! `qemu-storage-daemon` export of the image with the bitmap, queried with
//! NBD block status in the `qemu:dirty-bitmap:<name>` context. Nothing
//! writes to the image. Whether the bitmap may be trusted (the parent's
//! checkpoint's, consistent, enabled, same file) is decided by the caller
//! (`live::usable_offline_bitmap`).

use std::path::Path;

use crate::engine::export::{ExportDisk, ExportServer, StorageDaemonExport};
use crate::error::{Error, Result};
use crate::image::nbd::NbdClient;
use crate::store::index::DIGEST_CHUNK;
use crate::xml::backup::DiskFormat;

/// The ranges of `image` that `bitmap` marks dirty, widened to whole digest
/// chunks and merged, plus everything past `parent_size` (a disk that grew:
/// the parent had nothing there).
pub fn dirty_ranges(
    image: &Path,
    bitmap: &str,
    size: u64,
    parent_size: u64,
) -> Result<Vec<(u64, u64)>> {
    let dir = tempdir()?;
    let result = (|| {
        let server = ExportServer::Unix(dir.join("nbd.sock"));
        let daemon = StorageDaemonExport::start(
            &server,
            &[ExportDisk {
                export_name: "disk".into(),
                image: image.to_path_buf(),
                format: DiskFormat::Qcow2,
                bitmap: Some(bitmap.to_string()),
                backing: None,
            }],
        )?;
        let ranges = NbdClient::connect(&server, "disk", Some(bitmap)).and_then(|c| {
            if c.size() != size {
                return Err(Error::operation_failed(format!(
                    "the image '{}' is {} bytes through NBD, expected {size}",
                    image.display(),
                    c.size()
                )));
            }
            changed_ranges(&c, size, parent_size)
        });
        crate::warn_if_err!(
            daemon.stop(),
            "cannot stop the bitmap reader's qemu-storage-daemon"
        );
        ranges
    })();
    crate::warn_if_err!(
        std::fs::remove_dir_all(&dir),
        "cannot remove folder '{}'",
        dir.display()
    );
    result
}

/// The ranges the export's dirty bitmap (negotiated at connect) marks,
/// widened to whole digest chunks and merged, plus everything past
/// `parent_size` (a disk that grew: the parent had nothing there).
pub(crate) fn changed_ranges(
    c: &NbdClient,
    size: u64,
    parent_size: u64,
) -> Result<Vec<(u64, u64)>> {
    let mut runs = query(c, size.min(parent_size))?;
    let tail = parent_size / DIGEST_CHUNK * DIGEST_CHUNK;
    if tail < size {
        push_run(&mut runs, tail, size);
    }
    Ok(runs)
}

/// Dirty extents of `c` up to `end`, widened to chunks.
fn query(c: &NbdClient, end: u64) -> Result<Vec<(u64, u64)>> {
    let mut runs = Vec::new();
    let mut pos = 0;
    while pos < end {
        let (dirty, len) = c.dirty_extent(pos, (end - pos).min(1 << 30))?;
        let len = len.clamp(1, end - pos);
        if dirty {
            let s = pos / DIGEST_CHUNK * DIGEST_CHUNK;
            let e = (pos + len).div_ceil(DIGEST_CHUNK) * DIGEST_CHUNK;
            push_run(&mut runs, s, e);
        }
        pos += len;
    }
    Ok(runs)
}

/// Append `start..end` (as offset, length), merging with the last run.
fn push_run(runs: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match runs.last_mut() {
        Some((o, l)) if *o + *l >= start => *l = (*l).max(end - *o),
        _ => runs.push((start, end - start)),
    }
}

fn tempdir() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "libvirt-backup-bitmap-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("cannot create scratch folder", &dir, e))?;
    Ok(dir)
}
