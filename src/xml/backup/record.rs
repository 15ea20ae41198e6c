//! A managed backup as the catalog keeps it ([`BackupRecord`]: its disks,
//! state, mode and job numbers) and its catalog file: each element's
//! format and parse function side by side, read strictly, with the
//! defaults records of earlier versions mean.
//!
//! The record holds the public document (`description.rs`), which it
//! writes first, and what the library needs later.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::encryption::{Encryption, parse_encryption};
use super::vocabulary::{Compression, DiskFormat, disk_name, parse_compression, path_str};
use crate::error::{Error, Result};
use crate::xml::dom::{self, Element};

/// Where a backup's job stands; the numbers are the C API's `virDomainBackupState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    /// The job is running.
    Running = 1,
    /// The job completed.
    Completed = 2,
    /// The job failed.
    Failed = 3,
    /// The job was cancelled.
    Cancelled = 4,
}

impl BackupState {
    /// The state's name in the XML.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Running => "running",
            BackupState::Completed => "completed",
            BackupState::Failed => "failed",
            BackupState::Cancelled => "cancelled",
        }
    }

    /// Read a state from its name in the XML.
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

/// Whether a disk's copy is whole or only what changed since the parent backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupMode {
    /// The whole disk.
    Full,
    /// Only what changed since the parent backup.
    Incremental,
}

/// One disk as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    /// The disk's name in the domain (e.g. "vda").
    pub name: String,
    /// The image the disk was copied from.
    pub source: PathBuf,
    /// That image's format.
    pub source_format: DiskFormat,
    /// The backup's image of the disk.
    pub target: PathBuf,
    /// The target image's format.
    pub format: DiskFormat,
    /// Whether this disk's copy is full or incremental.
    pub mode: BackupMode,
    /// The disk's virtual size in bytes.
    pub virtual_size: u64,
    /// How the target stores its clusters (`<compression type>`).
    pub compression: Compression,
    /// The libvirt secret whose value encrypts the target (`<encryption>`:
    /// its id only, never its value).
    pub encryption: Option<Encryption>,
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
    /// Bytes the job had to copy.
    pub total: u64,
    /// Bytes it read so far.
    pub processed: u64,
    /// Bytes it wrote to the targets so far.
    pub written: u64,
    /// How long it ran (or has run), in milliseconds.
    pub elapsed_ms: u64,
}

/// A managed backup as the catalog stores it (one file per backup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// The backup's UUID.
    pub uuid: Uuid,
    /// Creation time in seconds since 1970.
    pub creation_time: i64,
    /// Creation time in nanoseconds: orders backups taken within a second.
    pub created_ns: u64,
    /// The caller's description, if any.
    pub description: Option<String>,
    /// Where the backup's job stands.
    pub state: BackupState,
    /// The backup this one is incremental to, if any.
    pub parent: Option<Uuid>,
    /// The UUID of the backup's domain.
    pub domain_uuid: Uuid,
    /// The domain's name at backup time.
    pub domain_name: String,
    /// The disks backed up.
    pub disks: Vec<DiskRecord>,
    /// Connection URI the backup was taken through, to find the domain again
    /// from a process that only has the backup's UUID.
    pub uri: String,
    /// The domain definition at backup time (for restore as a new domain).
    pub domain_xml: String,
    /// The job's final or current numbers.
    pub stats: JobStats,
    /// Files the backup created (targets and folders), removed if it is discarded.
    pub created_dirs: Vec<PathBuf>,
    /// The libvirt checkpoint created with a backup of a running domain:
    /// its bitmaps are what the next incremental backup copies.
    pub checkpoint: Option<String>,
}

impl BackupMode {
    /// The mode's name in the XML.
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

fn expect_root(el: &Element, name: &str) -> Result<()> {
    if el.name != name {
        return Err(Error::xml(format!(
            "expected root element <{name}>, found <{}>",
            el.name
        )));
    }
    Ok(())
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

/// `<domain uuid name/>` of a record (written by [`parent_and_domain`](super::parent_and_domain)):
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
            compression: parse_compression(d)?.unwrap_or_default(),
            encryption: parse_encryption(d)?,
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

/// A one-disk record for unit tests of the catalog and of recovery.
#[cfg(test)]
impl BackupRecord {
    /// A record of one disk, backed up to `target`, for `domain`, in `state`.
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
                compression: Default::default(),
                encryption: None,
            }],
            uri: "test:///default".into(),
            domain_xml: String::new(),
            stats: JobStats::default(),
            created_dirs: vec![],
            checkpoint: None,
        }
    }
}
