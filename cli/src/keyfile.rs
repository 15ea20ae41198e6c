//! `create --encrypt-key-file FILE` (and a policy's `encrypt-key-file`):
//! a key kept in a file, registered as the libvirt secret an encrypted
//! backup names.
//!
//! The file's bytes are the key, as they are (no newline stripped: the same
//! bytes `qemu-img --object secret,id=s0,file=FILE` reads). It must be a
//! regular file of the caller's, which only its owner may read or write,
//! opened without following a symlink, not empty and at most 64 KiB
//! (libvirt's limit for a secret's value), and UTF-8 text without a NUL:
//! QEMU takes a LUKS passphrase only so ("Data from secret s0 is not valid
//! UTF-8"), and a backup it could not open with the same file would be
//! ours alone to read.
//!
//! Its secret: `private='no'` (the library reads a backup's key with
//! `virSecretGetValue`, which libvirt refuses for a private secret),
//! `ephemeral='no'`, usage type `volume` with the usage id
//! `virt-backup/key-` and 16 hex digits of a SHA-256 digest of the key, and
//! a UUID taken from the same digest: the same file gives the same secret
//! on every host, so that a backup's record (which keeps the UUID) reads
//! wherever the file is registered again. An existing secret of that
//! usage is used when its value is the key, and refused otherwise.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};
use virt::connect::Connect;
use virt::secret::Secret;

/// libvirt's limit for a secret's value over its RPC protocol.
const MAX_KEY: u64 = 65536;
/// What the digest of a key starts with (so that it is not the plain
/// SHA-256 of the key, which tables of common passphrases would list).
const DOMAIN: &[u8] = b"virt-backup key file\n";

/// Bytes wiped when dropped: the key, and what libvirt hands back.
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned byte of ours; volatile so that the
            // compiler keeps a write it would see as dead.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// The secret a key file was registered as.
pub(crate) struct KeySecret {
    pub uuid: String,
    pub usage: String,
    /// Defined (or given its value) by this call, rather than found.
    pub registered: bool,
}

impl KeySecret {
    /// What `create` prints.
    pub(crate) fn line(&self, file: &Path) -> String {
        let how = match self.registered {
            true => "registered as",
            false => "is",
        };
        format!(
            "Key file {}: {how} libvirt secret {} (usage '{}')",
            file.display(),
            self.uuid,
            self.usage
        )
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"uuid": self.uuid, "usage": self.usage, "registered": self.registered})
    }
}

/// The key in `path`, refused unless it is a non-empty regular file of
/// the caller's that nobody else may read or write, and not a symlink.
fn read_key(path: &Path) -> Result<Wiped, String> {
    let shown = path.display();
    let f = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO put there must not hang the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("key file {shown} is a symlink: refused"),
            _ => format!("cannot open the key file {shown}: {e}"),
        })?;
    let md = f.metadata().map_err(|e| format!("key file {shown}: {e}"))?;
    // SAFETY: geteuid takes nothing and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !md.file_type().is_file() {
        return Err(format!("key file {shown} is not a regular file: refused"));
    }
    if md.uid() != uid {
        return Err(format!(
            "key file {shown} belongs to uid {}, not to us (uid {uid}): refused",
            md.uid()
        ));
    }
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "key file {shown} has mode {:04o}: a key must be readable by its owner only \
             (chmod 600): refused",
            md.mode() & 0o7777
        ));
    }
    if md.len() > MAX_KEY {
        return Err(format!(
            "key file {shown} holds {} bytes: at most {MAX_KEY} (a libvirt secret's value)",
            md.len()
        ));
    }
    let mut key = Wiped(Vec::with_capacity(md.len() as usize));
    f.take(MAX_KEY + 1)
        .read_to_end(&mut key.0)
        .map_err(|e| format!("cannot read the key file {shown}: {e}"))?;
    match key.0.len() as u64 {
        0 => Err(format!("key file {shown} is empty: refused")),
        n if n > MAX_KEY => Err(format!("key file {shown} grew past {MAX_KEY} bytes")),
        _ if std::str::from_utf8(&key.0).is_err() || key.0.contains(&0) => Err(format!(
            "key file {shown} is not UTF-8 text (QEMU reads a LUKS passphrase only as \
             such): refused; make one with `head -c 32 /dev/urandom | base64 > FILE`"
        )),
        _ => Ok(key),
    }
}

/// The usage id and the UUID of a key's secret.
fn names(key: &[u8]) -> (String, String) {
    let d = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(key)
        .finalize();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let usage = format!("virt-backup/key-{}", hex(&d[..8]));
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[16..32]);
    // RFC 9562 version 8 (made by the application), variant 10.
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    let h = hex(&u);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    );
    (usage, uuid)
}

/// A secret's value (None: it has none), libvirt's copy wiped and freed
/// (virt's `value` leaves it in memory).
fn value(secret: &Secret) -> Result<Option<Wiped>, virt::error::Error> {
    let mut size: usize = 0;
    // SAFETY: a valid secret and a valid place for the size.
    let p = unsafe { virt::sys::virSecretGetValue(secret.as_ptr(), &mut size, 0) };
    if p.is_null() {
        let e = virt::error::Error::last_error();
        let none = virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoSecret);
        return match e.code() == none {
            true => Ok(None),
            false => Err(e),
        };
    }
    // SAFETY: libvirt returned `size` bytes at `p`, ours to free.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
    let v = Wiped(bytes.to_vec());
    bytes.fill(0);
    // SAFETY: allocated by libvirt with malloc, freed once, not used after.
    unsafe { libc::free(p.cast()) };
    Ok(Some(v))
}

/// Register the key in `path` as a secret on `conn` (or find it there).
pub(crate) fn register(conn: &Connect, path: &Path) -> Result<KeySecret, String> {
    let key = read_key(path)?;
    let (usage, uuid) = names(&key.0);
    let usage_type = virt::sys::VIR_SECRET_USAGE_TYPE_VOLUME as i32;
    if let Ok(s) = conn.lookup_secret_by_usage(usage_type, &usage) {
        let found = s.uuid_string().map_err(|e| e.message().to_string())?;
        return match value(&s) {
            Ok(Some(v)) if v.0 == key.0 => Ok(KeySecret {
                uuid: found,
                usage,
                registered: false,
            }),
            Ok(Some(_)) => Err(format!(
                "libvirt secret {found} of usage '{usage}' holds another value than the key \
                 file {}: refused (that usage id is this key's; see `virsh secret-dumpxml {found}`)",
                path.display()
            )),
            Ok(None) => set(&s, &key, found, usage),
            Err(e) => Err(format!(
                "libvirt secret {found} of usage '{usage}' cannot be compared to the key file \
                 {} (a backup's key must be a secret of private='no'): {}",
                path.display(),
                e.message()
            )),
        };
    }
    if let Ok(s) = conn.lookup_secret_by_uuid_string(&uuid) {
        let other = s.usage_id().unwrap_or_default();
        return Err(format!(
            "libvirt secret {uuid}, the key file's, is already defined with usage '{other}': refused"
        ));
    }
    let xml = format!(
        "<secret ephemeral='no' private='no'><uuid>{uuid}</uuid>\
         <description>virt-backup key file</description>\
         <usage type='volume'><volume>{usage}</volume></usage></secret>"
    );
    let s = conn.define_secret_xml(&xml, 0).map_err(|e| {
        format!(
            "cannot define the libvirt secret of the key file: {}",
            e.message()
        )
    })?;
    set(&s, &key, uuid, usage).inspect_err(|_| {
        let _ = s.undefine();
    })
}

/// Give `s` the key as its value.
fn set(s: &Secret, key: &Wiped, uuid: String, usage: String) -> Result<KeySecret, String> {
    s.set_value(&key.0, 0).map_err(|e| {
        format!(
            "cannot set the value of libvirt secret {uuid}: {}",
            e.message()
        )
    })?;
    Ok(KeySecret {
        uuid,
        usage,
        registered: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_tell_keys_apart() {
        let (u1, id1) = names(b"k3y");
        assert_eq!(names(b"k3y"), (u1.clone(), id1.clone()));
        let (u2, id2) = names(b"k3y\n");
        assert!(u1 != u2 && id1 != id2);
        assert!(u1.starts_with("virt-backup/key-") && u1.len() == 16 + 16);
        assert_eq!(id1.len(), 36);
        assert_eq!(&id1[14..15], "8");
        assert!(matches!(&id1[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn key_files_others_could_read_or_swap_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("vb-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, b"secret\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key(&key).unwrap().0, b"secret\n");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_key(&key).err().unwrap().contains("mode 0640"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(read_key(&link).err().unwrap().contains("symlink"));
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&empty).err().unwrap().contains("empty"));
        for bad in [&b"\xff\xfekey"[..], b"a\0b"] {
            std::fs::write(&empty, bad).unwrap();
            assert!(read_key(&empty).err().unwrap().contains("not UTF-8"));
        }
        assert!(read_key(&dir).err().unwrap().contains("not a regular file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
