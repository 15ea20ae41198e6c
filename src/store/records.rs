//! Backup records and the domain's listing summary that follows them.
//!
//! One record per backup, `<domain>/<backup>.xml`: the public XML plus the
//! connection URI, the domain definition at backup time (secure form),
//! sizes and job numbers; replaced atomically (`Folder::write_atomic`).
//! Every change of a record is noted in the domain's summary (`summary`)
//! first as pending, then as done, under the domain's lock, so that a crash
//! between the two is read back from the record itself.
//!
//! A record that cannot be read is an error naming the file, never skipped:
//! skipping it would hide its backup and let a delete of its parent take
//! the images it still needs. A record in state `running` is stored as it
//! is: whether its job is alive is `BackupDir::job_status`, and what becomes
//! of a dead job's record is decided in `ops::recovery`.

use std::path::Path;

use uuid::Uuid;

use super::domain::{BackupDir, DomainDir};
use super::folder::Folder;
use super::names;
use super::paths;
use super::summary::{self, Entry};
use crate::error::{Error, Result};
use crate::xml::backup::BackupRecord;

impl BackupDir {
    /// The record as stored, if there is one (an error naming the file if
    /// it is damaged).
    pub fn record(&self) -> Result<Option<BackupRecord>> {
        match self.domain().folder()? {
            Some(dir) => read_record(&dir, &names::record(self.uuid())),
            None => Ok(None),
        }
    }

    /// Write the backup's record, and note it in the domain's summary.
    pub fn write_record(&self, rec: &BackupRecord) -> Result<()> {
        debug_assert!(rec.uuid == *self.uuid() && rec.domain_uuid == *self.domain().uuid());
        // Refused (a value XML cannot carry) before anything is noted. Its
        // files in the catalog are named relative to the root (`paths`).
        let root = self.domain().root_path();
        let xml = paths::to_stored(root, rec).to_catalog_xml()?;
        let _guard = self.domain().lock()?;
        let dir = self.domain().make_folder()?;
        note_pending(&dir, self.uuid())?;
        dir.write_atomic(&names::record(self.uuid()), xml.as_bytes())?;
        summary::note_written(&dir, &Entry::of(rec))?;
        compact_summary(&dir)?;
        ::log::debug!(
            "backup {}: record written, state {}",
            rec.uuid,
            rec.state.as_str()
        );
        Ok(())
    }

    /// Forget the backup; its data files stay.
    pub fn remove_record(&self) -> Result<()> {
        let _guard = self.domain().lock()?;
        let Some(dir) = self.domain().folder()? else {
            return Ok(());
        };
        note_pending(&dir, self.uuid())?;
        dir.remove_if_exists(&names::record(self.uuid()))?;
        dir.sync();
        settle_removal(&dir, self.uuid())?;
        // The indexes go after the record: an index without a record is
        // never read, a record without its index would be a broken parent.
        remove_index(&dir, self.uuid())?;
        self.domain().drop_if_empty();
        Ok(())
    }

    /// The error for this backup's record when it cannot be trusted.
    pub fn damaged(&self, why: &str) -> Error {
        damaged(&self.record_path(), why)
    }
}

impl DomainDir {
    /// The records as stored (a dead job's record still says running:
    /// `ops::recovery` resolves those), oldest first. Reads and parses
    /// every record: listing uses `entries`.
    pub fn records(&self) -> Result<Vec<BackupRecord>> {
        match self.folder()? {
            Some(dir) => records_in(&dir),
            None => Ok(Vec::new()),
        }
    }

    /// The records of `backups` that exist (errors name a damaged one),
    /// read through one open of the folder.
    pub fn records_of(&self, backups: &[Uuid]) -> Result<Vec<BackupRecord>> {
        match self.folder()? {
            Some(dir) => read_records(&dir, backups),
            None => Ok(Vec::new()),
        }
    }

    /// The backups that have a record file, from the folder itself (not
    /// the summary), in no particular order; nothing is parsed.
    pub fn record_ids(&self) -> Result<Vec<Uuid>> {
        match self.folder()? {
            Some(dir) => record_ids_in(&dir),
            None => Ok(Vec::new()),
        }
    }

    /// What listing needs of each record, oldest first, from the summary
    /// (rebuilt from the records when it is missing or damaged). A dead
    /// job's entry still says running: `ops::recovery` resolves those.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let Some(dir) = self.folder()? else {
            return Ok(Vec::new());
        };
        let replayed = match summary::read(&dir)? {
            Some(r) => r,
            None => {
                // Damaged, or left behind by a crash or an older version.
                let _guard = self.lock()?;
                match summary::read(&dir)? {
                    Some(r) => r,
                    None => write_summary(&dir, false)?,
                }
            }
        };
        let mut out = settle_pending(&dir, replayed)?.into_vec();
        // Nearly sorted already: the log keeps the order records came in.
        out.sort_by_key(|e| (e.created_ns, e.uuid));
        Ok(out)
    }

    /// Forget every backup of the domain and its settings (data files
    /// stay), and its job lock file.
    pub fn forget(&self) -> Result<()> {
        for rec in self.records()? {
            self.backup_of(&rec).remove_record()?;
        }
        self.remove_job_lock();
        if let Some(dir) = self.folder()? {
            dir.remove_if_exists(names::DEFAULT_TARGET)?;
            dir.remove_if_exists(names::SUMMARY)?;
        }
        self.drop_if_empty();
        Ok(())
    }
}

/// Note in the summary that a record is about to change, writing the
/// summary first if it is missing (the domain's first backup, or a catalog
/// from before summaries). Domain lock held.
pub(super) fn note_pending(dir: &Folder, backup: &Uuid) -> Result<()> {
    if !summary::note_pending(dir, backup)? {
        write_summary(dir, true)?;
        summary::note_pending(dir, backup)?;
    }
    Ok(())
}

/// The summary after a record went away. Domain lock held.
pub(super) fn settle_removal(dir: &Folder, backup: &Uuid) -> Result<()> {
    summary::note_removed(dir, backup)?;
    compact_summary(dir)?;
    drop_empty_summary(dir)
}

/// Remove the summary of a domain left without records (a refused or
/// failed first backup leaves nothing behind). Only a short summary can be
/// empty, so a long one is not read. Domain lock held.
pub(super) fn drop_empty_summary(dir: &Folder) -> Result<()> {
    if dir.stat(names::SUMMARY).map_or(true, |m| m.st_size > 4096) {
        return Ok(());
    }
    let empty = match summary::read(dir)? {
        Some(r) => settle_pending(dir, r)?.is_empty(),
        None => false,
    };
    match empty {
        true => dir.remove_if_exists(names::SUMMARY),
        false => Ok(()),
    }
}

/// Rewrite a long summary log as its entries. Domain lock held.
fn compact_summary(dir: &Folder) -> Result<()> {
    if !summary::wants_compaction(dir) {
        return Ok(());
    }
    match summary::read(dir)? {
        Some(r) => {
            let entries = settle_pending(dir, r)?;
            dir.write_atomic(names::SUMMARY, summary::render(entries.values()).as_bytes())
        }
        None => write_summary(dir, true).map(drop),
    }
}

/// Write a domain's summary from its records (when `always`, or when there
/// are records: a domain without any keeps no file). Domain lock held.
fn write_summary(dir: &Folder, always: bool) -> Result<summary::Replayed> {
    let entries: summary::Entries = records_in(dir)?.iter().map(Entry::of).collect();
    if always || !entries.is_empty() {
        dir.write_atomic(names::SUMMARY, summary::render(entries.values()).as_bytes())?;
    }
    Ok(summary::Replayed {
        entries,
        pending: Vec::new(),
    })
}

/// The entries of a replayed summary, with the records it says were about
/// to change read back.
fn settle_pending(dir: &Folder, r: summary::Replayed) -> Result<summary::Entries> {
    let mut map = r.entries;
    for u in r.pending {
        match read_record(dir, &names::record(&u))? {
            Some(rec) => map.insert(Entry::of(&rec)),
            None => map.remove(&u),
        };
    }
    Ok(map)
}

/// Remove a backup's index folder (a link at its name is removed, never
/// followed).
pub(super) fn remove_index(dir: &Folder, backup: &Uuid) -> Result<()> {
    let name = names::index_dir(backup);
    dir.remove_tree(&name)
        .map_err(|e| Error::io("cannot remove digest index", &dir.join(&name), e))
}

/// The record `name` in `dir` (a record, or a cut-short delete's note):
/// `None` if there is none, an error naming the file if it cannot be read
/// or parsed, or names a file in the catalog by anything but a name the
/// library gives one (`paths::resolve`: relative names are resolved
/// against the root, `dir`'s parent, and never lead out of a backup's
/// folder).
pub(super) fn read_record(dir: &Folder, name: &str) -> Result<Option<BackupRecord>> {
    let path = dir.join(name);
    let text = match dir.read(name).and_then(|t| {
        String::from_utf8(t).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(&path, &e.to_string())),
    };
    let mut rec = BackupRecord::from_catalog_xml(&text).map_err(|e| damaged(&path, &e.message))?;
    let root = dir.path().parent().unwrap_or(Path::new("/"));
    paths::resolve(root, &mut rec).map_err(|why| damaged(&path, &why))?;
    Ok(Some(rec))
}

/// The backups that have a record file in a domain's folder.
fn record_ids_in(dir: &Folder) -> Result<Vec<Uuid>> {
    let names = dir
        .names()
        .map_err(|e| Error::io("cannot read catalog folder", dir.path(), e))?;
    Ok(names
        .iter()
        .filter_map(|name| names::parse_record(name.to_str()?))
        .collect())
}

/// Every record in a domain's folder, oldest first.
fn records_in(dir: &Folder) -> Result<Vec<BackupRecord>> {
    let mut out = read_records(dir, &record_ids_in(dir)?)?;
    out.sort_by_key(|r| (r.created_ns, r.uuid));
    Ok(out)
}

/// The records of `backups` that exist in a domain's folder, in that order.
fn read_records(dir: &Folder, backups: &[Uuid]) -> Result<Vec<BackupRecord>> {
    let mut out = Vec::new();
    for backup in backups {
        out.extend(read_record(dir, &names::record(backup))?);
    }
    Ok(out)
}

/// The error for a record that cannot be trusted: it names the file.
fn damaged(path: &Path, why: &str) -> Error {
    Error::operation_failed(format!(
        "backup record '{}' is damaged: {why}; repair or remove it by hand (its images are kept)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::catalog::Catalog;
    use crate::xml::backup::BackupState;

    fn record(domain: Uuid, target: PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord::sample(domain, target, state)
    }

    #[test]
    fn damaged_records_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let rec = record(dom, dir.path().join("t.qcow2"), BackupState::Completed);
        let b = cat.backup_of(&rec);
        b.write_record(&rec).unwrap();
        let path = b.record_path();
        std::fs::write(&path, b"<domainbackup>").unwrap();
        for e in [
            cat.domain(&dom).records().unwrap_err(),
            b.record().unwrap_err(),
        ] {
            assert!(
                e.message.contains(&path.display().to_string()),
                "{}",
                e.message
            );
            assert!(e.message.contains("damaged"), "{}", e.message);
        }
    }

    #[test]
    fn records_and_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("root")).unwrap();
        let dom = Uuid::new_v4();
        let rec = record(dom, dir.path().join("t.qcow2"), BackupState::Completed);
        cat.backup_of(&rec).write_record(&rec).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(cat.root()), 0o700);
        assert_eq!(mode(&cat.domain(&dom).path()), 0o700);
        assert_eq!(mode(&cat.backup_of(&rec).record_path()), 0o600);
    }

    fn listed(cat: &Catalog, dom: &Uuid) -> Vec<(Uuid, Option<Uuid>, u8)> {
        let mut v: Vec<_> = (cat.domain(dom).entries().unwrap().iter())
            .map(|e| (e.uuid, e.parent, e.state as u8))
            .collect();
        v.sort();
        v
    }

    fn from_records(cat: &Catalog, dom: &Uuid) -> Vec<(Uuid, Option<Uuid>, u8)> {
        let mut v: Vec<_> = (cat.domain(dom).records().unwrap().iter())
            .map(|r| (r.uuid, r.parent, r.state as u8))
            .collect();
        v.sort();
        v
    }

    /// Write `rec` as a crash would leave it: noted pending in the
    /// summary, the record written, the answer never noted.
    fn crash_while_writing(cat: &Catalog, rec: &BackupRecord) {
        let folder = cat.domain(&rec.domain_uuid).make_folder().unwrap();
        summary::note_pending(&folder, &rec.uuid).unwrap();
        let xml = rec.to_catalog_xml().unwrap();
        (folder.write_atomic(&names::record(&rec.uuid), xml.as_bytes())).unwrap();
    }

    #[test]
    fn summary_follows_the_records_and_survives_crashes_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let sum = summary::path(&cat.domain(&dom).path());
        let mut a = record(dom, dir.path().join("a"), BackupState::Running);
        // Listing a domain without backups writes nothing.
        assert!(listed(&cat, &dom).is_empty());
        assert!(!cat.domain(&dom).path().exists());
        // The first record writes the summary.
        cat.backup_of(&a).write_record(&a).unwrap();
        assert!(sum.exists());
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // One from before summaries (or lost) is rewritten by the next
        // listing, or the next write.
        std::fs::remove_file(&sum).unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert!(sum.exists());
        // Later changes are appended to it.
        a.state = BackupState::Completed;
        cat.backup_of(&a).write_record(&a).unwrap();
        let mut b = record(dom, dir.path().join("b"), BackupState::Completed);
        b.parent = Some(a.uuid);
        cat.backup_of(&b).write_record(&b).unwrap();
        let c = record(dom, dir.path().join("c"), BackupState::Completed);
        cat.backup_of(&c).write_record(&c).unwrap();
        cat.backup_of(&c).remove_record().unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert_eq!(listed(&cat, &dom).len(), 2);

        // A crash after the note and the record change, before the answer:
        // the record itself is read back.
        let text = std::fs::read_to_string(&sum).unwrap();
        let mut b2 = b.clone();
        b2.parent = None;
        crash_while_writing(&cat, &b2);
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // The same for a removal, and for a new record.
        let d = record(dom, dir.path().join("d"), BackupState::Completed);
        crash_while_writing(&cat, &d);
        let folder = cat.domain(&dom).make_folder().unwrap();
        summary::note_pending(&folder, &a.uuid).unwrap();
        std::fs::remove_file(cat.backup_of(&a).record_path()).unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));

        // A line cut short is dropped; the next writer starts over.
        std::fs::write(&sum, format!("{text}? 1234")).unwrap();
        assert_eq!(listed(&cat, &dom).len(), 2); // as the old text says
        cat.backup_of(&b).write_record(&b).unwrap();
        assert!(!std::fs::read_to_string(&sum).unwrap().contains("? 1234"));
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        // A damaged or foreign summary is rebuilt from the records.
        std::fs::write(&sum, "garbage\n").unwrap();
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert!(
            std::fs::read_to_string(&sum)
                .unwrap()
                .starts_with("LVBKSUM1 ")
        );
    }

    #[test]
    fn a_long_summary_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let mut a = record(dom, dir.path().join("a"), BackupState::Completed);
        let sum = summary::path(&cat.domain(&dom).path());
        let mut longest = 0;
        for i in 0..300 {
            a.created_ns = i;
            cat.backup_of(&a).write_record(&a).unwrap();
            longest = longest.max(std::fs::read_to_string(&sum).unwrap().lines().count());
        }
        // Two lines a write, rewritten as one entry every few dozen writes.
        assert!(longest < 200, "{longest} lines");
        assert_eq!(listed(&cat, &dom), from_records(&cat, &dom));
        assert_eq!(cat.domain(&dom).entries().unwrap()[0].created_ns, 299);
    }
}
