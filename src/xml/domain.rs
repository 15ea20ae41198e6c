//! What the library reads from a libvirt domain definition: its disks.

use std::path::{Path, PathBuf};

use super::backup::{DiskFormat, path_str};
use super::dom;
use crate::error::{Error, Result};

/// A `<disk>` of a domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// `<target dev>`: the name backups use for the disk.
    pub name: String,
    /// `device` attribute: disk, cdrom, floppy, lun.
    pub device: String,
    /// `type` attribute: file, block, network, volume...
    pub kind: String,
    /// `<source file>` or `<source dev>`, when the disk has one.
    pub source: Option<PathBuf>,
    /// `<driver type>`; libvirt treats a missing one as raw.
    pub format: Option<String>,
}

impl DomainDisk {
    /// The image format, refusing formats the disk engine cannot read.
    pub fn image_format(&self) -> Result<DiskFormat> {
        match self.format.as_deref() {
            None | Some("raw") => Ok(DiskFormat::Raw),
            Some("qcow2") => Ok(DiskFormat::Qcow2),
            Some(o) => Err(Error::no_support(format!(
                "disk '{}' has format '{o}'; only raw and qcow2 disks can be backed up",
                self.name
            ))),
        }
    }
}

/// The disks of a domain definition that have a `<target dev>`.
pub fn parse_disks(xml: &str) -> Result<Vec<DomainDisk>> {
    let root = dom::parse(xml)?;
    if root.name != "domain" {
        return Err(Error::xml("domain definition has no <domain> root"));
    }
    let mut out = Vec::new();
    for d in root
        .child("devices")
        .into_iter()
        .flat_map(|d| d.children_named("disk"))
    {
        let Some(name) = d.child("target").and_then(|t| t.attr("dev")) else {
            continue;
        };
        let source = d
            .child("source")
            .and_then(|s| s.attr("file").or_else(|| s.attr("dev")));
        out.push(DomainDisk {
            name: name.to_string(),
            device: d.attr("device").unwrap_or("disk").to_string(),
            kind: d.attr("type").unwrap_or("file").to_string(),
            source: source.map(PathBuf::from),
            format: d
                .child("driver")
                .and_then(|drv| drv.attr("type"))
                .map(str::to_string),
        });
    }
    Ok(out)
}

/// A disk of a restored domain: where its data now lives.
pub struct RestoredDisk<'a> {
    /// The disk's name (its `<target dev>`).
    pub name: &'a str,
    /// Its new image file.
    pub path: &'a Path,
    /// That file's format.
    pub format: DiskFormat,
}

/// The definition a restore defines: `xml` with each restored disk pointing
/// at its new file (no backing chain: the file is complete). For a new
/// domain (`new_name`), the UUID and MAC addresses are dropped so libvirt
/// makes new ones, and disks that were not restored are left out, so the
/// copy never shares an image with the original.
pub fn restored_definition(
    xml: &str,
    new_name: Option<&str>,
    disks: &[RestoredDisk],
) -> Result<String> {
    let mut root = dom::parse(xml)?;
    if root.name != "domain" {
        return Err(Error::xml("domain definition has no <domain> root"));
    }
    if let Some(name) = new_name {
        root.children.retain(|c| c.name != "uuid");
        match root.children.iter_mut().find(|c| c.name == "name") {
            Some(n) => n.text = name.to_string(),
            None => root.push(dom::Element::new("name").with_text(name)),
        }
    }
    let Some(devices) = root.children.iter_mut().find(|c| c.name == "devices") else {
        return root.to_xml();
    };
    // By name, so that the work is linear in the number of devices.
    let by_name: std::collections::HashMap<&str, &RestoredDisk> =
        disks.iter().map(|r| (r.name, r)).collect();
    devices.children.retain(|d| {
        let restored = d
            .child("target")
            .and_then(|t| t.attr("dev"))
            .is_some_and(|dev| by_name.contains_key(dev));
        let is_disk = d.name == "disk" && d.attr("device").unwrap_or("disk") == "disk";
        new_name.is_none() || !is_disk || restored
    });
    for dev in devices.children.iter_mut() {
        if new_name.is_some() && dev.name == "interface" {
            dev.children.retain(|c| c.name != "mac");
        }
        let Some(r) = (dev.name == "disk")
            .then(|| dev.child("target").and_then(|t| t.attr("dev")))
            .flatten()
            .and_then(|n| by_name.get(n).copied())
        else {
            continue;
        };
        set_attr(dev, "type", "file");
        dev.children
            .retain(|c| c.name != "source" && c.name != "backingStore");
        dev.children.insert(
            0,
            dom::Element::new("source").with_attr("file", path_str(r.path)?),
        );
        match dev.children.iter_mut().find(|c| c.name == "driver") {
            Some(drv) => set_attr(drv, "type", r.format.as_str()),
            None => dev.children.insert(
                0,
                dom::Element::new("driver")
                    .with_attr("name", "qemu")
                    .with_attr("type", r.format.as_str()),
            ),
        }
    }
    root.to_xml()
}

fn set_attr(el: &mut dom::Element, name: &str, value: &str) {
    match el.attrs.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v = value.to_string(),
        None => el.attrs.push((name.to_string(), value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_disks() {
        let xml = "<domain type='test'><name>a</name><devices>
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
              <source file='/i/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
            <disk type='file' device='cdrom'><target dev='hdc'/></disk>
            <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdb'/></disk>
            </devices></domain>";
        let disks = parse_disks(xml).unwrap();
        assert_eq!(disks.len(), 3);
        assert_eq!(disks[0].image_format().unwrap(), DiskFormat::Qcow2);
        assert_eq!(disks[1].device, "cdrom");
        assert_eq!(disks[1].source, None);
        assert_eq!(disks[2].source, Some("/dev/sdz".into()));
        assert_eq!(disks[2].image_format().unwrap(), DiskFormat::Raw);
    }

    #[test]
    fn restored_definition_renames_and_repoints() {
        let xml = "<domain type='test'><name>a</name><uuid>0b6c1f7e-8a44-4a8b-9d53-3c2a1f7b9e10</uuid><devices>
            <disk type='block' device='disk'><source dev='/dev/x'/><backingStore/><target dev='vda'/></disk>
            <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/i/b.raw'/><target dev='vdb'/></disk>
            <disk type='file' device='cdrom'><target dev='hdc'/></disk>
            <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>
            </devices></domain>";
        let p = PathBuf::from("/r/a-vda.qcow2");
        let disks = [RestoredDisk {
            name: "vda",
            path: &p,
            format: DiskFormat::Qcow2,
        }];
        let out = restored_definition(xml, Some("b"), &disks).unwrap();
        let root = dom::parse(&out).unwrap();
        assert_eq!(root.child_text("name"), Some("b"));
        assert!(root.child("uuid").is_none());
        assert!(!out.contains("52:54:00"));
        let d = parse_disks(&out).unwrap();
        assert_eq!(d.len(), 2, "vdb was not restored, the cdrom stays");
        assert_eq!(d[0].source, Some(p.clone()));
        assert_eq!(d[0].kind, "file");
        assert_eq!(d[0].format.as_deref(), Some("qcow2"));
        assert!(!out.contains("backingStore"));
        // In place: nothing dropped, the uuid kept.
        let same = restored_definition(xml, None, &disks).unwrap();
        assert_eq!(parse_disks(&same).unwrap().len(), 3);
        assert!(same.contains("0b6c1f7e"));
    }

    /// The definition given to libvirt names the restored file exactly,
    /// whatever its path holds; a path that is not UTF-8 is refused.
    #[test]
    fn restored_definition_keeps_odd_paths_exactly() {
        let xml = "<domain type='test'><name>a</name><devices>
            <disk type='file' device='disk'><source file='/i/a.raw'/><target dev='vda'/></disk>
            </devices></domain>";
        for p in [
            "/r/\u{fc}ber \"q\" 'a' back\\slash.qcow2",
            "/r/tab\tnl\ncr\rcrlf\r\n&amp;<lt>.qcow2",
            "/r/trailing\n",
        ] {
            let path = PathBuf::from(p);
            let disks = [RestoredDisk {
                name: "vda",
                path: &path,
                format: DiskFormat::Qcow2,
            }];
            for name in [None, Some("b")] {
                let out = restored_definition(xml, name, &disks).unwrap();
                assert_eq!(
                    parse_disks(&out).unwrap()[0].source,
                    Some(path.clone()),
                    "{out}"
                );
            }
        }
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/r/\xff.qcow2"));
        let disks = [RestoredDisk {
            name: "vda",
            path,
            format: DiskFormat::Qcow2,
        }];
        let err = restored_definition(xml, None, &disks).unwrap_err();
        assert!(err.message.contains("'/r/\\xff.qcow2'"), "{}", err.message);
    }
}
