//! The backup catalog on disk.
//!
//! Layout under the root (`LIBVIRT_BACKUP_DIR`, see API.md):
//! - `.lock`                      flock taken by every writer (threads and processes)
//! - `<domain>/<backup>.xml`      one record per backup, replaced atomically
//! - `<domain>/<backup>.lock`     flock held by the job while it copies
//! - `<domain>/<backup>/`         default folder for the backup's images
//! - `.restoring-<id>`           files a running restore writes from scratch
//!   (locked by it; removed by the next process if it died)
//! - `<domain>/default-target.xml` the persistent default target (CONFIG)
//! - `<domain>/<backup>.<disk>.merging` the temporary file of a merge into
//!   that backup's disk, while it runs
//!
//! The catalog only stores and locks: a record in state `running` whose job
//! lock can be taken belongs to a process that died, and what becomes of it
//! (and of cut-short merges and restores) is decided in `ops::recovery`.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::secure;
use crate::error::{Error, Result};
use crate::xml::backup::{BackupRecord, DefaultTarget};

const DEFAULT_TARGET_FILE: &str = "default-target.xml";

#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
}

/// The catalog-wide writer lock; released on drop. Re-entrant within a
/// thread (a second flock on a new descriptor would wait for itself).
pub struct CatalogLock {
    _file: Option<File>,
}

thread_local! {
    static LOCK_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl Drop for CatalogLock {
    fn drop(&mut self) {
        LOCK_DEPTH.with(|d| d.set(d.get() - 1));
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
/// file and any cancel request, then releases the lock.
pub struct JobLock {
    file: File,
    path: PathBuf,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path.with_extension("cancel"));
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
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

    /// Take the writer lock (blocks while another thread or process holds it).
    pub fn lock(&self) -> Result<CatalogLock> {
        self.acquire(true)
            .map(|l| l.expect("a blocking lock is always taken"))
    }

    /// The writer lock if nobody else holds it now, else `None`.
    pub fn try_lock(&self) -> Option<CatalogLock> {
        self.acquire(false).ok().flatten()
    }

    fn acquire(&self, wait: bool) -> Result<Option<CatalogLock>> {
        if LOCK_DEPTH.with(|d| d.get()) > 0 {
            LOCK_DEPTH.with(|d| d.set(d.get() + 1));
            return Ok(Some(CatalogLock { _file: None }));
        }
        let path = self.root.join(".lock");
        let file = secure::open_lock(&path)
            .map_err(|e| Error::io("cannot open catalog lock", &path, e))?;
        if wait {
            file.lock()
                .map_err(|e| Error::io("cannot lock catalog", &path, e))?;
        } else if file.try_lock().is_err() {
            return Ok(None);
        }
        LOCK_DEPTH.with(|d| d.set(d.get() + 1));
        Ok(Some(CatalogLock { _file: Some(file) }))
    }

    /// Note, before a merge writes `tmp` for a disk of `child`, where that
    /// temporary file is: if the process dies, the next reader removes it.
    pub fn mark_merge(&self, child: &BackupRecord, disk: &str, tmp: &Path) -> Result<()> {
        let path = self.merge_marker(child, disk);
        write_atomic(&path, tmp.as_os_str().as_encoded_bytes())
    }

    /// The merge of that disk ended (its file renamed, or removed).
    pub fn unmark_merge(&self, child: &BackupRecord, disk: &str) {
        let _ = fs::remove_file(self.merge_marker(child, disk));
    }

    fn merge_marker(&self, child: &BackupRecord, disk: &str) -> PathBuf {
        self.domain_dir(&child.domain_uuid)
            .join(format!("{}.{disk}.merging", child.uuid))
    }

    /// Take the job lock of a new backup. Call with the catalog lock held.
    pub fn lock_job(&self, domain: &Uuid, backup: &Uuid) -> Result<JobLock> {
        let dir = self.domain_dir(domain);
        make_private_dir(&dir)?;
        let path = self.job_lock_path(domain, backup);
        let file =
            secure::open_lock(&path).map_err(|e| Error::io("cannot create job lock", &path, e))?;
        file.try_lock().map_err(|_| {
            Error::operation_invalid(format!("backup '{backup}' already has a job"))
        })?;
        Ok(JobLock { file, path })
    }

    /// Whether the job of a running record is still alive somewhere.
    pub fn job_alive(&self, rec: &BackupRecord) -> bool {
        let path = self.job_lock_path(&rec.domain_uuid, &rec.uuid);
        match secure::options().write(true).open(&path) {
            Err(_) => false,
            Ok(f) => match f.try_lock() {
                Ok(()) => {
                    let _ = f.unlock();
                    false
                }
                Err(_) => true,
            },
        }
    }

    pub fn write_record(&self, rec: &BackupRecord) -> Result<()> {
        let dir = self.domain_dir(&rec.domain_uuid);
        make_private_dir(&dir)?;
        write_atomic(
            &self.record_path(&rec.domain_uuid, &rec.uuid),
            rec.to_catalog_xml().as_bytes(),
        )
    }

    /// Forget a backup; its data files stay.
    pub fn remove_record(&self, rec: &BackupRecord) -> Result<()> {
        let path = self.record_path(&rec.domain_uuid, &rec.uuid);
        remove_if_exists(&path)?;
        sync_dir(&self.domain_dir(&rec.domain_uuid));
        // The indexes go after the record: an index without a record is
        // never read, a record without its index would be a broken parent.
        let index = self.index_dir(&rec.domain_uuid, &rec.uuid);
        match fs::remove_dir_all(&index) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove digest index", &index, e))
            }
            _ => Ok(()),
        }
    }

    /// Remove a backup's data files and the folders it created, then its record.
    pub fn remove_with_data(&self, rec: &BackupRecord) -> Result<()> {
        for d in &rec.disks {
            remove_if_exists(&d.target)?;
        }
        for dir in rec.created_dirs.iter().rev() {
            // Only empty folders go: a folder may have gained other files.
            let _ = fs::remove_dir(dir);
        }
        self.remove_record(rec)
    }

    fn read_record(path: &Path) -> Option<BackupRecord> {
        let text = fs::read_to_string(path).ok()?;
        BackupRecord::from_catalog_xml(&text).ok()
    }

    /// The records of one domain as stored (a dead job's record still says
    /// running: `ops::recovery` resolves those), oldest first.
    pub fn records(&self, domain: &Uuid) -> Result<Vec<BackupRecord>> {
        let dir = self.domain_dir(domain);
        secure::check_dir_if_exists(&dir)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot read catalog folder", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".xml") else {
                continue;
            };
            if Uuid::parse_str(stem).is_err() {
                continue;
            }
            if let Some(rec) = Self::read_record(&entry.path()) {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| (r.created_ns, r.uuid));
        Ok(out)
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

    /// The record of a backup as stored, if there is one.
    pub fn record(&self, domain: &Uuid, backup: &Uuid) -> Option<BackupRecord> {
        Self::read_record(&self.record_path(domain, backup))
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

    /// The merge markers of a domain: (marker, temporary file it names).
    pub fn merge_markers(&self, domain: &Uuid) -> Vec<(PathBuf, PathBuf)> {
        let Ok(entries) = fs::read_dir(self.domain_dir(domain)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "merging"))
            .map(|m| {
                let tmp = fs::read(&m).unwrap_or_default();
                (m, PathBuf::from(std::ffi::OsStr::from_bytes(&tmp)))
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
        let _ = fs::remove_dir(self.domain_dir(domain));
        Ok(())
    }
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
    use crate::xml::backup::{BackupMode, BackupState, DiskFormat, DiskRecord, JobStats};

    fn record(domain: Uuid, target: PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord {
            uuid: Uuid::new_v4(),
            creation_time: 1,
            created_ns: 1,
            description: None,
            state,
            parent: None,
            domain_uuid: domain,
            domain_name: "d".into(),
            disks: vec![DiskRecord {
                name: "vda".into(),
                source: "/src".into(),
                source_format: DiskFormat::Raw,
                target,
                format: DiskFormat::Qcow2,
                mode: BackupMode::Full,
                virtual_size: 1,
                volume: None,
                backing: vec![],
            }],
            uri: "test:///default".into(),
            domain_xml: String::new(),
            stats: JobStats::default(),
            created_dirs: vec![],
            checkpoint: None,
        }
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
}
