//! Unmanaged backups: a point-in-time, read-only NBD export of a domain's
//! disks for third-party backup tools. Never listed; ended by FinishJob or
//! AbortJob.
//!
//! A running QEMU domain is exported by libvirt's pull-mode backup job
//! (QEMU serves the disks as they were at the start, keeping overwritten
//! blocks in scratch files). An inactive domain, or a domain of a driver
//! with no backup job (libvirt's test driver), is exported by one
//! `qemu-storage-daemon` over the image files, which its image locks keep
//! unchanged while it runs. With a `<parent>`, each export also carries the
//! changes since the parent as the dirty bitmap named in `exportbitmap`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use uuid::Uuid;

use crate::engine::export::{ExportDisk, StorageDaemonExport};
use crate::engine::live;
use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::qemu_tools::{os, run};
use crate::image::disk::Chain;
use crate::ops::claim::DomainClaim;
use crate::ops::export_access;
use crate::ops::recovery;
use crate::store::exports::{self, ExportLock};
use crate::store::index::IndexReader;
use crate::xml::backup::{
    BackupRecord, BackupState, DiskFormat, NbdServer, UnmanagedRequest, parent_and_domain, path_str,
};
use crate::xml::dom::Element;
use crate::xml::domain::{self, DomainDisk};

/// One exported disk.
#[derive(Debug, Clone)]
struct Exported {
    disk: String,
    export: String,
    bitmap: Option<String>,
}

#[derive(Debug)]
enum Server {
    /// libvirt's pull-mode job; its scratch files live in this folder.
    Libvirt { scratch: PathBuf },
    /// qemu-storage-daemon, and the folder of any overlay it serves.
    Daemon(StorageDaemonExport, PathBuf),
}

/// Where an export's changes since the parent come from.
#[derive(Debug, Clone)]
enum Since {
    /// The parent's checkpoint, on a running domain (libvirt exports it).
    Checkpoint(String),
    /// The checkpoint's persistent bitmap in the image of a shut-off domain.
    Bitmap(String),
    /// The parent's digest index: the library computes the changed chunks
    /// and serves the image through an overlay carrying them as a bitmap.
    Digests(Box<BackupRecord>),
}

/// A running (or ended) export.
#[derive(Debug)]
pub(crate) struct Export {
    pub uuid: Uuid,
    pub domain_uuid: Uuid,
    /// `None` for the export of a stored backup (no domain is involved).
    domain: Option<DomainRef>,
    domain_name: String,
    /// The stored backup served, for an export of one.
    pub stored: Option<Uuid>,
    /// The managed backup whose changes are exported as dirty bitmaps.
    pub parent: Option<Uuid>,
    address: NbdServer,
    /// Served with TLS (`<server tls='yes'>`).
    tls: bool,
    disks: Vec<Exported>,
    server: Server,
    started: Instant,
    /// Running until ended; then the final state and elapsed time.
    ended: Mutex<Option<(BackupState, u64)>>,
    /// The domain's claim, released when the export ends.
    claim: Mutex<Option<DomainClaim>>,
    /// What tells every process that the export runs (`store::exports`),
    /// dropped when it ends, after its scratch folder.
    registered: Mutex<Option<ExportLock>>,
}

/// Exports of this process, kept until they end (a freed handle does not
/// stop an export, as a freed libvirt object does not stop its job).
static EXPORTS: LazyLock<Mutex<HashMap<Uuid, Arc<Export>>>> = LazyLock::new(Default::default);

/// Exports of stored backups running in this process: (backup, export)
/// (every process's are in `store::exports`).
pub(crate) fn stored_exports() -> Vec<(Uuid, Uuid)> {
    EXPORTS
        .lock()
        .unwrap()
        .values()
        .filter_map(|e| e.stored.map(|b| (b, e.uuid)))
        .collect()
}

/// Serve `disks` of the stored backup `rec` through qemu-storage-daemon
/// (see `ops::export_stored`); `disks`: (disk name, export name, image);
/// `cert_dir`: the TLS certificate folder of a TLS export.
pub(crate) fn serve_stored(
    rec: &BackupRecord,
    address: &NbdServer,
    disks: Vec<(String, ExportDisk)>,
    cert_dir: Option<&Path>,
) -> Result<Arc<Export>> {
    let uuid = Uuid::new_v4();
    let list: Vec<ExportDisk> = disks.iter().map(|(_, d)| d.clone()).collect();
    let catalog = recovery::open_catalog()?;
    let registered = {
        // Under the backup's domain lock, which a Delete holds from its
        // check of running exports until its files are gone: the backup is
        // still there, and stays while the export runs.
        let backup = catalog.backup_of(rec);
        let _guard = backup.domain().lock()?;
        let still = backup.record()?;
        if still.is_none_or(|r| r.state != BackupState::Completed) {
            return Err(Error::no_backup(&rec.uuid.to_string()));
        }
        exports::register(&catalog, &uuid, Some(&rec.uuid))?
    };
    let scratch = catalog.scratch_dir(&uuid)?;
    let daemon = StorageDaemonExport::start_tls(address, &list, cert_dir).inspect_err(|_| {
        crate::warn_if_err!(
            fs::remove_dir_all(&scratch),
            "cannot remove scratch folder '{}'",
            scratch.display()
        );
    })?;
    let export = Arc::new(Export {
        uuid,
        domain_uuid: rec.domain_uuid,
        domain: None,
        domain_name: rec.domain_name.clone(),
        stored: Some(rec.uuid),
        parent: None,
        address: address.clone(),
        tls: cert_dir.is_some(),
        disks: disks
            .into_iter()
            .map(|(disk, d)| Exported {
                disk,
                export: d.export_name,
                bitmap: None,
            })
            .collect(),
        server: Server::Daemon(daemon, scratch),
        started: Instant::now(),
        ended: Mutex::new(None),
        // It reads the backup's files, not the domain's: no job on it.
        claim: Mutex::new(None),
        registered: Mutex::new(Some(registered)),
    });
    EXPORTS.lock().unwrap().insert(uuid, Arc::clone(&export));
    Ok(export)
}

/// The disks to export: the request's, else every device='disk' disk.
fn selected(req: &UnmanagedRequest, disks: &[DomainDisk]) -> Result<Vec<(DomainDisk, String)>> {
    let pairs: Vec<(String, String)> = match &req.disks {
        Some(list) => list.clone(),
        None => disks
            .iter()
            .filter(|d| d.device == "disk")
            .map(|d| (d.name.clone(), d.name.clone()))
            .collect(),
    };
    let mut out = Vec::new();
    for (name, export) in pairs {
        let d = disks
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::invalid_arg(format!("domain has no disk named '{name}'")))?;
        if d.device != "disk" || d.source.is_none() {
            return Err(Error::invalid_arg(format!(
                "disk '{name}' is not a disk with an image to export"
            )));
        }
        d.image_format()?;
        out.push((d.clone(), export));
    }
    if out.is_empty() {
        return Err(Error::invalid_arg("the export would include no disk"));
    }
    Ok(out)
}

/// The bitmap name QEMU exports a disk's changes under.
fn bitmap_name(export: &str) -> String {
    format!("{export}-changes")
}

/// Refuse an export the domain's state rules out; returns whether libvirt
/// serves it (a running QEMU domain) rather than qemu-storage-daemon, and
/// the certificate folder of a TLS export qemu-storage-daemon serves.
fn check_can_export(
    dom: &DomainRef,
    domain_uuid: &Uuid,
    req: &UnmanagedRequest,
    quiesce: bool,
) -> Result<(bool, Option<PathBuf>)> {
    let active = dom.is_active()?;
    let is_live = live::is_live(dom, active)?;
    let uri = dom.uri()?;
    let served = if is_live {
        export_access::Served::Libvirt { uri: &uri }
    } else {
        export_access::Served::Daemon
    };
    let cert_dir = export_access::check_server(req, served)?;
    DomainClaim::check(dom, domain_uuid, is_live)?;
    if quiesce && !is_live {
        return Err(Error::operation_invalid(
            "only a running QEMU domain's file systems can be quiesced",
        ));
    }
    if !is_live && !dom.images_are_quiet(active)? {
        return Err(Error::not_supported_yet(format!(
            "an unmanaged backup of a running domain of the '{}' driver",
            dom.driver()?
        )));
    }
    if let NbdServer::Unix(p) = &req.server
        && !p.parent().is_some_and(|d| d.is_dir())
    {
        return Err(Error::invalid_arg(format!(
            "folder of socket '{}' does not exist",
            p.display()
        )));
    }
    Ok((is_live, cert_dir))
}

/// Start serving the disks: libvirt's pull-mode job, or qemu-storage-daemon
/// (with TLS from `cert_dir` if given).
fn start_server(
    dom: &DomainRef,
    req: &UnmanagedRequest,
    disks: &[(&DomainDisk, String, Option<Since>)],
    all: &[DomainDisk],
    scratch: &Path,
    (is_live, cert_dir): (bool, Option<&Path>),
) -> Result<Server> {
    if is_live {
        let xml = pull_document(req, disks, all, scratch)?;
        dom.backup_begin(&xml, None, 0).map(|()| Server::Libvirt {
            scratch: scratch.to_path_buf(),
        })
    } else {
        daemon_disks(disks, scratch)
            .and_then(|list| StorageDaemonExport::start_tls(&req.server, &list, cert_dir))
            .map(|d| Server::Daemon(d, scratch.to_path_buf()))
    }
}

/// `virDomainBackupStartUnmanaged`.
pub(crate) fn start(
    dom: &DomainRef,
    req: &UnmanagedRequest,
    parent: Option<BackupRecord>,
    quiesce: bool,
) -> Result<Arc<Export>> {
    let domain_uuid = dom.uuid()?;
    let (is_live, cert_dir) = check_can_export(dom, &domain_uuid, req, quiesce)?;
    let all = domain::parse_disks(&dom.xml()?)?;
    let chosen = selected(req, &all)?;
    let uuid = Uuid::new_v4();
    // The parent's checkpoint names the bitmap that holds the changes.
    let disks = chosen
        .iter()
        .map(|(d, export)| {
            let since = parent.as_ref().map(|p| changes_since(dom, p, d, is_live));
            Ok((d, export.clone(), since.transpose()?))
        })
        .collect::<Result<Vec<_>>>()?;
    // One job per domain: the export holds the domain's claim until it ends.
    let catalog = recovery::open_catalog()?;
    let claim = DomainClaim::take(&catalog, dom, &domain_uuid, is_live)?;
    let registered = exports::register(&catalog, &uuid, None)?;
    let scratch = catalog.scratch_dir(&uuid)?;
    let how = (is_live, cert_dir.as_deref());
    let server = start_server(dom, req, &disks, &all, &scratch, how).inspect_err(|_| {
        crate::warn_if_err!(
            fs::remove_dir_all(&scratch),
            "cannot remove scratch folder '{}'",
            scratch.display()
        );
    })?;
    if let Err(e) = export_access::restrict_socket(&req.server) {
        end_server(dom, &server);
        return Err(e);
    }
    let export = Arc::new(Export {
        uuid,
        domain_uuid,
        domain: Some(dom.clone()),
        domain_name: dom.name()?,
        stored: None,
        parent: parent.map(|p| p.uuid),
        address: req.server.clone(),
        tls: req.tls,
        disks: disks
            .iter()
            .map(|(d, export, since)| Exported {
                disk: d.name.clone(),
                export: export.clone(),
                bitmap: since.as_ref().map(|b| match b {
                    Since::Bitmap(name) => name.clone(),
                    _ => bitmap_name(export),
                }),
            })
            .collect(),
        server,
        started: Instant::now(),
        ended: Mutex::new(None),
        claim: Mutex::new(Some(claim)),
        registered: Mutex::new(Some(registered)),
    });
    EXPORTS.lock().unwrap().insert(uuid, Arc::clone(&export));
    Ok(export)
}

/// The checkpoint (running domain) or persistent bitmap (image of an
/// inactive domain) that holds a disk's changes since `parent`.
fn changes_since(
    dom: &DomainRef,
    parent: &BackupRecord,
    d: &DomainDisk,
    is_live: bool,
) -> Result<Since> {
    if !is_live && parent.checkpoint.is_none() {
        return Ok(Since::Digests(Box::new(parent.clone())));
    }
    let base = parent.disks.iter().find(|x| x.name == d.name);
    let size = match d.source.as_deref() {
        Some(p) => crate::image::disk::Source::open(p, d.image_format()?, Chain::Header)?.size(),
        None => 0,
    };
    let found = if is_live {
        live::usable_checkpoint(dom, parent, base, d, size).map(Since::Checkpoint)
    } else {
        live::usable_offline_bitmap(dom, parent, base, d, size).map(Since::Bitmap)
    };
    found.map_err(|why| {
        Error::operation_invalid(format!(
            "cannot export the changes of disk '{}' since backup '{}': {why}",
            d.name, parent.uuid
        ))
    })
}

/// What qemu-storage-daemon serves for each disk: the image itself, or an
/// overlay carrying the changes computed from a parent's digest index.
fn daemon_disks(
    disks: &[(&DomainDisk, String, Option<Since>)],
    scratch: &Path,
) -> Result<Vec<ExportDisk>> {
    disks
        .iter()
        .map(|(d, export, since)| {
            let image = d.source.clone().unwrap_or_default();
            let format = d.image_format()?;
            Ok(match since {
                None => ExportDisk {
                    export_name: export.clone(),
                    image,
                    format,
                    bitmap: None,
                    backing: None,
                },
                Some(Since::Bitmap(b)) | Some(Since::Checkpoint(b)) => ExportDisk {
                    export_name: export.clone(),
                    image,
                    format,
                    bitmap: Some(b.clone()),
                    backing: None,
                },
                Some(Since::Digests(parent)) => {
                    let bitmap = bitmap_name(export);
                    let overlay = changes_overlay(parent, d, &image, format, &bitmap, scratch)?;
                    ExportDisk {
                        export_name: export.clone(),
                        image: overlay,
                        format: DiskFormat::Qcow2,
                        bitmap: Some(bitmap),
                        backing: None,
                    }
                }
            })
        })
        .collect()
}

/// An overlay on `image` (unchanged, read through it) whose persistent
/// bitmap `bitmap` marks the chunks that differ from `parent`'s copy. The
/// bits are made by zero-writes into a throw-away image with that bitmap
/// enabled (qemu-io records them; no data is written), then merged into
/// the overlay's bitmap: nothing ever writes to the domain's image.
fn changes_overlay(
    parent: &BackupRecord,
    d: &DomainDisk,
    image: &Path,
    format: DiskFormat,
    bitmap: &str,
    scratch: &Path,
) -> Result<PathBuf> {
    let catalog = recovery::open_catalog()?;
    let index = super::ensure_index(&catalog, parent, &d.name).map_err(|e| {
        Error::operation_invalid(format!(
            "cannot export the changes of disk '{}' since backup '{}': {}",
            d.name, parent.uuid, e.message
        ))
    })?;
    let src = crate::image::disk::Source::open(image, format, Chain::Header)?;
    let size = src.size().to_string();
    let runs = crate::engine::copy::changed_ranges(&src, &mut IndexReader::open(&index)?)?;
    drop(src);
    let marks = scratch.join(format!("{}.marks.qcow2", d.name));
    let overlay = scratch.join(format!("{}.overlay.qcow2", d.name));
    let (m, o) = (marks.as_os_str(), overlay.as_os_str());
    create_qcow2(m, &size, &[])?;
    add_bitmap(m, bitmap)?;
    // One qemu-io per batch keeps each command line short.
    for batch in runs.chunks(512) {
        let mut args: Vec<String> = vec!["-f".into(), "qcow2".into()];
        for (off, len) in batch {
            args.push("-c".into());
            args.push(format!("write -q -z {off} {len}"));
        }
        run("qemu-io", args.iter().map(|a| os(a)).chain([m]))?;
    }
    let backing = [os("-b"), image.as_os_str(), os("-F"), os(format.as_str())];
    create_qcow2(o, &size, &backing)?;
    add_bitmap(o, bitmap)?;
    let from = [os("-b"), m, os("-F"), os("qcow2")];
    run(
        "qemu-img",
        [
            os("bitmap"),
            os("--merge"),
            os(bitmap),
            os("-f"),
            os("qcow2"),
        ]
        .into_iter()
        .chain(from)
        .chain([o, os(bitmap)]),
    )?;
    crate::warn_if_err!(
        crate::error::missing_ok(fs::remove_file(&marks)),
        "cannot remove '{}'",
        marks.display()
    );
    Ok(overlay)
}

/// Create a qcow2 image of ours, with the backing options given.
fn create_qcow2(image: &std::ffi::OsStr, size: &str, backing: &[&std::ffi::OsStr]) -> Result<()> {
    let (head, tail) = (
        [os("create"), os("-q"), os("-f"), os("qcow2")],
        [image, os(size)],
    );
    run("qemu-img", head.iter().chain(backing).chain(&tail)).map(|_| ())
}

/// Add a persistent bitmap to one of our own qcow2 images (format given,
/// never probed).
fn add_bitmap(image: &std::ffi::OsStr, bitmap: &str) -> Result<()> {
    let args = [
        os("bitmap"),
        os("--add"),
        os("-f"),
        os("qcow2"),
        image,
        os(bitmap),
    ];
    run("qemu-img", args).map(|_| ())
}

/// libvirt's pull-mode `<domainbackup>`: the server (with `tls='yes'`:
/// libvirt's backup certificates), every disk named, the exported ones
/// with their export name, scratch file and, for changes since a
/// checkpoint, the bitmap to export.
fn pull_document(
    req: &UnmanagedRequest,
    disks: &[(&DomainDisk, String, Option<Since>)],
    all: &[DomainDisk],
    scratch: &Path,
) -> Result<String> {
    let mut list = Element::new("disks");
    for d in all {
        let el = match disks.iter().find(|(x, _, _)| x.name == d.name) {
            None => live::backup_disk_element(&d.name, None),
            Some((_, export, since)) => {
                let cp = match since {
                    Some(Since::Checkpoint(cp)) => Some(cp.as_str()),
                    _ => None,
                };
                let mut el = live::backup_disk_element(&d.name, Some(cp))
                    .with_attr("exportname", export.clone());
                if cp.is_some() {
                    el = el.with_attr("exportbitmap", bitmap_name(export));
                }
                let scratch = scratch.join(format!("{}.scratch", d.name));
                el.with_child(Element::new("scratch").with_attr("file", path_str(&scratch)?))
            }
        };
        list.push(el);
    }
    Element::new("domainbackup")
        .with_attr("mode", "pull")
        .with_child(server_element(&req.server, req.tls)?)
        .with_child(list)
        .to_xml()
}

/// `<server>` as the caller wrote it: the address, and `tls='yes'`.
fn server_element(server: &NbdServer, tls: bool) -> Result<Element> {
    let el = server.element("server")?;
    Ok(if tls { el.with_attr("tls", "yes") } else { el })
}

impl Export {
    pub(crate) fn state(&self) -> BackupState {
        self.ended
            .lock()
            .unwrap()
            .map_or(BackupState::Running, |(s, _)| s)
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.ended
            .lock()
            .unwrap()
            .map_or(self.started.elapsed().as_millis() as u64, |(_, e)| e)
    }

    pub(crate) fn disk_count(&self) -> u32 {
        self.disks.len() as u32
    }

    pub(crate) fn has_bitmaps(&self) -> bool {
        self.disks.iter().any(|d| d.bitmap.is_some())
    }

    /// What a third-party tool needs to connect.
    pub(crate) fn xml_desc(&self) -> Result<String> {
        let mut root = Element::new("domainbackup")
            .with_child(Element::new("uuid").with_text(self.uuid.to_string()))
            .with_child(Element::new("state").with_text(self.state().as_str()));
        root.children.extend(parent_and_domain(
            self.parent,
            self.domain_uuid,
            &self.domain_name,
        ));
        root.push(server_element(&self.address, self.tls)?);
        let mut disks = Element::new("disks");
        for d in &self.disks {
            let mut el = Element::new("disk")
                .with_attr("name", d.disk.clone())
                .with_attr("exportname", d.export.clone());
            if let Some(b) = &d.bitmap {
                el = el.with_attr("exportbitmap", b.clone());
            }
            disks.push(el);
        }
        root.push(disks);
        root.to_xml()
    }

    /// End the export (`cancel`: AbortJob, else FinishJob) and remove its
    /// scratch files. A second call is refused.
    pub(crate) fn finish(&self, cancel: bool) -> Result<()> {
        let mut ended = self.ended.lock().unwrap();
        if ended.is_some() {
            return Err(Error::operation_invalid("the export has already ended"));
        }
        let result = match &self.server {
            Server::Libvirt { scratch } => {
                let stopped = self.domain.as_ref().map_or(Ok(()), live::end_pull_job);
                crate::warn_if_err!(
                    fs::remove_dir_all(scratch),
                    "cannot remove scratch folder '{}'",
                    scratch.display()
                );
                stopped
            }
            Server::Daemon(d, scratch) => {
                let stopped = d.stop();
                crate::warn_if_err!(
                    fs::remove_dir_all(scratch),
                    "cannot remove scratch folder '{}'",
                    scratch.display()
                );
                stopped
            }
        };
        let state = if cancel {
            BackupState::Cancelled
        } else {
            BackupState::Completed
        };
        *ended = Some((state, self.started.elapsed().as_millis() as u64));
        EXPORTS.lock().unwrap().remove(&self.uuid);
        self.registered.lock().unwrap().take();
        self.claim.lock().unwrap().take();
        result
    }
}

/// Stop a server that was started but will not be announced.
fn end_server(dom: &DomainRef, server: &Server) {
    match server {
        Server::Libvirt { scratch } => {
            crate::warn_if_err!(
                live::end_pull_job(dom),
                "cannot stop the pull-mode backup job"
            );
            crate::warn_if_err!(
                fs::remove_dir_all(scratch),
                "cannot remove scratch folder '{}'",
                scratch.display()
            );
        }
        Server::Daemon(d, scratch) => {
            crate::warn_if_err!(d.stop(), "cannot stop qemu-storage-daemon");
            crate::warn_if_err!(
                fs::remove_dir_all(scratch),
                "cannot remove scratch folder '{}'",
                scratch.display()
            );
        }
    }
}
