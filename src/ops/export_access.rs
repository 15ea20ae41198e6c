//! Who can reach an unmanaged backup's NBD server: anyone who connects
//! reads the domain's disks, so a plain TCP export is only served on a
//! loopback address, and a unix socket only to its owner.

use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::xml::backup::{NbdServer, UnmanagedRequest};

/// Refuse a server address the export must not listen on, before anything
/// starts.
pub fn check_server(req: &UnmanagedRequest) -> Result<()> {
    if req.tls {
        return Err(Error::no_support("TLS exports are not supported yet"));
    }
    let NbdServer::Tcp { host, port } = &req.server else {
        return Ok(());
    };
    if !is_loopback(host, *port) {
        return Err(Error::invalid_arg(format!(
            "NBD server address '{host}' is not a loopback address: a plain TCP export \
             is readable by anyone who can reach the port; use 127.0.0.1, ::1 or a unix \
             socket (TLS exports are not supported yet)"
        )));
    }
    Ok(())
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
pub fn restrict_socket(server: &NbdServer) -> Result<()> {
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
