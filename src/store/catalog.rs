//! The backup catalog on disk: its root, and the handles of what is in it.
//!
//! Where to find what (the layout is in `names`, the locks in `locks`):
//!
//! | concern | module | entry points |
//! | --- | --- | --- |
//! | every file and folder name | `names` | `names::record`, `names::in_domain`, … |
//! | the root, domains, shared folders | `catalog` (here) | `Catalog::open`, `domain`, `backup`, `domains`, `domain_of` |
//! | a domain's folder, a backup's files | `domain` | `DomainDir`, `BackupDir`, `CancelMarker` |
//! | locks, and which operation takes which | `locks` | `CatalogLock`, `DomainLock`, `DomainJobLock`, `JobLock`, `ForegroundProbe` |
//! | records and the listing summary | `records` (`summary` for its format) | `BackupDir::record`, `write_record`, `DomainDir::entries` |
//! | the delete's steps | `delete` | `BackupDir::mark_deleting` → `Marked::remove_data` → `DataRemoved::finish` |
//! | restore notes, merge markers | `notes` | `Catalog::stage_files`, `DomainDir::mark_merge`, `Note` |
//! | what recovery reads | `leftovers`, `notes`, `delete` | `DomainDir::leftovers`, `dead_merges`, `pending_deletes`, `Catalog::dead_restores` |
//!
//! The catalog stores and locks; what becomes of what a dead process left
//! (a `running` record whose job lock can be taken, a cut-short delete,
//! merge or restore) is decided in `ops::recovery`.
//!
//! Every file and folder is opened relative to the descriptor of the
//! folder it is in (`folder`): the root is opened once per root and shared
//! by every `Catalog` of it, a domain's folder relative to it at each use.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::domain::{BackupDir, DomainDir};
use super::folder::Folder;
use super::locks::{CatalogLock, ForegroundProbe};
use super::names;
use super::secure;
use crate::error::{Error, Result};
use crate::xml::backup::BackupRecord;

/// The backup catalog under one root folder; clones share the open root.
#[derive(Debug, Clone)]
pub struct Catalog {
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

impl Catalog {
    /// The catalog at the configured root, created if missing.
    pub fn open() -> Result<Catalog> {
        Catalog::at(default_root())
    }

    /// The catalog at the configured root if it exists (nothing is
    /// created); `None` if it does not.
    pub fn open_existing() -> Result<Option<Catalog>> {
        let root = default_root();
        match std::fs::symlink_metadata(&root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => Catalog::at(root).map(Some),
        }
    }

    /// The catalog at `root`, created if missing.
    pub fn at(root: PathBuf) -> Result<Catalog> {
        let dir = shared_root(secure::prepare_root(&root)?);
        Ok(Catalog { dir })
    }

    /// The catalog's root folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The open root (for the handles and notes made from it).
    pub(super) fn root_folder(&self) -> &Arc<Folder> {
        &self.dir
    }

    /// A domain's folder (nothing is opened until used).
    pub fn domain(&self, domain: &Uuid) -> DomainDir {
        DomainDir::new(self.dir.clone(), *domain)
    }

    /// A backup of a domain.
    pub fn backup(&self, domain: &Uuid, backup: &Uuid) -> BackupDir {
        self.domain(domain).backup(backup)
    }

    /// The backup a record describes.
    pub fn backup_of(&self, rec: &BackupRecord) -> BackupDir {
        self.backup(&rec.domain_uuid, &rec.uuid)
    }

    /// Domains that have a folder in the catalog.
    pub fn domains(&self) -> Result<Vec<Uuid>> {
        let found = self
            .dir
            .names()
            .map_err(|e| Error::io("cannot read catalog folder", self.root(), e))?;
        Ok(found
            .iter()
            .filter_map(|n| names::parse_domain(&n.to_string_lossy()))
            .collect())
    }

    /// The domain a backup of any domain belongs to.
    pub fn domain_of(&self, backup: &Uuid) -> Result<Option<Uuid>> {
        let name = names::record(backup);
        Ok(self
            .domains()?
            .into_iter()
            .find(|dom| matches!(self.domain(dom).folder(), Ok(Some(d)) if d.stat(&name).is_ok())))
    }

    /// Take the catalog lock (blocks while another thread or process holds
    /// it). Only for what spans domains: see `locks`.
    pub fn lock(&self) -> Result<CatalogLock> {
        CatalogLock::take(&self.dir)
    }

    /// The catalog lock if nobody else holds it now, else `None`.
    pub fn try_lock(&self) -> Option<CatalogLock> {
        CatalogLock::try_take(&self.dir)
    }

    /// What housekeeping probes (see `locks::ForegroundProbe`).
    pub fn foreground_probe(&self) -> Option<ForegroundProbe> {
        ForegroundProbe::open(&self.dir)
    }

    /// A new private folder `<root>/<name>`.
    fn private_dir(&self, name: &str) -> Result<PathBuf> {
        self.private_folder(name).map(|f| f.path().to_path_buf())
    }

    /// The private folder `<root>/<name>` (`names::EXPORTS`, `PINS`),
    /// open, created if missing.
    pub fn private_folder(&self, name: &str) -> Result<Folder> {
        self.dir.make_sub(name)
    }

    /// The folder `<root>/<name>` if it exists.
    pub fn folder(&self, name: &str) -> Result<Option<Folder>> {
        self.dir.sub(name)
    }

    /// An export's scratch folder, `<root>/.scratch-<export>`, made
    /// private. Make it once the export is registered (`exports`): a
    /// scratch folder without a live export is a dead exporter's.
    pub fn scratch_dir(&self, export: &Uuid) -> Result<PathBuf> {
        self.private_dir(&names::scratch(export))
    }

    /// Where `scratch_dir` puts the scratch folder of an export or live
    /// backup (whether or not it exists).
    pub fn scratch_path(&self, export: &Uuid) -> PathBuf {
        self.dir.join(&names::scratch(export))
    }

    /// The exports that have a scratch folder in the root.
    pub fn scratch_folders(&self) -> Vec<Uuid> {
        let found = self.dir.names().unwrap_or_default();
        found
            .iter()
            .filter_map(|n| names::parse_scratch(n.to_str()?))
            .collect()
    }

    /// Remove an export's scratch folder and what is in it (a link at its
    /// name is removed, never followed).
    pub fn remove_scratch(&self, export: &Uuid) {
        crate::warn_if_err!(
            self.dir.remove_tree(&names::scratch(export)),
            "cannot remove the scratch folder of export {export}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn handles_name_their_files_in_the_root_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let (d, b) = (Uuid::new_v4(), Uuid::new_v4());
        let backup = cat.backup(&d, &b);
        let folder = dir.path().join("cat").join(d.to_string());
        assert_eq!(cat.domain(&d).path(), folder);
        assert_eq!(backup.data_dir(), folder.join(b.to_string()));
        assert_eq!(backup.record_path(), folder.join(format!("{b}.xml")));
        let index = folder.join(format!("{b}.index/vda.b3"));
        assert_eq!(backup.index_path("vda"), index);
    }
}
