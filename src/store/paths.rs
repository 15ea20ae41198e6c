//! How the catalog names the files it owns in what it writes: relative to
//! its root, so that a catalog copied or moved elsewhere (`cp -a`,
//! `rsync -a`, `tar`) reads as it did, with nothing to rewrite.
//!
//! A file of a backup's default folder, `<root>/<domain>/<backup>/<file>`
//! (its image, the folder itself as a created folder, a parent's image in
//! a chain, a merge's temporary file), is written as
//! `<domain>/<backup>/<file>` (`names::check_data_path`): in records, merge
//! markers, and (relative to the image's own folder, `../<backup>/<file>`)
//! as the backing file a qcow2 image names. Every other path, a file a
//! user named outside the catalog, keeps its absolute name. Digest indexes
//! already name their parent as `../<backup>.index/<disk>.b3`.
//!
//! In memory every path is absolute: a name read is resolved against the
//! path the root's descriptor was opened from (`resolve`), and only if it
//! is one `names::check_data_path` accepts — the record's own domain, a
//! backup's folder, then plain names, none `..`: no name can lead out of
//! that domain's folder, whatever the record says. Anything else makes the
//! record damaged. The images themselves are then reached as before (see
//! `store::delete` for removals, through the domain folder's descriptor).
//!
//! Records of earlier versions name these files by absolute paths. Under
//! the current root they are what a relative name resolves to, and are
//! written relative the next time the record is written; under a root the
//! catalog has left, they name nothing (`ops::moved` explains it).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::catalog::Catalog;
use super::names;
use crate::xml::backup::BackupRecord;

/// `path` as the catalog at `root` writes it for a backup of `domain`:
/// relative to the root when it lies in a backup folder of that domain,
/// else as it is.
pub(crate) fn stored_name(root: &Path, domain: &Uuid, path: &Path) -> PathBuf {
    match path.strip_prefix(root).ok().and_then(Path::to_str) {
        Some(rel) if names::check_data_path(domain, rel).is_ok() => PathBuf::from(rel),
        _ => path.to_path_buf(),
    }
}

/// The file a name read for a backup of `domain` stands for: an absolute
/// path as it is, a relative one (which `names::check_data_path` must
/// accept) under `root`. The error says what is wrong with it.
pub(crate) fn resolved_name(root: &Path, domain: &Uuid, name: &Path) -> Result<PathBuf, String> {
    if name.is_absolute() {
        return Ok(name.to_path_buf());
    }
    let text = name.to_str().unwrap_or_default();
    match names::check_data_path(domain, text) {
        Ok(()) => Ok(root.join(text)),
        Err(why) => Err(format!(
            "'{}' is not a name of a file in the catalog: {why}",
            name.display()
        )),
    }
}

/// `rec` as it is written in the catalog at `root`: its files in the
/// catalog named relative to the root.
pub(crate) fn to_stored(root: &Path, rec: &BackupRecord) -> BackupRecord {
    let mut out = rec.clone();
    let name = |p: &Path| stored_name(root, &rec.domain_uuid, p);
    for d in &mut out.disks {
        d.target = name(&d.target);
        for (p, _) in &mut d.backing {
            *p = name(p);
        }
    }
    for dir in &mut out.created_dirs {
        *dir = name(dir);
    }
    out
}

/// `rec` as read from the catalog at `root`, its relative names resolved;
/// the error names the first one that is not a catalog file's.
pub(crate) fn resolve(root: &Path, rec: &mut BackupRecord) -> Result<(), String> {
    let dom = rec.domain_uuid;
    let fix = |p: &mut PathBuf, at: &dyn Fn() -> String| -> Result<(), String> {
        *p = resolved_name(root, &dom, p).map_err(|e| format!("{}: {e}", at()))?;
        Ok(())
    };
    for d in &mut rec.disks {
        let name = d.name.clone();
        fix(&mut d.target, &|| format!("<target file> of disk '{name}'"))?;
        for (p, _) in &mut d.backing {
            fix(p, &|| format!("<backingStore file> of disk '{name}'"))?;
        }
    }
    for dir in &mut rec.created_dirs {
        fix(dir, &|| "<dir path> of <createddirs>".to_string())?;
    }
    Ok(())
}

/// The three names of `path` below `root`, `<domain>/<backup>/<file>`,
/// if it is the file of a backup folder.
fn data_file(root: &Path, path: &Path) -> Option<(Uuid, String, String)> {
    let rel = path.strip_prefix(root).ok()?.to_str()?;
    let mut parts = rel.splitn(3, '/');
    let domain = names::exact_uuid(parts.next()?)?;
    let (backup, file) = (parts.next()?, parts.next()?);
    names::check_data_path(&domain, rel).ok()?;
    (!file.contains('/')).then(|| (domain, backup.to_string(), file.to_string()))
}

impl Catalog {
    /// The backing file name a new qcow2 image at `image` writes for the
    /// image at `backing`: `../<backup>/<file>`, relative to the image's
    /// own folder, when both are files of backup folders of one domain in
    /// the catalog (the chain then reads the same wherever the catalog is
    /// moved); otherwise `backing` as it is.
    pub fn backing_name(&self, image: &Path, backing: &Path) -> PathBuf {
        match (
            data_file(self.root(), image),
            data_file(self.root(), backing),
        ) {
            (Some((d1, ..)), Some((d2, b, file))) if d1 == d2 => {
                PathBuf::from(format!("../{b}/{file}"))
            }
            _ => backing.to_path_buf(),
        }
    }

    /// `path` as the catalog writes it for a backup of `domain` (see
    /// `stored_name`).
    pub(crate) fn stored_name(&self, domain: &Uuid, path: &Path) -> PathBuf {
        stored_name(self.root(), domain, path)
    }

    /// Whether `path` lies in a backup folder of `domain` in this catalog.
    pub fn is_data_path(&self, domain: &Uuid, path: &Path) -> bool {
        self.stored_name(domain, path).is_relative()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::backup::{BackupState, DiskFormat};

    #[test]
    fn catalog_files_are_written_relative_and_read_back_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cat");
        let dom = Uuid::new_v4();
        let (b, parent) = (Uuid::new_v4(), Uuid::new_v4());
        let own = root.join(dom.to_string()).join(b.to_string());
        let mut rec = BackupRecord::sample(dom, own.join("vda.qcow2"), BackupState::Completed);
        rec.uuid = b;
        let up = root.join(format!("{dom}/{parent}/vda.qcow2"));
        let outside = dir.path().join("user/vda.qcow2");
        rec.disks[0].backing = vec![
            (up.clone(), DiskFormat::Qcow2),
            (outside.clone(), DiskFormat::Raw),
        ];
        rec.created_dirs = vec![own.clone(), dir.path().join("user")];
        let stored = to_stored(&root, &rec);
        assert_eq!(
            stored.disks[0].target,
            PathBuf::from(format!("{dom}/{b}/vda.qcow2"))
        );
        assert_eq!(
            stored.disks[0].backing[0].0,
            PathBuf::from(format!("{dom}/{parent}/vda.qcow2"))
        );
        assert_eq!(stored.disks[0].backing[1].0, outside);
        assert_eq!(
            stored.created_dirs,
            vec![PathBuf::from(format!("{dom}/{b}")), dir.path().join("user")]
        );
        // Read under another root: the same files there.
        let moved = dir.path().join("moved");
        let mut back = stored.clone();
        resolve(&moved, &mut back).unwrap();
        assert_eq!(
            back.disks[0].target,
            moved.join(format!("{dom}/{b}/vda.qcow2"))
        );
        assert_eq!(back.disks[0].backing[1].0, outside);
        assert_eq!(back.created_dirs[0], moved.join(format!("{dom}/{b}")));
        // Under its own root, the record reads back as it was.
        let mut same = stored.clone();
        resolve(&root, &mut same).unwrap();
        assert_eq!(same, rec);
        // Names of another domain, or leaving the backup's folder, are refused.
        for bad in [
            format!("{}/{b}/vda.qcow2", Uuid::new_v4()),
            format!("{dom}/{b}/../../../etc/shadow"),
            format!("{dom}/{b}.index/vda.b3"),
            "vda.qcow2".to_string(),
        ] {
            let mut r = stored.clone();
            r.disks[0].target = bad.clone().into();
            let e = resolve(&moved, &mut r).unwrap_err();
            assert!(
                e.contains("<target file> of disk 'vda'") && e.contains(&bad),
                "{e}"
            );
        }
    }

    #[test]
    fn backing_names_are_relative_between_a_domains_backup_folders() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let (dom, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let file = |d: &Uuid, x: &Uuid| cat.root().join(format!("{d}/{x}/vda.qcow2"));
        assert_eq!(
            cat.backing_name(&file(&dom, &b), &file(&dom, &a)),
            PathBuf::from(format!("../{a}/vda.qcow2"))
        );
        // Another domain's, or a file outside the catalog: absolute.
        let other = file(&Uuid::new_v4(), &a);
        assert_eq!(cat.backing_name(&file(&dom, &b), &other), other);
        let user = dir.path().join("vda.qcow2");
        assert_eq!(cat.backing_name(&file(&dom, &b), &user), user);
        assert_eq!(cat.backing_name(&user, &file(&dom, &a)), file(&dom, &a));
        assert!(cat.is_data_path(&dom, &file(&dom, &a)));
        assert!(!cat.is_data_path(&dom, &user));
    }
}
