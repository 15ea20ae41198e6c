//! The public document of a backup: what `virDomainBackupGetXMLDesc`
//! returns, built from its record. It parses back as input (a create or
//! restore document), and the catalog record starts with it.

use uuid::Uuid;

use super::record::{BackupRecord, DiskRecord};
use super::vocabulary::path_str;
use crate::error::Result;
use crate::xml::dom::Element;

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
