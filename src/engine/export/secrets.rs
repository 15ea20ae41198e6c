//! The keys of encrypted images, handed to qemu-storage-daemon. An image
//! whose passphrase the operation lent (`image::keys`: an export of a
//! stored encrypted backup) is opened with `encrypt.key-secret`, naming a
//! `secret` object that reads the passphrase from a pipe the daemon
//! inherits (`file=/dev/fd/N`): the key is never on the daemon's command
//! line (which `ps` shows anyone) nor in a file. Each pipe holds one
//! passphrase, written whole and closed before the daemon starts, so the
//! daemon reads it to its end at once; the read end is the only copy the
//! daemon gets, and this process closes its own once the daemon runs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::ExportDisk;
use crate::error::{Error, Result};
use crate::image::keys;
use crate::xml::backup::DiskFormat;

/// The secret objects for the encrypted images of an export.
#[derive(Debug, Default)]
pub(super) struct KeyPipes {
    /// An image's path, the id of the secret object that opens it.
    ids: HashMap<PathBuf, String>,
    /// The daemon's `--object` arguments, one per distinct passphrase.
    args: Vec<String>,
    /// The read ends the daemon inherits.
    reads: Vec<OwnedFd>,
}

impl KeyPipes {
    /// The pipes of every image of `disks` (each level of a chain given
    /// node by node too) whose passphrase is lent; none when none is.
    pub(super) fn of(disks: &[ExportDisk]) -> Result<KeyPipes> {
        let mut out = KeyPipes::default();
        let mut seen: Vec<(std::sync::Arc<Vec<u8>>, String)> = Vec::new();
        for d in disks {
            let mut levels = vec![(d.image.as_path(), d.format)];
            if let Some(b) = &d.backing {
                levels.extend(b.iter().map(|(p, f)| (p.as_path(), *f)));
            }
            for (path, format) in levels {
                let Some(key) = (format == DiskFormat::Qcow2)
                    .then(|| keys::passphrase(path))
                    .flatten()
                else {
                    continue;
                };
                let id = match seen.iter().find(|(k, _)| *k == key) {
                    Some((_, id)) => id.clone(),
                    None => {
                        let id = format!("key{}", seen.len());
                        let read = pipe_holding(&key)
                            .map_err(|e| Error::io("cannot hand the key of", path, e))?;
                        out.args.push("--object".into());
                        out.args.push(
                            json!({
                                "qom-type": "secret",
                                "id": id,
                                "file": format!("/dev/fd/{}", read.as_raw_fd()),
                            })
                            .to_string(),
                        );
                        out.reads.push(read);
                        seen.push((key, id.clone()));
                        id
                    }
                };
                ::log::debug!("'{}' opened with secret object {id}", path.display());
                out.ids.insert(path.to_path_buf(), id);
            }
        }
        // The lent passphrases are wiped when their lender is done, if no
        // copy is held here by then.
        drop(seen);
        Ok(out)
    }

    /// The `--object` arguments, before the nodes that name them.
    pub(super) fn args(&self) -> &[String] {
        &self.args
    }

    /// The `encrypt` options of the qcow2 node of the image at `path`, if
    /// its key was lent.
    pub(super) fn encrypt(&self, path: &Path) -> Option<serde_json::Value> {
        self.ids
            .get(path)
            .map(|id| json!({"format": "luks", "key-secret": id}))
    }

    /// The descriptors the daemon must inherit.
    pub(super) fn fds(&self) -> Vec<RawFd> {
        self.reads.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// A pipe holding `key`, its write end closed: its read end (close on
/// exec, at 3 or above so that no standard stream of a child replaces it).
fn pipe_holding(key: &[u8]) -> io::Result<OwnedFd> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let read = match read.as_raw_fd() < 3 {
        true => rustix::io::fcntl_dupfd_cloexec(&read, 3)?,
        false => read,
    };
    // Never blocking: a key longer than the pipe holds fails instead of
    // waiting for a reader that only starts later.
    rustix::io::ioctl_fionbio(&write, true)?;
    let mut write = File::from(write);
    write.write_all(key).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => io::Error::other("the key is longer than a pipe holds"),
        _ => e,
    })?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A lent key reaches the daemon through a pipe only: not in any
    /// argument; one object for two images with the same key.
    #[test]
    fn keys_through_pipes_only() {
        let (a, b) = (PathBuf::from("/k/a.qcow2"), PathBuf::from("/k/b.qcow2"));
        let key = b"pipe-test-key \xc3\xbc".to_vec();
        let _lent = keys::lend(vec![(a.clone(), key.clone()), (b.clone(), key.clone())]);
        let disk = ExportDisk {
            export_name: "vda".into(),
            image: a.clone(),
            format: DiskFormat::Qcow2,
            bitmap: None,
            backing: Some(vec![
                (b.clone(), DiskFormat::Qcow2),
                ("/k/c".into(), DiskFormat::Qcow2),
            ]),
        };
        let pipes = KeyPipes::of(&[disk]).unwrap();
        assert_eq!(pipes.args().len(), 2);
        assert_eq!(pipes.fds().len(), 1);
        assert_eq!(pipes.encrypt(&a), pipes.encrypt(&b));
        assert_eq!(pipes.encrypt(&a).unwrap()["key-secret"], "key0");
        assert!(pipes.encrypt(Path::new("/k/c")).is_none());
        let text = pipes.args().join(" ");
        assert!(!text.contains("pipe-test-key"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&pipes.args()[1]).unwrap();
        let fd = pipes.fds()[0];
        assert_eq!(v["file"], format!("/dev/fd/{fd}"));
        let mut got = Vec::new();
        File::open(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, key);
        let none = KeyPipes::of(&[ExportDisk {
            export_name: "vdb".into(),
            image: "/k/c".into(),
            format: DiskFormat::Qcow2,
            bitmap: None,
            backing: None,
        }])
        .unwrap();
        assert!(none.args().is_empty() && none.fds().is_empty());
    }

    #[test]
    fn a_key_longer_than_a_pipe_fails() {
        let e = pipe_holding(&vec![b'k'; 1 << 21]).unwrap_err();
        assert!(e.to_string().contains("longer than a pipe"), "{e}");
    }
}
