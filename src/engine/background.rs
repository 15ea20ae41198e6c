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
//!
//! What was left (B's median 20 ms against 6 ms alone) is B's own short
//! syncs meeting a merge that keeps the device busy, which no priority
//! undoes once a write is dispatched. So a merge also *paces* itself:
//! while any job a user waits for runs on this catalog, in any process
//! (the shared flock of `.domain-locks/.foreground`, taken with a domain's job lock),
//! it reads or writes at most one piece per `FOREGROUND_PACE` instead of
//! back to back (its reads from disk delayed B as much as its writes). It
//! never stops: pruning still ends under constant load.
//!
//! With B making full backups back to back while A's delete merged 384 MiB
//! (block-layer traces of both), B waited for no lock (its flocks took at
//! most 4 ms) but at its syncs, behind A's requests in the device: the pace
//! bounded when A's pieces started, not what they sent nor how long they
//! took. The readers' read-ahead (8 MiB here, twice that for a file read
//! sequentially) sent 4 MiB reads well ahead of the pace (and went on doing
//! so when told `POSIX_FADV_RANDOM` only before each data read: the levels
//! had been opened and their metadata read before), the writer and both
//! readers each had a piece in flight, and on a disk other processes kept
//! busy a 512 KiB write took up to 335 ms and a 4 MiB discard of the
//! removal 284 ms, the next piece going 10 ms later. So a merge reads its
//! levels without read-ahead from their opening, and while a job runs its
//! pieces take turns (one in flight), each followed by at least its own
//! length with none. A's device time overlapping B's syncs, per backup of
//! B: 1.5-5.2 ms on average before, 95th percentile 10-27 ms, worst 26-112
//! ms; after, 0.6-1.2 ms, 1.7-3.1 ms and 3.7-89 ms (one write that other
//! I/O held up); the merge took as long (13.9-17.8 s before, 13.2-14.9 s
//! after). Three times its length of idle time instead of once changed the
//! overlap little and made merges up to 2.4x slower on a busy disk.

use std::cell::RefCell;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;

/// Nice value added for housekeeping: CFS then weighs such a thread about
/// 1/10 of a normal one.
const HOUSEKEEPING_NICE: i32 = 10;

/// Largest single write of a housekeeping copy. Direct writes go to the
/// device at once, and another job's small sync write queues behind all
/// of a 4 MiB one in the device's queue (no scheduler reorders what was
/// already dispatched): ~10 ms per fsync here, ~9 fsyncs per backup.
const HOUSEKEEPING_WRITE: usize = 512 << 10;

/// Least time between the starts of two pieces of I/O of a housekeeping
/// task while a job a user waits for runs: at 512 KiB pieces, at most
/// ~50 MiB/s.
const FOREGROUND_PACE: Duration = Duration::from_millis(10);

/// While a job a user waits for runs, a piece that kept the task busy for
/// `d` is followed by at least `IDLE_PER_BUSY * d` with none of its I/O:
/// the task then holds at most half the disk's time. The fixed pace alone
/// assumed a piece is short: on a disk that other processes' I/O slows (a
/// 512 KiB write of the merge took up to 335 ms here), the merge had a
/// piece in the device's queue nearly all the time, and each of B's syncs
/// queued behind it.
const IDLE_PER_BUSY: u32 = 1;

/// The catalog's probes: `.foreground` (held shared while a job a user
/// waits for runs) and `.waiting` (held shared while anyone is blocked on
/// a domain's lock, maybe one this housekeeping holds: pacing then would
/// only slow the job it yields to).
pub(crate) struct Gate {
    pub foreground: File,
    pub waiting: File,
}

impl Gate {
    fn yields(&self) -> bool {
        let held = |f: &File| match f.try_lock() {
            Ok(()) => f.unlock().map(|()| false).unwrap_or(false),
            Err(_) => true,
        };
        held(&self.foreground) && !held(&self.waiting)
    }
}

/// What a housekeeping task's threads share: the catalog's probes, when
/// its next piece of I/O may start, and when its last one ended.
struct Pace {
    gate: Gate,
    next: Instant,
    since: Instant,
}

impl Pace {
    /// A piece that started at `start` and kept the task busy until now
    /// ended: the next one waits for the pace and for idle time after it.
    fn ended(&mut self, start: Instant) {
        let now = Instant::now();
        let busy = now - start;
        self.next = (start + FOREGROUND_PACE).max(now + busy * IDLE_PER_BUSY);
        self.since = now;
    }

    /// Whether a piece may start: at once when the gate does not say
    /// yield, else once `next` has come (checked every millisecond).
    fn wait(&self) -> bool {
        loop {
            if !self.gate.yields() {
                return false;
            }
            if Instant::now() >= self.next {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The pace of one housekeeping task, shared by its threads (the writer
/// and the readers). Its lock is also the turn: while the gate says yield,
/// a piece of I/O runs holding it, so the task has one piece in flight at
/// a time (its readers and its writer each had one, and the readers'
/// read-ahead more).
#[derive(Clone)]
pub(crate) struct Pacer(Arc<Mutex<Pace>>);

impl Pacer {
    /// The most a paced read or write moves at once.
    pub(crate) fn piece(&self) -> usize {
        HOUSEKEEPING_WRITE
    }

    /// Run one piece of I/O, `f`, which returns whether it touched the
    /// disk (a hole read costs nothing and leaves the pace as it was).
    /// While the gate says yield, `f` waits until the pace lets it start,
    /// checking every millisecond whether that changed, and runs holding
    /// the turn; otherwise it runs at once.
    pub(crate) fn io<T>(&self, f: impl FnOnce() -> (T, bool)) -> T {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !p.wait() {
            drop(p);
            return f().0;
        }
        let start = Instant::now();
        let (out, touched) = f();
        if touched {
            p.ended(start);
        }
        out
    }

    /// After a step of housekeeping that began when the last piece ended
    /// or `pace` returned (when the task began, for its first): a
    /// truncation, which here discards the blocks it frees before it
    /// returns (a 4 MiB discard took up to 284 ms under load). The next
    /// step waits as after a piece of `io`.
    pub(crate) fn pace(&self) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let start = p.since;
        p.ended(start);
        p.wait();
        p.since = Instant::now();
    }
}

thread_local! {
    static HOUSEKEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static PACER: RefCell<Option<Pacer>> = const { RefCell::new(None) };
}

/// The calling thread's pacer, for the threads it starts.
pub(crate) fn pacer() -> Option<Pacer> {
    PACER.with(|p| p.borrow().clone())
}

/// `pacer().pace()`: a no-op outside housekeeping.
pub(crate) fn pace() {
    if let Some(p) = pacer() {
        p.pace();
    }
}

/// `pacer().io(f)`: `f` at once outside housekeeping.
pub(crate) fn io<T>(f: impl FnOnce() -> (T, bool)) -> T {
    match pacer() {
        Some(p) => p.io(f),
        None => f().0,
    }
}

fn install(gate: Option<Gate>) -> Option<Pacer> {
    let new = gate.map(|gate| {
        let now = Instant::now();
        Pacer(Arc::new(Mutex::new(Pace {
            gate,
            next: now,
            since: now,
        })))
    });
    PACER.with(|p| p.replace(new))
}

/// The largest write the calling thread should issue at once.
pub(crate) fn write_piece() -> usize {
    match HOUSEKEEPING.with(|h| h.get()) {
        true => HOUSEKEEPING_WRITE,
        false => usize::MAX,
    }
}

/// Run `work` on the calling thread with its housekeeping steps paced on
/// `gate` (see `pace`): for work that must keep the caller's locks (they
/// are per thread), such as freeing a deleted backup's blocks.
pub(crate) fn paced<T>(gate: Option<Gate>, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = install(gate);
    let result = work();
    PACER.with(|p| *p.borrow_mut() = before);
    result
}

/// Run `work` on a new thread at housekeeping priority and wait for it;
/// its copies pace themselves on `gate` (see `pace`), if given.
pub(crate) fn run_as_housekeeping<T: Send>(
    gate: Option<Gate>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            install(gate);
            // Per thread on Linux (who = 0 names the calling thread); a
            // refusal only leaves the priority as it was.
            if let Ok(now) = rustix::process::getpriority_process(None) {
                crate::warn_if_err!(
                    rustix::process::setpriority_process(None, now + HOUSEKEEPING_NICE),
                    "cannot lower the priority of a housekeeping thread"
                );
            }
            set_idle_io();
            HOUSEKEEPING.with(|h| h.set(true));
            crate::image::cache::no_read_ahead(true);
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
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        );
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
    use std::time::Instant;

    #[test]
    fn housekeeping_paces_itself_only_while_a_foreground_job_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, wait) = (dir.path().join(".foreground"), dir.path().join(".waiting"));
        let job = File::create(&gate).unwrap();
        let waiter = File::create(&wait).unwrap();
        let probe = || {
            Some(Gate {
                foreground: File::open(&gate).unwrap(),
                waiting: File::open(&wait).unwrap(),
            })
        };
        let paces = |n: u32| {
            paced(probe(), || {
                let t = Instant::now();
                (0..n).for_each(|_| pace());
                Ok(t.elapsed())
            })
            .unwrap()
        };
        job.lock_shared().unwrap();
        // The first pace may go at once (none went before it).
        assert!(paces(4) >= FOREGROUND_PACE * 3, "did not wait for the job");
        // Someone blocked on a domain's lock (maybe ours): no waiting.
        waiter.lock_shared().unwrap();
        assert!(
            paces(100) < FOREGROUND_PACE * 100,
            "slowed a job waiting for it"
        );
        waiter.unlock().unwrap();
        job.unlock().unwrap();
        assert!(
            paces(100) < FOREGROUND_PACE * 100,
            "waited with no job running"
        );
        // Outside housekeeping nothing waits: no pacer.
        job.lock_shared().unwrap();
        assert!(pacer().is_none());
        pace();
    }

    /// While a job runs: a slow piece (or step) is followed by
    /// `IDLE_PER_BUSY` times its length of nothing, the task's threads take turns (one
    /// piece in flight), and holes cost no waiting.
    #[test]
    fn a_slow_piece_is_followed_by_idle_time_and_pieces_take_turns() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let (gate, wait) = (dir.path().join(".foreground"), dir.path().join(".waiting"));
        let job = File::create(&gate).unwrap();
        File::create(&wait).unwrap();
        job.lock_shared().unwrap();
        let probe = Gate {
            foreground: File::open(&gate).unwrap(),
            waiting: File::open(&wait).unwrap(),
        };
        let busy = FOREGROUND_PACE * 3;
        paced(Some(probe), || {
            let p = pacer().unwrap();
            p.io(|| (std::thread::sleep(busy), true));
            let ended = Instant::now();
            p.io(|| ((), true));
            assert!(
                ended.elapsed() >= busy * IDLE_PER_BUSY,
                "no idle time after a slow piece"
            );
            // A truncation's step (it discards what it frees) counts too.
            p.pace();
            std::thread::sleep(busy);
            let ended = Instant::now();
            p.pace();
            assert!(
                ended.elapsed() >= busy * IDLE_PER_BUSY,
                "no idle time after a slow step"
            );
            // Holes leave the pace as it was: nothing for the next piece
            // to wait for.
            let next = p.0.lock().unwrap().next;
            (0..100).for_each(|_| p.io(|| ((), false)));
            assert_eq!(p.0.lock().unwrap().next, next, "holes were paced");
            let (inside, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
            std::thread::scope(|s| {
                for _ in 0..3 {
                    let (p, inside, most) = (p.clone(), &inside, &most);
                    s.spawn(move || {
                        for _ in 0..3 {
                            p.io(|| {
                                most.fetch_max(inside.fetch_add(1, SeqCst) + 1, SeqCst);
                                std::thread::sleep(Duration::from_millis(2));
                                inside.fetch_sub(1, SeqCst);
                                ((), true)
                            });
                        }
                    });
                }
            });
            assert_eq!(most.load(SeqCst), 1, "pieces overlapped while yielding");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn the_work_runs_niced_and_the_caller_keeps_its_priority() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let inside = run_as_housekeeping(None, || {
            Ok(rustix::process::getpriority_process(None).unwrap())
        })
        .unwrap();
        assert_eq!(inside, (before + HOUSEKEEPING_NICE).min(19));
        // Threads started by the work inherit it.
        let child = run_as_housekeeping(None, || {
            Ok(
                std::thread::spawn(|| rustix::process::getpriority_process(None).unwrap())
                    .join()
                    .unwrap(),
            )
        })
        .unwrap();
        assert_eq!(child, inside);
        let classes = run_as_housekeeping(None, || {
            Ok((io_class(), std::thread::spawn(io_class).join().unwrap()))
        })
        .unwrap();
        assert_eq!(classes, (3, 3), "idle I/O class, inherited");
        assert_eq!(
            run_as_housekeeping(None, || Ok(write_piece())).unwrap(),
            HOUSEKEEPING_WRITE
        );
        assert_eq!(write_piece(), usize::MAX);
        if std::env::var_os("LIBVIRT_BACKUP_DIRECT").is_none() {
            let direct = run_as_housekeeping(None, || Ok(crate::image::disk::direct_wanted()));
            assert!(direct.unwrap(), "housekeeping writes direct");
        }
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
        let e = run_as_housekeeping::<()>(None, || Err(crate::error::Error::internal("x")))
            .unwrap_err();
        assert_eq!(e.message, "internal error: x");
    }
}
