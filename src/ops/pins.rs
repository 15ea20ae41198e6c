//! What keeps a backup's files in use, checked before they are deleted or
//! rewritten: disks restored with `VIR_DOMAIN_BACKUP_RESTORE_INSTANT` (their
//! overlays read through the backup's chain) and exports of stored backups,
//! in any process (`store::exports`).
//!
//! Pins are checked lazily, whenever they are read: a pin whose domain no
//! longer exists, whose disk is gone, or whose disk's backing chain no
//! longer includes a file of the backup's chain (flattened with
//! virDomainBlockPull, or replaced) is dropped. When libvirt cannot be
//! asked (the connection fails), the pin is kept: a wrong "in use" is safer
//! than deleting a file a guest reads.

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, ErrorCode, Result};
use crate::hv::libvirt;
use crate::hv::qemu_tools::{os, run};
use crate::ops::export;
use crate::ops::recovery;
use crate::store::catalog::Catalog;
use crate::store::exports;
use crate::store::pins::{self, Pin};
use crate::xml::backup::{BackupRecord, path_str};
use crate::xml::dom::Element;
use crate::xml::domain;

/// The files of `image`'s backing chain, itself first, as qemu-img sees them
/// (shared read: the domain may run).
fn image_chain(image: &Path) -> Option<Vec<PathBuf>> {
    let args = [
        os("info"),
        os("-U"),
        os("--backing-chain"),
        os("--output=json"),
        image.as_os_str(),
    ];
    let out = run("qemu-img", args).ok()?;
    chain_of_info(&out)
}

/// The `filename` of every layer of `qemu-img info --backing-chain
/// --output=json`, resolved; `None` when the output does not parse (the
/// pin is then kept). Paths are JSON strings, escapes and all.
fn chain_of_info(json: &[u8]) -> Option<Vec<PathBuf>> {
    let layers: Vec<serde_json::Value> = serde_json::from_slice(json).ok()?;
    layers
        .iter()
        .map(|layer| {
            let p = PathBuf::from(layer.get("filename")?.as_str()?);
            Some(std::fs::canonicalize(&p).unwrap_or(p))
        })
        .collect()
}

/// Whether the pinned disk still reads through one of `files`.
fn still_used(pin: &Pin, files: &[PathBuf]) -> bool {
    let dom = match libvirt::open_domain(&pin.uri, &pin.domain_uuid) {
        Ok(d) => d,
        Err(e) => return !e.is(ErrorCode::NoDomain),
    };
    let Ok(xml) = dom.xml() else {
        return true;
    };
    let Ok(disks) = domain::parse_disks(&xml) else {
        return true;
    };
    let Some(source) = disks
        .iter()
        .find(|d| d.name == pin.disk)
        .and_then(|d| d.source.clone())
    else {
        return false;
    };
    match image_chain(&source) {
        Some(chain) => chain.iter().any(|f| files.contains(f)),
        None => true,
    }
}

/// The pins that still hold, each with the files of its backup's chain;
/// the others are dropped.
fn live(catalog: &Catalog) -> Result<Vec<(Pin, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    for (path, pin) in pins::list(catalog)? {
        let files = match recovery::find(catalog, &pin.backup)? {
            Some(rec) => chain_files(catalog, &rec)?,
            None => Vec::new(),
        };
        if !files.is_empty() && still_used(&pin, &files) {
            out.push((pin, files));
        } else {
            pins::remove(catalog, &path);
        }
    }
    Ok(out)
}

/// Whether `pin`'s disk reads a file of `rec`.
fn uses(rec: &BackupRecord, files: &[PathBuf]) -> bool {
    rec.disks.iter().any(|d| {
        let t = std::fs::canonicalize(&d.target).unwrap_or_else(|_| d.target.clone());
        files.contains(&t)
    })
}

/// Refuse to delete `doomed` (or merge into their children) while a
/// restored disk or an export reads one of them.
pub(crate) fn check_delete(catalog: &Catalog, doomed: &[&BackupRecord]) -> Result<()> {
    for (pin, files) in live(catalog)? {
        if let Some(r) = doomed.iter().find(|r| uses(r, &files)) {
            return Err(Error::operation_invalid(format!(
                "backup '{}' is in use by disk '{}' of domain '{}' (instant restore); \
                 flatten the disk (virDomainBlockPull) or remove the domain first",
                r.uuid, pin.disk, pin.domain_name
            )));
        }
    }
    for (backup, export) in stored_exports(catalog)? {
        let Some(rec) = recovery::find(catalog, &backup)? else {
            continue;
        };
        let files = chain_files(catalog, &rec)?;
        if let Some(r) = doomed.iter().find(|r| uses(r, &files)) {
            return Err(Error::operation_invalid(format!(
                "backup '{}' is being exported (unmanaged backup '{export}'); end the export first",
                r.uuid
            )));
        }
    }
    Ok(())
}

/// Exports of stored backups running in any process, this one's included:
/// (backup, export).
fn stored_exports(catalog: &Catalog) -> Result<Vec<(Uuid, Uuid)>> {
    let mut out = export::stored_exports();
    for r in exports::running(catalog)? {
        if let Some(b) = r.backup
            && !out.iter().any(|(_, e)| *e == r.export)
        {
            out.push((b, r.export));
        }
    }
    Ok(out)
}

/// Add `<pinnedby domain='…' disk='…'/>` to a backup's XML for every
/// restored disk that reads its files.
pub(crate) fn add_pinned_by(catalog: &Catalog, rec: &BackupRecord, el: &mut Element) -> Result<()> {
    for (pin, files) in live(catalog)? {
        if uses(rec, &files) {
            el.push(
                Element::new("pinnedby")
                    .with_attr("domain", pin.domain_name.clone())
                    .with_attr("disk", pin.disk.clone())
                    .with_attr("overlay", path_str(&pin.overlay)?),
            );
        }
    }
    Ok(())
}

/// `path` with its folder resolved (the file itself may not exist yet), so
/// two spellings of one file compare equal.
pub(crate) fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = fs::canonicalize(path) {
        return p;
    }
    match (path.parent().map(fs::canonicalize), path.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// Every image file `rec` reads through: its own and its ancestors'.
pub(crate) fn chain_files(catalog: &Catalog, rec: &BackupRecord) -> Result<Vec<PathBuf>> {
    let all = recovery::list_domain(catalog, &rec.domain_uuid)?;
    let mut out = Vec::new();
    let mut cur = Some(rec.clone());
    while let Some(r) = cur {
        out.extend(r.disks.iter().map(|d| resolved(&d.target)));
        cur = r
            .parent
            .and_then(|p| all.iter().find(|x| x.uuid == p).cloned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_paths_are_unescaped_json_strings() {
        // What qemu-img prints for names with a quote, a backslash, a
        // newline and a non-ASCII letter (as \u escapes).
        let out = br#"[
            {"filename": "/b/o \"q\" \\ x\nz/fu\u0308r \u00fc.qcow2", "format": "qcow2"},
            {"filename": "/b/base.qcow2", "format": "raw"}
        ]"#;
        let got = chain_of_info(out).unwrap();
        assert_eq!(
            got,
            vec![
                PathBuf::from("/b/o \"q\" \\ x\nz/fu\u{308}r \u{fc}.qcow2"),
                PathBuf::from("/b/base.qcow2")
            ]
        );
        assert!(chain_of_info(b"not json").is_none());
        assert!(chain_of_info(br#"[{"format": "raw"}]"#).is_none());
    }
}
