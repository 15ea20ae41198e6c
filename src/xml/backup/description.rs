//! The public document of a backup: what `virDomainBackupGetXMLDesc`
//! returns, built from its record. It parses back as input (a create or
//! restore document), and the catalog record starts with it.

use uuid::Uuid;

use super::record::{BackupRecord, DiskRecord};
use super::vocabulary::{compression_element, path_str};
use crate::error::Result;
use crate::xml::dom::{self, Element};

/// What libvirt shows of a domain only with `VIR_DOMAIN_XML_SECURE`: the
/// attribute `passwd` of `<graphics>` and the `<cookies>` of a network
/// disk's `<source>`.
fn redact(root: &mut Element) {
    let mut stack: Vec<&mut Element> = vec![root];
    while let Some(el) = stack.pop() {
        if el.name == "graphics" {
            el.attrs.retain(|(k, _)| k != "passwd");
        }
        el.children.retain(|c| c.name != "cookies");
        stack.extend(el.children.iter_mut());
    }
}

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

    /// `<definition>`: the domain's definition saved at backup time (a
    /// libvirt `<domain>` document, kept in its secure form), what a
    /// restore as a new domain defines; `None` when none was saved or it
    /// does not read as XML. Without `secure`, what libvirt shows only with
    /// `VIR_DOMAIN_XML_SECURE` is left out (`redact`).
    pub fn definition_element(&self, secure: bool) -> Option<Element> {
        if self.domain_xml.trim().is_empty() {
            return None;
        }
        let mut def = match dom::parse(&self.domain_xml) {
            Ok(d) => d,
            Err(e) => {
                ::log::warn!(
                    "backup {}: its saved domain definition is left out of its description: {}",
                    self.uuid,
                    e.message
                );
                return None;
            }
        };
        if !secure {
            redact(&mut def);
        }
        Some(Element::new("definition").with_child(def))
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
        let mut disk = Element::new("disk")
            .with_attr("name", self.name.clone())
            .with_attr("type", kind)
            .with_attr("backupmode", self.mode.as_str())
            .with_child(Element::new("source").with_attr("file", path_str(&self.source)?))
            .with_child(target.with_attr("file", path_str(&self.target)?))
            .with_child(Element::new("driver").with_attr("type", self.format.as_str()));
        if let Some(c) = compression_element(self.compression) {
            disk.push(c);
        }
        if let Some(e) = &self.encryption {
            disk.push(e.to_element());
        }
        Ok(disk)
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
