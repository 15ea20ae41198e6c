//! The disks of one backup, copied concurrently by a bounded number of
//! workers that share the job's progress.
//!
//! Each disk's copy already reads ahead on a thread of its own while it
//! hashes and writes; one disk at a time leaves the other cores idle on a
//! many-disk domain. Workers: `LIBVIRT_BACKUP_WORKERS` if set (1 copies one
//! disk after another), else the number of cores, at most 4.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// Most workers by default: past that, disks compete for the same storage.
const MAX_DEFAULT_WORKERS: usize = 4;

/// How many disks are copied at once.
pub(crate) fn workers() -> usize {
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

/// Run `copy` on every disk, `workers()` at a time, in their order. The
/// first error stops the workers from starting other disks and is returned
/// once the disks being copied are done.
pub(crate) fn copy_disks<T: Send>(disks: Vec<T>, copy: impl Fn(T) -> Result<()> + Sync) -> Result<()> {
    let n = workers().min(disks.len()).max(1);
    let queue = Mutex::new(disks.into_iter());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        super::copy::share_cores(n > 1);
        loop {
            if failed.lock().unwrap().is_some() {
                return;
            }
            let Some(d) = queue.lock().unwrap().next() else {
                return;
            };
            if let Err(e) = copy(d) {
                failed.lock().unwrap().get_or_insert(e);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..n {
            s.spawn(work);
        }
        work();
        super::copy::share_cores(false);
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_disk_once_at_most_workers_at_a_time_first_error_kept() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        copy_disks((0..12).collect(), |i: u32| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            running.fetch_sub(1, Ordering::SeqCst);
            done.lock().unwrap().push(i);
            Ok(())
        })
        .unwrap();
        let mut done = done.into_inner().unwrap();
        done.sort();
        assert_eq!(done, (0..12).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= workers());

        let e = copy_disks((0..8).collect(), |i: u32| match i {
            3 => Err(Error::internal("disk 3 broke")),
            _ => Ok(()),
        })
        .unwrap_err();
        assert!(e.message.contains("disk 3"));
    }
}
