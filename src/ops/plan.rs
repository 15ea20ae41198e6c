//! The planner of `virDomainBackupCreateXML`: from the request and what is
//! known of the domain, which disks to back up, in which format, to which
//! target. Pure (no libvirt, no files), so every rule is unit-tested here;
//! `ops::create` then checks the plan against the world and runs it.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hv::storage_pool;
use crate::xml::backup::{Compression, DefaultTarget, DiskFormat, DiskRequest, Encryption, Target};
use crate::xml::domain::DomainDisk;

/// What the planner needs to know of the domain.
#[derive(Debug, Clone)]
pub(crate) struct DomainFacts {
    pub name: String,
    pub driver: String,
    pub active: bool,
    /// A running QEMU domain: libvirt's own backup job copies it.
    pub is_live: bool,
    /// Nothing writes to the images (an inactive domain, or a test-driver one).
    pub images_quiet: bool,
    pub disks: Vec<DomainDisk>,
}

/// Where one disk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TargetPlan {
    /// A file; `checked` is false when the request named it (its folder must
    /// then exist) and true when it is under a default target.
    File { path: PathBuf, checked: bool },
    /// A new volume of a storage pool.
    Volume { pool: String, volume: String },
}

/// One disk of the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskPlan {
    pub name: String,
    pub source: PathBuf,
    pub source_format: DiskFormat,
    pub format: DiskFormat,
    pub target: TargetPlan,
    /// How its target stores clusters: the disk's `<compression>`, else
    /// that of `<disks>`, else none.
    pub compression: Compression,
}

/// Refuse what the domain's state rules out.
pub(crate) fn check_domain(facts: &DomainFacts, quiesce: bool) -> Result<()> {
    if quiesce && !facts.active {
        return Err(Error::operation_invalid(
            "cannot quiesce the file systems of an inactive domain",
        ));
    }
    if quiesce && !facts.is_live {
        return Err(Error::not_supported_yet(format!(
            "quiescing the guest file systems of a '{}' domain",
            facts.driver
        )));
    }
    if !facts.is_live && !facts.images_quiet {
        return Err(Error::not_supported_yet(format!(
            "backup of a running domain of the '{}' driver",
            facts.driver
        )));
    }
    Ok(())
}

/// The disks of backup `backup`: every device='disk' disk unless the request
/// says `backup='no'`, as libvirt does for checkpoints. `data_dir` is the
/// backup's folder in the catalog, the target when no default is set.
pub(crate) fn plan_disks(
    facts: &DomainFacts,
    (requested, all): (&[DiskRequest], Option<Compression>),
    default_target: Option<&DefaultTarget>,
    data_dir: &Path,
    backup: &Uuid,
) -> Result<Vec<DiskPlan>> {
    if let Some(r) = requested
        .iter()
        .find(|r| !facts.disks.iter().any(|d| d.name == r.name))
    {
        return Err(Error::invalid_arg(format!(
            "domain has no disk named '{}'",
            r.name
        )));
    }
    let mut plans = Vec::new();
    for d in &facts.disks {
        let asked = requested.iter().find(|r| r.name == d.name);
        if !included(d, asked)? {
            continue;
        }
        let format = asked.and_then(|r| r.format).unwrap_or(DiskFormat::Qcow2);
        let compression = compression_of(&d.name, asked, all, format)?;
        let target = match asked.and_then(|r| r.target.clone()) {
            Some(Target::File(path)) => TargetPlan::File {
                path,
                checked: false,
            },
            Some(Target::Volume { pool, volume }) => TargetPlan::Volume { pool, volume },
            None => default_plan(facts, d, format, default_target, data_dir, backup),
        };
        plans.push(DiskPlan {
            name: d.name.clone(),
            source: d.source.clone().ok_or_else(|| {
                Error::invalid_arg(format!("disk '{}' has no source to back up", d.name))
            })?,
            source_format: d.image_format()?,
            format,
            target,
            compression,
        });
    }
    if plans.is_empty() {
        return Err(Error::invalid_arg("the backup would include no disk"));
    }
    Ok(plans)
}

/// The compression of disk `name`'s target: its own `<compression>`, else
/// `all` (that of `<disks>`); refused for a raw target, which has no
/// clusters to compress.
fn compression_of(
    name: &str,
    asked: Option<&DiskRequest>,
    all: Option<Compression>,
    format: DiskFormat,
) -> Result<Compression> {
    let c = asked
        .and_then(|r| r.compression)
        .or(all)
        .unwrap_or_default();
    if c != Compression::None && format == DiskFormat::Raw {
        return Err(Error::config_unsupported(format!(
            "disk '{name}': <compression type='{}'> needs a qcow2 target; a raw target cannot be compressed",
            c.as_str()
        )));
    }
    Ok(c)
}

/// The encryption of disk `name`'s target: its own `<encryption>`, else
/// `all` (that of `<disks>`), else `parent`'s (an incremental keeps its
/// parent's secret unless it names one); refused for a raw target, which
/// has no LUKS header.
pub(crate) fn encryption_of(
    name: &str,
    (own, all, parent): (
        Option<&Encryption>,
        Option<&Encryption>,
        Option<&Encryption>,
    ),
    format: DiskFormat,
) -> Result<Option<Encryption>> {
    let e = own.or(all).or(parent).cloned();
    if e.is_some() && format == DiskFormat::Raw {
        return Err(Error::config_unsupported(format!(
            "disk '{name}': <encryption> needs a qcow2 target; a raw target cannot be encrypted"
        )));
    }
    Ok(e)
}

/// Whether a domain disk is part of the backup; an error for a disk the
/// request asks for that cannot be backed up.
fn included(d: &DomainDisk, asked: Option<&DiskRequest>) -> Result<bool> {
    match asked {
        Some(r) if !r.backup => return Ok(false),
        None if d.device != "disk" => return Ok(false),
        Some(_) if d.device != "disk" => {
            return Err(Error::invalid_arg(format!(
                "disk '{}' is a {}; only device='disk' can be backed up",
                d.name, d.device
            )));
        }
        _ => {}
    }
    if d.kind != "file" && d.kind != "block" {
        return Err(Error::no_support(format!(
            "disk '{}' of type '{}' cannot be backed up (file and block disks can)",
            d.name, d.kind
        )));
    }
    Ok(true)
}

/// The target of a disk the request gives none: under the default target,
/// else in the catalog.
fn default_plan(
    facts: &DomainFacts,
    d: &DomainDisk,
    format: DiskFormat,
    default_target: Option<&DefaultTarget>,
    data_dir: &Path,
    backup: &Uuid,
) -> TargetPlan {
    let file_name = format!("{}.{}", d.name, format.as_str());
    let path = match default_target {
        Some(DefaultTarget::Dir(dir)) => dir.join(backup.to_string()).join(file_name),
        Some(DefaultTarget::Pool(pool)) => {
            return TargetPlan::Volume {
                pool: pool.clone(),
                volume: storage_pool::default_volume_name(&facts.name, backup, &d.name, format),
            };
        }
        None => data_dir.join(file_name),
    };
    TargetPlan::File {
        path,
        checked: true,
    }
}

/// Refuse a target given to two disks.
pub(crate) fn check_distinct<'a>(targets: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let mut seen: Vec<&Path> = Vec::new();
    for t in targets {
        if seen.contains(&t) {
            return Err(Error::invalid_arg(format!(
                "target '{}' is given to two disks",
                t.display()
            )));
        }
        seen.push(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn disk(name: &str, device: &str, kind: &str, format: Option<&str>) -> DomainDisk {
        DomainDisk {
            name: name.into(),
            device: device.into(),
            kind: kind.into(),
            source: Some(format!("/img/{name}").into()),
            format: format.map(Into::into),
        }
    }

    fn facts(disks: Vec<DomainDisk>) -> DomainFacts {
        DomainFacts {
            name: "vm".into(),
            driver: "QEMU".into(),
            active: false,
            is_live: false,
            images_quiet: true,
            disks,
        }
    }

    fn ask(name: &str) -> DiskRequest {
        DiskRequest {
            name: name.into(),
            backup: true,
            target: None,
            format: None,
            compression: None,
            encryption: None,
        }
    }

    const DATA: &str = "/cat/dom/backup";

    fn plan(
        f: &DomainFacts,
        req: &[DiskRequest],
        def: Option<&DefaultTarget>,
    ) -> Result<Vec<DiskPlan>> {
        plan_disks(f, (req, None), def, Path::new(DATA), &Uuid::nil())
    }

    /// A disk's own `<encryption>` over that of `<disks>`, over its
    /// parent's; a raw target with encryption refused.
    #[test]
    fn encryption_own_all_or_inherited() {
        use crate::xml::backup::{Encryption, SecretId};
        let e = |u: &str| Encryption {
            secret: SecretId::Usage(u.into()),
        };
        let (own, all, parent) = (e("own"), e("all"), e("parent"));
        let q = DiskFormat::Qcow2;
        let of = |o, a, p| encryption_of("vda", (o, a, p), q).unwrap();
        assert_eq!(of(Some(&own), Some(&all), Some(&parent)), Some(own.clone()));
        assert_eq!(of(None, Some(&all), Some(&parent)), Some(all.clone()));
        assert_eq!(of(None, None, Some(&parent)), Some(parent.clone()));
        assert_eq!(of(None, None, None), None);
        let raw = encryption_of("vda", (None, Some(&all), None), DiskFormat::Raw).unwrap_err();
        assert!(
            raw.is(crate::error::ErrorCode::ConfigUnsupported),
            "{}",
            raw.message
        );
        assert!(encryption_of("vda", (None, None, None), DiskFormat::Raw).is_ok());
    }

    /// A disk's own `<compression>` over that of `<disks>`; a raw target
    /// with compression refused.
    #[test]
    fn compression_per_disk_or_for_all() {
        let f = facts(vec![
            disk("vda", "disk", "file", Some("qcow2")),
            disk("vdb", "disk", "file", Some("qcow2")),
        ]);
        let mut a = ask("vda");
        a.compression = Some(Compression::Zlib);
        let all = Some(Compression::Zstd);
        let p = plan_disks(&f, (&[a.clone()], all), None, Path::new(DATA), &Uuid::nil()).unwrap();
        assert_eq!(p[0].compression, Compression::Zlib);
        assert_eq!(p[1].compression, Compression::Zstd);
        let p = plan(&f, &[], None).unwrap();
        assert_eq!(p[0].compression, Compression::None);
        a.format = Some(DiskFormat::Raw);
        let e = plan_disks(&f, (&[a], None), None, Path::new(DATA), &Uuid::nil()).unwrap_err();
        assert!(e.message.contains("raw target"), "{}", e.message);
    }

    #[test]
    fn every_disk_by_default_cdroms_and_backup_no_left_out() {
        let f = facts(vec![
            disk("vda", "disk", "file", Some("qcow2")),
            disk("vdb", "disk", "block", None),
            disk("hdc", "cdrom", "file", Some("raw")),
            disk("vdc", "disk", "file", None),
        ]);
        let mut no = ask("vdc");
        no.backup = false;
        let p = plan(&f, &[no], None).unwrap();
        let names: Vec<&str> = p.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vdb"]);
        assert_eq!(p[0].source_format, DiskFormat::Qcow2);
        assert_eq!(p[1].source_format, DiskFormat::Raw);
        assert_eq!(p[0].format, DiskFormat::Qcow2);
        assert_eq!(
            p[0].target,
            TargetPlan::File {
                path: format!("{DATA}/vda.qcow2").into(),
                checked: true
            }
        );
    }

    #[test]
    fn targets_from_request_default_folder_and_default_pool() {
        let f = facts(vec![
            disk("vda", "disk", "file", None),
            disk("vdb", "disk", "file", None),
        ]);
        let mut a = ask("vda");
        a.target = Some(Target::File("/x/a.raw".into()));
        a.format = Some(DiskFormat::Raw);
        let dir = DefaultTarget::Dir("/backups".into());
        let p = plan(&f, &[a.clone()], Some(&dir)).unwrap();
        assert_eq!(
            p[0].target,
            TargetPlan::File {
                path: "/x/a.raw".into(),
                checked: false
            }
        );
        assert_eq!(p[0].format, DiskFormat::Raw);
        let under = format!("/backups/{}/vdb.qcow2", Uuid::nil());
        assert_eq!(
            p[1].target,
            TargetPlan::File {
                path: under.into(),
                checked: true
            }
        );
        let pool = DefaultTarget::Pool("tank".into());
        let p = plan(&f, &[], Some(&pool)).unwrap();
        assert!(
            matches!(&p[1].target, TargetPlan::Volume { pool, volume } if pool == "tank" && volume.contains("vdb")),
            "{p:?}"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        let f = facts(vec![
            disk("vda", "disk", "file", None),
            disk("hdc", "cdrom", "file", None),
        ]);
        let code = |r: Result<Vec<DiskPlan>>| r.unwrap_err();
        assert!(code(plan(&f, &[ask("vdz")], None)).is(ErrorCode::InvalidArg));
        assert!(code(plan(&f, &[ask("hdc")], None)).is(ErrorCode::InvalidArg));
        let mut no = ask("vda");
        no.backup = false;
        assert!(code(plan(&f, &[no], None)).is(ErrorCode::InvalidArg));
        let net = facts(vec![disk("vda", "disk", "network", None)]);
        assert!(code(plan(&net, &[], None)).is(ErrorCode::NoSupport));
        let vmdk = facts(vec![disk("vda", "disk", "file", Some("vmdk"))]);
        assert!(code(plan(&vmdk, &[], None)).is(ErrorCode::NoSupport));
        let mut bare = disk("vda", "disk", "file", None);
        bare.source = None;
        assert!(code(plan(&facts(vec![bare]), &[], None)).is(ErrorCode::InvalidArg));
    }

    #[test]
    fn domain_state_and_duplicate_targets() {
        let mut f = facts(vec![]);
        check_domain(&f, false).unwrap();
        assert!(
            check_domain(&f, true)
                .unwrap_err()
                .is(ErrorCode::OperationInvalid)
        );
        f.active = true;
        f.images_quiet = false;
        assert!(check_domain(&f, false).is_err());
        f.is_live = true;
        check_domain(&f, true).unwrap();
        let (a, b) = (Path::new("/a"), Path::new("/b"));
        check_distinct([a, b]).unwrap();
        assert!(
            check_distinct([a, b, a])
                .unwrap_err()
                .is(ErrorCode::InvalidArg)
        );
    }
}
