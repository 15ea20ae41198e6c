//! The backup catalog on disk.
//!
//! Layout under the root (`LIBVIRT_BACKUP_DIR`, see API.md):
//! - `.lock`                      flock taken by every writer (threads and processes)
//! - `<domain>/<backup>.xml`      one record per backup, replaced atomically
//! - `<domain>/<backup>.lock`     flock held by the job while it copies; the
//!   job creates it before its record, so a `running` record without it was
//!   never a job's (a damaged record, reported, never cleaned up)
//! - `.domain-locks/<domain>`      flock held by the domain's one job (backup,
//!   export or restore) for its lifetime
//! - `<domain>/<backup>.deleting`  the record of a backup being deleted: renamed
//!   before any data goes, removed last; `ops::recovery` finishes it
//! - `<domain>/<backup>/`         default folder for the backup's images
//! - `.restoring-<id>`           files a running restore writes from scratch
//!   (locked by it; removed by the next process if it died)
//! - `<domain>/default-target.xml` the persistent default target (CONFIG)
//! - `<domain>/summary`           what listing needs of each record (see
//!   `summary`), kept with the records under the domain's lock
//! - `<domain>/`                  its flock is the domain's lock
//! - `<domain>/merging/<backup>.<disk>` the temporary file of a merge into
//!   that backup's disk, while it runs
//!
//! A record that cannot be read is an error naming the file, never skipped.
//! The catalog only stores and locks: a record in state `running` whose job
//! lock can be taken belongs to a process that died, and what becomes of it
//! (and of cut-short merges and restores) is decided in `ops::recovery`.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::summary::{self, Entry};
use super::secure;
use crate::error::{Error, Result};
use crate::xml::backup::{BackupRecord, DefaultTarget};

const DEFAULT_TARGET_FILE: &str = "default-target.xml";
/// Folder (in a domain's) of the markers of running merges.
const MERGING: &str = "merging";

#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
}

/// A writer lock of the catalog: the catalog-wide one (taken only to
/// register a backup's UUID) or a domain's (everything that changes the
/// domain's records). Released on drop. Re-entrant within a thread (a
/// second flock on a new descriptor would wait for itself). Order: a
/// domain's lock before the catalog-wide one, never two domains at once.
pub struct CatalogLock {
    _file: Option<File>,
    path: PathBuf,
}

thread_local! {
    /// The locks this thread holds, with their depth.
    static HELD: std::cell::RefCell<std::collections::HashMap<PathBuf, u32>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl Drop for CatalogLock {
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

/// Name prefix (in the root) of the notes of restores writing new files.
const RESTORING: &str = ".restoring-";

/// The first line of a note of files a domain is defined on (paths are
/// absolute, so no path line starts like this).
pub const NOTE_DOMAIN: &str = "domain ";

/// The note of a restore's new files, locked while the restore writes them.
pub struct StagedFiles {
    _file: File,
    path: PathBuf,
}

impl StagedFiles {
    /// The files are complete (or removed): forget the note.
    pub fn done(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The lock a running job holds on its backup. Dropping it removes the lock
/// file and any cancel request, then releases the lock (and the domain's).
/// The file is the evidence that a job existed: a `running` record whose
/// lock file is there but unlocked belongs to a job that died.
pub struct JobLock {
    file: File,
    path: PathBuf,
    domain: DomainLock,
}

impl JobLock {
    /// What a killed process leaves of its locks (for tests of recovery):
    /// the job's lock file, unlocked, and the domain's lock released.
    #[doc(hidden)]
    pub fn leave_as_killed(self) {
        let _ = self.file.unlock();
        let _ = self.domain.file.unlock();
        std::mem::forget(self);
    }
}

/// One job per domain (backup, export or restore), across threads and
/// processes: an flock on `<root>/.domain-locks/<domain>`, taken with
/// `try_lock` (each taker opens its own descriptor, so threads of one
/// process exclude each other too) and released when the job ends. The
/// file is never removed while the domain is defined: a lock taken on a
/// file another taker just unlinked would not exclude anyone. It sits
/// outside the domain's folder, which a refused request leaves untouched.
#[derive(Debug)]
pub struct DomainLock {
    file: File,
}

/// Folder (in the root) of the per-domain job locks, one file per domain.
const DOMAIN_LOCKS: &str = ".domain-locks";

/// Extension of a record whose backup is being deleted.
const DELETING: &str = "deleting";

/// Last line of a complete restore note.
pub const NOTE_END: &[u8] = b"end\n";

/// Whether the job of a `running` record is alive, died, or never left the
/// evidence (its lock file) that it existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Alive,
    Dead,
    NoEvidence,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path.with_extension("cancel"));
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Take the flock of `path`: a lock file, or (`dir`) a folder, created if
/// missing. A folder removed while we waited for it is made and locked anew.
fn acquire(path: PathBuf, wait: bool, dir: bool) -> Result<Option<CatalogLock>> {
    let held = HELD.with(|h| h.borrow_mut().get_mut(&path).map(|d| *d += 1).is_some());
    if held {
        return Ok(Some(CatalogLock { _file: None, path }));
    }
    let file = loop {
        let file = match dir {
            true => make_private_dir(&path).and_then(|()| {
                secure::options()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_DIRECTORY)
                    .open(&path)
                    .map_err(|e| Error::io("cannot open catalog folder", &path, e))
            })?,
            false => secure::open_lock(&path)
                .map_err(|e| Error::io("cannot open catalog lock", &path, e))?,
        };
        if wait {
            file.lock()
                .map_err(|e| Error::io("cannot lock catalog", &path, e))?;
        } else if file.try_lock().is_err() {
            return Ok(None);
        }
        if !dir || same_file(&file, &path) {
            break file;
        }
    };
    HELD.with(|h| h.borrow_mut().insert(path.clone(), 1));
    Ok(Some(CatalogLock {
        _file: Some(file),
        path,
    }))
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIBVIRT_BACKUP_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/libvirt/backup");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(x).join("libvirt-backup");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/libvirt-backup")
}

/// Write `data` to `path` so that a crash leaves the old or the new content:
/// temporary file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal("catalog path has no folder"))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let write = || -> std::io::Result<()> {
        // A stale temporary file (or a link planted at its name) goes
        // first: the new one is created, never opened through a link.
        let _ = fs::remove_file(&tmp);
        let mut f = secure::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io("cannot write catalog file", path, e)
    })
}

/// Create a catalog folder (and its parents) readable by its owner only:
/// records hold domain definitions with their secrets.
fn make_private_dir(dir: &Path) -> Result<()> {
    secure::make_dir(dir)
}

/// Make a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Catalog {
    /// The catalog at the configured root, created if missing.
    pub fn open() -> Result<Catalog> {
        Catalog::at(default_root())
    }

    pub fn at(root: PathBuf) -> Result<Catalog> {
        secure::prepare_root(&root)?;
        Ok(Catalog { root })
    }

    /// A new private folder `<root>/<name>` (an export's scratch files).
    pub fn private_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        make_private_dir(&dir)?;
        Ok(dir)
    }

    /// Note the files a restore is about to write from scratch; until
    /// `StagedFiles::done`, a process that finds the note unlocked (its
    /// restore died) removes them.
    pub fn stage_files(&self, paths: &[&Path]) -> Result<StagedFiles> {
        self.stage(None, paths)
    }

    /// `stage_files` for files a domain is about to be defined on: the
    /// note also names the domain (first line `domain <uuid> <uri>`), so
    /// that whoever sweeps a dead restore's note keeps the files when the
    /// domain was defined on them before the process died.
    pub fn stage_files_of_domain(
        &self,
        paths: &[&Path],
        domain: &Uuid,
        uri: &str,
    ) -> Result<StagedFiles> {
        self.stage(Some(format!("{NOTE_DOMAIN}{domain} {uri}")), paths)
    }

    fn stage(&self, head: Option<String>, paths: &[&Path]) -> Result<StagedFiles> {
        let path = self.root.join(format!("{RESTORING}{}", Uuid::new_v4()));
        let mut file = secure::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("cannot create", &path, e))?;
        let _ = file.lock();
        let mut text = Vec::new();
        if let Some(h) = head {
            text.extend_from_slice(h.as_bytes());
            text.push(b'\n');
        }
        for p in paths {
            text.extend_from_slice(p.as_os_str().as_encoded_bytes());
            text.push(b'\n');
        }
        // The end mark: a note cut short by a crash while it was written
        // (a path truncated into another file's name) is never acted on.
        text.extend_from_slice(NOTE_END);
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(StagedFiles { _file: file, path })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn domain_dir(&self, domain: &Uuid) -> PathBuf {
        self.root.join(domain.to_string())
    }

    fn record_path(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(format!("{backup}.xml"))
    }

    fn job_lock_path(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(format!("{backup}.lock"))
    }

    /// The marker another process creates to cancel a running job.
    pub fn cancel_path(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(format!("{backup}.cancel"))
    }

    /// Ask the job of a running backup, in whatever process, to stop.
    pub fn request_cancel(&self, rec: &BackupRecord) -> Result<()> {
        let path = self.cancel_path(&rec.domain_uuid, &rec.uuid);
        secure::check_dir(&self.domain_dir(&rec.domain_uuid))?;
        secure::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(|_| ())
            .map_err(|e| Error::io("cannot create", &path, e))
    }

    /// Folder of a backup's digest indexes, one file per disk.
    pub fn index_dir(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(format!("{backup}.index"))
    }

    /// The digest index of one disk of a backup.
    pub fn index_path(&self, domain: &Uuid, backup: &Uuid, disk: &str) -> PathBuf {
        self.index_dir(domain, backup).join(format!("{disk}.b3"))
    }

    /// Create the index folder of a new backup.
    pub fn create_index_dir(&self, domain: &Uuid, backup: &Uuid) -> Result<()> {
        make_private_dir(&self.index_dir(domain, backup))
    }

    /// Default folder for a backup's images.
    pub fn data_dir(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(backup.to_string())
    }

    /// Take the catalog-wide lock (blocks while another thread or process
    /// holds it). Only for what spans domains: a new backup's UUID.
    pub fn lock(&self) -> Result<CatalogLock> {
        acquire(self.root.join(".lock"), true, false)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// Take a domain's lock (the flock of its folder): held by whatever
    /// changes the domain's records (a job registering or settling, a
    /// delete and its merges, recovery).
    pub fn lock_domain(&self, domain: &Uuid) -> Result<CatalogLock> {
        acquire(self.domain_dir(domain), true, true)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// A domain's lock if nobody else holds it now, else `None`.
    pub fn try_lock_domain(&self, domain: &Uuid) -> Option<CatalogLock> {
        acquire(self.domain_dir(domain), false, true).ok().flatten()
    }

    /// Note, before a merge writes `tmp` for a disk of `child`, where that
    /// temporary file is: if the process dies, the next reader removes it.
    pub fn mark_merge(&self, child: &BackupRecord, disk: &str, tmp: &Path) -> Result<()> {
        make_private_dir(&self.merge_dir(&child.domain_uuid))?;
        let path = self.merge_marker(child, disk);
        write_atomic(&path, tmp.as_os_str().as_encoded_bytes())
    }

    /// The merge of that disk ended (its file renamed, or removed).
    pub fn unmark_merge(&self, child: &BackupRecord, disk: &str) {
        let _ = fs::remove_file(self.merge_marker(child, disk));
    }

    /// Markers live in a folder of their own: looking for them on every
    /// listing must not read a folder of thousands of records.
    fn merge_marker(&self, child: &BackupRecord, disk: &str) -> PathBuf {
        self.merge_dir(&child.domain_uuid)
            .join(format!("{}.{disk}", child.uuid))
    }

    fn merge_dir(&self, domain: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(MERGING)
    }

    /// Take the job lock of `domain`, or fail with `OPERATION_INVALID` if
    /// a job of any kind holds it, in this process or another.
    pub fn lock_domain_job(&self, domain: &Uuid) -> Result<DomainLock> {
        let dir = self.root.join(DOMAIN_LOCKS);
        make_private_dir(&dir)?;
        let path = dir.join(domain.to_string());
        let file = secure::open_lock(&path)
            .map_err(|e| Error::io("cannot open domain job lock", &path, e))?;
        file.try_lock()
            .map_err(|_| Error::operation_invalid("the domain already has a backup job running"))?;
        Ok(DomainLock { file })
    }

    /// Take the job lock of a new backup, keeping the domain's job lock for
    /// the job's lifetime. Call with the domain's catalog lock held.
    pub fn lock_job(&self, domain: &Uuid, backup: &Uuid, held: DomainLock) -> Result<JobLock> {
        let dir = self.domain_dir(domain);
        make_private_dir(&dir)?;
        let path = self.job_lock_path(domain, backup);
        let file =
            secure::open_lock(&path).map_err(|e| Error::io("cannot create job lock", &path, e))?;
        file.try_lock().map_err(|_| {
            Error::operation_invalid(format!("backup '{backup}' already has a job"))
        })?;
        Ok(JobLock {
            file,
            path,
            domain: held,
        })
    }

    /// Whether the job of a running record is alive, died, or never left
    /// the evidence (its lock file) that it existed.
    pub fn job_status(&self, rec: &BackupRecord) -> JobStatus {
        let path = self.job_lock_path(&rec.domain_uuid, &rec.uuid);
        match secure::options().write(true).open(&path) {
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

    /// The error for a record of this catalog that cannot be trusted.
    pub fn damaged(&self, rec: &BackupRecord, why: &str) -> Error {
        damaged(&self.record_path(&rec.domain_uuid, &rec.uuid), why)
    }

    /// Write a backup's record, and note it in the domain's summary.
    pub fn write_record(&self, rec: &BackupRecord) -> Result<()> {
        let dir = self.domain_dir(&rec.domain_uuid);
        make_private_dir(&dir)?;
        let _guard = self.lock_domain(&rec.domain_uuid)?;
        self.note_pending(&rec.domain_uuid, &rec.uuid)?;
        write_atomic(
            &self.record_path(&rec.domain_uuid, &rec.uuid),
            rec.to_catalog_xml().as_bytes(),
        )?;
        summary::note_written(&dir, &Entry::of(rec))?;
        self.compact_summary(&rec.domain_uuid)
    }

    /// Note in the summary that a record is about to change, writing the
    /// summary first if it is missing (the domain's first backup, or a
    /// catalog from before summaries). Domain lock held.
    fn note_pending(&self, domain: &Uuid, backup: &Uuid) -> Result<()> {
        let dir = self.domain_dir(domain);
        if !summary::note_pending(&dir, backup)? {
            self.write_summary(domain, true)?;
            summary::note_pending(&dir, backup)?;
        }
        Ok(())
    }

    /// Remove the summary of a domain left without records (a refused or
    /// failed first backup leaves nothing behind). Only a short summary can
    /// be empty, so a long one is not read. Domain lock held.
    fn drop_empty_summary(&self, domain: &Uuid) -> Result<()> {
        let path = summary::path(&self.domain_dir(domain));
        if fs::metadata(&path).map_or(true, |m| m.len() > 4096) {
            return Ok(());
        }
        let empty = match summary::read(&self.domain_dir(domain))? {
            Some(r) => self.settle_pending(domain, r)?.is_empty(),
            None => false,
        };
        match empty {
            true => remove_if_exists(&path),
            false => Ok(()),
        }
    }

    /// Rewrite a long summary log as its entries. Domain lock held.
    fn compact_summary(&self, domain: &Uuid) -> Result<()> {
        let dir = self.domain_dir(domain);
        if !summary::wants_compaction(&dir) {
            return Ok(());
        }
        match summary::read(&dir)? {
            Some(r) => {
                let entries = self.settle_pending(domain, r)?;
                write_atomic(
                    &summary::path(&dir),
                    summary::render(entries.values()).as_bytes(),
                )
            }
            None => self.write_summary(domain, true).map(drop),
        }
    }

    /// Forget a backup; its data files stay.
    pub fn remove_record(&self, rec: &BackupRecord) -> Result<()> {
        let dir = self.domain_dir(&rec.domain_uuid);
        let _guard = self.lock_domain(&rec.domain_uuid)?;
        self.note_pending(&rec.domain_uuid, &rec.uuid)?;
        let path = self.record_path(&rec.domain_uuid, &rec.uuid);
        remove_if_exists(&path)?;
        sync_dir(&dir);
        summary::note_removed(&dir, &rec.uuid)?;
        self.compact_summary(&rec.domain_uuid)?;
        self.drop_empty_summary(&rec.domain_uuid)?;
        // The indexes go after the record: an index without a record is
        // never read, a record without its index would be a broken parent.
        let index = self.index_dir(&rec.domain_uuid, &rec.uuid);
        match fs::remove_dir_all(&index) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("cannot remove digest index", &index, e));
            }
            _ => {}
        }
        self.drop_domain_dir_if_empty(&rec.domain_uuid);
        Ok(())
    }

    /// Remove a backup in crash order (`mark_deleting`, `remove_data`,
    /// `finish_delete`): a failure or a crash at any point leaves either
    /// the listed backup with all its data, or a `.deleting` note that the
    /// next process finishes (`ops::recovery`), never a listed backup
    /// without its data.
    pub fn remove_with_data(&self, rec: &BackupRecord) -> Result<()> {
        self.mark_deleting(rec)?;
        self.remove_data(rec)?;
        self.finish_delete(rec)
    }

    fn deleting_path(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(format!("{backup}.{DELETING}"))
    }

    /// First step of a delete: rename the record to `<backup>.deleting`,
    /// so the backup is no longer listed before any of its data goes. A
    /// record that is already gone (a job that failed before writing it)
    /// is not an error.
    pub fn mark_deleting(&self, rec: &BackupRecord) -> Result<()> {
        let dir = self.domain_dir(&rec.domain_uuid);
        let _guard = self.lock_domain(&rec.domain_uuid)?;
        // The summary follows the record: pending first, so a crash between
        // the rename and the summary's update is read back correctly.
        self.note_pending(&rec.domain_uuid, &rec.uuid)?;
        let from = self.record_path(&rec.domain_uuid, &rec.uuid);
        let to = self.deleting_path(&rec.domain_uuid, &rec.uuid);
        match fs::rename(&from, &to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("cannot mark for deletion the record", &from, e));
            }
            _ => {}
        }
        sync_dir(&dir);
        summary::note_removed(&dir, &rec.uuid)?;
        self.compact_summary(&rec.domain_uuid)?;
        self.drop_empty_summary(&rec.domain_uuid)?;
        crate::test_stop!("delete-marked");
        Ok(())
    }

    /// Second step: the backup's data files and the folders it created.
    pub fn remove_data(&self, rec: &BackupRecord) -> Result<()> {
        for (i, d) in rec.disks.iter().enumerate() {
            remove_if_exists(&d.target)?;
            if i == 0 {
                crate::test_stop!("delete-first-disk-removed");
            }
        }
        for dir in rec.created_dirs.iter().rev() {
            // Only empty folders go: a folder may have gained other files.
            let _ = fs::remove_dir(dir);
        }
        Ok(())
    }

    /// Last step: the digest index, then the `.deleting` note.
    pub fn finish_delete(&self, rec: &BackupRecord) -> Result<()> {
        let index = self.index_dir(&rec.domain_uuid, &rec.uuid);
        match fs::remove_dir_all(&index) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("cannot remove digest index", &index, e));
            }
            _ => {}
        }
        remove_if_exists(&self.deleting_path(&rec.domain_uuid, &rec.uuid))?;
        sync_dir(&self.domain_dir(&rec.domain_uuid));
        self.drop_domain_dir_if_empty(&rec.domain_uuid);
        Ok(())
    }

    /// A domain folder that holds nothing any more goes (its lock is the
    /// folder's flock: a waiter finds it gone and makes it anew).
    fn drop_domain_dir_if_empty(&self, domain: &Uuid) {
        let _ = fs::remove_dir(self.merge_dir(domain));
        let _ = fs::remove_dir(self.domain_dir(domain));
    }

    /// Deletes of `domain` a process left half done: each note with its
    /// record (or why it cannot be read).
    pub fn pending_deletes(&self, domain: &Uuid) -> Vec<(PathBuf, Result<BackupRecord>)> {
        let Ok(entries) = fs::read_dir(self.domain_dir(domain)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == DELETING))
            .map(|p| {
                let rec = Self::read_record(&p)
                    .and_then(|r| r.ok_or_else(|| Error::internal("note vanished")));
                (p, rec)
            })
            .collect()
    }

    /// The record at `path`: `None` if there is none, an error naming the
    /// file if it cannot be read or parsed. A damaged record is reported,
    /// never skipped: skipping it would hide its backup and let a delete of
    /// its parent take the images it still needs.
    fn read_record(path: &Path) -> Result<Option<BackupRecord>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(damaged(path, &e.to_string())),
        };
        BackupRecord::from_catalog_xml(&text)
            .map(Some)
            .map_err(|e| damaged(path, &e.message))
    }

    /// The records of one domain as stored (a dead job's record still says
    /// running: `ops::recovery` resolves those), oldest first. Reads and
    /// parses every record: listing uses `entries`.
    pub fn records(&self, domain: &Uuid) -> Result<Vec<BackupRecord>> {
        let mut out = Vec::new();
        for backup in self.record_ids(domain)? {
            if let Some(rec) = self.record(domain, &backup)? {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| (r.created_ns, r.uuid));
        Ok(out)
    }

    /// The backups of one domain that have a record file, from the folder
    /// itself (not the summary), in no particular order; nothing is parsed.
    pub fn record_ids(&self, domain: &Uuid) -> Result<Vec<Uuid>> {
        let dir = self.domain_dir(domain);
        secure::check_dir_if_exists(&dir)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot read catalog folder", &dir, e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let stem = name.to_str()?.strip_suffix(".xml")?;
                // Only the name this catalog gives a record.
                Uuid::parse_str(stem).ok().filter(|u| u.to_string() == stem)
            })
            .collect())
    }

    /// Refuse a domain folder another user could write to (see `secure`).
    pub fn check_domain_dir(&self, domain: &Uuid) -> Result<()> {
        secure::check_dir_if_exists(&self.domain_dir(domain))
    }

    /// Remove what a job that died left: only files it created (regular
    /// files of ours, private), never whatever else a record names.
    pub fn remove_dead_data(&self, rec: &BackupRecord) -> Result<()> {
        for d in &rec.disks {
            secure::remove_own_file(&d.target);
        }
        for dir in rec.created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        self.remove_record(rec)
    }

    /// The record of a backup as stored, if there is one (an error naming
    /// the file if it is damaged).
    pub fn record(&self, domain: &Uuid, backup: &Uuid) -> Result<Option<BackupRecord>> {
        Self::read_record(&self.record_path(domain, backup))
    }

    /// What listing needs of each record of a domain, oldest first, from
    /// the domain's summary (rebuilt from the records when it is missing or
    /// damaged). A dead job's entry still says running: `ops::recovery`
    /// resolves those.
    pub fn entries(&self, domain: &Uuid) -> Result<Vec<Entry>> {
        let dir = self.domain_dir(domain);
        let replayed = match summary::read(&dir)? {
            Some(r) => r,
            None if !dir.is_dir() => return Ok(Vec::new()),
            None => {
                // Damaged, or left behind by a crash or an older version.
                let _guard = self.lock_domain(domain)?;
                match summary::read(&dir)? {
                    Some(r) => r,
                    None => self.write_summary(domain, false)?,
                }
            }
        };
        let mut out = self.settle_pending(domain, replayed)?.into_vec();
        // Nearly sorted already: the log keeps the order records came in.
        out.sort_by_key(|e| (e.created_ns, e.uuid));
        Ok(out)
    }

    /// The entries of a replayed summary, with the records it says were
    /// about to change read back.
    fn settle_pending(&self, domain: &Uuid, r: summary::Replayed) -> Result<summary::Entries> {
        let mut map = r.entries;
        for u in r.pending {
            match self.record(domain, &u)? {
                Some(rec) => map.insert(Entry::of(&rec)),
                None => map.remove(&u),
            };
        }
        Ok(map)
    }

    /// Write a domain's summary from its records (when `always`, or when
    /// there are records: a domain without any keeps no file). Domain lock
    /// held.
    fn write_summary(&self, domain: &Uuid, always: bool) -> Result<summary::Replayed> {
        let dir = self.domain_dir(domain);
        let entries: summary::Entries = self.records(domain)?.iter().map(Entry::of).collect();
        if always || !entries.is_empty() {
            make_private_dir(&dir)?;
            write_atomic(
                &summary::path(&dir),
                summary::render(entries.values()).as_bytes(),
            )?;
        }
        Ok(summary::Replayed {
            lines: entries.len(),
            entries,
            pending: Vec::new(),
        })
    }

    /// The domain a backup of any domain belongs to.
    pub fn domain_of(&self, backup: &Uuid) -> Result<Option<Uuid>> {
        Ok(self
            .domains()?
            .into_iter()
            .find(|dom| self.record_path(dom, backup).exists()))
    }

    /// Remove the job lock and cancel request of a job that ended.
    pub fn clear_job_files(&self, rec: &BackupRecord) {
        let _ = fs::remove_file(self.job_lock_path(&rec.domain_uuid, &rec.uuid));
        let _ = fs::remove_file(self.cancel_path(&rec.domain_uuid, &rec.uuid));
    }

    /// The merge markers of a domain: (marker, temporary file it names). A
    /// marker that names anything but a merge's own temporary file (damaged
    /// or edited) names nothing: it must never lead to an image's removal.
    pub fn merge_markers(&self, domain: &Uuid) -> Vec<(PathBuf, PathBuf)> {
        let Ok(entries) = fs::read_dir(self.merge_dir(domain)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .map(|m| {
                let tmp = fs::read(&m).unwrap_or_default();
                let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&tmp));
                (
                    m,
                    if is_merge_tmp(&tmp) {
                        tmp
                    } else {
                        PathBuf::new()
                    },
                )
            })
            .collect()
    }

    /// The notes of staged restore files (see `stage_files`).
    pub fn restore_notes(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().as_bytes().starts_with(RESTORING.as_bytes()))
            .map(|e| e.path())
            .collect()
    }

    /// Domains that have a folder in the catalog.
    fn domains(&self) -> Result<Vec<Uuid>> {
        let entries = fs::read_dir(&self.root)
            .map_err(|e| Error::io("cannot read catalog folder", &self.root, e))?;
        Ok(entries
            .flatten()
            .filter_map(|e| Uuid::parse_str(&e.file_name().to_string_lossy()).ok())
            .collect())
    }

    pub fn default_target(&self, domain: &Uuid) -> Result<Option<DefaultTarget>> {
        self.check_domain_dir(domain)?;
        let path = self.domain_dir(domain).join(DEFAULT_TARGET_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(DefaultTarget::parse(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &path, e)),
        }
    }

    pub fn set_default_target(&self, domain: &Uuid, target: &DefaultTarget) -> Result<()> {
        let dir = self.domain_dir(domain);
        make_private_dir(&dir)?;
        write_atomic(&dir.join(DEFAULT_TARGET_FILE), target.to_xml().as_bytes())
    }

    /// Forget every backup of a domain and its settings (data files stay).
    pub fn forget_domain(&self, domain: &Uuid) -> Result<()> {
        for rec in self.records(domain)? {
            self.remove_record(&rec)?;
        }
        remove_if_exists(&self.domain_dir(domain).join(DEFAULT_TARGET_FILE))?;
        let _ = fs::remove_file(self.root.join(DOMAIN_LOCKS).join(domain.to_string()));
        remove_if_exists(&summary::path(&self.domain_dir(domain)))?;
        let _ = fs::remove_dir(self.merge_dir(domain));
        let _ = fs::remove_dir(self.domain_dir(domain));
        Ok(())
    }
}

/// Whether `path` is named like a merge's temporary file,
/// `.<image>.merge-<uuid>` (see `image::disk::sibling_tmp`).
fn is_merge_tmp(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.starts_with('.')
        && name
            .rsplit_once(".merge-")
            .is_some_and(|(image, id)| image.len() > 1 && Uuid::parse_str(id).is_ok())
}

/// The error for a record that cannot be trusted: it names the file.
fn damaged(path: &Path, why: &str) -> Error {
    Error::operation_failed(format!(
        "backup record '{}' is damaged: {why}; repair or remove it by hand (its images are kept)",
        path.display()
    ))
}

/// Remove a file if it exists; a missing file is not an error.
pub fn remove_if_exists(path: &PathBuf) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::backup::BackupState;

    fn record(domain: Uuid, target: PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord::sample(domain, target, state)
    }


    #[test]
    fn damaged_records_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let rec = record(dom, dir.path().join("t.qcow2"), BackupState::Completed);
        cat.write_record(&rec).unwrap();
        let path = cat.record_path(&dom, &rec.uuid);
        std::fs::write(&path, b"<domainbackup>").unwrap();
        for e in [
            cat.records(&dom).unwrap_err(),
            cat.record(&dom, &rec.uuid).unwrap_err(),
        ] {
            assert!(
                e.message.contains(&path.display().to_string()),
                "{}",
                e.message
            );
            assert!(e.message.contains("damaged"), "{}", e.message);
        }
    }

    #[test]
    fn a_delete_cut_short_is_not_listed_and_can_be_finished() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let target = dir.path().join("t.qcow2");
        std::fs::write(&target, b"data").unwrap();
        let rec = record(dom, target.clone(), BackupState::Completed);
        cat.write_record(&rec).unwrap();
        cat.mark_deleting(&rec).unwrap();
        assert!(cat.records(&dom).unwrap().is_empty());
        assert!(target.exists());
        let pending = cat.pending_deletes(&dom);
        assert_eq!(pending.len(), 1);
        let found = pending[0].1.as_ref().unwrap();
        assert_eq!(found.uuid, rec.uuid);
        cat.remove_data(found).unwrap();
        cat.finish_delete(found).unwrap();
        assert!(!target.exists() && cat.pending_deletes(&dom).is_empty());
    }

    #[test]
    fn one_domain_lock_at_a_time_across_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let held = cat.lock_domain_job(&dom).unwrap();
        let e = cat.lock_domain_job(&dom).unwrap_err();
        assert!(e.message.contains("already has a backup job"));
        assert!(cat.lock_domain_job(&Uuid::new_v4()).is_ok());
        drop(held);
        cat.lock_domain_job(&dom).unwrap();
    }

    #[test]
    fn damaged_notes_and_markers_name_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let disk = dir.path().join("disk.qcow2");
        // A merge marker edited to name an image names nothing.
        let child = record(Uuid::new_v4(), disk.clone(), BackupState::Completed);
        cat.write_record(&child).unwrap();
        cat.mark_merge(&child, "vda", &disk).unwrap();
        let tmp = dir
            .path()
            .join(format!(".disk.qcow2.merge-{}", Uuid::new_v4()));
        cat.mark_merge(&child, "vdb", &tmp).unwrap();
        let mut named: Vec<PathBuf> = cat
            .merge_markers(&child.domain_uuid)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        named.sort();
        assert_eq!(named, vec![PathBuf::new(), tmp]);
    }

    #[test]
    fn lock_is_reentrant_in_a_thread_and_exclusive_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().to_path_buf()).unwrap();
        let outer = cat.lock().unwrap();
        let inner = cat.lock().unwrap();
        let cat2 = cat.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _g = cat2.lock().unwrap();
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
    fn atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.xml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn records_and_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("root")).unwrap();
        let dom = Uuid::new_v4();
        let rec = record(dom, dir.path().join("t.qcow2"), BackupState::Completed);
        cat.write_record(&rec).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cat.root()), 0o700);
        assert_eq!(mode(&cat.domain_dir(&dom)), 0o700);
        assert_eq!(mode(&cat.record_path(&dom, &rec.uuid)), 0o600);
    }

    fn listed(cat: &Catalog, dom: &Uuid) -> Vec<(Uuid, Option<Uuid>, u8)> {
        let mut v: Vec<_> = cat
            .entries(dom)
            .unwrap()
            .iter()
            .map(|e| (e.uuid, e.parent, e.state as u8))
            .collect();
        v.sort();
        v
    }

    fn from_records(cat: &Catalog, dom: &Uuid) -> Vec<(Uuid, Option<Uuid>, u8)> {
        let mut v: Vec<_> = cat
            .records(dom)
            .unwrap()
            .iter()
            .map(|r| (r.uuid, r.parent, r.state as u8))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn summary_follows_the_records_and_survives_crashes_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let sum = summary::path(&cat.domain_dir(&dom));
        let mut a = record(dom, dir.path().join("a"), BackupState::Running);
        // Listing a domain without backups writes nothing.
        assert!(listed(&cat, &dom).is_empty());
        assert!(!cat.domain_dir(&dom).exists());
        // The first record writes the summary.
        cat.write_record(&a).unwrap();
        assert!(sum.exists());
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // One from before summaries (or lost) is rewritten by the next
        // listing, or the next write.
        std::fs::remove_file(&sum).unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert!(sum.exists());
        // Later changes are appended to it.
        a.state = BackupState::Completed;
        cat.write_record(&a).unwrap();
        let mut b = record(dom, dir.path().join("b"), BackupState::Completed);
        b.parent = Some(a.uuid);
        cat.write_record(&b).unwrap();
        let c = record(dom, dir.path().join("c"), BackupState::Completed);
        cat.write_record(&c).unwrap();
        cat.remove_record(&c).unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert_eq!(listed(&cat, &dom).len(), 2);

        // A crash after the note and the record change, before the answer:
        // the record itself is read back.
        let text = std::fs::read_to_string(&sum).unwrap();
        let mut b2 = b.clone();
        b2.parent = None;
        summary::note_pending(&cat.domain_dir(&dom), &b.uuid).unwrap();
        write_atomic(
            &cat.record_path(&dom, &b.uuid),
            b2.to_catalog_xml().as_bytes(),
        )
        .unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // The same for a removal, and for a new record.
        let d = record(dom, dir.path().join("d"), BackupState::Completed);
        summary::note_pending(&cat.domain_dir(&dom), &d.uuid).unwrap();
        write_atomic(
            &cat.record_path(&dom, &d.uuid),
            d.to_catalog_xml().as_bytes(),
        )
        .unwrap();
        summary::note_pending(&cat.domain_dir(&dom), &a.uuid).unwrap();
        std::fs::remove_file(cat.record_path(&dom, &a.uuid)).unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));

        // A line cut short is dropped; the next writer starts over.
        std::fs::write(&sum, format!("{text}? 1234")).unwrap();
        assert_eq!(listed(&cat, &dom).len(), 2); // as the old text says
        cat.write_record(&b).unwrap();
        assert!(!std::fs::read_to_string(&sum).unwrap().contains("? 1234"));
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // A damaged or foreign summary is rebuilt from the records.
        std::fs::write(&sum, "garbage\n").unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert!(
            std::fs::read_to_string(&sum)
                .unwrap()
                .starts_with("LVBKSUM1 ")
        );
    }

    #[test]
    fn a_long_summary_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let mut a = record(dom, dir.path().join("a"), BackupState::Completed);
        let sum = summary::path(&cat.domain_dir(&dom));
        let mut longest = 0;
        for i in 0..300 {
            a.created_ns = i;
            cat.write_record(&a).unwrap();
            longest = longest.max(std::fs::read_to_string(&sum).unwrap().lines().count());
        }
        // Two lines a write, rewritten as one entry every few dozen writes.
        assert!(longest < 200, "{longest} lines");
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert_eq!(cat.entries(&dom).unwrap()[0].created_ns, 299);
    }

    #[test]
    fn domain_locks_exclude_the_same_domain_only() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().to_path_buf()).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let held = cat.lock_domain(&a).unwrap();
        let again = cat.lock_domain(&a).unwrap(); // re-entrant in this thread
        let cat2 = cat.clone();
        std::thread::spawn(move || {
            assert!(cat2.try_lock_domain(&a).is_none());
            assert!(cat2.try_lock_domain(&b).is_some());
            // The catalog-wide lock is free too.
            drop(cat2.lock().unwrap());
        })
        .join()
        .unwrap();
        drop(again);
        drop(held);
        let cat3 = cat.clone();
        std::thread::spawn(move || assert!(cat3.try_lock_domain(&a).is_some()))
            .join()
            .unwrap();
    }
}
