//! The libvirt storage-pool adapter: backup disks kept as volumes of a
//! file-backed pool (`<disk type='volume'>` targets, and SetDefaultTarget
//! `type='pool'`). libvirt creates and deletes the volume so that it knows
//! about it; the backup engine writes the image file at the volume's path
//! itself.
//!
//! Only the caller's connection is used and it is never silenced: lookups
//! whose failure is an expected answer (is the volume there? is the pool
//! still there?) go through listings, so libvirt raises no error for them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;

use crate::error::{Error, Result};
use crate::xml::backup::DiskFormat;
use crate::xml::dom::{self, Element};

/// Pool types whose volumes are plain files in the pool's target directory.
const FILE_BACKED: [&str; 3] = ["dir", "fs", "netfs"];

/// Where a backup disk stored in a pool volume lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVolume {
    /// The pool's name.
    pub pool: String,
    /// The volume's name within the pool.
    pub volume: String,
    /// The volume's file.
    pub path: PathBuf,
}

/// Look a pool up by name; an unknown pool keeps libvirt's code
/// (`VIR_ERR_NO_STORAGE_POOL`) and domain, with a message naming it.
fn lookup_pool(conn: &Connect, pool: &str) -> Result<StoragePool> {
    if pool.is_empty() || pool.contains('\0') {
        return Err(Error::invalid_arg(format!(
            "bad storage pool name '{pool}'"
        )));
    }
    conn.lookup_storage_pool_by_name(pool).map_err(|e| {
        let mut err = Error::from(e);
        err.message = if err.code == virt::sys::VIR_ERR_NO_STORAGE_POOL as i32 {
            format!("Storage pool not found: no storage pool with matching name '{pool}'")
        } else {
            format!("cannot look up storage pool '{pool}': {}", err.message)
        };
        err
    })
}

/// The pool named `pool`, or `None` when there is none, without making
/// libvirt raise an error for a missing one.
fn find_pool(conn: &Connect, pool: &str) -> Result<Option<StoragePool>> {
    for p in conn.list_all_storage_pools(0)? {
        if p.name()? == pool {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The volume named `volume` in an active pool, or `None`.
fn find_volume(pool: &StoragePool, volume: &str) -> Result<Option<StorageVol>> {
    for v in pool.list_all_volumes(0)? {
        if v.name()? == volume {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// An active, file-backed pool and its target directory.
fn usable_pool(conn: &Connect, pool: &str) -> Result<(StoragePool, PathBuf)> {
    let p = lookup_pool(conn, pool)?;
    if !p.is_active()? {
        return Err(Error::operation_invalid(format!(
            "storage pool '{pool}' is not active"
        )));
    }
    let root = dom::parse(&p.xml_desc(0)?)?;
    let kind = root.attr("type").unwrap_or("");
    if !FILE_BACKED.contains(&kind) {
        return Err(Error::not_supported_yet(format!(
            "a backup target in storage pool '{pool}' of type '{kind}' (only dir, fs and netfs pools)"
        )));
    }
    let target = root
        .child("target")
        .and_then(|t| t.child_text("path"))
        .unwrap_or("");
    if !target.starts_with('/') {
        return Err(Error::operation_invalid(format!(
            "storage pool '{pool}' has no absolute target path"
        )));
    }
    Ok((p, PathBuf::from(target)))
}

/// A volume name a file-backed pool accepts: a single path component.
fn check_volume_name(volume: &str) -> Result<()> {
    if volume.is_empty()
        || volume == "."
        || volume == ".."
        || volume.contains('/')
        || volume.contains('\0')
    {
        return Err(Error::invalid_arg(format!(
            "bad volume name '{volume}': it must be a file name without '/'"
        )));
    }
    Ok(())
}

fn already_exists(pool: &str, volume: &str) -> Error {
    Error::invalid_arg(format!(
        "target volume '{volume}' already exists in pool '{pool}'"
    ))
}

/// The checks of `check_new_volume`, keeping the pool for `create_volume`.
fn check_new(conn: &Connect, pool: &str, volume: &str) -> Result<(StoragePool, PathBuf)> {
    check_volume_name(volume)?;
    let (p, dir) = usable_pool(conn, pool)?;
    if find_volume(&p, volume)?.is_some() {
        return Err(already_exists(pool, volume));
    }
    // The engine writes the file itself, on this host.
    match fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => {
            return Err(Error::operation_invalid(format!(
                "the target directory '{}' of storage pool '{pool}' does not exist on this host",
                dir.display()
            )));
        }
    }
    if let Err(e) = rustix::fs::access(&dir, rustix::fs::Access::WRITE_OK) {
        return Err(Error::operation_invalid(format!(
            "cannot write into the target directory '{}' of storage pool '{pool}': {}",
            dir.display(),
            io::Error::from(e)
        )));
    }
    let path = dir.join(volume);
    // A file the pool has not picked up yet (no refresh since) counts too;
    // symlink_metadata: a dangling link is an existing target as well.
    if fs::symlink_metadata(&path).is_ok() {
        return Err(Error::invalid_arg(format!(
            "target volume '{volume}' already exists in pool '{pool}': file '{}' exists",
            path.display()
        )));
    }
    Ok((p, path))
}

/// Validate before anything is created: the pool exists on `conn`, is
/// active, is file-backed (dir, fs or netfs) with its target directory
/// present and writable here, and holds no volume (nor file) named `volume`.
/// Returns the path the volume will have, creating nothing.
pub fn check_new_volume(conn: &Connect, pool: &str, volume: &str) -> Result<PathBuf> {
    check_new(conn, pool, volume).map(|(_, path)| path)
}

/// Check a pool for SetDefaultTarget type='pool' (exists, active, file-backed).
pub fn check_pool(conn: &Connect, pool: &str) -> Result<()> {
    usable_pool(conn, pool).map(|_| ())
}

/// The `<volume>` document: sparse (allocation 0, so libvirt does not
/// preallocate a raw file), mode 0600, owned by this process's user so the
/// engine can rewrite the file when libvirtd runs as another user.
fn volume_xml(volume: &str, format: DiskFormat, capacity: u64) -> Result<String> {
    let bytes = |name: &str, n: u64| {
        Element::new(name)
            .with_attr("unit", "bytes")
            .with_text(n.to_string())
    };
    let perms = Element::new("permissions")
        .with_child(Element::new("mode").with_text("0600"))
        .with_child(
            Element::new("owner").with_text(rustix::process::geteuid().as_raw().to_string()),
        )
        .with_child(
            Element::new("group").with_text(rustix::process::getegid().as_raw().to_string()),
        );
    Element::new("volume")
        .with_attr("type", "file")
        .with_child(Element::new("name").with_text(volume))
        .with_child(bytes("capacity", capacity))
        .with_child(bytes("allocation", 0))
        .with_child(
            Element::new("target")
                .with_child(Element::new("format").with_attr("type", format.as_str()))
                .with_child(perms),
        )
        .to_xml()
}

/// Create the volume through libvirt (`virStorageVolCreateXML`) and return
/// where it lives. The engine then writes the image file at that path itself,
/// truncating whatever libvirt put there (the test driver creates no file,
/// the QEMU driver's dir pool a real one).
pub fn create_volume(
    conn: &Connect,
    pool: &str,
    volume: &str,
    format: DiskFormat,
    capacity: u64,
) -> Result<PoolVolume> {
    let (p, _) = check_new(conn, pool, volume)?;
    let xml = volume_xml(volume, format, capacity)?;
    let vol = StorageVol::create_xml(&p, &xml, 0).map_err(|e| {
        let mut err = Error::from(e);
        err.message = format!(
            "cannot create volume '{volume}' in storage pool '{pool}': {}",
            err.message
        );
        err
    })?;
    let path = match vol.path() {
        Ok(path) if path.starts_with('/') => PathBuf::from(path),
        other => {
            // Take back what was just created; the original error is the one to report.
            crate::warn_if_err!(vol.delete(0), "cannot delete volume '{volume}' again");
            return Err(match other {
                Err(e) => e.into(),
                Ok(path) => Error::internal(format!(
                    "libvirt gave volume '{volume}' of pool '{pool}' the path '{path}'"
                )),
            });
        }
    };
    Ok(PoolVolume {
        pool: pool.to_string(),
        volume: volume.to_string(),
        path,
    })
}

/// After the engine wrote the file: refresh the pool so libvirt reports the
/// real allocation. Best effort: a missing pool or a driver that cannot
/// refresh changes nothing for the backup.
pub fn refresh(conn: &Connect, pool: &str) {
    if let Ok(Some(p)) = find_pool(conn, pool) {
        crate::warn_if_err!(p.refresh(0), "cannot refresh pool '{pool}'");
    }
}

/// Is this libvirt error one that says the pool or volume is gone (or the
/// pool was stopped), so only the file is left to remove?
fn is_gone(err: &Error) -> bool {
    [
        virt::sys::VIR_ERR_NO_STORAGE_POOL,
        virt::sys::VIR_ERR_NO_STORAGE_VOL,
        virt::sys::VIR_ERR_OPERATION_INVALID,
    ]
    .iter()
    .any(|c| err.code == *c as i32)
}

/// Delete the volume through libvirt if the pool is still there, active, and
/// its volume of that name is still the one at `v.path`.
fn delete_through_libvirt(conn: &Connect, v: &PoolVolume) -> Result<()> {
    let Some(pool) = find_pool(conn, &v.pool)? else {
        return Ok(());
    };
    if !pool.is_active()? {
        return Ok(());
    }
    let Some(vol) = find_volume(&pool, &v.volume)? else {
        return Ok(());
    };
    // A pool redefined elsewhere may hold an unrelated volume of that name.
    if Path::new(&vol.path()?) != v.path {
        return Ok(());
    }
    vol.delete(0)?;
    Ok(())
}

/// Delete a backup's volume: through libvirt (`virStorageVolDelete`) when
/// the pool and volume are still known, then remove `v.path` if it still
/// exists (the test driver keeps no file of its own). A pool or volume that
/// is gone is not an error. Any other libvirt failure is returned, after the
/// file has been removed all the same.
pub fn delete_volume(conn: Option<&Connect>, v: &PoolVolume) -> Result<()> {
    let libvirt = match conn {
        Some(conn) => match delete_through_libvirt(conn, v) {
            Err(e) if !is_gone(&e) => Err(Error {
                message: format!(
                    "cannot delete volume '{}' of storage pool '{}': {}",
                    v.volume, v.pool, e.message
                ),
                ..e
            }),
            _ => Ok(()),
        },
        None => Ok(()),
    };
    match fs::remove_file(&v.path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot remove", &v.path, e)),
    }
    libvirt
}

/// Volume name for a disk of a backup going to a default pool target:
/// `<domain name>-<backup uuid>-<disk>.<format>`.
pub fn default_volume_name(
    domain_name: &str,
    backup: &Uuid,
    disk: &str,
    format: DiskFormat,
) -> String {
    format!("{domain_name}-{backup}-{disk}.{}", format.as_str())
}
