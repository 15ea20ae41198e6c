//! Running exports, seen by every process: one private, empty file per
//! export in `<root>/.exports/`, named `<export>` for an export of a
//! domain and `<export>.<backup>` for one of a stored backup, on which the
//! exporting process holds an exclusive flock for as long as the export
//! runs (qemu-storage-daemon, which reads the backup's files, holds no
//! lock a Delete could see). The lock is released when the process dies:
//! a file nobody holds belongs to an exporter that died, and whoever finds
//! it removes it, with the export's scratch folder (`.scratch-<export>`).
//!
//! A new file is locked only after it was created, so a reader can find it
//! unlocked for a moment and take it for a dead exporter's: the exporter
//! checks, once it holds the lock, that its name still is its file, and
//! makes another if not.

use std::fs::File;

use rustix::fs::OFlags;
use uuid::Uuid;

use super::catalog::Catalog;
use super::folder::Folder;
use super::locks::same_file;
use super::names;
use super::secure;
use crate::error::{Error, Result};

/// An export's file, locked; dropping it removes the file.
#[derive(Debug)]
pub(crate) struct ExportLock {
    file: File,
    dir: Folder,
    name: String,
}

impl Drop for ExportLock {
    fn drop(&mut self) {
        crate::warn_if_err!(
            self.dir.remove_if_exists(&self.name),
            "cannot remove export registration {}",
            self.name
        );
        let _ = self.file.unlock();
    }
}

/// A running export: its UUID, and the stored backup it serves (`None`
/// for an export of a domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Running {
    pub export: Uuid,
    pub backup: Option<Uuid>,
}

/// The export a file name of `.exports` stands for; `None` for a name the
/// library does not make.
fn parse_name(name: &str) -> Option<Running> {
    let (export, backup) = names::parse_export_file(name)?;
    Some(Running { export, backup })
}

/// Note that `export` runs (serving the stored `backup`, if given) until
/// the returned lock is dropped.
pub(crate) fn register(catalog: &Catalog, export: &Uuid, backup: Option<&Uuid>) -> Result<ExportLock> {
    let dir = catalog.private_folder(names::EXPORTS)?;
    let name = names::export_file(export, backup);
    let path = dir.join(&name);
    for _ in 0..100 {
        let file = dir
            .create_new(&name)
            .map_err(|e| Error::io("cannot create export lock", &path, e))?;
        // A reader that took it for a dead exporter's holds it only to
        // remove it.
        file.lock()
            .map_err(|e| Error::io("cannot lock export lock", &path, e))?;
        if same_file(&file, &dir, &name) {
            return Ok(ExportLock { file, dir, name });
        }
    }
    Err(Error::operation_failed(format!(
        "cannot register the export in '{}': its lock file keeps being removed",
        path.display()
    )))
}

/// Whether the export file `name` is held by a live exporter; one nobody
/// holds is removed (its exporter died). Only a regular file of ours,
/// private, is looked at.
fn held_or_removed(dir: &Folder, name: &str) -> bool {
    let Ok(file) = dir.open(name, OFlags::RDONLY | OFlags::NONBLOCK) else {
        return false;
    };
    let own = rustix::fs::fstat(&file).is_ok_and(|st| secure::own_private_file(&st));
    if !own {
        return false;
    }
    match file.try_lock() {
        Err(_) => true,
        Ok(()) => {
            if same_file(&file, dir, name) {
                let _ = dir.remove(name);
            }
            false
        }
    }
}

/// The exports running now, in any process (this one's included); the
/// files of exporters that died are removed on the way.
pub(crate) fn running(catalog: &Catalog) -> Result<Vec<Running>> {
    let Some(dir) = catalog.folder(names::EXPORTS)? else {
        return Ok(Vec::new());
    };
    let names = dir
        .names()
        .map_err(|e| Error::io("cannot read", dir.path(), e))?;
    let mut out = Vec::new();
    for n in names {
        let Some(n) = n.to_str() else { continue };
        if let Some(r) = parse_name(n)
            && held_or_removed(&dir, n)
        {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_is_seen_while_it_runs_and_a_dead_ones_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let (e1, e2, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let one = register(&cat, &e1, Some(&b)).unwrap();
        let two = register(&cat, &e2, None).unwrap();
        let mut seen = running(&cat).unwrap();
        seen.sort_by_key(|r| r.export);
        let mut want = vec![
            Running {
                export: e1,
                backup: Some(b),
            },
            Running {
                export: e2,
                backup: None,
            },
        ];
        want.sort_by_key(|r| r.export);
        assert_eq!(seen, want);
        drop(two);
        assert_eq!(running(&cat).unwrap().len(), 1);
        // What a killed exporter leaves: its file, unlocked.
        let _ = one.file.unlock();
        std::mem::forget(one);
        let exports = dir.path().join("cat/.exports");
        assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 1);
        assert!(running(&cat).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 0);
        // Names the library does not make are left alone.
        std::fs::write(exports.join("notes.txt"), b"x").unwrap();
        std::fs::write(exports.join(format!("{}", e1).to_uppercase()), b"").unwrap();
        assert!(running(&cat).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&exports).unwrap().count(), 2);
    }
}
