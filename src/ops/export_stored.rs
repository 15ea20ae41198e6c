//! Export of a stored backup (`virDomainBackupStartUnmanaged(NULL, xml, 0)`):
//! one point in time of the catalog served read-only over NBD by
//! qemu-storage-daemon, each disk through its backup's own chain, given to
//! the daemon level by level as the library resolves it (the daemon
//! follows no header's backing name). Nothing is
//! copied and no domain is involved; the backup's files are opened
//! read-only. A hypervisor connection is opened only for an encrypted
//! chain, whose keys are libvirt secrets (read before the daemon starts,
//! handed to it through pipes). While the export runs, Delete of the
//! backup or of one of its ancestors is refused (see `ops::pins`).

use std::sync::Arc;

use crate::engine::export::ExportDisk;
use crate::error::{Error, Result};
use crate::image::chain;
use crate::ops::export::{self, Export};
use crate::ops::export_access;
use crate::ops::recovery;
use crate::xml::backup::{BackupRecord, BackupState, DiskFormat, UnmanagedRequest};

/// The disks to serve: the request's (each must be one of the backup's),
/// else all of them under their own names.
fn selected(rec: &BackupRecord, req: &UnmanagedRequest) -> Result<Vec<(String, ExportDisk)>> {
    let pairs: Vec<(String, String)> = match &req.disks {
        Some(list) => list.clone(),
        None => rec
            .disks
            .iter()
            .map(|d| (d.name.clone(), d.name.clone()))
            .collect(),
    };
    if pairs.is_empty() {
        return Err(Error::invalid_arg("the export would include no disk"));
    }
    pairs
        .into_iter()
        .map(|(name, export_name)| {
            let d = rec.disks.iter().find(|d| d.name == name).ok_or_else(|| {
                Error::invalid_arg(format!("backup '{}' has no disk named '{name}'", rec.uuid))
            })?;
            Ok((
                name,
                ExportDisk {
                    export_name,
                    image: d.target.clone(),
                    format: d.format,
                    bitmap: None,
                    backing: None,
                },
            ))
        })
        .collect()
}

/// Start serving the stored backup named by the `<uuid>` of `xml`.
pub(crate) fn start(xml: &str) -> Result<Arc<Export>> {
    // Without a <uuid> a NULL domain is just a missing argument.
    if crate::xml::dom::parse(xml)?.child("uuid").is_none() {
        return Err(Error::invalid_arg(
            "domain in virDomainBackupStartUnmanaged must be a valid virDomainPtr \
             (NULL only with the <uuid> of a stored backup to export)",
        ));
    }
    let req = UnmanagedRequest::parse(xml)?;
    let cert_dir = export_access::check_server(&req, export_access::Served::Daemon)?;
    let uuid = req
        .backup
        .ok_or_else(|| Error::internal("stored export without a uuid"))?;
    if req.parent.is_some() {
        return Err(Error::not_supported_yet(
            "a <parent> (changes as a bitmap) in the export of a stored backup",
        ));
    }
    let catalog = recovery::open_catalog()?;
    let rec =
        recovery::find(&catalog, &uuid)?.ok_or_else(|| Error::no_backup(&uuid.to_string()))?;
    let find = |u: &uuid::Uuid| recovery::find(&catalog, u).ok().flatten();
    if rec.state != BackupState::Completed {
        return Err(Error::operation_invalid(format!(
            "backup '{uuid}' is not completed"
        )));
    }
    super::moved::check(&catalog, &rec)?;
    // An encrypted chain's keys, read again from libvirt before anything
    // starts, lent until the daemon has started: it gets them through
    // pipes (`engine::export::secrets`), never on its command line.
    let (_keys, _) = super::keys::lend_chain_for_qemu(&rec, &find, false)?;
    let mut disks = selected(&rec, &req)?;
    for (name, d) in &mut disks {
        if !d.image.is_file() {
            return Err(Error::operation_failed(format!(
                "disk '{name}' of backup '{uuid}': '{}' is missing",
                d.image.display()
            )));
        }
        // The chain as the library resolves it, level by level: the daemon
        // follows no header's name (relative names of a deep chain would
        // grow past PATH_MAX in QEMU's hands).
        d.backing = Some(match d.format {
            DiskFormat::Qcow2 => {
                chain::resolved_below(&d.image, &catalog.recorded_chain(&rec, name)?)?
            }
            DiskFormat::Raw => Vec::new(),
        });
    }
    let export = export::serve_stored(&rec, &req.server, disks, cert_dir.as_deref())?;
    if let Err(e) = export_access::restrict_socket(&req.server) {
        crate::warn_if_err!(export.finish(true), "cannot end the export");
        return Err(e);
    }
    Ok(export)
}
