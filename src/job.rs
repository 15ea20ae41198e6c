//! The job runner: one background thread per backup job, with progress
//! counters, cancellation and a final state that waiters can block on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Instant;

use uuid::Uuid;

use crate::error::{Error, ErrorCode, Result};
use crate::store::catalog::Catalog;
use crate::store::domain::CancelMarker;
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
    pub progress: Progress,
    pub total: AtomicU64,
    pub disks: u32,
    pub incremental: bool,
    started: Instant,
    outcome: Mutex<Outcome>,
    ended: Condvar,
}

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

impl Job {
    /// A new job; `cancel` appearing asks it to stop (see [`Progress`]).
    pub(crate) fn new(
        uuid: Uuid,
        domain: Uuid,
        total: u64,
        disks: u32,
        incremental: bool,
        cancel: CancelMarker,
    ) -> Arc<Job> {
        Arc::new(Job {
            uuid,
            domain,
            progress: Progress {
                cancel_file: Some(cancel),
                ..Progress::default()
            },
            total: AtomicU64::new(total),
            disks,
            incremental,
            started: Instant::now(),
            outcome: Mutex::new(Outcome {
                state: BackupState::Running,
                error: None,
                elapsed_ms: None,
            }),
            ended: Condvar::new(),
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
        Ok(())
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
        let backup = catalog.backup_of(record);
        let guard = backup.domain().lock().ok();
        let result = result.and_then(|()| {
            record.state = BackupState::Completed;
            self.freeze_elapsed();
            record.stats = self.stats();
            backup.write_record(record)
        });
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
        self.ended.notify_all();
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
        JobStats {
            total: self.total.load(Ordering::Relaxed),
            processed: self.progress.processed.load(Ordering::Relaxed),
            written: self.progress.written.load(Ordering::Relaxed),
            elapsed_ms: self.elapsed_ms(),
        }
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
}

impl Progress {
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
        Ok(())
    }
}
