//! What libvirt's QEMU driver is configured to use for the TLS of backup
//! jobs (`qemu.conf`): the x509 certificate folder and whether clients must
//! show a certificate. Read the way libvirt reads it, so that exports the
//! library serves itself use the same folder as libvirt's own.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// libvirt's built-in `default_tls_x509_cert_dir`.
pub(crate) const DEFAULT_CERT_DIR: &str = "/etc/pki/qemu";

/// The TLS settings of libvirt's backup jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackupTls {
    /// `backup_tls_x509_cert_dir`, else `default_tls_x509_cert_dir`, else
    /// `/etc/pki/qemu`.
    pub dir: PathBuf,
    /// `backup_tls_x509_verify`, else `default_tls_x509_verify`, else on.
    pub verify: bool,
}

/// The `qemu.conf` of the daemon a QEMU URI names: `qemu:///system` (or
/// `qemu+unix:///system`) reads `/etc/libvirt/qemu.conf`,
/// `qemu:///session` the user's. `None` for any other URI (a remote
/// daemon's configuration cannot be read here).
pub(crate) fn conf_of_uri(uri: &str) -> Option<PathBuf> {
    let (scheme, rest) = uri.split_once("://")?;
    if !(scheme == "qemu" || scheme == "qemu+unix") {
        return None;
    }
    let (host_and_path, _query) = rest.split_once('?').unwrap_or((rest, ""));
    match host_and_path {
        "/system" => Some(PathBuf::from("/etc/libvirt/qemu.conf")),
        "/session" => Some(session_conf()),
        _ => None,
    }
}

/// The `qemu.conf` of the libvirt daemon this process would use: the
/// system one for root, else the session one.
pub(crate) fn own_conf() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/etc/libvirt/qemu.conf")
    } else {
        session_conf()
    }
}

fn session_conf() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config")
        });
    base.join("libvirt/qemu.conf")
}

/// The backup TLS settings `conf` gives (a missing file: libvirt's
/// defaults).
pub(crate) fn backup_tls(conf: &Path) -> Result<BackupTls> {
    let text = match std::fs::read_to_string(conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("cannot read libvirt's configuration", conf, e)),
    };
    let get = |key: &str| value_of(&text, key);
    let dir = match get("backup_tls_x509_cert_dir").or_else(|| get("default_tls_x509_cert_dir")) {
        Some(Value::Str(s)) => PathBuf::from(s),
        Some(Value::Int(_)) => return Err(bad_value(conf, "a tls_x509_cert_dir")),
        None => PathBuf::from(DEFAULT_CERT_DIR),
    };
    let verify = match get("backup_tls_x509_verify").or_else(|| get("default_tls_x509_verify")) {
        Some(Value::Int(n)) => n != 0,
        Some(Value::Str(_)) => return Err(bad_value(conf, "a tls_x509_verify")),
        None => true,
    };
    Ok(BackupTls { dir, verify })
}

fn bad_value(conf: &Path, what: &str) -> Error {
    Error::config_unsupported(format!(
        "'{}': {what} setting has a value of the wrong type",
        conf.display()
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(i64),
}

/// The last value given to `key` at the start of a line (libvirt's
/// `virConf`: `key = "string"`, `key = 'string'` or `key = 1`, `#`
/// comments); list values and other keys are skipped.
fn value_of(text: &str, key: &str) -> Option<Value> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix(key) else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        let quoted = |q: char| {
            let inner = value.strip_prefix(q)?;
            inner.find(q).map(|end| inner[..end].to_string())
        };
        found = if let Some(s) = quoted('"').or_else(|| quoted('\'')) {
            Some(Value::Str(s))
        } else {
            let digits = value
                .split(|c: char| c == '#' || c.is_whitespace())
                .next()?;
            digits.parse().ok().map(Value::Int)
        };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libvirts_keys_and_defaults() {
        let dir = std::env::temp_dir().join(format!("qemu-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("qemu.conf");
        let tls = backup_tls(&conf).unwrap();
        assert_eq!(tls.dir, Path::new(DEFAULT_CERT_DIR));
        assert!(tls.verify);

        let text = "# backup_tls_x509_cert_dir = \"/commented\"\n\
                    default_tls_x509_cert_dir = \"/etc/pki/d\"\n\
                    default_tls_x509_verify = 0  # clients need no certificate\n\
                    user = \"root\"\n";
        std::fs::write(&conf, text).unwrap();
        let tls = backup_tls(&conf).unwrap();
        assert_eq!(tls.dir, Path::new("/etc/pki/d"));
        assert!(!tls.verify);

        let text =
            format!("{text}backup_tls_x509_cert_dir='/etc/pki/b'\nbackup_tls_x509_verify=1\n");
        std::fs::write(&conf, text).unwrap();
        let tls = backup_tls(&conf).unwrap();
        assert_eq!(tls.dir, Path::new("/etc/pki/b"));
        assert!(tls.verify);

        std::fs::write(&conf, "backup_tls_x509_verify = \"yes\"\n").unwrap();
        assert!(backup_tls(&conf).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn which_configuration() {
        assert_eq!(
            conf_of_uri("qemu:///system"),
            Some(PathBuf::from("/etc/libvirt/qemu.conf"))
        );
        assert_eq!(
            conf_of_uri("qemu+unix:///system?socket=/x"),
            Some(PathBuf::from("/etc/libvirt/qemu.conf"))
        );
        assert!(conf_of_uri("qemu:///session").is_some());
        assert_eq!(conf_of_uri("qemu+ssh://host/system"), None);
        assert_eq!(conf_of_uri("test:///default"), None);
    }
}
