//! The `<domainbackup>` documents of API.md: what callers send (create,
//! unmanaged, restore, default target) and the record the catalog keeps.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::dom::{self, Element, Schema};
use crate::error::{Error, Result};

/// At most this many `<disk>` elements in one document.
const MAX_DISKS: usize = 1024;

// The <domainbackup> vocabulary: what callers send to CreateXML,
// StartUnmanaged, Restore and RestoreUnmanaged, and what GetXMLDesc returns
// (so that a description parses back as input). Anything else is an error,
// as libvirt's schema validation makes it for its own documents; each
// document type ignores the parts of the vocabulary it does not use
// (GetXMLDesc's output-only elements).
static UUID: Schema = Schema::text("uuid");
static HOST: Schema = Schema::element("host", &["transport", "name", "port", "socket"], &[]);
/// The format of a `<source file>` (RestoreUnmanaged), stated by the caller.
static SOURCE_DRIVER: Schema = Schema::element("driver", &["type"], &[]);
static DISK: Schema = Schema::element(
    "disk",
    &[
        "name",
        "backup",
        "type",
        "backupmode",
        "exportname",
        "exportbitmap",
    ],
    &[
        &Schema::element(
            "source",
            &["file", "protocol", "name"],
            &[&HOST, &SOURCE_DRIVER],
        ),
        &Schema::element("target", &["file", "pool", "volume"], &[]),
        &Schema::element("driver", &["type"], &[]),
    ],
)
.repeated();
pub static DOMAINBACKUP: Schema = Schema::element(
    "domainbackup",
    &[],
    &[
        &UUID,
        &Schema::text("creationTime"),
        &Schema::text("description"),
        &Schema::text("state"),
        &Schema::element("parent", &[], &[&UUID]),
        &Schema::element("domain", &["uuid", "name"], &[]),
        &Schema::element("checkpoint", &["name"], &[]),
        &Schema::element(
            "server",
            &["transport", "name", "port", "socket", "tls"],
            &[],
        ),
        &Schema::element("pinnedby", &["domain", "disk", "overlay"], &[]).repeated(),
        // Restore with FILES_ONLY: the folder of the disks without a file.
        &Schema::element("target", &["dir"], &[]),
        &Schema::element("disks", &[], &[&DISK]),
    ],
);
/// virDomainSetDefaultTarget's document.
pub static DEFAULT_TARGET: Schema = Schema::element(
    "target",
    &["type"],
    &[&Schema::text("path"), &Schema::text("pool")],
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(Error::xml(format!(
                "unsupported disk format '{other}' (raw or qcow2)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Where a disk's backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(PathBuf),
    Volume { pool: String, volume: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    pub name: String,
    pub backup: bool,
    pub target: Option<Target>,
    pub format: Option<DiskFormat>,
}

/// Input of `virDomainBackupCreateXML`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateRequest {
    pub uuid: Option<Uuid>,
    pub description: Option<String>,
    pub parent: Option<Uuid>,
    /// `None`: every disk with device='disk'.
    pub disks: Option<Vec<DiskRequest>>,
}

fn expect_root(el: &Element, name: &str) -> Result<()> {
    if el.name != name {
        return Err(Error::xml(format!(
            "expected root element <{name}>, found <{}>",
            el.name
        )));
    }
    Ok(())
}

pub fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s.trim()).map_err(|_| Error::xml(format!("malformed uuid '{}'", s.trim())))
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

fn disk_name(d: &Element) -> Result<String> {
    match d.attr("name") {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(Error::xml("<disk> needs a non-empty name attribute")),
    }
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
        Ok(CreateRequest {
            uuid,
            description,
            parent,
            disks,
        })
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
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    Running = 1,
    Completed = 2,
    Failed = 3,
    Cancelled = 4,
}

impl BackupState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Running => "running",
            BackupState::Completed => "completed",
            BackupState::Failed => "failed",
            BackupState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => BackupState::Running,
            "completed" => BackupState::Completed,
            "failed" => BackupState::Failed,
            "cancelled" => BackupState::Cancelled,
            o => return Err(Error::xml(format!("unknown backup state '{o}'"))),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupMode {
    Full,
    Incremental,
}

/// One disk as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    pub name: String,
    pub source: PathBuf,
    pub source_format: DiskFormat,
    pub target: PathBuf,
    pub format: DiskFormat,
    pub mode: BackupMode,
    pub virtual_size: u64,
    /// The storage pool and volume the target is, for `type='volume'`.
    pub volume: Option<(String, String)>,
    /// The images the target reads through, nearest first (the parent's
    /// copy, its parent's...): empty for a full copy. Images are opened
    /// with this chain, never the one their own headers name.
    pub backing: Vec<(PathBuf, DiskFormat)>,
}

/// Final or current numbers of a backup job, kept so that `GetParameters`
/// answers the same from any process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobStats {
    pub total: u64,
    pub processed: u64,
    pub written: u64,
    pub elapsed_ms: u64,
}

/// A managed backup as the catalog stores it (one file per backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub uuid: Uuid,
    pub creation_time: i64,
    /// Creation time in nanoseconds: orders backups taken within a second.
    pub created_ns: u64,
    pub description: Option<String>,
    pub state: BackupState,
    pub parent: Option<Uuid>,
    pub domain_uuid: Uuid,
    pub domain_name: String,
    pub disks: Vec<DiskRecord>,
    /// Connection URI the backup was taken through, to find the domain again
    /// from a process that only has the backup's UUID.
    pub uri: String,
    /// The domain definition at backup time (for restore as a new domain).
    pub domain_xml: String,
    pub stats: JobStats,
    /// Files the backup created (targets and folders), removed if it is discarded.
    pub created_dirs: Vec<PathBuf>,
    /// The libvirt checkpoint created with a backup of a running domain:
    /// its bitmaps are what the next incremental backup copies.
    pub checkpoint: Option<String>,
}

impl BackupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
        }
    }
}

// The catalog record: the public document (`public_element`) plus what the
// library needs later. Each element has its format and parse function,
// side by side; `from_catalog_xml` reads what `to_catalog_xml` writes.
//
// Records are read strictly (README "Catalog records" lists the format):
// a value that is there must be well-formed, or the record is damaged
// (an XML error naming the element, the attribute and the value, which
// the catalog reports as "backup record '…' is damaged"); a value that is
// missing takes the default documented at its parse function, which is
// what records of earlier versions, written before it existed, mean.
// Elements and attributes the reader does not know are ignored: a record
// may come from a newer version.

impl BackupRecord {
    /// The document `virDomainBackupGetXMLDesc` returns.
    pub fn public_element(&self) -> Result<Element> {
        let mut root = Element::new("domainbackup")
            .with_child(Element::new("uuid").with_text(self.uuid.to_string()))
            .with_child(Element::new("creationTime").with_text(self.creation_time.to_string()));
        if let Some(d) = &self.description {
            root.push(Element::new("description").with_text(d.clone()));
        }
        root.push(Element::new("state").with_text(self.state.as_str()));
        root.children.extend(parent_and_domain(
            self.parent,
            self.domain_uuid,
            &self.domain_name,
        ));
        if let Some(cp) = &self.checkpoint {
            root.push(Element::new("checkpoint").with_attr("name", cp.clone()));
        }
        let mut disks = Element::new("disks");
        for d in &self.disks {
            disks.push(d.public_element()?);
        }
        root.push(disks);
        Ok(root)
    }

    /// The catalog file: the public document plus what the library needs later.
    pub fn to_catalog_xml(&self) -> Result<String> {
        let mut root = self.public_element()?;
        root.push(Element::new("connection").with_attr("uri", self.uri.clone()));
        root.push(Element::new("created").with_attr("ns", self.created_ns.to_string()));
        let mut info = Element::new("diskinfo");
        for d in &self.disks {
            info.push(d.info_element()?);
        }
        root.push(info);
        root.push(created_dirs_element(&self.created_dirs)?);
        root.push(self.stats.element());
        root.push(Element::new("domainxml").with_text(self.domain_xml.clone()));
        root.to_xml()
    }

    /// Read a catalog file. Required: `<uuid>`, `<creationTime>`,
    /// `<state>`, `<domain uuid>`, and each disk's name and source and
    /// target files. Defaults of what may be missing: no `<description>`,
    /// no `<parent>`, no `<checkpoint>`, no disks without `<disks>`, the
    /// connection URI "" (libvirt's default connection) without
    /// `<connection uri>`, the domain definition "" without `<domainxml>`,
    /// and the defaults of `parse_created`, `parse_record_domain`,
    /// `DiskRecord::parse`, `DiskInfo::parse`, `JobStats::parse`.
    pub fn from_catalog_xml(xml: &str) -> Result<Self> {
        let root = dom::parse(xml)?;
        // The catalog is the library's own file and may come from a newer
        // version: bounded like libvirt's documents (it embeds one), not
        // held to the input vocabulary.
        expect_root(&root, "domainbackup")?;
        let uuid = record_uuid(required_text(&root, "uuid")?, "<uuid>")?;
        let creation_time = parse_creation_time(&root)?;
        let state = parse_state(&root)?;
        let (domain_uuid, domain_name) = parse_record_domain(&root)?;
        let disks = parse_record_disks(&root)?;
        Ok(BackupRecord {
            uuid,
            creation_time,
            created_ns: parse_created(&root, creation_time)?,
            description: root.child("description").map(|d| d.text.clone()),
            state,
            parent: parse_record_parent(&root)?,
            domain_uuid,
            domain_name,
            disks,
            uri: root
                .child("connection")
                .and_then(|c| c.attr("uri"))
                .unwrap_or_default()
                .to_string(),
            domain_xml: root
                .child("domainxml")
                .map(|d| d.text.clone())
                .unwrap_or_default(),
            stats: JobStats::parse(root.child("stats"))?,
            checkpoint: parse_checkpoint(&root)?,
            created_dirs: parse_created_dirs(&root)?,
        })
    }
}

/// The error for value `value` of attribute `attr` of the element `at`
/// names, which is not `expected`.
fn bad_attr(at: &str, attr: &str, value: &str, expected: &str) -> Error {
    Error::xml(format!(
        "{at}: {attr}='{}' is not {expected}",
        value.escape_debug()
    ))
}

/// The error for the text `value` of element `at`, which is not `expected`.
fn bad_text(at: &str, value: &str, expected: &str) -> Error {
    Error::xml(format!("{at} '{}' is not {expected}", value.escape_debug()))
}

const U64_VALUES: &str = "a decimal number from 0 to 18446744073709551615";
const FORMATS: &str = "raw or qcow2";

/// Attribute `attr` of `el` (named `at` in errors) as a number: `None` if
/// it is missing, an error if it is anything but decimal digits of a u64.
fn u64_attr(el: &Element, attr: &str, at: &str) -> Result<Option<u64>> {
    let Some(v) = el.attr(attr) else {
        return Ok(None);
    };
    match v.parse() {
        Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
        _ => Err(bad_attr(at, attr, v, U64_VALUES)),
    }
}

/// Attribute `attr` of `el` (named `at` in errors) as a disk format:
/// `None` if it is missing, an error if it is not raw or qcow2.
fn format_attr(el: &Element, attr: &str, at: &str) -> Result<Option<DiskFormat>> {
    el.attr(attr)
        .map(|v| DiskFormat::parse(v).map_err(|_| bad_attr(at, attr, v, FORMATS)))
        .transpose()
}

/// A UUID in the record, the text or attribute `at` names.
fn record_uuid(s: &str, at: &str) -> Result<Uuid> {
    Uuid::parse_str(s.trim()).map_err(|_| bad_text(at, s.trim(), "a UUID"))
}

/// The trimmed text of `root`'s child `name`, which a record must have.
fn required_text<'a>(root: &'a Element, name: &str) -> Result<&'a str> {
    root.child_text(name)
        .ok_or_else(|| Error::xml(format!("catalog record lacks <{name}>")))
}

/// `<creationTime>`: seconds since 1970, required.
fn parse_creation_time(root: &Element) -> Result<i64> {
    let t = required_text(root, "creationTime")?;
    t.parse().map_err(|_| {
        bad_text(
            "<creationTime>",
            t,
            "a number of seconds (a signed 64-bit integer)",
        )
    })
}

/// `<state>`, required.
fn parse_state(root: &Element) -> Result<BackupState> {
    let s = required_text(root, "state")?;
    BackupState::parse(s)
        .map_err(|_| bad_text("<state>", s, "running, completed, failed or cancelled"))
}

/// `<created ns/>`: the creation time in nanoseconds. Missing (the element
/// or `ns`): `creation_time` in nanoseconds (0 for a time before 1970).
fn parse_created(root: &Element, creation_time: i64) -> Result<u64> {
    let ns = match root.child("created") {
        Some(c) => u64_attr(c, "ns", "<created>")?,
        None => None,
    };
    Ok(ns.unwrap_or_else(|| {
        u64::try_from(creation_time)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
    }))
}

/// `<domain uuid name/>` of a record (written by [`parent_and_domain`]):
/// the uuid is required; a missing name reads as "".
fn parse_record_domain(root: &Element) -> Result<(Uuid, String)> {
    let dom_el = root
        .child("domain")
        .ok_or_else(|| Error::xml("catalog record lacks <domain>"))?;
    let uuid = dom_el
        .attr("uuid")
        .ok_or_else(|| Error::xml("<domain> of the record lacks its uuid attribute"))?;
    let uuid =
        Uuid::parse_str(uuid.trim()).map_err(|_| bad_attr("<domain>", "uuid", uuid, "a UUID"))?;
    Ok((uuid, dom_el.attr("name").unwrap_or_default().to_string()))
}

/// `<parent><uuid/></parent>`: missing, a full backup; there, it needs its uuid.
fn parse_record_parent(root: &Element) -> Result<Option<Uuid>> {
    let Some(p) = root.child("parent") else {
        return Ok(None);
    };
    let u = p
        .child_text("uuid")
        .ok_or_else(|| Error::xml("<parent> lacks its <uuid>"))?;
    record_uuid(u, "<parent> <uuid>").map(Some)
}

/// `<checkpoint name/>`: missing, the backup has no checkpoint; there,
/// it needs its name.
fn parse_checkpoint(root: &Element) -> Result<Option<String>> {
    root.child("checkpoint")
        .map(|c| {
            c.attr("name")
                .map(str::to_string)
                .ok_or_else(|| Error::xml("<checkpoint> lacks its name attribute"))
        })
        .transpose()
}

/// `<createddirs><dir path/>...</createddirs>`.
fn created_dirs_element(dirs: &[PathBuf]) -> Result<Element> {
    let mut el = Element::new("createddirs");
    for d in dirs {
        el.push(Element::new("dir").with_attr("path", path_str(d)?));
    }
    Ok(el)
}

/// Missing `<createddirs>`: none. Each `<dir>` needs its path.
fn parse_created_dirs(root: &Element) -> Result<Vec<PathBuf>> {
    root.child("createddirs")
        .into_iter()
        .flat_map(|d| d.children_named("dir"))
        .map(|d| {
            d.attr("path")
                .map(PathBuf::from)
                .ok_or_else(|| Error::xml("<dir> of <createddirs> lacks its path attribute"))
        })
        .collect()
}

impl JobStats {
    /// `<stats total processed written elapsed/>`.
    fn element(&self) -> Element {
        Element::new("stats")
            .with_attr("total", self.total.to_string())
            .with_attr("processed", self.processed.to_string())
            .with_attr("written", self.written.to_string())
            .with_attr("elapsed", self.elapsed_ms.to_string())
    }

    /// Each number missing (or the element): 0.
    fn parse(el: Option<&Element>) -> Result<JobStats> {
        let Some(el) = el else {
            return Ok(JobStats::default());
        };
        let num = |a: &str| -> Result<u64> { Ok(u64_attr(el, a, "<stats>")?.unwrap_or(0)) };
        Ok(JobStats {
            total: num("total")?,
            processed: num("processed")?,
            written: num("written")?,
            elapsed_ms: num("elapsed")?,
        })
    }
}

/// What `<diskinfo>` keeps of a disk, beyond its public `<disk>`.
struct DiskInfo {
    source_format: DiskFormat,
    virtual_size: u64,
    backing: Vec<(PathBuf, DiskFormat)>,
}

impl DiskRecord {
    /// `<disk>` of `<disks>`: the public description of the disk.
    fn public_element(&self) -> Result<Element> {
        let mut target = Element::new("target");
        if let Some((pool, volume)) = &self.volume {
            target = target
                .with_attr("pool", pool.clone())
                .with_attr("volume", volume.clone());
        }
        let kind = if self.volume.is_some() {
            "volume"
        } else {
            "file"
        };
        Ok(Element::new("disk")
            .with_attr("name", self.name.clone())
            .with_attr("type", kind)
            .with_attr("backupmode", self.mode.as_str())
            .with_child(Element::new("source").with_attr("file", path_str(&self.source)?))
            .with_child(target.with_attr("file", path_str(&self.target)?))
            .with_child(Element::new("driver").with_attr("type", self.format.as_str())))
    }

    /// Read `<disk>` of `<disks>` (named `name`), with what `<diskinfo>`
    /// keeps of it. `<source file>` and `<target file>` are required.
    /// Defaults: `backupmode` full; `<driver type>` (the target's format)
    /// qcow2; `type` and `<target pool volume>`: see `parse_record_volume`.
    fn parse(d: &Element, name: String, info: DiskInfo) -> Result<DiskRecord> {
        let mode = match d.attr("backupmode") {
            None | Some("full") => BackupMode::Full,
            Some("incremental") => BackupMode::Incremental,
            Some(o) => {
                let at = format!("<disk> '{name}'");
                return Err(bad_attr(&at, "backupmode", o, "full or incremental"));
            }
        };
        let format = match d.child("driver") {
            Some(drv) => format_attr(drv, "type", &format!("<driver> of disk '{name}'"))?,
            None => None,
        };
        Ok(DiskRecord {
            source: record_file(d, "source", &name)?,
            target: record_file(d, "target", &name)?,
            format: format.unwrap_or(DiskFormat::Qcow2),
            source_format: info.source_format,
            virtual_size: info.virtual_size,
            mode,
            volume: parse_record_volume(d, &name)?,
            backing: info.backing,
            name,
        })
    }

    /// `<disk>` of `<diskinfo>`: what the library needs later.
    fn info_element(&self) -> Result<Element> {
        let mut info = Element::new("disk")
            .with_attr("name", self.name.clone())
            .with_attr("sourceformat", self.source_format.as_str())
            .with_attr("size", self.virtual_size.to_string());
        for (path, format) in &self.backing {
            info.push(backing_store_element(path, *format)?);
        }
        Ok(info)
    }
}

/// The `file` of the `<source>` or `<target>` (`child`) of disk `name`.
fn record_file(d: &Element, child: &str, name: &str) -> Result<PathBuf> {
    d.child(child)
        .and_then(|c| c.attr("file"))
        .map(PathBuf::from)
        .ok_or_else(|| Error::xml(format!("disk '{name}' lacks <{child} file>")))
}

/// The storage volume a recorded disk's target is: type='volume' needs
/// `<target pool volume>`, type='file' has neither. Without `type` (never
/// written so): a volume if the target names both.
fn parse_record_volume(d: &Element, name: &str) -> Result<Option<(String, String)>> {
    let t = d.child("target");
    let pool = t.and_then(|t| t.attr("pool"));
    let volume = t.and_then(|t| t.attr("volume"));
    let both = pool
        .zip(volume)
        .map(|(p, v)| (p.to_string(), v.to_string()));
    match d.attr("type") {
        None => Ok(both),
        Some("volume") => both.map(Some).ok_or_else(|| {
            Error::xml(format!(
                "disk '{name}' of type='volume' lacks the pool or volume of its <target>"
            ))
        }),
        Some("file") if pool.is_some() || volume.is_some() => Err(Error::xml(format!(
            "disk '{name}' of type='file' has a pool or volume in its <target>"
        ))),
        Some("file") => Ok(None),
        Some(o) => Err(bad_attr(
            &format!("<disk> '{name}'"),
            "type",
            o,
            "file or volume",
        )),
    }
}

impl DiskInfo {
    /// Read `<disk>` of `<diskinfo>` for disk `name`. Defaults (attribute
    /// missing): `sourceformat` (the format of the disk backed up) raw,
    /// `size` (its virtual size in bytes) 0, no `<backingStore>`: a full
    /// copy, or a record from before chains were recorded.
    fn parse(x: &Element, name: &str) -> Result<DiskInfo> {
        let at = format!("<diskinfo> of disk '{name}'");
        Ok(DiskInfo {
            source_format: format_attr(x, "sourceformat", &at)?.unwrap_or(DiskFormat::Raw),
            virtual_size: u64_attr(x, "size", &at)?.unwrap_or(0),
            backing: x
                .children_named("backingStore")
                .map(|b| parse_backing_store(b, name))
                .collect::<Result<Vec<_>>>()?,
        })
    }
}

/// A disk without `<diskinfo>`: the defaults of `DiskInfo::parse`.
impl Default for DiskInfo {
    fn default() -> Self {
        DiskInfo {
            source_format: DiskFormat::Raw,
            virtual_size: 0,
            backing: Vec::new(),
        }
    }
}

/// `<backingStore file format/>`: one image of a disk's backing chain.
fn backing_store_element(path: &Path, format: DiskFormat) -> Result<Element> {
    Ok(Element::new("backingStore")
        .with_attr("file", path_str(path)?)
        .with_attr("format", format.as_str()))
}

/// Both `file` and `format` are required: a format is never guessed.
fn parse_backing_store(b: &Element, name: &str) -> Result<(PathBuf, DiskFormat)> {
    let at = format!("<backingStore> of disk '{name}'");
    let file = b
        .attr("file")
        .ok_or_else(|| Error::xml(format!("{at} lacks its file attribute")))?;
    let format = format_attr(b, "format", &at)?
        .ok_or_else(|| Error::xml(format!("{at} lacks its format attribute")))?;
    Ok((PathBuf::from(file), format))
}

/// `<diskinfo>`'s disks by name: each named, once.
fn parse_diskinfo(root: &Element) -> Result<HashMap<&str, DiskInfo>> {
    let mut out = HashMap::new();
    for x in root
        .child("diskinfo")
        .into_iter()
        .flat_map(|i| i.children_named("disk"))
    {
        let name = x
            .attr("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::xml("a <disk> of <diskinfo> lacks its name attribute"))?;
        if out.insert(name, DiskInfo::parse(x, name)?).is_some() {
            return Err(Error::xml(format!(
                "<diskinfo> describes disk '{name}' twice"
            )));
        }
    }
    Ok(out)
}

/// The disks of `<disks>`, each listed once, with what `<diskinfo>` keeps
/// of each; `<diskinfo>` describes no other disk.
fn parse_record_disks(root: &Element) -> Result<Vec<DiskRecord>> {
    let mut info = parse_diskinfo(root)?;
    let mut names = HashSet::new();
    let mut disks = Vec::new();
    for d in root
        .child("disks")
        .into_iter()
        .flat_map(|d| d.children_named("disk"))
    {
        let name = disk_name(d)?;
        if !names.insert(name.clone()) {
            return Err(Error::xml(format!("<disks> lists disk '{name}' twice")));
        }
        let extra = info.remove(name.as_str()).unwrap_or_default();
        disks.push(DiskRecord::parse(d, name, extra)?);
    }
    if let Some(name) = info.keys().min() {
        return Err(Error::xml(format!(
            "<diskinfo> describes disk '{name}', which <disks> does not list"
        )));
    }
    Ok(disks)
}

/// `<parent><uuid/></parent>` (if any) and `<domain uuid name/>` of a
/// backup's description.
pub fn parent_and_domain(parent: Option<Uuid>, domain: Uuid, name: &str) -> Vec<Element> {
    let parent = parent
        .map(|p| Element::new("parent").with_child(Element::new("uuid").with_text(p.to_string())));
    let domain = Element::new("domain")
        .with_attr("uuid", domain.to_string())
        .with_attr("name", name);
    parent.into_iter().chain([domain]).collect()
}

/// A path as the string XML carries: exactly the path, never another one.
/// The library's paths come from XML (callers' documents, libvirt's), so
/// they are UTF-8; one that is not is a broken invariant, refused with an
/// internal error naming it (its bytes escaped) rather than written lossily
/// (a lossy conversion makes it another path, its bad bytes U+FFFD).
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| {
        Error::internal(format!(
            "path '{}' is not valid UTF-8 and cannot be written into XML",
            p.as_os_str().as_encoded_bytes().escape_ascii()
        ))
    })
}

/// `virDomainSetDefaultTarget` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultTarget {
    Dir(PathBuf),
    Pool(String),
}

impl DefaultTarget {
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
                "unknown default target type '{o}' (dir or pool)"
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
    pub uuid: Uuid,
    pub domain_name: Option<String>,
    pub disks: Option<Vec<RestoreDisk>>,
    /// `<target dir='…'/>` under the root: the folder of every disk without
    /// its own `<target file>` (`<dir>/<disk>.<format>`).
    pub target_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreDisk {
    pub name: String,
    pub target: Option<PathBuf>,
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
    Tcp { host: String, port: u16 },
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
    Nbd { name: String, server: NbdServer },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmanagedRestoreDisk {
    pub disk: RestoreDisk,
    pub source: UnmanagedSource,
}

/// `virDomainBackupRestoreUnmanaged` input: the restore document with a
/// `<source>` in every disk instead of a backup `<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmanagedRestoreRequest {
    pub domain_name: Option<String>,
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
    pub parent: Option<Uuid>,
    pub server: NbdServer,
    /// `<server tls='yes'>`.
    pub tls: bool,
    /// (disk, export name); `None`: every disk with device='disk', exported
    /// under its own name.
    pub disks: Option<Vec<(String, String)>>,
}

impl UnmanagedRequest {
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

/// A one-disk record for unit tests of the catalog and of recovery.
#[cfg(test)]
impl BackupRecord {
    pub fn sample(domain: Uuid, target: std::path::PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord {
            uuid: Uuid::new_v4(),
            creation_time: 1,
            created_ns: 1,
            description: None,
            state,
            parent: None,
            domain_uuid: domain,
            domain_name: "d".into(),
            disks: vec![DiskRecord {
                name: "vda".into(),
                source: "/src".into(),
                source_format: DiskFormat::Raw,
                target,
                format: DiskFormat::Qcow2,
                mode: BackupMode::Full,
                virtual_size: 1,
                volume: None,
                backing: vec![],
            }],
            uri: "test:///default".into(),
            domain_xml: String::new(),
            stats: JobStats::default(),
            created_dirs: vec![],
            checkpoint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = "<domainbackup>
      <uuid>54c70d40-26bb-48cd-9639-b3a1e9adf650</uuid>
      <description>Any &amp; string</description>
      <parent><uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid></parent>
      <disks>
        <disk name='vda' backup='yes' type='file'>
          <target file='/backups/vm1-vda.qcow2'/>
          <driver type='qcow2'/>
        </disk>
        <disk name='vdb' type='volume'><target pool='default' volume='v.qcow2'/></disk>
        <disk name='vdc' backup='no'/>
      </disks>
    </domainbackup>";

    #[test]
    fn parses_the_api_example() {
        let r = CreateRequest::parse(INPUT).unwrap();
        assert_eq!(
            r.uuid.unwrap().to_string(),
            "54c70d40-26bb-48cd-9639-b3a1e9adf650"
        );
        assert_eq!(r.description.as_deref(), Some("Any & string"));
        assert!(r.parent.is_some());
        let disks = r.disks.unwrap();
        assert_eq!(disks.len(), 3);
        assert_eq!(
            disks[0].target,
            Some(Target::File("/backups/vm1-vda.qcow2".into()))
        );
        assert_eq!(disks[0].format, Some(DiskFormat::Qcow2));
        assert!(matches!(disks[1].target, Some(Target::Volume { .. })));
        assert!(!disks[2].backup);
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            "<domainbackup><uuid>nope</uuid></domainbackup>",
            "<backup/>",
            "<domainbackup><disks><disk/></disks></domainbackup>",
            "<domainbackup><disks><disk name='a'/><disk name='a'/></disks></domainbackup>",
            "<domainbackup><disks><disk name='a'><target file='rel'/></disk></disks></domainbackup>",
            "<domainbackup><disks><disk name='a'><driver type='vmdk'/></disk></disks></domainbackup>",
            "<domainbackup><disks><disk name='a' backup='maybe'/></disks></domainbackup>",
            "<domainbackup><parent/></domainbackup>",
        ] {
            let e = CreateRequest::parse(bad).unwrap_err();
            assert!(e.is(crate::error::ErrorCode::XmlError), "{bad}");
        }
    }

    #[test]
    fn catalog_record_round_trips_and_public_form_parses_as_input() {
        let rec = BackupRecord {
            uuid: Uuid::new_v4(),
            creation_time: 1270477159,
            created_ns: 1_270_477_159_000_000_123,
            description: Some("d <x>".into()),
            state: BackupState::Completed,
            parent: None,
            domain_uuid: Uuid::new_v4(),
            domain_name: "vm1".into(),
            disks: vec![DiskRecord {
                name: "vda".into(),
                source: "/img/a.raw".into(),
                source_format: DiskFormat::Raw,
                target: "/b/vda.qcow2".into(),
                format: DiskFormat::Qcow2,
                mode: BackupMode::Full,
                virtual_size: 1 << 30,
                volume: None,
                backing: vec![],
            }],
            uri: "test:///default".into(),
            domain_xml: "<domain><name>vm1</name></domain>".into(),
            stats: JobStats {
                total: 1,
                processed: 1,
                written: 1,
                elapsed_ms: 5,
            },
            created_dirs: vec!["/b".into()],
            checkpoint: None,
        };
        let back = BackupRecord::from_catalog_xml(&rec.to_catalog_xml().unwrap()).unwrap();
        assert_eq!(back, rec);
        let input = CreateRequest::parse(&rec.public_element().unwrap().to_xml().unwrap()).unwrap();
        assert_eq!(input.uuid, Some(rec.uuid));
        assert_eq!(
            input.disks.unwrap()[0].target,
            Some(Target::File("/b/vda.qcow2".into()))
        );
    }

    /// Absolute paths with every character an XML reader would otherwise
    /// change or misread.
    const ODD_PATHS: &[&str] = &[
        "/b/\u{fc}ber dir/vda.qcow2",
        "/b/q\"uote'apos",
        "/b/back\\slash",
        "/b/amp&amp;<lt>&gt;",
        "/b/tab\there",
        "/b/new\nline",
        "/b/cr\rhere",
        "/b/crlf\r\nhere",
        "/b/trailing \n",
        "/b/all \u{fc}\"'\\&<>\t\n\r end",
    ];

    /// `s` as an attribute value, written independently of the library's
    /// writer: every markup or white space character as a character reference.
    fn attr(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '&' | '<' | '>' | '\'' | '"' | '\t' | '\n' | '\r' => format!("&#{};", c as u32),
                c => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn odd_paths_round_trip_through_catalog_record_and_description() {
        for &p in ODD_PATHS {
            let mut rec = BackupRecord::sample(Uuid::new_v4(), p.into(), BackupState::Completed);
            rec.description = Some(format!("about {p}"));
            rec.disks[0].source = format!("{p}.src").into();
            rec.disks[0].backing = vec![(format!("{p}.parent").into(), DiskFormat::Qcow2)];
            rec.created_dirs = vec![p.into(), "/b".into()];
            rec.domain_xml = format!(
                "<domain><devices><disk><source file='{}'/></disk></devices></domain>\r\n",
                attr(p)
            );
            let back = BackupRecord::from_catalog_xml(&rec.to_catalog_xml().unwrap()).unwrap();
            assert_eq!(back, rec, "{p:?}");
            // GetXMLDesc's document parses back as input with the same target.
            let desc = rec.public_element().unwrap().to_xml().unwrap();
            let input = CreateRequest::parse(&desc).unwrap();
            assert_eq!(
                input.disks.unwrap()[0].target,
                Some(Target::File(p.into())),
                "{desc}"
            );
            // And as a restore document.
            let restore = RestoreRequest::parse(&desc).unwrap();
            assert_eq!(restore.disks.unwrap()[0].target, Some(PathBuf::from(p)));
            // An export socket.
            let srv = NbdServer::Unix(p.into());
            let el = dom::parse(&srv.element("server").unwrap().to_xml().unwrap()).unwrap();
            assert_eq!(NbdServer::parse(&el, "server").unwrap(), srv);
        }
    }

    #[test]
    fn odd_paths_in_caller_documents_are_read_exactly() {
        for &p in ODD_PATHS {
            let xml = format!(
                "<domainbackup><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
                attr(p)
            );
            let r = CreateRequest::parse(&xml).unwrap();
            assert_eq!(r.disks.unwrap()[0].target, Some(Target::File(p.into())));
            let u = "54c70d40-26bb-48cd-9639-b3a1e9adf650";
            let xml = format!(
                "<domainbackup><uuid>{u}</uuid><target dir='{}'/></domainbackup>",
                attr(p)
            );
            let r = RestoreRequest::parse(&xml).unwrap();
            assert_eq!(r.target_dir, Some(PathBuf::from(p)));
        }
    }

    #[test]
    fn default_target_paths_read_back_exactly_or_are_refused() {
        for &p in ODD_PATHS {
            let d = DefaultTarget::Dir(p.into());
            if p.trim() != p {
                // <path> is read trimmed: such a path would come back as
                // another one, so it is refused (parse never makes one).
                let e = d.to_xml().unwrap_err();
                assert!(e.is(crate::error::ErrorCode::InvalidArg), "{e:?}");
                assert!(
                    e.message.contains(&p.escape_debug().to_string()),
                    "{}",
                    e.message
                );
                continue;
            }
            assert_eq!(
                DefaultTarget::parse(&d.to_xml().unwrap()).unwrap(),
                d,
                "{p:?}"
            );
        }
        let d =
            DefaultTarget::parse("<target type='dir'><path>\n  /b/x y\n</path></target>").unwrap();
        assert_eq!(d, DefaultTarget::Dir("/b/x y".into()));
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused_not_rewritten() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/b/x\xff\xfe\ny.qcow2"));
        let e = path_str(p).unwrap_err();
        assert!(e.is(crate::error::ErrorCode::InternalError), "{e:?}");
        assert!(
            e.message.contains("'/b/x\\xff\\xfe\\ny.qcow2'"),
            "{}",
            e.message
        );
        assert_eq!(path_str(Path::new("/b/\u{fc}\n")).unwrap(), "/b/\u{fc}\n");
        // Nothing with such a path is written.
        let rec = BackupRecord::sample(Uuid::new_v4(), p.into(), BackupState::Completed);
        assert!(
            rec.to_catalog_xml()
                .unwrap_err()
                .is(crate::error::ErrorCode::InternalError)
        );
        assert!(rec.public_element().is_err());
        assert!(DefaultTarget::Dir(p.into()).to_xml().is_err());
        assert!(NbdServer::Unix(p.into()).element("server").is_err());
    }

    #[test]
    fn a_record_holding_a_character_xml_cannot_carry_is_refused() {
        let mut rec = BackupRecord::sample(Uuid::new_v4(), "/b/v".into(), BackupState::Completed);
        rec.uri = "test:///default?x=\u{1}".into();
        let e = rec.to_catalog_xml().unwrap_err();
        assert!(e.is(crate::error::ErrorCode::InvalidArg), "{e:?}");
        assert!(
            e.message.contains("attribute 'uri' of <connection>")
                && e.message.contains("test:///default?x=\\u{1}"),
            "{}",
            e.message
        );
        let mut rec =
            BackupRecord::sample(Uuid::new_v4(), "/b/v\u{0}".into(), BackupState::Completed);
        rec.description = None;
        let e = rec.to_catalog_xml().unwrap_err();
        assert!(
            e.message.contains("attribute 'file' of <target>"),
            "{}",
            e.message
        );
    }

    #[test]
    fn restore_target_dir_and_stored_export_uuid() {
        let u = "54c70d40-26bb-48cd-9639-b3a1e9adf650";
        let r = RestoreRequest::parse(&format!(
            "<domainbackup><uuid>{u}</uuid><target dir='/r'/></domainbackup>"
        ))
        .unwrap();
        assert_eq!(r.target_dir, Some(PathBuf::from("/r")));
        for bad in ["<target dir='rel'/>", "<target file='/x'/>"] {
            let xml = format!("<domainbackup><uuid>{u}</uuid>{bad}</domainbackup>");
            assert!(RestoreRequest::parse(&xml).is_err(), "{bad}");
        }
        let srv = "<server transport='unix' socket='/s'/>";
        let e = UnmanagedRequest::parse(&format!(
            "<domainbackup><uuid>{u}</uuid>{srv}</domainbackup>"
        ))
        .unwrap();
        assert_eq!(e.backup, Some(Uuid::parse_str(u).unwrap()));
        let e = UnmanagedRequest::parse(&format!("<domainbackup>{srv}</domainbackup>")).unwrap();
        assert_eq!(e.backup, None);
    }

    #[test]
    fn default_target_forms() {
        let d = DefaultTarget::parse("<target type='dir'><path>/backups</path></target>").unwrap();
        assert_eq!(d, DefaultTarget::Dir("/backups".into()));
        assert_eq!(DefaultTarget::parse(&d.to_xml().unwrap()).unwrap(), d);
        assert!(DefaultTarget::parse("<target type='nfs'/>").is_err());
        assert!(DefaultTarget::parse("<target type='dir'><path>rel</path></target>").is_err());
    }
}
