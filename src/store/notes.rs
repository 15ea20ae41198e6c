//! Notes of work in progress whose files a crash would leave behind, and
//! the one reader recovery uses for all of them ([`Note`]).
//!
//! - A restore's note, `<root>/.restoring-<id>`: the new files a restore
//!   writes from scratch, locked by the restore ([`StagedFiles`]) until
//!   the definition that uses them is in place. An instant restore's note
//!   also names the domain it defines on them (first line
//!   `domain <uuid> <uri>`). Each path ends with a NUL (the one byte no
//!   path holds); the last line is `end`, so a note cut short by a crash
//!   names nothing. Notes from before the NULs hold one path a line.
//! - A merge marker, `<domain>/merging/<backup>.<disk>`: the temporary
//!   file a merge into that disk writes (`DomainDir::mark_merge`). Markers
//!   live in a folder of their own: looking for them on every listing must
//!   not read a folder of thousands of records.
//!
//! Recovery reads them with [`Catalog::dead_restores`] and
//! [`DomainDir::dead_merges`]: only notes the library wrote, whose writer
//! is gone, naming only files the library may have made.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;
use uuid::Uuid;

use super::catalog::Catalog;
use super::domain::DomainDir;
use super::folder::Folder;
use super::names;
use super::paths;
use crate::error::{Error, Result};

/// The first line of a note of files a domain is defined on (paths are
/// absolute, so no path starts like this).
const NOTE_DOMAIN: &str = "domain ";

/// Last line of a complete restore note.
const NOTE_END: &[u8] = b"end\n";

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
        crate::warn_if_err!(
            self.root.remove_if_exists(&self.name),
            "cannot remove restore note {}",
            self.name
        );
    }
}

/// Who a dead restore's files may belong to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Nobody: the files are the dead writer's, to remove.
    Nobody,
    /// The domain the restore was defining on them: if it was defined on
    /// them before the process died, they are its disks.
    Domain { uuid: Uuid, uri: String },
    /// The note names a domain in a way that cannot be read: keep them.
    Unknown,
}

/// What a restore or a merge that died left noted: the files it was
/// writing and who they may belong to. Dropped, the note stays (a later
/// sweep looks again); `forget` removes it once its files are dealt with.
#[derive(Debug)]
pub struct Note {
    pub owner: Owner,
    /// The files, as the note names them (absolute paths, unchecked: only
    /// remove them with `secure::remove_own_file`).
    pub files: Vec<PathBuf>,
    folder: Arc<Folder>,
    name: String,
    /// A restore note's lock, held while its files are dealt with.
    _held: Option<File>,
}

impl Note {
    /// The files are dealt with: remove the note.
    pub fn forget(self) {
        crate::warn_if_err!(
            self.folder.remove_if_exists(&self.name),
            "cannot remove restore note {}",
            self.name
        );
    }
}

impl Catalog {
    /// Note the files a restore is about to write from scratch; until
    /// `StagedFiles::done`, a process that finds the note unlocked (its
    /// restore died) removes them.
    pub fn stage_files(&self, paths: &[&Path]) -> Result<StagedFiles> {
        stage(self.root_folder(), None, paths)
    }

    /// `stage_files` for files a domain is about to be defined on: the note
    /// also names the domain, so that whoever sweeps a dead restore's note
    /// keeps the files when the domain was defined on them before the
    /// process died.
    pub fn stage_files_of_domain(
        &self,
        paths: &[&Path],
        domain: &Uuid,
        uri: &str,
    ) -> Result<StagedFiles> {
        let head = format!("{NOTE_DOMAIN}{domain} {uri}");
        stage(self.root_folder(), Some(head), paths)
    }

    /// The notes of restores whose process died. A note being written (its
    /// restore holds it) or not ours (not a private regular file of ours)
    /// is left alone; one cut short by a crash names nothing and goes.
    pub fn dead_restores(&self) -> Vec<Note> {
        let root = self.root_folder();
        let found = root.names().unwrap_or_default();
        let mut out = Vec::new();
        for n in found
            .iter()
            .filter(|n| names::is_restore_note(n.as_bytes()))
        {
            let name = n.to_string_lossy().into_owned();
            let Some(mut file) = open_note(root, &name) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue; // a restore in progress
            }
            let mut text = Vec::new();
            let _ = file.read_to_end(&mut text);
            let Some((owner, files)) = read_note(&text) else {
                crate::warn_if_err!(
                    root.remove_if_exists(&name),
                    "cannot remove damaged note {name}"
                );
                continue;
            };
            out.push(Note {
                owner,
                files,
                folder: root.clone(),
                name,
                _held: Some(file),
            });
        }
        out
    }
}

impl DomainDir {
    /// Note, before a merge writes `tmp` for `disk` of the backup `child`,
    /// where that temporary file is: if the process dies, the next reader
    /// removes it.
    /// A file of a backup's folder in the catalog is named relative to the
    /// root (`paths`), any other by its absolute path.
    pub fn mark_merge(&self, child: &Uuid, disk: &str, tmp: &Path) -> Result<()> {
        let name = paths::stored_name(self.root_path(), self.uuid(), tmp);
        self.make_folder()?.make_sub(names::MERGING)?.write_atomic(
            &names::merge_marker(child, disk),
            name.as_os_str().as_encoded_bytes(),
        )
    }

    /// The merge of that disk ended (its file renamed, or removed).
    pub fn unmark_merge(&self, child: &Uuid, disk: &str) {
        if let Some(m) = self.merge_folder() {
            crate::warn_if_err!(
                m.remove_if_exists(&names::merge_marker(child, disk)),
                "cannot remove the merge marker of disk '{disk}' of backup {child}"
            );
        }
    }

    /// The markers of merges (running ones too: take the domain's lock,
    /// under which merges run, before acting on them). A marker that names
    /// anything but a merge's own temporary file (damaged or edited) names
    /// nothing: it must never lead to an image's removal.
    pub fn dead_merges(&self) -> Vec<Note> {
        let Some(dir) = self.merge_folder().map(Arc::new) else {
            return Vec::new();
        };
        let found = dir.names().unwrap_or_default();
        let note = |n: &std::ffi::OsString| {
            let name = n.to_string_lossy().into_owned();
            let tmp = dir.read(&name).unwrap_or_default();
            let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&tmp));
            // A relative name that is not a backup folder's names nothing.
            let tmp = paths::resolved_name(self.root_path(), self.uuid(), &tmp).unwrap_or_default();
            Note {
                owner: Owner::Nobody,
                files: is_merge_tmp(&tmp).then_some(tmp).into_iter().collect(),
                folder: dir.clone(),
                name,
                _held: None,
            }
        };
        found.iter().map(note).collect()
    }

    /// The domain's folder of merge markers, if it and the domain's exist.
    fn merge_folder(&self) -> Option<Folder> {
        self.folder().ok()??.sub(names::MERGING).ok()?
    }
}

/// Write a new restore note in the root, locked.
fn stage(root: &Arc<Folder>, head: Option<String>, paths: &[&Path]) -> Result<StagedFiles> {
    let name = names::new_restore_note();
    let path = root.join(&name);
    let file = root
        .create_new(&name)
        .map_err(|e| Error::io("cannot create", &path, e))?;
    let staged = StagedFiles {
        file,
        root: root.clone(),
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
    // The end mark: a note cut short by a crash while it was written (a
    // path truncated into another file's name) is never acted on.
    text.extend_from_slice(NOTE_END);
    std::io::Write::write_all(&mut &staged.file, &text)
        .and_then(|()| staged.file.sync_all())
        .map_err(|e| Error::io("cannot write", &path, e))?;
    Ok(staged)
}

/// Open a restore note if the library wrote it: a regular file of ours,
/// private (checked on the open file).
fn open_note(root: &Folder, name: &str) -> Option<File> {
    use std::os::unix::fs::MetadataExt;
    let file = root.open(name, OFlags::RDONLY).ok()?;
    let m = file.metadata().ok()?;
    let euid = rustix::process::geteuid().as_raw();
    (m.is_file() && m.uid() == euid && m.mode() & 0o077 == 0).then_some(file)
}

/// What a complete restore note says: who the files may belong to, and
/// the files; `None` for a note cut short by a crash while it was written.
fn read_note(text: &[u8]) -> Option<(Owner, Vec<PathBuf>)> {
    let mut text = text.strip_suffix(NOTE_END)?;
    let mut owner = Owner::Nobody;
    if text.starts_with(NOTE_DOMAIN.as_bytes()) {
        let end = text.iter().position(|&b| b == b'\n')?;
        owner = read_owner(&String::from_utf8_lossy(&text[..end]));
        text = &text[end + 1..];
    }
    let sep = if text.contains(&0) { 0 } else { b'\n' };
    let files = text
        .split(|&b| b == sep)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect();
    Some((owner, files))
}

/// The domain a `domain <uuid> <uri>` line names.
fn read_owner(head: &str) -> Owner {
    let named = head.strip_prefix(NOTE_DOMAIN).and_then(|rest| {
        let (uuid, uri) = rest.split_once(' ')?;
        Some((Uuid::parse_str(uuid).ok()?, uri.to_string()))
    });
    match named {
        Some((uuid, uri)) => Owner::Domain { uuid, uri },
        None => Owner::Unknown,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::backup::{BackupRecord, BackupState};

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
        // Held by a live restore: not a dead one's.
        assert!(cat.dead_restores().is_empty());
        let name = std::fs::read_dir(cat.root())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| names::is_restore_note(p.file_name().unwrap().as_bytes()))
            .unwrap();
        let text = std::fs::read(&name).unwrap();
        let (owner, files) = read_note(&text).unwrap();
        let uri = "test:///default".to_string();
        assert_eq!(owner, Owner::Domain { uuid: dom, uri });
        assert_eq!(files, vec![odd.clone(), plain.clone()]);
        note.done();
        assert!(!name.exists());
        // A note from before paths ended with a NUL: one a line.
        let old = format!("{}\n{}\nend\n", odd.display(), plain.display());
        let (owner, files) = read_note(old.as_bytes()).unwrap();
        assert_eq!(owner, Owner::Nobody);
        assert_eq!(files.len(), 3);
        // Cut short: names nothing.
        assert!(read_note(&text[..text.len() - 2]).is_none());
        assert_eq!(read_owner("domain nonsense"), Owner::Unknown);
    }

    #[test]
    fn a_dead_restores_note_is_read_once_and_a_cut_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let file = dir.path().join("new.qcow2");
        let write = |name: &str, text: &[u8]| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .mode(0o600)
                .write(true)
                .create_new(true)
                .open(cat.root().join(name))
                .unwrap();
            std::io::Write::write_all(&mut f, text).unwrap();
        };
        let mut text = file.as_os_str().as_bytes().to_vec();
        text.push(0);
        text.extend_from_slice(NOTE_END);
        write(".restoring-a", &text);
        write(".restoring-b", b"cut sh");
        let notes = cat.dead_restores();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].files, vec![file]);
        assert!(!cat.root().join(".restoring-b").exists());
        for n in notes {
            n.forget();
        }
        assert!(cat.dead_restores().is_empty());
    }

    #[test]
    fn damaged_merge_markers_name_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let disk = dir.path().join("disk.qcow2");
        // A merge marker edited to name an image names nothing.
        let child = BackupRecord::sample(Uuid::new_v4(), disk.clone(), BackupState::Completed);
        cat.backup_of(&child).write_record(&child).unwrap();
        let dom = cat.domain(&child.domain_uuid);
        dom.mark_merge(&child.uuid, "vda", &disk).unwrap();
        let tmp = dir
            .path()
            .join(format!(".disk.qcow2.merge-{}", Uuid::new_v4()));
        dom.mark_merge(&child.uuid, "vdb", &tmp).unwrap();
        let mut named: Vec<Vec<PathBuf>> = dom.dead_merges().into_iter().map(|n| n.files).collect();
        named.sort();
        assert_eq!(named, vec![vec![], vec![tmp]]);
        for n in dom.dead_merges() {
            n.forget();
        }
        assert!(dom.dead_merges().is_empty());

        // A merge's file in a backup's folder of the catalog is noted
        // relative to the root, and read back under it; a relative name
        // leading out of the domain's backup folders names nothing.
        let id = Uuid::new_v4();
        let in_catalog = dom
            .path()
            .join(child.uuid.to_string())
            .join(format!(".vda.qcow2.merge-{id}"));
        dom.mark_merge(&child.uuid, "vdc", &in_catalog).unwrap();
        let marker = dom
            .path()
            .join(names::MERGING)
            .join(names::merge_marker(&child.uuid, "vdc"));
        let text = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(
            text,
            format!("{}/{}/.vda.qcow2.merge-{id}", child.domain_uuid, child.uuid)
        );
        assert_eq!(dom.dead_merges()[0].files, vec![in_catalog]);
        let escape = format!(
            "{}/{}/../../x/.vda.qcow2.merge-{id}",
            child.domain_uuid, child.uuid
        );
        std::fs::write(&marker, escape).unwrap();
        assert_eq!(dom.dead_merges()[0].files, Vec::<PathBuf>::new());
    }
}
