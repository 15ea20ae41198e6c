//! The catalog's locks, one type each. Every one is an flock on a file or
//! folder under the root (`names`), so threads and processes exclude each
//! other alike, and a process that dies releases its locks.
//!
//! | lock | file | taken by | held for |
//! | --- | --- | --- | --- |
//! | [`CatalogLock`] | `<root>/.lock` | `Catalog::lock`, `try_lock` | a moment |
//! | [`DomainLock`] | `<root>/<domain>/` (the folder) | `DomainDir::lock`, `try_lock` | a change of the domain's files |
//! | [`DomainJobLock`] | `.domain-locks/<domain>` (+ `.foreground` shared) | `DomainDir::claim_job` | the domain's one job |
//! | [`JobLock`] | `<domain>/<backup>.lock` | `BackupDir::lock_job` | a backup's job |
//! | [`ForegroundProbe`] | `.domain-locks/.foreground`, `.waiting` | `Catalog::foreground_probe` | probed, never held |
//!
//! Which operation takes which (— : not taken; "try": skipped if held):
//!
//! | operation | catalog | domain | domain job | job |
//! | --- | --- | --- | --- | --- |
//! | CreateXML: claim the domain (`ops::claim`) | — | — | taken, until the job ends | — |
//! | CreateXML: register the backup | while the UUID is checked | held | held | made, until the job ends |
//! | a job settles (record completed, or removed) | — | held | held | held, then dropped |
//! | export of a domain | — | — | taken, until the export ends | — |
//! | export of a stored backup | — | while the record is checked | — | — |
//! | restore into the domain | — | — | taken, until it ends | — |
//! | instant restore | — | until the domain is defined | — | — |
//! | Delete (with its merges) | — | for the whole delete | — | — |
//! | write or remove a record, default target | — | held (re-entrant) | — | — |
//! | AbortJob of another process's job | — | waited for, once the record is gone | — | — |
//! | Undefine | — | held | — | — |
//! | recovery: a dead job's record | — | held | — | probed (`job_status`) |
//! | recovery: tidy a domain's folder, sweep merges | — | try | — | — |
//! | pins: add; sweep temporaries | held; try | — | — | — |
//! | housekeeping pacing (`engine::background`) | — | — | probes `.foreground` | — |
//!
//! Order: a domain job lock before the domain lock, the domain lock before
//! the catalog lock, never two domains at once. The catalog and domain
//! locks are re-entrant within a thread (a second flock on a new descriptor
//! would wait for itself); the others are taken once. A thread blocked on a
//! domain lock holds `.waiting` shared meanwhile: the holder may be a paced
//! merge, which then stops pacing.

use std::fs::File;
use std::path::PathBuf;

use rustix::fs::OFlags;
use uuid::Uuid;

use super::folder::Folder;
use super::names;
use super::secure;
use crate::error::{Error, Result};

thread_local! {
    /// The re-entrant locks this thread holds, with their depth.
    static HELD: std::cell::RefCell<std::collections::HashMap<PathBuf, u32>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A re-entrant flock on a name in the root: the first taker in a thread
/// holds the file, the others only count.
struct Flock {
    _file: Option<File>,
    path: PathBuf,
}

impl Drop for Flock {
    fn drop(&mut self) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(d) = h.get_mut(&self.path) {
                *d -= 1;
                if *d == 0 {
                    h.remove(&self.path);
                }
            }
        });
    }
}

/// Take the flock of `name` in `root`: a lock file, or (`dir`) a folder,
/// created if missing. A folder removed while we waited for it is made and
/// locked anew. `None` when `wait` is false and someone else holds it.
fn acquire(root: &Folder, name: &str, wait: bool, dir: bool) -> Result<Option<Flock>> {
    let path = root.join(name);
    let held = HELD.with(|h| h.borrow_mut().get_mut(&path).map(|d| *d += 1).is_some());
    if held {
        return Ok(Some(Flock { _file: None, path }));
    }
    let file = loop {
        let file = match dir {
            true => root.make_sub(name)?.into_file(),
            false => secure::open_lock(root, name)
                .map_err(|e| Error::io("cannot open catalog lock", &path, e))?,
        };
        if wait && file.try_lock().is_err() {
            // Whoever holds it may be a paced merge: it must not crawl
            // while a job a user waits for waits for it.
            let _waiting = hold_shared(root, names::WAITING);
            file.lock()
                .map_err(|e| Error::io("cannot lock catalog", &path, e))?;
        } else if !wait && file.try_lock().is_err() {
            return Ok(None);
        }
        if !dir || same_file(&file, root, name) {
            break file;
        }
    };
    HELD.with(|h| h.borrow_mut().insert(path.clone(), 1));
    Ok(Some(Flock {
        _file: Some(file),
        path,
    }))
}

/// The catalog lock: taken only for what spans domains (a new backup's
/// UUID, pins). Released on drop.
pub struct CatalogLock {
    _flock: Flock,
}

impl CatalogLock {
    /// Block until this thread holds it.
    pub(super) fn take(root: &Folder) -> Result<CatalogLock> {
        acquire(root, names::CATALOG_LOCK, true, false).map(|l| CatalogLock {
            _flock: l.expect("a blocking lock is always taken"),
        })
    }

    /// The lock if nobody else holds it now.
    pub(super) fn try_take(root: &Folder) -> Option<CatalogLock> {
        acquire(root, names::CATALOG_LOCK, false, false)
            .ok()
            .flatten()
            .map(|_flock| CatalogLock { _flock })
    }
}

/// A domain's lock, the flock of its folder: held by whatever changes the
/// domain's files (a job registering or settling, a delete and its merges,
/// recovery, every atomic write there). Released on drop.
pub struct DomainLock {
    _flock: Flock,
}

impl DomainLock {
    /// Block until this thread holds it.
    pub(super) fn take(root: &Folder, domain: &Uuid) -> Result<DomainLock> {
        acquire(root, &names::domain(domain), true, true).map(|l| DomainLock {
            _flock: l.expect("a blocking lock is always taken"),
        })
    }

    /// The lock if nobody else holds it now.
    pub(super) fn try_take(root: &Folder, domain: &Uuid) -> Option<DomainLock> {
        acquire(root, &names::domain(domain), false, true)
            .ok()
            .flatten()
            .map(|_flock| DomainLock { _flock })
    }
}

/// One job per domain (backup, export or restore), across threads and
/// processes: an flock on `<root>/.domain-locks/<domain>`, taken with
/// `try_lock` (each taker opens its own descriptor, so threads of one
/// process exclude each other too) and released when the job ends. The
/// file is never removed while the domain is defined: a lock taken on a
/// file another taker just unlinked would not exclude anyone. It sits
/// outside the domain's folder, which a refused request leaves untouched.
/// The whole rule (this lock, the in-process registry, libvirt's job) is
/// `ops::claim`.
#[derive(Debug)]
pub struct DomainJobLock {
    file: File,
    /// Shared flock on `.domain-locks/.foreground` (see `background::pace`).
    foreground: Option<File>,
}

impl DomainJobLock {
    /// Take it, or fail with `OPERATION_INVALID` if a job of any kind
    /// holds it, in this process or another.
    pub(super) fn take(root: &Folder, domain: &Uuid) -> Result<DomainJobLock> {
        let dir = root.make_sub(names::DOMAIN_LOCKS)?;
        let name = names::domain(domain);
        let file = secure::open_lock(&dir, &name)
            .map_err(|e| Error::io("cannot open domain job lock", &dir.join(&name), e))?;
        file.try_lock()
            .map_err(|_| Error::operation_invalid("the domain already has a backup job running"))?;
        let foreground = hold_shared(root, names::FOREGROUND);
        Ok(DomainJobLock { file, foreground })
    }

    /// Release it as a killed process would (see `JobLock::leave_as_killed`).
    fn release(mut self) {
        let _ = self.file.unlock();
        drop(self.foreground.take());
    }
}

/// Forget a domain's job lock file (the domain is gone).
pub(super) fn remove_domain_job_lock(root: &Folder, domain: &Uuid) {
    if let Ok(Some(locks)) = root.sub(names::DOMAIN_LOCKS) {
        crate::warn_if_err!(
            locks.remove_if_exists(&names::domain(domain)),
            "cannot remove the job lock of domain {domain}"
        );
    }
}

/// What keeps a domain's one job claimed while a backup's job runs: its
/// `DomainJobLock`, or whatever holds one (`ops::claim::DomainClaim`).
/// Dropped with the backup's `JobLock`, after its file is gone.
pub trait DomainHold: Send {
    /// Release everything now, as a killed process would.
    fn release(self: Box<Self>);
}

impl DomainHold for DomainJobLock {
    fn release(self: Box<Self>) {
        DomainJobLock::release(*self)
    }
}

/// The lock a running job holds on its backup. Dropping it removes the lock
/// file and any cancel request, then releases the lock (and the domain's
/// claim). The file is the evidence that a job existed: a `running` record
/// whose lock file is there but unlocked belongs to a job that died.
pub struct JobLock {
    file: File,
    /// The domain's folder, and the backup's UUID.
    dir: Folder,
    backup: Uuid,
    held: Option<Box<dyn DomainHold>>,
    /// Set by `abandon`: the lock file stays.
    keep_file: bool,
}

impl JobLock {
    /// Take the job lock of `backup` in its domain's folder `dir`, keeping
    /// `held` for the job's lifetime. Domain lock held.
    pub(super) fn take(dir: Folder, backup: &Uuid, held: Box<dyn DomainHold>) -> Result<JobLock> {
        let name = names::job_lock(backup);
        let file = secure::open_lock(&dir, &name)
            .map_err(|e| Error::io("cannot create job lock", &dir.join(&name), e))?;
        file.try_lock().map_err(|_| {
            Error::operation_invalid(format!("backup '{backup}' already has a job"))
        })?;
        Ok(JobLock {
            file,
            dir,
            backup: *backup,
            held: Some(held),
            keep_file: false,
        })
    }

    /// What a killed process leaves of its locks (for tests of recovery):
    /// the job's lock file, unlocked, and the domain's claim released.
    #[doc(hidden)]
    pub fn leave_as_killed(mut self) {
        let _ = self.file.unlock();
        if let Some(held) = self.held.take() {
            held.release();
        }
        std::mem::forget(self);
    }

    /// The job failed and its record could not be removed (a full disk:
    /// removing a record writes the summary): release the locks but keep
    /// the lock file, unlocked, as a killed job would. The next reader
    /// then finds a dead job's record and settles it (`ops::recovery`);
    /// without the file the record would read as damaged, and every List
    /// and Delete of the domain would fail on it.
    pub fn abandon(mut self) {
        self.keep_file = true;
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if !self.keep_file {
            crate::warn_if_err!(
                self.dir.remove_if_exists(&names::cancel(&self.backup)),
                "cannot remove the cancel marker of backup {}",
                self.backup
            );
            crate::warn_if_err!(
                self.dir.remove_if_exists(&names::job_lock(&self.backup)),
                "cannot remove the job lock of backup {}",
                self.backup
            );
        }
        let _ = self.file.unlock();
        // The domain's claim goes after the job's files.
        drop(self.held.take());
    }
}

/// Whether the job of a `running` record is alive, died, or never left the
/// evidence (its lock file) that it existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Alive,
    Dead,
    NoEvidence,
}

/// The status of `backup`'s job, from its lock file in the domain's folder.
pub(super) fn job_status(dir: Option<&Folder>, backup: &Uuid) -> JobStatus {
    let Some(dir) = dir else {
        return JobStatus::NoEvidence;
    };
    match dir.open(&names::job_lock(backup), OFlags::WRONLY) {
        Err(_) => JobStatus::NoEvidence,
        Ok(f) => match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                JobStatus::Dead
            }
            Err(_) => JobStatus::Alive,
        },
    }
}

/// Whether the job lock of `backup` is held by a live job.
pub(super) fn job_alive(dir: &Folder, backup: &Uuid) -> bool {
    dir.open(&names::job_lock(backup), OFlags::RDONLY | OFlags::NONBLOCK)
        .is_ok_and(|f| f.try_lock().is_err())
}

/// What housekeeping probes (see `background::pace`): `foreground` is held
/// shared while a job runs on any domain of the catalog, in any process;
/// `waiting` while anyone waits for a domain's lock (which a merge may hold).
pub struct ForegroundProbe {
    pub foreground: File,
    pub waiting: File,
}

impl ForegroundProbe {
    pub(super) fn open(root: &Folder) -> Option<ForegroundProbe> {
        let dir = root.make_sub(names::DOMAIN_LOCKS).ok()?;
        let open = |name| secure::open_lock(&dir, name).ok();
        Some(ForegroundProbe {
            foreground: open(names::FOREGROUND)?,
            waiting: open(names::WAITING)?,
        })
    }
}

/// A shared flock on `.domain-locks/<name>` (`FOREGROUND`, `WAITING`).
/// Only pacing hangs on these: one that cannot be had is no error. A
/// probe holds one exclusively for two syscalls, so this waits little.
fn hold_shared(root: &Folder, name: &str) -> Option<File> {
    let dir = root.make_sub(names::DOMAIN_LOCKS).ok()?;
    secure::open_lock(&dir, name)
        .ok()
        .filter(|f| f.lock_shared().is_ok())
}

/// Whether `name` in `dir` still is the open `file` (not a folder removed
/// and made anew while we waited for its lock).
pub(crate) fn same_file(file: &File, dir: &Folder, name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), dir.stat(name)) {
        (Ok(a), Ok(b)) => a.dev() == b.st_dev && a.ino() == b.st_ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &std::path::Path) -> Folder {
        secure::prepare_root(&dir.join("cat")).unwrap()
    }

    fn busy(f: &File) -> bool {
        match f.try_lock() {
            Ok(()) => f.unlock().map(|()| false).unwrap(),
            Err(_) => true,
        }
    }

    #[test]
    fn one_domain_job_lock_at_a_time_across_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let dom = Uuid::new_v4();
        let held = DomainJobLock::take(&root, &dom).unwrap();
        let e = DomainJobLock::take(&root, &dom).unwrap_err();
        assert!(e.message.contains("already has a backup job"));
        assert!(DomainJobLock::take(&root, &Uuid::new_v4()).is_ok());
        drop(held);
        DomainJobLock::take(&root, &dom).unwrap();
    }

    #[test]
    fn a_domain_job_shows_housekeeping_that_a_user_waits() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let probe = ForegroundProbe::open(&root).unwrap();
        assert!(!busy(&probe.foreground));
        let a = DomainJobLock::take(&root, &Uuid::new_v4()).unwrap();
        let other = Folder::open_root(root.path()).unwrap();
        let b = DomainJobLock::take(&other, &Uuid::new_v4());
        assert!(busy(&probe.foreground));
        drop(a);
        assert!(busy(&probe.foreground), "another job still runs");
        drop(b);
        assert!(!busy(&probe.foreground));
    }

    #[test]
    fn a_thread_blocked_on_a_domain_lock_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let probe = ForegroundProbe::open(&root).unwrap();
        let dom = Uuid::new_v4();
        let held = DomainLock::take(&root, &dom).unwrap();
        assert!(!busy(&probe.waiting), "nobody waits yet");
        let path = root.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let root = Folder::open_root(&path).unwrap();
            let _l = DomainLock::take(&root, &dom).unwrap();
        });
        let t = std::time::Instant::now();
        while !busy(&probe.waiting) {
            assert!(t.elapsed().as_secs() < 10, "the waiter never showed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        waiter.join().unwrap();
        assert!(
            !busy(&probe.waiting),
            "the waiter got the lock and stopped waiting"
        );
    }

    #[test]
    fn catalog_lock_is_reentrant_in_a_thread_and_exclusive_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::sync::Arc::new(root(dir.path()));
        let outer = CatalogLock::take(&root).unwrap();
        let inner = CatalogLock::take(&root).unwrap();
        let root2 = root.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _g = CatalogLock::take(&root2).unwrap();
            tx.send(()).unwrap();
        });
        drop(inner);
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        drop(outer);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn domain_locks_exclude_the_same_domain_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::sync::Arc::new(root(dir.path()));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let held = DomainLock::take(&root, &a).unwrap();
        let again = DomainLock::take(&root, &a).unwrap(); // re-entrant in this thread
        let root2 = root.clone();
        std::thread::spawn(move || {
            assert!(DomainLock::try_take(&root2, &a).is_none());
            assert!(DomainLock::try_take(&root2, &b).is_some());
            // The catalog lock is free too.
            drop(CatalogLock::take(&root2).unwrap());
        })
        .join()
        .unwrap();
        drop(again);
        drop(held);
        let root3 = root.clone();
        std::thread::spawn(move || assert!(DomainLock::try_take(&root3, &a).is_some()))
            .join()
            .unwrap();
    }

    #[test]
    fn an_abandoned_job_lock_keeps_its_file_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let dom = Uuid::new_v4();
        let backup = Uuid::new_v4();
        let held = Box::new(DomainJobLock::take(&root, &dom).unwrap());
        let lock =
            JobLock::take(root.make_sub(&names::domain(&dom)).unwrap(), &backup, held).unwrap();
        let folder = root.sub(&names::domain(&dom)).unwrap();
        assert_eq!(job_status(folder.as_ref(), &backup), JobStatus::Alive);
        lock.abandon();
        assert_eq!(job_status(folder.as_ref(), &backup), JobStatus::Dead);
        // The domain's job lock went with it.
        assert!(DomainJobLock::take(&root, &dom).is_ok());
    }
}
