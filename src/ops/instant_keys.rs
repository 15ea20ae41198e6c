//! The keys of an instant restore of an encrypted backup. QEMU opens the
//! backup's images itself, so the domain the restore defines names every
//! encrypted level's libvirt secret, which libvirt reads and hands QEMU
//! (encrypted with its per-domain master key, never on a command line):
//! `<encryption format='luks'><secret type='passphrase' uuid=…/>` inside
//! the `<source>` of the disk and of each encrypted `<backingStore>`
//! level. The chain is given whole (libvirt would otherwise probe the
//! levels below the overlay from their headers, without their keys),
//! level by level as the library resolves it, its formats recorded. The
//! overlay is encrypted too, with the secret of the nearest encrypted
//! level, so that what the guest writes stays encrypted at rest like the
//! backup.
//!
//! Everything is read before anything is made: a missing secret is
//! VIR_ERR_NO_SECRET, a wrong one "wrong key" (each level is unlocked
//! while the chain is resolved), a secret libvirt would not give QEMU
//! VIR_ERR_CONFIG_UNSUPPORTED, with no overlay and no domain.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::Result;
use crate::image::chain;
use crate::image::keys::{self, Lent};
use crate::ops::recovery;
use crate::store::catalog::Catalog;
use crate::xml::backup::{BackupRecord, DiskFormat};
use crate::xml::dom::Element;

/// One disk's chain below its overlay, nearest first: each level's path,
/// format, and the uuid of the secret that opens it (none: in clear).
type Levels = Vec<(PathBuf, DiskFormat, Option<Uuid>)>;

/// The keys of an instant restore's encrypted disks, lent while it runs.
pub(crate) struct InstantKeys {
    _lent: Lent,
    /// By disk name, the disks whose chain has an encrypted level.
    disks: HashMap<String, Levels>,
}

impl InstantKeys {
    /// The keys of the disks `names` of `rec`, read from libvirt; `None`
    /// when no image of the backup's chain is encrypted (nothing asked).
    pub(crate) fn read(
        catalog: &Catalog,
        rec: &BackupRecord,
        names: &[&str],
    ) -> Result<Option<InstantKeys>> {
        let find = |u: &Uuid| recovery::find(catalog, u).ok().flatten();
        if !super::keys::encrypted_chain(rec, &find) {
            return Ok(None);
        }
        let (lent, uuids) = super::keys::lend_chain_for_qemu(rec, &find, true)?;
        let mut disks = HashMap::new();
        for &name in names {
            let Some(d) = rec.disks.iter().find(|d| d.name == name) else {
                continue;
            };
            let mut levels = vec![(d.target.clone(), d.format)];
            if d.format == DiskFormat::Qcow2 {
                // Opened as the library reads them: each encrypted level
                // unlocked with its key ("wrong key" before anything).
                let recorded = catalog.recorded_chain(rec, name)?;
                levels.extend(chain::resolved_below(&d.target, &recorded)?);
            }
            let levels: Levels = levels
                .into_iter()
                .map(|(p, f)| {
                    let u = uuids.get(&p).copied();
                    (p, f, u)
                })
                .collect();
            if levels.iter().any(|(_, _, u)| u.is_some()) {
                ::log::debug!(
                    "disk '{name}' of backup '{}': {} level(s), an encrypted overlay",
                    rec.uuid,
                    levels.len()
                );
                disks.insert(name.to_string(), levels);
            }
        }
        Ok(Some(InstantKeys { _lent: lent, disks }))
    }

    /// The passphrase the overlay of disk `name` is encrypted with (the
    /// nearest encrypted level's), if its chain has one.
    pub(crate) fn overlay_key(&self, name: &str) -> Option<std::sync::Arc<Vec<u8>>> {
        let levels = self.disks.get(name)?;
        let (path, _, _) = levels.iter().find(|(_, _, u)| u.is_some())?;
        keys::passphrase(path)
    }

    /// `domain` (a definition whose restored disks point at their
    /// overlays) with the secrets of each encrypted disk's overlay and
    /// levels, its chain given whole.
    pub(crate) fn definition(&self, domain: &str) -> Result<String> {
        let mut root = crate::xml::dom::parse(domain)?;
        let Some(devices) = root.children.iter_mut().find(|c| c.name == "devices") else {
            return root.to_xml();
        };
        for dev in devices.children.iter_mut().filter(|d| d.name == "disk") {
            let Some(levels) = dev
                .child("target")
                .and_then(|t| t.attr("dev"))
                .and_then(|n| self.disks.get(n))
            else {
                continue;
            };
            let overlay = levels.iter().find_map(|(_, _, u)| *u);
            let Some(at) = dev.children.iter().position(|c| c.name == "source") else {
                continue;
            };
            if let Some(u) = overlay {
                dev.children[at].push(encryption(&u));
            }
            dev.children.retain(|c| c.name != "backingStore");
            dev.children.insert(at + 1, backing_store(levels)?);
        }
        root.to_xml()
    }
}

/// `<encryption format='luks'>` naming secret `uuid`.
fn encryption(uuid: &Uuid) -> Element {
    Element::new("encryption")
        .with_attr("format", "luks")
        .with_child(
            Element::new("secret")
                .with_attr("type", "passphrase")
                .with_attr("uuid", uuid.to_string()),
        )
}

/// The `<backingStore>` of `levels`, nested, ending in an empty one (the
/// end of the chain: libvirt probes nothing further).
fn backing_store(levels: &[(PathBuf, DiskFormat, Option<Uuid>)]) -> Result<Element> {
    let mut below = Element::new("backingStore");
    for (path, format, secret) in levels.iter().rev() {
        let mut source = Element::new("source").with_attr("file", path_text(path)?);
        if let Some(u) = secret {
            source.push(encryption(u));
        }
        below = Element::new("backingStore")
            .with_attr("type", "file")
            .with_child(Element::new("format").with_attr("type", format.as_str()))
            .with_child(source)
            .with_child(below);
    }
    Ok(below)
}

fn path_text(p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).ok_or_else(|| {
        crate::error::Error::invalid_arg(format!("path '{}' is not UTF-8", p.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The overlay and each encrypted level name their secret; a level in
    /// clear names none; the chain ends in an empty `<backingStore/>`; a
    /// disk in clear is left as it is.
    #[test]
    fn definition_names_every_levels_secret() {
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let keys = InstantKeys {
            _lent: keys::lend(Vec::new()),
            disks: HashMap::from([(
                "vda".to_string(),
                vec![
                    ("/b/inc.qcow2".into(), DiskFormat::Qcow2, Some(s1)),
                    ("/b/mid.qcow2".into(), DiskFormat::Qcow2, None),
                    ("/b/full.qcow2".into(), DiskFormat::Qcow2, Some(s2)),
                ],
            )]),
        };
        let xml = "<domain type='qemu'><name>n</name><devices>\
            <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
            <source file='/r/ov.qcow2'/><target dev='vda'/></disk>\
            <disk type='file' device='disk'><source file='/r/b.qcow2'/><target dev='vdb'/></disk>\
            </devices></domain>";
        let out = keys.definition(xml).unwrap();
        let root = crate::xml::dom::parse(&out).unwrap();
        let devices = root.child("devices").unwrap();
        let mut disks = devices.children_named("disk");
        let vda = disks.next().unwrap();
        let secret = |src: &Element| {
            src.child("encryption")
                .map(|e| e.child("secret").unwrap().attr("uuid").unwrap().to_string())
        };
        assert_eq!(secret(vda.child("source").unwrap()), Some(s1.to_string()));
        let mut level = vda.child("backingStore").unwrap();
        let mut seen = Vec::new();
        while let Some(src) = level.child("source") {
            assert_eq!(level.child("format").unwrap().attr("type"), Some("qcow2"));
            seen.push((src.attr("file").unwrap().to_string(), secret(src)));
            level = level.child("backingStore").unwrap();
        }
        assert!(level.children.is_empty() && level.attrs.is_empty());
        assert_eq!(
            seen,
            [
                ("/b/inc.qcow2".to_string(), Some(s1.to_string())),
                ("/b/mid.qcow2".to_string(), None),
                ("/b/full.qcow2".to_string(), Some(s2.to_string())),
            ]
        );
        let vdb = disks.next().unwrap();
        assert!(vdb.child("backingStore").is_none());
        assert!(vdb.child("source").unwrap().child("encryption").is_none());
    }
}
