//! `VIR_DOMAIN_BACKUP_RESTORE_INSTANT`: restore without copying. Each
//! restored disk becomes a new, empty qcow2 overlay whose backing file is
//! the backup's own image of that disk (backing format recorded), so the
//! domain can be defined, and started, at once whatever the disks' size.
//! The guest's writes go to the overlay; QEMU opens the backing chain
//! read-only, so the backup never changes. The backup (and, through it, its
//! ancestors) is pinned while a disk reads through it (`ops::pins`):
//! deleting or merging it is refused. virDomainBlockPull flattens a disk
//! (its overlay then holds everything), which releases the pin.
//!
//! Order, so that a process killed midway leaves neither a stray overlay nor
//! a half-defined domain: the overlays are noted (like a restore's new
//! files) before they are created, the pins are written, the domain is
//! defined in one libvirt call, and only then is the note dropped. A kill
//! before the definition leaves a note that the next process opening the
//! catalog finds unlocked (it removes the overlays) and pins naming a
//! domain that does not exist (dropped when next read). The note names the
//! domain: a kill after libvirt has defined it but before the note is
//! removed leaves a domain whose disks are the noted overlays, and the
//! sweep then keeps them (it asks libvirt; when libvirt cannot answer, the
//! note waits for a later sweep).

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hv::libvirt::{self, DomainRef};
use crate::image::disk::Target;
use crate::ops::instant_keys::InstantKeys;
use crate::ops::options::RestoreOptions;
use crate::ops::restore_steps::{select, start_if_asked};
use crate::ops::restore_target::folder_and_name;
use crate::store::catalog::Catalog;
use crate::store::pins::{self, Pin};
use crate::xml::backup::{BackupRecord, DiskFormat, DiskRecord, RestoreRequest};
use crate::xml::dom;
use crate::xml::domain::{self, RestoredDisk};

/// One disk to give an overlay.
struct Overlay<'a> {
    disk: &'a DiskRecord,
    path: PathBuf,
}

/// Who receives the disks: a new domain, or the backup's own (shut off).
struct Receiver {
    name: String,
    uuid: Uuid,
    uri: String,
    /// The definition to give it (disks repointed at the overlays).
    base_xml: String,
    own: Option<DomainRef>,
}

fn receiver(rec: &BackupRecord, req: &RestoreRequest, own: Option<DomainRef>) -> Result<Receiver> {
    if let Some(dom) = own {
        return Ok(Receiver {
            name: dom.name()?,
            uuid: dom.uuid()?,
            uri: dom.uri()?,
            base_xml: dom.xml()?,
            own: Some(dom),
        });
    }
    let name = req
        .domain_name
        .clone()
        .unwrap_or_else(|| format!("{}-restore-{}", rec.domain_name, &rec.uuid.to_string()[..8]));
    if name.is_empty() || name.contains('/') {
        return Err(Error::invalid_arg(format!("bad domain name '{name}'")));
    }
    let conn = libvirt::open_connection(&rec.uri)?;
    if libvirt::domain_name_taken(&conn, &name)? {
        return Err(Error::operation_invalid(format!(
            "a domain named '{name}' already exists"
        )));
    }
    Ok(Receiver {
        name,
        uuid: Uuid::new_v4(),
        uri: rec.uri.clone(),
        base_xml: rec.domain_xml.clone(),
        own: None,
    })
}

/// Where each selected disk's overlay goes: its `<target file>`, else
/// next to the disk's file (`<name>-<disk>.qcow2` for a new domain,
/// `<name>-<disk>-instant-<backup uuid>.qcow2` for the own domain, whose
/// current file stays as it is).
fn overlays<'a>(
    rec: &'a BackupRecord,
    req: &RestoreRequest,
    to: &Receiver,
) -> Result<Vec<Overlay<'a>>> {
    let names: Vec<&str> = rec.disks.iter().map(|d| d.name.as_str()).collect();
    let current = match &to.own {
        Some(_) => domain::parse_disks(&to.base_xml)?,
        None => Vec::new(),
    };
    let mut out: Vec<Overlay> = Vec::new();
    for (name, asked) in select(req.disks.as_deref(), &names, |d| d.name.as_str())? {
        if asked
            .and_then(|a| a.format)
            .is_some_and(|f| f != DiskFormat::Qcow2)
        {
            return Err(Error::invalid_arg(format!(
                "disk '{name}': an instant restore gives the disk a qcow2 overlay; <driver type> can only be qcow2"
            )));
        }
        let disk = rec.disks.iter().find(|d| d.name == name).unwrap();
        let path = match asked.and_then(|a| a.target.clone()) {
            Some(t) => t,
            None => {
                let near = current
                    .iter()
                    .find(|d| d.name == name)
                    .and_then(|d| d.source.clone())
                    .unwrap_or_else(|| disk.source.clone());
                let dir = near.parent().unwrap_or(Path::new("/")).to_path_buf();
                match &to.own {
                    Some(_) => dir.join(format!("{}-{name}-instant-{}.qcow2", to.name, rec.uuid)),
                    None => dir.join(format!("{}-{name}.qcow2", to.name)),
                }
            }
        };
        check_new_file(name, &path)?;
        if out.iter().any(|o| o.path == path) {
            return Err(Error::invalid_arg(format!(
                "restore target '{}' is given to two disks",
                path.display()
            )));
        }
        out.push(Overlay { disk, path });
    }
    Ok(out)
}

fn check_new_file(name: &str, path: &Path) -> Result<()> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::operation_invalid(format!(
            "disk '{name}': '{}' exists; an instant restore needs a new file for the overlay",
            path.display()
        )));
    }
    folder_and_name(path).map(drop)
}

/// The overlay: empty qcow2, backing file the backup's image, named
/// explicitly with its format (never probed); LUKS-encrypted with `key`
/// when given (an encrypted backup's: see `ops::instant_keys`).
fn create_overlay(o: &Overlay, key: Option<&[u8]>) -> Result<()> {
    let size = crate::image::disk::image_size(&o.disk.target, o.disk.format)?;
    let (folder, name) = folder_and_name(&o.path)?;
    // Created here, private and never through a link, in a folder nobody
    // else can write, and formatted through the descriptor of its
    // creation: no other program opens the path in between.
    let file = folder
        .create_new(&name)
        .map_err(|e| Error::io("cannot create overlay", &o.path, e))?;
    let backing = Some((o.disk.target.as_path(), o.disk.format));
    let made = match key {
        Some(k) => Target::create_encrypted(file, &o.path, size, backing, k),
        None => Target::create_from(file, &o.path, DiskFormat::Qcow2, size, backing),
    }
    .and_then(|t| t.finish(&o.path));
    if made.is_err() {
        crate::warn_if_err!(
            folder.remove(&name),
            "cannot remove overlay '{}'",
            o.path.display()
        );
    }
    made
}

/// The receiver's new definition: disks at the overlays; a new domain gets
/// the UUID its pins name.
fn definition(to: &Receiver, list: &[Overlay]) -> Result<String> {
    let disks: Vec<RestoredDisk> = list
        .iter()
        .map(|o| RestoredDisk {
            name: &o.disk.name,
            path: &o.path,
            format: DiskFormat::Qcow2,
        })
        .collect();
    let new_name = to.own.is_none().then_some(to.name.as_str());
    let xml = domain::restored_definition(&to.base_xml, new_name, &disks)?;
    if to.own.is_some() {
        return Ok(xml);
    }
    let mut root = dom::parse(&xml)?;
    root.push(dom::Element::new("uuid").with_text(to.uuid.to_string()));
    root.to_xml()
}

/// Define (or redefine) the receiver.
fn define(to: &Receiver, xml: &str) -> Result<DomainRef> {
    match &to.own {
        Some(dom) => dom.redefine(xml).map(|()| dom.clone()),
        None => libvirt::define_domain(&libvirt::open_connection(&to.uri)?, xml),
    }
}

/// `virDomainBackupRestore` with `VIR_DOMAIN_BACKUP_RESTORE_INSTANT`.
pub(crate) fn restore(
    catalog: &Catalog,
    rec: &BackupRecord,
    req: &RestoreRequest,
    own: Option<DomainRef>,
    opts: RestoreOptions,
) -> Result<()> {
    let to = receiver(rec, req, own)?;
    let list = overlays(rec, req, &to)?;
    // An encrypted chain's keys, read (and checked) before anything is made.
    let names: Vec<&str> = list.iter().map(|o| o.disk.name.as_str()).collect();
    let keys = InstantKeys::read(catalog, rec, &names)?;
    let mut xml = definition(&to, &list)?;
    if let Some(k) = &keys {
        xml = k.definition(&xml)?;
    }
    // The backup's domain lock, held until the domain is defined: a Delete
    // (which takes it) cannot slip between the pins and the domain that
    // makes them hold.
    let _guard = catalog.domain(&rec.domain_uuid).lock()?;
    let paths: Vec<&Path> = list.iter().map(|o| o.path.as_path()).collect();
    let note = catalog.stage_files_of_domain(&paths, &to.uuid, &to.uri)?;
    let (mut overlays, mut pinned): (Vec<&Path>, Vec<PathBuf>) = (Vec::new(), Vec::new());
    let done = (|| {
        for o in &list {
            // Noted before it is made: an overlay a failure cut short (an
            // empty file qemu-img never wrote, for want of a descriptor)
            // goes too, or a retry would find its name taken. A file there
            // already is not ours to remove (the name was free when checked).
            if fs::symlink_metadata(&o.path).is_err() {
                overlays.push(&o.path);
            }
            let key = keys.as_ref().and_then(|k| k.overlay_key(&o.disk.name));
            create_overlay(o, key.as_ref().map(|k| k.as_slice()))?;
            pinned.push(pins::add(catalog, &pin_of(rec, &to, o))?);
            crate::test_stop!("instant-pin-written");
        }
        define(&to, &xml)
    })();
    let dom = match done {
        Ok(dom) => dom,
        Err(e) => {
            for p in &pinned {
                pins::remove(catalog, p);
            }
            // Only a regular file of ours, private, as the overlay is made.
            for p in overlays {
                crate::store::secure::remove_own_file(p);
            }
            return Err(e);
        }
    };
    crate::test_stop!("instant-defined");
    note.done();
    drop(_guard);
    start_if_asked(&dom, opts)
}

fn pin_of(rec: &BackupRecord, to: &Receiver, o: &Overlay) -> Pin {
    Pin {
        backup: rec.uuid,
        domain_uuid: to.uuid,
        domain_name: to.name.clone(),
        uri: to.uri.clone(),
        disk: o.disk.name.clone(),
        overlay: o.path.clone(),
    }
}
