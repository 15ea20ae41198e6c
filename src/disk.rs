//! The disk engine: reads raw and qcow2 images (with backing chains), finds
//! which ranges hold data, and copies only those into raw or qcow2 targets
//! with a fixed-size buffer.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping,
    PermissiveImplicitOpenGate, StorageOpenOptions,
};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::xml::backup::DiskFormat;

/// Copy buffer: the only per-disk data held in memory. 4 MiB keeps syscalls
/// few while bounding memory per job.
pub(crate) const COPY_CHUNK: u64 = 4 << 20;

/// Granularity of the all-zero test: the qcow2 cluster size, so a skipped
/// block is exactly an unallocated cluster in the target.
pub(crate) const ZERO_BLOCK: usize = 64 << 10;

/// Shared counters of a copy, read by `GetParameters` while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub processed: AtomicU64,
    pub written: AtomicU64,
    /// Set by a canceller in this process.
    pub cancel: AtomicBool,
    /// A file whose existence asks the copy to stop: how another process
    /// cancels (one stat per chunk).
    pub cancel_file: Option<PathBuf>,
}

impl Progress {
    fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed)
            || self.cancel_file.as_ref().is_some_and(|f| f.exists())
        {
            return Err(Error::aborted("backup job cancelled"));
        }
        Ok(())
    }
}

/// What a range of a source image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    Data,
    Zero,
}

/// A readable disk image.
pub enum Source {
    Raw { file: File, size: u64 },
    Qcow2(FormatAccess<ImagoFile>),
}

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(what, path, e)
}

impl Source {
    pub fn open(path: &Path, format: DiskFormat) -> Result<Source> {
        match format {
            DiskFormat::Raw => {
                let file = File::open(path).map_err(io_err("cannot open source image", path))?;
                let size = file
                    .metadata()
                    .map_err(io_err("cannot stat source image", path))?
                    .len();
                Ok(Source::Raw { file, size })
            }
            DiskFormat::Qcow2 => {
                // Backing files are opened as the image names them, as QEMU does.
                let q = Qcow2::<ImagoFile>::builder_path(path)
                    .write(false)
                    .open(PermissiveImplicitOpenGate::default())
                    .map_err(io_err("cannot open qcow2 source image", path))?;
                Ok(Source::Qcow2(FormatAccess::new(q)))
            }
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Source::Raw { size, .. } => *size,
            Source::Qcow2(q) => q.size(),
        }
    }

    /// The kind and length of the extent at `offset`, at most `max` bytes.
    fn extent(&self, offset: u64, max: u64) -> std::io::Result<(Extent, u64)> {
        match self {
            Source::Raw { file, size } => {
                let end = (*size).min(offset + max);
                match rustix::fs::seek(file, SeekFrom::Data(offset)) {
                    Err(Errno::NXIO) => Ok((Extent::Zero, end - offset)),
                    Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => Ok((Extent::Data, end - offset)),
                    Err(e) => Err(e.into()),
                    Ok(data) if data > offset => Ok((Extent::Zero, data.min(end) - offset)),
                    Ok(_) => {
                        let hole = rustix::fs::seek(file, SeekFrom::Hole(offset))?;
                        Ok((Extent::Data, hole.min(end) - offset))
                    }
                }
            }
            Source::Qcow2(q) => {
                let (m, len) = q.get_mapping(offset, max)?;
                Ok(match m {
                    Mapping::Zero { .. } => (Extent::Zero, len),
                    Mapping::Eof { .. } => (Extent::Zero, max),
                    _ => (Extent::Data, len),
                })
            }
        }
    }

    /// The size now: a raw file can be resized behind the library's back.
    fn current_size(&self) -> std::io::Result<u64> {
        match self {
            Source::Raw { file, .. } => Ok(file.metadata()?.len()),
            Source::Qcow2(q) => Ok(q.size()),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::Raw { file, .. } => file.read_exact_at(buf, offset),
            Source::Qcow2(q) => q.read(buf, offset),
        }
    }
}

/// A disk image being written.
pub enum Target {
    Raw { file: File },
    Qcow2(FormatAccess<ImagoFile>),
}

impl Target {
    /// Create a new image, readable by its owner only (it holds guest data);
    /// an existing file is never overwritten.
    pub fn create(path: &Path, format: DiskFormat, size: u64) -> Result<Target> {
        let file = OpenOptions::new()
            .mode(0o600)
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err("cannot create target image", path))?;
        match format {
            DiskFormat::Raw => {
                file.set_len(size)
                    .map_err(io_err("cannot size target image", path))?;
                Ok(Target::Raw { file })
            }
            DiskFormat::Qcow2 => {
                let storage = ImagoFile::from_open_file(
                    file,
                    StorageOpenOptions::new().filename(path).write(true),
                )
                .map_err(io_err("cannot open target image", path))?;
                // qcow2 sizes are whole sectors; round up so a raw source's
                // odd tail is kept (as qemu-img convert does).
                let q = Qcow2::<ImagoFile>::create_builder(storage)
                    .size(size.div_ceil(512) * 512)
                    .create_open(DenyImplicitOpenGate::default(), |img| {
                        Ok(Qcow2::<ImagoFile>::builder(img).write(true))
                    })
                    .map_err(io_err("cannot format target image", path))?;
                Ok(Target::Qcow2(FormatAccess::new(q)))
            }
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Target::Raw { file } => file.write_all_at(buf, offset),
            Target::Qcow2(q) => q.write(buf, offset),
        }
    }

    /// Flush metadata and make the data durable.
    pub fn finish(self, path: &Path) -> Result<()> {
        match self {
            Target::Raw { file } => file
                .sync_all()
                .map_err(io_err("cannot sync target image", path)),
            Target::Qcow2(q) => {
                q.flush()
                    .map_err(io_err("cannot flush target image", path))?;
                q.sync().map_err(io_err("cannot sync target image", path))
            }
        }
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

/// Copy every data range of `src` into `dst`, skipping holes and all-zero
/// blocks, counting progress and written bytes in `progress`.
pub fn copy_image(src: &Source, dst: &Target, progress: &Progress) -> Result<()> {
    let size = src.size();
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut offset = 0u64;
    while offset < size {
        progress.check_cancel()?;
        let max = COPY_CHUNK.min(size - offset);
        let (kind, len) = src.extent(offset, max).map_err(|e| {
            Error::operation_failed(format!("cannot map source image at offset {offset}: {e}"))
        })?;
        let len = len.clamp(1, max);
        if kind == Extent::Data {
            let chunk = &mut buf[..len as usize];
            src.read_at(chunk, offset).map_err(|e| {
                Error::operation_failed(format!("cannot read source image at offset {offset}: {e}"))
            })?;
            write_nonzero(dst, chunk, offset, progress)?;
        }
        offset += len;
        progress.processed.fetch_add(len, Ordering::Relaxed);
    }
    // A source that shrank while it was read would have read as holes.
    let now = src
        .current_size()
        .map_err(|e| Error::operation_failed(format!("cannot stat source image: {e}")))?;
    if now != size {
        return Err(Error::operation_failed(format!(
            "source image changed size during the backup ({size} -> {now} bytes)"
        )));
    }
    Ok(())
}

/// Write the runs of `chunk` that are not all-zero blocks.
fn write_nonzero(dst: &Target, chunk: &[u8], offset: u64, progress: &Progress) -> Result<()> {
    let mut run_start: Option<usize> = None;
    let mut pos = 0usize;
    let flush = |start: usize, end: usize| -> Result<()> {
        dst.write_at(&chunk[start..end], offset + start as u64)
            .map_err(|e| {
                Error::operation_failed(format!(
                    "cannot write target image at offset {}: {e}",
                    offset + start as u64
                ))
            })?;
        progress
            .written
            .fetch_add((end - start) as u64, Ordering::Relaxed);
        Ok(())
    };
    while pos < chunk.len() {
        // Blocks are aligned to guest offsets so they match target clusters.
        let block_end = (((offset as usize + pos) / ZERO_BLOCK + 1) * ZERO_BLOCK - offset as usize)
            .min(chunk.len());
        let zero = is_zero(&chunk[pos..block_end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(s)) => {
                flush(s, pos)?;
                run_start = None;
            }
            _ => {}
        }
        pos = block_end;
    }
    if let Some(s) = run_start {
        flush(s, chunk.len())?;
    }
    Ok(())
}

/// Remove a file if it exists; a missing file is not an error.
pub fn remove_if_exists(path: &PathBuf) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", path, e)),
    }
}
