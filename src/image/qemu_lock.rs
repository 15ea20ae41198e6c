//! QEMU's image locks, held on a shut-off domain's disk while a backup
//! reads its files directly, so that the domain cannot start and no QEMU
//! tool can write the image until the copy is over.
//!
//! QEMU's file driver (block/file-posix.c, checked against QEMU 7.2) locks
//! single bytes of an image with shared OFD locks (`F_OFD_SETLK`): byte
//! `100 + bit` means "I hold permission `bit`", byte `200 + bit` means "I
//! do not let others have permission `bit`". Before it uses an image it
//! takes its own bytes, then tests (`F_OFD_GETLK`, exclusive) the bytes of
//! the others that conflict: the 200-byte of every permission it wants,
//! the 100-byte of every permission it does not share. A process that
//! holds byte 201 therefore keeps out every writer: `qemu-io`, `qemu-img`
//! and a starting domain fail with `Failed to get "write" lock`.
//!
//! A backup holds what a read-only `qemu-io -r` holds: consistent read
//! (100), and write (201) and resize (203) not shared. Readers that only
//! read (`qemu-img info`, a read-only `qemu-storage-daemon`, such as the
//! one that reads an offline incremental's bitmap) still open the image.
//! As QEMU does, the bytes are taken first and the conflicts tested after,
//! so of a backup and a writer starting at the same moment one fails.
//!
//! The locks go on a duplicate of the very descriptor the copy reads (the
//! same open file description, so the same inode: nothing is opened again
//! by path), for every file of the disk's chain, and are released when the
//! `DiskLocks` is dropped. At the end of the copy, `check_unchanged` makes
//! sure that each file is still the one at its path, with the size and the
//! modification and change times it had (a writer that ignores QEMU's
//! locks changes them), and still locked against writers.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::image::file::{self as image_file, Kind};

/// Byte `PERM + bit`: "I hold permission `bit`".
const PERM: i64 = 100;
/// Byte `UNSHARED + bit`: "I do not share permission `bit`".
const UNSHARED: i64 = 200;
/// QEMU's permission bits (`BLK_PERM_*`) a backup's locks are about.
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;
const RESIZE: i64 = 3;

/// The bytes a backup holds: it reads, and shares neither write nor resize.
const HELD: [i64; 3] = [PERM + CONSISTENT_READ, UNSHARED + WRITE, UNSHARED + RESIZE];

/// A byte others may not hold while a backup reads: the byte, the lock
/// it is, and what its holder does.
type Conflict = (i64, &'static str, &'static str);

/// The bytes others may not hold while a backup reads.
const CONFLICTS: [Conflict; 3] = [
    (PERM + WRITE, "\"write\" lock", "may write to it"),
    (PERM + RESIZE, "\"resize\" lock", "may resize it"),
    (
        UNSHARED + CONSISTENT_READ,
        "lock against consistent reads",
        "lets nobody read it while it changes",
    ),
];

/// What is compared at the end of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(file: &File) -> std::io::Result<Stamp> {
    let st = rustix::fs::fstat(file)?;
    Ok(Stamp {
        dev: st.st_dev,
        ino: st.st_ino,
        size: image_file::size(file)?,
        mtime: (st.st_mtime, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
    })
}

/// One file of a disk's chain, locked.
#[derive(Debug)]
struct LockedFile {
    /// A duplicate of the descriptor the copy reads through.
    fd: File,
    path: PathBuf,
    kind: Kind,
    at_start: Stamp,
    /// False where the file system refuses OFD locks (the size and times
    /// are still checked).
    locked: bool,
}

impl Drop for LockedFile {
    fn drop(&mut self) {
        // Released now, not when the last descriptor on the open file
        // description closes (the reader's may outlive this one).
        if self.locked {
            for byte in HELD {
                let _ = ofd(&self.fd, libc::F_OFD_SETLK, libc::F_UNLCK, byte);
            }
        }
    }
}

/// QEMU's image locks on every file a domain's disk is read through, for
/// as long as this lives.
#[derive(Debug)]
pub struct DiskLocks {
    disk: String,
    files: Mutex<Vec<LockedFile>>,
}

/// `fcntl(fd, cmd, &flock)` on the one byte `byte`; the flock as the
/// kernel left it (`F_OFD_GETLK` fills in a conflicting lock).
fn ofd(fd: &File, cmd: libc::c_int, kind: libc::c_int, byte: i64) -> std::io::Result<libc::flock> {
    let mut fl = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        // OFD locks want 0 here.
        l_pid: 0,
    };
    // SAFETY: `fd` is an open descriptor for the whole call, and `fl` a
    // valid, initialised `struct flock` that `F_OFD_SETLK`/`F_OFD_GETLK`
    // read and write; rustix has no OFD locks.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl)
}

/// The first lock of another open file description that conflicts with a
/// backup's read: its byte, what it means, and the pid `F_OFD_GETLK`
/// gives (-1 for an OFD lock, which has no owning process).
fn conflict(fd: &File) -> std::io::Result<Option<(Conflict, i32)>> {
    for c in CONFLICTS {
        let fl = ofd(fd, libc::F_OFD_GETLK, libc::F_WRLCK, c.0)?;
        if fl.l_type != libc::F_UNLCK as libc::c_short {
            return Ok(Some((c, fl.l_pid)));
        }
    }
    Ok(None)
}

/// Whether the file system refuses OFD locks (QEMU then opens the image
/// unlocked too).
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOLCK)
    )
}

impl DiskLocks {
    /// No file locked yet for the domain's disk `disk` (named in errors).
    pub(crate) fn new(disk: &str) -> DiskLocks {
        DiskLocks {
            disk: disk.to_string(),
            files: Mutex::new(Vec::new()),
        }
    }

    /// Lock `file`, just opened from `path` and not read yet, as a backup
    /// does; refused (`VIR_ERR_OPERATION_INVALID`, naming the holder where
    /// it can be found) when another process writes or resizes it.
    pub(crate) fn lock(&self, file: &File, path: &Path, kind: Kind) -> Result<()> {
        let fd = file
            .try_clone()
            .map_err(|e| Error::io("cannot duplicate the descriptor of image", path, e))?;
        let at_start = stamp(&fd).map_err(|e| Error::io("cannot stat image", path, e))?;
        self.refuse_conflict(&fd, path, &at_start)?;
        let mut held = LockedFile {
            fd,
            path: path.to_path_buf(),
            kind,
            at_start,
            locked: true,
        };
        for byte in HELD {
            match ofd(&held.fd, libc::F_OFD_SETLK, libc::F_RDLCK, byte) {
                Ok(_) => {}
                Err(e) if unsupported(&e) => {
                    ::log::warn!(
                        "disk '{}': image '{}' cannot be locked ({e}): it is read without QEMU's locks",
                        self.disk,
                        path.display()
                    );
                    held.locked = false;
                    break;
                }
                Err(e) => return Err(Error::io("cannot lock image", path, e)),
            }
        }
        // Tested again once held: a writer that started meanwhile either
        // sees our bytes or is seen here.
        if held.locked {
            self.refuse_conflict(&held.fd, path, &at_start)?;
        }
        ::log::debug!(
            "disk '{}': image '{}' locked as QEMU does (consistent read; write and resize not shared)",
            self.disk,
            path.display()
        );
        self.files.lock().unwrap().push(held);
        Ok(())
    }

    fn refuse_conflict(&self, fd: &File, path: &Path, st: &Stamp) -> Result<()> {
        let found = conflict(fd).or_else(|e| match unsupported(&e) {
            true => Ok(None),
            false => Err(Error::io("cannot test the locks of image", path, e)),
        })?;
        let Some(((byte, lock, does), pid)) = found else {
            return Ok(());
        };
        let who = match holder(st, byte, pid) {
            Some((pid, comm)) => format!("{comm} (pid {pid})"),
            None => "another process".to_string(),
        };
        Err(Error::operation_invalid(format!(
            "disk '{}': image '{}' is in use: its {lock} is held by {who}, which {does}; \
             a shut-off domain's disk is backed up only while nothing writes to it: \
             end that process or wait until it closes the image, then try again",
            self.disk,
            path.display()
        )))
    }

    /// After the copy, before the backup is recorded: every file read is
    /// still the one at its path, with its size and times as they were,
    /// and still locked against writers; else `VIR_ERR_OPERATION_FAILED`.
    pub fn check_unchanged(&self) -> Result<()> {
        for f in self.files.lock().unwrap().iter() {
            f.check(&self.disk)?;
        }
        Ok(())
    }
}

impl LockedFile {
    fn check(&self, disk: &str) -> Result<()> {
        let path = self.path.display();
        let changed = |why: String| {
            Error::operation_failed(format!(
                "disk '{disk}': image '{path}' {why} while it was copied; the backup is discarded"
            ))
        };
        // The path first: a file renamed over it also changes the old
        // file's status change time (its link count).
        let fresh = image_file::open(&self.path, false, self.kind, "cannot open image")
            .map_err(|e| changed(format!("was removed or cannot be opened ({})", e.message)))?;
        let was = self.at_start;
        let there = stamp(&fresh).map_err(|e| changed(format!("could not be checked ({e})")))?;
        if (there.dev, there.ino) != (was.dev, was.ino) {
            return Err(changed("was replaced by another file at its path".into()));
        }
        let is = stamp(&self.fd).map_err(|e| changed(format!("could not be checked ({e})")))?;
        if was.size != is.size {
            return Err(changed(format!(
                "changed size ({} -> {} bytes)",
                was.size, is.size
            )));
        }
        if was.mtime != is.mtime {
            return Err(changed(
                "was modified (its modification time changed)".into(),
            ));
        }
        if was.ctime != is.ctime {
            return Err(changed(
                "was changed (its status change time changed)".into(),
            ));
        }
        if self.locked {
            // A descriptor of our own would not see our locks: a fresh one
            // must find write still not shared.
            let still = ofd(&fresh, libc::F_OFD_GETLK, libc::F_WRLCK, UNSHARED + WRITE)
                .map(|fl| fl.l_type != libc::F_UNLCK as libc::c_short)
                .unwrap_or(false);
            if !still {
                return Err(changed("lost its lock against writers".into()));
            }
        }
        Ok(())
    }
}

/// The process that holds a lock on `byte` of the file `st` names: `pid`
/// when the kernel gave one (a POSIX lock), else the first process with
/// a descriptor whose locks (`/proc/<pid>/fdinfo/<fd>`: an OFD lock shows
/// no pid in `/proc/locks`) cover the byte. `None` when not found (another
/// user's process, for a caller that is not root).
fn holder(st: &Stamp, byte: i64, pid: i32) -> Option<(i32, String)> {
    if pid > 0 {
        return Some((pid, comm(pid)));
    }
    let dev = rustix::fs::Dev::from(st.dev);
    let key = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev),
        st.ino
    );
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
            if text.lines().any(|l| covers(l, &key, byte)) {
                return Some((pid, comm(pid)));
            }
        }
    }
    None
}

/// Whether a `lock:` line of an fdinfo file (`lock: 1: OFDLCK ADVISORY
/// READ -1 fe:00:1234 100 101`) locks `byte` of the file `key`
/// (`major:minor:inode`).
fn covers(line: &str, key: &str, byte: i64) -> bool {
    let Some(rest) = line.strip_prefix("lock:") else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let Some(i) = f.iter().position(|t| *t == key) else {
        return false;
    };
    let bound = |k: usize| match f.get(i + k) {
        Some(&"EOF") => Some(i64::MAX),
        Some(t) => t.parse::<i64>().ok(),
        None => None,
    };
    matches!((bound(1), bound(2)), (Some(s), Some(e)) if s <= byte && byte <= e)
}

/// A process's command name (`/proc/<pid>/comm`).
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "an unknown command".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lock_lines() {
        let l = "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:10010683 100 101";
        assert!(covers(l, "fe:00:10010683", 101));
        assert!(covers(l, "fe:00:10010683", 100));
        assert!(!covers(l, "fe:00:10010683", 103));
        assert!(!covers(l, "fe:00:1001068", 101));
        assert!(covers(
            "lock: 2: POSIX ADVISORY WRITE 7 08:01:5 0 EOF",
            "08:01:5",
            203
        ));
        assert!(!covers("pos: 0", "08:01:5", 0));
    }
}
