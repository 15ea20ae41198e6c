//! Where a restore may write: the checks on one target file before any
//! byte is written.
//!
//! - Its folder must be one only we (or root) can write
//!   (`Folder::open_outside`); every file the restore creates, chowns or
//!   renames there goes through that folder's descriptor, so nobody can
//!   swap a name between two of our calls.
//! - A symbolic link at the target's name is followed once (an
//!   administrator's link, such as LVM's `/dev/<vg>/<lv>`: only root or we
//!   could have made it in such a folder), and the file it names is then
//!   held to the same rules.
//! - A regular file is rewritten or replaced, a block device is written in
//!   place (raw); any other kind of file is refused.
//! - A file of any backup in the catalog (by device and inode, so through
//!   links and hard links too) is never a target, nor the source an
//!   unmanaged restore reads.
//! - A disk name becomes a file name only once it is one plain name.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use crate::error::{Error, Result};
use crate::image::file;
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;

/// What the folders of restore targets are called in messages.
const WHAT: &str = "restore target";

/// A file by device and inode.
pub(super) type FileId = (u64, u64);

/// What is at a target's name now.
pub(super) enum Kind {
    Missing,
    Regular,
    /// A block device and its size in bytes.
    Device(u64),
}

/// A restore target, placed: its checked folder and its name there.
pub(super) struct Place {
    /// The file the restore writes (the target, or what its link names).
    pub(super) path: PathBuf,
    pub(super) folder: Folder,
    pub(super) name: String,
    pub(super) kind: Kind,
}

impl Place {
    /// The checks of the module comment on `target`, whose folder must
    /// exist.
    pub(super) fn of(target: &Path) -> Result<Place> {
        let (folder, name) = folder_and_name(target)?;
        let st = match folder.stat(&name) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Place {
                    path: target.to_path_buf(),
                    folder,
                    name,
                    kind: Kind::Missing,
                });
            }
            Err(e) => return Err(Error::io("cannot inspect", target, e)),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            let kind = kind_of(target, &st)?;
            return Ok(Place {
                path: target.to_path_buf(),
                folder,
                name,
                kind,
            });
        }
        let real = fs::canonicalize(target)
            .map_err(|e| Error::io("cannot follow the link of restore target", target, e))?;
        let (folder, name) = folder_and_name(&real)?;
        let st = folder
            .stat(&name)
            .map_err(|e| Error::io("cannot inspect", &real, e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(Error::operation_invalid(format!(
                "restore target '{}' changed while it was checked",
                target.display()
            )));
        }
        let kind = kind_of(&real, &st)?;
        Ok(Place {
            path: real,
            folder,
            name,
            kind,
        })
    }

    /// The file's device and inode, if it exists.
    pub(super) fn id(&self) -> Option<FileId> {
        let st = self.folder.stat(&self.name).ok()?;
        Some((st.st_dev, st.st_ino))
    }
}

/// The checked folder of a restore target (one of its own, or an
/// instant restore's overlay), which must exist, and the target's name in
/// it.
pub(super) fn folder_and_name(target: &Path) -> Result<(Folder, String)> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::invalid_arg(format!(
                "restore target '{}' does not name a file",
                target.display()
            ))
        })?;
    let dir = target.parent().unwrap_or(Path::new("/"));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !dir.is_dir() {
        return Err(Error::invalid_arg(format!(
            "folder of restore target '{}' does not exist",
            target.display()
        )));
    }
    Ok((Folder::open_outside(dir, WHAT)?, name.to_string()))
}

/// A regular file, or a block device with its size; anything else is
/// refused (a character device or a FIFO would be replaced by a file, or
/// would block).
fn kind_of(path: &Path, st: &Stat) -> Result<Kind> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(Kind::Regular),
        FileType::BlockDevice => Ok(Kind::Device(device_size(path)?)),
        other => Err(Error::invalid_arg(format!(
            "restore target '{}' is {}, not a regular file or a block device",
            path.display(),
            match other {
                FileType::CharacterDevice => "a character device",
                FileType::Fifo => "a FIFO",
                FileType::Socket => "a socket",
                FileType::Directory => "a folder",
                _ => "a special file",
            }
        ))),
    }
}

/// The size of the block device at `path` (its `stat` says 0).
fn device_size(path: &Path) -> Result<u64> {
    let f = fs::File::open(path).map_err(|e| Error::io("cannot open block device", path, e))?;
    file::size(&f).map_err(|e| Error::io("cannot size block device", path, e))
}

/// The device and inode of every image file of every backup in the
/// catalog: what no restore may write over.
pub(super) fn backup_files(catalog: &Catalog) -> Result<HashSet<FileId>> {
    let mut out = HashSet::new();
    for domain in catalog.domains()? {
        for rec in catalog.domain(&domain).records()? {
            for d in &rec.disks {
                if let Ok(m) = fs::metadata(&d.target) {
                    out.insert((m.dev(), m.ino()));
                }
            }
        }
    }
    Ok(out)
}

/// The device and inode of `path`, if it exists.
pub(super) fn file_id(path: &Path) -> Option<FileId> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Refuse a disk name that is not one plain file name: it is joined to a
/// folder to make a file name (`<target dir>/<disk>.<format>`,
/// `<folder>/<domain>-<disk>.<format>`).
pub(crate) fn check_disk_file_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if plain {
        return Ok(());
    }
    Err(Error::invalid_arg(format!(
        "disk name '{}' cannot name a file: it must be one plain name (no '/', not starting with '.')",
        name.escape_default()
    )))
}
