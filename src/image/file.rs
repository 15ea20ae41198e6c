//! Opening the file of a disk image. An open never blocks and only a kind
//! of file an image can be is accepted: a FIFO put in place of a backup's
//! image would otherwise hang a read forever (an open for reading waits
//! for a writer, a read for data), and a character device or a socket
//! would be read as an endless or empty disk.
//!
//! Every open here is `O_NONBLOCK` (a FIFO opens at once), the kind is
//! checked on the opened descriptor (`fstat`: the file opened, whatever
//! the path names by then), and `O_NONBLOCK` is cleared on what is kept.
//! A regular file is always accepted; a block device only where a raw
//! image may be one (a logical volume); anything else is an error naming
//! the file and what it is.

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{OFlags, SeekFrom};

use crate::error::{Error, Result};
use crate::xml::backup::DiskFormat;

/// Which kinds of file an image may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file only (a qcow2 image: its clusters grow the file).
    Regular,
    /// A regular file or a block device (a raw image, as on a logical
    /// volume: written in place, its size the device's).
    RegularOrBlock,
}

impl Kind {
    /// The kinds of file an image of `format` may be.
    pub(crate) fn of(format: DiskFormat) -> Kind {
        match format {
            DiskFormat::Raw => Kind::RegularOrBlock,
            DiskFormat::Qcow2 => Kind::Regular,
        }
    }

    fn accepts(self, t: FileType) -> bool {
        t.is_file() || (self == Kind::RegularOrBlock && t.is_block_device())
    }

    fn wanted(self) -> &'static str {
        match self {
            Kind::Regular => "a regular file",
            Kind::RegularOrBlock => "a regular file or a block device",
        }
    }
}

/// What a file of type `t` is, for messages.
fn describe(t: FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "of an unknown type"
    }
}

/// Fail unless `m` is of a kind of file `kind` allows: the error names
/// `path` and says what it is ("it is a FIFO, not a regular file"), after
/// `what` ("cannot open image").
pub(crate) fn check_metadata(m: &Metadata, path: &Path, kind: Kind, what: &str) -> Result<()> {
    if kind.accepts(m.file_type()) {
        return Ok(());
    }
    Err(Error::operation_failed(format!(
        "{what} '{}': it is {}, not {}",
        path.display(),
        describe(m.file_type()),
        kind.wanted()
    )))
}

/// Fail unless `file`, opened from `path`, is a kind of file `kind`
/// allows; then clear `O_NONBLOCK` on it (reads and writes of what is kept
/// wait as usual). `what` starts the message ("cannot open image").
pub(crate) fn check(file: &File, path: &Path, kind: Kind, what: &str) -> Result<()> {
    let m = file
        .metadata()
        .map_err(|e| Error::io("cannot stat image", path, e))?;
    check_metadata(&m, path, kind, what)?;
    let flags = rustix::fs::fcntl_getfl(file).map_err(|e| Error::io(what, path, e.into()))?;
    if flags.contains(OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(file, flags - OFlags::NONBLOCK)
            .map_err(|e| Error::io(what, path, e.into()))?;
    }
    Ok(())
}

/// Open the image file at `path` read-only, or read-write with `write`,
/// without ever blocking, and only if it is a kind of file `kind` allows
/// (see the module's comment). A path naming another kind of file is
/// refused before it is opened (opening a device can have effects of its
/// own), and the opened descriptor is checked again (the path may name
/// another file by then).
pub(crate) fn open(path: &Path, write: bool, kind: Kind, what: &str) -> Result<File> {
    if let Ok(m) = std::fs::metadata(path) {
        check_metadata(&m, path, kind, what)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(what, path, e))?;
    check(&file, path, kind, what)?;
    Ok(file)
}

/// The size of an image file: a block device's is the device's (its
/// metadata says 0), found with `lseek(SEEK_END)`.
pub(crate) fn size(file: &File) -> std::io::Result<u64> {
    let m = file.metadata()?;
    if !m.file_type().is_block_device() {
        return Ok(m.len());
    }
    let end = rustix::fs::seek(file, SeekFrom::End(0))?;
    rustix::fs::seek(file, SeekFrom::Start(0))?;
    Ok(end)
}
