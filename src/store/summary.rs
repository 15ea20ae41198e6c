//! The listing summary of one domain: what listing needs of each record
//! (uuid, creation order, parent, state), so that List, ListChildren and
//! Delete never parse the records, whose embedded domain definition is most
//! of their size and of their parsing time.
//!
//! `<domain>/summary` is a header line, then one line per change, appended
//! under the domain lock:
//! - `+ <uuid> <created_ns> <parent|-> <state>`: the record as written;
//! - `- <uuid>`: the record removed;
//! - `? <uuid>`: the record is about to change.
//!
//! The `?` line is synced before the record changes; the line saying what
//! changed is not. A crash in between leaves a `?` without an answer, and
//! the reader re-reads that one record. A last line cut short by a crash (no
//! newline) was never synced, so nothing was done after it: it is dropped.
//! Anything else that does not parse, or a missing file, makes the reader
//! rebuild the summary from the records (under the domain lock). The file is
//! rewritten whole (atomically) when the log grows past twice its entries.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

use uuid::Uuid;

use super::folder::Folder;
use super::names;
use crate::error::{Error, Result};
use crate::xml::backup::{BackupRecord, BackupState};

/// The file, in a domain's folder.
const SUMMARY_FILE: &str = names::SUMMARY;
/// The header names the number of entries when the file was last written
/// whole: the log is compacted once it is much longer than that.
const MAGIC: &str = "LVBKSUM1 ";

/// What listing needs of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub uuid: Uuid,
    pub created_ns: u64,
    pub parent: Option<Uuid>,
    pub state: BackupState,
}

impl Entry {
    pub fn of(rec: &BackupRecord) -> Entry {
        Entry {
            uuid: rec.uuid,
            created_ns: rec.created_ns,
            parent: rec.parent,
            state: rec.state,
        }
    }

    fn line(&self) -> String {
        let parent = self.parent.map_or("-".to_string(), |p| p.to_string());
        format!(
            "+ {} {} {} {}\n",
            self.uuid,
            self.created_ns,
            parent,
            self.state.as_str()
        )
    }
}

/// A summary as read: the entries and the records to re-read (when to
/// compact the log is read from its header and size: `wants_compaction`).
pub(crate) struct Replayed {
    pub entries: Entries,
    pub pending: Vec<Uuid>,
}

/// Entries by UUID, kept in the order they were first written (nearly the
/// order of creation, so that sorting them afterwards is cheap).
#[derive(Default)]
pub(crate) struct Entries {
    slots: Vec<Option<Entry>>,
    at: HashMap<Uuid, usize, BuildUuidHasher>,
}

impl Entries {
    fn with_capacity(n: usize) -> Entries {
        Entries {
            slots: Vec::with_capacity(n),
            at: HashMap::with_capacity_and_hasher(n, BuildUuidHasher),
        }
    }

    pub(crate) fn insert(&mut self, e: Entry) {
        match self.at.get(&e.uuid) {
            Some(&i) => self.slots[i] = Some(e),
            None => {
                self.at.insert(e.uuid, self.slots.len());
                self.slots.push(Some(e));
            }
        }
    }

    pub(crate) fn remove(&mut self, u: &Uuid) {
        if let Some(i) = self.at.remove(u) {
            self.slots[i] = None;
        }
    }

    // Only the tests look an entry up by UUID.
    #[cfg(test)]
    pub(crate) fn get(&self, u: &Uuid) -> Option<&Entry> {
        self.at.get(u).and_then(|&i| self.slots[i].as_ref())
    }

    // Only the tests count the entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    pub(crate) fn into_vec(self) -> Vec<Entry> {
        self.slots.into_iter().flatten().collect()
    }
}

impl FromIterator<Entry> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Entries {
        let mut out = Entries::default();
        for e in iter {
            out.insert(e);
        }
        out
    }
}

/// UUIDs of backups are random: a few of their bytes are hash enough, and
/// far cheaper than SipHash over ten thousand of them per listing.
#[derive(Default, Clone, Copy)]
pub(crate) struct BuildUuidHasher;

#[derive(Default)]
pub(crate) struct UuidHasher(u64);

impl std::hash::BuildHasher for BuildUuidHasher {
    type Hasher = UuidHasher;
    fn build_hasher(&self) -> UuidHasher {
        UuidHasher(0)
    }
}

impl std::hash::Hasher for UuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

/// One line of the log; `None` if it does not parse.
enum Line {
    Upsert(Entry),
    Remove(Uuid),
    Pending(Uuid),
}

fn parse_line(line: &str) -> Option<Line> {
    let mut f = line.split(' ');
    let kind = f.next()?;
    let uuid = Uuid::parse_str(f.next()?).ok()?;
    let out = match kind {
        "+" => {
            let created_ns = f.next()?.parse().ok()?;
            let parent = match f.next()? {
                "-" => None,
                p => Some(Uuid::parse_str(p).ok()?),
            };
            let state = BackupState::parse(f.next()?).ok()?;
            Line::Upsert(Entry {
                uuid,
                created_ns,
                parent,
                state,
            })
        }
        "-" => Line::Remove(uuid),
        "?" => Line::Pending(uuid),
        _ => return None,
    };
    f.next().is_none().then_some(out)
}

/// Replay a summary's text; `None` if it cannot be trusted (rebuild it).
pub(crate) fn replay(text: &str) -> Option<Replayed> {
    let (count, body) = text.strip_prefix(MAGIC)?.split_once('\n')?;
    count.parse::<usize>().ok()?;
    // A last line without its newline never reached the disk whole.
    let complete = &body[..body.rfind('\n').map_or(0, |i| i + 1)];
    // About 90 bytes a line.
    let mut entries = Entries::with_capacity(complete.len() / 80);
    let mut pending: HashMap<Uuid, ()> = HashMap::new();
    for line in complete.lines() {
        match parse_line(line)? {
            Line::Upsert(e) => {
                pending.remove(&e.uuid);
                entries.insert(e);
            }
            Line::Remove(u) => {
                pending.remove(&u);
                entries.remove(&u);
            }
            Line::Pending(u) => {
                pending.insert(u, ());
            }
        }
    }
    Some(Replayed {
        entries,
        pending: pending.into_keys().collect(),
    })
}

// Only the tests look at the file itself (the store goes through `Folder`).
#[cfg(test)]
pub(crate) fn path(domain_dir: &std::path::Path) -> std::path::PathBuf {
    domain_dir.join(SUMMARY_FILE)
}

/// Read a domain's summary; `Ok(None)` when it is missing or untrusted.
pub(crate) fn read(domain_dir: &Folder) -> Result<Option<Replayed>> {
    match domain_dir.read(SUMMARY_FILE) {
        // Not UTF-8: damaged, rebuild.
        Ok(text) => Ok(String::from_utf8(text).ok().and_then(|t| replay(&t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(
            "cannot read backup summary",
            &domain_dir.join(SUMMARY_FILE),
            e,
        )),
    }
}

/// The whole summary of these entries (a rebuild or a compaction), to be
/// written atomically under the domain lock.
pub(crate) fn render<'a>(entries: impl Iterator<Item = &'a Entry>) -> String {
    let entries: Vec<&Entry> = entries.collect();
    let mut text = format!("{MAGIC}{}\n", entries.len());
    for e in entries {
        text.push_str(&e.line());
    }
    text
}

/// Append lines to an existing summary; with `sync`, they are on disk when
/// this returns. A missing summary is left missing (the next reader
/// rebuilds it from the records). Domain lock held.
fn append(domain_dir: &Folder, text: &str, sync: bool) -> Result<bool> {
    let p = domain_dir.join(SUMMARY_FILE);
    let f = match domain_dir.open(SUMMARY_FILE, OFlags::RDWR | OFlags::APPEND) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("cannot open backup summary", &p, e)),
    };
    let io = |e| Error::io("cannot write backup summary", &p, e);
    let len = f.metadata().map_err(io)?.len();
    let mut last = [b'\n'];
    if len > 0 {
        f.read_exact_at(&mut last, len - 1).map_err(io)?;
    }
    if last[0] != b'\n' {
        // A line cut short by a crash would swallow this one: start over
        // from the records.
        return domain_dir.remove(SUMMARY_FILE).map(|()| false).map_err(io);
    }
    (&f).write_all(text.as_bytes()).map_err(io)?;
    if sync {
        f.sync_data().map_err(io)?;
    }
    Ok(true)
}

/// Before a record changes: note it, synced.
/// Each returns false, writing nothing, when the summary is missing (or
/// ends in a cut line, which is then removed): the caller rewrites it from
/// the records first.
pub(crate) fn note_pending(domain_dir: &Folder, backup: &Uuid) -> Result<bool> {
    append(domain_dir, &format!("? {backup}\n"), true)
}

/// After a record was written.
pub(crate) fn note_written(domain_dir: &Folder, entry: &Entry) -> Result<bool> {
    append(domain_dir, &entry.line(), false)
}

/// After a record was removed.
pub(crate) fn note_removed(domain_dir: &Folder, backup: &Uuid) -> Result<bool> {
    append(domain_dir, &format!("- {backup}\n"), false)
}

/// Whether the log has grown to about twice the lines of its entries (plus
/// some slack): read from its header and size, not by reading it.
pub(crate) fn wants_compaction(domain_dir: &Folder) -> bool {
    let Ok(f) = domain_dir.open(SUMMARY_FILE, OFlags::RDONLY) else {
        return false;
    };
    let mut head = [0u8; 32];
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    let count = std::str::from_utf8(&head[..n]).ok().and_then(|h| {
        h.strip_prefix(MAGIC)?
            .split('\n')
            .next()?
            .parse::<u64>()
            .ok()
    });
    let len = f.metadata().map_or(0, |m| m.len());
    // A `+` line is about 110 bytes.
    count.is_some_and(|c| len > 2 * 110 * (c + 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: Option<Uuid>, state: BackupState) -> Entry {
        Entry {
            uuid: Uuid::new_v4(),
            created_ns: 42,
            parent,
            state,
        }
    }

    #[test]
    fn replay_applies_changes_in_order_and_reports_unanswered_notes() {
        let a = entry(None, BackupState::Completed);
        let b = entry(Some(a.uuid), BackupState::Running);
        let c = entry(Some(b.uuid), BackupState::Completed);
        let mut b_done = b;
        b_done.state = BackupState::Completed;
        let text = format!(
            "{MAGIC}0\n? {}\n{}? {}\n{}? {}\n{}? {}\n{}? {}\n- {}\n? {}\n",
            a.uuid,
            a.line(),
            b.uuid,
            b.line(),
            b.uuid,
            b_done.line(),
            c.uuid,
            c.line(),
            c.uuid,
            c.uuid,
            a.uuid
        );
        let r = replay(&text).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries.get(&b.uuid), Some(&b_done));
        assert!(r.entries.get(&c.uuid).is_none());
        assert_eq!(r.pending, vec![a.uuid]);
    }

    #[test]
    fn a_cut_line_is_dropped_and_anything_else_wrong_is_untrusted() {
        let a = entry(None, BackupState::Completed);
        let whole = format!("{MAGIC}1\n{}", a.line());
        let cut = format!("{whole}? {}", &a.uuid.to_string()[..10]);
        assert_eq!(replay(&cut).unwrap().entries.len(), 1);
        assert!(replay(&format!("{whole}? nonsense\n")).is_none());
        assert!(replay(&format!("{whole}+ {} 1 - done\n", a.uuid)).is_none());
        assert!(replay(&format!("{whole}+ {} 1 - completed x\n", a.uuid)).is_none());
        assert!(replay(&whole.replace("LVBKSUM1", "LVBKSUM9")).is_none());
        assert!(replay("").is_none());
    }
}
