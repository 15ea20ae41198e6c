//! Deleting a backup, in crash order, as a typestate: each step consumes
//! the one before it, so the order is the compiler's to enforce.
//!
//! 1. [`BackupDir::mark_deleting`] renames the record to
//!    `<backup>.deleting` (synced) and drops it from the summary: the
//!    backup is no longer listed before any of its data goes. → [`Marked`]
//! 2. [`Marked::remove_data`]: the backup's images (each giving back its
//!    blocks a step at a time) and the folders it created. → [`DataRemoved`]
//! 3. [`DataRemoved::finish`]: the digest index, then the `.deleting` note.
//!
//! A failure or a crash at any point leaves either the listed backup with
//! all its data, or a `.deleting` note: [`DomainDir::pending_deletes`]
//! rebuilds a [`Marked`] from each, and recovery (`ops::recovery`) carries
//! it through the remaining steps. Never a listed backup without its data.
//!
//! A job that died leaves a different case: its record still says running
//! and only the files it made are removed ([`BackupDir::remove_dead_data`]).

use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use super::domain::{BackupDir, DomainDir};
use super::folder::Folder;
use super::names;
use super::records;
use super::secure;
use crate::error::{Error, Result};
use crate::xml::backup::BackupRecord;

/// A backup whose record is now its `.deleting` note: no longer listed,
/// its data still there. Next: `remove_data`.
#[must_use = "the backup's data stays until `remove_data` and `finish`"]
#[derive(Debug)]
pub struct Marked {
    backup: BackupDir,
    rec: BackupRecord,
}

/// A backup whose data is gone; its index and `.deleting` note remain.
/// Next: `finish`.
#[must_use = "the digest index and the `.deleting` note stay until `finish`"]
#[derive(Debug)]
pub struct DataRemoved {
    backup: BackupDir,
}

impl BackupDir {
    /// First step of a delete (see the module doc). A record that is
    /// already gone (a job that failed before writing it) is not an error.
    pub fn mark_deleting(&self, rec: &BackupRecord) -> Result<Marked> {
        let marked = Marked {
            backup: self.clone(),
            rec: rec.clone(),
        };
        let _guard = self.domain().lock()?;
        let Some(dir) = self.domain().folder()? else {
            return Ok(marked);
        };
        // The summary follows the record: pending first, so a crash between
        // the rename and the summary's update is read back correctly.
        records::note_pending(&dir, self.uuid())?;
        let from = names::record(self.uuid());
        match dir.rename(&from, &names::deleting(self.uuid())) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                let path = dir.join(&from);
                return Err(Error::io("cannot mark for deletion the record", &path, e));
            }
            _ => {}
        }
        dir.sync();
        records::settle_removal(&dir, self.uuid())?;
        crate::test_stop!("delete-marked");
        Ok(marked)
    }

    /// Remove what a job that died left: only files it created (regular
    /// files of ours, private), never whatever else a record names; then
    /// the record.
    pub fn remove_dead_data(&self, rec: &BackupRecord) -> Result<()> {
        for d in &rec.disks {
            crate::warn_if_err!(
                remove_target(self, &d.target, true, &mut || {}),
                "cannot remove '{}' of a dead job",
                d.target.display()
            );
        }
        remove_created_dirs(self, rec);
        self.remove_record()
    }
}

impl DomainDir {
    /// Deletes a process left half done: each `.deleting` note, as the
    /// step it reached, or why it cannot be read.
    pub fn pending_deletes(&self) -> Vec<(PathBuf, Result<Marked>)> {
        let Ok(Some(dir)) = self.folder() else {
            return Vec::new();
        };
        let found = dir.names().unwrap_or_default();
        found
            .iter()
            .filter_map(|n| n.to_str().filter(|n| names::is_deleting(n)))
            .map(|n| {
                let marked = records::read_record(&dir, n)
                    .and_then(|r| r.ok_or_else(|| Error::internal("note vanished")))
                    .map(|rec| Marked {
                        backup: self.backup_of(&rec),
                        rec,
                    });
                (dir.join(n), marked)
            })
            .collect()
    }
}

impl Marked {
    /// The record being deleted.
    pub fn record(&self) -> &BackupRecord {
        &self.rec
    }

    /// Second step: the backup's data files and the folders it created.
    /// Each file gives back its blocks a step at a time before it goes,
    /// calling `between` after each (see `secure::shrink_before_removal`).
    /// On a failure the `.deleting` note stays for recovery.
    pub fn remove_data(self, between: &mut dyn FnMut()) -> Result<DataRemoved> {
        for (i, d) in self.rec.disks.iter().enumerate() {
            remove_target(&self.backup, &d.target, false, between)?;
            if i == 0 {
                crate::test_stop!("delete-first-disk-removed");
            }
        }
        remove_created_dirs(&self.backup, &self.rec);
        Ok(DataRemoved {
            backup: self.backup,
        })
    }
}

impl DataRemoved {
    /// Last step: the digest index, then the `.deleting` note.
    pub fn finish(self) -> Result<()> {
        let domain = self.backup.domain();
        let Some(dir) = domain.folder()? else {
            return Ok(());
        };
        records::remove_index(&dir, self.backup.uuid())?;
        dir.remove_if_exists(&names::deleting(self.backup.uuid()))?;
        dir.sync();
        domain.drop_if_empty();
        Ok(())
    }
}

/// The backup's default folder in the catalog (`<domain>/<backup>/`),
/// open, and the name in it of `path` if `path` lies there.
fn in_data_dir(backup: &BackupDir, path: &Path) -> Result<Option<(Folder, String)>> {
    let data = backup.data_dir();
    let (Some(name), true) = (path.file_name(), path.parent() == Some(data.as_path())) else {
        return Ok(None);
    };
    let dir = match backup.domain().folder()? {
        Some(d) => d.sub(&names::data_dir(backup.uuid()))?,
        None => None,
    };
    Ok(dir.map(|d| (d, name.to_string_lossy().into_owned())))
}

/// Remove a target of a backup through its folder's descriptor: one in its
/// default folder in the catalog, any other in a folder that
/// `Folder::open_outside` accepts (else the removal is refused). With
/// `own`, only a private regular file of ours at an absolute path (see
/// `secure::removable`).
fn remove_target(
    backup: &BackupDir,
    path: &Path,
    own: bool,
    between: &mut dyn FnMut(),
) -> Result<()> {
    if own && !secure::plain_absolute(path) {
        return Ok(());
    }
    let found = match in_data_dir(backup, path)? {
        Some(found) => Some(found),
        // Elsewhere, through the descriptor of a folder nobody else can
        // write (`Folder::open_outside`): in any other folder a user could
        // swap a name (or a whole folder) for a link to another VM's files
        // between our calls.
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

/// The folders the backup's targets needed, innermost first, if empty: a
/// folder may have gained other files.
fn remove_created_dirs(backup: &BackupDir, rec: &BackupRecord) {
    let data = backup.data_dir();
    for dir in rec.created_dirs.iter().rev() {
        if *dir != data {
            if let Ok(Some((up, name))) = Folder::outside_parent(dir, "backup target") {
                crate::debug_if_err!(up.remove_dir(&name), "folder '{}' stays", dir.display());
            }
        } else if let Ok(Some(d)) = backup.domain().folder() {
            crate::debug_if_err!(
                d.remove_dir(&names::data_dir(backup.uuid())),
                "the backup's folder stays"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

    use uuid::Uuid;

    use super::*;
    use crate::store::catalog::Catalog;
    use crate::store::index::IndexWriter;
    use crate::xml::backup::BackupState;

    fn record(domain: Uuid, target: PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord::sample(domain, target, state)
    }

    #[test]
    fn a_delete_cut_short_is_not_listed_and_can_be_finished() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let target = dir.path().join("t.qcow2");
        std::fs::write(&target, b"data").unwrap();
        let rec = record(dom, target.clone(), BackupState::Completed);
        let b = cat.backup_of(&rec);
        b.write_record(&rec).unwrap();
        drop(b.mark_deleting(&rec).unwrap()); // and the process dies
        assert!(cat.domain(&dom).records().unwrap().is_empty());
        assert!(target.exists());
        let mut pending = cat.domain(&dom).pending_deletes();
        assert_eq!(pending.len(), 1);
        let marked = pending.pop().unwrap().1.unwrap();
        assert_eq!(marked.record().uuid, rec.uuid);
        marked.remove_data(&mut || {}).unwrap().finish().unwrap();
        assert!(!target.exists() && cat.domain(&dom).pending_deletes().is_empty());
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
        swaps: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
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
        let b = cat.backup_of(&rec);
        let _ = b.write_record(&rec);
        let _ = b.create_index_dir();
        let _ = IndexWriter::create(&b.index_path("vda"), 1)
            .and_then(|mut w| w.push(&[1; 32]).and_then(|()| w.finish()));
        rec.state = BackupState::Completed;
        let _ = b.write_record(&rec);
        let _ = (b.mark_deleting(&rec))
            .and_then(|m| m.remove_data(&mut || {}))
            .and_then(DataRemoved::finish);
    }

    /// An attacker keeps swapping a domain's folder for a link to a victim
    /// folder while backups are created, indexed and deleted: the victim
    /// is never written to nor removed from (calls may fail meanwhile).
    #[test]
    fn a_domain_folder_swapped_for_a_link_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let backups: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
        let victim = victim_like(dir.path(), &backups);
        let before = tree(&victim);
        let keep = record(dom, dir.path().join("keep"), BackupState::Completed);
        // The folder stays between backups.
        cat.backup_of(&keep).write_record(&keep).unwrap();
        let (swaps, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let folder = cat.domain(&dom).path();
        let attacker = swapper(folder, victim.clone(), swaps.clone(), stop.clone());
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
