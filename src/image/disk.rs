//! Disk images: reads raw and qcow2 images (with backing chains) and NBD
//! exports, tells which ranges hold data, and writes raw or qcow2 targets.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw as ImagoRaw;
use imago::{
    DenyImplicitOpenGate, FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping,
    PermissiveImplicitOpenGate, StorageOpenOptions,
};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::image::buffer;
use crate::image::cache::{self, DropBehind};
use crate::image::chain::{ChainReader, bad_chain, recorded_at};
use crate::image::codec::Codec;
#[cfg(test)]
pub(crate) use crate::image::direct::direct_wanted;
pub use crate::image::direct::use_direct_targets;
use crate::image::direct::{reopen_direct, reopen_qcow2_direct};
use crate::image::file::{self as image_file, Kind};
use crate::image::nbd::{NbdAddress, NbdClient};
use crate::image::qcow2_compressed::CompressedWriter;
use crate::image::qcow2_decode::{Qcow2Image, needs_own_reader};
use crate::image::qemu_lock::DiskLocks;
use crate::xml::backup::DiskFormat;

/// What a range of a source image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    Data,
    Zero,
}

/// Which backing files a qcow2 image may read through. A backing file or
/// its format is never taken from a header someone else could have written
/// (a guest can write a qcow2 header naming any host file at the start of
/// its raw disk), and a format is never probed.
#[derive(Debug, Clone, Copy)]
pub enum Chain<'a> {
    /// None: an image the caller named; one with a backing file is refused.
    None,
    /// A backup's own image: the chain below it the catalog recorded
    /// (parent's copy first, down to a full copy). The header may name only
    /// one of those images (or none, once merged into a full copy), in the
    /// format the catalog recorded.
    Recorded(&'a [(PathBuf, DiskFormat)]),
    /// A domain's disk: the backing files its qcow2 headers name, each with
    /// the format the header records (as libvirt requires); a header naming
    /// a backing file without a format is refused, never probed.
    Header,
    /// A shut-off domain's disk a backup reads: as `Header`, each file
    /// locked as QEMU locks it before anything of it is read (see
    /// `image::qemu_lock`).
    HeaderLocked(&'a DiskLocks),
    /// Only the image's own header and clusters (checks of its size).
    Detached,
}

/// Deepest backing chain followed through headers.
const MAX_CHAIN: usize = 64;

/// The backing file a qcow2 header names, made absolute as QEMU does
/// (relative to the image's folder), with the format it records.
fn header_backing(q: &Qcow2<ImagoFile>, path: &Path) -> Option<(PathBuf, Option<String>)> {
    let name = q.implicit_backing_file()?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    Some((dir.join(name), q.implicit_backing_format().cloned()))
}

/// The image `chain` lets `path` read through, opened read-only.
fn open_backing(
    path: &Path,
    header: Option<(PathBuf, Option<String>)>,
    chain: &Chain,
    depth: usize,
) -> Result<Option<FormatAccess<ImagoFile>>> {
    let (file, format, below) = match (*chain, header) {
        (Chain::Detached, _) | (Chain::None | Chain::Header | Chain::HeaderLocked(_), None) => {
            return Ok(None);
        }
        (Chain::None, Some((b, _))) => {
            return Err(Error::invalid_arg(format!(
                "'{}' is a qcow2 image with a backing file ('{}'): images given to the library must be complete (no backing file)",
                path.display(),
                b.display()
            )));
        }
        (Chain::Recorded(_), None) => return Ok(None),
        (Chain::Recorded(list), Some((b, _))) => {
            let at = recorded_at(path, list, &b)?;
            let (want, f) = &list[at];
            (want.clone(), *f, Chain::Recorded(&list[at + 1..]))
        }
        (Chain::Header | Chain::HeaderLocked(_), Some((b, None))) => {
            return Err(bad_chain(
                path,
                format!(
                    "its backing file '{}' has no recorded format; the library never probes one",
                    b.display()
                ),
            ));
        }
        (Chain::Header | Chain::HeaderLocked(_), Some((b, Some(f)))) => {
            let f = DiskFormat::parse(&f).map_err(|_| {
                bad_chain(
                    path,
                    format!("backing file '{}' has format '{f}'", b.display()),
                )
            })?;
            (b, f, *chain)
        }
    };
    if depth >= MAX_CHAIN {
        return Err(bad_chain(path, "its backing chain is too deep".into()));
    }
    let storage = open_storage(&file, format, false, chain)?;
    Ok(Some(match format {
        DiskFormat::Raw => FormatAccess::new(
            ImagoRaw::builder(storage)
                .open(DenyImplicitOpenGate::default())
                .map_err(io_err("cannot open backing image", &file))?,
        ),
        DiskFormat::Qcow2 => open_qcow2_storage(&file, storage, false, &below, depth + 1)?,
    }))
}

/// The image file at `path` for imago, opened by the library (never
/// blocking, only a kind of file an image of `format` can be: see
/// `image::file`), never by imago from a path; locked first if `chain`
/// says so.
fn open_storage(path: &Path, format: DiskFormat, write: bool, chain: &Chain) -> Result<ImagoFile> {
    let file = image_file::open(path, write, Kind::of(format), "cannot open image")?;
    if let Chain::HeaderLocked(locks) = chain {
        locks.lock(&file, path, Kind::of(format))?;
    }
    storage_of(file, path, write)
}

/// An open file handed to imago; `path` only names it (imago resolves a
/// relative backing name from it, and the library never lets it open one).
fn storage_of(file: File, path: &Path, write: bool) -> Result<ImagoFile> {
    ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(write))
        .map_err(io_err("cannot open image", path))
}

/// Open a qcow2 image with exactly the backing image `chain` allows and no
/// external data file (it would be another file named by the header).
fn open_qcow2(
    path: &Path,
    write: bool,
    chain: &Chain,
    depth: usize,
) -> Result<FormatAccess<ImagoFile>> {
    let storage = open_storage(path, DiskFormat::Qcow2, write, chain)?;
    open_qcow2_storage(path, storage, write, chain, depth)
}

fn open_qcow2_storage(
    path: &Path,
    storage: ImagoFile,
    write: bool,
    chain: &Chain,
    depth: usize,
) -> Result<FormatAccess<ImagoFile>> {
    // First without any backing image, to read what the header names;
    // the backing image is then given to the same open image (the file is
    // never opened again by its path, which may name another by then).
    let mut q = Qcow2::<ImagoFile>::builder(storage)
        .write(write)
        .backing(None)
        .open(DenyImplicitOpenGate::default())
        .map_err(io_err("cannot open qcow2 image", path))?;
    let header = header_backing(&q, path);
    if let Some(backing) = open_backing(path, header, chain, depth)? {
        q.set_backing(Some(backing));
    }
    Ok(FormatAccess::new(q))
}

/// A readable disk image.
pub enum Source {
    /// A raw image file or block device.
    Raw {
        /// The open file or device.
        file: File,
        /// Its size in bytes.
        size: u64,
        /// The last data run `SEEK_HOLE` found (start, end): tmpfs answers
        /// `SEEK_HOLE` by walking every page up to the hole, so asking once
        /// per window would cost the square of the file's size.
        data_run: std::sync::Mutex<(u64, u64)>,
    },
    /// A qcow2 image read directly, through the backing files its `Chain` allows.
    Qcow2(FormatAccess<ImagoFile>),
    /// A backup's qcow2 image read through its recorded chain, each level
    /// opened only while needed (see `image::chain`).
    Chain(Box<ChainReader>),
    /// An export of an NBD server (a source of `RestoreUnmanaged`, or a
    /// running domain's disk served by libvirt's pull-mode job), through
    /// one or more connections.
    Nbd(Box<NbdConnections>),
    /// A shut-off domain's disk, read with QEMU's image locks held on
    /// every file it reads (see `Source::open_locked`).
    Locked(Box<Source>, Arc<DiskLocks>),
}

/// Connections to one NBD export. Each connection has one request in
/// flight at a time, so the reads of a window go through the connection its
/// offset maps to: the copy engine's reader threads, each reading every
/// n-th window, then each use a connection of their own and overlap their
/// requests.
pub struct NbdConnections(Vec<NbdClient>);

/// The stripe that maps offsets to connections: the copy engine's window.
const NBD_STRIPE: u64 = 4 << 20;

impl NbdConnections {
    /// The connection for reads at `offset`.
    fn at(&self, offset: u64) -> &NbdClient {
        &self.0[(offset / NBD_STRIPE) as usize % self.0.len()]
    }
}

fn nbd_io(e: Error) -> std::io::Error {
    std::io::Error::other(e.message)
}

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(what, path, e)
}

impl Source {
    /// Open an image read-only; `chain` says which backing files it may
    /// read through (never a probed format: see `Chain`). Only a regular
    /// file, or for a raw image a block device (its size the device's), is
    /// opened, never blocking (see `image::file`): anything else, a FIFO
    /// above all, is an error.
    pub fn open(path: &Path, format: DiskFormat, chain: Chain) -> Result<Source> {
        match format {
            DiskFormat::Raw => {
                let file =
                    image_file::open(path, false, Kind::of(format), "cannot open source image")?;
                let size = image_file::size(&file)
                    .map_err(io_err("cannot find the size of source image", path))?;
                cache::sequential(&file);
                match chain {
                    // A backup's own file: see `chain::open_file`.
                    Chain::Recorded(_) => drop(file.try_lock_shared()),
                    Chain::HeaderLocked(locks) => locks.lock(&file, path, Kind::of(format))?,
                    _ => {}
                }
                Ok(Source::Raw {
                    file,
                    size,
                    data_run: Default::default(),
                })
            }
            DiskFormat::Qcow2 => match chain {
                Chain::Recorded(list) => {
                    Ok(Source::Chain(Box::new(ChainReader::open(path, list)?)))
                }
                _ => Ok(Source::Qcow2(open_qcow2(path, false, &chain, 0)?)),
            },
        }
    }

    /// A shut-off domain's disk `disk`, opened for a backup (as with
    /// `Chain::Header`) with QEMU's image locks taken on every file it
    /// reads, so that neither the domain nor a QEMU tool can write or
    /// resize them while they are held: until the source and every
    /// `locks()` of it are dropped. Refused when another process writes
    /// or resizes one of them (see `image::qemu_lock`).
    pub fn open_locked(path: &Path, format: DiskFormat, disk: &str) -> Result<Source> {
        let locks = DiskLocks::new(disk);
        let src = Source::open(path, format, Chain::HeaderLocked(&locks))?;
        Ok(Source::Locked(Box::new(src), Arc::new(locks)))
    }

    /// The image locks a source of `open_locked` holds.
    pub fn locks(&self) -> Option<Arc<DiskLocks>> {
        match self {
            Source::Locked(_, locks) => Some(Arc::clone(locks)),
            _ => None,
        }
    }

    /// Connect to an NBD export, read-only.
    pub fn open_nbd(server: &NbdAddress, export: &str) -> Result<Source> {
        Source::nbd(vec![NbdClient::connect(server, export, None)?])
    }

    /// Read an export through `clients`, connections to it (at least one,
    /// all of the same size).
    pub fn nbd(clients: Vec<NbdClient>) -> Result<Source> {
        let size = clients.first().map(NbdClient::size);
        if size.is_none() || clients.iter().any(|c| Some(c.size()) != size) {
            return Err(Error::internal(
                "NBD connections to one export of different sizes",
            ));
        }
        Ok(Source::Nbd(Box::new(NbdConnections(clients))))
    }

    /// How many threads should read it at once, when that is not the copy
    /// engine's default: one per connection to an NBD export (each
    /// connection has one request in flight, and a reader mostly waits for
    /// the server's reply).
    pub(crate) fn readers(&self) -> Option<usize> {
        match self {
            Source::Nbd(c) => Some(c.0.len()),
            _ => None,
        }
    }

    /// The image's virtual size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Source::Raw { size, .. } => *size,
            Source::Qcow2(q) => q.size(),
            Source::Chain(c) => c.size(),
            Source::Nbd(c) => c.0[0].size(),
            Source::Locked(s, _) => s.size(),
        }
    }

    /// Read `buf.len()` bytes at `offset`: data extents are read, holes
    /// filled with zeroes. Returns false when the whole range is a hole
    /// (and `buf` was left as it was).
    pub(crate) fn fill(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        match self {
            Source::Chain(c) => return c.fill(buf, offset),
            Source::Locked(s, _) => return s.fill(buf, offset),
            _ => {}
        }
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        let mut any_data = false;
        while pos < end {
            let (kind, len) = self.extent(pos, end - pos).map_err(|e| {
                Error::operation_failed(format!("cannot map source image at offset {pos}: {e}"))
            })?;
            let len = len.clamp(1, end - pos);
            let part = &mut buf[(pos - offset) as usize..(pos - offset + len) as usize];
            match kind {
                Extent::Data => {
                    self.read_at(part, pos).map_err(|e| {
                        Error::operation_failed(format!(
                            "cannot read source image at offset {pos}: {e}"
                        ))
                    })?;
                    any_data = true;
                }
                Extent::Zero if pos == offset && len == end - offset => return Ok(false),
                Extent::Zero => part.fill(0),
            }
            pos += len;
        }
        Ok(any_data)
    }

    /// The kind and length of the extent at `offset`, at most `max` bytes.
    fn extent(&self, offset: u64, max: u64) -> std::io::Result<(Extent, u64)> {
        match self {
            Source::Raw {
                file,
                size,
                data_run,
            } => {
                let end = (*size).min(offset + max);
                let (start, hole) = *data_run.lock().unwrap();
                if (start..hole).contains(&offset) {
                    return Ok((Extent::Data, hole.min(end) - offset));
                }
                // A hole is trusted only while the file is as long as it
                // was: one a delete is shrinking reads as holes past its
                // new end.
                let whole = || {
                    let m = file.metadata()?;
                    match m.is_file() && m.len() < *size {
                        false => Ok(()),
                        true => Err(std::io::Error::other(format!(
                            "the file changed size while it was read ({size} -> {} bytes)",
                            m.len()
                        ))),
                    }
                };
                match rustix::fs::seek(file, SeekFrom::Data(offset)) {
                    Err(Errno::NXIO) => whole().map(|()| (Extent::Zero, end - offset)),
                    Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => Ok((Extent::Data, end - offset)),
                    Err(e) => Err(e.into()),
                    Ok(data) if data > offset => {
                        whole().map(|()| (Extent::Zero, data.min(end) - offset))
                    }
                    Ok(_) => {
                        let hole = rustix::fs::seek(file, SeekFrom::Hole(offset))?;
                        *data_run.lock().unwrap() = (offset, hole);
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
                let (data, len) = c.at(offset).extent(offset, max).map_err(nbd_io)?;
                Ok((if data { Extent::Data } else { Extent::Zero }, len))
            }
            // Not reached: `fill` reads a chain itself.
            Source::Chain(_) => Ok((Extent::Data, max)),
            Source::Locked(s, _) => s.extent(offset, max),
        }
    }

    /// The size now: a raw file can be resized behind the library's back.
    pub(crate) fn current_size(&self) -> std::io::Result<u64> {
        match self {
            Source::Raw { file, .. } => image_file::size(file),
            Source::Qcow2(q) => Ok(q.size()),
            Source::Chain(c) => Ok(c.size()),
            Source::Nbd(c) => Ok(c.0[0].size()),
            Source::Locked(s, _) => s.current_size(),
        }
    }

    /// Whether no page of `offset..offset+len` is in the page cache, so a
    /// read of it may drop it afterwards (see `image::cache`); false when
    /// unknown or not a file read here.
    pub(crate) fn is_cold(&self, offset: u64, len: u64) -> bool {
        match self {
            Source::Raw { file, .. } => cache::is_cold(file, offset, len),
            Source::Locked(s, _) => s.is_cold(offset, len),
            _ => false,
        }
    }

    /// Drop `offset..offset+len`, found cold before it was read.
    pub(crate) fn drop_cached(&self, offset: u64, len: u64) {
        match self {
            Source::Raw { file, .. } => cache::drop_cached(file, offset, len),
            Source::Locked(s, _) => s.drop_cached(offset, len),
            _ => {}
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Source::Raw { file, .. } => {
                cache::before_read(file);
                file.read_exact_at(buf, offset)
            }
            Source::Qcow2(q) => q.read(buf, offset),
            // Not reached: `fill` reads a chain itself.
            Source::Chain(c) => match c.fill(buf, offset) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    buf.fill(0);
                    Ok(())
                }
                Err(e) => Err(std::io::Error::other(e.message)),
            },
            Source::Nbd(c) => c.at(offset).read_at(buf, offset).map_err(nbd_io),
            Source::Locked(s, _) => s.read_at(buf, offset),
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
    /// `direct`: a second handle on the same file with `O_DIRECT`, for the
    /// aligned writes (all but a disk's odd tail).
    Raw {
        file: File,
        direct: Option<File>,
    },
    Qcow2(FormatAccess<ImagoFile>),
    /// A new qcow2 image of compressed clusters (see `qcow2_compressed`).
    Compressed(Box<CompressedWriter>),
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
    /// volume libvirt has just created for us), and then only a regular
    /// file (nothing else is opened: see `image::file`). A qcow2 image may
    /// get a `backing` file: an incremental target reads through to its
    /// parent's. The file is opened here and formatted by `create_from`.
    pub fn create(
        path: &Path,
        format: DiskFormat,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        replace: bool,
    ) -> Result<Target> {
        const WHAT: &str = "cannot create target image";
        let mut opts = OpenOptions::new();
        opts.mode(0o600)
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        if replace {
            if let Ok(m) = std::fs::metadata(path)
                && !m.is_file()
            {
                // Refused before the open (and its truncation) touches it.
                image_file::check_metadata(&m, path, Kind::Regular, WHAT)?;
            }
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let file = opts.open(path).map_err(io_err(WHAT, path))?;
        Target::create_from(file, path, format, size, backing)
    }

    /// Format `file`, a new empty regular file already created and open
    /// for reading and writing (a caller that creates its files itself,
    /// through a checked folder descriptor with `O_EXCL|O_NOFOLLOW`), as an
    /// image of `format` and `size`; a qcow2 image may get a `backing` file
    /// (named in its header as given). `path` only names the file in
    /// messages: nothing opens it by its path (see `direct::reopen_direct`). A
    /// file that is not regular or not empty is refused.
    pub fn create_from(
        file: File,
        path: &Path,
        format: DiskFormat,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
    ) -> Result<Target> {
        const WHAT: &str = "cannot create target image";
        image_file::check(&file, path, Kind::Regular, WHAT)?;
        let len = file
            .metadata()
            .map_err(io_err("cannot stat target image", path))?
            .len();
        if len != 0 {
            return Err(Error::operation_failed(format!(
                "{WHAT} '{}': it is not empty ({len} bytes); only a new, empty file is formatted",
                path.display()
            )));
        }
        let cache = cache_of(&file, path)?;
        ::log::debug!(
            "formatting '{}' as {} of {size} bytes{}",
            path.display(),
            format.as_str(),
            backing.map_or(String::new(), |(b, f)| format!(
                " over '{}' ({})",
                b.display(),
                f.as_str()
            ))
        );
        let img = match (format, backing) {
            (DiskFormat::Raw, None) => {
                file.set_len(size)
                    .map_err(io_err("cannot size target image", path))?;
                let direct = reopen_direct(&file, path);
                TargetImage::Raw { file, direct }
            }
            (DiskFormat::Raw, Some(_)) => {
                return Err(Error::internal("a raw image cannot have a backing file"));
            }
            (DiskFormat::Qcow2, backing) => {
                TargetImage::Qcow2(format_qcow2(file, path, size, backing)?)
            }
        };
        Ok(Target {
            img,
            cache,
            created: true,
        })
    }

    /// Format `file` as `create_from` does a qcow2 image, but one whose
    /// clusters `codec` compresses (written by the library's own writer:
    /// whole clusters, in guest order, as a backup's copy writes them).
    pub(crate) fn create_compressed(
        file: File,
        path: &Path,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        codec: Codec,
    ) -> Result<Target> {
        image_file::check(&file, path, Kind::Regular, "cannot create target image")?;
        let cache = cache_of(&file, path)?;
        ::log::debug!(
            "formatting '{}' as qcow2 ({codec:?} clusters) of {size} bytes",
            path.display()
        );
        let w = CompressedWriter::create(file, size, backing, codec)
            .map_err(io_err("cannot format target image", path))?;
        Ok(Target {
            img: TargetImage::Compressed(Box::new(w)),
            cache,
            created: true,
        })
    }

    /// Open an existing image to write into it (in-place restore); its
    /// backing files, read-only, as `chain` allows. Only a regular file,
    /// or for a raw image a block device (a logical volume: written in
    /// place, never resized), is opened, never blocking (see
    /// `image::file`).
    pub fn open_existing(path: &Path, format: DiskFormat, chain: Chain) -> Result<Target> {
        let file = image_file::open(
            path,
            true,
            Kind::of(format),
            "cannot open disk image for writing",
        )?;
        let cache = cache_of(&file, path)?;
        let img = match format {
            DiskFormat::Raw => TargetImage::Raw { file, direct: None },
            DiskFormat::Qcow2 => {
                let storage = storage_of(file, path, true)?;
                TargetImage::Qcow2(open_qcow2_storage(path, storage, true, &chain, 0)?)
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
            TargetImage::Qcow2(_) | TargetImage::Compressed(_) => self.cache.appended(),
        }
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match &self.img {
            TargetImage::Raw {
                direct: Some(d), ..
            } if buffer::is_aligned(buf, offset) => d.write_all_at(buf, offset),
            TargetImage::Raw { file, .. } => file.write_all_at(buf, offset),
            TargetImage::Qcow2(q) => q.write(buf, offset),
            TargetImage::Compressed(w) => w.write(buf, offset),
        }
    }

    /// Make a range read as zeroes: a zero cluster in qcow2 (which hides a
    /// backing file's data), a punched hole in a raw file (on a block
    /// device the punch zeroes the range); written zeroes where a punch is
    /// refused.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match &self.img {
            TargetImage::Raw { file, .. } => {
                use rustix::fs::{FallocateFlags, fallocate};
                let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
                if fallocate(file, punch, offset, len).is_ok() {
                    return Ok(());
                }
                let zeroes = vec![0u8; len as usize];
                file.write_all_at(&zeroes, offset)
            }
            TargetImage::Qcow2(q) => q.write_zeroes(offset, len),
            TargetImage::Compressed(w) => w.write_zeroes(offset, len),
        }
    }

    /// Flush metadata and make the data durable.
    pub fn finish(self, path: &Path) -> Result<()> {
        match &self.img {
            TargetImage::Raw { file, .. } => file
                .sync_all()
                .map_err(io_err("cannot sync target image", path))?,
            TargetImage::Qcow2(q) => {
                q.flush()
                    .map_err(io_err("cannot flush target image", path))?;
                q.sync().map_err(io_err("cannot sync target image", path))?
            }
            TargetImage::Compressed(w) => w
                .finish()
                .map_err(io_err("cannot finish target image", path))?,
        }
        self.cache.finish(self.created);
        Ok(())
    }
}

/// Write a new qcow2 image of `size` bytes (over `backing`, named only)
/// into the empty `file`, and open it for writing (direct where allowed).
fn format_qcow2(
    file: File,
    path: &Path,
    size: u64,
    backing: Option<(&Path, DiskFormat)>,
) -> Result<FormatAccess<ImagoFile>> {
    // Formatted through the page cache, then reopened direct:
    // imago probes a direct file's alignment by reading and
    // writing back its first bytes, which must exist by then.
    let direct = reopen_direct(&file, path);
    let storage =
        ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(true))
            .map_err(io_err("cannot open target image", path))?;
    // qcow2 sizes are whole sectors; round up so a raw source's
    // odd tail is kept (as qemu-img convert does).
    let mut builder = Qcow2::<ImagoFile>::create_builder(storage).size(size.div_ceil(512) * 512);
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
    let q = FormatAccess::new(q);
    Ok(match direct {
        Some(d) => {
            q.flush()
                .map_err(io_err("cannot flush target image", path))?;
            drop(q);
            FormatAccess::new(reopen_qcow2_direct(d, path)?)
        }
        None => q,
    })
}

/// The virtual size of the image at `path` from its own header (no
/// backing file opened), whether imago reads it or not (zstd clusters).
pub fn image_size(path: &Path, format: DiskFormat) -> Result<u64> {
    if format == DiskFormat::Qcow2 {
        let file = image_file::open(path, false, Kind::Regular, "cannot open image")?;
        if needs_own_reader(&file).map_err(io_err("cannot read image", path))? {
            let q = Qcow2Image::open(file).map_err(io_err("cannot open qcow2 image", path))?;
            return Ok(q.size());
        }
    }
    Ok(Source::open(path, format, Chain::Detached)?.size())
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

mod encrypted;
#[cfg(test)]
mod tests;
