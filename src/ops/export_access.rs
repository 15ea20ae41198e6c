//! Who can reach an unmanaged backup's NBD server: anyone who connects
//! reads the domain's disks, so a plain TCP export is only served on a
//! loopback address, a unix socket only to its owner, and a TLS export
//! (`tls='yes'`) to clients holding a certificate of the configured CA,
//! which may then listen on any address.

use std::io::ErrorKind;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hv::qemu_conf;
use crate::xml::backup::{NbdServer, UnmanagedRequest};

/// The variable that names the certificate folder of the exports the
/// library serves itself (tests, unprivileged use).
pub(crate) const TLS_DIR_ENV: &str = "LIBVIRT_BACKUP_TLS_X509_DIR";

/// Who serves an export, which decides where a TLS export's certificates
/// come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Served<'a> {
    /// libvirt's pull-mode job, on the connection of this URI: libvirt's
    /// `backup_tls_x509_cert_dir` and `backup_tls_x509_verify`.
    Libvirt { uri: &'a str },
    /// qemu-storage-daemon, started by the library: [`TLS_DIR_ENV`], else
    /// libvirt's folder; clients are always verified.
    Daemon,
}

/// Refuse a server address or TLS setup the export must not use, before
/// anything starts. Returns the certificate folder qemu-storage-daemon must
/// use (`Served::Daemon` with `tls='yes'`), else `None`.
pub(crate) fn check_server(req: &UnmanagedRequest, served: Served) -> Result<Option<PathBuf>> {
    let NbdServer::Tcp { host, port } = &req.server else {
        if req.tls {
            return Err(Error::config_unsupported(
                "tls='yes' is for transport='tcp' (a unix socket is its owner's only)",
            ));
        }
        return Ok(None);
    };
    let (dir, verified) = match (req.tls, served) {
        (false, _) => (None, false),
        (true, Served::Daemon) => (Some(daemon_cert_dir()?), true),
        (true, Served::Libvirt { uri }) => (None, libvirt_verifies(uri)?),
    };
    if !verified && !is_loopback(host, *port) {
        let why = if req.tls {
            "libvirt's backup TLS is not known to verify client certificates \
             (backup_tls_x509_verify in the qemu.conf of a local connection)"
        } else {
            "a plain TCP export is readable by anyone who can reach the port"
        };
        return Err(Error::invalid_arg(format!(
            "NBD server address '{host}' is not a loopback address: {why}; use \
             127.0.0.1, ::1, a unix socket, or tls='yes' with client certificates"
        )));
    }
    Ok(dir)
}

/// The certificate folder of qemu-storage-daemon's TLS exports, checked.
fn daemon_cert_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(TLS_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => qemu_conf::backup_tls(&qemu_conf::own_conf())?.dir,
    };
    if !dir.is_absolute() {
        return Err(Error::config_unsupported(format!(
            "TLS certificate folder '{}' is not an absolute path",
            dir.display()
        )));
    }
    check_cert_dir(&dir, true)?;
    Ok(dir)
}

/// Whether libvirt's backup TLS on the connection `uri` verifies client
/// certificates, after checking its certificate folder where it can be
/// read (a local connection); unknown (false) for a remote daemon.
fn libvirt_verifies(uri: &str) -> Result<bool> {
    match qemu_conf::conf_of_uri(uri) {
        Some(conf) => conf_verifies(&conf),
        None => Ok(false),
    }
}

/// Whether libvirt's backup TLS as `conf` sets it verifies clients, after
/// checking its certificate folder.
fn conf_verifies(conf: &Path) -> Result<bool> {
    let tls = qemu_conf::backup_tls(conf)?;
    check_cert_dir(&tls.dir, false)?;
    Ok(tls.verify)
}

/// The files a TLS NBD server reads (QEMU's `tls-creds-x509` layout).
const SERVER_FILES: [&str; 3] = ["ca-cert.pem", "server-cert.pem", "server-key.pem"];

/// Check a server certificate folder: it exists, is not writable by group
/// or others, and holds the three files as regular files (not links). The
/// key is its reader's only: for qemu-storage-daemon (`own`: it runs as
/// this process's user, which must own the folder and key, or root)
/// readable by its owner alone; for libvirt's QEMU, which may read it
/// through its group, not readable by others. A folder this process
/// cannot look into (libvirt's, as a non-root caller) is left to libvirt.
fn check_cert_dir(dir: &Path, own: bool) -> Result<()> {
    let unsupported = |what: String| {
        Error::config_unsupported(format!(
            "TLS certificate folder '{}': {what} (the folder is {TLS_DIR_ENV} if set, else \
             libvirt's backup_tls_x509_cert_dir)",
            dir.display()
        ))
    };
    let m = match std::fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(unsupported("it does not exist".into()));
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied && !own => return Ok(()),
        Err(e) => return Err(Error::io("cannot inspect TLS certificate folder", dir, e)),
        Ok(m) => m,
    };
    if !m.is_dir() {
        return Err(unsupported("it is not a folder".into()));
    }
    if m.mode() & 0o022 != 0 || (own && !owned(&m)) {
        return Err(unsupported(
            "it is writable by group or others, or owned by another user".into(),
        ));
    }
    for name in SERVER_FILES {
        check_cert_file(&dir.join(name), name == "server-key.pem", own).map_err(&unsupported)?;
    }
    Ok(())
}

/// One file of a certificate folder; `Err` says what is wrong with it.
fn check_cert_file(path: &Path, key: bool, own: bool) -> std::result::Result<(), String> {
    let m = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!("'{}' is missing", path.display()));
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied && !own => return Ok(()),
        Err(e) => return Err(format!("cannot inspect '{}': {e}", path.display())),
        Ok(m) => m,
    };
    if !m.file_type().is_file() {
        return Err(format!(
            "'{}' is not a regular file (a symbolic link is refused)",
            path.display()
        ));
    }
    let loose = if own { 0o077 } else { 0o027 };
    if m.mode() & 0o022 != 0 || (key && (m.mode() & loose != 0 || (own && !owned(&m)))) {
        return Err(format!(
            "'{}' has mode {:o} or another owner: {}",
            path.display(),
            m.mode() & 0o7777,
            if key && own {
                "the key must be readable by its owner only (chmod 600), this user or root"
            } else if key {
                "the key must not be readable by others nor writable by group"
            } else {
                "it must not be writable by group or others"
            }
        ));
    }
    Ok(())
}

/// Owned by this process's user or by root.
fn owned(m: &std::fs::Metadata) -> bool {
    m.uid() == 0 || m.uid() == rustix::process::geteuid().as_raw()
}

/// Whether every address `host` names is a loopback one (a name that does
/// not resolve is refused too: the daemon would bind whatever it resolves
/// to later).
fn is_loopback(host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    match (host, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Make the server's unix socket the owner's only (QEMU creates it with
/// the mode its umask allows), before the export is announced.
pub(crate) fn restrict_socket(server: &NbdServer) -> Result<()> {
    let NbdServer::Unix(path) = server else {
        return Ok(());
    };
    restrict_socket_path(path)
}

fn restrict_socket_path(path: &Path) -> Result<()> {
    let m =
        std::fs::symlink_metadata(path).map_err(|e| Error::io("cannot inspect socket", path, e))?;
    if !m.file_type().is_socket() {
        return Err(Error::operation_failed(format!(
            "'{}' is not the export's socket",
            path.display()
        )));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("cannot set mode of socket", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A certificate folder with placeholder files (only their metadata is
    /// checked here), keys 0600.
    fn cert_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for f in SERVER_FILES {
            std::fs::write(dir.join(f), "x").unwrap();
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        dir
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused(dir: &Path, own: bool, why: &str) {
        let e = check_cert_dir(dir, own).unwrap_err();
        assert!(e.is(crate::error::ErrorCode::ConfigUnsupported), "{e}");
        assert!(e.message.contains(why), "{e}");
    }

    #[test]
    fn certificate_folder_checks() {
        let dir = cert_dir("checks");
        let key = dir.join("server-key.pem");
        check_cert_dir(&dir, true).unwrap();
        // Group-readable: QEMU under libvirt may read it so, our daemon not.
        chmod(&key, 0o640);
        check_cert_dir(&dir, false).unwrap();
        refused(&dir, true, "server-key.pem' has mode 640");
        chmod(&key, 0o604);
        refused(&dir, false, "server-key.pem' has mode 604");
        chmod(&key, 0o600);
        chmod(&dir.join("ca-cert.pem"), 0o666);
        refused(&dir, false, "ca-cert.pem' has mode 666");
        chmod(&dir.join("ca-cert.pem"), 0o644);
        chmod(&dir, 0o777);
        refused(&dir, false, "writable by group or others");
        chmod(&dir, 0o755);
        std::fs::rename(&key, dir.join("real-key")).unwrap();
        refused(&dir, true, "server-key.pem' is missing");
        symlink(dir.join("real-key"), &key).unwrap();
        refused(&dir, false, "symbolic link");
        std::fs::remove_dir_all(&dir).unwrap();
        refused(&dir, true, "does not exist");
    }

    #[test]
    fn libvirt_client_verification_from_its_configuration() {
        let dir = cert_dir("conf");
        let conf = dir.join("qemu.conf");
        let text = format!("backup_tls_x509_cert_dir = \"{}\"\n", dir.display());
        std::fs::write(&conf, &text).unwrap();
        assert!(conf_verifies(&conf).unwrap());
        std::fs::write(&conf, format!("{text}default_tls_x509_verify = 0\n")).unwrap();
        assert!(!conf_verifies(&conf).unwrap());
        std::fs::write(&conf, format!("{text}backup_tls_x509_verify = 1\n")).unwrap();
        assert!(conf_verifies(&conf).unwrap());
        std::fs::remove_file(dir.join("ca-cert.pem")).unwrap();
        assert!(conf_verifies(&conf).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        // A remote daemon's configuration is unknown: not verified.
        assert!(!libvirt_verifies("qemu+ssh://elsewhere/system").unwrap());
    }

    #[test]
    fn plain_tcp_needs_loopback_and_tls_needs_tcp() {
        let req = |host: &str, tls| UnmanagedRequest {
            backup: None,
            parent: None,
            server: NbdServer::Tcp {
                host: host.into(),
                port: 10809,
            },
            tls,
            disks: None,
        };
        let daemon = Served::Daemon;
        assert_eq!(
            check_server(&req("127.0.0.1", false), daemon).unwrap(),
            None
        );
        let e = check_server(&req("0.0.0.0", false), daemon).unwrap_err();
        assert!(
            e.message
                .contains("readable by anyone who can reach the port")
        );
        // Over a remote connection, whether libvirt checks clients is unknown.
        let remote = Served::Libvirt {
            uri: "qemu+ssh://elsewhere/system",
        };
        let e = check_server(&req("0.0.0.0", true), remote).unwrap_err();
        assert!(
            e.message
                .contains("not known to verify client certificates")
        );
        assert_eq!(check_server(&req("::1", true), remote).unwrap(), None);
        let mut unix = req("", true);
        unix.server = NbdServer::Unix("/run/x.sock".into());
        let e = check_server(&unix, daemon).unwrap_err();
        assert!(e.is(crate::error::ErrorCode::ConfigUnsupported));
    }
}
