//! The catalog's entities as handles: a domain's folder (`DomainDir`) and
//! one backup in it (`BackupDir`). A handle names its files (through
//! `names`), opens its folder relative to the root's descriptor at each use
//! (`folder`), and takes its own locks (`locks`). Handles are cheap: the
//! root's descriptor is shared, nothing is opened until used.
//!
//! What a handle does is split by concern, each an `impl` block of its own:
//! this file (paths, folders, locks, job files, default target),
//! `records` (records and the summary), `delete` (the delete's steps),
//! `notes` (merge markers), `leftovers` (what recovery reads).

use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::OFlags;
use uuid::Uuid;

use super::folder::Folder;
use super::locks::{self, DomainHold, DomainJobLock, DomainLock, JobLock, JobStatus};
use super::names;
use crate::error::{Error, Result};
use crate::xml::backup::{BackupRecord, DefaultTarget};

/// A domain's folder, `<root>/<domain>/`, and what the catalog keeps
/// about the domain outside it (its job lock).
#[derive(Debug, Clone)]
pub struct DomainDir {
    root: Arc<Folder>,
    uuid: Uuid,
}

/// One backup: its files in its domain's folder.
#[derive(Debug, Clone)]
pub struct BackupDir {
    domain: DomainDir,
    uuid: Uuid,
}

/// Where another process asks a running job to stop: the file
/// `<domain>/<backup>.cancel`, looked for through the domain's folder
/// descriptor (a link swapped in for the folder asks nothing).
#[derive(Debug)]
pub struct CancelMarker {
    domain: DomainDir,
    name: String,
}

impl CancelMarker {
    /// Whether the marker is there.
    pub fn requested(&self) -> bool {
        matches!(self.domain.folder(), Ok(Some(d)) if d.stat(&self.name).is_ok())
    }
}

/// Where a running job publishes its figures for other processes: the
/// file `<domain>/<backup>.progress`, replaced whole (a temporary file
/// renamed over it) at each publication and removed when the job ends.
/// Its content is the job's business (`job`); a reader gets at most
/// `PROGRESS_LIMIT` bytes of a regular file of ours.
#[derive(Debug, Clone)]
pub struct ProgressFile {
    domain: DomainDir,
    uuid: Uuid,
}

/// The most bytes of a progress file read.
const PROGRESS_LIMIT: u64 = 1 << 20;

impl ProgressFile {
    /// Replace the published figures with `data`.
    pub fn publish(&self, data: &[u8]) -> Result<()> {
        let path = || self.domain.path().join(names::progress(&self.uuid));
        let dir = self.domain.folder()?.ok_or_else(|| {
            Error::io(
                "cannot publish",
                &path(),
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        let (name, tmp) = (names::progress(&self.uuid), names::progress_tmp(&self.uuid));
        dir.replace(&name, &tmp, data)
            .map_err(|e| Error::io("cannot publish", &path(), e))
    }

    /// The figures published last, if any.
    pub fn read(&self) -> Option<Vec<u8>> {
        let dir = self.domain.folder().ok()??;
        dir.read_own(&names::progress(&self.uuid), PROGRESS_LIMIT)
            .ok()
    }

    /// Remove the file (the job ended).
    pub fn remove(&self) {
        if let Ok(Some(dir)) = self.domain.folder() {
            crate::warn_if_err!(
                dir.remove_if_exists(&names::progress(&self.uuid)),
                "cannot remove the progress file of backup {}",
                self.uuid
            );
        }
    }
}

impl DomainDir {
    pub(super) fn new(root: Arc<Folder>, uuid: Uuid) -> DomainDir {
        DomainDir { root, uuid }
    }

    pub fn uuid(&self) -> &Uuid {
        &self.uuid
    }

    /// The catalog root's path (what names in the catalog are relative to).
    pub(super) fn root_path(&self) -> &std::path::Path {
        self.root.path()
    }

    /// The folder's path (for messages and tests: every use goes through
    /// the descriptors).
    pub fn path(&self) -> PathBuf {
        self.root.join(&names::domain(&self.uuid))
    }

    /// A backup of this domain.
    pub fn backup(&self, backup: &Uuid) -> BackupDir {
        BackupDir {
            domain: self.clone(),
            uuid: *backup,
        }
    }

    /// The backup `rec` describes, in the domain it names: a record's own
    /// word, as a record read from this folder is acted on.
    pub(super) fn backup_of(&self, rec: &BackupRecord) -> BackupDir {
        DomainDir::new(self.root.clone(), rec.domain_uuid).backup(&rec.uuid)
    }

    /// The folder, open and checked, if it exists.
    pub(super) fn folder(&self) -> Result<Option<Folder>> {
        self.root.sub(&names::domain(&self.uuid))
    }

    /// The folder, open and checked, created if missing.
    pub(super) fn make_folder(&self) -> Result<Folder> {
        self.root.make_sub(&names::domain(&self.uuid))
    }

    /// Refuse a folder another user could write to (see `secure`).
    pub fn check(&self) -> Result<()> {
        self.folder().map(drop)
    }

    /// Take the domain's lock (blocks while another thread or process
    /// holds it): see `locks::DomainLock`.
    pub fn lock(&self) -> Result<DomainLock> {
        DomainLock::take(&self.root, &self.uuid)
    }

    /// The domain's lock if nobody else holds it now.
    pub fn try_lock(&self) -> Option<DomainLock> {
        DomainLock::try_take(&self.root, &self.uuid)
    }

    /// Take the domain's job lock, or fail with `OPERATION_INVALID` if a
    /// job of any kind holds it (see `locks::DomainJobLock`; the whole
    /// one-job rule is `ops::claim`).
    pub fn claim_job(&self) -> Result<DomainJobLock> {
        let lock = DomainJobLock::take(&self.root, &self.uuid)?;
        ::log::debug!(
            "domain {}: job lock taken (.domain-locks/{})",
            self.uuid,
            self.uuid
        );
        Ok(lock)
    }

    /// Forget the domain's job lock file (the domain is undefined).
    pub(super) fn remove_job_lock(&self) {
        locks::remove_domain_job_lock(&self.root, &self.uuid);
    }

    /// A folder that holds nothing any more goes (its lock is the folder's
    /// flock: a waiter finds it gone and makes it anew).
    pub(super) fn drop_if_empty(&self) {
        let name = names::domain(&self.uuid);
        if let Ok(Some(dir)) = self.root.sub(&name) {
            crate::debug_if_err!(
                dir.remove_dir(names::MERGING),
                "the domain's merging folder stays"
            );
        }
        crate::debug_if_err!(self.root.remove_dir(&name), "domain folder {name} stays");
    }

    /// The persistent default target (`VIR_DOMAIN_AFFECT_CONFIG`).
    pub fn default_target(&self) -> Result<Option<DefaultTarget>> {
        let Some(dir) = self.folder()? else {
            return Ok(None);
        };
        let path = dir.join(names::DEFAULT_TARGET);
        match dir.read(names::DEFAULT_TARGET) {
            Ok(text) => {
                let text = String::from_utf8(text).map_err(|e| {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                    Error::io("cannot read", &path, e)
                })?;
                Ok(Some(DefaultTarget::parse(&text)?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &path, e)),
        }
    }

    /// Forget the persistent default target (none set: nothing to do).
    pub fn clear_default_target(&self) -> Result<()> {
        let _guard = self.lock()?;
        match self.folder()? {
            Some(dir) => dir.remove_if_exists(names::DEFAULT_TARGET),
            None => Ok(()),
        }
    }

    pub fn set_default_target(&self, target: &DefaultTarget) -> Result<()> {
        let xml = target.to_xml()?;
        // Every file of a domain's folder is written under its lock, so
        // that a sweep of temporary files under it finds none being written.
        let _guard = self.lock()?;
        self.make_folder()?
            .write_atomic(names::DEFAULT_TARGET, xml.as_bytes())
    }
}

impl BackupDir {
    pub fn uuid(&self) -> &Uuid {
        &self.uuid
    }

    pub fn domain(&self) -> &DomainDir {
        &self.domain
    }

    /// The record's path (for messages: every use goes through the
    /// domain folder's descriptor).
    pub fn record_path(&self) -> PathBuf {
        self.domain.path().join(names::record(&self.uuid))
    }

    /// Default folder for the backup's images.
    pub fn data_dir(&self) -> PathBuf {
        self.domain.path().join(names::data_dir(&self.uuid))
    }

    /// Folder of the backup's digest indexes, one file per disk.
    pub fn index_dir(&self) -> PathBuf {
        self.domain.path().join(names::index_dir(&self.uuid))
    }

    /// The digest index of one disk.
    pub fn index_path(&self, disk: &str) -> PathBuf {
        self.index_dir().join(names::index_file(disk))
    }

    /// Create the index folder of a new backup.
    pub fn create_index_dir(&self) -> Result<()> {
        self.domain
            .make_folder()?
            .make_sub(&names::index_dir(&self.uuid))
            .map(drop)
    }

    /// Take the job lock of a new backup, keeping `held` (the domain's
    /// claim) for the job's lifetime. Call with the domain's lock held.
    pub fn lock_job(&self, held: impl DomainHold + 'static) -> Result<JobLock> {
        let lock = JobLock::take(self.domain.make_folder()?, &self.uuid, Box::new(held))?;
        ::log::debug!(
            "backup {}: job lock file {} taken",
            self.uuid,
            names::job_lock(&self.uuid)
        );
        Ok(lock)
    }

    /// Whether the job of a running record is alive, died, or never left
    /// the evidence (its lock file) that it existed.
    pub fn job_status(&self) -> JobStatus {
        locks::job_status(self.domain.folder().ok().flatten().as_ref(), &self.uuid)
    }

    /// The cancel marker of the backup's job (see `CancelMarker`).
    pub fn cancel_marker(&self) -> CancelMarker {
        CancelMarker {
            domain: self.domain.clone(),
            name: names::cancel(&self.uuid),
        }
    }

    /// Where the backup's job publishes its figures (see `ProgressFile`).
    pub fn progress_file(&self) -> ProgressFile {
        ProgressFile {
            domain: self.domain.clone(),
            uuid: self.uuid,
        }
    }

    /// Ask the backup's running job, in whatever process, to stop.
    pub fn request_cancel(&self) -> Result<()> {
        let name = names::cancel(&self.uuid);
        let path = self.domain.path().join(&name);
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        self.domain
            .folder()?
            .ok_or_else(missing)
            .and_then(|d| d.open(&name, OFlags::WRONLY | OFlags::CREATE))
            .map(drop)
            .map_err(|e| Error::io("cannot create", &path, e))
    }

    /// Withdraw a cancel request (its job ended first).
    pub fn clear_cancel(&self) {
        if let Ok(Some(dir)) = self.domain.folder() {
            crate::warn_if_err!(
                dir.remove_if_exists(&names::cancel(&self.uuid)),
                "cannot remove the cancel marker of backup {}",
                self.uuid
            );
        }
    }

    /// Remove the job lock and cancel request of a job that ended.
    pub fn clear_job_files(&self) {
        if let Ok(Some(dir)) = self.domain.folder() {
            crate::warn_if_err!(
                dir.remove_if_exists(&names::job_lock(&self.uuid)),
                "cannot remove the job lock of backup {}",
                self.uuid
            );
            crate::warn_if_err!(
                dir.remove_if_exists(&names::cancel(&self.uuid)),
                "cannot remove the cancel marker of backup {}",
                self.uuid
            );
            crate::warn_if_err!(
                dir.remove_if_exists(&names::progress(&self.uuid)),
                "cannot remove the progress file of backup {}",
                self.uuid
            );
        }
    }
}
