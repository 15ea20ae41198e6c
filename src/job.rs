//! The job runner: one background thread per backup job, with progress
//! counters, cancellation and a final state that waiters can block on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{Error, ErrorCode, Result};
use crate::store::catalog::Catalog;
use crate::store::domain::{CancelMarker, ProgressFile};
use crate::store::history::{JobEnd, JobState, Started};
use crate::store::locks::{DomainLock, JobLock};
use crate::xml::backup::{BackupRecord, BackupState, JobStats};

#[derive(Debug)]
struct Outcome {
    state: BackupState,
    error: Option<Error>,
    elapsed_ms: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Job {
    pub uuid: Uuid,
    pub domain: Uuid,
    /// The job's own counters (a copy that knows no disks counts here),
    /// its cancel and its rate limit; its figures add up these and the
    /// disks' (see [`Job::snapshot`]).
    pub progress: Arc<Progress>,
    pub total: AtomicU64,
    pub disks: u32,
    /// Each disk's name, size and counters, in the record's disk order.
    pub disk_progress: Vec<DiskProgress>,
    pub incremental: bool,
    started: Instant,
    outcome: Mutex<Outcome>,
    ended: Condvar,
    /// The job's start in the history, whose end it writes when it ends.
    history: Mutex<Option<Started>>,
    /// Where the job publishes its figures for other processes, while the
    /// flag says it still may (see `Job::publish_loop`).
    published: Option<ProgressFile>,
    publishing: Mutex<bool>,
}

/// How often a job publishes its figures for other processes.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Jobs running in this process, by backup UUID, so every handle on a
/// backup sees the same job.
static RUNNING: LazyLock<Mutex<HashMap<Uuid, Arc<Job>>>> = LazyLock::new(Default::default);

pub(crate) fn running(backup: &Uuid) -> Option<Arc<Job>> {
    RUNNING.lock().unwrap().get(backup).cloned()
}

pub(crate) fn running_for_domain(domain: &Uuid) -> Option<Arc<Job>> {
    RUNNING
        .lock()
        .unwrap()
        .values()
        .find(|j| j.domain == *domain)
        .cloned()
}

/// One disk of a job, as `GetParameters` reports it.
#[derive(Debug)]
pub(crate) struct DiskProgress {
    /// The disk's name in the domain.
    pub name: String,
    /// Its size: the bytes its copy examines.
    pub total: u64,
    /// Its copy's counters, which the job's figures add up.
    pub progress: Progress,
}

/// What a job is made of: its backup, domain, disks (name and size, in
/// the record's order) and rate limit.
pub(crate) struct JobPlan {
    pub uuid: Uuid,
    pub domain: Uuid,
    pub disks: Vec<(String, u64)>,
    pub incremental: bool,
    /// Bytes per second all the job's disk copies read together; `None`:
    /// no limit.
    pub bandwidth: Option<u64>,
    /// Where the job publishes its figures while it runs.
    pub publish: Option<ProgressFile>,
}

impl Job {
    /// A new job; `cancel` appearing asks it to stop (see [`Progress`]).
    pub(crate) fn new(plan: JobPlan, cancel: CancelMarker) -> Arc<Job> {
        let progress = Arc::new(Progress {
            cancel_file: Some(cancel),
            ..Progress::limited(plan.bandwidth)
        });
        let disk_progress = plan
            .disks
            .into_iter()
            .map(|(name, total)| DiskProgress {
                name,
                total,
                progress: Progress::part_of(&progress),
            })
            .collect::<Vec<_>>();
        Arc::new(Job {
            uuid: plan.uuid,
            domain: plan.domain,
            total: AtomicU64::new(disk_progress.iter().map(|d| d.total).sum()),
            disks: disk_progress.len() as u32,
            disk_progress,
            progress,
            incremental: plan.incremental,
            started: Instant::now(),
            outcome: Mutex::new(Outcome {
                state: BackupState::Running,
                error: None,
                elapsed_ms: None,
            }),
            ended: Condvar::new(),
            history: Mutex::new(None),
            published: plan.publish,
            publishing: Mutex::new(true),
        })
    }

    /// Register the job and run `work` on a new thread. `work` returns the
    /// job's result; it must have cleaned up after itself when it fails.
    pub(crate) fn spawn<F>(self: &Arc<Self>, work: F) -> Result<()>
    where
        F: FnOnce(&Job) -> Result<()> + Send + 'static,
    {
        RUNNING.lock().unwrap().insert(self.uuid, Arc::clone(self));
        let job = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("backup-{}", &self.uuid.to_string()[..8]))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&job)))
                    .unwrap_or_else(|_| Err(Error::internal("backup job panicked")));
                job.end(result);
            });
        if let Err(e) = spawned {
            RUNNING.lock().unwrap().remove(&self.uuid);
            return Err(Error::operation_failed(format!(
                "cannot start backup job thread: {e}"
            )));
        }
        if let Some(file) = self.published.clone() {
            let job = Arc::clone(self);
            let publisher = std::thread::Builder::new()
                .name(format!("progress-{}", &self.uuid.to_string()[..8]))
                .spawn(move || job.publish_loop(&file));
            crate::warn_if_err!(publisher, "cannot start the progress publisher");
        }
        Ok(())
    }

    /// Publish the job's figures to `file` every `PUBLISH_EVERY` until
    /// the job settles (`stop_publishing`) or ends.
    fn publish_loop(&self, file: &ProgressFile) {
        let mut o = self.outcome.lock().unwrap();
        loop {
            o = self.ended.wait_timeout(o, PUBLISH_EVERY).unwrap().0;
            if o.state != BackupState::Running {
                break;
            }
            drop(o);
            {
                let allowed = self.publishing.lock().unwrap();
                if !*allowed {
                    return;
                }
                let (stats, disks) = self.snapshot();
                crate::debug_if_err!(
                    file.publish(published(&stats, &disks).as_bytes()),
                    "cannot publish the progress of backup {}",
                    self.uuid
                );
            }
            o = self.outcome.lock().unwrap();
        }
        drop(o);
        if self.stop_publishing() {
            self.remove_published();
        }
    }

    /// Publish no more (the job's record is about to say how it ended);
    /// whether it still did.
    fn stop_publishing(&self) -> bool {
        std::mem::replace(&mut *self.publishing.lock().unwrap(), false)
    }

    /// Remove what the job published, once its record says how it ended
    /// (a reader in between still sees the last figures).
    fn remove_published(&self) {
        if let Some(file) = &self.published {
            file.remove();
        }
    }

    /// Write the job's end in the history when it ends (at once if it
    /// already has), after `started`, its start line.
    pub(crate) fn record_end(&self, started: Started) {
        let o = self.outcome.lock().unwrap();
        match o.state {
            BackupState::Running => *self.history.lock().unwrap() = Some(started),
            _ => started.finish(self.end_of(&o)),
        }
    }

    /// How the job ended, for the history.
    fn end_of(&self, o: &Outcome) -> JobEnd {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sum = |f: fn(&Progress) -> &AtomicU64| {
            load(f(&self.progress))
                + (self.disk_progress.iter())
                    .map(|d| load(f(&d.progress)))
                    .sum::<u64>()
        };
        JobEnd {
            state: Some(match o.state {
                BackupState::Completed => JobState::Completed,
                BackupState::Cancelled => JobState::Cancelled,
                _ => JobState::Failed,
            }),
            bytes: Some(sum(|p| &p.processed)),
            written: Some(sum(|p| &p.written)),
            error: o.error.as_ref().map(|e| (e.code, e.message.clone())),
        }
    }

    /// End of the job's work: under the domain's lock, the record says
    /// completed only if `result` is Ok. Returns the outcome, the domain's
    /// lock, and, when the job failed, its job lock: the caller keeps both
    /// while it removes the failed backup (see `ops::files::discard_failed`),
    /// so that once a record says completed, or is gone, every file of the
    /// job is final, and a record that says running always has its job's
    /// lock file.
    pub(crate) fn settle(
        &self,
        catalog: &Catalog,
        record: &mut BackupRecord,
        result: Result<()>,
        lock: JobLock,
    ) -> (Result<()>, Option<DomainLock>, Option<JobLock>) {
        self.stop_publishing();
        let backup = catalog.backup_of(record);
        let guard = backup.domain().lock().ok();
        let result = result.and_then(|()| {
            record.state = BackupState::Completed;
            self.freeze_elapsed();
            record.stats = self.stats();
            backup.write_record(record)
        });
        self.remove_published();
        match result {
            Ok(()) => {
                drop(lock);
                (Ok(()), guard, None)
            }
            Err(e) => (Err(e), guard, Some(lock)),
        }
    }

    /// Stop the clock (once): the elapsed time recorded in the catalog and
    /// the one the job reports are then the same.
    pub(crate) fn freeze_elapsed(&self) {
        let mut o = self.outcome.lock().unwrap();
        o.elapsed_ms
            .get_or_insert(self.started.elapsed().as_millis() as u64);
    }

    fn end(&self, result: Result<()>) {
        self.freeze_elapsed();
        let mut o = self.outcome.lock().unwrap();
        match result {
            Ok(()) => o.state = BackupState::Completed,
            Err(e) => {
                o.state = if e.is(ErrorCode::OperationAborted) {
                    BackupState::Cancelled
                } else {
                    BackupState::Failed
                };
                o.error = Some(e);
            }
        }
        RUNNING.lock().unwrap().remove(&self.uuid);
        if let Some(h) = self.history.lock().unwrap().take() {
            h.finish(self.end_of(&o));
        }
        self.ended.notify_all();
    }

    /// The counters of the disk named `name`, else the job's own: a copy
    /// counted in either shows in the job's figures.
    pub(crate) fn disk(&self, name: &str) -> &Progress {
        self.disk_progress
            .iter()
            .find(|d| d.name == name)
            .map_or(&self.progress, |d| &d.progress)
    }

    /// The job's rate limit in bytes per second, if it has one.
    pub(crate) fn bandwidth(&self) -> Option<u64> {
        self.progress.limit.as_ref().map(|l| l.rate())
    }

    pub(crate) fn state(&self) -> BackupState {
        self.outcome.lock().unwrap().state
    }

    pub(crate) fn error(&self) -> Option<Error> {
        self.outcome.lock().unwrap().error.clone()
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        let o = self.outcome.lock().unwrap();
        o.elapsed_ms
            .unwrap_or_else(|| self.started.elapsed().as_millis() as u64)
    }

    pub(crate) fn stats(&self) -> JobStats {
        self.snapshot().0
    }

    /// The job's figures and each disk's bytes processed, all read once:
    /// the job's processed and written are what was counted on the job
    /// itself (by a copy that knows no disks) plus each disk's, so the
    /// figures of one reading always add up.
    pub(crate) fn snapshot(&self) -> (JobStats, Vec<u64>) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let disks: Vec<(u64, u64)> = (self.disk_progress.iter())
            .map(|d| (load(&d.progress.processed), load(&d.progress.written)))
            .collect();
        let stats = JobStats {
            total: load(&self.total),
            processed: load(&self.progress.processed) + disks.iter().map(|d| d.0).sum::<u64>(),
            written: load(&self.progress.written) + disks.iter().map(|d| d.1).sum::<u64>(),
            elapsed_ms: self.elapsed_ms(),
        };
        (stats, disks.into_iter().map(|d| d.0).collect())
    }

    /// Block until the job has ended; Ok if it completed, else its error.
    pub(crate) fn wait(&self) -> Result<()> {
        let mut o = self.outcome.lock().unwrap();
        while o.state == BackupState::Running {
            o = self.ended.wait(o).unwrap();
        }
        match o.state {
            BackupState::Completed => Ok(()),
            _ => Err(o
                .error
                .clone()
                .unwrap_or_else(|| Error::operation_failed("backup job failed"))),
        }
    }

    /// Ask the job to stop and wait until its partial data is gone.
    pub(crate) fn cancel(&self) -> Result<()> {
        if self.state() != BackupState::Running {
            return Err(Error::operation_invalid("the backup job has already ended"));
        }
        self.progress.cancel.store(true, Ordering::Relaxed);
        match self.wait() {
            Ok(()) => Err(Error::operation_invalid(
                "the backup job completed before it could be cancelled",
            )),
            Err(_) => Ok(()),
        }
    }
}

/// The figures a job publishes for other processes (see
/// `Job::publish_loop`): one JSON object, `{"v":1,"total":…,
/// "processed":…,"written":…,"elapsed":ms,"at":unix ms,"disks":[each
/// disk's bytes processed]}`.
fn published(stats: &JobStats, disks: &[u64]) -> String {
    serde_json::json!({
        "v": 1,
        "total": stats.total,
        "processed": stats.processed,
        "written": stats.written,
        "elapsed": stats.elapsed_ms,
        "at": unix_ms(),
        "disks": disks,
    })
    .to_string()
}

fn unix_ms() -> u64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    d.map_or(0, |d| d.as_millis() as u64)
}

/// The figures a job running in another process published last for the
/// backup `rec` (whose record says running): its stats (the elapsed time
/// brought up to now) and each disk's bytes processed. `None` when it
/// published nothing readable.
pub(crate) fn published_figures(
    catalog: &Catalog,
    rec: &BackupRecord,
) -> Option<(JobStats, Vec<u64>)> {
    let text = catalog.backup_of(rec).progress_file().read()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    if n("v") != Some(1) {
        return None;
    }
    let since = unix_ms().saturating_sub(n("at")?).min(3_600_000);
    let stats = JobStats {
        total: n("total")?,
        processed: n("processed")?,
        written: n("written")?,
        elapsed_ms: n("elapsed")?.saturating_add(since),
    };
    let disks = (v.get("disks")?.as_array()?.iter())
        .map(|d| d.as_u64().unwrap_or(0))
        .take(rec.disks.len())
        .collect();
    Some((stats, disks))
}

/// Shared counters of a copy, read by `GetParameters` while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes of the source read so far.
    pub processed: AtomicU64,
    /// Bytes written to the target so far.
    pub written: AtomicU64,
    /// Set by a canceller in this process.
    pub cancel: AtomicBool,
    /// A file whose existence asks the copy to stop: how another process
    /// cancels (one look per chunk).
    pub cancel_file: Option<CancelMarker>,
    /// The most bytes per second the copy reads from its source (see
    /// [`Progress::throttle`]); a disk's copy shares its job's.
    pub limit: Option<Arc<RateLimit>>,
    /// The job these counters are one disk of: a cancel asked there stops
    /// this copy, its rate limit paces it (the job adds up its disks'
    /// counters when read: `Job::snapshot`).
    pub job: Option<Arc<Progress>>,
}

/// How far behind its schedule a job's reads may fall and still catch up
/// at full speed: a reader held up (by its writer, by the CPU of a loaded
/// machine) loses no more than what it was held up beyond this. The
/// bucket starts empty, so a job never reads faster than its limit from
/// its start; over any span of time it reads at most the limit's worth
/// for that span plus this.
const JOB_BURST: Duration = Duration::from_millis(500);

/// How often a copy waiting for its rate limit looks for a cancel.
const CANCEL_POLL: Duration = Duration::from_millis(50);

impl Progress {
    /// Counters of a copy that reads at most `bandwidth` bytes per second,
    /// as a job's do (`None`: no limit).
    pub fn limited(bandwidth: Option<u64>) -> Progress {
        Progress {
            limit: bandwidth.map(|b| Arc::new(RateLimit::new(b, JOB_BURST))),
            ..Progress::default()
        }
    }

    /// The same on `clock`: a test's [`ManualClock`], on which the limit's
    /// waits take no time.
    pub fn limited_on(bandwidth: u64, clock: Arc<dyn Clock>) -> Progress {
        Progress {
            limit: Some(Arc::new(RateLimit::with_clock(bandwidth, JOB_BURST, clock))),
            ..Progress::default()
        }
    }

    /// Counters of one disk of `job`, sharing its rate limit and cancel.
    pub fn part_of(job: &Arc<Progress>) -> Progress {
        Progress {
            job: Some(Arc::clone(job)),
            ..Progress::default()
        }
    }

    /// Count `n` bytes of the source read.
    pub fn add_processed(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` bytes written to the target.
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    /// An `OperationAborted` error once a cancel was asked for.
    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed)
            || self
                .cancel_file
                .as_ref()
                .is_some_and(CancelMarker::requested)
        {
            return Err(Error::aborted("backup job cancelled"));
        }
        match &self.job {
            Some(job) => job.check_cancel(),
            None => Ok(()),
        }
    }

    /// The rate limit the copy reads under: its own, else its job's.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.limit
            .as_deref()
            .or_else(|| self.job.as_ref().and_then(|j| j.rate_limit()))
    }

    /// After reading `n` bytes of data from the source: wait until the
    /// rate limit allows them (at once without one). A cancel asked
    /// meanwhile ends the wait with its error.
    pub fn throttle(&self, n: u64) -> Result<()> {
        match self.rate_limit() {
            Some(limit) if !limit.take(n, CANCEL_POLL, || self.check_cancel().is_err()) => {
                self.check_cancel()
            }
            _ => Ok(()),
        }
    }
}

/// What a rate limit reads the time from and waits on: the system's
/// monotonic clock ([`SystemClock`]), or a clock that moves only when
/// waited on ([`ManualClock`]), with which a test sees the limit's own
/// schedule instead of a machine's speed.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The time now.
    fn now(&self) -> Instant;
    /// Return at `until` or later.
    fn sleep_until(&self, until: Instant);
}

/// The system's monotonic clock: `Instant::now` and `thread::sleep`.
#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, until: Instant) {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
}

/// A clock that stands still until someone waits on it (or `advance`s it):
/// a wait moves it to the wait's end at once, so it reads the latest time
/// anyone waited for. What it reads since it was made is the schedule of
/// the limit that waited on it, whatever the machine's speed.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    now: Mutex<Instant>,
    waits: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        let start = Instant::now();
        ManualClock {
            start,
            now: Mutex::new(start),
            waits: AtomicU64::new(0),
        }
    }
}

impl ManualClock {
    /// How far the clock moved since it was made.
    pub fn elapsed(&self) -> Duration {
        self.now() - self.start
    }

    /// How many waits moved it.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Move it `d` later: time that passes without anyone waiting.
    pub fn advance(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap()
    }

    fn sleep_until(&self, until: Instant) {
        let mut now = self.now.lock().unwrap();
        if until > *now {
            *now = until;
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A limit on bytes per second: a token bucket of `burst` worth of bytes,
/// starting empty, kept as the time at which the bytes taken so far are
/// paid for (the generic cell rate algorithm). Taking `n` bytes moves that
/// time `n / rate` later, from now at the earliest (a pause earns nothing
/// beyond `burst`), and waits until it is at most `burst` ahead of now.
/// Shared by threads: each waits for its own bytes, and together they move
/// at most `rate` bytes per second from the start, and over any span at
/// most `burst` worth more than the span's share.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    burst: Duration,
    paid: Mutex<Instant>,
    /// Bytes taken so far (those of a stopped wait too).
    taken: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl RateLimit {
    /// A limit of `rate` bytes per second (at least 1), whose bucket holds
    /// `burst` worth of bytes once a pause has filled it.
    pub fn new(rate: u64, burst: Duration) -> RateLimit {
        RateLimit::with_clock(rate, burst, Arc::new(SystemClock))
    }

    /// The same limit on another clock (a test's [`ManualClock`]).
    pub fn with_clock(rate: u64, burst: Duration, clock: Arc<dyn Clock>) -> RateLimit {
        RateLimit {
            rate: rate.max(1),
            burst,
            paid: Mutex::new(clock.now() + burst),
            taken: AtomicU64::new(0),
            clock,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Bytes taken so far: what the copies charged to the limit.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// How long `n` bytes take at the rate.
    fn cost(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Take `n` bytes and wait until they are paid for, looking at `stop`
    /// every `poll`. False when `stop` ended the wait: the bytes not yet
    /// paid for are then given back (a limit only delays; it never
    /// charges a wait that did not happen).
    pub fn take(&self, n: u64, poll: Duration, mut stop: impl FnMut() -> bool) -> bool {
        let due = {
            let mut paid = self.paid.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.clock.now();
            *paid = (*paid).max(now) + self.cost(n);
            self.taken.fetch_add(n, Ordering::Relaxed);
            paid.checked_sub(self.burst).unwrap_or(now)
        };
        loop {
            let now = self.clock.now();
            if now >= due {
                return true;
            }
            if stop() {
                let mut paid = self.paid.lock().unwrap_or_else(|p| p.into_inner());
                *paid = (*paid).min(now);
                return false;
            }
            self.clock.sleep_until(due.min(now + poll));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit of `rate` on a clock of its own.
    fn on_manual(rate: u64, burst: Duration) -> (RateLimit, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (RateLimit::with_clock(rate, burst, clock.clone()), clock)
    }

    #[test]
    fn a_rate_limit_paces_bytes_shared_by_threads() {
        // 8 MiB/s, no burst: 16 pieces of 256 KiB from 4 threads are paid
        // for after 0.5 s (the last piece once it is taken), and at every
        // return the bytes that went are no more than the time allows.
        let (limit, clock) = on_manual(8 << 20, Duration::ZERO);
        let went = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..4 {
                        assert!(limit.take(256 << 10, CANCEL_POLL, || false));
                        let sent = went.fetch_add(256 << 10, Ordering::SeqCst) + (256 << 10);
                        let allowed = clock.elapsed().as_nanos() * (8 << 20) / 1_000_000_000;
                        assert!(u128::from(sent) <= allowed, "{sent} > {allowed}");
                    }
                });
            }
        });
        assert_eq!(clock.elapsed(), Duration::from_millis(500));
        assert_eq!(limit.taken(), 4 << 20);
        // A burst: the bucket starts empty (the first 512 KiB wait their
        // 62.5 ms), and after a pause that much goes at once.
        let (limit, clock) = on_manual(8 << 20, Duration::from_millis(100));
        assert!(limit.take(512 << 10, CANCEL_POLL, || false));
        assert_eq!(clock.elapsed(), Duration::from_micros(62_500));
        clock.advance(Duration::from_millis(150));
        let (at, waits) = (clock.elapsed(), clock.waits());
        assert!(limit.take(512 << 10, CANCEL_POLL, || false));
        assert_eq!((clock.elapsed(), clock.waits()), (at, waits), "waited");
        // ... but no more than the burst: the next 512 KiB wait 62.5 ms
        // less the 100 ms - 62.5 ms left in the bucket.
        assert!(limit.take(512 << 10, CANCEL_POLL, || false));
        assert_eq!(clock.elapsed() - at, Duration::from_millis(25));
    }

    #[test]
    fn a_wait_ends_on_stop_and_gives_back_what_it_did_not_wait() {
        let (limit, clock) = on_manual(1 << 20, Duration::ZERO);
        let mut polls = 0;
        // 10 s worth: stopped at the third look, after two polls.
        assert!(!limit.take(10 << 20, Duration::from_millis(10), || {
            polls += 1;
            polls == 3
        }));
        assert_eq!(clock.elapsed(), Duration::from_millis(20));
        // Nothing owed: the next small take waits its own cost only.
        let at = clock.elapsed();
        assert!(limit.take(1 << 10, CANCEL_POLL, || false));
        assert_eq!(clock.elapsed() - at, Duration::from_nanos(976_562));
    }

    #[test]
    fn the_system_clock_waits_for_the_limit() {
        // On the real clock a wait is a sleep, at least as long as asked.
        let limit = RateLimit::new(8 << 20, Duration::ZERO);
        let t = Instant::now();
        assert!(limit.take(1 << 20, CANCEL_POLL, || false));
        assert!(
            t.elapsed() >= Duration::from_millis(125),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn figures_published_read_back_in_another_handle_and_go_when_settled() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let mut rec =
            BackupRecord::sample(Uuid::new_v4(), dir.path().join("t"), BackupState::Running);
        let backup = cat.backup_of(&rec);
        backup.write_record(&rec).unwrap();
        let plan = JobPlan {
            uuid: rec.uuid,
            domain: rec.domain_uuid,
            disks: rec.disks.iter().map(|d| (d.name.clone(), 1000)).collect(),
            incremental: false,
            bandwidth: None,
            publish: Some(backup.progress_file()),
        };
        let job = Job::new(plan, backup.cancel_marker());
        assert!(
            published_figures(&cat, &rec).is_none(),
            "nothing published yet"
        );
        job.disk_progress[0].progress.add_processed(300);
        job.progress.add_written(7);
        let (stats, disks) = job.snapshot();
        let file = backup.progress_file();
        file.publish(published(&stats, &disks).as_bytes()).unwrap();
        let (seen, per_disk) = published_figures(&cat, &rec).unwrap();
        assert_eq!(
            (seen.total, seen.processed, seen.written),
            (stats.total, 300, 7)
        );
        assert_eq!(per_disk[0], 300);
        assert!(seen.elapsed_ms >= stats.elapsed_ms);
        // Junk, or a link in its place, reads as nothing published.
        file.publish(b"{not json").unwrap();
        assert!(published_figures(&cat, &rec).is_none());
        let path = backup
            .domain()
            .path()
            .join(format!("{}.progress", rec.uuid));
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("t"), &path).unwrap();
        std::fs::write(dir.path().join("t"), published(&stats, &disks)).unwrap();
        assert!(published_figures(&cat, &rec).is_none());
        std::fs::remove_file(&path).unwrap();
        // Settling removes what was published and stops the publisher.
        file.publish(published(&stats, &disks).as_bytes()).unwrap();
        let lock = backup
            .lock_job(backup.domain().claim_job().unwrap())
            .unwrap();
        let (result, _, _) = job.settle(&cat, &mut rec, Ok(()), lock);
        result.unwrap();
        assert!(!path.exists());
        assert!(!*job.publishing.lock().unwrap());
    }

    #[test]
    fn disk_counters_share_the_job_limit_and_cancel() {
        let clock = Arc::new(ManualClock::default());
        let job = Arc::new(Progress::limited_on(1 << 20, clock.clone()));
        let (a, b) = (Progress::part_of(&job), Progress::part_of(&job));
        assert_eq!(a.rate_limit().map(RateLimit::rate), Some(1 << 20));
        // Both disks' bytes are charged to the job's limit.
        a.throttle(1 << 20).unwrap();
        b.throttle(1 << 20).unwrap();
        assert_eq!(job.rate_limit().map(RateLimit::taken), Some(2 << 20));
        assert_eq!(clock.elapsed(), Duration::from_secs(2));
        // A cancel on the job stops a disk's wait for the limit at its
        // first look: 100 s worth, no time waited.
        job.cancel.store(true, Ordering::Relaxed);
        assert!(b.check_cancel().is_err());
        let e = b.throttle(100 << 20).unwrap_err();
        assert!(e.is(ErrorCode::OperationAborted));
        assert_eq!(clock.elapsed(), Duration::from_secs(2));
        // No limit: no wait.
        assert!(Progress::default().throttle(u64::MAX).is_ok());
    }
}
