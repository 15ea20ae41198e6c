//! Reading a backup's image through the chain the catalog recorded, one
//! level at a time, with few files open whatever the depth.
//!
//! Each level is opened on its own, without its backing file. Where the
//! disk's data lies is resolved a span (`SPAN`) at a time: the top level is
//! asked first, and a lower level only for what every level above leaves
//! unallocated, so each level's metadata is read once per span. The result
//! is a small map (runs of the span: zeroes, or a level and the offset in
//! its file); data is then read from the level files with plain reads,
//! grouped by level. At most `OPEN_IMAGES` levels' metadata and `OPEN_FILES`
//! level files are open at once (least recently used closed first); a
//! level's metadata is read through its open file, and a level file closed
//! is opened again by its path only if it is still the very file checked
//! when the chain was resolved (device, inode, length).
//!
//! A delete merges a backup into its child while others may read either
//! (`ops::merge`): the child's data is written to a new file renamed over
//! the child's, then the deleted backup's files are removed. A reader
//! follows the merge and never fails because of it:
//! - a level file it holds stays readable: an open file renamed over or
//!   unlinked keeps what it held, and a delete does not shrink a file a
//!   reader holds a shared flock on (`store::secure::shrink_before_removal`);
//! - a level it has to open again that is no longer the file resolved
//!   (another file at its path, or none) makes it resolve the chain again
//!   from the top's path, through the headers (each naming only a level the
//!   catalog recorded, a deeper one once a merge removed levels), and read
//!   on from that chain; what it had mapped is mapped again. The new chain
//!   holds the same guest data: the merge wrote the child's whole content,
//!   checked against its digest index, before renaming it into place, and
//!   a chain resolved while a level changed is resolved again. The new
//!   chain is taken only if the image's size is the same and no level is
//!   the same file, now shorter;
//! - a level that is the same file but shorter is being shrunk by a delete
//!   (or by someone else): an error, never zeroes (imago reads past a
//!   file's end as zeroes).
//!
//! While a chain is resolved again, what the reader held of the old one is
//! closed first (a read still using a level file keeps it until that read
//! ends), so the bound on descriptors holds.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw as ImagoRaw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, StorageOpenOptions};

use crate::error::{Error, Result};
use crate::image::backing::lexical;
use crate::image::file::{self as image_file, Kind};
use crate::image::qcow2_decode::{Map, Qcow2Image, needs_own_reader};
use crate::xml::backup::DiskFormat;

/// Levels whose metadata (imago's caches) is open at once.
pub const OPEN_IMAGES: usize = 4;
/// Level files open at once for reading data.
pub const OPEN_FILES: usize = 8;
/// Descriptors one chain reader holds at most.
pub const MAX_OPEN: usize = OPEN_IMAGES + OPEN_FILES;
/// Guest bytes whose mapping is resolved at once; a map of one span has at
/// most one run per 64 KiB cluster (256 KiB of memory for 1 GiB), and two
/// spans are kept (the reader threads work on neighbouring windows).
const SPAN: u64 = 1 << 30;
const SPANS_KEPT: usize = 2;
/// Times one read resolves the chain again (each time because a level
/// changed) before it gives up: each merge of a backup below costs one.
const FOLLOWS: usize = 16;
/// Times a chain that changes while it is resolved is resolved again.
const RESOLVES: usize = 4;

type Image = Arc<LevelImage>;

/// A level's metadata: through imago, or, for an image of zstd clusters
/// (which imago does not open), through the library's own reader.
enum LevelImage {
    Imago(FormatAccess<ImagoFile>),
    Own(Qcow2Image),
}

impl LevelImage {
    fn size(&self) -> u64 {
        match self {
            LevelImage::Imago(i) => i.size(),
            LevelImage::Own(q) => q.size(),
        }
    }

    /// What `pos..pos+max` holds from `pos` on, and for how long; past
    /// the image's end: zeroes up to `max`.
    fn mapping(&self, pos: u64, max: u64) -> std::io::Result<(Map, u64)> {
        let img = match self {
            LevelImage::Own(q) => return q.mapping(pos, max),
            LevelImage::Imago(img) => img,
        };
        let (m, len) = img.get_mapping(pos, max)?;
        Ok(match m {
            Mapping::Zero {
                explicit: false, ..
            } => (Map::Unallocated, len),
            Mapping::Zero { .. } => (Map::Zero, len),
            Mapping::Eof { .. } => (Map::Zero, max),
            Mapping::Raw { offset, .. } => (Map::Plain(offset), len),
            _ => (Map::Compressed, len),
        })
    }

    fn read(&self, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
        match self {
            LevelImage::Imago(i) => i.read(buf, pos),
            LevelImage::Own(q) => q.read(buf, pos),
        }
    }
}

/// Where a run of the disk reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Zero,
    /// Level `level`, at `host` in its file (at the run's start).
    File {
        level: usize,
        host: u64,
    },
    /// Level `level`, through its format driver (compressed clusters).
    Driver {
        level: usize,
    },
}

/// The runs `start..end` of one span, sorted and covering it.
struct SpanMap {
    start: u64,
    end: u64,
    runs: Vec<(u64, u64, Piece)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Level {
    path: PathBuf,
    format: DiskFormat,
    /// The file checked when the chain was resolved: a reopened level must
    /// be that file, and no read of it is trusted once it is not (see
    /// `Resolved::unchanged`).
    id: FileId,
}

/// Why a read through one resolution of the chain failed.
enum Fail {
    /// A level file is not the one resolved any more (another file at its
    /// path, none, or a shorter one): resolve the chain again, and judge.
    Stale(Error),
    Hard(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Hard(e)
    }
}

type Res<T> = std::result::Result<T, Fail>;

/// One resolution of the chain: its levels, top first (the image, then the
/// image each one's header names, always one the catalog recorded, in the
/// format it recorded, down to one that names none), and what of them is
/// open.
struct Resolved {
    levels: Vec<Level>,
    size: u64,
    /// Open levels' metadata by index, least recently used first.
    images: Mutex<Vec<(usize, Image)>>,
    /// Open level files by index, least recently used first.
    files: Mutex<Vec<(usize, Arc<File>)>>,
    spans: Mutex<Vec<Arc<SpanMap>>>,
}

/// A qcow2 image and the levels below it, read lazily.
pub struct ChainReader {
    top: PathBuf,
    /// The chain the catalog recorded below the top, nearest first.
    recorded: Vec<(PathBuf, DiskFormat)>,
    size: u64,
    /// The chain as last resolved (again after a merge changed it).
    current: Mutex<Arc<Resolved>>,
}

pub(crate) fn bad_chain(path: &Path, why: String) -> Error {
    Error::operation_failed(format!("image '{}': {why}", path.display()))
}

/// Where `named`, the backing file the header of `above` names, lies in
/// `recorded` (the chain the catalog recorded below it, nearest first): it
/// may be a deeper level than the next (a merge removed the levels in
/// between; after a crash the record may not say so yet), never a file the
/// catalog did not record.
///
/// A relative name (`../<backup>/<file>` between a catalog's backup
/// folders) comes here joined to the folder of `above`: it matches a
/// recorded path equal to it once `.` and `..` are taken lexically (only
/// to find the level; the file opened is always the recorded path).
pub(crate) fn recorded_at(
    above: &Path,
    recorded: &[(PathBuf, DiskFormat)],
    named: &Path,
) -> Result<usize> {
    let lexical = lexical(named);
    recorded
        .iter()
        .position(|(p, _)| p == named)
        .or_else(|| {
            recorded
                .iter()
                .position(|(p, _)| self::lexical(p) == lexical)
        })
        .ok_or_else(|| {
            bad_chain(
                above,
                format!(
                    "it names backing file '{}', which the catalog did not record",
                    named.display()
                ),
            )
        })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open a level file read-only (never blocking, only a kind of file an
/// image of `format` can be: see `image::file`), holding a shared flock on
/// it if it can; its identity (`FileId`).
fn open_file(path: &Path, format: DiskFormat) -> Result<(File, FileId)> {
    let file = image_file::open(path, false, Kind::of(format), "cannot open image")?;
    // Before any read of it, metadata ones included: a read-ahead they
    // start marks pages that later data reads would go on from.
    super::cache::before_read(&file);
    // While held, a delete leaves the file whole (it only unlinks it: see
    // `store::secure::shrink_before_removal`). Not had: `unchanged` tells.
    let _ = file.try_lock_shared();
    let id = file_id(&file).map_err(|e| Error::io("cannot stat image", path, e))?;
    Ok((file, id))
}

/// Device, inode and length of a level file: a backup's files never
/// change, so any difference means another file, or one a delete is
/// shrinking (see `store::secure::shrink_before_removal`) whose ends
/// imago would read as zeroes.
type FileId = (u64, u64, u64);

fn file_id(file: &File) -> std::io::Result<FileId> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino(), m.len()))
}

/// A level's format driver over `file` (a duplicate of its descriptor:
/// the very file, never opened again by its path), read-only, with no
/// backing file and no external data file (the deny gate refuses both);
/// also the backing file its header names, made absolute as QEMU does
/// (relative to the image's folder).
fn image_of(file: &File, path: &Path, format: DiskFormat) -> Result<(Image, Option<PathBuf>)> {
    let io = |what: &'static str| move |e| Error::io(what, path, e);
    let dup = file
        .try_clone()
        .map_err(io("cannot duplicate the handle of image"))?;
    let storage =
        ImagoFile::from_open_file(dup, StorageOpenOptions::new().filename(path).write(false))
            .map_err(io("cannot open image"))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    Ok(match format {
        DiskFormat::Raw => {
            let raw = ImagoRaw::builder(storage)
                .open(DenyImplicitOpenGate::default())
                .map_err(io("cannot open backing image"))?;
            (Arc::new(LevelImage::Imago(FormatAccess::new(raw))), None)
        }
        DiskFormat::Qcow2 if needs_own_reader(file).map_err(io("cannot read image"))? => {
            let dup = file
                .try_clone()
                .map_err(io("cannot duplicate the handle of image"))?;
            let key = crate::image::keys::passphrase(path);
            let q = Qcow2Image::open_with_key(dup, key.as_ref().map(|k| k.as_slice()))
                .map_err(io("cannot open qcow2 image"))?;
            let below = q.backing().map(|name| dir.join(name));
            (Arc::new(LevelImage::Own(q)), below)
        }
        DiskFormat::Qcow2 => {
            let q = Qcow2::<ImagoFile>::builder(storage)
                .write(false)
                .backing(None)
                .open(DenyImplicitOpenGate::default())
                .map_err(io("cannot open qcow2 image"))?;
            let below = q.implicit_backing_file().map(|name| dir.join(name));
            (Arc::new(LevelImage::Imago(FormatAccess::new(q))), below)
        }
    })
}

/// The levels, the files of the first `keep` of them (open), and the
/// image's size.
type Resolution = (Vec<Level>, Vec<(usize, Arc<File>)>, u64);

/// The chain of the qcow2 image `top` as its headers name it now: each
/// header may name only a recorded image below the one naming it (a deeper
/// one once a merge removed the levels in between), never one the catalog
/// did not record. Every header is checked, one level's metadata open at a
/// time; the files of the first `keep` levels stay open. A chain in which
/// a path names another file by the end than the one opened (a merge
/// renamed its new file over a level meanwhile) is resolved again.
fn resolve(top: &Path, recorded: &[(PathBuf, DiskFormat)], keep: usize) -> Result<Resolution> {
    let mut tries = 0;
    loop {
        tries += 1;
        match resolve_once(top, recorded, keep) {
            Ok(r) if tries >= RESOLVES || still_there(&r.0) => return Ok(r),
            Err(e) if tries >= RESOLVES => return Err(e),
            _ => {}
        }
    }
}

/// Whether every level's path still names the file opened for it.
fn still_there(levels: &[Level]) -> bool {
    levels.iter().all(|lv| {
        std::fs::metadata(&lv.path).is_ok_and(|m| (m.dev(), m.ino()) == (lv.id.0, lv.id.1))
    })
}

fn resolve_once(top: &Path, recorded: &[(PathBuf, DiskFormat)], keep: usize) -> Result<Resolution> {
    let mut levels: Vec<Level> = Vec::new();
    let mut files = Vec::new();
    let mut size = 0;
    let mut next = Some((top.to_path_buf(), DiskFormat::Qcow2));
    let mut rest = recorded;
    while let Some((path, format)) = next {
        let (file, id) = open_file(&path, format)?;
        let (img, named) = image_of(&file, &path, format)?;
        if levels.is_empty() {
            size = img.size();
        }
        drop(img);
        // What imago read of it was read whole (a file shrinking only
        // shrinks).
        if file_id(&file).ok() != Some(id) {
            return Err(bad_chain(
                &path,
                "the file changed while it was read".into(),
            ));
        }
        if levels.len() < keep {
            files.push((levels.len(), Arc::new(file)));
        }
        next = match named {
            None => None,
            Some(b) => {
                let at = recorded_at(&path, rest, &b)?;
                let (p, f) = &rest[at];
                rest = &rest[at + 1..];
                Some((p.clone(), *f))
            }
        };
        levels.push(Level { path, format, id });
    }
    Ok((levels, files, size))
}

/// The levels below the qcow2 image `top` as its headers name them now,
/// nearest first, each one `recorded` holds, in its recorded format (see
/// `resolve`): the chain to hand a tool that must not follow a header's
/// name itself.
pub fn resolved_below(
    top: &Path,
    recorded: &[(PathBuf, DiskFormat)],
) -> Result<Vec<(PathBuf, DiskFormat)>> {
    let (levels, _, _) = resolve(top, recorded, 0)?;
    Ok(levels
        .into_iter()
        .skip(1)
        .map(|l| (l.path, l.format))
        .collect())
}

/// Append `a..b` to `runs`, joining it to the last run it continues.
fn push_run(runs: &mut Vec<(u64, u64, Piece)>, a: u64, b: u64, p: Piece) {
    if let Some((s, e, last)) = runs.last_mut()
        && *e == a
    {
        let joins = match (*last, p) {
            (Piece::Zero, Piece::Zero) => true,
            (Piece::File { level, host }, Piece::File { level: l, host: h }) => {
                level == l && host + (a - *s) == h
            }
            (Piece::Driver { level }, Piece::Driver { level: l }) => level == l,
            _ => false,
        };
        if joins {
            *e = b;
            return;
        }
    }
    runs.push((a, b, p));
}

/// Take the most recent use of `k` in `lru` (moved last), if open.
fn lru_hit<T>(lru: &mut Vec<(usize, Arc<T>)>, k: usize) -> Option<Arc<T>> {
    let i = lru.iter().position(|(x, _)| *x == k)?;
    let hit = lru.remove(i);
    let v = Arc::clone(&hit.1);
    lru.push(hit);
    Some(v)
}

fn lru_put<T>(lru: &mut Vec<(usize, Arc<T>)>, k: usize, v: &Arc<T>, cap: usize) {
    if lru.len() >= cap {
        lru.remove(0);
    }
    lru.push((k, Arc::clone(v)));
}

impl ChainReader {
    /// Open the qcow2 image at `path`, which may read through `recorded`
    /// (nearest first): each header may name only a recorded image below
    /// the one naming it (a deeper one once a merge removed the levels in
    /// between), never one the catalog did not record. Every header is
    /// checked now, one level open at a time; only the top's file stays
    /// open (a caller may hold the sources of many disks before reading
    /// any).
    pub fn open(path: &Path, recorded: &[(PathBuf, DiskFormat)]) -> Result<ChainReader> {
        let (levels, files, size) = resolve(path, recorded, 1)?;
        Ok(ChainReader {
            top: path.to_path_buf(),
            recorded: recorded.to_vec(),
            size,
            current: Mutex::new(Arc::new(Resolved::new(levels, files, size))),
        })
    }

    /// The virtual size of the chain's top image, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Levels data may come from (the image itself included), as the chain
    /// was last resolved.
    pub fn depth(&self) -> usize {
        lock(&self.current).levels.len()
    }

    /// Read `buf.len()` bytes at `offset`, the data of each level read
    /// together (each level file is opened at most once per call). Returns
    /// false when no level holds data there: the range reads as zeroes, and
    /// `buf` holds nothing to use (it was left as it was, or as a read
    /// through a chain a merge changed left it). A level that is not the
    /// file resolved any more makes the read start again on the chain
    /// resolved again (see the module's comment).
    pub fn fill(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        let mut chain = Arc::clone(&lock(&self.current));
        let mut follows = 0;
        loop {
            match chain.fill(buf, offset) {
                Ok(data) => return Ok(data),
                Err(Fail::Hard(e)) => return Err(e),
                Err(Fail::Stale(e)) if follows >= FOLLOWS => return Err(e),
                Err(Fail::Stale(e)) => chain = self.follow(&chain, e)?,
            }
            follows += 1;
        }
    }

    /// The chain resolved again after a read through `old` found a level
    /// that is not the file resolved (`stale` says which): taken if the
    /// image's size is the same, no level is the same file grown shorter
    /// (a delete shrinking it: an error, never zeroes) and something did
    /// change (else `stale` stands). Another reader's resolution, if one
    /// came first, is used as it is.
    fn follow(&self, old: &Arc<Resolved>, stale: Error) -> Result<Arc<Resolved>> {
        let mut current = lock(&self.current);
        if !Arc::ptr_eq(&current, old) {
            return Ok(Arc::clone(&current));
        }
        old.close();
        let (levels, files, size) = resolve(&self.top, &self.recorded, OPEN_FILES)?;
        if size != self.size {
            return Err(bad_chain(
                &self.top,
                format!(
                    "its size changed while it was read ({} -> {size} bytes)",
                    self.size
                ),
            ));
        }
        for n in &levels {
            let shrunk = old.levels.iter().any(|o| {
                o.path == n.path && (o.id.0, o.id.1) == (n.id.0, n.id.1) && o.id.2 != n.id.2
            });
            if shrunk {
                return Err(bad_chain(
                    &n.path,
                    "the file changed while it was read".into(),
                ));
            }
        }
        if levels == old.levels {
            return Err(stale);
        }
        let new = Arc::new(Resolved::new(levels, files, size));
        *current = Arc::clone(&new);
        Ok(new)
    }
}

impl Resolved {
    fn new(levels: Vec<Level>, files: Vec<(usize, Arc<File>)>, size: u64) -> Resolved {
        Resolved {
            levels,
            size,
            images: Mutex::new(Vec::new()),
            files: Mutex::new(files),
            spans: Mutex::new(Vec::new()),
        }
    }

    /// Let go of what is open: a read still using a level file keeps it
    /// until it ends, and finds the rest closed (then opened again only if
    /// still the file resolved).
    fn close(&self) {
        lock(&self.spans).clear();
        lock(&self.images).clear();
        lock(&self.files).clear();
    }

    fn changed(&self, l: usize) -> Error {
        bad_chain(
            &self.levels[l].path,
            "the file changed while it was read".into(),
        )
    }

    /// Level `l`'s file, opened again if it was closed: stale unless it is
    /// still the file resolved.
    fn file(&self, l: usize) -> Res<Arc<File>> {
        let mut open = lock(&self.files);
        if let Some(f) = lru_hit(&mut open, l) {
            return Ok(f);
        }
        let lv = &self.levels[l];
        let (file, id) = open_file(&lv.path, lv.format).map_err(Fail::Stale)?;
        if id != lv.id {
            return Err(Fail::Stale(self.changed(l)));
        }
        let file = Arc::new(file);
        lru_put(&mut open, l, &file, OPEN_FILES);
        Ok(file)
    }

    /// Level `l`'s metadata, read through its file if it was closed.
    fn image(&self, l: usize) -> Res<Image> {
        let mut open = lock(&self.images);
        if let Some(img) = lru_hit(&mut open, l) {
            return Ok(img);
        }
        let lv = &self.levels[l];
        let file = self.file(l)?;
        let img = match image_of(&file, &lv.path, lv.format) {
            Ok((img, _)) => img,
            Err(e) => {
                self.unchanged(l)?;
                return Err(Fail::Hard(e));
            }
        };
        self.unchanged(l)?;
        lru_put(&mut open, l, &img, OPEN_IMAGES);
        Ok(img)
    }

    /// Fail unless level `l`'s file is still as it was resolved. Called
    /// after what imago read of it: a file shrinking only shrinks, so one
    /// still whole after a read was whole during it.
    fn unchanged(&self, l: usize) -> Res<()> {
        let f = self.file(l)?;
        match file_id(&f) {
            Ok(id) if id == self.levels[l].id => Ok(()),
            Ok(_) => Err(Fail::Stale(self.changed(l))),
            Err(e) => Err(Fail::Hard(self.failed("cannot stat", l, 0, e))),
        }
    }

    fn failed(&self, what: &str, l: usize, pos: u64, e: std::io::Error) -> Error {
        Error::operation_failed(format!(
            "{what} '{}' at offset {pos}: {e}",
            self.levels[l].path.display()
        ))
    }

    /// A read of level `l` that failed with `e`: stale if the file is not
    /// as resolved any more (a short read of a file shrinking), else `e`.
    fn read_failed(&self, what: &str, l: usize, pos: u64, e: std::io::Error) -> Fail {
        match self.unchanged(l) {
            Err(stale) => stale,
            Ok(()) => Fail::Hard(self.failed(what, l, pos, e)),
        }
    }

    /// Where the data of `start..end` lies, level by level: each level is
    /// asked only for what the levels above left unallocated.
    fn map(&self, start: u64, end: u64) -> Res<SpanMap> {
        let mut todo = vec![(start, end)];
        let mut runs: Vec<(u64, u64, Piece)> = Vec::new();
        for l in 0..self.levels.len() {
            if todo.is_empty() {
                break;
            }
            let img = self.image(l)?;
            let mut below: Vec<(u64, u64)> = Vec::new();
            for &(a, b) in &todo {
                let mut pos = a;
                while pos < b {
                    let (m, len) = img
                        .mapping(pos, b - pos)
                        .map_err(|e| self.read_failed("cannot map", l, pos, e))?;
                    let len = len.clamp(1, b - pos);
                    let piece = match m {
                        Map::Unallocated => None,
                        Map::Zero => Some(Piece::Zero),
                        // In the level's own file: an image with an
                        // external data file does not open (deny gate).
                        Map::Plain(offset) => Some(Piece::File {
                            level: l,
                            host: offset,
                        }),
                        Map::Compressed | Map::Encrypted => Some(Piece::Driver { level: l }),
                    };
                    match piece {
                        Some(p) => runs.push((pos, pos + len, p)),
                        None => match below.last_mut() {
                            Some((_, e)) if *e == pos => *e = pos + len,
                            _ => below.push((pos, pos + len)),
                        },
                    }
                    pos += len;
                }
            }
            self.unchanged(l)?;
            todo = below;
        }
        runs.extend(todo.into_iter().map(|(a, b)| (a, b, Piece::Zero)));
        runs.sort_unstable_by_key(|r| r.0);
        let mut joined = Vec::with_capacity(runs.len());
        for (a, b, p) in runs {
            push_run(&mut joined, a, b, p);
        }
        Ok(SpanMap {
            start,
            end,
            runs: joined,
        })
    }

    /// The map of the span holding `pos`, resolved if not kept.
    fn span(&self, pos: u64) -> Res<Arc<SpanMap>> {
        let mut spans = lock(&self.spans);
        if let Some(s) = spans.iter().find(|s| s.start <= pos && pos < s.end) {
            return Ok(Arc::clone(s));
        }
        let start = pos - pos % SPAN;
        let s = Arc::new(self.map(start, (start + SPAN).min(self.size))?);
        if spans.len() >= SPANS_KEPT {
            spans.remove(0);
        }
        spans.push(Arc::clone(&s));
        Ok(s)
    }

    /// The runs of `offset..end`, clipped to it (a `File` run's host offset
    /// moved along).
    fn pieces(&self, offset: u64, end: u64) -> Res<Vec<(u64, u64, Piece)>> {
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end.min(self.size) {
            let span = self.span(pos)?;
            let first = span.runs.partition_point(|r| r.1 <= pos);
            for &(a, b, p) in span.runs[first..].iter().take_while(|r| r.0 < end) {
                let (s, e) = (a.max(pos), b.min(end));
                let p = match p {
                    Piece::File { level, host } => Piece::File {
                        level,
                        host: host + (s - a),
                    },
                    p => p,
                };
                out.push((s, e, p));
            }
            pos = span.end;
        }
        if pos < end {
            out.push((pos, end, Piece::Zero));
        }
        Ok(out)
    }

    /// `ChainReader::fill` through this resolution of the chain.
    fn fill(&self, buf: &mut [u8], offset: u64) -> Res<bool> {
        let end = offset + buf.len() as u64;
        let mut pieces = self.pieces(offset, end)?;
        if pieces.iter().all(|p| p.2 == Piece::Zero) {
            return Ok(false);
        }
        let level_of = |p: &Piece| match *p {
            Piece::Zero => 0,
            Piece::File { level, .. } | Piece::Driver { level } => level + 1,
        };
        pieces.sort_by_key(|p| level_of(&p.2));
        let mut open: Option<(usize, Arc<File>)> = None;
        for (a, b, p) in pieces {
            let part = &mut buf[(a - offset) as usize..(b - offset) as usize];
            match p {
                Piece::Zero => part.fill(0),
                Piece::File { level, host } => {
                    if open.as_ref().is_none_or(|(l, _)| *l != level) {
                        open = Some((level, self.file(level)?));
                    }
                    let f = &open.as_ref().unwrap().1;
                    f.read_exact_at(part, host)
                        .map_err(|e| self.read_failed("cannot read", level, a, e))?;
                }
                Piece::Driver { level } => {
                    self.image(level)?
                        .read(part, a)
                        .map_err(|e| self.read_failed("cannot read", level, a, e))?;
                    self.unchanged(level)?;
                }
            }
        }
        Ok(true)
    }
}
