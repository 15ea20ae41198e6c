//! Disk images: reads raw and qcow2 images (with backing chains) and NBD
//! exports, tells which ranges hold data, and writes raw or qcow2 targets.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::{
    FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping, PermissiveImplicitOpenGate,
    StorageOpenOptions,
};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::image::cache::{self, DropBehind};
use crate::image::nbd::{NbdAddress, NbdClient};
use crate::xml::backup::DiskFormat;

/// What a range of a source image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extent {
    Data,
    Zero,
}

/// A readable disk image.
pub enum Source {
    Raw {
        file: File,
        size: u64,
    },
    Qcow2(FormatAccess<ImagoFile>),
    /// An export of an NBD server (a source of `RestoreUnmanaged`).
    Nbd(Box<NbdClient>),
}

fn nbd_io(e: Error) -> std::io::Error {
    std::io::Error::other(e.message)
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
                cache::sequential(&file);
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

    /// Connect to an NBD export, read-only.
    pub fn open_nbd(server: &NbdAddress, export: &str) -> Result<Source> {
        Ok(Source::Nbd(Box::new(NbdClient::connect(
            server, export, None,
        )?)))
    }

    pub fn size(&self) -> u64 {
        match self {
            Source::Raw { size, .. } => *size,
            Source::Qcow2(q) => q.size(),
            Source::Nbd(c) => c.size(),
        }
    }

    /// The kind and length of the extent at `offset`, at most `max` bytes.
    pub(crate) fn extent(&self, offset: u64, max: u64) -> std::io::Result<(Extent, u64)> {
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
            Source::Nbd(c) => {
                let (data, len) = c.extent(offset, max).map_err(nbd_io)?;
                Ok((if data { Extent::Data } else { Extent::Zero }, len))
            }
        }
    }

    /// The size now: a raw file can be resized behind the library's back.
    pub(crate) fn current_size(&self) -> std::io::Result<u64> {
        match self {
            Source::Raw { file, .. } => Ok(file.metadata()?.len()),
            Source::Qcow2(q) => Ok(q.size()),
            Source::Nbd(c) => Ok(c.size()),
        }
    }

    /// Whether no page of `offset..offset+len` is in the page cache, so a
    /// read of it may drop it afterwards (see `image::cache`); false when
    /// unknown or not a file read here.
    pub(crate) fn is_cold(&self, offset: u64, len: u64) -> bool {
        match self {
            Source::Raw { file, .. } => cache::is_cold(file, offset, len),
            _ => false,
        }
    }

    /// Drop `offset..offset+len`, found cold before it was read.
    pub(crate) fn drop_cached(&self, offset: u64, len: u64) {
        if let Source::Raw { file, .. } = self {
            cache::drop_cached(file, offset, len);
        }
    }

    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::Raw { file, .. } => file.read_exact_at(buf, offset),
            Source::Qcow2(q) => q.read(buf, offset),
            Source::Nbd(c) => c.read_at(buf, offset).map_err(nbd_io),
        }
    }
}

/// A disk image being written, with drop-behind of what was written (see
/// `image::cache`).
pub struct Target {
    img: TargetImage,
    cache: DropBehind,
    /// A file the copy created: once synced, none of it needs caching.
    created: bool,
}

enum TargetImage {
    Raw { file: File },
    Qcow2(FormatAccess<ImagoFile>),
}

/// A second handle on `file` for the page-cache calls.
fn cache_of(file: &File, path: &Path) -> Result<DropBehind> {
    let dup = file
        .try_clone()
        .map_err(io_err("cannot duplicate the handle of target image", path))?;
    Ok(DropBehind::new(dup))
}

impl Target {
    /// Create a new image, readable by its owner only (it holds guest data).
    /// An existing file is never overwritten unless `replace` (a storage
    /// volume libvirt has just created for us). A qcow2 image may get a
    /// `backing` file: an incremental target reads through to its parent's.
    pub fn create(
        path: &Path,
        format: DiskFormat,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        replace: bool,
    ) -> Result<Target> {
        let mut opts = OpenOptions::new();
        opts.mode(0o600).read(true).write(true);
        if replace {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let file = opts
            .open(path)
            .map_err(io_err("cannot create target image", path))?;
        let cache = cache_of(&file, path)?;
        let img = match (format, backing) {
            (DiskFormat::Raw, None) => {
                file.set_len(size)
                    .map_err(io_err("cannot size target image", path))?;
                TargetImage::Raw { file }
            }
            (DiskFormat::Raw, Some(_)) => {
                return Err(Error::internal("a raw image cannot have a backing file"));
            }
            (DiskFormat::Qcow2, backing) => {
                let storage = ImagoFile::from_open_file(
                    file,
                    StorageOpenOptions::new().filename(path).write(true),
                )
                .map_err(io_err("cannot open target image", path))?;
                // qcow2 sizes are whole sectors; round up so a raw source's
                // odd tail is kept (as qemu-img convert does).
                let mut builder =
                    Qcow2::<ImagoFile>::create_builder(storage).size(size.div_ceil(512) * 512);
                if let Some((b, f)) = backing {
                    builder = builder.backing(path_string(b), f.as_str().to_string());
                }
                // The backing file is only named: nothing reads through a
                // target while it is written (whole 64 KiB clusters, zero
                // clusters hide the parent), and opening the chain would
                // cost a descriptor and a cache per level.
                let q = builder
                    .create_open(PermissiveImplicitOpenGate::default(), |img| {
                        Ok(Qcow2::<ImagoFile>::builder(img).write(true).backing(None))
                    })
                    .map_err(io_err("cannot format target image", path))?;
                TargetImage::Qcow2(FormatAccess::new(q))
            }
        };
        Ok(Target {
            img,
            cache,
            created: true,
        })
    }

    /// Open an existing image to write into it (in-place restore).
    pub fn open_existing(path: &Path, format: DiskFormat) -> Result<Target> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("cannot open disk image for writing", path))?;
        let cache = cache_of(&file, path)?;
        let img = match format {
            DiskFormat::Raw => TargetImage::Raw { file },
            DiskFormat::Qcow2 => {
                let storage = ImagoFile::from_open_file(
                    file,
                    StorageOpenOptions::new().filename(path).write(true),
                )
                .map_err(io_err("cannot open qcow2 disk image for writing", path))?;
                let q = Qcow2::<ImagoFile>::builder(storage)
                    .write(true)
                    .open(PermissiveImplicitOpenGate::default())
                    .map_err(io_err("cannot open qcow2 disk image for writing", path))?;
                TargetImage::Qcow2(FormatAccess::new(q))
            }
        };
        Ok(Target {
            img,
            cache,
            created: false,
        })
    }

    /// The guest range `offset..end` was just written: hand it to
    /// writeback and drop what was written long enough ago.
    pub(crate) fn written(&self, offset: u64, end: u64) {
        match self.img {
            TargetImage::Raw { .. } => self.cache.written(offset, end),
            TargetImage::Qcow2(_) => self.cache.appended(),
        }
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match &self.img {
            TargetImage::Raw { file } => file.write_all_at(buf, offset),
            TargetImage::Qcow2(q) => q.write(buf, offset),
        }
    }

    /// Make a range read as zeroes: a zero cluster in qcow2 (which hides a
    /// backing file's data), a punched hole in a raw file.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match &self.img {
            TargetImage::Raw { file } => {
                use rustix::fs::{FallocateFlags, fallocate};
                let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
                if fallocate(file, punch, offset, len).is_ok() {
                    return Ok(());
                }
                let zeroes = vec![0u8; len as usize];
                file.write_all_at(&zeroes, offset)
            }
            TargetImage::Qcow2(q) => q.write_zeroes(offset, len),
        }
    }

    /// Flush metadata and make the data durable.
    pub fn finish(self, path: &Path) -> Result<()> {
        match &self.img {
            TargetImage::Raw { file } => file
                .sync_all()
                .map_err(io_err("cannot sync target image", path))?,
            TargetImage::Qcow2(q) => {
                q.flush()
                    .map_err(io_err("cannot flush target image", path))?;
                q.sync().map_err(io_err("cannot sync target image", path))?
            }
        }
        self.cache.finish(self.created);
        Ok(())
    }
}

/// A new file next to `path` to build its replacement in, named after it
/// and `what` (merge, restore), hidden and unique.
pub fn sibling_tmp(path: &Path, what: &str) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(".{name}.{what}-{}", uuid::Uuid::new_v4()))
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
