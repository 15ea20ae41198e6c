//! The disks of one backup, copied concurrently by a bounded number of
//! workers that share the job's progress.
//!
//! Each disk's copy already reads ahead on a thread of its own while it
//! hashes and writes; one disk at a time leaves the other cores idle on a
//! many-disk domain. Workers: `LIBVIRT_BACKUP_WORKERS` if set (1 copies one
//! disk after another), else the number of cores, at most 4.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::engine::copy::{self, Baseline};
use crate::error::{Error, Result};
use crate::image::disk::{Source, Target};
use crate::job::Progress;
use crate::store::index::{IndexReader, IndexWriter};

/// Most workers by default: past that, disks compete for the same storage.
const MAX_DEFAULT_WORKERS: usize = 4;

/// One disk to copy: from its source, against its parent's index if any,
/// into its target, writing its own index.
pub struct DiskCopy {
    pub name: String,
    pub source: Source,
    pub parent: Option<IndexReader>,
    pub target: Target,
    pub target_path: PathBuf,
    pub index_path: PathBuf,
    pub size: u64,
}

/// How many disks are copied at once.
pub fn workers() -> usize {
    let asked = std::env::var("LIBVIRT_BACKUP_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0);
    asked.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_DEFAULT_WORKERS)
    })
}

fn copy_one(d: DiskCopy, progress: &Progress) -> Result<()> {
    let DiskCopy {
        name,
        source,
        mut parent,
        target,
        target_path,
        index_path,
        size,
    } = d;
    let baseline = Baseline::of(parent.as_mut());
    IndexWriter::create(&index_path, size)
        .and_then(|mut index| {
            copy::copy_image(&source, &target, progress, baseline, &mut index)?;
            index.finish()
        })
        .and_then(|()| target.finish(&target_path))
        .map_err(|mut e| {
            e.message = format!("disk '{name}': {}", e.message);
            e
        })
}

/// Copy every disk, `workers()` at a time. The first error stops the
/// workers from starting other disks and is returned once the disks being
/// copied are done.
pub fn copy_disks(disks: Vec<DiskCopy>, progress: &Progress) -> Result<()> {
    let n = workers().min(disks.len()).max(1);
    let queue = Mutex::new(disks.into_iter());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        loop {
            if failed.lock().unwrap().is_some() {
                return;
            }
            let Some(d) = queue.lock().unwrap().next() else {
                return;
            };
            if let Err(e) = copy_one(d, progress) {
                failed.lock().unwrap().get_or_insert(e);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..n {
            s.spawn(work);
        }
        work();
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
