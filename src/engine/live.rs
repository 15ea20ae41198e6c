//! Backups of running QEMU domains: libvirt does the data path.
//!
//! A managed backup is one `virDomainBackupBegin` in push mode that also
//! creates a libvirt checkpoint named after the backup (its bitmaps record
//! every write from that moment on). Targets are created by the library
//! first (`REUSE_EXTERNAL`), so an incremental target's backing file is the
//! parent's copy, exactly as for the library's own engine. The backup holds
//! the disks as they were when `virDomainBackupBegin` returned: QEMU copies
//! a block before the guest overwrites it.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::qemu_tools::{self, os};
use crate::job::Job;
use crate::xml::backup::{BackupRecord, DiskFormat, DiskRecord, path_str};
use crate::xml::dom::{self, Element};
use crate::xml::domain::DomainDisk;

/// How often the job thread asks libvirt about the job.
const POLL: Duration = Duration::from_millis(10);

/// libvirt's VIR_DOMAIN_JOB_COMPLETED and VIR_DOMAIN_JOB_OPERATION_BACKUP.
const JOB_COMPLETED: i32 = 3;
const OPERATION_BACKUP: i32 = 9;

/// Whether the library hands this domain's backups to libvirt: a running
/// domain of the QEMU driver.
pub(crate) fn is_live(dom: &DomainRef, active: bool) -> Result<bool> {
    Ok(active && dom.driver()?.eq_ignore_ascii_case("qemu"))
}

/// The checkpoint a backup creates.
pub(crate) fn checkpoint_name(backup: &uuid::Uuid) -> String {
    backup.to_string()
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

/// The `<domainbackup>` and `<domaincheckpoint>` documents for libvirt:
/// every disk of the domain is named, those outside the backup with
/// backup='no' / checkpoint='no'.
fn documents(
    rec: &BackupRecord,
    disks: &[LiveDisk],
    all: &[DomainDisk],
) -> Result<(String, String)> {
    let mut bdisks = Element::new("disks");
    let mut cdisks = Element::new("disks");
    for d in all {
        let ours = disks.iter().find(|l| l.record.name == d.name);
        let (b, c) = match ours {
            Some(l) => {
                let b = backup_disk_element(&d.name, Some(l.since))
                    .with_child(
                        Element::new("target").with_attr("file", path_str(&l.record.target)?),
                    )
                    .with_child(Element::new("driver").with_attr("type", l.record.format.as_str()));
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
    let backup = Element::new("domainbackup")
        .with_attr("mode", "push")
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

/// Start libvirt's job. With `quiesce` the guest's file systems are frozen
/// around the start (the point in time), through the guest agent.
pub(crate) fn begin(
    dom: &DomainRef,
    rec: &BackupRecord,
    disks: &[LiveDisk],
    all: &[DomainDisk],
    quiesce: bool,
) -> Result<()> {
    let (backup_xml, checkpoint_xml) = documents(rec, disks, all)?;
    quiesced(dom, quiesce, || {
        dom.backup_begin(
            &backup_xml,
            Some(&checkpoint_xml),
            virt::sys::VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL,
        )
    })
}

/// Run `start` with the guest's file systems frozen (through its agent)
/// when `quiesce`; they are thawed whatever happens.
pub(crate) fn quiesced(dom: &DomainRef, quiesce: bool, start: impl FnOnce() -> Result<()>) -> Result<()> {
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

/// Follow libvirt's job until it ends, mirroring its progress into `job`;
/// a cancel request aborts it.
pub(crate) fn follow(job: &Job, dom: &DomainRef) -> Result<()> {
    let mut aborted = false;
    loop {
        if !aborted && job.progress.check_cancel().is_err() {
            dom.abort_job()?;
            aborted = true;
        }
        let info = dom.job_info(false)?;
        if !info.is_active() {
            break;
        }
        if info.total > 0 {
            job.total
                .store(info.total, std::sync::atomic::Ordering::Relaxed);
        }
        job.progress
            .processed
            .store(info.processed, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(POLL);
    }
    if aborted {
        return Err(Error::aborted("backup job cancelled"));
    }
    let done = dom.job_info(true)?;
    if done.kind == JOB_COMPLETED && done.operation.is_none_or(|o| o == OPERATION_BACKUP) {
        use std::sync::atomic::Ordering::Relaxed;
        job.total.store(done.total, Relaxed);
        job.progress.processed.store(done.total, Relaxed);
        // QEMU does not say how much it wrote; what it copied is the best figure.
        job.progress.written.store(done.processed, Relaxed);
        return Ok(());
    }
    Err(Error::operation_failed(format!(
        "libvirt backup job failed: {}",
        done.error.unwrap_or_else(|| "no reason given".into())
    )))
}

/// What became of a live backup whose process died while libvirt copied:
/// `Some(true)` completed (targets present and readable at their size),
/// `Some(false)` failed or gone, `None` still running.
/// With `cancel` (someone asked to abort it), a job still running is
/// aborted and the backup discarded.
pub(crate) fn orphan_outcome(rec: &BackupRecord, cancel: bool) -> Option<bool> {
    let Ok(dom) = crate::hv::libvirt::open_domain(&rec.uri, &rec.domain_uuid) else {
        return Some(false);
    };
    let running = || dom.job_info(false).is_ok_and(|i| i.is_active());
    if running() {
        if !cancel || dom.abort_job().is_err() {
            return None;
        }
        while running() {
            std::thread::sleep(POLL);
        }
        if let Some(cp) = &rec.checkpoint {
            crate::warn_if_err!(
                remove_checkpoint(&dom, cp),
                "cannot remove checkpoint '{cp}'"
            );
        }
        return Some(false);
    }
    let completed = dom.job_info(true).is_ok_and(|i| {
        i.kind == JOB_COMPLETED && i.operation.is_none_or(|o| o == OPERATION_BACKUP)
    });
    let has_checkpoint = rec.checkpoint.as_ref().is_some_and(|cp| {
        dom.checkpoints()
            .is_ok_and(|l| l.iter().any(|(n, _)| n == cp))
    });
    let readable = rec.disks.iter().all(|d| {
        // Only the size is checked: the image's own header is enough.
        crate::image::disk::Source::open(&d.target, d.format, crate::image::disk::Chain::Detached)
            .is_ok_and(|s| s.size() >= d.virtual_size)
    });
    if !(completed && has_checkpoint && readable) {
        if let Some(cp) = &rec.checkpoint {
            crate::warn_if_err!(
                remove_checkpoint(&dom, cp),
                "cannot remove checkpoint '{cp}'"
            );
        }
        return Some(false);
    }
    Some(true)
}
