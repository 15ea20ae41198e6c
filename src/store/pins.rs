//! Pins: which instant-restored disk reads through which backup's files.
//!
//! One file per pinned disk, `<root>/.pins/<backup>-<domain uuid>-<disk>.xml`,
//! written atomically. A pin says nothing about whether the disk still uses
//! the backup: whoever reads the pins checks that (`ops::pins`) and drops
//! the ones that no longer hold.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::catalog::Catalog;
use crate::store::names::{self, PINS};
use crate::xml::backup::{parse_uuid, path_str};
use crate::xml::dom::{self, Element};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pin {
    /// The backup whose point in time the disk was restored from.
    pub backup: Uuid,
    /// The restored domain, where to find it, and its disk.
    pub domain_uuid: Uuid,
    pub domain_name: String,
    pub uri: String,
    pub disk: String,
    /// The overlay the disk was given.
    pub overlay: PathBuf,
}

impl Pin {
    fn file_name(&self) -> String {
        names::pin_file(&self.backup, &self.domain_uuid, &self.disk)
    }

    fn to_xml(&self) -> Result<String> {
        Element::new("pin")
            .with_attr("backup", self.backup.to_string())
            .with_attr("domain", self.domain_uuid.to_string())
            .with_attr("name", self.domain_name.clone())
            .with_attr("uri", self.uri.clone())
            .with_attr("disk", self.disk.clone())
            .with_attr("overlay", path_str(&self.overlay)?)
            .to_xml()
    }

    fn from_xml(text: &str) -> Result<Pin> {
        let el = dom::parse(text)?;
        let get = |a: &str| {
            el.attr(a)
                .map(str::to_string)
                .ok_or_else(|| Error::xml(format!("pin without {a}")))
        };
        Ok(Pin {
            backup: parse_uuid(&get("backup")?)?,
            domain_uuid: parse_uuid(&get("domain")?)?,
            domain_name: get("name")?,
            uri: get("uri")?,
            disk: get("disk")?,
            overlay: PathBuf::from(get("overlay")?),
        })
    }
}

/// Record a pin (replacing one of the same backup, domain and disk).
/// Written under the catalog-wide lock (pins of every domain share the
/// folder), under which `list` sweeps temporary files.
pub(crate) fn add(catalog: &Catalog, pin: &Pin) -> Result<PathBuf> {
    let _guard = catalog.lock()?;
    let dir = catalog.private_folder(PINS)?;
    dir.write_atomic(&pin.file_name(), pin.to_xml()?.as_bytes())?;
    Ok(dir.join(&pin.file_name()))
}

/// Remove the temporary files of pin writes a killed process cut short:
/// regular files of ours, private, and only while nobody writes a pin.
fn sweep_temporaries(catalog: &Catalog, dir: &crate::store::folder::Folder, found: &[String]) {
    let temps: Vec<&String> = found.iter().filter(|n| names::is_pin_tmp(n)).collect();
    if temps.is_empty() {
        return;
    }
    let Some(_guard) = catalog.try_lock() else {
        return;
    };
    for t in temps {
        if dir
            .stat(t)
            .is_ok_and(|st| crate::store::secure::own_private_file(&st))
        {
            crate::warn_if_err!(
                dir.remove_if_exists(t),
                "cannot remove {t:?}"
            );
        }
    }
    dir.sync();
}

/// Remove the temporary files of pin writes a killed process cut short.
pub(crate) fn sweep(catalog: &Catalog) {
    let Ok(Some(dir)) = catalog.folder(PINS) else {
        return;
    };
    let names: Vec<String> = (dir.names().unwrap_or_default().iter())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    sweep_temporaries(catalog, &dir, &names);
}

/// Every pin, with the file that holds it. Unreadable files are skipped
/// (a half-written one cannot exist: pins are written atomically); the
/// temporary files of writes a killed process cut short are removed.
pub(crate) fn list(catalog: &Catalog) -> Result<Vec<(PathBuf, Pin)>> {
    let Some(dir) = catalog.folder(PINS)? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = dir
        .names()
        .map_err(|e| Error::io("cannot read", dir.path(), e))?
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    sweep_temporaries(catalog, &dir, &names);
    let mut out = Vec::new();
    for n in names {
        if Path::new(&n).extension().is_none_or(|x| x != "xml") {
            continue;
        }
        if let Some(pin) = dir
            .read(&n)
            .ok()
            .and_then(|t| Pin::from_xml(&String::from_utf8_lossy(&t)).ok())
        {
            out.push((dir.join(&n), pin));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Forget the pin `list` found at `path`.
pub(crate) fn remove(catalog: &Catalog, path: &Path) {
    let (Ok(Some(dir)), Some(name)) = (catalog.folder(PINS), path.file_name()) else {
        return;
    };
    if dir.remove(&name.to_string_lossy()).is_ok() {
        dir.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip() {
        let root = std::env::temp_dir().join(format!("lvb-pins-{}", Uuid::new_v4()));
        let catalog = Catalog::at(root.clone()).unwrap();
        let pin = Pin {
            backup: Uuid::new_v4(),
            domain_uuid: Uuid::new_v4(),
            domain_name: "a&b".into(),
            uri: "qemu:///system".into(),
            disk: "vda".into(),
            overlay: "/x/y z.qcow2".into(),
        };
        let path = add(&catalog, &pin).unwrap();
        let all = list(&catalog).unwrap();
        assert_eq!(all, vec![(path.clone(), pin)]);
        remove(&catalog, &path);
        assert!(list(&catalog).unwrap().is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }
}
