//! The digest index kept with every backup: one BLAKE3 digest per fixed-size
//! chunk of each disk as it was at backup time. An incremental backup
//! compares the source against its parent's index instead of re-reading the
//! parent's chain, and an in-place restore compares the disk against it.
//!
//! Why a cryptographic hash: the guest controls the data. With a fast
//! non-cryptographic hash (xxh3 hashed the same 1 GiB in about a fifth of
//! BLAKE3's time here), a compromised guest could plant blocks that collide
//! with what the backup holds, so that an in-place restore leaves them in
//! place, or an incremental skips them. BLAKE3 rules that out and still
//! hashes 1 GiB in ~70 ms per core here, less than reading it costs.
//!
//! Flat layout (`LVBKDIG1`, a full backup's): the magic, the chunk size and
//! the disk's virtual size (little-endian u64 each), then one 32-byte digest
//! per chunk. An all-zero chunk is stored as 32 zero bytes instead of its
//! hash: zero chunks need no hashing, and 32 zero bytes is not a BLAKE3
//! output one will meet.
//!
//! Delta layout (`LVBKDIG2`, an incremental's): the same 24 bytes, then the
//! parent's index as a path relative to this index's folder (u16 length,
//! then `../<backup>.index/<disk>.b3`), then one 40-byte entry (chunk number
//! as u64, digest) per chunk whose digest differs from the parent's, in
//! increasing order, then the number of entries (u64). A chunk without an
//! entry has the parent's digest (zeroes past the parent's end). A year of
//! daily 1 % changes of a 100 GiB disk costs ~0.6 MiB a day instead of 50.
//! A delta's parent may itself be a delta, up to [`MAX_DEPTH`] levels and
//! within a byte budget (`DELTA_SHARE`); beyond that a new index is
//! written flat, which bounds the work of a read to ~1.2x a flat one's. A
//! reader holds one descriptor whatever the depth ([`IndexReader`]). A
//! delta's parent must outlive it: the
//! merge that deletes a backup first rewrites its children's indexes
//! ([`rebase`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use rustix::fs::OFlags;

use super::folder::Folder;
use crate::error::{Error, Result};

/// Chunk size of the index. Measured on this project's 2-core machine over
/// 1 GiB of random data (`pread` alone takes ~100 ms): BLAKE3 hashing costs
/// the same ~70 ms for 16 KiB, 64 KiB, 256 KiB or 1 MiB chunks, so speed does
/// not decide. 64 KiB is the qcow2 cluster size: a chunk that changed is
/// exactly the clusters an incremental target stores, so a 4 KiB guest write
/// costs 64 KiB in the backup (1 MiB chunks would store 16 times that), while
/// the index stays at 1/2048 of the disk and is streamed, never held in memory.
pub const DIGEST_CHUNK: u64 = 64 << 10;

/// A chunk's BLAKE3 digest (all zeroes for an all-zero chunk).
pub type Digest = [u8; 32];

/// The stored digest of an all-zero chunk.
pub const ZERO_DIGEST: Digest = [0; 32];

const MAGIC: &[u8; 8] = b"LVBKDIG1";
const MAGIC_DELTA: &[u8; 8] = b"LVBKDIG2";
const HEADER: usize = 24;
const ENTRY: u64 = 40;

/// Deltas stacked on one flat index at most (see the module doc).
pub(crate) const MAX_DEPTH: usize = 32;

/// The entries of all the deltas an index reads through hold at most
/// 1/DELTA_SHARE of a flat index's bytes. Reading an index costs reading
/// its flat one plus these bytes, each of which costs about twice a flat
/// byte (40-byte entries from a dozen files read a slice at a time, each
/// written over the batch): measured on a 100 GiB disk's, 8 deltas of 1 %
/// (10 % of the bytes) read in 1.17x a flat index's time, 13 (16 %) in
/// 1.27x, 30 (38 %) in 1.6x. So at most ~1.2x a flat one. At 1 % of the
/// disk changed a day that is a new flat index every 11th day: a year of a
/// 100 GiB disk's indexes is ~1.8 GiB instead of 18.
const DELTA_SHARE: u64 = 8;

/// Whether `entries` delta entries over a disk of `chunks` chunks are past
/// the budget above.
fn over_budget(entries: u64, chunks: u64) -> bool {
    entries * ENTRY * DELTA_SHARE > chunks * 32
}

/// The digest of one chunk: ZERO_DIGEST for zeroes, BLAKE3 otherwise.
pub fn digest(chunk: &[u8]) -> Digest {
    if is_zero(chunk) {
        ZERO_DIGEST
    } else {
        *blake3::hash(chunk).as_bytes()
    }
}

/// Number of index entries for a disk of `size` bytes.
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(DIGEST_CHUNK)
}

fn header(magic: &[u8; 8], size: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(magic);
    h[8..16].copy_from_slice(&DIGEST_CHUNK.to_le_bytes());
    h[16..].copy_from_slice(&size.to_le_bytes());
    h
}

/// `parent` as a delta names it from `path`: both must be
/// `<dir>/<folder>/<file>` with the same `<dir>`.
fn relative_parent(path: &Path, parent: &Path) -> Option<String> {
    let (dir, pdir) = (path.parent()?, parent.parent()?);
    if dir.parent()? != pdir.parent()? || dir == pdir {
        return None;
    }
    let rel = format!(
        "../{}/{}",
        pdir.file_name()?.to_str()?,
        parent.file_name()?.to_str()?
    );
    resolve_parent(path, &rel).map(|_| rel)
}

/// The parent file a delta at `path` names with `rel`, which must be
/// exactly `../<folder>/<file>`: an index never points elsewhere. Resolved
/// without `..` (`<dir>/<folder>/<file>`), so that the paths of a deep
/// chain stay short and name the file plainly.
fn resolve_parent(path: &Path, rel: &str) -> Option<PathBuf> {
    let parts: Vec<Component> = Path::new(rel).components().collect();
    match parts.as_slice() {
        [
            Component::ParentDir,
            Component::Normal(folder),
            Component::Normal(file),
        ] => Some(path.parent()?.parent()?.join(folder).join(file)),
        _ => None,
    }
}

enum Mode {
    Flat,
    /// Entries are written where the digest differs from `parent`'s.
    Delta {
        parent: Box<IndexReader>,
        chunk: u64,
        entries: u64,
    },
}

/// Writes an index as the copy goes, front to back.
pub struct IndexWriter {
    out: BufWriter<File>,
    path: PathBuf,
    expected: u64,
    written: u64,
    mode: Mode,
}

impl IndexWriter {
    /// A flat index.
    pub fn create(path: &Path, size: u64) -> Result<IndexWriter> {
        Self::create_with(path, size, None)
    }

    /// An index that stores only the chunks that differ from the index at
    /// `parent` (a sibling folder's file); flat when `parent` is `None`, is
    /// not a sibling, is already [`MAX_DEPTH`] deltas deep, or its deltas
    /// are past the budget (`DELTA_SHARE`). A delta that ends past the
    /// budget is rewritten flat by [`IndexWriter::finish`].
    pub fn create_delta(path: &Path, size: u64, parent: Option<&Path>) -> Result<IndexWriter> {
        let Some((parent, rel)) = parent.and_then(|p| Some((p, relative_parent(path, p)?))) else {
            return Self::create(path, size);
        };
        let reader = IndexReader::open(parent)?;
        if reader.depth() >= MAX_DEPTH || over_budget(reader.entries, chunks(reader.size())) {
            return Self::create(path, size);
        }
        Self::create_with(path, size, Some((reader, rel)))
    }

    fn create_with(
        path: &Path,
        size: u64,
        delta: Option<(IndexReader, String)>,
    ) -> Result<IndexWriter> {
        let (dir, name) = index_folder(path)?;
        let file = dir
            .open(&name, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC)
            .map_err(|e| Error::io("cannot create digest index", path, e))?;
        let mut out = BufWriter::with_capacity(64 << 10, file);
        let wrote = match &delta {
            None => out.write_all(&header(MAGIC, size)),
            Some((_, rel)) => out
                .write_all(&header(MAGIC_DELTA, size))
                .and_then(|()| out.write_all(&(rel.len() as u16).to_le_bytes()))
                .and_then(|()| out.write_all(rel.as_bytes())),
        };
        wrote.map_err(|e| Error::io("cannot write digest index", path, e))?;
        Ok(IndexWriter {
            out,
            path: path.to_path_buf(),
            expected: chunks(size),
            written: 0,
            mode: match delta {
                None => Mode::Flat,
                Some((parent, _)) => Mode::Delta {
                    parent: Box::new(parent),
                    chunk: 0,
                    entries: 0,
                },
            },
        })
    }

    /// Write the next chunk's digest (in a delta, only if it differs from the parent's).
    pub fn push(&mut self, d: &Digest) -> Result<()> {
        self.written += 1;
        let wrote = match &mut self.mode {
            Mode::Flat => self.out.write_all(d),
            Mode::Delta {
                parent,
                chunk,
                entries,
            } => {
                let old = parent.next_digest()?.unwrap_or(ZERO_DIGEST);
                *chunk += 1;
                if old == *d {
                    Ok(())
                } else {
                    *entries += 1;
                    self.out
                        .write_all(&(*chunk - 1).to_le_bytes())
                        .and_then(|()| self.out.write_all(d))
                }
            }
        };
        wrote.map_err(|e| Error::io("cannot write digest index", &self.path, e))
    }

    /// Flush and sync; an index that misses entries is an internal error.
    /// A delta whose chain of deltas ended past the budget is rewritten flat.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(Error::internal(format!(
                "digest index '{}' has {} entries, expected {}",
                self.path.display(),
                self.written,
                self.expected
            )));
        }
        let mut flatten = false;
        if let Mode::Delta {
            entries, parent, ..
        } = &self.mode
        {
            self.out
                .write_all(&entries.to_le_bytes())
                .map_err(|e| Error::io("cannot write digest index", &self.path, e))?;
            flatten = over_budget(parent.entries + entries, self.expected);
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io("cannot write digest index", &self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io("cannot sync digest index", &self.path, e))?;
        if flatten {
            rebase(&self.path, None)?;
        }
        Ok(())
    }
}

/// Bytes of entries a delta level reads per visit to its file (819
/// entries), the most it holds in memory. A level file is opened, read and
/// closed for each such slice, so a reader holds one descriptor (its flat
/// index) whatever the depth. Measured on a 30-deep chain of 1 % changes of
/// a 100 GiB disk: 4 KiB slices cost 40 % more time than 32 KiB ones (an
/// open is ~1.5 µs here), larger ones gain nothing.
const LEVEL_READ: usize = 32 << 10;

/// Index files are read without following a link in the last component,
/// like every file of the catalog.
fn open_read(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("cannot open digest index", path, e))
}

fn unusable(path: &Path, why: &str) -> Error {
    Error::operation_failed(format!(
        "digest index '{}' is unusable: {why}",
        path.display()
    ))
}

/// The identity of an open file (device, inode).
fn identity(file: &File, path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file
        .metadata()
        .map_err(|e| Error::io("cannot stat digest index", path, e))?;
    Ok((m.dev(), m.ino()))
}

/// One delta level of a reader, not held open: where its unread entries
/// are, and the slice of them read last.
struct DeltaLevel {
    path: PathBuf,
    /// The file checked when the reader was opened: one replaced since (a
    /// merge rebases a child's index by renaming over it) is not read on
    /// from the old one's offset (see IndexReader::refill).
    id: (u64, u64),
    /// File offset of the first entry not yet read, and how many are left.
    at: u64,
    left: u64,
    /// Chunks the level describes (its disk's size).
    limit: u64,
    /// Entries read and not yet applied: `buf[pos..len]`. Sized on first
    /// use (at most LEVEL_READ) and freed when the level is done.
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Entries increase: the next one is at least this.
    least: u64,
}

impl DeltaLevel {
    /// Read the next slice of entries: open, read, close. False when the
    /// file was replaced or removed (a merge removes the deleted backup's
    /// index once its children's no longer read through it).
    fn load(&mut self) -> Result<bool> {
        let n = self.left.min((LEVEL_READ / ENTRY as usize) as u64) as usize;
        if self.buf.len() < n * ENTRY as usize {
            self.buf = vec![0; n * ENTRY as usize];
        }
        let file = match open_read(&self.path) {
            Err(_) if !self.path.exists() => return Ok(false),
            other => other?,
        };
        if identity(&file, &self.path)? != self.id {
            return Ok(false);
        }
        std::os::unix::fs::FileExt::read_exact_at(
            &file,
            &mut self.buf[..n * ENTRY as usize],
            self.at,
        )
        .map_err(|e| Error::io("cannot read digest index", &self.path, e))?;
        self.at += n as u64 * ENTRY;
        self.left -= n as u64;
        (self.pos, self.len) = (0, n * ENTRY as usize);
        Ok(true)
    }

    /// Write this level's entries for chunks `start..end` over `batch`
    /// (their digests, from chunk `start` on), or only pass them when not
    /// WRITE. False when the file was replaced.
    fn apply<const WRITE: bool>(&mut self, batch: &mut [u8], start: u64, end: u64) -> Result<bool> {
        // Every entry below `start` was applied by an earlier batch.
        self.least = self.least.max(start);
        loop {
            if self.pos == self.len {
                if self.left == 0 {
                    self.buf = Vec::new();
                    return Ok(true);
                }
                if !self.load()? {
                    return Ok(false);
                }
            }
            let mut least = self.least;
            let mut used = 0;
            let mut more = true;
            for e in self.buf[self.pos..self.len].chunks_exact(ENTRY as usize) {
                let c = u64::from_le_bytes(e[..8].try_into().unwrap());
                if c >= end {
                    more = false;
                    break;
                }
                if c < least || c >= self.limit {
                    return Err(unusable(&self.path, "entries out of order"));
                }
                if WRITE {
                    let at = (c - start) as usize * 32;
                    batch[at..at + 32].copy_from_slice(&e[8..]);
                }
                least = c + 1;
                used += ENTRY as usize;
            }
            self.pos += used;
            self.least = least;
            if !more {
                return Ok(true);
            }
        }
    }
}

/// Reads an index front to back, a delta resolved through its parents, in
/// batches: the flat index at the bottom is read in bulk into the batch,
/// then each delta level, oldest first, writes its entries over it. The
/// work is the flat index's bytes plus the entries, whatever the depth.
///
/// Descriptors: one, the flat index's, whatever the depth (each delta
/// level is opened only to read its next slice of entries, then closed).
/// Memory: the batch (BATCH digests, 128 KiB) plus, per delta level, its
/// path and at most LEVEL_READ bytes of entries (32 KiB; a level smaller
/// than that holds its size): at most ~1.2 MiB at MAX_DEPTH.
pub struct IndexReader {
    base: File,
    base_path: PathBuf,
    base_limit: u64,
    /// Delta levels, newest first, and their entries in all.
    levels: Vec<DeltaLevel>,
    entries: u64,
    path: PathBuf,
    size: u64,
    /// The resolved digests of chunks `batch_start..`: `batch[..batch_len]`,
    /// the next one at `batch_pos`.
    batch: Vec<u8>,
    batch_len: usize,
    batch_start: u64,
    batch_pos: usize,
}

/// Chunks resolved per batch (128 KiB of digests: the batch and the level
/// slices written over it stay in the CPU's cache).
const BATCH: u64 = 4 << 10;

/// A delta's link to its parent and where its entries are.
struct Delta {
    parent: PathBuf,
    entries: u64,
    /// File offset of the first entry.
    first: u64,
}

/// One index file, its header checked: its size, and its parent for a delta.
struct Opened {
    file: File,
    id: (u64, u64),
    size: u64,
    delta: Option<Delta>,
}

fn open_one(path: &Path) -> Result<Opened> {
    use std::os::unix::fs::FileExt;
    let bad = |why: &str| unusable(path, why);
    let file = open_read(path)?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("cannot stat digest index", path, e))?
        .len();
    let id = identity(&file, path)?;
    let mut h = [0u8; HEADER + 2];
    let got = file
        .read_at(&mut h, 0)
        .map_err(|e| Error::io("cannot read digest index", path, e))?;
    if got < HEADER {
        return Err(bad("truncated header"));
    }
    let delta = match &h[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_DELTA => true,
        _ => return Err(bad("bad magic")),
    };
    let chunk = u64::from_le_bytes(h[8..16].try_into().unwrap());
    if chunk != DIGEST_CHUNK {
        return Err(bad(&format!("chunk size {chunk}, expected {DIGEST_CHUNK}")));
    }
    let size = u64::from_le_bytes(h[16..HEADER].try_into().unwrap());
    if !delta {
        if len != HEADER as u64 + chunks(size) * 32 {
            return Err(bad("length does not match the disk size"));
        }
        return Ok(Opened {
            file,
            id,
            size,
            delta: None,
        });
    }
    if got < HEADER + 2 {
        return Err(bad("truncated header"));
    }
    let mut rel = vec![0u8; u16::from_le_bytes(h[HEADER..].try_into().unwrap()) as usize];
    file.read_exact_at(&mut rel, HEADER as u64 + 2)
        .map_err(|_| bad("truncated header"))?;
    let parent = std::str::from_utf8(&rel)
        .ok()
        .and_then(|r| resolve_parent(path, r))
        .ok_or_else(|| bad("bad parent name"))?;
    let first = HEADER as u64 + 2 + rel.len() as u64;
    let body = len.checked_sub(first + 8).ok_or_else(|| bad("truncated"))?;
    let entries = body / ENTRY;
    let mut trailer = [0u8; 8];
    file.read_exact_at(&mut trailer, first + entries * ENTRY)
        .map_err(|e| Error::io("cannot read digest index", path, e))?;
    if body % ENTRY != 0 || u64::from_le_bytes(trailer) != entries || entries > chunks(size) {
        return Err(bad("length does not match its entry count"));
    }
    Ok(Opened {
        file,
        id,
        size,
        delta: Some(Delta {
            parent,
            entries,
            first,
        }),
    })
}

impl IndexReader {
    /// Open the index at `path` and check the header of every level it
    /// reads through; only the flat one at the bottom stays open.
    pub fn open(path: &Path) -> Result<IndexReader> {
        let (mut levels, mut entries) = (Vec::new(), 0);
        let mut at = path.to_path_buf();
        let mut size = None;
        let base = loop {
            let o = open_one(&at)?;
            size.get_or_insert(o.size);
            let Some(delta) = o.delta else {
                break o;
            };
            if levels.len() >= MAX_DEPTH {
                return Err(unusable(
                    path,
                    &format!("more than {MAX_DEPTH} deltas deep"),
                ));
            }
            entries += delta.entries;
            levels.push(DeltaLevel {
                path: std::mem::replace(&mut at, delta.parent),
                id: o.id,
                at: delta.first,
                left: delta.entries,
                limit: chunks(o.size),
                buf: Vec::new(),
                pos: 0,
                len: 0,
                least: 0,
            });
        };
        Ok(IndexReader {
            base: base.file,
            base_path: at,
            base_limit: chunks(base.size),
            levels,
            entries,
            path: path.to_path_buf(),
            size: size.unwrap_or(base.size),
            batch: Vec::new(),
            batch_len: 0,
            batch_start: 0,
            batch_pos: 0,
        })
    }

    /// Resolve the next batch of chunks (not inlined: next_digest's
    /// common path stays a few instructions).
    #[inline(never)]
    fn refill(&mut self) -> Result<()> {
        let start = self.batch_start + (self.batch_len / 32) as u64;
        for _ in 0..3 {
            if self.resolve(start)? {
                return Ok(());
            }
            // A merge renamed a rewritten index over one of the levels: the
            // same digests in other entries, maybe through other parents.
            // Read the chain again from the top, past what was read.
            let mut fresh = IndexReader::open(&self.path)?;
            if fresh.size != self.size {
                return Err(unusable(&self.path, "replaced by another disk's"));
            }
            let mut passed = true;
            for l in &mut fresh.levels {
                passed &= l.apply::<false>(&mut [], 0, start)?;
            }
            if passed {
                self.base = fresh.base;
                self.base_path = fresh.base_path;
                self.base_limit = fresh.base_limit;
                self.levels = fresh.levels;
                self.entries = fresh.entries;
            }
        }
        Err(unusable(
            &self.path,
            "its levels keep being replaced while it is read",
        ))
    }

    /// Resolve the batch of chunks from `start` on; false when a level was
    /// replaced meanwhile.
    fn resolve(&mut self, start: u64) -> Result<bool> {
        let end = chunks(self.size).min(start + BATCH);
        let n = (end - start) as usize * 32;
        if self.batch.len() < n {
            self.batch = vec![0; n];
        }
        let batch = &mut self.batch[..n];
        let from_base = (self.base_limit.clamp(start, end) - start) as usize * 32;
        std::os::unix::fs::FileExt::read_exact_at(
            &self.base,
            &mut batch[..from_base],
            HEADER as u64 + start * 32,
        )
        .map_err(|e| Error::io("cannot read digest index", &self.base_path, e))?;
        // Each level: what lies past the end of the level below reads as
        // zeroes, then its own entries win.
        let mut below = self.base_limit;
        for l in self.levels.iter_mut().rev() {
            if below < end {
                batch[(below.max(start) - start) as usize * 32..].fill(0);
            }
            if !l.apply::<true>(batch, start, end)? {
                return Ok(false);
            }
            below = l.limit;
        }
        self.batch_start = start;
        self.batch_len = n;
        self.batch_pos = 0;
        Ok(true)
    }

    /// Virtual size of the disk the index describes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The index file this reader was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deltas between this index and the flat one it resolves through.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// The next chunk's digest; `None` past the end of the disk.
    pub fn next_digest(&mut self) -> Result<Option<Digest>> {
        if self.batch_pos == self.batch_len {
            if self.batch_start + (self.batch_len / 32) as u64 >= chunks(self.size) {
                return Ok(None);
            }
            self.refill()?;
        }
        let at = self.batch_pos;
        self.batch_pos += 32;
        Ok(Some(self.batch[at..at + 32].try_into().unwrap()))
    }
}

/// Rewrite the index at `path` so that it no longer needs its parent: as a
/// delta against `new_parent` (a sibling index) if given, else flat. The
/// digests it resolves to stay the same. Written aside, synced and renamed
/// over, so a crash leaves the old or the new index.
pub fn rebase(path: &Path, new_parent: Option<&Path>) -> Result<()> {
    let mut old = IndexReader::open(path)?;
    let tmp = path.with_extension("b3.rebase");
    let written = IndexWriter::create_delta(&tmp, old.size(), new_parent).and_then(|mut w| {
        while let Some(d) = old.next_digest()? {
            w.push(&d)?;
        }
        w.finish()
    });
    written
        .and_then(|()| install(&tmp, path))
        .inspect_err(|_| discard(&tmp))
}

/// The folder of the index file at `path`, opened from the catalog root
/// through its domain's and its own folder without following links, and
/// the file's name in it.
fn index_folder(path: &Path) -> Result<(Folder, String)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    match (path.parent(), name) {
        (Some(dir), Some(name)) => Ok((Folder::open_below(dir, 2)?, name)),
        _ => Err(Error::internal(format!(
            "'{}' names no index",
            path.display()
        ))),
    }
}

/// Rename the index written at `tmp` to `path` (same folder), durably.
pub fn install(tmp: &Path, path: &Path) -> Result<()> {
    let (dir, name) = index_folder(path)?;
    let from = tmp.file_name().map(|n| n.to_string_lossy().into_owned());
    dir.rename(&from.unwrap_or_default(), &name)
        .map_err(|e| Error::io("cannot rename", tmp, e))?;
    dir.sync();
    Ok(())
}

/// Remove an index file left half written.
pub fn discard(path: &Path) {
    if let Ok((dir, name)) = index_folder(path) {
        crate::warn_if_err!(
            dir.remove_if_exists(&name),
            "cannot remove index file {name}"
        );
    }
}

/// The parent index a delta index at `path` reads through (None when flat).
pub fn parent_of(path: &Path) -> Result<Option<PathBuf>> {
    Ok(open_one(path)?.delta.map(|d| d.parent))
}

/// Where a copy sends the digest of each chunk it reads.
pub trait DigestSink {
    /// Take the digest of the copy's next chunk.
    fn push(&mut self, d: &Digest) -> Result<()>;

    /// Whether the digests are used. A copy into a sink that drops them,
    /// and that compares against no parent index, does not hash: it only
    /// tells zeroes from data, and pushes [`UNHASHED`] for each chunk of
    /// data.
    fn wants_digests(&self) -> bool {
        true
    }
}

/// What a copy that does not hash pushes for a chunk holding data (never
/// equal to [`ZERO_DIGEST`]).
pub const UNHASHED: Digest = [0xff; 32];

impl DigestSink for IndexWriter {
    fn push(&mut self, d: &Digest) -> Result<()> {
        IndexWriter::push(self, d)
    }
}

/// Drops the digests: a copy from a source that has no index.
pub struct NoDigests;

impl DigestSink for NoDigests {
    fn push(&mut self, _: &Digest) -> Result<()> {
        Ok(())
    }

    fn wants_digests(&self) -> bool {
        false
    }
}

/// Checks what a copy reads against a stored index: a restore or a merge
/// proves the data it copies is the data that was backed up.
pub struct IndexVerifier {
    /// The index the copy is checked against.
    pub reader: IndexReader,
    chunk: u64,
}

impl IndexVerifier {
    /// Check against `reader` from its first chunk.
    pub fn new(reader: IndexReader) -> Self {
        IndexVerifier { reader, chunk: 0 }
    }
}

impl DigestSink for IndexVerifier {
    fn push(&mut self, d: &Digest) -> Result<()> {
        let want = self.reader.next_digest()?;
        self.chunk += 1;
        if want != Some(*d) {
            return Err(Error::operation_failed(format!(
                "backup data does not match its digest index at offset {} ('{}')",
                (self.chunk - 1) * DIGEST_CHUNK,
                self.reader.path.display()
            )));
        }
        Ok(())
    }
}

/// True when every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // OR 16-byte words together without branching, so the loop vectorises.
    let words = buf.chunks_exact(16);
    let tail = words.remainder();
    words.fold(0u128, |acc, w| {
        acc | u128::from_ne_bytes(w.try_into().unwrap())
    }) == 0
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests;
