//! The backing file a qcow2 image names in its header, read directly (no
//! image is opened): how a delete learns which images still read through a
//! file, whatever the catalog's records say.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::image::file::{self as image_file, Kind};

/// qcow2 header: magic, version, backing file offset (u64 BE) and size (u32 BE).
const HEADER: usize = 20;
/// qcow2's own limit on the backing file name.
const MAX_NAME: u32 = 1023;

/// The backing file named by the qcow2 image at `path` (relative names are
/// taken from the image's folder), or `None` for a raw image, a qcow2
/// image without one, or a file that cannot be read as either (only a
/// regular file is read, never blocking: see `image::file`).
pub fn backing_file(path: &Path) -> Option<PathBuf> {
    let mut f = image_file::open(path, false, Kind::Regular, "cannot open image").ok()?;
    let mut head = [0u8; HEADER];
    f.read_exact(&mut head).ok()?;
    if &head[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().unwrap());
    let size = u32::from_be_bytes(head[16..20].try_into().unwrap());
    if offset == 0 || size == 0 || size > MAX_NAME {
        return None;
    }
    let mut name = vec![0u8; size as usize];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset)).ok()?;
    f.read_exact(&mut name).ok()?;
    let name: PathBuf =
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name).into();
    Some(match name.is_absolute() {
        true => name,
        false => path.parent().unwrap_or(Path::new("/")).join(name),
    })
}

/// `path` with its `.` components dropped and each `..` taking away the
/// name before it, as text alone (no link is followed): how two names of
/// a backing file are compared, never how a file is opened.
pub(crate) fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img(args: &[&str]) {
        let ok = std::process::Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "qemu-img {args:?}");
    }

    #[test]
    fn reads_absolute_relative_and_no_backing() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            p("base.qcow2").to_str().unwrap(),
            "1M",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "raw",
            p("raw.img").to_str().unwrap(),
            "1M",
        ]);
        let abs = p("base.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            abs.to_str().unwrap(),
            p("abs.qcow2").to_str().unwrap(),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "base.qcow2",
            p("rel.qcow2").to_str().unwrap(),
        ]);
        assert_eq!(backing_file(&p("abs.qcow2")), Some(abs.clone()));
        assert_eq!(backing_file(&p("rel.qcow2")), Some(abs));
        assert_eq!(backing_file(&p("base.qcow2")), None);
        assert_eq!(backing_file(&p("raw.img")), None);
        assert_eq!(backing_file(&p("missing.qcow2")), None);
    }

    #[test]
    fn lexical_names() {
        let l = |s: &str| lexical(Path::new(s));
        assert_eq!(
            l("/c/d/b2/../b1/vda.qcow2"),
            PathBuf::from("/c/d/b1/vda.qcow2")
        );
        assert_eq!(l("/c/./d//x"), PathBuf::from("/c/d/x"));
        assert_eq!(l("/../x"), PathBuf::from("/../x"));
        assert_eq!(l("../../x"), PathBuf::from("../../x"));
    }
}
