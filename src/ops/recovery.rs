//! Recovery of what a process that died left behind, done by whoever next
//! reads the catalog: the records of dead jobs (settled by asking the engine
//! that ran the job), deletes, merges and restores cut short. The catalog
//! itself only stores and locks; what it gives recovery to read is
//! `store::leftovers`, `store::notes` and `store::delete`.
//!
//! Damaged metadata must not cost data: cleanup rests on evidence (a dead
//! job's lock file), a record that cannot be trusted is reported, and a
//! backup's images are never removed while another image of the domain
//! still reads through them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use uuid::Uuid;

use crate::engine::live;
use crate::error::{Error, ErrorCode, Result};
use crate::hv::libvirt;
use crate::image::backing::backing_file;
use crate::store::catalog::Catalog;
use crate::store::delete::DataRemoved;
use crate::store::exports;
use crate::store::locks::JobStatus;
use crate::store::notes::Owner;
use crate::store::pins;
use crate::store::secure;
use crate::store::summary::Entry;
use crate::xml::backup::{BackupRecord, BackupState};
use crate::xml::domain;

/// The catalog at the configured root, after removing what processes
/// that died left in its root: the files of restores cut short, the
/// scratch folders and registrations of exports, the temporary files of
/// pins (a domain's folder is swept when the domain is read: `tidy`).
pub(crate) fn open_catalog() -> Result<Catalog> {
    let catalog = Catalog::open()?;
    sweep_restores(&catalog);
    sweep_exports(&catalog);
    pins::sweep(&catalog);
    Ok(catalog)
}

/// Remove the scratch folders of exports whose process died (and their
/// registrations, which `exports::running` drops on the way). A scratch
/// folder is made after its export's registration and removed before it:
/// one whose export is not running now is a dead exporter's.
fn sweep_exports(catalog: &Catalog) {
    let scratch = catalog.scratch_folders();
    if scratch.is_empty() {
        return;
    }
    let Ok(running) = exports::running(catalog) else {
        return;
    };
    for s in scratch {
        // A live backup's pull-mode job keeps its scratch folder, named
        // after the backup, while the backup's job lives; a dead one's is
        // removed when its record is settled (`resolve_dead`).
        if !running.iter().any(|r| r.export == s) && !is_live_backup(catalog, &s) {
            catalog.remove_scratch(&s);
        }
    }
}

/// Whether `uuid` is a backup of the catalog whose record says running
/// (its scratch folder is its pull-mode job's).
fn is_live_backup(catalog: &Catalog, uuid: &Uuid) -> bool {
    let Ok(Some(domain)) = catalog.domain_of(uuid) else {
        return false;
    };
    catalog
        .backup(&domain, uuid)
        .record()
        .is_ok_and(|r| r.is_some_and(|r| r.state == BackupState::Running))
}

/// Records of one domain, oldest first, after settling dead jobs.
pub(crate) fn list_domain(catalog: &Catalog, domain: &Uuid) -> Result<Vec<BackupRecord>> {
    catalog.domain(domain).check()?;
    sweep_merges(catalog, domain);
    tidy(catalog, domain);
    let mut kept = Vec::new();
    for rec in catalog.domain(domain).records()? {
        if is_orphan(catalog, &rec) {
            kept.extend(resolve_dead(catalog, &rec)?);
        } else {
            kept.push(rec);
        }
    }
    Ok(kept)
}

/// What listing needs of each backup of a domain (its summary), oldest
/// first, after settling dead jobs: only their records are read.
pub(crate) fn entries(catalog: &Catalog, domain: &Uuid) -> Result<Vec<Entry>> {
    catalog.domain(domain).check()?;
    sweep_merges(catalog, domain);
    tidy(catalog, domain);
    let mut out = catalog.domain(domain).entries()?;
    let mut gone = HashSet::new();
    for e in out.iter_mut().filter(|e| e.state == BackupState::Running) {
        match reload(catalog, domain, &e.uuid)? {
            Some(rec) => *e = Entry::of(&rec),
            None => {
                gone.insert(e.uuid);
            }
        }
    }
    if !gone.is_empty() {
        out.retain(|e| !gone.contains(&e.uuid));
    }
    Ok(out)
}

/// Current record of a backup, if it is still in the catalog.
pub(crate) fn reload(
    catalog: &Catalog,
    domain: &Uuid,
    backup: &Uuid,
) -> Result<Option<BackupRecord>> {
    catalog.domain(domain).check()?;
    match catalog.backup(domain, backup).record()? {
        Some(rec) if is_orphan(catalog, &rec) => resolve_dead(catalog, &rec),
        other => Ok(other),
    }
}

/// Find a backup of any domain.
pub(crate) fn find(catalog: &Catalog, backup: &Uuid) -> Result<Option<BackupRecord>> {
    match catalog.domain_of(backup)? {
        Some(domain) => reload(catalog, &domain, backup),
        None => Ok(None),
    }
}

/// A record that says running while nobody holds its job lock (a dead job,
/// or a record that only says so: `resolve_dead` tells them apart).
fn is_orphan(catalog: &Catalog, rec: &BackupRecord) -> bool {
    rec.state == BackupState::Running && catalog.backup_of(rec).job_status() != JobStatus::Alive
}

/// A running record whose process died. The library's own copy died
/// with it: discard the record and partial files. libvirt's job (a
/// backup of a running domain) outlives it: keep the record while
/// libvirt still copies, complete it once libvirt says the job completed
/// and the targets are there, else discard it with its checkpoint.
/// Returns the record if it stays.
fn resolve_dead(catalog: &Catalog, rec: &BackupRecord) -> Result<Option<BackupRecord>> {
    let _guard = catalog.domain(&rec.domain_uuid).lock()?;
    // Re-check under the lock: the job may have finished meanwhile (a
    // failing job drops its lock file before it removes its record, both
    // under the domain's lock).
    let mut cur = match catalog.backup_of(rec).record()? {
        Some(cur) if is_orphan(catalog, &cur) => cur,
        other => return Ok(other),
    };
    let backup = catalog.backup_of(&cur);
    // The state word alone is no proof that a job ever ran (a job makes its
    // lock file before its record): a record edited to say `running` must
    // not cost its images.
    if backup.job_status() == JobStatus::NoEvidence {
        return Err(
            backup.damaged("it says 'running' but no job of this backup ever left its lock file")
        );
    }
    // The library copied every disk itself: the copy died with its
    // process, and with it the backup. A live backup's pull-mode job and
    // checkpoint are ended first, so the domain's next backup can start.
    if cur.checkpoint.is_some() {
        live::end_orphan(&cur, &catalog.scratch_path(&cur.uuid));
    }
    catalog.remove_scratch(&cur.uuid);
    live::remove_socket_dir(&cur.uuid);
    cur.state = BackupState::Failed;
    backup.remove_dead_data(&cur)?;
    backup.clear_job_files();
    Ok(None)
}

/// Remove what merges cut short by a dead process left: their temporary
/// files and markers. Skipped while anyone holds the domain's lock (a
/// merge runs under it).
fn sweep_merges(catalog: &Catalog, domain: &Uuid) {
    let dir = catalog.domain(domain);
    let markers = dir.dead_merges();
    if markers.is_empty() {
        return;
    }
    let Some(_guard) = dir.try_lock() else {
        return;
    };
    // A marker names only a merge's temporary file (or nothing), and only
    // a private regular file of ours is removed.
    for marker in markers {
        for tmp in &marker.files {
            secure::remove_own_file(tmp);
        }
        marker.forget();
    }
}

/// Whether the domain a note names exists and has one of `files` as a
/// disk; `None` when libvirt cannot say (or the note cannot be read).
fn domain_uses(owner: &Owner, files: &[PathBuf]) -> Option<bool> {
    let (uuid, uri) = match owner {
        Owner::Nobody => return Some(false),
        Owner::Domain { uuid, uri } => (uuid, uri),
        Owner::Unknown => return None,
    };
    let dom = match libvirt::open_domain(uri, uuid) {
        Ok(d) => d,
        Err(e) if e.is(ErrorCode::NoDomain) => return Some(false),
        Err(_) => return None,
    };
    let disks = domain::parse_disks(&dom.xml().ok()?).ok()?;
    Some(disks.iter().any(|d| {
        d.source
            .as_deref()
            .is_some_and(|s| files.iter().any(|f| f.as_os_str() == s.as_os_str()))
    }))
}

/// Remove the files of restores whose process died while writing them
/// (unless the note names a domain that was defined on them).
fn sweep_restores(catalog: &Catalog) {
    for note in catalog.dead_restores() {
        match domain_uses(&note.owner, &note.files) {
            None => continue, // cannot tell now: a later sweep will
            Some(true) => {}  // the domain was defined: the files are its disks
            Some(false) => {
                for f in &note.files {
                    secure::remove_own_file(f);
                }
            }
        }
        note.forget();
    }
}

/// Domain folders (see `DomainDir::stamp`) seen holding nothing to
/// tidy, one stamp per folder.
static TIDY: LazyLock<Mutex<Vec<[i64; 4]>>> = LazyLock::new(Default::default);

/// Whether a change time is more than 100 ms old. File times come from a
/// clock that ticks every 1-10 ms: a folder changed in the tick of our
/// look could change again with the same time; one older than any tick
/// cannot (a later change is stamped at least a tick later).
fn settled(secs: i64, nanos: i64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    now - (secs * 1_000_000_000 + nanos) > 100_000_000
}

/// Tidy what dead processes left in the folder of `domain`: finish the
/// deletes they cut short (`finish_deletes`), remove the temporary files
/// of atomic writes and the lock files of jobs killed before they wrote
/// their record (`DomainDir::sweep_leftovers`). Skipped while anyone holds
/// the domain's lock (deletes, jobs registering and every write in the
/// folder run under it).
fn tidy(catalog: &Catalog, domain: &Uuid) {
    // Finding them reads the whole folder (3 entries per backup: 38 % of
    // a List at 10,000); a folder that has not changed since a look found
    // nothing to do has nothing to do.
    let dir = catalog.domain(domain);
    let stamp = dir.stamp();
    if stamp.is_some_and(|s| TIDY.lock().unwrap().contains(&s)) {
        return;
    }
    let found = dir.leftovers();
    let mut done = found.is_empty();
    if !done {
        let Some(_guard) = dir.try_lock() else {
            return;
        };
        if found.deletes {
            finish_deletes(catalog, domain);
        }
        done = dir.sweep_leftovers(&found) && !found.deletes;
    }
    // Only the files of live jobs left (whose end changes the folder), or
    // nothing: remember the folder as it is now.
    if done && let Some(s) = dir.stamp().filter(|s| settled(s[2], s[3])) {
        let mut seen = TIDY.lock().unwrap();
        seen.retain(|o| o[..2] != s[..2]);
        seen.push(s);
    }
}

/// Finish the deletes of `domain` a dead process left half done (their
/// record renamed to `<backup>.deleting`, some data maybe gone): remove what
/// is left. Domain lock held. A note that cannot be read is left alone: it
/// is not listed, and whatever it names is better kept than guessed.
fn finish_deletes(catalog: &Catalog, domain: &Uuid) {
    for (_, marked) in catalog.domain(domain).pending_deletes() {
        let Ok(marked) = marked else {
            continue;
        };
        // A note is a record the delete renamed: its volumes lose their
        // files here, and a pool refresh drops them from libvirt's list.
        crate::warn_if_err!(
            marked.remove_data(&mut || {}).and_then(DataRemoved::finish),
            "cannot finish a delete a dead process began"
        );
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Refuse to remove the images of `doomed` while an image of another backup
/// of the same domain (`all`) names one of them as its backing file: the
/// records may say otherwise (a `<parent>` edited away, a re-parenting gone
/// wrong), the qcow2 headers are what a reader follows. One header read per
/// image of the domain; only direct backing files are checked (an image
/// reading through a file no record names was re-parented on purpose, with
/// `DELETE_METADATA_ONLY`).
pub(crate) fn check_no_backing_users(all: &[BackupRecord], doomed: &[&BackupRecord]) -> Result<()> {
    let gone: Vec<(PathBuf, &BackupRecord)> = doomed
        .iter()
        .flat_map(|r| r.disks.iter().map(move |d| (canonical(&d.target), *r)))
        .collect();
    let kept = all
        .iter()
        .filter(|r| !doomed.iter().any(|d| d.uuid == r.uuid));
    for r in kept {
        for d in &r.disks {
            let Some(backing) = backing_file(&d.target) else {
                continue;
            };
            let backing = canonical(&backing);
            if let Some((_, owner)) = gone.iter().find(|(p, _)| *p == backing) {
                return Err(Error::operation_invalid(format!(
                    "backup '{}' cannot be deleted: image '{}' of backup '{}' reads through its file '{}' (the catalog's records do not say so; check them)",
                    owner.uuid,
                    d.target.display(),
                    r.uuid,
                    backing.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::xml::backup::BackupRecord;

    fn record(domain: Uuid, target: PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord::sample(domain, target, state)
    }

    /// A file as the library creates its images: private to its owner.
    fn write_private(path: &std::path::Path, data: &[u8]) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .mode(0o600)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    }

    #[test]
    fn dead_jobs_are_discarded_with_their_files_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();

        // A job whose process died: record says running, nobody holds its lock.
        let dead_target = dir.path().join("dead.qcow2");
        write_private(&dead_target, b"partial");
        let dead = record(dom, dead_target.clone(), BackupState::Running);
        let b = cat.backup_of(&dead);
        b.lock_job(cat.domain(&dom).claim_job().unwrap())
            .unwrap()
            .leave_as_killed();
        b.write_record(&dead).unwrap();

        // A job still running (we hold its lock).
        let live_target = dir.path().join("live.qcow2");
        write_private(&live_target, b"in progress");
        let live = record(dom, live_target.clone(), BackupState::Running);
        let b = cat.backup_of(&live);
        let lock = b.lock_job(cat.domain(&dom).claim_job().unwrap()).unwrap();
        b.write_record(&live).unwrap();

        // A completed backup.
        let done_target = dir.path().join("done.qcow2");
        write_private(&done_target, b"complete");
        let done = record(dom, done_target.clone(), BackupState::Completed);
        cat.backup_of(&done).write_record(&done).unwrap();

        let listed: Vec<Uuid> = list_domain(&cat, &dom)
            .unwrap()
            .iter()
            .map(|r| r.uuid)
            .collect();
        assert!(!listed.contains(&dead.uuid));
        assert!(listed.contains(&live.uuid) && listed.contains(&done.uuid));
        assert!(!dead_target.exists());
        assert!(live_target.exists() && done_target.exists());

        // Once the live job's process "dies" too, it goes the same way.
        lock.leave_as_killed();
        assert_eq!(list_domain(&cat, &dom).unwrap().len(), 1);
        assert!(!live_target.exists());
        assert!(find(&cat, &done.uuid).unwrap().is_some());
    }

    #[test]
    fn a_running_record_without_a_job_is_reported_not_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let target = dir.path().join("t.qcow2");
        std::fs::write(&target, b"data").unwrap();
        // Says running, but no job ever took its lock.
        let rec = record(dom, target.clone(), BackupState::Running);
        cat.backup_of(&rec).write_record(&rec).unwrap();
        let e = list_domain(&cat, &dom).unwrap_err();
        assert!(e.message.contains("damaged") && e.message.contains(&rec.uuid.to_string()));
        assert!(find(&cat, &rec.uuid).is_err());
        assert!(target.exists());
    }

    #[test]
    fn a_delete_cut_short_is_finished_by_the_next_lister() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let target = dir.path().join("t.qcow2");
        std::fs::write(&target, b"data").unwrap();
        let rec = record(dom, target.clone(), BackupState::Completed);
        cat.backup_of(&rec).write_record(&rec).unwrap();
        drop(cat.backup_of(&rec).mark_deleting(&rec).unwrap()); // and the process dies
        assert!(list_domain(&cat, &dom).unwrap().is_empty());
        assert!(!target.exists());
        assert!(cat.domain(&dom).pending_deletes().is_empty());
    }
}
