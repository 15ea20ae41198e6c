//! Backups of running QEMU domains: libvirt serves the disks, the library
//! copies them.
//!
//! A managed backup is one `virDomainBackupBegin` in pull mode that also
//! creates a libvirt checkpoint named after the backup (its bitmaps record
//! every write from that moment on). QEMU serves every disk of the backup
//! over NBD on a unix socket in the backup's scratch folder in the
//! catalog's private area, as it was when `virDomainBackupBegin` returned
//! (QEMU moves a block to the disk's scratch file before the guest
//! overwrites it); for an incremental disk the export carries the changes
//! since the parent's checkpoint as a dirty bitmap. The library reads the
//! exports with its own NBD client and writes the targets with the same
//! copy engine as for a shut-off domain, digest index included; then it
//! ends libvirt's job, which removes the scratch files' use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::qemu_tools::{self, os};
use crate::image::nbd::{NbdAddress, NbdClient};
use crate::xml::backup::{BackupRecord, DiskFormat, DiskRecord, path_str};
use crate::xml::dom::{self, Element};
use crate::xml::domain::DomainDisk;

/// How often the job thread asks libvirt about the job.
const POLL: Duration = Duration::from_millis(10);

/// Whether the library hands this domain's backups to libvirt: a running
/// domain of the QEMU driver.
pub(crate) fn is_live(dom: &DomainRef, active: bool) -> Result<bool> {
    Ok(active && dom.driver()?.eq_ignore_ascii_case("qemu"))
}

/// The prefix of the checkpoints this library creates: other tools'
/// checkpoints on the same domain are recognised by its absence and left
/// alone.
pub(crate) const CHECKPOINT_PREFIX: &str = "libvirt-backup-";

/// The checkpoint a backup creates.
pub(crate) fn checkpoint_name(backup: &uuid::Uuid) -> String {
    format!("{CHECKPOINT_PREFIX}{backup}")
}

/// The bitmap a checkpoint keeps for `disk`, from the checkpoint's XML.
fn checkpoint_bitmap(xml: &str, disk: &str) -> Option<String> {
    let root = dom::parse(xml).ok()?;
    let d = root
        .child("disks")?
        .children_named("disk")
        .find(|d| d.attr("name") == Some(disk))?;
    if d.attr("checkpoint") != Some("bitmap") {
        return None;
    }
    Some(d.attr("bitmap").unwrap_or(disk).to_string())
}

/// The persistent bitmaps of a qcow2 image and whether each is usable,
/// read with `qemu-img info --force-share` (safe while QEMU runs).
fn image_bitmaps(image: &Path) -> Result<Vec<(String, bool)>> {
    let out = qemu_tools::run(
        "qemu-img",
        [
            os("info"),
            os("--force-share"),
            os("--output=json"),
            os("-f"),
            os("qcow2"),
            image.as_os_str(),
        ],
    )?;
    let info: serde_json::Value = serde_json::from_slice(&out)
        .map_err(|e| Error::operation_failed(format!("qemu-img info output: {e}")))?;
    let list = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(list
        .iter()
        .filter_map(|b| {
            let name = b["name"].as_str()?.to_string();
            let flags = b["flags"].as_array().cloned().unwrap_or_default();
            let has = |f: &str| flags.iter().any(|x| x.as_str() == Some(f));
            // Trusted only if it recorded every write: enabled ("auto"), not
            // left open by a QEMU that died ("in-use"), not "inconsistent".
            Some((name, has("auto") && !has("in-use") && !has("inconsistent")))
        })
        .collect())
}

/// Why the parent's checkpoint cannot serve an incremental copy of `disk`,
/// or the checkpoint name when it can. What is checked: the parent was taken
/// while the domain ran (it has a checkpoint); libvirt still has that
/// checkpoint and it holds a bitmap for this disk; the disk is still the
/// image it was (same file and format, not smaller); and QEMU can size the
/// changes since the checkpoint, i.e. its bitmap exists and is consistent
/// (a disk swapped while the domain was off, or a crashed QEMU, loses or
/// spoils it).
pub(crate) fn usable_checkpoint(
    dom: &DomainRef,
    parent: &BackupRecord,
    base: Option<&DiskRecord>,
    disk: &DomainDisk,
    size: u64,
) -> std::result::Result<String, String> {
    let cp = checkpoint_of(dom, parent, base, disk, size)?.0;
    // QEMU holds the bitmaps of a running domain (the image file only gets
    // them at shutdown): asking QEMU for the size of the changes proves the
    // bitmap is there and consistent.
    let sized = dom.checkpoint_sizes(&cp).map_err(|e| {
        format!(
            "the bitmap of the parent's checkpoint '{cp}' is unusable: {}",
            e.message
        )
    })?;
    let has_size = dom::parse(&sized).ok().is_some_and(|root| {
        root.child("disks").is_some_and(|ds| {
            ds.children_named("disk")
                .any(|d| d.attr("name") == Some(disk.name.as_str()) && d.attr("size").is_some())
        })
    });
    if !has_size {
        return Err(format!(
            "QEMU has no usable bitmap of the parent's checkpoint '{cp}' for it"
        ));
    }
    Ok(cp)
}

/// What does not depend on QEMU running: the parent's checkpoint for
/// `disk`, and the bitmap name it keeps for it.
fn checkpoint_of(
    dom: &DomainRef,
    parent: &BackupRecord,
    base: Option<&DiskRecord>,
    disk: &DomainDisk,
    size: u64,
) -> std::result::Result<(String, String), String> {
    let base = base.ok_or("the parent backup has no copy of it")?;
    let cp = parent
        .checkpoint
        .as_ref()
        .ok_or("the parent backup was taken while the domain was off (it has no checkpoint)")?;
    if disk.source.as_deref() != Some(base.source.as_path()) {
        return Err(format!(
            "its image changed since the parent backup (was '{}')",
            base.source.display()
        ));
    }
    if disk.image_format().ok() != Some(base.source_format) {
        return Err("its format changed since the parent backup".into());
    }
    if base.source_format != DiskFormat::Qcow2 {
        return Err("it is not qcow2, so it cannot keep a dirty bitmap".into());
    }
    if size < base.virtual_size {
        return Err(format!(
            "it shrank since the parent backup ({} -> {size} bytes)",
            base.virtual_size
        ));
    }
    let cps = dom.checkpoints().map_err(|e| e.message)?;
    let xml = cps
        .iter()
        .find(|(n, _)| n == cp)
        .map(|(_, x)| x)
        .ok_or_else(|| format!("the parent's checkpoint '{cp}' no longer exists"))?;
    let bitmap = checkpoint_bitmap(xml, &disk.name)
        .ok_or_else(|| format!("the parent's checkpoint '{cp}' has no bitmap for it"))?;
    Ok((cp.clone(), bitmap))
}

/// For a shut-off domain: the persistent bitmap in the disk's image that
/// holds its changes since `parent` (same checks as `usable_checkpoint`,
/// then the image itself must carry the bitmap, not flagged inconsistent).
pub(crate) fn usable_offline_bitmap(
    dom: &DomainRef,
    parent: &BackupRecord,
    base: Option<&DiskRecord>,
    disk: &DomainDisk,
    size: u64,
) -> std::result::Result<String, String> {
    let (_, bitmap) = checkpoint_of(dom, parent, base, disk, size)?;
    let image = disk.source.as_deref().unwrap_or(Path::new(""));
    match image_bitmaps(image)
        .map_err(|e| e.message)?
        .iter()
        .find(|(n, _)| *n == bitmap)
    {
        None => Err(format!("its image lacks the bitmap '{bitmap}'")),
        Some((_, false)) => Err(format!(
            "the bitmap '{bitmap}' in its image is inconsistent, in use or disabled"
        )),
        Some(_) => Ok(bitmap),
    }
}

/// One disk of a live backup.
pub(crate) struct LiveDisk<'a> {
    pub record: &'a DiskRecord,
    /// The checkpoint to copy changes since (an incremental disk).
    pub since: Option<&'a str>,
}

/// A disk of a libvirt `<domainbackup>`: backed up in full, or (`since`)
/// incrementally since that checkpoint; `None` for the domain's other
/// disks, which are named with backup='no'.
pub(crate) fn backup_disk_element(name: &str, since: Option<Option<&str>>) -> Element {
    let el = Element::new("disk").with_attr("name", name);
    match since {
        None => el.with_attr("backup", "no"),
        Some(since) => {
            let el = el.with_attr("backup", "yes").with_attr("type", "file");
            match since {
                Some(cp) => el
                    .with_attr("backupmode", "incremental")
                    .with_attr("incremental", cp),
                None => el.with_attr("backupmode", "full"),
            }
        }
    }
}

/// The NBD export name of the `i`-th disk of a managed live backup.
fn export_name(i: usize) -> String {
    format!("disk{i}")
}

/// The dirty bitmap an incremental disk's export carries: the changes
/// since the parent's checkpoint.
pub(crate) const CHANGES_BITMAP: &str = "libvirt-backup-changes";

/// The `<domainbackup>` (pull mode, served on `socket`, scratch files in
/// `scratch`) and `<domaincheckpoint>` documents for libvirt: every disk of
/// the domain is named, those outside the backup with backup='no' /
/// checkpoint='no'.
fn documents(
    rec: &BackupRecord,
    disks: &[LiveDisk],
    all: &[DomainDisk],
    scratch: &Path,
) -> Result<(String, String)> {
    let mut bdisks = Element::new("disks");
    let mut cdisks = Element::new("disks");
    for d in all {
        let ours = disks.iter().position(|l| l.record.name == d.name);
        let (b, c) = match ours {
            Some(i) => {
                let since = disks[i].since;
                let mut b = backup_disk_element(&d.name, Some(since))
                    .with_attr("exportname", export_name(i));
                if since.is_some() {
                    b = b.with_attr("exportbitmap", CHANGES_BITMAP);
                }
                // QEMU keeps what the guest overwrites during the backup
                // here (made by `make_scratch_files`).
                let file = scratch_file(scratch, i);
                let b = b
                    .with_child(Element::new("scratch").with_attr("file", path_str(&file)?))
                    .with_child(Element::new("driver").with_attr("type", "qcow2"));
                // Only qcow2 images can keep a bitmap: the next backup of
                // another format is a full copy anyway.
                let kind = if d.format.as_deref() == Some("qcow2") {
                    "bitmap"
                } else {
                    "no"
                };
                let c = Element::new("disk")
                    .with_attr("name", d.name.clone())
                    .with_attr("checkpoint", kind);
                (b, c)
            }
            None => (
                backup_disk_element(&d.name, None),
                Element::new("disk")
                    .with_attr("name", d.name.clone())
                    .with_attr("checkpoint", "no"),
            ),
        };
        bdisks.push(b);
        cdisks.push(c);
    }
    let server = Element::new("server")
        .with_attr("transport", "unix")
        .with_attr("socket", path_str(&socket_path(scratch, &rec.uuid))?);
    let backup = Element::new("domainbackup")
        .with_attr("mode", "pull")
        .with_child(server)
        .with_child(bdisks)
        .to_xml()?;
    let mut cp = Element::new("domaincheckpoint")
        .with_child(Element::new("name").with_text(rec.checkpoint.clone().unwrap_or_default()));
    if let Some(desc) = &rec.description {
        cp.push(Element::new("description").with_text(desc.clone()));
    }
    cp.push(cdisks);
    Ok((backup, cp.to_xml()?))
}

/// The scratch file of the `i`-th disk (named by position: a disk name is
/// not a file name).
fn scratch_file(scratch: &Path, i: usize) -> PathBuf {
    scratch.join(format!("{}.scratch", export_name(i)))
}

/// Make each disk's scratch file, an empty qcow2 of the disk's size, for
/// libvirt to reuse (`VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL`): libvirt
/// would otherwise create them with QEMU's blockdev-create jobs, which
/// measured 50 ms more per backup.
fn make_scratch_files(scratch: &Path, disks: &[LiveDisk]) -> Result<()> {
    for (i, d) in disks.iter().enumerate() {
        let file = scratch_file(scratch, i);
        let t = crate::image::disk::Target::create(
            &file,
            DiskFormat::Qcow2,
            d.record.virtual_size,
            None,
            false,
        )?;
        t.finish(&file)?;
    }
    Ok(())
}

/// Longest path a unix socket address holds (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// The NBD socket of the pull job of `backup`, whose scratch folder is
/// `scratch`: in that folder, in the catalog's private area, so only this
/// library (and QEMU, which makes it) can connect. A catalog deep enough
/// that the path would not fit a socket address gets it in a private
/// folder of the temporary folder instead (`socket_dir`).
fn socket_path(scratch: &Path, backup: &uuid::Uuid) -> PathBuf {
    let p = scratch.join("nbd.sock");
    if p.as_os_str().len() <= SUN_PATH_MAX {
        return p;
    }
    socket_dir(backup).join("nbd.sock")
}

/// The folder of a pull job's socket when the scratch folder's path is too
/// long, named after the backup so that recovery finds it.
fn socket_dir(backup: &uuid::Uuid) -> PathBuf {
    std::env::temp_dir().join(format!("libvirt-backup-nbd-{}", backup.simple()))
}

/// Make the private folder of `socket`'s (mode 0700) if it is not the
/// scratch folder. One that exists already is used only if it is a folder
/// of ours that nobody else can enter (a dead job's), never through a link.
fn make_socket_dir(socket: &Path, scratch: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = socket.parent().unwrap_or(scratch);
    if dir == scratch {
        return Ok(());
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dir)
                .map_err(|e| Error::io("cannot read folder", dir, e))?;
            let ours = m.is_dir()
                && m.uid() == rustix::process::geteuid().as_raw()
                && m.mode() & 0o077 == 0;
            if ours {
                Ok(())
            } else {
                Err(Error::operation_invalid(format!(
                    "refusing folder '{}' for the NBD socket of a backup: it is not a private folder of ours",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(Error::io("cannot create folder", dir, e)),
    }
}

/// Remove the private socket folder of `backup`'s pull job if it has one
/// (never following a link).
pub(crate) fn remove_socket_dir(backup: &uuid::Uuid) {
    let dir = socket_dir(backup);
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        crate::warn_if_err!(
            std::fs::remove_dir_all(&dir),
            "cannot remove folder '{}'",
            dir.display()
        );
    }
}

/// libvirt's pull-mode backup job of a running domain: QEMU serves each
/// disk as it was when the job began over NBD (keeping what the guest
/// overwrites since in scratch files), and the library reads it.
pub(crate) struct PullJob {
    socket: PathBuf,
    /// The export name and bitmap of each disk, in the backup's order.
    exports: Vec<(String, Option<&'static str>)>,
}

impl PullJob {
    /// Start libvirt's job with the backup's checkpoint. With `quiesce`
    /// the guest's file systems are frozen around the start (the point in
    /// time), through the guest agent.
    pub(crate) fn begin(
        dom: &DomainRef,
        rec: &BackupRecord,
        disks: &[LiveDisk],
        all: &[DomainDisk],
        scratch: &Path,
        quiesce: bool,
    ) -> Result<PullJob> {
        let socket = socket_path(scratch, &rec.uuid);
        make_scratch_files(scratch, disks)?;
        make_socket_dir(&socket, scratch)?;
        let (backup_xml, checkpoint_xml) = documents(rec, disks, all, scratch)?;
        ::log::debug!("pull-mode backup of '{}': {backup_xml}", rec.domain_name);
        quiesced(dom, quiesce, || {
            let reuse = virt::sys::VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL;
            dom.backup_begin(&backup_xml, Some(&checkpoint_xml), reuse)
        })
        .inspect_err(|_| remove_socket_dir(&rec.uuid))?;
        Ok(PullJob {
            socket,
            exports: disks
                .iter()
                .enumerate()
                .map(|(i, d)| (export_name(i), d.since.map(|_| CHANGES_BITMAP)))
                .collect(),
        })
    }

    /// Connect to the `i`-th disk's export (with its changes bitmap for an
    /// incremental disk).
    pub(crate) fn connect(&self, i: usize) -> Result<NbdClient> {
        let (export, bitmap) = &self.exports[i];
        NbdClient::connect(&NbdAddress::Unix(self.socket.clone()), export, *bitmap)
    }
}

/// Whether libvirt's current job of `dom` is the pull-mode backup job whose
/// scratch files are in `scratch` (a backup of this library's).
pub(crate) fn is_our_pull_job(dom: &DomainRef, scratch: &Path) -> bool {
    let Ok(xml) = dom.backup_xml() else {
        return false;
    };
    let Ok(root) = dom::parse(&xml) else {
        return false;
    };
    let in_scratch = root.child("disks").is_some_and(|ds| {
        ds.children_named("disk").any(|d| {
            d.child("scratch")
                .and_then(|s| s.attr("file"))
                .is_some_and(|f| Path::new(f).parent() == Some(scratch))
        })
    });
    root.attr("mode") == Some("pull") && in_scratch
}

/// End the pull-mode job of a backup whose copy is done, after checking
/// that it still ran all along: a job that ended on its own (its scratch
/// file's disk full, QEMU's copy-before-write failing, the domain stopped)
/// may have served blocks of two points in time, so the backup fails.
pub(crate) fn finish_pull_job(dom: &DomainRef, scratch: &Path) -> Result<()> {
    if !dom.is_active()? {
        return Err(Error::operation_failed(
            "the domain stopped during the backup",
        ));
    }
    if !dom.job_info(false)?.is_active() || !is_our_pull_job(dom, scratch) {
        let why = dom
            .job_info(true)
            .ok()
            .and_then(|i| i.error)
            .unwrap_or_else(|| "no reason given".into());
        return Err(Error::operation_failed(format!(
            "libvirt's backup job ended on its own during the copy: {why}"
        )));
    }
    end_pull_job(dom)
}

/// End a pull-mode job (it runs until aborted) and wait until libvirt has
/// removed it. Nothing to do when the domain no longer runs.
pub(crate) fn end_pull_job(dom: &DomainRef) -> Result<()> {
    if dom.is_active()? && dom.job_info(false)?.is_active() {
        dom.abort_job()?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dom.is_active()? && dom.job_info(false)?.is_active() {
        if std::time::Instant::now() > deadline {
            return Err(Error::operation_failed("libvirt's backup job does not end"));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Run `start` with the guest's file systems frozen (through its agent)
/// when `quiesce`; they are thawed whatever happens.
pub(crate) fn quiesced(
    dom: &DomainRef,
    quiesce: bool,
    start: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !quiesce {
        return start();
    }
    dom.fs_freeze(true).map_err(|mut e| {
        e.message = format!("cannot quiesce the guest's file systems: {}", e.message);
        e
    })?;
    let started = start();
    let thawed = dom.fs_freeze(false);
    started.and(thawed)
}

/// Remove a backup's checkpoint: through libvirt while the domain runs (it
/// drops the bitmaps); for a shut-off domain, whose checkpoints libvirt
/// cannot delete, forget the metadata and remove the bitmaps from the
/// images with qemu-img. A checkpoint that is already gone is fine.
pub(crate) fn remove_checkpoint(dom: &DomainRef, name: &str) -> Result<()> {
    let cps = dom.checkpoints()?;
    let Some((_, xml)) = cps.iter().find(|(n, _)| n == name) else {
        return Ok(());
    };
    if dom.is_active()? {
        // A checkpoint whose bitmap is gone (its disk was swapped) cannot
        // be deleted the normal way: forget it, there is nothing to merge.
        return dom
            .delete_checkpoint(name, false)
            .or_else(|_| dom.delete_checkpoint(name, true));
    }
    for d in crate::xml::domain::parse_disks(&dom.xml()?)? {
        let (Some(bitmap), Some(image)) = (checkpoint_bitmap(xml, &d.name), d.source) else {
            continue;
        };
        if image_bitmaps(&image)?.iter().any(|(n, _)| *n == bitmap) {
            remove_bitmap(&image, &bitmap)?;
        }
    }
    dom.delete_checkpoint(name, true)
}

fn remove_bitmap(image: &Path, bitmap: &str) -> Result<()> {
    qemu_tools::run(
        "qemu-img",
        [
            os("bitmap"),
            os("--remove"),
            os("-f"),
            os("qcow2"),
            image.as_os_str(),
            os(bitmap),
        ],
    )
    .map(|_| ())
}

/// End what libvirt still runs for a live backup whose process died: its
/// copy died with it, so the backup is lost; the pull-mode job it started
/// (recognised by its NBD socket in `scratch`) is ended and the backup's
/// checkpoint removed, so that the domain's next backup can start. A job
/// of the domain that is not this backup's is left alone.
pub(crate) fn end_orphan(rec: &BackupRecord, scratch: &Path) {
    let Ok(dom) = crate::hv::libvirt::open_domain(&rec.uri, &rec.domain_uuid) else {
        return;
    };
    let running = dom.job_info(false).is_ok_and(|i| i.is_active());
    if running && is_our_pull_job(&dom, scratch) {
        ::log::info!(
            "ending the pull-mode backup job of domain '{}' left by backup {} whose process died",
            rec.domain_name,
            rec.uuid
        );
        crate::warn_if_err!(end_pull_job(&dom), "cannot end the pull-mode backup job");
    }
    if let Some(cp) = &rec.checkpoint {
        crate::warn_if_err!(
            remove_checkpoint(&dom, cp),
            "cannot remove checkpoint '{cp}'"
        );
    }
}
