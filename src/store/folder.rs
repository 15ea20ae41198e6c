//! Catalog folders held open. Every file of the catalog is created,
//! opened, renamed and removed relative to the descriptor of its folder,
//! and every folder is opened relative to its parent's descriptor with
//! `O_NOFOLLOW`, then checked on the descriptor (`fstat`): a folder swapped
//! for a symbolic link after a check cannot send a write or a removal
//! anywhere else, since no path is looked up twice.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// An open catalog folder, and its path (for messages, and for the files
/// whose path others need: images, qemu-img).
#[derive(Debug)]
pub struct Folder {
    fd: OwnedFd,
    path: PathBuf,
}

/// Flags every catalog file and folder is opened with.
const NEVER_FOLLOW: OFlags = OFlags::NOFOLLOW.union(OFlags::CLOEXEC);

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | NEVER_FOLLOW
}

/// Private files: read and write for their owner only.
const PRIVATE: Mode = Mode::RUSR.union(Mode::WUSR);

impl Folder {
    /// Open the folder at `path` (its last component never through a
    /// link) and check it: the catalog root, whose parents the caller
    /// checked (`secure::prepare_root`).
    pub fn open_root(path: &Path) -> Result<Folder> {
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())
            .map_err(|e| open_error(path, e, || link_at(None, path)))?;
        Folder::checked(fd, path.to_path_buf())
    }

    fn checked(fd: OwnedFd, path: PathBuf) -> Result<Folder> {
        let st =
            rustix::fs::fstat(&fd).map_err(|e| Error::io("cannot inspect", &path, e.into()))?;
        check_stat(&path, &st)?;
        Ok(Folder { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this folder (for messages and other tools).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The checked sub-folder `name`; `None` when it does not exist.
    pub fn sub(&self, name: &str) -> Result<Option<Folder>> {
        match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Folder::checked(fd, self.join(name)).map(Some),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(open_error(&self.join(name), e, || {
                link_at(Some(&self.fd), Path::new(name))
            })),
        }
    }

    /// The checked sub-folder `name`, created private if missing.
    pub fn make_sub(&self, name: &str) -> Result<Folder> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(Error::io(
                    "cannot create catalog folder",
                    &self.join(name),
                    e.into(),
                ));
            }
        }
        self.sub(name)?.ok_or_else(|| {
            let e = std::io::Error::from(std::io::ErrorKind::NotFound);
            Error::io("cannot create catalog folder", &self.join(name), e)
        })
    }

    /// Open (or create, with `flags`) the file `name`, never through a link.
    pub fn open(&self, name: &str, flags: OFlags) -> std::io::Result<File> {
        let fd = rustix::fs::openat(&self.fd, name, flags | NEVER_FOLLOW, PRIVATE)?;
        Ok(File::from(fd))
    }

    /// Create `name`, which must not exist (a link at its name included).
    pub fn create_new(&self, name: &str) -> std::io::Result<File> {
        self.open(name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL)
    }

    /// The whole content of the file `name`.
    pub fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut self.open(name, OFlags::RDONLY)?, &mut out)?;
        Ok(out)
    }

    /// At most `limit` bytes of the file `name`, which must be a regular
    /// file of ours (never a link, nor a FIFO that would block the open).
    pub fn read_own(&self, name: &str, limit: u64) -> std::io::Result<Vec<u8>> {
        let f = self.open(name, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let st = rustix::fs::fstat(&f)?;
        let regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
        if !regular || st.st_uid != euid() || st.st_mode & 0o077 != 0 {
            return Err(std::io::Error::other("not a private regular file of ours"));
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut out)?;
        Ok(out)
    }

    /// Replace `name` with `data` through the temporary file `tmp`
    /// (created anew, then renamed over it), without syncing: for files
    /// that only matter while their writer lives.
    pub fn replace(&self, name: &str, tmp: &str, data: &[u8]) -> std::io::Result<()> {
        let _ = self.remove(tmp);
        let written = self.create_new(tmp).and_then(|mut f| f.write_all(data));
        match written.and_then(|()| self.rename(tmp, name)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.remove(tmp);
                Err(e)
            }
        }
    }

    /// Write `name` so that a crash leaves the old or the new content:
    /// temporary file, fsync, rename, fsync of the folder.
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        let tmp = super::names::tmp(name);
        let write = || -> std::io::Result<()> {
            // A stale temporary file (or a link planted at its name) goes
            // first: the new one is created, never opened through a link.
            let _ = self.remove(&tmp);
            let mut f = self.create_new(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            crate::test_stop!("atomic-tmp-written");
            self.rename(&tmp, name)?;
            self.sync_io()
        };
        write().map_err(|e| {
            let _ = self.remove(&tmp);
            Error::io("cannot write catalog file", &self.join(name), e)
        })
    }

    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Remove the file (or link) `name`.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Remove the file `name`; a missing one is not an error.
    pub fn remove_if_exists(&self, name: &str) -> Result<()> {
        match self.remove(name) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", &self.join(name), e))
            }
            _ => Ok(()),
        }
    }

    /// Remove the empty folder `name`.
    pub fn remove_dir(&self, name: &str) -> std::io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    /// Remove the folder `name` and the files in it (one level: index
    /// folders hold files only). A link at its name is removed, never
    /// followed; a missing folder is not an error.
    pub fn remove_tree(&self, name: &str) -> std::io::Result<()> {
        let sub = match rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Folder {
                fd,
                path: self.join(name),
            },
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::LOOP | Errno::NOTDIR) => return self.remove(name),
            Err(e) => return Err(e.into()),
        };
        for n in sub.names()? {
            rustix::fs::unlinkat(&sub.fd, n.as_os_str(), AtFlags::empty())
                .map_err(std::io::Error::from)
                .or_else(ignore_missing)?;
        }
        self.remove_dir(name).or_else(ignore_missing)
    }

    /// The names in this folder (without `.` and `..`).
    pub fn names(&self) -> std::io::Result<Vec<OsString>> {
        let mut out = Vec::new();
        for e in rustix::fs::Dir::read_from(&self.fd)? {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name));
            }
        }
        Ok(out)
    }

    /// `lstat` of `name` in this folder.
    pub fn stat(&self, name: &str) -> std::io::Result<Stat> {
        Ok(rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// The folder's own `fstat`.
    pub fn own_stat(&self) -> std::io::Result<Stat> {
        Ok(rustix::fs::fstat(&self.fd)?)
    }

    /// Make renames and removals in this folder durable.
    pub fn sync(&self) {
        let _ = self.sync_io();
    }

    fn sync_io(&self) -> std::io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// The folder's descriptor as a `File` (its flock is a domain's lock).
    pub fn into_file(self) -> File {
        File::from(self.fd)
    }

    /// Set the folder's mode through its descriptor.
    pub fn set_mode(&self, mode: u32) -> std::io::Result<()> {
        Ok(rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))?)
    }

    /// A folder outside the catalog where the library creates, replaces,
    /// chowns or removes files (restore targets, backup targets, default
    /// target folders, instant-restore overlays). Opened by path, the
    /// folder itself never through a link, and checked on its descriptor
    /// as a catalog folder is: a real folder owned by us or root that
    /// nobody else can write. In any other folder another user could swap
    /// a name between two of our calls and turn a chown, a rename or a
    /// removal onto a file of their choice, so such a folder is refused
    /// (`what` says what the folder is for, in the message). Every file
    /// the caller then creates, renames or removes in it goes through the
    /// descriptor.
    pub fn open_outside(path: &Path, what: &str) -> Result<Folder> {
        let refuse = |why: &str| refuse_outside(path, what, why);
        let fd = match rustix::fs::open(path, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR) if link_at(None, path) => {
                // A link at the folder's name is followed only where
                // nobody else could have made it or could swap it: in a
                // folder that passes the same check (`/backups` made a
                // link to another disk by root).
                let parent = path.parent().unwrap_or(Path::new("/"));
                Folder::open_outside(parent, what).map_err(|_| {
                    refuse("it is a symbolic link in a folder other users can change")
                })?;
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
                rustix::fs::open(path, flags, Mode::empty())
                    .map_err(|e| Error::io("cannot open folder", path, e.into()))?
            }
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(refuse("it is not a folder")),
            Err(e) => return Err(Error::io("cannot open folder", path, e.into())),
        };
        check_outside(&fd, path, what)?;
        Ok(Folder {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The folder `name` in this folder outside the catalog, created
    /// private if missing, and opened and checked as `open_outside` does.
    pub fn make_outside_sub(&self, name: &str, what: &str) -> Result<Folder> {
        let path = self.join(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(Error::io("cannot create folder", &path, e.into())),
        }
        let fd = rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty()).map_err(
            |e| match e {
                Errno::LOOP | Errno::NOTDIR => refuse_outside(&path, what, "it is not a folder"),
                e => Error::io("cannot open folder", &path, e.into()),
            },
        )?;
        check_outside(&fd, &path, what)?;
        Ok(Folder { fd, path })
    }

    /// The checked folder of `path` (a file outside the catalog) and the
    /// file's name in it; `None` when the folder does not exist.
    pub fn outside_parent(path: &Path, what: &str) -> Result<Option<(Folder, String)>> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::invalid_arg(format!(
                "'{}' does not name a file",
                path.display()
            )));
        };
        if !dir.is_dir() {
            return Ok(None);
        }
        let name = name.to_string_lossy().into_owned();
        Ok(Some((Folder::open_outside(dir, what)?, name)))
    }

    /// The folder `dir` outside the catalog, its missing folders created
    /// (private) one by one through the descriptor of the one above, the
    /// deepest existing one and each new one checked as `open_outside`
    /// does.
    pub fn make_outside(dir: &Path, what: &str) -> Result<Folder> {
        let (base, missing) = existing_part(dir);
        let mut at = Folder::open_outside(base, what)?;
        for name in missing.iter().rev() {
            at = at.make_outside_sub(name, what)?;
        }
        Ok(at)
    }

    /// Whether `make_outside(dir, what)` would find its deepest existing
    /// folder usable (the error it would give), creating nothing.
    pub fn check_outside(dir: &Path, what: &str) -> Result<()> {
        Folder::open_outside(existing_part(dir).0, what).map(drop)
    }

    /// Change the owner of an open file (through its descriptor: never a
    /// path another user could swap).
    pub fn chown_file(file: &File, uid: u32, gid: u32) -> std::io::Result<()> {
        use rustix::process::{Gid, Uid};
        Ok(rustix::fs::fchown(
            file,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )?)
    }

    /// The folder at `path` opened through its last `levels` components
    /// one by one, each without following a link and checked; what is
    /// above them is the catalog root, whose path was checked when the
    /// catalog was opened. For the writers given a path, such as an
    /// index's (`<root>/<domain>/<backup>.index`, 2 levels).
    pub fn open_below(path: &Path, levels: usize) -> Result<Folder> {
        let names: Vec<&std::ffi::OsStr> = path.iter().collect();
        let split = names.len().checked_sub(levels).filter(|&n| n > 0);
        let Some(split) = split else {
            return Err(Error::internal(format!(
                "'{}' is not in a catalog",
                path.display()
            )));
        };
        let top: PathBuf = names[..split].iter().collect();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&top, flags, Mode::empty())
            .map_err(|e| Error::io("cannot open catalog folder", &top, e.into()))?;
        let mut at = Folder { fd, path: top };
        for n in &names[split..] {
            let n = n.to_string_lossy();
            at = at.sub(&n)?.ok_or_else(|| {
                let e = std::io::Error::from(std::io::ErrorKind::NotFound);
                Error::io("cannot open catalog folder", &at.join(&n), e)
            })?;
        }
        Ok(at)
    }
}

impl AsFd for Folder {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    match e.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(e),
    }
}

/// Whether `path` (in `dir`, or by itself) is a symbolic link.
fn link_at(dir: Option<&OwnedFd>, path: &Path) -> bool {
    let st = match dir {
        Some(d) => rustix::fs::statat(d, path, AtFlags::SYMLINK_NOFOLLOW),
        None => rustix::fs::lstat(path),
    };
    st.is_ok_and(|s| {
        rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Symlink
    })
}

/// The error for a folder that cannot be opened: a link or a file at its
/// name is refused as `secure::check_dir` words it.
fn open_error(path: &Path, e: Errno, is_link: impl Fn() -> bool) -> Error {
    match e {
        Errno::LOOP | Errno::NOTDIR if is_link() => unsafe_path(path, "it is a symbolic link"),
        Errno::NOTDIR => unsafe_path(path, "it is not a folder"),
        _ => Error::io("cannot open catalog folder", path, e.into()),
    }
}

/// The deepest existing folder of `dir`, and the names below it that do
/// not exist yet, innermost first.
fn existing_part(dir: &Path) -> (&Path, Vec<String>) {
    let mut missing = Vec::new();
    let mut base = dir;
    while !base.is_dir() {
        let (Some(up), Some(name)) = (base.parent(), base.file_name()) else {
            break;
        };
        missing.push(name.to_string_lossy().into_owned());
        base = up;
    }
    (base, missing)
}

fn refuse_outside(path: &Path, what: &str, why: &str) -> Error {
    Error::operation_invalid(format!(
        "refusing folder '{}' of {what}: {why}",
        path.display()
    ))
}

/// `Folder::open_outside`'s check, on the open folder's descriptor.
fn check_outside(fd: &OwnedFd, path: &Path, what: &str) -> Result<()> {
    let st = rustix::fs::fstat(fd).map_err(|e| Error::io("cannot inspect", path, e.into()))?;
    if !owner_ok(st.st_uid) {
        let why = format!(
            "it is owned by uid {}, not by uid {} or root",
            st.st_uid,
            euid()
        );
        return Err(refuse_outside(path, what, &why));
    }
    if st.st_mode & 0o022 != 0 {
        let why = format!(
            "other users can write in it (mode {:o})",
            st.st_mode & 0o7777
        );
        return Err(refuse_outside(path, what, &why));
    }
    Ok(())
}

/// The uid whose catalog this is.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub(crate) fn unsafe_path(path: &Path, what: &str) -> Error {
    Error::operation_failed(format!(
        "refusing to use catalog path '{}': {what}",
        path.display()
    ))
}

/// Whether a catalog folder's owner is us or root.
pub(crate) fn owner_ok(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// `check_dir` on an open folder's `fstat`.
fn check_stat(path: &Path, st: &rustix::fs::Stat) -> Result<()> {
    let is_dir = rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir();
    check_mode(path, is_dir, st.st_uid, st.st_mode)
}

/// A catalog folder as OpenSSH's StrictModes wants it: a real folder,
/// ours (or root's), writable by its owner only.
pub(crate) fn check_mode(path: &Path, is_dir: bool, uid: u32, mode: u32) -> Result<()> {
    if !is_dir {
        return Err(unsafe_path(path, "it is not a folder"));
    }
    if !owner_ok(uid) {
        return Err(unsafe_path(
            path,
            &format!("it is owned by uid {uid}, not by uid {} or root", euid()),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(unsafe_path(
            path,
            &format!(
                "it is writable by group or others (mode {:o})",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_root() -> (tempfile::TempDir, Folder) {
        let dir = tempfile::tempdir().unwrap();
        let root = Folder::open_root(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn a_linked_sub_folder_is_refused_and_nothing_goes_through_it() {
        let (dir, root) = private_root();
        let victim = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join("dom")).unwrap();
        for e in [
            root.sub("dom").unwrap_err(),
            root.make_sub("dom").unwrap_err(),
        ] {
            assert!(e.message.contains("it is a symbolic link"), "{}", e.message);
            assert!(
                e.message
                    .contains(&dir.path().join("dom").display().to_string())
            );
        }
        // A link at a file's name is neither written through nor followed
        // by a removal of a tree.
        assert!(root.open("dom", OFlags::WRONLY).is_err());
        root.remove_tree("dom").unwrap();
        assert!(!dir.path().join("dom").exists() && victim.path().exists());
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let e = root.sub("file").unwrap_err();
        assert!(e.message.contains("it is not a folder"), "{}", e.message);
    }

    #[test]
    fn a_folder_swapped_after_it_was_opened_is_not_followed() {
        let (dir, root) = private_root();
        let dom = root.make_sub("dom").unwrap();
        // The folder is swapped for a link to a victim after the check:
        // writes still go to the folder that was checked.
        let victim = tempfile::tempdir().unwrap();
        std::fs::rename(dir.path().join("dom"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(victim.path(), dir.path().join("dom")).unwrap();
        dom.write_atomic("rec.xml", b"data").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("moved/rec.xml")).unwrap(),
            b"data"
        );
        assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
    }

    #[test]
    fn folders_writable_by_others_or_foreign_are_refused() {
        let (dir, root) = private_root();
        root.make_sub("open").unwrap();
        std::fs::set_permissions(dir.path().join("open"), PermissionsExt::from_mode(0o777))
            .unwrap();
        let e = root.sub("open").unwrap_err();
        assert!(
            e.message.contains("writable by group or others"),
            "{}",
            e.message
        );
        let made = root.make_sub("made").unwrap();
        assert_eq!(made.own_stat().unwrap().st_mode & 0o777, 0o700);
        let f = made.create_new("f").unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert!(made.create_new("f").is_err());
        assert_eq!(made.names().unwrap(), vec![OsString::from("f")]);
    }
}
