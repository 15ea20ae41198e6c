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
//! level files are open at once (least recently used closed first, reopened
//! when needed, and then required to be the very file checked at open).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw as ImagoRaw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, StorageOpenOptions};

use crate::error::{Error, Result};
use crate::image::file::{self as image_file, Kind};
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

type Image = Arc<FormatAccess<ImagoFile>>;

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

struct Level {
    path: PathBuf,
    format: DiskFormat,
    /// The file checked at open: a reopened level must be that file, and
    /// no read of it is trusted once it is not (see `unchanged`).
    id: FileId,
}

/// A qcow2 image and the levels below it, read lazily.
pub struct ChainReader {
    /// The levels data is read from, top first: the image, then the image
    /// each one's header names (always one the catalog recorded, in the
    /// format it recorded), down to one that names none.
    levels: Vec<Level>,
    size: u64,
    /// Open levels' metadata by index, least recently used first.
    images: Mutex<Vec<(usize, Image)>>,
    /// Open level files by index, least recently used first.
    files: Mutex<Vec<(usize, Arc<File>)>>,
    spans: Mutex<Vec<Arc<SpanMap>>>,
}

pub(crate) fn bad_chain(path: &Path, why: String) -> Error {
    Error::operation_failed(format!("image '{}': {why}", path.display()))
}

/// Where `named`, the backing file the header of `above` names, lies in
/// `recorded` (the chain the catalog recorded below it, nearest first): it
/// may be a deeper level than the next (a merge removed the levels in
/// between; after a crash the record may not say so yet), never a file the
/// catalog did not record.
pub(crate) fn recorded_at(
    above: &Path,
    recorded: &[(PathBuf, DiskFormat)],
    named: &Path,
) -> Result<usize> {
    recorded
        .iter()
        .position(|(p, _)| p == named)
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

/// Open one level, read-only, with no backing file and no external data
/// file (the deny gate refuses both); also its file's identity and the
/// backing file its header names, made absolute as QEMU does (relative to
/// the image's folder).
fn open_level(path: &Path, format: DiskFormat) -> Result<(Image, FileId, Option<PathBuf>)> {
    let io = |what: &'static str| move |e| Error::io(what, path, e);
    let (file, id) = open_file(path, format)?;
    let storage =
        ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(false))
            .map_err(io("cannot open image"))?;
    Ok(match format {
        DiskFormat::Raw => {
            let raw = ImagoRaw::builder(storage)
                .open(DenyImplicitOpenGate::default())
                .map_err(io("cannot open backing image"))?;
            (Arc::new(FormatAccess::new(raw)), id, None)
        }
        DiskFormat::Qcow2 => {
            let q = Qcow2::<ImagoFile>::builder(storage)
                .write(false)
                .backing(None)
                .open(DenyImplicitOpenGate::default())
                .map_err(io("cannot open qcow2 image"))?;
            let dir = path.parent().unwrap_or(Path::new("/"));
            let below = q.implicit_backing_file().map(|name| dir.join(name));
            (Arc::new(FormatAccess::new(q)), id, below)
        }
    })
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
    /// checked now, one level open at a time; only the top stays open (a
    /// caller may hold the sources of many disks before reading any).
    pub fn open(path: &Path, recorded: &[(PathBuf, DiskFormat)]) -> Result<ChainReader> {
        let (top, id, mut named) = open_level(path, DiskFormat::Qcow2)?;
        let size = top.size();
        let mut levels = vec![Level {
            path: path.to_path_buf(),
            format: DiskFormat::Qcow2,
            id,
        }];
        let mut rest = recorded;
        while let Some(b) = named {
            let at = recorded_at(&levels[levels.len() - 1].path, rest, &b)?;
            let (p, f) = &rest[at];
            rest = &rest[at + 1..];
            let (_, id, n) = open_level(p, *f)?;
            levels.push(Level {
                path: p.clone(),
                format: *f,
                id,
            });
            named = n;
        }
        Ok(ChainReader {
            levels,
            size,
            images: Mutex::new(vec![(0, top)]),
            files: Mutex::new(Vec::new()),
            spans: Mutex::new(Vec::new()),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Levels data may come from (the image itself included).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    fn changed(&self, l: usize) -> Error {
        bad_chain(
            &self.levels[l].path,
            "the file changed while it was read".into(),
        )
    }

    /// Level `l`'s metadata, opened again if it was closed.
    fn image(&self, l: usize) -> Result<Image> {
        let mut open = lock(&self.images);
        if let Some(img) = lru_hit(&mut open, l) {
            return Ok(img);
        }
        let lv = &self.levels[l];
        let (img, id, _) = open_level(&lv.path, lv.format)?;
        if id != lv.id {
            return Err(self.changed(l));
        }
        lru_put(&mut open, l, &img, OPEN_IMAGES);
        Ok(img)
    }

    /// Level `l`'s file, opened again if it was closed.
    fn file(&self, l: usize) -> Result<Arc<File>> {
        let mut open = lock(&self.files);
        if let Some(f) = lru_hit(&mut open, l) {
            return Ok(f);
        }
        let lv = &self.levels[l];
        let (file, id) = open_file(&lv.path, lv.format)?;
        if id != self.levels[l].id {
            return Err(self.changed(l));
        }
        let file = Arc::new(file);
        lru_put(&mut open, l, &file, OPEN_FILES);
        Ok(file)
    }

    /// Fail unless level `l`'s file is still as it was at open. Called
    /// after what imago read of it: a file shrinking only shrinks, so one
    /// still whole after a read was whole during it.
    fn unchanged(&self, l: usize) -> Result<()> {
        let f = self.file(l)?;
        match file_id(&f) {
            Ok(id) if id == self.levels[l].id => Ok(()),
            Ok(_) => Err(self.changed(l)),
            Err(e) => Err(self.failed("cannot stat", l, 0, e)),
        }
    }

    fn failed(&self, what: &str, l: usize, pos: u64, e: std::io::Error) -> Error {
        Error::operation_failed(format!(
            "{what} '{}' at offset {pos}: {e}",
            self.levels[l].path.display()
        ))
    }

    /// Where the data of `start..end` lies, level by level: each level is
    /// asked only for what the levels above left unallocated.
    fn map(&self, start: u64, end: u64) -> Result<SpanMap> {
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
                        .get_mapping(pos, b - pos)
                        .map_err(|e| self.failed("cannot map", l, pos, e))?;
                    // Past a lower level's end the disk reads as zeroes.
                    let len = match m {
                        Mapping::Eof { .. } => b - pos,
                        _ => len.clamp(1, b - pos),
                    };
                    let piece = match m {
                        Mapping::Zero {
                            explicit: false, ..
                        } => None,
                        Mapping::Zero { .. } | Mapping::Eof { .. } => Some(Piece::Zero),
                        // In the level's own file: an image with an
                        // external data file does not open (deny gate).
                        Mapping::Raw { offset, .. } => Some(Piece::File {
                            level: l,
                            host: offset,
                        }),
                        _ => Some(Piece::Driver { level: l }),
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
    fn span(&self, pos: u64) -> Result<Arc<SpanMap>> {
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
    fn pieces(&self, offset: u64, end: u64) -> Result<Vec<(u64, u64, Piece)>> {
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

    /// Read `buf.len()` bytes at `offset`, the data of each level read
    /// together (each level file is opened at most once per call). Returns
    /// false when no level holds data there (`buf` is then left as it was:
    /// the range reads as zeroes).
    pub fn fill(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
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
                        .map_err(|e| self.failed("cannot read", level, a, e))?;
                }
                Piece::Driver { level } => {
                    self.image(level)?
                        .read(part, a)
                        .map_err(|e| self.failed("cannot read", level, a, e))?;
                    self.unchanged(level)?;
                }
            }
        }
        Ok(true)
    }
}
