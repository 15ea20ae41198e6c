//! Housekeeping copies: a delete's merge rewrites whole images on behalf
//! of nobody waiting for them, and must not hold up other domains' jobs.
//!
//! Measured here (2 cores, one virtio disk), domain B's CreateXML took
//! 13-17 ms alone and a median of 140-180 ms while domain A's delete merged
//! 1 GiB: B's syscalls waited for the CPU, and each of its ~9 fsyncs waited
//! behind A's writes in the device's queue. So the merge runs on a thread
//! of its own (the caller's keeps its priority: raising it back needs
//! privileges) with nice +10 and the idle I/O class, both inherited by the
//! threads it starts, writes its targets with `O_DIRECT` (no dirty data
//! for B's fsyncs to wait behind: 178 -> 84 ms) and at most 512 KiB at a
//! time: B's median fell to ~32 ms, for a merge ~1.4x slower.

use crate::error::Result;

/// Nice value added for housekeeping: CFS then weighs such a thread about
/// 1/10 of a normal one.
const HOUSEKEEPING_NICE: i32 = 10;

/// Largest single write of a housekeeping copy. Direct writes go to the
/// device at once, and another job's small sync write queues behind all
/// of a 4 MiB one in the device's queue (no scheduler reorders what was
/// already dispatched): ~10 ms per fsync here, ~9 fsyncs per backup.
const HOUSEKEEPING_WRITE: usize = 512 << 10;

thread_local! {
    static HOUSEKEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The largest write the calling thread should issue at once.
pub fn write_piece() -> usize {
    match HOUSEKEEPING.with(|h| h.get()) {
        true => HOUSEKEEPING_WRITE,
        false => usize::MAX,
    }
}

/// Run `work` on a new thread at housekeeping priority and wait for it.
pub fn run_as_housekeeping<T: Send>(work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            // Per thread on Linux (who = 0 names the calling thread); a
            // refusal only leaves the priority as it was.
            if let Ok(now) = rustix::process::getpriority_process(None) {
                let _ = rustix::process::setpriority_process(None, now + HOUSEKEEPING_NICE);
            }
            set_idle_io();
            HOUSEKEEPING.with(|h| h.set(true));
            crate::image::disk::use_direct_targets();
            work()
        });
        match t.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `ioprio_set(IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE)`: the calling
/// thread's requests go after everyone else's in the block layer's
/// scheduler (mq-deadline and bfq honour classes).
fn set_idle_io() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    // SAFETY: a plain syscall on the calling thread, no memory passed.
    unsafe {
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << 13);
    }
}

/// The calling thread's I/O priority class.
#[cfg(test)]
fn io_class() -> libc::c_long {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, 0 as libc::c_long) >> 13 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_runs_niced_and_the_caller_keeps_its_priority() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let inside = run_as_housekeeping(|| Ok(rustix::process::getpriority_process(None).unwrap()))
            .unwrap();
        assert_eq!(inside, (before + HOUSEKEEPING_NICE).min(19));
        // Threads started by the work inherit it.
        let child = run_as_housekeeping(|| {
            Ok(std::thread::spawn(|| rustix::process::getpriority_process(None).unwrap())
                .join()
                .unwrap())
        })
        .unwrap();
        assert_eq!(child, inside);
        let classes = run_as_housekeeping(|| {
            Ok((io_class(), std::thread::spawn(io_class).join().unwrap()))
        })
        .unwrap();
        assert_eq!(classes, (3, 3), "idle I/O class, inherited");
        assert_eq!(run_as_housekeeping(|| Ok(write_piece())).unwrap(), HOUSEKEEPING_WRITE);
        assert_eq!(write_piece(), usize::MAX);
        if std::env::var_os("LIBVIRT_BACKUP_DIRECT").is_none() {
            let direct = run_as_housekeeping(|| Ok(crate::image::disk::direct_wanted()));
            assert!(direct.unwrap(), "housekeeping writes direct");
        }
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
        let e = run_as_housekeeping::<()>(|| Err(crate::error::Error::internal("x"))).unwrap_err();
        assert_eq!(e.message, "internal error: x");
    }
}
