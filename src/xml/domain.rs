//! What the library reads from a libvirt domain definition: its disks.

use std::path::PathBuf;

use super::backup::DiskFormat;
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
}
