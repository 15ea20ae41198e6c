//! `O_DIRECT` for new targets: when it is wanted, and where it is refused.
//!
//! Measured here (2 cores, virtio disk): direct writes leave no dirty data
//! for another domain's fsync to wait behind (ext4's ordered mode writes
//! it out at every journal commit) and equal buffered ones on long runs,
//! but each is synchronous, so a source of scattered 64 KiB runs copied
//! 2-4x slower than buffered writes with drop-behind (`image::cache`).
//! Backups and restores are written buffered with drop-behind;
//! housekeeping (a delete's merge, see `engine::background`) asks for
//! direct targets on its thread. `LIBVIRT_BACKUP_DIRECT=1` or `=0` forces
//! either way; a file system that refuses `O_DIRECT` gets buffered writes.
//!
//! Some file systems take `O_DIRECT` but do not keep it coherent with the
//! page cache, and there direct writes are never made, whatever is asked:
//! FUSE (`ceph-fuse` among others) and the kernel's CephFS. Measured with
//! a catalog on CephFS through `ceph-fuse` (`python-tests/test_cephfs.py`):
//! a merge formats its new image through the page cache, then writes its
//! data and header updates through an `O_DIRECT` handle; the merging
//! host's client kept the pages of the buffered format and served them to
//! later buffered reads, so verifying or restoring the merged backup there
//! failed ("backup data does not match its digest index at offset 0")
//! while another host read it right. Buffered writes there read back the
//! same on every host.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatDriverBuilder, StorageOpenOptions};

use crate::error::{Error, Result};

/// `statfs` f_type of FUSE file systems (`FUSE_SUPER_MAGIC`, also `fuseblk`).
const FUSE_SUPER_MAGIC: u64 = 0x6573_5546;
/// `statfs` f_type of the kernel's CephFS client (`CEPH_SUPER_MAGIC`).
const CEPH_SUPER_MAGIC: u64 = 0x00c3_6400;

/// Whether new targets are written with `O_DIRECT` where it is safe (see
/// the module's comment): `LIBVIRT_BACKUP_DIRECT` if set, else whether the
/// calling thread asked for it (`use_direct_targets`).
pub(crate) fn direct_wanted() -> bool {
    match std::env::var_os("LIBVIRT_BACKUP_DIRECT") {
        Some(v) => v != "0",
        None => DIRECT_TARGETS.with(|d| d.get()),
    }
}

thread_local! {
    static DIRECT_TARGETS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Targets the calling thread creates from now on are written with
/// `O_DIRECT` where the file system allows it.
pub fn use_direct_targets() {
    DIRECT_TARGETS.with(|d| d.set(true));
}

/// The name of the file system `file` is on when `O_DIRECT` writes there
/// are not coherent with buffered reads (FUSE, CephFS), else None.
fn incoherent_fs(file: &File) -> Option<&'static str> {
    let st = rustix::fs::fstatfs(file).ok()?;
    // f_type is signed on some targets; the magic numbers fit in 32 bits.
    match st.f_type as u64 & 0xffff_ffff {
        FUSE_SUPER_MAGIC => Some("FUSE"),
        CEPH_SUPER_MAGIC => Some("CephFS"),
        _ => None,
    }
}

/// `file` opened again with `O_DIRECT`, through its descriptor: the magic
/// link `/proc/self/fd/N` opens the very file the descriptor is on (even
/// one renamed over or unlinked since), never what a path names now.
/// Nothing else in `disk::Target` opens a file: `create_from` and
/// `open_existing` hand imago the descriptor they have. None where direct
/// writes are not wanted, are unsafe (`incoherent_fs`; logged, with
/// `path`), or are refused.
pub(super) fn reopen_direct(file: &File, path: &Path) -> Option<File> {
    use std::os::fd::AsRawFd;
    if !direct_wanted() {
        return None;
    }
    if let Some(fs) = incoherent_fs(file) {
        ::log::debug!(
            "'{}' is on {fs}: written through the page cache, not with O_DIRECT \
             (direct writes there leave stale pages for later reads)",
            path.display()
        );
        return None;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// A new qcow2 target formatted through the page cache, opened again for
/// its data writes through `direct` (imago aligns what needs it: header
/// updates, odd tails).
pub(super) fn reopen_qcow2_direct(direct: File, path: &Path) -> Result<Qcow2<ImagoFile>> {
    let what = |e: std::io::Error| Error::io("cannot open target image", path, e);
    let storage = ImagoFile::from_open_file(
        direct,
        StorageOpenOptions::new()
            .filename(path)
            .write(true)
            .direct(true),
    )
    .map_err(what)?;
    Qcow2::<ImagoFile>::builder(storage)
        .write(true)
        .backing(None)
        .open(DenyImplicitOpenGate::default())
        .map_err(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ceph-fuse mount, where this machine has one (the CephFS test
    /// cluster's, `scripts/ceph-single-node.sh`), gets no direct handle even
    /// when one is asked for; a disk file system does.
    #[test]
    fn no_direct_handle_on_fuse() {
        use_direct_targets();
        let disk = tempfile::tempfile_in("/var/tmp").unwrap();
        assert_eq!(incoherent_fs(&disk), None);
        assert!(reopen_direct(&disk, Path::new("/var/tmp/x")).is_some());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let fuse = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 2 && f[2] == "fuse.ceph-fuse").then(|| f[1].to_string())
        });
        let Some(dir) = fuse else {
            eprintln!("no ceph-fuse mount here: only the disk case was checked");
            return;
        };
        let Ok(file) = tempfile::tempfile_in(&dir) else {
            return;
        };
        assert_eq!(incoherent_fs(&file), Some("FUSE"));
        assert!(reopen_direct(&file, Path::new(&dir)).is_none());
    }
}
