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
//! - `.domain-locks/.foreground`   shared flock held with every domain's job
//!   lock: housekeeping (a delete's merge) paces its I/O while anyone holds it
//! - `.domain-locks/.waiting`      shared flock held while blocked on a domain's
//!   lock: housekeeping then stops pacing (the waiter may wait for it)
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
//! - `.scratch-<export>/`         an export's scratch files (see `exports`
//!   for `.exports/`, `pins` for `.pins/`)
//! - `.<name>.tmp`               the temporary file of an atomic write of
//!   `<name>`, in its folder (`Folder::write_atomic`)
//!
//! What a process killed midway leaves (temporary files, the lock file of
//! a job killed before its record) is swept by the next reader through the
//! folders' descriptors, only by the names the library makes, and only
//! under the lock its writers hold (`Catalog::sweep_leftovers`).
//!
//! A record that cannot be read is an error naming the file, never skipped.
//! The catalog only stores and locks: a record in state `running` whose job
//! lock can be taken belongs to a process that died, and what becomes of it
//! (and of cut-short merges and restores) is decided in `ops::recovery`.
//!
//! Every file and folder is opened relative to the descriptor of the
//! folder it is in (`folder`): the root is opened once per `Catalog`, a
//! domain's folder relative to it at each use.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;
use uuid::Uuid;

use super::folder::Folder;
use super::secure;
use super::summary::{self, Entry};
use crate::error::{Error, Result};
use crate::xml::backup::{BackupRecord, BackupState, DefaultTarget};

const DEFAULT_TARGET_FILE: &str = "default-target.xml";
/// Folder (in a domain's) of the markers of running merges.
const MERGING: &str = "merging";

#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
    dir: Arc<Folder>,
}

/// The open root folder every `Catalog` of the same root shares: each
/// backup handle holds a `Catalog`, and a descriptor per handle would put
/// a program that keeps a year of handles past its descriptor limit.
/// `fresh` was just opened and checked; it replaces a shared one that no
/// longer names the same folder (the root was moved and made again).
fn shared_root(fresh: Folder) -> Arc<Folder> {
    static ROOTS: std::sync::Mutex<Vec<std::sync::Weak<Folder>>> =
        std::sync::Mutex::new(Vec::new());
    let id = |f: &Folder| f.own_stat().ok().map(|st| (st.st_dev, st.st_ino));
    let mut roots = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    roots.retain(|w| w.strong_count() > 0);
    let want = id(&fresh);
    let same = roots
        .iter()
        .filter_map(|w| w.upgrade())
        .find(|r| want.is_some() && id(r) == want && r.path() == fresh.path());
    same.unwrap_or_else(|| {
        let new = Arc::new(fresh);
        roots.push(Arc::downgrade(&new));
        new
    })
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

/// Name prefix (in the root) of exports' scratch folders.
const SCRATCH: &str = ".scratch-";

/// The first line of a note of files a domain is defined on (paths are
/// absolute, so no path starts like this).
pub const NOTE_DOMAIN: &str = "domain ";

/// The note of a restore's new files, locked while the restore writes them.
pub struct StagedFiles {
    file: File,
    root: Arc<Folder>,
    name: String,
}

impl StagedFiles {
    /// The files are complete (or removed): forget the note.
    pub fn done(self) {}
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        let _ = self.root.remove(&self.name);
    }
}

/// The lock a running job holds on its backup. Dropping it removes the lock
/// file and any cancel request, then releases the lock (and the domain's).
/// The file is the evidence that a job existed: a `running` record whose
/// lock file is there but unlocked belongs to a job that died.
pub struct JobLock {
    file: File,
    /// The domain's folder, and the backup's UUID.
    dir: Folder,
    backup: Uuid,
    domain: DomainLock,
    /// Set by `abandon`: the lock file stays.
    keep_file: bool,
}

impl JobLock {
    /// What a killed process leaves of its locks (for tests of recovery):
    /// the job's lock file, unlocked, and the domain's lock released.
    #[doc(hidden)]
    pub fn leave_as_killed(mut self) {
        let _ = self.file.unlock();
        let _ = self.domain.file.unlock();
        drop(self.domain.foreground.take());
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
    /// Shared flock on `.domain-locks/.foreground` (see `background::pace`).
    foreground: Option<File>,
}

/// Where another process asks a running job to stop: the file
/// `<domain>/<backup>.cancel`, looked for through the domain's folder
/// descriptor (a link swapped in for the folder asks nothing).
#[derive(Debug)]
pub struct CancelMarker {
    root: Arc<Folder>,
    domain: String,
    name: String,
}

impl CancelMarker {
    /// Whether the marker is there.
    pub fn requested(&self) -> bool {
        matches!(self.root.sub(&self.domain), Ok(Some(d)) if d.stat(&self.name).is_ok())
    }
}

/// Folder (in the root) of the per-domain job locks, one file per domain.
const DOMAIN_LOCKS: &str = ".domain-locks";

/// Held shared by every running job a user waits for; probed by
/// housekeeping. In `DOMAIN_LOCKS`, where no domain UUID can take its name.
const FOREGROUND: &str = ".foreground";

/// Held shared by every thread blocked on a domain's lock: a job of the
/// merging domain may be among them, so housekeeping stops pacing.
const WAITING: &str = ".waiting";

/// Extension of a record whose backup is being deleted.
const DELETING: &str = "deleting";

/// Last line of a complete restore note.
pub const NOTE_END: &[u8] = b"end\n";

/// What a complete restore note says: its `domain <uuid> <uri>` line if it
/// has one, and the files; `None` for a note cut short by a crash while it
/// was written (it names nothing). Paths end with a NUL; a note without
/// any NUL is from before that, one path a line.
pub fn read_note(text: &[u8]) -> Option<(Option<String>, Vec<PathBuf>)> {
    let mut text = text.strip_suffix(NOTE_END)?;
    let mut head = None;
    if text.starts_with(NOTE_DOMAIN.as_bytes()) {
        let end = text.iter().position(|&b| b == b'\n')?;
        head = Some(String::from_utf8_lossy(&text[..end]).into_owned());
        text = &text[end + 1..];
    }
    let sep = if text.contains(&0) { 0 } else { b'\n' };
    let files = text
        .split(|&b| b == sep)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect();
    Some((head, files))
}

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
        if !self.keep_file {
            let _ = self.dir.remove(&format!("{}.cancel", self.backup));
            let _ = self.dir.remove(&format!("{}.lock", self.backup));
        }
        let _ = self.file.unlock();
    }
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

/// Make a rename or removal in `dir` (a folder outside the catalog, such
/// as an image's) durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn record_name(backup: &Uuid) -> String {
    format!("{backup}.xml")
}

fn index_name(backup: &Uuid) -> String {
    format!("{backup}.index")
}

impl Catalog {
    /// The catalog at the configured root, created if missing.
    pub fn open() -> Result<Catalog> {
        Catalog::at(default_root())
    }

    pub fn at(root: PathBuf) -> Result<Catalog> {
        let dir = shared_root(secure::prepare_root(&root)?);
        Ok(Catalog { root, dir })
    }

    /// A new private folder `<root>/<name>` (an export's scratch files).
    pub fn private_dir(&self, name: &str) -> Result<PathBuf> {
        self.private_folder(name).map(|f| f.path().to_path_buf())
    }

    /// The private folder `<root>/<name>`, open, created if missing.
    pub fn private_folder(&self, name: &str) -> Result<Folder> {
        self.dir.make_sub(name)
    }

    /// The folder `<root>/<name>` if it exists.
    pub fn folder(&self, name: &str) -> Result<Option<Folder>> {
        self.dir.sub(name)
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
        let name = format!("{RESTORING}{}", Uuid::new_v4());
        let path = self.root.join(&name);
        let file = self
            .dir
            .create_new(&name)
            .map_err(|e| Error::io("cannot create", &path, e))?;
        let staged = StagedFiles {
            file,
            root: self.dir.clone(),
            name,
        };
        let _ = staged.file.lock();
        let mut text = Vec::new();
        if let Some(h) = head {
            text.extend_from_slice(h.as_bytes());
            text.push(b'\n');
        }
        // Each path ends with a NUL, the one byte no path holds (a line end
        // may be part of a name).
        for p in paths {
            text.extend_from_slice(p.as_os_str().as_encoded_bytes());
            text.push(0);
        }
        // The end mark: a note cut short by a crash while it was written
        // (a path truncated into another file's name) is never acted on.
        text.extend_from_slice(NOTE_END);
        std::io::Write::write_all(&mut &staged.file, &text)
            .and_then(|()| staged.file.sync_all())
            .map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(staged)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn domain_dir(&self, domain: &Uuid) -> PathBuf {
        self.root.join(domain.to_string())
    }

    /// The domain's folder, open and checked, if it exists.
    fn domain_folder(&self, domain: &Uuid) -> Result<Option<Folder>> {
        self.dir.sub(&domain.to_string())
    }

    /// The domain's folder, open and checked, created if missing.
    fn make_domain_folder(&self, domain: &Uuid) -> Result<Folder> {
        self.dir.make_sub(&domain.to_string())
    }

    fn record_path(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(record_name(backup))
    }

    /// The marker another process creates to cancel a running job.
    fn cancel_path(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(format!("{backup}.cancel"))
    }

    /// The cancel marker of a backup's job (see `CancelMarker`).
    pub fn cancel_marker(&self, domain: &Uuid, backup: &Uuid) -> CancelMarker {
        CancelMarker {
            root: self.dir.clone(),
            domain: domain.to_string(),
            name: format!("{backup}.cancel"),
        }
    }

    /// Ask the job of a running backup, in whatever process, to stop.
    pub fn request_cancel(&self, rec: &BackupRecord) -> Result<()> {
        let path = self.cancel_path(&rec.domain_uuid, &rec.uuid);
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        self.domain_folder(&rec.domain_uuid)?
            .ok_or_else(missing)
            .and_then(|d| {
                d.open(
                    &format!("{}.cancel", rec.uuid),
                    OFlags::WRONLY | OFlags::CREATE,
                )
            })
            .map(drop)
            .map_err(|e| Error::io("cannot create", &path, e))
    }

    /// Folder of a backup's digest indexes, one file per disk.
    pub fn index_dir(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(index_name(backup))
    }

    /// The digest index of one disk of a backup.
    pub fn index_path(&self, domain: &Uuid, backup: &Uuid, disk: &str) -> PathBuf {
        self.index_dir(domain, backup).join(format!("{disk}.b3"))
    }

    /// Create the index folder of a new backup.
    pub fn create_index_dir(&self, domain: &Uuid, backup: &Uuid) -> Result<()> {
        self.make_domain_folder(domain)?
            .make_sub(&index_name(backup))
            .map(drop)
    }

    /// Default folder for a backup's images.
    pub fn data_dir(&self, domain: &Uuid, backup: &Uuid) -> PathBuf {
        self.domain_dir(domain).join(backup.to_string())
    }

    /// Take the flock of `name` in the root: a lock file, or (`dir`) a
    /// folder, created if missing. A folder removed while we waited for it
    /// is made and locked anew.
    fn acquire(&self, name: &str, wait: bool, dir: bool) -> Result<Option<CatalogLock>> {
        let path = self.root.join(name);
        let held = HELD.with(|h| h.borrow_mut().get_mut(&path).map(|d| *d += 1).is_some());
        if held {
            return Ok(Some(CatalogLock { _file: None, path }));
        }
        let file = loop {
            let file = match dir {
                true => self.dir.make_sub(name)?.into_file(),
                false => secure::open_lock(&self.dir, name)
                    .map_err(|e| Error::io("cannot open catalog lock", &path, e))?,
            };
            if wait && file.try_lock().is_err() {
                // Whoever holds it may be a paced merge: it must not crawl
                // while a job a user waits for waits for it.
                let _waiting = self.hold_shared(WAITING);
                file.lock()
                    .map_err(|e| Error::io("cannot lock catalog", &path, e))?;
            } else if !wait && file.try_lock().is_err() {
                return Ok(None);
            }
            if !dir || same_file(&file, &self.dir, name) {
                break file;
            }
        };
        HELD.with(|h| h.borrow_mut().insert(path.clone(), 1));
        Ok(Some(CatalogLock {
            _file: Some(file),
            path,
        }))
    }

    /// Take the catalog-wide lock (blocks while another thread or process
    /// holds it). Only for what spans domains: a new backup's UUID.
    pub fn lock(&self) -> Result<CatalogLock> {
        self.acquire(".lock", true, false)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// The catalog-wide lock if nobody else holds it now, else `None`.
    pub fn try_lock(&self) -> Option<CatalogLock> {
        self.acquire(".lock", false, false).ok().flatten()
    }

    /// Take a domain's lock (the flock of its folder): held by whatever
    /// changes the domain's records (a job registering or settling, a
    /// delete and its merges, recovery).
    pub fn lock_domain(&self, domain: &Uuid) -> Result<CatalogLock> {
        self.acquire(&domain.to_string(), true, true)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// A domain's lock if nobody else holds it now, else `None`.
    pub fn try_lock_domain(&self, domain: &Uuid) -> Option<CatalogLock> {
        self.acquire(&domain.to_string(), false, true)
            .ok()
            .flatten()
    }

    /// Note, before a merge writes `tmp` for a disk of `child`, where that
    /// temporary file is: if the process dies, the next reader removes it.
    /// Markers live in a folder of their own: looking for them on every
    /// listing must not read a folder of thousands of records.
    pub fn mark_merge(&self, child: &BackupRecord, disk: &str, tmp: &Path) -> Result<()> {
        self.make_domain_folder(&child.domain_uuid)?
            .make_sub(MERGING)?
            .write_atomic(
                &marker_name(child, disk),
                tmp.as_os_str().as_encoded_bytes(),
            )
    }

    /// The merge of that disk ended (its file renamed, or removed).
    pub fn unmark_merge(&self, child: &BackupRecord, disk: &str) {
        if let Some(m) = self.merge_folder(&child.domain_uuid) {
            let _ = m.remove(&marker_name(child, disk));
        }
    }

    /// The domain's folder of merge markers, if it and the domain's exist.
    fn merge_folder(&self, domain: &Uuid) -> Option<Folder> {
        self.domain_folder(domain).ok()??.sub(MERGING).ok()?
    }

    /// Take the job lock of `domain`, or fail with `OPERATION_INVALID` if
    /// a job of any kind holds it, in this process or another.
    pub fn lock_domain_job(&self, domain: &Uuid) -> Result<DomainLock> {
        let dir = self.dir.make_sub(DOMAIN_LOCKS)?;
        let name = domain.to_string();
        let file = secure::open_lock(&dir, &name)
            .map_err(|e| Error::io("cannot open domain job lock", &dir.join(&name), e))?;
        file.try_lock()
            .map_err(|_| Error::operation_invalid("the domain already has a backup job running"))?;
        let foreground = self.hold_shared(FOREGROUND);
        Ok(DomainLock { file, foreground })
    }

    /// What housekeeping probes (see `background::pace`): whether a job is
    /// running on any domain of this catalog, in any process, and whether
    /// anyone waits for a domain's lock (which a merge may hold).
    pub fn foreground_probe(&self) -> Option<(File, File)> {
        let dir = self.dir.make_sub(DOMAIN_LOCKS).ok()?;
        let open = |name| secure::open_lock(&dir, name).ok();
        Some((open(FOREGROUND)?, open(WAITING)?))
    }

    /// A shared flock on `.domain-locks/<name>` (`FOREGROUND`, `WAITING`).
    /// Only pacing hangs on these: one that cannot be had is no error. A
    /// probe holds one exclusively for two syscalls, so this waits little.
    fn hold_shared(&self, name: &str) -> Option<File> {
        let dir = self.dir.make_sub(DOMAIN_LOCKS).ok()?;
        secure::open_lock(&dir, name)
            .ok()
            .filter(|f| f.lock_shared().is_ok())
    }

    /// Take the job lock of a new backup, keeping the domain's job lock for
    /// the job's lifetime. Call with the domain's catalog lock held.
    pub fn lock_job(&self, domain: &Uuid, backup: &Uuid, held: DomainLock) -> Result<JobLock> {
        let dir = self.make_domain_folder(domain)?;
        let name = format!("{backup}.lock");
        let file = secure::open_lock(&dir, &name)
            .map_err(|e| Error::io("cannot create job lock", &dir.join(&name), e))?;
        file.try_lock().map_err(|_| {
            Error::operation_invalid(format!("backup '{backup}' already has a job"))
        })?;
        Ok(JobLock {
            file,
            dir,
            backup: *backup,
            domain: held,
            keep_file: false,
        })
    }

    /// Whether the job of a running record is alive, died, or never left
    /// the evidence (its lock file) that it existed.
    pub fn job_status(&self, rec: &BackupRecord) -> JobStatus {
        let name = format!("{}.lock", rec.uuid);
        let file = match self.domain_folder(&rec.domain_uuid) {
            Ok(Some(d)) => d.open(&name, OFlags::WRONLY),
            _ => return JobStatus::NoEvidence,
        };
        match file {
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
        // Refused (a value XML cannot carry) before anything is noted.
        let xml = rec.to_catalog_xml()?;
        let _guard = self.lock_domain(&rec.domain_uuid)?;
        let dir = self.make_domain_folder(&rec.domain_uuid)?;
        self.note_pending(&dir, &rec.uuid)?;
        dir.write_atomic(&record_name(&rec.uuid), xml.as_bytes())?;
        summary::note_written(&dir, &Entry::of(rec))?;
        self.compact_summary(&dir)
    }

    /// Note in the summary that a record is about to change, writing the
    /// summary first if it is missing (the domain's first backup, or a
    /// catalog from before summaries). Domain lock held.
    fn note_pending(&self, dir: &Folder, backup: &Uuid) -> Result<()> {
        if !summary::note_pending(dir, backup)? {
            self.write_summary(dir, true)?;
            summary::note_pending(dir, backup)?;
        }
        Ok(())
    }

    /// Remove the summary of a domain left without records (a refused or
    /// failed first backup leaves nothing behind). Only a short summary can
    /// be empty, so a long one is not read. Domain lock held.
    fn drop_empty_summary(&self, dir: &Folder) -> Result<()> {
        if dir
            .stat(summary::SUMMARY_FILE)
            .map_or(true, |m| m.st_size > 4096)
        {
            return Ok(());
        }
        let empty = match summary::read(dir)? {
            Some(r) => settle_pending(dir, r)?.is_empty(),
            None => false,
        };
        match empty {
            true => dir.remove_if_exists(summary::SUMMARY_FILE),
            false => Ok(()),
        }
    }

    /// Rewrite a long summary log as its entries. Domain lock held.
    fn compact_summary(&self, dir: &Folder) -> Result<()> {
        if !summary::wants_compaction(dir) {
            return Ok(());
        }
        match summary::read(dir)? {
            Some(r) => {
                let entries = settle_pending(dir, r)?;
                dir.write_atomic(
                    summary::SUMMARY_FILE,
                    summary::render(entries.values()).as_bytes(),
                )
            }
            None => self.write_summary(dir, true).map(drop),
        }
    }

    /// Forget a backup; its data files stay.
    pub fn remove_record(&self, rec: &BackupRecord) -> Result<()> {
        let _guard = self.lock_domain(&rec.domain_uuid)?;
        let Some(dir) = self.domain_folder(&rec.domain_uuid)? else {
            return Ok(());
        };
        self.note_pending(&dir, &rec.uuid)?;
        dir.remove_if_exists(&record_name(&rec.uuid))?;
        dir.sync();
        self.settle_removal(&dir, &rec.uuid)?;
        // The indexes go after the record: an index without a record is
        // never read, a record without its index would be a broken parent.
        remove_index(&dir, &rec.uuid)?;
        self.drop_domain_dir_if_empty(&rec.domain_uuid);
        Ok(())
    }

    /// The summary after a record went away. Domain lock held.
    fn settle_removal(&self, dir: &Folder, backup: &Uuid) -> Result<()> {
        summary::note_removed(dir, backup)?;
        self.compact_summary(dir)?;
        self.drop_empty_summary(dir)
    }

    /// Remove a backup in crash order (`mark_deleting`, `remove_data`,
    /// `finish_delete`): a failure or a crash at any point leaves either
    /// the listed backup with all its data, or a `.deleting` note that the
    /// next process finishes (`ops::recovery`), never a listed backup
    /// without its data.
    pub fn remove_with_data(&self, rec: &BackupRecord) -> Result<()> {
        self.mark_deleting(rec)?;
        self.remove_data(rec, &mut || {})?;
        self.finish_delete(rec)
    }

    /// First step of a delete: rename the record to `<backup>.deleting`,
    /// so the backup is no longer listed before any of its data goes. A
    /// record that is already gone (a job that failed before writing it)
    /// is not an error.
    pub fn mark_deleting(&self, rec: &BackupRecord) -> Result<()> {
        let _guard = self.lock_domain(&rec.domain_uuid)?;
        let Some(dir) = self.domain_folder(&rec.domain_uuid)? else {
            return Ok(());
        };
        // The summary follows the record: pending first, so a crash between
        // the rename and the summary's update is read back correctly.
        self.note_pending(&dir, &rec.uuid)?;
        let from = record_name(&rec.uuid);
        match dir.rename(&from, &format!("{}.{DELETING}", rec.uuid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                let path = dir.join(&from);
                return Err(Error::io("cannot mark for deletion the record", &path, e));
            }
            _ => {}
        }
        dir.sync();
        self.settle_removal(&dir, &rec.uuid)?;
        crate::test_stop!("delete-marked");
        Ok(())
    }

    /// Second step: the backup's data files and the folders it created.
    /// Each file gives back its blocks a step at a time before it goes,
    /// calling `between` after each (see `secure::shrink_before_removal`).
    pub fn remove_data(&self, rec: &BackupRecord, between: &mut dyn FnMut()) -> Result<()> {
        for (i, d) in rec.disks.iter().enumerate() {
            self.remove_target(rec, &d.target, false, between)?;
            if i == 0 {
                crate::test_stop!("delete-first-disk-removed");
            }
        }
        self.remove_created_dirs(rec);
        Ok(())
    }

    /// The backup's default folder in the catalog (`<domain>/<backup>/`),
    /// open, and the name in it of `path` if `path` lies there.
    fn in_data_dir(&self, rec: &BackupRecord, path: &Path) -> Result<Option<(Folder, String)>> {
        let data = self.data_dir(&rec.domain_uuid, &rec.uuid);
        let (Some(name), true) = (path.file_name(), path.parent() == Some(data.as_path())) else {
            return Ok(None);
        };
        let dir = match self.domain_folder(&rec.domain_uuid)? {
            Some(d) => d.sub(&rec.uuid.to_string())?,
            None => None,
        };
        Ok(dir.map(|d| (d, name.to_string_lossy().into_owned())))
    }

    /// Remove a target of `rec` through its folder's descriptor: one in
    /// its default folder in the catalog, any other in a folder that
    /// `Folder::open_outside` accepts (else the removal is refused). With
    /// `own`, only a private regular file of ours at an absolute path (see
    /// `secure::removable`).
    fn remove_target(
        &self,
        rec: &BackupRecord,
        path: &Path,
        own: bool,
        between: &mut dyn FnMut(),
    ) -> Result<()> {
        if own && !secure::plain_absolute(path) {
            return Ok(());
        }
        let found = match self.in_data_dir(rec, path)? {
            Some(found) => Some(found),
            // Elsewhere, through the descriptor of a folder nobody else
            // can write (`Folder::open_outside`): in any other folder a
            // user could swap a name (or a whole folder) for a link to
            // another VM's files between our calls.
            None => Folder::outside_parent(path, "backup target")?,
        };
        let Some((dir, name)) = found else {
            return Ok(());
        };
        if own
            && !dir
                .stat(&name)
                .is_ok_and(|st| secure::own_private_file(&st))
        {
            return Ok(());
        }
        if let Ok(f) = dir.open(&name, OFlags::WRONLY | OFlags::NONBLOCK) {
            secure::shrink_before_removal(&f, between);
        }
        dir.remove_if_exists(&name)
    }

    /// The folders the backup's targets needed, innermost first, if empty:
    /// a folder may have gained other files.
    fn remove_created_dirs(&self, rec: &BackupRecord) {
        let data = self.data_dir(&rec.domain_uuid, &rec.uuid);
        for dir in rec.created_dirs.iter().rev() {
            if *dir != data {
                if let Ok(Some((up, name))) = Folder::outside_parent(dir, "backup target") {
                    let _ = up.remove_dir(&name);
                }
            } else if let Ok(Some(d)) = self.domain_folder(&rec.domain_uuid) {
                let _ = d.remove_dir(&rec.uuid.to_string());
            }
        }
    }

    /// Last step: the digest index, then the `.deleting` note.
    pub fn finish_delete(&self, rec: &BackupRecord) -> Result<()> {
        let Some(dir) = self.domain_folder(&rec.domain_uuid)? else {
            return Ok(());
        };
        remove_index(&dir, &rec.uuid)?;
        dir.remove_if_exists(&format!("{}.{DELETING}", rec.uuid))?;
        dir.sync();
        self.drop_domain_dir_if_empty(&rec.domain_uuid);
        Ok(())
    }

    /// A domain folder that holds nothing any more goes (its lock is the
    /// folder's flock: a waiter finds it gone and makes it anew).
    fn drop_domain_dir_if_empty(&self, domain: &Uuid) {
        let name = domain.to_string();
        if let Ok(Some(dir)) = self.dir.sub(&name) {
            let _ = dir.remove_dir(MERGING);
        }
        let _ = self.dir.remove_dir(&name);
    }

    /// The domain folder's identity and change time (device, inode,
    /// ctime seconds, nanoseconds): renaming or removing anything in the
    /// folder changes it, and nobody can set it back.
    pub fn domain_stamp(&self, domain: &Uuid) -> Option<[i64; 4]> {
        let st = self.domain_folder(domain).ok()??.own_stat().ok()?;
        Some([
            st.st_dev as i64,
            st.st_ino as i64,
            st.st_ctime,
            st.st_ctime_nsec as i64,
        ])
    }

    /// Deletes of `domain` a process left half done: each note with its
    /// record (or why it cannot be read).
    pub fn pending_deletes(&self, domain: &Uuid) -> Vec<(PathBuf, Result<BackupRecord>)> {
        let Ok(Some(dir)) = self.domain_folder(domain) else {
            return Vec::new();
        };
        let names = dir.names().unwrap_or_default();
        names
            .iter()
            .filter(|n| Path::new(n).extension().is_some_and(|x| x == DELETING))
            .map(|n| {
                let n = n.to_string_lossy();
                let rec = read_record(&dir, &n)
                    .and_then(|r| r.ok_or_else(|| Error::internal("note vanished")));
                (dir.join(&n), rec)
            })
            .collect()
    }

    /// What a domain's folder holds besides its records, summary, indexes
    /// and data folders that a process may have left behind, from one
    /// read of the folder (see `Leftovers`).
    pub fn leftovers(&self, domain: &Uuid) -> Leftovers {
        let mut out = Leftovers::default();
        let Ok(Some(dir)) = self.domain_folder(domain) else {
            return out;
        };
        let deleting = format!(".{DELETING}");
        for n in dir.names().unwrap_or_default() {
            let Some(n) = n.to_str() else { continue };
            if let Some(stem) = n.strip_suffix(&deleting) {
                out.deletes |= exact_uuid(stem).is_some();
            } else if let Some(inner) = n.strip_prefix('.').and_then(|x| x.strip_suffix(".tmp")) {
                let ours = [summary::SUMMARY_FILE, DEFAULT_TARGET_FILE].contains(&inner)
                    || inner.strip_suffix(".xml").and_then(exact_uuid).is_some();
                if ours {
                    out.temps.push(n.to_string());
                }
            } else if let Some(u) = [".lock", ".cancel"]
                .iter()
                .find_map(|x| n.strip_suffix(x).and_then(exact_uuid))
                && !out.jobs.contains(&u)
            {
                out.jobs.push(u);
            }
        }
        out
    }

    /// Remove the temporary files and stale job files of `found` (see
    /// `Leftovers`): only names the library makes, regular files of ours,
    /// through the domain's folder. Never the lock file of a live job, nor
    /// that of a record that says running (the evidence `ops::recovery`
    /// settles a dead job's record on). Call with the domain's lock held:
    /// every atomic write and every new job's lock file in the folder is
    /// made under it. Returns whether nothing is left but live jobs' files.
    pub fn sweep_leftovers(&self, domain: &Uuid, found: &Leftovers) -> bool {
        let Ok(Some(dir)) = self.domain_folder(domain) else {
            return true;
        };
        let own = |name: &str| dir.stat(name).is_ok_and(|st| secure::own_private_file(&st));
        let mut settled = true;
        let mut removed = false;
        for t in &found.temps {
            if own(t) && dir.remove(t).is_ok() {
                removed = true;
            } else {
                settled = false;
            }
        }
        for u in &found.jobs {
            let lock = format!("{u}.lock");
            let live = dir
                .open(&lock, OFlags::RDONLY | OFlags::NONBLOCK)
                .is_ok_and(|f| f.try_lock().is_err());
            if live {
                continue;
            }
            match read_record(&dir, &record_name(u)) {
                Ok(Some(r)) if r.state == BackupState::Running => {
                    settled = false;
                    continue;
                }
                Ok(_) => {}
                Err(_) => {
                    settled = false;
                    continue;
                }
            }
            for name in [lock, format!("{u}.cancel")] {
                if own(&name) && dir.remove(&name).is_ok() {
                    removed = true;
                }
            }
        }
        if removed {
            dir.sync();
            let _ = self.drop_empty_summary(&dir);
            drop(dir);
            self.drop_domain_dir_if_empty(domain);
        }
        settled
    }

    /// The records of one domain as stored (a dead job's record still says
    /// running: `ops::recovery` resolves those), oldest first. Reads and
    /// parses every record: listing uses `entries`.
    pub fn records(&self, domain: &Uuid) -> Result<Vec<BackupRecord>> {
        match self.domain_folder(domain)? {
            Some(dir) => records_in(&dir),
            None => Ok(Vec::new()),
        }
    }

    /// The records of `backups` that exist (errors name a damaged one),
    /// read through one open of the domain's folder.
    pub fn records_of(&self, domain: &Uuid, backups: &[Uuid]) -> Result<Vec<BackupRecord>> {
        match self.domain_folder(domain)? {
            Some(dir) => read_records(&dir, backups),
            None => Ok(Vec::new()),
        }
    }

    /// The backups of one domain that have a record file, from the folder
    /// itself (not the summary), in no particular order; nothing is parsed.
    pub fn record_ids(&self, domain: &Uuid) -> Result<Vec<Uuid>> {
        match self.domain_folder(domain)? {
            Some(dir) => record_ids_in(&dir),
            None => Ok(Vec::new()),
        }
    }

    /// Refuse a domain folder another user could write to (see `secure`).
    pub fn check_domain_dir(&self, domain: &Uuid) -> Result<()> {
        self.domain_folder(domain).map(drop)
    }

    /// Remove what a job that died left: only files it created (regular
    /// files of ours, private), never whatever else a record names.
    pub fn remove_dead_data(&self, rec: &BackupRecord) -> Result<()> {
        for d in &rec.disks {
            let _ = self.remove_target(rec, &d.target, true, &mut || {});
        }
        self.remove_created_dirs(rec);
        self.remove_record(rec)
    }

    /// The record of a backup as stored, if there is one (an error naming
    /// the file if it is damaged).
    pub fn record(&self, domain: &Uuid, backup: &Uuid) -> Result<Option<BackupRecord>> {
        match self.domain_folder(domain)? {
            Some(dir) => read_record(&dir, &record_name(backup)),
            None => Ok(None),
        }
    }

    /// What listing needs of each record of a domain, oldest first, from
    /// the domain's summary (rebuilt from the records when it is missing or
    /// damaged). A dead job's entry still says running: `ops::recovery`
    /// resolves those.
    pub fn entries(&self, domain: &Uuid) -> Result<Vec<Entry>> {
        let Some(dir) = self.domain_folder(domain)? else {
            return Ok(Vec::new());
        };
        let replayed = match summary::read(&dir)? {
            Some(r) => r,
            None => {
                // Damaged, or left behind by a crash or an older version.
                let _guard = self.lock_domain(domain)?;
                match summary::read(&dir)? {
                    Some(r) => r,
                    None => self.write_summary(&dir, false)?,
                }
            }
        };
        let mut out = settle_pending(&dir, replayed)?.into_vec();
        // Nearly sorted already: the log keeps the order records came in.
        out.sort_by_key(|e| (e.created_ns, e.uuid));
        Ok(out)
    }

    /// Write a domain's summary from its records (when `always`, or when
    /// there are records: a domain without any keeps no file). Domain lock
    /// held.
    fn write_summary(&self, dir: &Folder, always: bool) -> Result<summary::Replayed> {
        let entries: summary::Entries = records_in(dir)?.iter().map(Entry::of).collect();
        if always || !entries.is_empty() {
            dir.write_atomic(
                summary::SUMMARY_FILE,
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
        let name = record_name(backup);
        Ok(self
            .domains()?
            .into_iter()
            .find(|dom| matches!(self.domain_folder(dom), Ok(Some(d)) if d.stat(&name).is_ok())))
    }

    /// Withdraw a cancel request (its job ended first).
    pub fn clear_cancel(&self, domain: &Uuid, backup: &Uuid) {
        if let Ok(Some(dir)) = self.domain_folder(domain) {
            let _ = dir.remove(&format!("{backup}.cancel"));
        }
    }

    /// Remove the job lock and cancel request of a job that ended.
    pub fn clear_job_files(&self, rec: &BackupRecord) {
        if let Ok(Some(dir)) = self.domain_folder(&rec.domain_uuid) {
            let _ = dir.remove(&format!("{}.lock", rec.uuid));
            let _ = dir.remove(&format!("{}.cancel", rec.uuid));
        }
    }

    /// The merge markers of a domain: (marker, temporary file it names). A
    /// marker that names anything but a merge's own temporary file (damaged
    /// or edited) names nothing: it must never lead to an image's removal.
    pub fn merge_markers(&self, domain: &Uuid) -> Vec<(PathBuf, PathBuf)> {
        let Some(dir) = self.merge_folder(domain) else {
            return Vec::new();
        };
        let names = dir.names().unwrap_or_default();
        names
            .iter()
            .map(|n| {
                let n = n.to_string_lossy();
                let tmp = dir.read(&n).unwrap_or_default();
                let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&tmp));
                let tmp = if is_merge_tmp(&tmp) {
                    tmp
                } else {
                    PathBuf::new()
                };
                (dir.join(&n), tmp)
            })
            .collect()
    }

    /// Remove a merge marker `merge_markers` named.
    pub fn remove_merge_marker(&self, domain: &Uuid, marker: &Path) {
        let name = marker.file_name().map(|n| n.to_string_lossy().into_owned());
        if let (Some(dir), Some(name)) = (self.merge_folder(domain), name) {
            let _ = dir.remove(&name);
        }
    }

    /// An export's scratch folder, `<root>/.scratch-<export>`, made
    /// private. Make it once the export is registered (`exports`): a
    /// scratch folder without a live export is a dead exporter's.
    pub fn scratch_dir(&self, export: &Uuid) -> Result<PathBuf> {
        self.private_dir(&format!("{SCRATCH}{export}"))
    }

    /// The exports that have a scratch folder in the root.
    pub fn scratch_folders(&self) -> Vec<Uuid> {
        let names = self.dir.names().unwrap_or_default();
        names
            .iter()
            .filter_map(|n| n.to_str()?.strip_prefix(SCRATCH).and_then(exact_uuid))
            .collect()
    }

    /// Remove an export's scratch folder and what is in it (a link at its
    /// name is removed, never followed).
    pub fn remove_scratch(&self, export: &Uuid) {
        let _ = self.dir.remove_tree(&format!("{SCRATCH}{export}"));
    }

    /// The notes of staged restore files (see `stage_files`).
    pub fn restore_notes(&self) -> Vec<PathBuf> {
        let names = self.dir.names().unwrap_or_default();
        names
            .iter()
            .filter(|n| n.as_bytes().starts_with(RESTORING.as_bytes()))
            .map(|n| self.root.join(n))
            .collect()
    }

    /// Open a note `restore_notes` named if the library wrote it: a
    /// regular file of ours, private (checked on the open file).
    pub fn open_note(&self, note: &Path) -> Option<File> {
        use std::os::unix::fs::MetadataExt;
        let file = self
            .dir
            .open(&note.file_name()?.to_string_lossy(), OFlags::RDONLY);
        let file = file.ok()?;
        let m = file.metadata().ok()?;
        let euid = rustix::process::geteuid().as_raw();
        (m.is_file() && m.uid() == euid && m.mode() & 0o077 == 0).then_some(file)
    }

    /// Remove a note `restore_notes` named.
    pub fn remove_note(&self, note: &Path) {
        if let Some(name) = note.file_name() {
            let _ = self.dir.remove(&name.to_string_lossy());
        }
    }

    /// Domains that have a folder in the catalog.
    pub fn domains(&self) -> Result<Vec<Uuid>> {
        let names = self
            .dir
            .names()
            .map_err(|e| Error::io("cannot read catalog folder", &self.root, e))?;
        Ok(names
            .iter()
            .filter_map(|n| Uuid::parse_str(&n.to_string_lossy()).ok())
            .collect())
    }

    pub fn default_target(&self, domain: &Uuid) -> Result<Option<DefaultTarget>> {
        let Some(dir) = self.domain_folder(domain)? else {
            return Ok(None);
        };
        match dir.read(DEFAULT_TARGET_FILE) {
            Ok(text) => {
                let text = String::from_utf8(text).map_err(|e| {
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                    Error::io("cannot read", &dir.join(DEFAULT_TARGET_FILE), e)
                })?;
                Ok(Some(DefaultTarget::parse(&text)?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &dir.join(DEFAULT_TARGET_FILE), e)),
        }
    }

    pub fn set_default_target(&self, domain: &Uuid, target: &DefaultTarget) -> Result<()> {
        let xml = target.to_xml()?;
        // Every file of a domain's folder is written under its lock, so
        // that a sweep of temporary files under it finds none being written.
        let _guard = self.lock_domain(domain)?;
        self.make_domain_folder(domain)?
            .write_atomic(DEFAULT_TARGET_FILE, xml.as_bytes())
    }

    /// Forget every backup of a domain and its settings (data files stay).
    pub fn forget_domain(&self, domain: &Uuid) -> Result<()> {
        for rec in self.records(domain)? {
            self.remove_record(&rec)?;
        }
        if let Ok(Some(locks)) = self.dir.sub(DOMAIN_LOCKS) {
            let _ = locks.remove(&domain.to_string());
        }
        if let Some(dir) = self.domain_folder(domain)? {
            dir.remove_if_exists(DEFAULT_TARGET_FILE)?;
            dir.remove_if_exists(summary::SUMMARY_FILE)?;
        }
        self.drop_domain_dir_if_empty(domain);
        Ok(())
    }
}

/// What a process may have left in a domain's folder (`Catalog::leftovers`).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Whether there are `<backup>.deleting` notes (deletes cut short).
    pub deletes: bool,
    /// Temporary files of atomic writes cut short: `.<backup>.xml.tmp`,
    /// `.summary.tmp`, `.default-target.xml.tmp`.
    pub temps: Vec<String>,
    /// Backups with a `<backup>.lock` or `<backup>.cancel` file: a running
    /// job's, or one a job killed before it wrote its record (or after it
    /// settled it) left.
    pub jobs: Vec<Uuid>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        !self.deletes && self.temps.is_empty() && self.jobs.is_empty()
    }
}

/// A UUID as the library writes it in a file name, and only that.
fn exact_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok().filter(|u| u.to_string() == s)
}

fn marker_name(child: &BackupRecord, disk: &str) -> String {
    format!("{}.{disk}", child.uuid)
}

/// Remove a backup's index folder (a link at its name is removed, never
/// followed).
fn remove_index(dir: &Folder, backup: &Uuid) -> Result<()> {
    let name = index_name(backup);
    dir.remove_tree(&name)
        .map_err(|e| Error::io("cannot remove digest index", &dir.join(&name), e))
}

/// The record `name` in `dir`: `None` if there is none, an error naming
/// the file if it cannot be read or parsed. A damaged record is reported,
/// never skipped: skipping it would hide its backup and let a delete of
/// its parent take the images it still needs.
fn read_record(dir: &Folder, name: &str) -> Result<Option<BackupRecord>> {
    let path = dir.join(name);
    let text = match dir.read(name).and_then(|t| {
        String::from_utf8(t).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(&path, &e.to_string())),
    };
    BackupRecord::from_catalog_xml(&text)
        .map(Some)
        .map_err(|e| damaged(&path, &e.message))
}

/// The backups that have a record file in a domain's folder.
fn record_ids_in(dir: &Folder) -> Result<Vec<Uuid>> {
    let names = dir
        .names()
        .map_err(|e| Error::io("cannot read catalog folder", dir.path(), e))?;
    Ok(names
        .iter()
        .filter_map(|name| {
            let stem = name.to_str()?.strip_suffix(".xml")?;
            // Only the name this catalog gives a record.
            Uuid::parse_str(stem).ok().filter(|u| u.to_string() == stem)
        })
        .collect())
}

/// Every record in a domain's folder, oldest first.
fn records_in(dir: &Folder) -> Result<Vec<BackupRecord>> {
    let mut out = read_records(dir, &record_ids_in(dir)?)?;
    out.sort_by_key(|r| (r.created_ns, r.uuid));
    Ok(out)
}

/// The records of `backups` that exist in a domain's folder, in that order.
fn read_records(dir: &Folder, backups: &[Uuid]) -> Result<Vec<BackupRecord>> {
    let mut out = Vec::new();
    for backup in backups {
        out.extend(read_record(dir, &record_name(backup))?);
    }
    Ok(out)
}

/// The entries of a replayed summary, with the records it says were
/// about to change read back.
fn settle_pending(dir: &Folder, r: summary::Replayed) -> Result<summary::Entries> {
    let mut map = r.entries;
    for u in r.pending {
        match read_record(dir, &record_name(&u))? {
            Some(rec) => map.insert(Entry::of(&rec)),
            None => map.remove(&u),
        };
    }
    Ok(map)
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

/// Remove a file outside the catalog (an image) if it exists; a missing
/// file is not an error.
pub fn remove_if_exists(path: &PathBuf) -> Result<()> {
    match std::fs::remove_file(path) {
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
    fn restore_notes_name_any_path_and_old_notes_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let odd = dir.path().join("a\nb \"q\" \\ f\u{fc}r.qcow2");
        let plain = dir.path().join("plain.qcow2");
        let dom = Uuid::new_v4();
        let note = cat
            .stage_files_of_domain(&[&odd, &plain], &dom, "test:///default")
            .unwrap();
        let text = std::fs::read(&cat.restore_notes()[0]).unwrap();
        let (head, files) = read_note(&text).unwrap();
        assert_eq!(head, Some(format!("{NOTE_DOMAIN}{dom} test:///default")));
        assert_eq!(files, vec![odd.clone(), plain.clone()]);
        note.done();
        // A note from before paths ended with a NUL: one a line.
        let old = format!("{}\n{}\nend\n", odd.display(), plain.display());
        let (head, files) = read_note(old.as_bytes()).unwrap();
        assert_eq!(head, None);
        assert_eq!(files.len(), 3);
        // Cut short: names nothing.
        assert!(read_note(&text[..text.len() - 2]).is_none());
    }

    #[test]
    fn leftovers_of_killed_writers_go_and_live_jobs_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let keep = record(dom, dir.path().join("k"), BackupState::Completed);
        cat.write_record(&keep).unwrap();
        let folder = cat.domain_dir(&dom);
        // A live job, and a running record whose job died: both keep their
        // lock files (the second is what recovery settles it by).
        let dead = record(dom, dir.path().join("d"), BackupState::Running);
        cat.lock_job(&dom, &dead.uuid, cat.lock_domain_job(&dom).unwrap())
            .unwrap()
            .leave_as_killed();
        cat.write_record(&dead).unwrap();
        let live = record(dom, dir.path().join("l"), BackupState::Running);
        let live_lock = cat
            .lock_job(&dom, &live.uuid, cat.lock_domain_job(&dom).unwrap())
            .unwrap();
        cat.write_record(&live).unwrap();
        // A job killed before its record, one after it completed it, an
        // atomic write cut short, a cancel request nobody will read.
        let (early, late, gone) = (Uuid::new_v4(), keep.uuid, Uuid::new_v4());
        for name in [
            format!("{early}.lock"),
            format!("{late}.lock"),
            format!(".{gone}.xml.tmp"),
            ".summary.tmp".to_string(),
            format!("{gone}.cancel"),
        ] {
            std::fs::write(folder.join(&name), b"").unwrap();
            std::fs::set_permissions(
                folder.join(&name),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        // Not names the library makes: left alone.
        std::fs::write(folder.join(".notes.tmp"), b"").unwrap();
        std::fs::write(folder.join("x.lock"), b"").unwrap();
        let found = cat.leftovers(&dom);
        assert_eq!(found.temps.len(), 2);
        assert_eq!(found.jobs.len(), 5);
        let _g = cat.lock_domain(&dom).unwrap();
        assert!(
            !cat.sweep_leftovers(&dom, &found),
            "the dead job is not settled"
        );
        let mut left: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".xml") && n != "summary")
            .collect();
        left.sort();
        let mut want = vec![
            format!("{}.lock", live.uuid),
            format!("{}.lock", dead.uuid),
            ".notes.tmp".to_string(),
            "x.lock".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
        drop(live_lock);
    }

    #[test]
    fn an_abandoned_job_lock_keeps_its_file_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let rec = record(dom, dir.path().join("t"), BackupState::Running);
        let lock = cat
            .lock_job(&dom, &rec.uuid, cat.lock_domain_job(&dom).unwrap())
            .unwrap();
        cat.write_record(&rec).unwrap();
        assert_eq!(cat.job_status(&rec), JobStatus::Alive);
        lock.abandon();
        assert_eq!(cat.job_status(&rec), JobStatus::Dead);
        // The domain's job lock went with it.
        assert!(cat.lock_domain_job(&dom).is_ok());
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
        cat.remove_data(found, &mut || {}).unwrap();
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
    fn a_domain_job_shows_housekeeping_that_a_user_waits() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let (probe, _) = cat.foreground_probe().unwrap();
        let busy = |p: &File| match p.try_lock() {
            Ok(()) => p.unlock().map(|()| false).unwrap(),
            Err(_) => true,
        };
        assert!(!busy(&probe));
        let a = cat.lock_domain_job(&Uuid::new_v4()).unwrap();
        let b = Catalog::at(dir.path().join("cat"))
            .unwrap()
            .lock_domain_job(&Uuid::new_v4());
        assert!(busy(&probe));
        drop(a);
        assert!(busy(&probe), "another job still runs");
        drop(b);
        assert!(!busy(&probe));
    }

    #[test]
    fn a_thread_blocked_on_a_domain_lock_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let (_, waiting) = cat.foreground_probe().unwrap();
        let busy = || match waiting.try_lock() {
            Ok(()) => waiting.unlock().map(|()| false).unwrap(),
            Err(_) => true,
        };
        let dom = Uuid::new_v4();
        let held = cat.lock_domain(&dom).unwrap();
        assert!(!busy(), "nobody waits yet");
        let root = dir.path().join("cat");
        let waiter = std::thread::spawn(move || {
            let cat = Catalog::at(root).unwrap();
            let _l = cat.lock_domain(&dom).unwrap();
        });
        let t = std::time::Instant::now();
        while !busy() {
            assert!(t.elapsed().as_secs() < 10, "the waiter never showed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        waiter.join().unwrap();
        assert!(!busy(), "the waiter got the lock and stopped waiting");
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
        let folder = Folder::open_root(dir.path()).unwrap();
        folder.write_atomic("x.xml", b"one").unwrap();
        folder.write_atomic("x.xml", b"two").unwrap();
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
        let folder = cat.make_domain_folder(&dom).unwrap();
        let text = std::fs::read_to_string(&sum).unwrap();
        let mut b2 = b.clone();
        b2.parent = None;
        summary::note_pending(&folder, &b.uuid).unwrap();
        folder
            .write_atomic(
                &record_name(&b.uuid),
                b2.to_catalog_xml().unwrap().as_bytes(),
            )
            .unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // The same for a removal, and for a new record.
        let d = record(dom, dir.path().join("d"), BackupState::Completed);
        summary::note_pending(&folder, &d.uuid).unwrap();
        folder
            .write_atomic(
                &record_name(&d.uuid),
                d.to_catalog_xml().unwrap().as_bytes(),
            )
            .unwrap();
        summary::note_pending(&folder, &a.uuid).unwrap();
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
    fn catalogs_of_one_root_share_one_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let a = Catalog::at(dir.path().join("cat")).unwrap();
        let b = Catalog::at(dir.path().join("cat")).unwrap();
        assert!(Arc::ptr_eq(&a.dir, &b.dir));
        // A root moved away and made again is a new folder.
        drop(b);
        std::fs::rename(dir.path().join("cat"), dir.path().join("old")).unwrap();
        let c = Catalog::at(dir.path().join("cat")).unwrap();
        assert!(!Arc::ptr_eq(&a.dir, &c.dir));
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

    /// Every file under `dir` (links not followed) with its content.
    fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            match e.file_type().unwrap().is_dir() {
                true => out.extend(tree(&p)),
                false => out.push((p.clone(), std::fs::read(&p).unwrap_or_default())),
            }
        }
        out.sort();
        out
    }

    /// A folder holding what a domain's folder holds for `backups`: what a
    /// library following a link to it would overwrite or remove.
    fn victim_like(dir: &Path, backups: &[Uuid]) -> PathBuf {
        let v = dir.join("victim");
        std::fs::create_dir_all(v.join("merging")).unwrap();
        std::fs::write(v.join("summary"), b"LVBKSUM1 0\n").unwrap();
        for u in backups {
            for name in [
                format!("{u}.xml"),
                format!(".{u}.xml.tmp"),
                format!("{u}.deleting"),
            ] {
                std::fs::write(v.join(name), b"victim").unwrap();
            }
            std::fs::create_dir_all(v.join(format!("{u}.index"))).unwrap();
            std::fs::write(v.join(format!("{u}.index/vda.b3")), b"victim").unwrap();
        }
        v
    }

    /// Swap `folder` with a link to `victim` and back (atomic exchanges,
    /// so the folder's name never goes missing), counting in `swaps`,
    /// until `stop`.
    fn swapper(
        folder: PathBuf,
        victim: PathBuf,
        swaps: std::sync::Arc<std::sync::atomic::AtomicU64>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        use std::sync::atomic::Ordering::Relaxed;
        let link = folder.with_extension("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                if renameat_with(CWD, &folder, CWD, &link, RenameFlags::EXCHANGE).is_ok() {
                    swaps.fetch_add(1, Relaxed);
                    std::thread::yield_now();
                    renameat_with(CWD, &folder, CWD, &link, RenameFlags::EXCHANGE).unwrap();
                }
                std::thread::yield_now();
            }
        })
    }

    /// Create, index and delete backup `u` of `dom`; failures are fine.
    fn churn(cat: &Catalog, dom: Uuid, u: &Uuid, target: PathBuf) {
        let mut rec = record(dom, target, BackupState::Running);
        rec.uuid = *u;
        let _ = cat.write_record(&rec);
        let _ = cat.create_index_dir(&dom, u);
        let index = cat.index_path(&dom, u, "vda");
        let _ = super::super::index::IndexWriter::create(&index, 1)
            .and_then(|mut w| w.push(&[1; 32]).and_then(|()| w.finish()));
        rec.state = BackupState::Completed;
        let _ = cat.write_record(&rec);
        let _ = cat.remove_with_data(&rec);
    }

    /// An attacker keeps swapping a domain's folder for a link to a victim
    /// folder while backups are created, indexed and deleted: the victim
    /// is never written to nor removed from (calls may fail meanwhile).
    #[test]
    fn a_domain_folder_swapped_for_a_link_is_never_written_through() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let backups: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
        let victim = victim_like(dir.path(), &backups);
        let before = tree(&victim);
        let keep = record(dom, dir.path().join("keep"), BackupState::Completed);
        cat.write_record(&keep).unwrap(); // the folder stays between backups
        let (swaps, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let attacker = swapper(
            cat.domain_dir(&dom),
            victim.clone(),
            swaps.clone(),
            stop.clone(),
        );
        // Each backup once, and on (a loaded machine may start the attacker
        // late) until it swapped enough times, within a minute.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for (i, u) in backups.iter().cycle().enumerate() {
            let enough = i >= backups.len() && swaps.load(Relaxed) >= 300;
            if enough || std::time::Instant::now() > end {
                break;
            }
            churn(&cat, dom, u, dir.path().join("t"));
        }
        stop.store(true, Relaxed);
        attacker.join().unwrap();
        assert!(swaps.load(Relaxed) >= 300, "only {swaps:?} swaps");
        let after = tree(&victim);
        let changed: Vec<&Path> = (before.iter().filter(|f| !after.contains(f)))
            .chain(after.iter().filter(|f| !before.contains(f)))
            .map(|(p, _)| p.as_path())
            .collect();
        assert!(
            changed.is_empty(),
            "{} files of the victim folder written or removed, e.g. {:?}",
            changed.len(),
            &changed[..changed.len().min(4)]
        );
    }
}
