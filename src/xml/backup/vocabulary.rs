//! The `<domainbackup>` vocabulary and what every document of it shares:
//! the schemas callers' documents are held to (and the most disks one may
//! list), the disk formats, UUIDs, disk names, and paths as the strings
//! XML carries.

use std::path::Path;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::xml::dom::{Element, Schema};

/// At most this many `<disk>` elements in one document.
pub(super) const MAX_DISKS: usize = 1024;

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
        &COMPRESSION,
        &ENCRYPTION,
    ],
)
.repeated();
/// `<compression type>` of a `<disk>` or of `<disks>` (every disk).
static COMPRESSION: Schema = Schema::element("compression", &["type"], &[]);
/// `<encryption>` as libvirt's (read, then refused: not supported yet).
static ENCRYPTION: Schema = Schema::element(
    "encryption",
    &["format"],
    &[&Schema::element("secret", &["type", "uuid", "usage"], &[])],
);
/// The schema of `<domainbackup>`, the root of the documents callers send.
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
        // CreateXML: the job's rate limit (and a running job's description).
        &Schema::element("bandwidth", &["bytes"], &[]),
        &Schema::element(
            "server",
            &["transport", "name", "port", "socket", "tls"],
            &[],
        ),
        &Schema::element("pinnedby", &["domain", "disk", "overlay"], &[]).repeated(),
        // Restore with FILES_ONLY: the folder of the disks without a file.
        &Schema::element("target", &["dir"], &[]),
        &Schema::element("disks", &[], &[&DISK, &COMPRESSION, &ENCRYPTION]),
        // GetXMLDesc: the domain's saved definition (ignored as input).
        &Schema::any("definition"),
    ],
);
/// virDomainSetDefaultTarget's document.
pub static DEFAULT_TARGET: Schema = Schema::element(
    "target",
    &["type"],
    &[&Schema::text("path"), &Schema::text("pool")],
);

/// An image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw bytes, as the guest sees them.
    Raw,
    /// qcow2.
    Qcow2,
}

impl DiskFormat {
    /// Read a format from its name ("raw" or "qcow2").
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(Error::xml(format!(
                "unsupported disk format '{other}' (raw or qcow2)"
            ))),
        }
    }

    /// The format's name in the XML.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// Read a UUID, surrounding whitespace allowed.
pub fn parse_uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s.trim()).map_err(|_| Error::xml(format!("malformed uuid '{}'", s.trim())))
}

pub(super) fn disk_name(d: &Element) -> Result<String> {
    match d.attr("name") {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(Error::xml("<disk> needs a non-empty name attribute")),
    }
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

/// How a backup's qcow2 image stores its clusters (`<compression type>`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain clusters (no `<compression>`, or `type='none'`).
    #[default]
    None,
    /// Compressed clusters, deflate (qcow2 compression type 0).
    Zlib,
    /// Compressed clusters, zstd (qcow2 compression type 1, QEMU 5.1+).
    Zstd,
}

impl Compression {
    /// Read a compression from its name (zstd, zlib or none).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "zlib" => Ok(Compression::Zlib),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::xml(format!(
                "<compression type='{}'>: unknown compression (zstd, zlib or none)",
                other.escape_debug()
            ))),
        }
    }

    /// The compression's name in the XML.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        }
    }
}

/// `<compression type='…'/>` of a disk; none for plain clusters (the
/// element left out, as records before it had none).
pub(super) fn compression_element(c: Compression) -> Option<Element> {
    (c != Compression::None).then(|| Element::new("compression").with_attr("type", c.as_str()))
}

/// The `<compression type>` child of `el` (a `<disk>` or `<disks>`), if any.
pub(super) fn parse_compression(el: &Element) -> Result<Option<Compression>> {
    match el.child("compression") {
        None => Ok(None),
        Some(c) => match c.attr("type") {
            Some(t) => Compression::parse(t).map(Some),
            None => Err(Error::xml(
                "<compression> needs a type (zstd, zlib or none)",
            )),
        },
    }
}
