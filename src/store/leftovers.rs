//! What recovery reads of a domain's folder besides records and notes: the
//! files a process killed midway leaves there (temporary files of atomic
//! writes, the lock file of a job killed before its record, cancel requests
//! nobody will read, cut-short deletes), and the folder's stamp that tells
//! whether it changed since it was last found tidy. They are swept through
//! the folder's descriptor, only by the names the library makes (`names`),
//! and only under the lock their writers hold (the domain's).
//!
//! The other inputs of recovery: `DomainDir::pending_deletes` (`delete`),
//! `Catalog::dead_restores` and `DomainDir::dead_merges` (`notes`),
//! `BackupDir::job_status` (`locks`).

use uuid::Uuid;

use super::domain::DomainDir;
use super::locks;
use super::names::{self, InDomain};
use super::records;
use super::secure;
use crate::xml::backup::BackupState;

/// What a process may have left in a domain's folder (`DomainDir::leftovers`).
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Whether there are `<backup>.deleting` notes (deletes cut short).
    pub deletes: bool,
    /// Temporary files of atomic writes cut short: `.<backup>.xml.tmp`,
    /// `.summary.tmp`, `.default-target.xml.tmp`.
    pub temps: Vec<String>,
    /// Backups with a `<backup>.lock`, `<backup>.cancel` or
    /// `<backup>.progress` file (or its temporary file): a running job's, or one a job killed before it wrote its record (or after it
    /// settled it) left.
    pub jobs: Vec<Uuid>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        !self.deletes && self.temps.is_empty() && self.jobs.is_empty()
    }
}

impl DomainDir {
    /// What the folder holds besides its records, summary, indexes and data
    /// folders that a process may have left behind, from one read of the
    /// folder (see `Leftovers`).
    pub fn leftovers(&self) -> Leftovers {
        let mut out = Leftovers::default();
        let Ok(Some(dir)) = self.folder() else {
            return out;
        };
        for n in dir.names().unwrap_or_default() {
            let Some(n) = n.to_str() else { continue };
            match names::in_domain(n) {
                InDomain::Deleting => out.deletes = true,
                InDomain::Temp => out.temps.push(n.to_string()),
                InDomain::JobFile(u) if !out.jobs.contains(&u) => out.jobs.push(u),
                InDomain::JobFile(_) | InDomain::Other => {}
            }
        }
        out
    }

    /// Remove the temporary files and stale job files of `found` (see
    /// `Leftovers`): only names the library makes, regular files of ours,
    /// through the folder's descriptor. Never the lock file of a live job,
    /// nor that of a record that says running (the evidence `ops::recovery`
    /// settles a dead job's record on). Call with the domain's lock held:
    /// every atomic write and every new job's lock file in the folder is
    /// made under it. Returns whether nothing is left but live jobs' files.
    pub fn sweep_leftovers(&self, found: &Leftovers) -> bool {
        let Ok(Some(dir)) = self.folder() else {
            return true;
        };
        let own = |name: &str| dir.stat(name).is_ok_and(|st| secure::own_private_file(&st));
        let mut settled = true;
        let mut removed = false;
        for t in &found.temps {
            if own(t) && dir.remove(t).is_ok() {
                removed = true;
            } else {
                settled = false;
            }
        }
        for u in &found.jobs {
            if locks::job_alive(&dir, u) {
                continue;
            }
            match records::read_record(&dir, &names::record(u)) {
                Ok(Some(r)) if r.state == BackupState::Running => {
                    settled = false;
                    continue;
                }
                Ok(_) => {}
                Err(_) => {
                    settled = false;
                    continue;
                }
            }
            let files = [names::job_lock(u), names::cancel(u), names::progress(u)];
            for name in files.into_iter().chain([names::progress_tmp(u)]) {
                if own(&name) && dir.remove(&name).is_ok() {
                    removed = true;
                }
            }
        }
        if removed {
            dir.sync();
            crate::warn_if_err!(
                records::drop_empty_summary(&dir),
                "cannot drop an empty summary"
            );
            drop(dir);
            self.drop_if_empty();
        }
        settled
    }

    /// The folder's identity and change time (device, inode, ctime
    /// seconds, nanoseconds): renaming or removing anything in the folder
    /// changes it, and nobody can set it back.
    pub fn stamp(&self) -> Option<[i64; 4]> {
        let st = self.folder().ok()??.own_stat().ok()?;
        Some([
            st.st_dev as i64,
            st.st_ino as i64,
            st.st_ctime,
            st.st_ctime_nsec as i64,
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::catalog::Catalog;
    use crate::xml::backup::BackupRecord;

    fn record(domain: Uuid, target: PathBuf, state: BackupState) -> BackupRecord {
        BackupRecord::sample(domain, target, state)
    }

    #[test]
    fn leftovers_of_killed_writers_go_and_live_jobs_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let dom = Uuid::new_v4();
        let domain = cat.domain(&dom);
        let keep = record(dom, dir.path().join("k"), BackupState::Completed);
        cat.backup_of(&keep).write_record(&keep).unwrap();
        let folder = domain.path();
        // A live job, and a running record whose job died: both keep their
        // lock files (the second is what recovery settles it by).
        let dead = record(dom, dir.path().join("d"), BackupState::Running);
        let b = cat.backup_of(&dead);
        b.lock_job(domain.claim_job().unwrap())
            .unwrap()
            .leave_as_killed();
        b.write_record(&dead).unwrap();
        let live = record(dom, dir.path().join("l"), BackupState::Running);
        let b = cat.backup_of(&live);
        let live_lock = b.lock_job(domain.claim_job().unwrap()).unwrap();
        b.write_record(&live).unwrap();
        // A job killed before its record, one after it completed it, an
        // atomic write cut short, a cancel request nobody will read.
        let (early, late, gone) = (Uuid::new_v4(), keep.uuid, Uuid::new_v4());
        for name in [
            format!("{early}.lock"),
            format!("{late}.lock"),
            format!(".{gone}.xml.tmp"),
            ".summary.tmp".to_string(),
            format!("{gone}.cancel"),
        ] {
            std::fs::write(folder.join(&name), b"").unwrap();
            std::fs::set_permissions(
                folder.join(&name),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        // Not names the library makes: left alone.
        std::fs::write(folder.join(".notes.tmp"), b"").unwrap();
        std::fs::write(folder.join("x.lock"), b"").unwrap();
        let found = domain.leftovers();
        assert_eq!(found.temps.len(), 2);
        assert_eq!(found.jobs.len(), 5);
        let _g = domain.lock().unwrap();
        assert!(
            !domain.sweep_leftovers(&found),
            "the dead job is not settled"
        );
        let mut left: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".xml") && n != "summary")
            .collect();
        left.sort();
        let mut want = vec![
            format!("{}.lock", live.uuid),
            format!("{}.lock", dead.uuid),
            ".notes.tmp".to_string(),
            "x.lock".to_string(),
        ];
        want.sort();
        assert_eq!(left, want);
        drop(live_lock);
    }
}
