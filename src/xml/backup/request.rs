//! The documents callers send, each read into a request:
//! `virDomainBackupCreateXML` ([`CreateRequest`]),
//! `virDomainBackupStartUnmanaged` ([`UnmanagedRequest`]),
//! `virDomainBackupRestore` ([`RestoreRequest`]),
//! `virDomainBackupRestoreUnmanaged` ([`UnmanagedRestoreRequest`]) and
//! `virDomainSetDefaultTarget` ([`DefaultTarget`]). Each is read against
//! the schema of `vocabulary.rs`, then checked for what a schema cannot
//! say (absolute paths, unique names, values).

use std::path::PathBuf;

use uuid::Uuid;

use super::encryption::{Encryption, parse_encryption};
use super::vocabulary::{
    Compression, DEFAULT_TARGET, DOMAINBACKUP, DiskFormat, MAX_DISKS, disk_name, parse_compression,
    parse_uuid, path_str,
};
use crate::error::{Error, Result};
use crate::xml::dom::{self, Element};

/// Where a disk's backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An image file at this path.
    File(PathBuf),
    /// A volume of a storage pool.
    Volume {
        /// The pool's name.
        pool: String,
        /// The volume's name within the pool.
        volume: String,
    },
}

/// One `<disk>` of a create request: whether and where it is backed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    /// The disk's name in the domain.
    pub name: String,
    /// Whether the disk is backed up (`backup='yes'`, the default).
    pub backup: bool,
    /// Where its copy goes; `None`: the default target.
    pub target: Option<Target>,
    /// The copy's format, from `<driver type>`; `None`: the default.
    pub format: Option<DiskFormat>,
    /// `<compression type>` of the disk; `None`: that of `<disks>`.
    pub compression: Option<Compression>,
    /// `<encryption>` of the disk; `None`: that of `<disks>`.
    pub encryption: Option<Encryption>,
}

/// Input of `virDomainBackupCreateXML`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateRequest {
    /// The UUID the caller gives the backup; `None`: a new one.
    pub uuid: Option<Uuid>,
    /// The caller's description.
    pub description: Option<String>,
    /// The backup an incremental backup follows; `None`: a full backup.
    pub parent: Option<Uuid>,
    /// `None`: every disk with device='disk'.
    pub disks: Option<Vec<DiskRequest>>,
    /// `<bandwidth bytes='N'/>`: the most bytes per second the job reads
    /// from all its disks together; `None`: no limit.
    pub bandwidth: Option<u64>,
    /// `<disks><compression type>`: every disk's unless it says its own.
    pub compression: Option<Compression>,
    /// `<disks><encryption>`: every disk's unless it says its own.
    pub encryption: Option<Encryption>,
}

/// `<bandwidth bytes='N'/>`: N a positive integer in decimal digits (no
/// sign, space or unit), at most `u64::MAX`. Zero is refused: no limit is
/// said by leaving the element out.
fn parse_bandwidth(root: &Element) -> Result<Option<u64>> {
    let Some(el) = root.child("bandwidth") else {
        return Ok(None);
    };
    let v = el
        .attr("bytes")
        .ok_or_else(|| Error::xml("<bandwidth> needs a bytes attribute (bytes per second)"))?;
    let bad = |why: &str| Error::xml(format!("<bandwidth bytes='{}'>: {why}", v.escape_debug()));
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a positive integer of bytes per second"));
    }
    match v.parse::<u64>() {
        Ok(0) => Err(bad(
            "a limit of 0 bytes per second; leave <bandwidth> out for no limit",
        )),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(bad(&format!(
            "too large (at most {} bytes per second)",
            u64::MAX
        ))),
    }
}

fn parse_parent(root: &Element) -> Result<Option<Uuid>> {
    match root.child("parent") {
        None => Ok(None),
        Some(p) => {
            let u = p
                .child_text("uuid")
                .ok_or_else(|| Error::xml("<parent> needs a <uuid>"))?;
            Ok(Some(parse_uuid(u)?))
        }
    }
}

fn absolute_path(s: &str, what: &str) -> Result<PathBuf> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(Error::xml(format!("{what} '{s}' must be an absolute path")));
    }
    Ok(p)
}

fn parse_driver(d: &Element) -> Result<Option<DiskFormat>> {
    match d.child("driver") {
        None => Ok(None),
        Some(drv) => match drv.attr("type") {
            None => Ok(None),
            Some(t) => Ok(Some(DiskFormat::parse(t)?)),
        },
    }
}

/// Collect `<disks><disk/></disks>` with unique names (at most [`MAX_DISKS`]).
fn disk_elements(root: &Element) -> Result<Option<Vec<&Element>>> {
    let Some(disks) = root.child("disks") else {
        return Ok(None);
    };
    let list: Vec<&Element> = disks.children_named("disk").collect();
    if list.len() > MAX_DISKS {
        return Err(Error::xml(format!(
            "{} disks in one document; at most {MAX_DISKS} are allowed",
            list.len()
        )));
    }
    let mut names = std::collections::HashSet::with_capacity(list.len());
    for d in &list {
        let n = disk_name(d)?;
        if !names.insert(n) {
            return Err(Error::xml(format!(
                "disk '{}' is listed twice",
                d.attr("name").unwrap_or_default()
            )));
        }
    }
    Ok(Some(list))
}

impl CreateRequest {
    /// Read and check a `virDomainBackupCreateXML` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let root = dom::parse_document(xml, &DOMAINBACKUP)?;
        let uuid = root.child_text("uuid").map(parse_uuid).transpose()?;
        let description = root.child("description").map(|d| d.text.clone());
        let parent = parse_parent(&root)?;
        let disks = match disk_elements(&root)? {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .map(parse_disk_request)
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let all = root.child("disks");
        Ok(CreateRequest {
            uuid,
            description,
            parent,
            disks,
            bandwidth: parse_bandwidth(&root)?,
            compression: all.map(parse_compression).transpose()?.flatten(),
            encryption: all.map(parse_encryption).transpose()?.flatten(),
        })
    }

    /// Whether `<encryption>` is asked for, on `<disks>` or on a disk.
    pub fn encrypted(&self) -> bool {
        self.encryption.is_some() || self.disks.iter().flatten().any(|d| d.encryption.is_some())
    }

    /// Whether a compression other than none is asked for anywhere.
    pub fn compressed(&self) -> bool {
        let on = |c: &Option<Compression>| c.is_some_and(|c| c != Compression::None);
        on(&self.compression) || self.disks.iter().flatten().any(|d| on(&d.compression))
    }
}

fn parse_disk_request(d: &Element) -> Result<DiskRequest> {
    let name = disk_name(d)?;
    let backup = match d.attr("backup") {
        None | Some("yes") => true,
        Some("no") => false,
        Some(o) => {
            return Err(Error::xml(format!(
                "disk '{name}': backup='{o}' must be yes or no"
            )));
        }
    };
    let kind = d.attr("type").unwrap_or("file");
    let target = match d.child("target") {
        None => None,
        Some(t) => Some(match kind {
            "file" => {
                let f = t.attr("file").ok_or_else(|| {
                    Error::xml(format!("disk '{name}': <target> needs a file attribute"))
                })?;
                Target::File(absolute_path(f, "target file")?)
            }
            "volume" => {
                let pool = t.attr("pool").unwrap_or_default();
                let volume = t.attr("volume").unwrap_or_default();
                if pool.is_empty() || volume.is_empty() {
                    return Err(Error::xml(format!(
                        "disk '{name}': <target> needs pool and volume"
                    )));
                }
                Target::Volume {
                    pool: pool.to_string(),
                    volume: volume.to_string(),
                }
            }
            o => {
                return Err(Error::xml(format!(
                    "disk '{name}': unknown disk type '{o}'"
                )));
            }
        }),
    };
    if kind == "volume" && target.is_none() {
        return Err(Error::xml(format!(
            "disk '{name}': type='volume' needs a <target pool volume>"
        )));
    }
    Ok(DiskRequest {
        name,
        backup,
        target,
        format: parse_driver(d)?,
        compression: parse_compression(d)?,
        encryption: parse_encryption(d)?,
    })
}

/// `virDomainSetDefaultTarget` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultTarget {
    /// Backups go into this folder.
    Dir(PathBuf),
    /// Backups go into this storage pool.
    Pool(String),
}

impl DefaultTarget {
    /// Read and check a `virDomainSetDefaultTarget` document: a target, or
    /// None for `<target type='none'/>` (no default target: clear it).
    pub fn parse_setting(xml: &str) -> Result<Option<Self>> {
        let root = dom::parse_document(xml, &DEFAULT_TARGET)?;
        if root.attr("type") == Some("none") {
            if root.child("path").is_some() || root.child("pool").is_some() {
                return Err(Error::xml("<target type='none'> takes no <path> or <pool>"));
            }
            return Ok(None);
        }
        Self::parse(xml).map(Some)
    }

    /// The document [`DefaultTarget::parse_setting`] reads as no target.
    pub const NONE_XML: &'static str = "<target type='none'/>";

    /// Read and check a `virDomainSetDefaultTarget` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let root = dom::parse_document(xml, &DEFAULT_TARGET)?;
        match root.attr("type") {
            Some("dir") => {
                let p = root
                    .child_text("path")
                    .ok_or_else(|| Error::xml("<target type='dir'> needs <path>"))?;
                Ok(DefaultTarget::Dir(absolute_path(p, "default target path")?))
            }
            Some("pool") => {
                let p = root.child_text("pool").filter(|p| !p.is_empty());
                Ok(DefaultTarget::Pool(
                    p.ok_or_else(|| Error::xml("<target type='pool'> needs <pool>"))?
                        .to_string(),
                ))
            }
            Some(o) => Err(Error::xml(format!(
                "unknown default target type '{o}' (dir, pool or none)"
            ))),
            None => Err(Error::xml("<target> needs a type attribute (dir or pool)")),
        }
    }

    /// The document [`DefaultTarget::parse`] reads back as `self`. A path
    /// that starts or ends with white space is refused: `<path>` is read
    /// trimmed (as callers indent it), so it would read back as another
    /// path. [`DefaultTarget::parse`] never makes one.
    pub fn to_xml(&self) -> Result<String> {
        match self {
            DefaultTarget::Dir(p) => {
                let s = path_str(p)?;
                if s.trim() != s {
                    return Err(Error::invalid_arg(format!(
                        "default target path \"{}\" starts or ends with white space",
                        s.escape_debug()
                    )));
                }
                Element::new("target")
                    .with_attr("type", "dir")
                    .with_child(Element::new("path").with_text(s))
            }
            DefaultTarget::Pool(p) => Element::new("target")
                .with_attr("type", "pool")
                .with_child(Element::new("pool").with_text(p.clone())),
        }
        .to_xml()
    }
}

/// `virDomainBackupRestore` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The backup to restore.
    pub uuid: Uuid,
    /// The name of the new domain (only with `RESTORE_NEW_DOMAIN`).
    pub domain_name: Option<String>,
    /// The disks to restore; `None`: every disk of the backup.
    pub disks: Option<Vec<RestoreDisk>>,
    /// `<target dir='…'/>` under the root: the folder of every disk without
    /// its own `<target file>` (`<dir>/<disk>.<format>`).
    pub target_dir: Option<PathBuf>,
}

/// One `<disk>` of a restore request: where it is restored to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreDisk {
    /// The disk's name in the domain.
    pub name: String,
    /// The file to restore it to; `None`: the default.
    pub target: Option<PathBuf>,
    /// The restored file's format; `None`: the default.
    pub format: Option<DiskFormat>,
}

fn parse_domain_name(root: &Element) -> Option<String> {
    root.child("domain")
        .and_then(|d| d.attr("name"))
        .map(str::to_string)
}

fn parse_target_dir(root: &Element) -> Result<Option<PathBuf>> {
    match root.child("target") {
        None => Ok(None),
        Some(t) => match t.attr("dir") {
            Some(d) => absolute_path(d, "restore target dir").map(Some),
            None => Err(Error::xml(
                "<target> under <domainbackup> needs a dir attribute",
            )),
        },
    }
}

fn parse_restore_disk(d: &Element) -> Result<RestoreDisk> {
    Ok(RestoreDisk {
        name: disk_name(d)?,
        target: d
            .child("target")
            .and_then(|t| t.attr("file"))
            .map(|f| absolute_path(f, "restore target"))
            .transpose()?,
        format: parse_driver(d)?,
    })
}

impl RestoreRequest {
    /// Read and check a `virDomainBackupRestore` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let root = dom::parse_document(xml, &DOMAINBACKUP)?;
        let uuid = parse_uuid(
            root.child_text("uuid")
                .ok_or_else(|| Error::xml("restore needs the backup's <uuid>"))?,
        )?;
        let domain_name = parse_domain_name(&root);
        let disks = disk_elements(&root)?
            .map(|list| {
                list.into_iter()
                    .map(parse_restore_disk)
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(RestoreRequest {
            uuid,
            domain_name,
            disks,
            target_dir: parse_target_dir(&root)?,
        })
    }
}

/// An NBD server: where an unmanaged backup exports its disks, or where
/// `RestoreUnmanaged` reads them from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdServer {
    /// A TCP server.
    Tcp {
        /// Its host name or address.
        host: String,
        /// Its port.
        port: u16,
    },
    /// A Unix socket at this path.
    Unix(PathBuf),
}

/// NBD's registered port.
pub const NBD_PORT: u16 = 10809;

impl NbdServer {
    /// `<server transport='tcp' name='H' port='P'/>`, `<server
    /// transport='unix' socket='/path'/>` (and the same attributes on a
    /// restore source's `<host>`).
    pub fn parse(el: &Element, what: &str) -> Result<Self> {
        match el.attr("transport").unwrap_or("tcp") {
            "tcp" => {
                let host = el.attr("name").unwrap_or("localhost").to_string();
                let port = match el.attr("port") {
                    None => NBD_PORT,
                    Some(p) => p
                        .parse()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| Error::xml(format!("{what}: bad port '{p}'")))?,
                };
                Ok(NbdServer::Tcp { host, port })
            }
            "unix" => {
                let s = el.attr("socket").ok_or_else(|| {
                    Error::xml(format!("{what}: a unix transport needs a socket"))
                })?;
                Ok(NbdServer::Unix(absolute_path(s, "nbd socket")?))
            }
            o => Err(Error::xml(format!(
                "{what}: unknown transport '{o}' (tcp or unix)"
            ))),
        }
    }

    /// The element `parse` reads, named `name`.
    pub fn element(&self, name: &str) -> Result<Element> {
        Ok(match self {
            NbdServer::Tcp { host, port } => Element::new(name)
                .with_attr("transport", "tcp")
                .with_attr("name", host.clone())
                .with_attr("port", port.to_string()),
            NbdServer::Unix(p) => Element::new(name)
                .with_attr("transport", "unix")
                .with_attr("socket", path_str(p)?),
        })
    }
}

/// Where `virDomainBackupRestoreUnmanaged` reads a disk from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnmanagedSource {
    /// A file and its format, stated by the caller: a format is never
    /// guessed from bytes a guest may have written.
    File(PathBuf, DiskFormat),
    /// The NBD export `name` on `server`.
    Nbd {
        /// The export's name.
        name: String,
        /// The server that offers it.
        server: NbdServer,
    },
}

/// One `<disk>` of an unmanaged restore: where it goes and where it is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmanagedRestoreDisk {
    /// The disk and where it is restored to.
    pub disk: RestoreDisk,
    /// Where its data is read from.
    pub source: UnmanagedSource,
}

/// `virDomainBackupRestoreUnmanaged` input: the restore document with a
/// `<source>` in every disk instead of a backup `<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmanagedRestoreRequest {
    /// As in [`RestoreRequest::domain_name`].
    pub domain_name: Option<String>,
    /// The disks to restore, each with its source.
    pub disks: Vec<UnmanagedRestoreDisk>,
    /// As in [`RestoreRequest::target_dir`].
    pub target_dir: Option<PathBuf>,
}

fn parse_unmanaged_source(name: &str, src: &Element) -> Result<UnmanagedSource> {
    if let Some(f) = src.attr("file") {
        let format = parse_driver(src)?.ok_or_else(|| {
            Error::xml(format!(
                "disk '{name}': a <driver type> is required in <source file>: \
                 the library never guesses the format of a file a guest may have written"
            ))
        })?;
        return Ok(UnmanagedSource::File(
            absolute_path(f, "source file")?,
            format,
        ));
    }
    match src.attr("protocol") {
        Some("nbd") => {}
        Some(o) => {
            return Err(Error::xml(format!(
                "disk '{name}': unknown source protocol '{o}' (nbd)"
            )));
        }
        None => {
            return Err(Error::xml(format!(
                "disk '{name}': <source> needs a file or protocol='nbd'"
            )));
        }
    }
    let host = src
        .child("host")
        .ok_or_else(|| Error::xml(format!("disk '{name}': an nbd <source> needs a <host>")))?;
    Ok(UnmanagedSource::Nbd {
        name: src.attr("name").unwrap_or_default().to_string(),
        server: NbdServer::parse(host, &format!("disk '{name}': nbd <host>"))?,
    })
}

impl UnmanagedRestoreRequest {
    /// Read and check a `virDomainBackupRestoreUnmanaged` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let root = dom::parse_document(xml, &DOMAINBACKUP)?;
        let list = disk_elements(&root)?
            .filter(|l| !l.is_empty())
            .ok_or_else(|| Error::xml("restoring from unmanaged sources needs <disks>"))?;
        let disks = list
            .into_iter()
            .map(|d| {
                let disk = parse_restore_disk(d)?;
                let src = d
                    .child("source")
                    .ok_or_else(|| Error::xml(format!("disk '{}' needs a <source>", disk.name)))?;
                let source = parse_unmanaged_source(&disk.name, src)?;
                Ok(UnmanagedRestoreDisk { disk, source })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UnmanagedRestoreRequest {
            domain_name: parse_domain_name(&root),
            disks,
            target_dir: parse_target_dir(&root)?,
        })
    }
}

/// `virDomainBackupStartUnmanaged` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmanagedRequest {
    /// `<uuid>`: the stored backup to export (the form with no domain).
    pub backup: Option<Uuid>,
    /// The backup whose changes since then each export carries as a dirty bitmap; `None`: none.
    pub parent: Option<Uuid>,
    /// Where the NBD server listens.
    pub server: NbdServer,
    /// `<server tls='yes'>`.
    pub tls: bool,
    /// (disk, export name); `None`: every disk with device='disk', exported
    /// under its own name.
    pub disks: Option<Vec<(String, String)>>,
}

impl UnmanagedRequest {
    /// Read and check a `virDomainBackupStartUnmanaged` document.
    pub fn parse(xml: &str) -> Result<Self> {
        let root = dom::parse_document(xml, &DOMAINBACKUP)?;
        let list = disk_elements(&root)?;
        let server = root
            .child("server")
            .ok_or_else(|| Error::xml("unmanaged backup needs a <server>"))?;
        let tls = match server.attr("tls") {
            None | Some("no") => false,
            Some("yes") => true,
            Some(o) => return Err(Error::xml(format!("<server>: bad tls '{o}' (yes or no)"))),
        };
        let server = NbdServer::parse(server, "<server>")?;
        let disks = match list {
            None => None,
            Some(list) => {
                let mut out: Vec<(String, String)> = Vec::new();
                let mut exports = std::collections::HashSet::new();
                for d in list.into_iter().filter(|d| d.attr("backup") != Some("no")) {
                    let n = disk_name(d)?;
                    let e = d.attr("exportname").unwrap_or(&n).to_string();
                    if e.is_empty() || !exports.insert(e.clone()) {
                        return Err(Error::xml(format!(
                            "disk '{n}': export name '{e}' is empty or used twice"
                        )));
                    }
                    out.push((n, e));
                }
                Some(out)
            }
        };
        Ok(UnmanagedRequest {
            backup: root.child_text("uuid").map(parse_uuid).transpose()?,
            parent: parse_parent(&root)?,
            server,
            tls,
            disks,
        })
    }
}
