//! Reading a backup's image through the chain the catalog recorded, one
//! level at a time. Each level is opened on its own, without its backing
//! file; a range is asked of the top level first and of a lower level only
//! where every level above leaves it unallocated. At most `OPEN_LEVELS`
//! levels are open at once (the least recently used is closed first and
//! reopened when needed), so descriptors and metadata caches stay bounded
//! whatever the depth of the chain.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw as ImagoRaw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, Storage, StorageOpenOptions,
};

use crate::error::{Error, Result};
use crate::xml::backup::DiskFormat;

/// Levels of one chain open at once: a chain this deep or less stays open
/// for the whole read.
pub const OPEN_LEVELS: usize = 8;

type Image = Arc<FormatAccess<ImagoFile>>;

/// A qcow2 image and the levels below it, read lazily.
pub struct ChainReader {
    /// The levels data is read from, top first: the image, then the image
    /// each one's header names (always one the catalog recorded, in the
    /// format it recorded), down to one that names none.
    levels: Vec<(PathBuf, DiskFormat)>,
    size: u64,
    /// Open levels by index, least recently used first.
    open: Mutex<Vec<(usize, Image)>>,
}

fn bad_chain(path: &Path, why: String) -> Error {
    Error::operation_failed(format!("image '{}': {why}", path.display()))
}

/// Open one level, read-only, with no backing file and no external data
/// file (the deny gate refuses both); also the backing file its header
/// names, made absolute as QEMU does (relative to the image's folder).
fn open_level(path: &Path, format: DiskFormat) -> Result<(Image, Option<PathBuf>)> {
    let io = |what: &'static str| move |e| Error::io(what, path, e);
    let storage = ImagoFile::open(StorageOpenOptions::new().filename(path).write(false))
        .map_err(io("cannot open image"))?;
    Ok(match format {
        DiskFormat::Raw => {
            let raw = ImagoRaw::builder(storage)
                .open(DenyImplicitOpenGate::default())
                .map_err(io("cannot open backing image"))?;
            (Arc::new(FormatAccess::new(raw)), None)
        }
        DiskFormat::Qcow2 => {
            let q = Qcow2::<ImagoFile>::builder(storage)
                .write(false)
                .backing(None)
                .open(DenyImplicitOpenGate::default())
                .map_err(io("cannot open qcow2 image"))?;
            let dir = path.parent().unwrap_or(Path::new("/"));
            let below = q.implicit_backing_file().map(|name| dir.join(name));
            (Arc::new(FormatAccess::new(q)), below)
        }
    })
}

/// Append `pos..pos+len` to `runs`, joining it to the last run it follows.
fn push_run(runs: &mut Vec<(u64, u64)>, pos: u64, len: u64) {
    match runs.last_mut() {
        Some((_, e)) if *e == pos => *e = pos + len,
        _ => runs.push((pos, pos + len)),
    }
}

impl ChainReader {
    /// Open the qcow2 image at `path`, which may read through `recorded`
    /// (nearest first): each header may name only a recorded image below
    /// the one naming it (a deeper one once a merge removed the levels in
    /// between), never one the catalog did not record. Every header is
    /// checked now, one level open at a time; only the top stays open (a
    /// caller may hold the sources of many disks before reading any).
    pub fn open(path: &Path, recorded: &[(PathBuf, DiskFormat)]) -> Result<ChainReader> {
        let (top, mut named) = open_level(path, DiskFormat::Qcow2)?;
        let size = top.size();
        let mut levels = vec![(path.to_path_buf(), DiskFormat::Qcow2)];
        let open = vec![(0, top)];
        let mut rest = recorded;
        while let Some(b) = named {
            let Some(at) = rest.iter().position(|(p, _)| *p == b) else {
                let above = &levels[levels.len() - 1].0;
                return Err(bad_chain(
                    above,
                    format!(
                        "it names backing file '{}', which the catalog did not record",
                        b.display()
                    ),
                ));
            };
            let (p, f) = &rest[at];
            rest = &rest[at + 1..];
            levels.push((p.clone(), *f));
            named = open_level(p, *f)?.1;
        }
        Ok(ChainReader {
            levels,
            size,
            open: Mutex::new(open),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Levels data may come from (the image itself included).
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Level `l`, opened again if it was closed. A reopened level must
    /// still name the level below it that was checked at open.
    fn level(&self, l: usize) -> Result<Image> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = open.iter().position(|(k, _)| *k == l) {
            let hit = open.remove(i);
            let img = Arc::clone(&hit.1);
            open.push(hit);
            return Ok(img);
        }
        let (path, format) = &self.levels[l];
        let (img, named) = open_level(path, *format)?;
        if named.as_ref() != self.levels.get(l + 1).map(|(p, _)| p) {
            return Err(bad_chain(
                path,
                "its header changed while it was read".into(),
            ));
        }
        if open.len() >= OPEN_LEVELS {
            open.remove(0);
        }
        open.push((l, Arc::clone(&img)));
        Ok(img)
    }

    /// Read `buf.len()` bytes at `offset`, level by level: each level is
    /// asked only for what the levels above left unallocated, so it is
    /// opened at most once per call. Returns false when no level holds data
    /// there (`buf` is then left as it was: the range reads as zeroes).
    pub fn fill(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        let end = offset + buf.len() as u64;
        let mut todo = vec![(offset, end)];
        let mut zeroes = Vec::new();
        let mut data = false;
        for l in 0..self.levels.len() {
            if todo.is_empty() {
                break;
            }
            let img = self.level(l)?;
            let mut below = Vec::new();
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
                    match m {
                        Mapping::Zero {
                            explicit: false, ..
                        } => push_run(&mut below, pos, len),
                        Mapping::Zero { .. } | Mapping::Eof { .. } => {
                            push_run(&mut zeroes, pos, len)
                        }
                        _ => {
                            let part =
                                &mut buf[(pos - offset) as usize..(pos - offset + len) as usize];
                            img.read(part, pos)
                                .map_err(|e| self.failed("cannot read", l, pos, e))?;
                            data = true;
                        }
                    }
                    pos += len;
                }
            }
            todo = below;
        }
        if data {
            for (a, b) in zeroes.into_iter().chain(todo) {
                buf[(a - offset) as usize..(b - offset) as usize].fill(0);
            }
        }
        Ok(data)
    }

    fn failed(&self, what: &str, l: usize, pos: u64, e: std::io::Error) -> Error {
        Error::operation_failed(format!(
            "{what} '{}' at offset {pos}: {e}",
            self.levels[l].0.display()
        ))
    }
}
