//! The catalog's layout: the name of every file and folder the library
//! makes under the root, built here and recognised here, nowhere else.
//!
//! ```text
//! <root>/.lock                            catalog lock (`locks::CatalogLock`)
//! <root>/<domain>/                        a domain's folder (`DomainDir`); its flock
//!                                         is the domain lock (`locks::DomainLock`)
//! <root>/<domain>/<backup>.xml            a backup's record (`records`)
//! <root>/<domain>/<backup>.lock           the backup's job lock (`locks::JobLock`)
//! <root>/<domain>/<backup>.cancel         a request to stop that job (`CancelMarker`)
//! <root>/<domain>/<backup>.deleting       the record of a backup being deleted (`delete`)
//! <root>/<domain>/<backup>/               default folder of the backup's images
//!                                         (named `<domain>/<backup>/<file>`, relative
//!                                         to the root, in what the catalog writes:
//!                                         `check_data_path`, `paths`)
//! <root>/<domain>/<backup>.index/<disk>.b3  digest index of each disk (`index`)
//! <root>/<domain>/summary                 the listing summary (`summary`)
//! <root>/<domain>/default-target.xml      the persistent default target
//! <root>/<domain>/merging/<backup>.<disk> marker of a running merge (`notes`)
//! <root>/.domain-locks/<domain>           the domain's job lock (`locks::DomainJobLock`)
//! <root>/.domain-locks/.foreground        held shared by every domain job
//! <root>/.domain-locks/.waiting           held shared while blocked on a domain lock
//! <root>/.restoring-<id>                  note of a restore's new files (`notes`)
//! <root>/.scratch-<export>/               an export's scratch files
//! <root>/.exports/<export>[.<backup>]     a running export (`exports`)
//! <root>/.pins/<backup>-<domain>-<disk>.xml  a pin (`pins`)
//! <root>/.history/jobs.jsonl              the job history, one JSON line per event (`history`)
//! <root>/.history/jobs.jsonl.1            the history before the last rotation
//! <root>/.history/.lock                   flock of the history's writers and readers
//! <root>/<domain>/<backup>.progress       a running job's figures for other processes
//! <folder>/.<name>.tmp                    temporary file of an atomic write of <name>
//! ```
//!
//! `<domain>`, `<backup>`, `<export>` and `<id>` are UUIDs as the library
//! writes them (lower case, hyphenated); a name that only looks like one is
//! not the library's (see `exact_uuid`), and crash cleanup leaves it alone.

use uuid::Uuid;

/// In the root: the catalog lock.
pub(crate) const CATALOG_LOCK: &str = ".lock";
/// In the root: the folder of the domains' job locks.
pub(crate) const DOMAIN_LOCKS: &str = ".domain-locks";
/// In `DOMAIN_LOCKS`, where no domain UUID can take its name: held shared
/// by every running job a user waits for, probed by housekeeping.
pub(crate) const FOREGROUND: &str = ".foreground";
/// In `DOMAIN_LOCKS`: held shared by every thread blocked on a domain lock.
pub(crate) const WAITING: &str = ".waiting";
/// In the root: the folder of running exports' files.
pub(crate) const EXPORTS: &str = ".exports";
/// In the root: the folder of pins.
pub(crate) const PINS: &str = ".pins";
/// In the root: the folder of the job history (`history`).
pub(crate) const HISTORY: &str = ".history";
/// In `HISTORY`: the history file appended to.
pub(crate) const HISTORY_FILE: &str = "jobs.jsonl";
/// In `HISTORY`: the history file before the last rotation.
pub(crate) const HISTORY_OLD: &str = "jobs.jsonl.1";
/// In `HISTORY`: the lock of the history's writers (exclusive) and
/// readers (shared).
pub(crate) const HISTORY_LOCK: &str = ".lock";
/// In a domain's folder: the listing summary.
pub(crate) const SUMMARY: &str = "summary";
/// In a domain's folder: the persistent default target.
pub(crate) const DEFAULT_TARGET: &str = "default-target.xml";
/// In a domain's folder: the folder of running merges' markers.
pub(crate) const MERGING: &str = "merging";

/// Name prefix (in the root) of the notes of restores writing new files.
const RESTORING: &str = ".restoring-";
/// Name prefix (in the root) of exports' scratch folders.
const SCRATCH: &str = ".scratch-";
/// Extension of a record whose backup is being deleted.
const DELETING: &str = "deleting";

/// A UUID as the library writes it in a file name, and only that.
pub(crate) fn exact_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok().filter(|u| u.to_string() == s)
}

/// A domain's folder in the root, and its job lock in `DOMAIN_LOCKS`.
pub(crate) fn domain(domain: &Uuid) -> String {
    domain.to_string()
}

/// The domain a folder of the root stands for (any spelling of a UUID).
pub(crate) fn parse_domain(name: &str) -> Option<Uuid> {
    Uuid::parse_str(name).ok()
}

/// A backup's record, in its domain's folder.
pub(crate) fn record(backup: &Uuid) -> String {
    format!("{backup}.xml")
}

/// The backup a record's name stands for.
pub(crate) fn parse_record(name: &str) -> Option<Uuid> {
    name.strip_suffix(".xml").and_then(exact_uuid)
}

/// A backup's record while the backup is being deleted.
pub(crate) fn deleting(backup: &Uuid) -> String {
    format!("{backup}.{DELETING}")
}

/// Whether a name of a domain's folder is read as a cut-short delete's
/// note (any name with that extension: each is read as a record).
pub(crate) fn is_deleting(name: &str) -> bool {
    std::path::Path::new(name)
        .extension()
        .is_some_and(|x| x == DELETING)
}

/// The job lock file of a backup, in its domain's folder.
pub(crate) fn job_lock(backup: &Uuid) -> String {
    format!("{backup}.lock")
}

/// The cancel request of a backup's job, in its domain's folder.
pub(crate) fn cancel(backup: &Uuid) -> String {
    format!("{backup}.cancel")
}

/// The figures a backup's running job publishes, in its domain's folder.
pub(crate) fn progress(backup: &Uuid) -> String {
    format!("{backup}.progress")
}

/// The temporary file `progress` is written to before its rename.
pub(crate) fn progress_tmp(backup: &Uuid) -> String {
    tmp(&progress(backup))
}

/// The default folder of a backup's images, in its domain's folder.
pub(crate) fn data_dir(backup: &Uuid) -> String {
    backup.to_string()
}

/// Check that `rel` names, relative to the root, a file (or the folder
/// itself) of a backup's default folder of `domain`, as records, qcow2
/// headers and merge markers name it (`paths`):
/// `<domain>/<backup>[/<name>...]`, the domain's and the backup's UUIDs as
/// the library writes them, then plain names (none empty, `.` or `..`), so
/// that it names nothing outside that backup's folder. The error says why
/// it is not.
pub(crate) fn check_data_path(domain: &Uuid, rel: &str) -> Result<(), &'static str> {
    let mut parts = rel.split('/');
    if parts.next() != Some(self::domain(domain).as_str()) {
        return Err("it does not start with the folder of the record's domain");
    }
    if parts.next().and_then(exact_uuid).is_none() {
        return Err("its second name is not the folder of a backup");
    }
    match parts.any(|p| p.is_empty() || p == "." || p == "..") {
        true => Err("it has an empty, '.' or '..' component"),
        false => Ok(()),
    }
}

/// The folder of a backup's digest indexes, in its domain's folder.
pub(crate) fn index_dir(backup: &Uuid) -> String {
    format!("{backup}.index")
}

/// The digest index of one disk, in its backup's index folder.
pub(crate) fn index_file(disk: &str) -> String {
    format!("{disk}.b3")
}

/// The marker of a merge into `disk` of `child`, in `MERGING`.
pub(crate) fn merge_marker(child: &Uuid, disk: &str) -> String {
    format!("{child}.{disk}")
}

/// The temporary file of an atomic write of `name`, in the same folder.
pub(crate) fn tmp(name: &str) -> String {
    format!(".{name}.tmp")
}

/// A new note of a restore's files, in the root.
pub(crate) fn new_restore_note() -> String {
    format!("{RESTORING}{}", Uuid::new_v4())
}

/// Whether a name of the root is a restore's note.
pub(crate) fn is_restore_note(name: &[u8]) -> bool {
    name.starts_with(RESTORING.as_bytes())
}

/// An export's scratch folder, in the root.
pub(crate) fn scratch(export: &Uuid) -> String {
    format!("{SCRATCH}{export}")
}

/// The export a scratch folder's name stands for.
pub(crate) fn parse_scratch(name: &str) -> Option<Uuid> {
    name.strip_prefix(SCRATCH).and_then(exact_uuid)
}

/// An export's file in `EXPORTS`: `<export>` for an export of a domain,
/// `<export>.<backup>` for one of a stored backup.
pub(crate) fn export_file(export: &Uuid, backup: Option<&Uuid>) -> String {
    match backup {
        Some(b) => format!("{export}.{b}"),
        None => export.to_string(),
    }
}

/// The export (and stored backup) a name of `EXPORTS` stands for; `None`
/// for a name the library does not make.
pub(crate) fn parse_export_file(name: &str) -> Option<(Uuid, Option<Uuid>)> {
    match name.split_once('.') {
        Some((e, b)) => Some((exact_uuid(e)?, Some(exact_uuid(b)?))),
        None => Some((exact_uuid(name)?, None)),
    }
}

/// A pin's file in `PINS`.
pub(crate) fn pin_file(backup: &Uuid, domain: &Uuid, disk: &str) -> String {
    format!("{backup}-{domain}-{disk}.xml")
}

/// Whether `name` is the temporary file of a pin's atomic write,
/// `.<backup>-<domain>-<disk>.xml.tmp`.
pub(crate) fn is_pin_tmp(name: &str) -> bool {
    let Some(inner) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".xml.tmp"))
    else {
        return false;
    };
    let uuid = |s: &str| exact_uuid(s).is_some();
    inner.len() > 74
        && inner.is_char_boundary(36)
        && inner.is_char_boundary(74)
        && uuid(&inner[..36])
        && &inner[36..37] == "-"
        && uuid(&inner[37..73])
        && &inner[73..74] == "-"
}

/// What a name in a domain's folder is, for crash cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InDomain {
    /// `<backup>.deleting`: a delete cut short.
    Deleting,
    /// `.<name>.tmp` of a file the library writes there atomically.
    Temp,
    /// `<backup>.lock`, `<backup>.cancel`, `<backup>.progress` or its
    /// temporary file: a job's files.
    JobFile(Uuid),
    /// Anything else (records, folders, names the library does not make).
    Other,
}

/// What `name`, in a domain's folder, is.
pub(crate) fn in_domain(name: &str) -> InDomain {
    if let Some(stem) = name.strip_suffix(&format!(".{DELETING}")) {
        return match exact_uuid(stem) {
            Some(_) => InDomain::Deleting,
            None => InDomain::Other,
        };
    }
    if let Some(inner) = name.strip_prefix('.').and_then(|x| x.strip_suffix(".tmp")) {
        if let Some(u) = inner.strip_suffix(".progress").and_then(exact_uuid) {
            // Written without the domain's lock: only a dead job's goes.
            return InDomain::JobFile(u);
        }
        let ours = [SUMMARY, DEFAULT_TARGET].contains(&inner) || parse_record(inner).is_some();
        return match ours {
            true => InDomain::Temp,
            false => InDomain::Other,
        };
    }
    [".lock", ".cancel", ".progress"]
        .iter()
        .find_map(|x| name.strip_suffix(x).and_then(exact_uuid))
        .map_or(InDomain::Other, InDomain::JobFile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_what_they_were_made_for() {
        let (b, d) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(parse_record(&record(&b)), Some(b));
        assert_eq!(parse_domain(&domain(&d)), Some(d));
        assert_eq!(in_domain(&deleting(&b)), InDomain::Deleting);
        assert!(is_deleting(&deleting(&b)));
        assert_eq!(in_domain(&job_lock(&b)), InDomain::JobFile(b));
        assert_eq!(in_domain(&cancel(&b)), InDomain::JobFile(b));
        assert_eq!(in_domain(&progress(&b)), InDomain::JobFile(b));
        assert_eq!(in_domain(&progress_tmp(&b)), InDomain::JobFile(b));
        assert_eq!(in_domain(&tmp(&record(&b))), InDomain::Temp);
        assert_eq!(in_domain(&tmp(SUMMARY)), InDomain::Temp);
        assert_eq!(in_domain(&tmp(DEFAULT_TARGET)), InDomain::Temp);
        assert_eq!(in_domain(&record(&b)), InDomain::Other);
        assert_eq!(in_domain(".notes.tmp"), InDomain::Other);
        assert_eq!(in_domain("x.lock"), InDomain::Other);
        let upper = b.to_string().to_uppercase();
        assert_eq!(in_domain(&format!("{upper}.lock")), InDomain::Other);
        assert_eq!(parse_scratch(&scratch(&b)), Some(b));
        assert_eq!(parse_export_file(&export_file(&b, None)), Some((b, None)));
        assert_eq!(
            parse_export_file(&export_file(&b, Some(&d))),
            Some((b, Some(d)))
        );
        assert!(is_restore_note(new_restore_note().as_bytes()));
        assert!(is_pin_tmp(&tmp(&pin_file(&b, &d, "vda"))));
        assert!(!is_pin_tmp(&pin_file(&b, &d, "vda")));
    }

    #[test]
    fn data_paths_stay_in_their_backups_folder() {
        let (b, d) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(check_data_path(&d, &format!("{d}/{b}/vda.qcow2")), Ok(()));
        assert_eq!(check_data_path(&d, &format!("{d}/{b}")), Ok(()));
        let upper = b.to_string().to_uppercase();
        for bad in [
            format!("{b}/{b}/vda.qcow2"),
            format!("{d}/{upper}/vda.qcow2"),
            format!("{d}/{b}.index/vda.b3"),
            format!("{d}/{b}/../../etc/shadow"),
            format!("{d}/{b}/./vda"),
            format!("{d}/{b}//vda"),
            format!("{d}/{b}/"),
            format!("{d}"),
            String::new(),
        ] {
            assert!(check_data_path(&d, &bad).is_err(), "{bad}");
        }
    }
}
