//! The catalog as a security boundary. The library runs as root and
//! deletes and overwrites files the catalog names, so whoever can write in
//! the catalog could make it delete or overwrite any file. As OpenSSH's
//! StrictModes does, a catalog folder is used only when it is a real folder
//! (not a symbolic link) owned by the caller's uid (or root) and writable
//! by nobody else, and so is every folder above it (a world-writable one
//! only with the sticky bit, like /tmp). Folders and files are opened
//! relative to their folder's descriptor without following symbolic links
//! (`folder`), and crash cleanup removes only regular files of ours with
//! the private mode the library gives them.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::OFlags;

use super::folder::{Folder, check_mode, euid, owner_ok, unsafe_path};
use crate::error::{Error, Result};

/// Check one catalog folder by path: a real folder, ours (or root's),
/// writable by its owner only.
pub fn check_dir(path: &Path) -> Result<()> {
    let m = fs::symlink_metadata(path).map_err(|e| Error::io("cannot inspect", path, e))?;
    if m.file_type().is_symlink() {
        return Err(unsafe_path(path, "it is a symbolic link"));
    }
    check_mode(path, m.is_dir(), m.uid(), m.mode())
}

/// Check the folders above the root: owned by us or root, and not
/// writable by others unless sticky (nobody else could rename our folder).
fn check_ancestors(root: &Path) -> Result<()> {
    let mut cur = PathBuf::new();
    let parents: Vec<Component> = root.components().collect();
    for c in &parents[..parents.len().saturating_sub(1)] {
        cur.push(c);
        let m = fs::metadata(&cur).map_err(|e| Error::io("cannot inspect", &cur, e))?;
        let sticky = m.mode() & 0o1000 != 0;
        if !owner_ok(m.uid()) || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(unsafe_path(
                root,
                &format!(
                    "its parent folder '{}' (uid {}, mode {:o}) can be changed by another user",
                    cur.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// Open the catalog root, the folder every other catalog file and folder
/// is opened relative to: created 0700 if missing; an existing one must
/// pass the folder checks (on its descriptor, with its parents), and loses
/// any read or search permission for others (records hold domain
/// definitions with secrets).
pub fn prepare_root(root: &Path) -> Result<Folder> {
    if fs::symlink_metadata(root).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| Error::io("cannot create catalog folder", root, e))?;
    }
    let dir = Folder::open_root(root)?;
    let real = fs::canonicalize(root).map_err(|e| Error::io("cannot resolve", root, e))?;
    check_ancestors(&real)?;
    let st = dir
        .own_stat()
        .map_err(|e| Error::io("cannot inspect", root, e))?;
    if st.st_uid == euid() && st.st_mode & 0o077 != 0 {
        dir.set_mode(0o700)
            .map_err(|e| Error::io("cannot set mode of", root, e))?;
    }
    Ok(dir)
}

/// Options for a catalog file: never through a symbolic link, private.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Open (creating it) the lock file `name` of `dir`: a regular file of
/// ours, mode 0600.
pub fn open_lock(dir: &Folder, name: &str) -> std::io::Result<File> {
    let f = dir.open(name, OFlags::RDWR | OFlags::CREATE)?;
    let m = f.metadata()?;
    if !m.is_file() || m.uid() != euid() {
        return Err(std::io::Error::other(
            "the lock file is not a regular file of ours",
        ));
    }
    if m.mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Whether crash cleanup may remove `path`: an absolute path to a regular
/// file (not a symbolic link) owned by us with no permission for anyone
/// else, as the library creates every image and temporary file. Anything
/// else named by a note or record is left alone.
pub fn removable(path: &Path) -> bool {
    plain_absolute(path)
        && fs::symlink_metadata(path)
            .is_ok_and(|m| m.is_file() && m.uid() == euid() && m.mode() & 0o077 == 0)
}

/// An absolute path with no `..` in it.
pub fn plain_absolute(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|c| c == Component::ParentDir)
}

/// `removable` on a file's `lstat`: a regular file of ours, private.
pub fn own_private_file(st: &rustix::fs::Stat) -> bool {
    rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()
        && st.st_uid == euid()
        && st.st_mode & 0o077 == 0
}

/// Remove `path` if `removable` allows it, through the descriptor of its
/// folder, which must be one nobody else can write
/// (`Folder::open_outside`): in any other folder the name could be swapped
/// between the check and the removal.
pub fn remove_own_file(path: &Path) {
    if !plain_absolute(path) {
        return;
    }
    let Ok(Some((dir, name))) = Folder::outside_parent(path, "a file to clean up") else {
        return;
    };
    if dir.stat(&name).is_ok_and(|st| own_private_file(&st)) {
        crate::warn_if_err!(
            dir.remove_if_exists(&name),
            "cannot remove '{}'",
            path.display()
        );
    }
}

/// Blocks a file gives back per step of `shrink_before_removal`.
const SHRINK_STEP: u64 = 4 << 20;

/// Give back the blocks of `file`, about to be removed, a step at a time
/// from its end, calling `between` after each step. Freeing a large file's
/// blocks in one unlink is one long journal transaction (49 ms for 256 MiB
/// here, with online discard) that every other job's fsync waits behind;
/// 4 MiB steps cost under 1.5 ms each, 16 MiB ones up to 11 ms. Only a
/// regular file of ours with no other name: truncating a hard link would
/// destroy what its other name holds.
pub fn shrink_before_removal(file: &File, between: &mut dyn FnMut()) {
    let Ok(m) = file.metadata() else { return };
    if !m.is_file() || m.nlink() != 1 || m.uid() != euid() {
        return;
    }
    // The library's readers of a backup's files hold a shared flock on
    // them (`image::chain`): such a file is only unlinked, so that they
    // read on from the unlinked file as before.
    if file.try_lock().is_err() {
        return;
    }
    let mut size = m.len();
    while size > SHRINK_STEP {
        size -= SHRINK_STEP;
        if file.set_len(size).is_err() {
            return;
        }
        between();
    }
}

/// The real path of `path`, whose last components may not exist yet (a new
/// target, a folder made for it): its deepest existing folder is resolved,
/// the rest kept.
fn resolve(path: &Path) -> Option<PathBuf> {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = fs::canonicalize(cur) {
            return Some(rest.iter().rev().fold(real, |p, c| p.join(c)));
        }
        rest.push(cur.file_name()?);
        cur = cur.parent()?;
    }
}

/// Refuse a backup target, restore target or default-target folder inside
/// the catalog: it would let one backup overwrite or delete another's
/// files, or the catalog's own records.
pub fn refuse_inside(root: &Path, path: &Path, what: &str) -> Result<()> {
    let (Some(p), Ok(r)) = (resolve(path), fs::canonicalize(root)) else {
        return Ok(()); // a missing folder is reported by the caller
    };
    if p.starts_with(&r) {
        return Err(Error::invalid_arg(format!(
            "{what} '{}' lies inside the backup catalog '{}'; choose a place outside it",
            path.display(),
            root.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doomed_file_gives_back_its_blocks_a_step_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        fs::write(&p, vec![7u8; (3 * SHRINK_STEP + 100) as usize]).unwrap();
        let f = File::options().write(true).open(&p).unwrap();
        let mut sizes = Vec::new();
        shrink_before_removal(&f, &mut || sizes.push(fs::metadata(&p).unwrap().len()));
        let step = SHRINK_STEP;
        assert_eq!(sizes, vec![2 * step + 100, step + 100, 100]);
    }

    /// The attacker swaps a backup's image for a hard link to a file they
    /// want destroyed, or for a link or a FIFO: the delete may remove the
    /// name, never shrink what else the file is, nor hang.
    #[test]
    fn only_a_private_name_of_our_own_file_is_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        let data = vec![9u8; (2 * SHRINK_STEP) as usize];
        fs::write(&victim, &data).unwrap();
        let img = dir.path().join("img");
        fs::hard_link(&victim, &img).unwrap();
        let f = File::options().write(true).open(&img).unwrap();
        shrink_before_removal(&f, &mut || panic!("a file with two names was shrunk"));
        assert_eq!(fs::read(&victim).unwrap(), data);

        if euid() == 0 {
            // A file someone else owns is theirs to keep whole.
            let theirs = dir.path().join("theirs");
            fs::write(&theirs, &data).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let f = File::options().write(true).open(&theirs).unwrap();
            shrink_before_removal(&f, &mut || panic!("another user's file was shrunk"));
            assert_eq!(fs::metadata(&theirs).unwrap().len(), data.len() as u64);
        }
    }
}
