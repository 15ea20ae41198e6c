//! Writing a qcow2 image of compressed clusters, as QEMU lays one out and
//! reads it (`qemu-img check` clean), without imago (which writes none).
//!
//! The image is written front to back: the header cluster, then the data
//! in guest order, each L2 table once the guest offset has passed it, then
//! the L1 table, the refcount blocks and table, and the header again with
//! their places. Layout:
//! - 64 KiB clusters (`cluster_bits` 16), refcounts of 16 bits, header
//!   version 3 of 112 bytes with the compression type at byte 104; zstd
//!   sets incompatible feature bit 3 (read by QEMU 5.1 and later);
//! - a compressed cluster's data is packed byte after byte after the
//!   previous one (spanning host clusters as QEMU allows); its L2 entry is
//!   bit 62, the host offset, and the sectors beyond the first it touches
//!   (bits 54-61 for 64 KiB clusters); every host cluster it touches counts
//!   one reference more;
//! - a cluster that does not shrink is stored as it is, at the next whole
//!   host cluster, with an ordinary entry (bit 63 set: refcount one);
//! - a cluster of zeroes hides the backing file's: the zero flag (bit 0);
//! - refcounts are counted as the file grows, one block's worth (2 GiB of
//!   file) in memory: a block is written once the file has grown past what
//!   it covers, so memory stays bounded whatever the disk's size.
//!
//! Clusters of one write are compressed on two threads, then written in
//! order.
//!
//! The same writer writes LUKS-encrypted images (`encrypt.format=luks`,
//! see `luks`): crypt_method 2, the full disk encryption header extension
//! naming the LUKS header area (the clusters right after the header), and
//! every data cluster stored whole, encrypted with the IV of each sector
//! its host offset / 512. Such images have no compressed clusters: QEMU
//! never encrypts a compressed cluster, so they would be stored in clear.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use crate::image::codec::{Codec, Compressor};
use crate::image::luks::{self, LuksKey};
use crate::xml::backup::DiskFormat;

/// log2 of the cluster size.
pub(crate) const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table.
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts per refcount block.
const RC_ENTRIES: u64 = CLUSTER / 2;
const HEADER_LEN: u32 = 112;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
/// Where a compressed descriptor's sector count starts: 62 - (bits - 8).
const CSIZE_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);
/// Threads compressing one write's clusters.
const THREADS: usize = 2;

fn align_up(x: u64) -> u64 {
    x.div_ceil(CLUSTER) * CLUSTER
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// The refcounts of one block's range of host clusters, and where the
/// blocks before it went.
struct Refcounts {
    /// First host cluster the counts cover.
    base: u64,
    counts: Vec<u16>,
    /// Host offsets of the blocks written, by block number.
    blocks: Vec<u64>,
}

struct State {
    /// The next free byte of the file.
    cursor: u64,
    l1: Vec<u64>,
    /// The L2 table being filled: its L1 index and entries.
    l2: Option<(u64, Vec<u64>)>,
    rc: Refcounts,
    /// A write failed: nothing more is written.
    failed: bool,
    /// The buffer an encrypted write's clusters are encrypted into.
    scratch: Vec<u8>,
}

/// How the data clusters are stored.
enum Packing {
    Compress(Codec),
    /// Encrypted with this key, whose LUKS header area lies at this
    /// host offset; the area, made on a thread of its own meanwhile, is
    /// written by `finish`.
    Encrypt(Box<LuksKey>, u64, Mutex<Option<HeaderJob>>),
}

/// The thread making an encrypted image's LUKS header area.
type HeaderJob = std::thread::JoinHandle<io::Result<Vec<u8>>>;

/// A new qcow2 image of compressed (or encrypted) clusters being written.
pub(crate) struct CompressedWriter {
    file: File,
    packing: Packing,
    size: u64,
    state: Mutex<State>,
    /// The header cluster: the fixed header, extensions, backing name.
    header: Vec<u8>,
}

/// The header cluster: `l1`/`rc` are the L1 table's and the refcount
/// table's offset and size (zero before they are written).
fn header_bytes(
    packing: &Packing,
    size: u64,
    backing: Option<(&str, DiskFormat)>,
    (l1_off, l1_len): (u64, u32),
    (rc_off, rc_clusters): (u64, u32),
) -> io::Result<Vec<u8>> {
    let mut h = vec![0u8; HEADER_LEN as usize];
    let put32 =
        |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 =
        |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
    h[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut h, 4, 3);
    put32(&mut h, 20, CLUSTER_BITS);
    put64(&mut h, 24, size);
    put32(&mut h, 36, l1_len);
    put64(&mut h, 40, l1_off);
    put64(&mut h, 48, rc_off);
    put32(&mut h, 56, rc_clusters);
    let codec = match packing {
        Packing::Compress(c) => *c,
        Packing::Encrypt(..) => Codec::Zlib,
    };
    let incompatible = match codec {
        Codec::Zstd => 1 << 3,
        Codec::Zlib => 0,
    };
    put64(&mut h, 72, incompatible);
    put32(&mut h, 96, 4);
    put32(&mut h, 100, HEADER_LEN);
    h[104] = codec.type_byte();
    if let Packing::Encrypt(_, at, _) = packing {
        // LUKS (crypt_method 2) and the full disk encryption extension.
        put32(&mut h, 32, 2);
        h.extend_from_slice(&0x0537_BE77u32.to_be_bytes());
        h.extend_from_slice(&16u32.to_be_bytes());
        h.extend_from_slice(&at.to_be_bytes());
        h.extend_from_slice(&luks::HEADER_AREA.to_be_bytes());
    }
    if let Some((_, format)) = backing {
        // The backing format extension.
        let f = format.as_str().as_bytes();
        h.extend_from_slice(&0xE279_2ACAu32.to_be_bytes());
        h.extend_from_slice(&(f.len() as u32).to_be_bytes());
        h.extend_from_slice(f);
        h.resize(h.len().next_multiple_of(8), 0);
    }
    if h.len() > HEADER_LEN as usize {
        // The end of the extensions.
        h.extend_from_slice(&[0; 8]);
    }
    if let Some((name, _)) = backing {
        let at = h.len();
        h.extend_from_slice(name.as_bytes());
        if h.len() as u64 > CLUSTER {
            return Err(invalid(format!("backing file name too long: '{name}'")));
        }
        put64(&mut h, 8, at as u64);
        put32(&mut h, 16, name.len() as u32);
    }
    Ok(h)
}

impl CompressedWriter {
    /// Format `file` (new and empty) as a qcow2 image of `size` bytes whose
    /// clusters `codec` compresses, over `backing` (named only).
    pub(crate) fn create(
        file: File,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        codec: Codec,
    ) -> io::Result<CompressedWriter> {
        Self::create_packed(file, size, backing, Packing::Compress(codec))
    }

    /// Format `file` (new and empty) as a LUKS-encrypted qcow2 image of
    /// `size` bytes, whose key slot opens with `passphrase` after
    /// `iterations` of PBKDF2, over `backing` (named only).
    pub(crate) fn create_encrypted(
        file: File,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        passphrase: &[u8],
        iterations: luks::Iterations,
    ) -> io::Result<CompressedWriter> {
        // The data is encrypted with the master key while the key slot's
        // PBKDF2 runs (a fifth of a second); `finish` writes the area.
        let master = luks::new_master()?;
        let key = Box::new(LuksKey::new(&master));
        let passphrase = passphrase.to_vec();
        let job = std::thread::Builder::new()
            .name("luks-header".into())
            .spawn(move || luks::header_area(&master, &passphrase, iterations))?;
        let packing = Packing::Encrypt(key, CLUSTER, Mutex::new(Some(job)));
        Self::create_packed(file, size, backing, packing)
    }

    fn create_packed(
        file: File,
        size: u64,
        backing: Option<(&Path, DiskFormat)>,
        packing: Packing,
    ) -> io::Result<CompressedWriter> {
        let name = backing
            .map(|(p, f)| {
                p.to_str()
                    .map(|s| (s, f))
                    .ok_or_else(|| invalid(format!("backing name '{}' is not UTF-8", p.display())))
            })
            .transpose()?;
        // qcow2 sizes are whole sectors: a raw source's odd tail is kept
        // (as `qemu-img convert` does).
        let size = size.div_ceil(512) * 512;
        let header = header_bytes(&packing, size, name, (0, 0), (0, 0))?;
        file.write_all_at(&header, 0)?;
        let mut counts = vec![0u16; RC_ENTRIES as usize];
        // The header cluster and the LUKS header area's.
        let first = match packing {
            Packing::Compress(_) => 1,
            Packing::Encrypt(..) => 1 + luks::HEADER_AREA.div_ceil(CLUSTER),
        };
        counts[..first as usize].fill(1);
        let l1_len = size.div_ceil(CLUSTER * L2_ENTRIES).max(1);
        Ok(CompressedWriter {
            file,
            packing,
            size,
            header,
            state: Mutex::new(State {
                cursor: first * CLUSTER,
                l1: vec![0; l1_len as usize],
                l2: None,
                rc: Refcounts {
                    base: 0,
                    counts,
                    blocks: Vec::new(),
                },
                failed: false,
                scratch: Vec::new(),
            }),
        })
    }

    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.failed {
            true => Err(io::Error::other("an earlier write to the image failed")),
            false => Ok(st),
        }
    }

    /// The clusters of `offset..offset+len`, which must start on a cluster
    /// and end on one or at the disk's end.
    fn clusters(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<u64>> {
        let end = offset + len;
        let tail = end.div_ceil(512) * 512 == self.size;
        if !offset.is_multiple_of(CLUSTER)
            || (!end.is_multiple_of(CLUSTER) && !tail)
            || end > self.size
        {
            return Err(invalid(format!(
                "compressed image: write of {len} bytes at {offset} is not whole clusters"
            )));
        }
        Ok(offset / CLUSTER..end.div_ceil(CLUSTER))
    }

    /// Write `buf` at `offset` (whole clusters, in guest order): each
    /// cluster compressed, or stored as it is if that does not shrink it.
    pub(crate) fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let clusters = self.clusters(offset, buf.len() as u64)?;
        let codec = match &self.packing {
            Packing::Compress(c) => *c,
            Packing::Encrypt(key, ..) => return self.write_encrypted(key, buf, clusters),
        };
        let packed = compress_all(codec, buf)?;
        let mut st = self.state()?;
        let r = (|| {
            for (c, data) in clusters.zip(packed) {
                let entry = match data {
                    Packed::Compressed(z) => {
                        let at = st.reserve(&self.file, z.len() as u64, false)?;
                        self.file.write_all_at(&z, at)?;
                        let sectors = (at + z.len() as u64 - 1) / 512 - at / 512;
                        COMPRESSED | (sectors << CSIZE_SHIFT) | at
                    }
                    Packed::Plain(range) => {
                        let at = st.reserve(&self.file, CLUSTER, true)?;
                        let mut piece = buf[range].to_vec();
                        piece.resize(CLUSTER as usize, 0);
                        self.file.write_all_at(&piece, at)?;
                        COPIED | at
                    }
                };
                st.set_entry(&self.file, c, entry)?;
            }
            Ok(())
        })();
        st.failed |= r.is_err();
        r
    }

    /// Write the clusters `clusters` of `buf` encrypted with `key`, each at
    /// the next whole host cluster.
    fn write_encrypted(
        &self,
        key: &LuksKey,
        buf: &[u8],
        clusters: std::ops::Range<u64>,
    ) -> io::Result<()> {
        let mut st = self.state()?;
        let r = (|| {
            let mut places = Vec::new();
            for _ in clusters.clone() {
                places.push(st.reserve(&self.file, CLUSTER, true)?);
            }
            // The encrypted copy goes to a buffer kept from write to
            // write: a new one each time would fault its pages in again.
            let mut data = std::mem::take(&mut st.scratch);
            data.resize(places.len() * CLUSTER as usize, 0);
            encrypt_all(key, buf, &mut data, &places, &self.file)?;
            for (c, at) in clusters.zip(&places) {
                st.set_entry(&self.file, c, COPIED | at)?;
            }
            st.scratch = data;
            Ok(())
        })();
        st.failed |= r.is_err();
        r
    }

    /// Make `offset..offset+len` (whole clusters) read as zeroes, hiding
    /// the backing file's data.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let clusters = self.clusters(offset, len)?;
        let mut st = self.state()?;
        let r = clusters
            .into_iter()
            .try_for_each(|c| st.set_entry(&self.file, c, ZERO));
        st.failed |= r.is_err();
        r
    }

    /// Write the metadata and the header, and make the file durable.
    pub(crate) fn finish(&self) -> io::Result<()> {
        let mut st = self.state()?;
        if let Packing::Encrypt(_, at, job) = &self.packing {
            let job = job.lock().unwrap_or_else(|e| e.into_inner()).take();
            let area = job
                .ok_or_else(|| io::Error::other("LUKS header already written"))?
                .join()
                .map_err(|_| io::Error::other("the LUKS header thread panicked"))??;
            self.file.write_all_at(&area, *at)?;
        }
        st.flush_l2(&self.file)?;
        let l1: Vec<u8> = st.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let l1_off = st.reserve(&self.file, l1.len() as u64, true)?;
        self.file.write_all_at(&l1, l1_off)?;
        // The table, with room for the blocks still to come (the current
        // one, one its own cluster may spill into, one for the table).
        let slots = st.rc.blocks.len() as u64 + 3;
        let rc_clusters = (slots * 8).div_ceil(CLUSTER);
        let rc_off = st.reserve(&self.file, rc_clusters * CLUSTER, true)?;
        while st.rc.counts.iter().any(|&c| c != 0) {
            st.close_block(&self.file)?;
        }
        if st.rc.blocks.len() as u64 > rc_clusters * L2_ENTRIES {
            return Err(io::Error::other("refcount table overflow"));
        }
        let table: Vec<u8> = st.rc.blocks.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.file.write_all_at(&table, rc_off)?;
        // The file ends on a whole cluster (the last compressed sector
        // included).
        self.file.set_len(align_up(st.cursor))?;
        self.file.sync_all()?;
        let mut header = header_bytes(
            &self.packing,
            self.size,
            None,
            (l1_off, st.l1.len() as u32),
            (rc_off, rc_clusters as u32),
        )?;
        // The extensions and backing name as written first.
        header.truncate(HEADER_LEN as usize);
        header.extend_from_slice(&self.header[HEADER_LEN as usize..]);
        header[8..20].copy_from_slice(&self.header[8..20]);
        self.file.write_all_at(&header, 0)?;
        self.file.sync_all()
    }
}

impl State {
    /// Take `len` bytes at the end of the file (at a whole cluster if
    /// `aligned`), counting a reference to each host cluster they touch;
    /// refcount blocks are written first while the range reaches past the
    /// block in memory.
    fn reserve(&mut self, file: &File, len: u64, aligned: bool) -> io::Result<u64> {
        loop {
            let start = match aligned {
                true => align_up(self.cursor),
                false => self.cursor,
            };
            let last = (start + len - 1) / CLUSTER;
            if last < self.rc.base + RC_ENTRIES {
                for c in start / CLUSTER..=last {
                    let n = &mut self.rc.counts[(c - self.rc.base) as usize];
                    *n = n
                        .checked_add(1)
                        .ok_or_else(|| io::Error::other("refcount overflow"))?;
                }
                self.cursor = start + len;
                return Ok(start);
            }
            self.close_block(file)?;
        }
    }

    /// Write the refcount block in memory at the next whole cluster and
    /// move on to the next range (which counts the block's own cluster if
    /// it lies there).
    fn close_block(&mut self, file: &File) -> io::Result<()> {
        let at = align_up(self.cursor);
        let own = at / CLUSTER;
        let here = own < self.rc.base + RC_ENTRIES;
        if here {
            self.rc.counts[(own - self.rc.base) as usize] += 1;
        }
        let bytes: Vec<u8> = self
            .rc
            .counts
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        file.write_all_at(&bytes, at)?;
        self.rc.blocks.push(at);
        self.cursor = at + CLUSTER;
        self.rc.base += RC_ENTRIES;
        self.rc.counts.fill(0);
        if !here {
            self.rc.counts[(own - self.rc.base) as usize] += 1;
        }
        Ok(())
    }

    /// Write the L2 table being filled, if any, and note it in the L1 table.
    fn flush_l2(&mut self, file: &File) -> io::Result<()> {
        if let Some((i, table)) = self.l2.take() {
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
            let at = self.reserve(file, CLUSTER, true)?;
            file.write_all_at(&bytes, at)?;
            self.l1[i as usize] = COPIED | at;
        }
        Ok(())
    }

    /// Set guest cluster `c`'s L2 entry; tables are filled in guest order.
    fn set_entry(&mut self, file: &File, c: u64, entry: u64) -> io::Result<()> {
        let i = c / L2_ENTRIES;
        match &self.l2 {
            Some((cur, _)) if *cur == i => {}
            Some((cur, _)) if *cur > i => {
                return Err(invalid(format!(
                    "compressed image: cluster {c} written after a later one"
                )));
            }
            _ => {
                self.flush_l2(file)?;
                if self.l1.get(i as usize).is_none_or(|&e| e != 0) {
                    return Err(invalid(format!(
                        "compressed image: cluster {c} out of order"
                    )));
                }
                self.l2 = Some((i, vec![0; L2_ENTRIES as usize]));
            }
        }
        if let Some((_, t)) = &mut self.l2 {
            t[(c % L2_ENTRIES) as usize] = entry;
        }
        Ok(())
    }
}

/// Encrypt each cluster of `data` for host offset `places[i]`, on up to
/// `THREADS` threads.
/// Encrypt the clusters of `src` (the last one padded with zeroes) into
/// `data`, each with the IVs of its host offset in `places`, and write
/// them there: on up to `THREADS` threads, each writing its share as soon
/// as it is encrypted (one thread's write overlaps the other's AES).
fn encrypt_all(
    key: &LuksKey,
    src: &[u8],
    data: &mut [u8],
    places: &[u64],
    file: &File,
) -> io::Result<()> {
    let per = places.len().div_ceil(THREADS).max(1) * CLUSTER as usize;
    let part = |k: usize, part: &mut [u8], at: &[u64]| -> io::Result<()> {
        let src = &src[(k * per).min(src.len())..((k + 1) * per).min(src.len())];
        for (i, (cluster, at)) in part.chunks_mut(CLUSTER as usize).zip(at).enumerate() {
            let from = &src[(i * CLUSTER as usize).min(src.len())
                ..((i + 1) * CLUSTER as usize).min(src.len())];
            let sector = at / luks::SECTOR as u64;
            match from.len() == cluster.len() {
                true => key.encrypt_into(from, cluster, sector),
                // The disk's last cluster, padded with zeroes.
                false => {
                    cluster[..from.len()].copy_from_slice(from);
                    cluster[from.len()..].fill(0);
                    key.encrypt(cluster, sector);
                }
            }
        }
        // Runs of clusters contiguous in the file, each in one write.
        let mut i = 0;
        while i < at.len() {
            let n = (i + 1..at.len())
                .take_while(|&j| at[j] == at[i] + (j - i) as u64 * CLUSTER)
                .count()
                + 1;
            file.write_all_at(
                &part[i * CLUSTER as usize..(i + n) * CLUSTER as usize],
                at[i],
            )?;
            i += n;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let mut parts = data
            .chunks_mut(per)
            .zip(places.chunks(per / CLUSTER as usize));
        let first = parts.next();
        let others: Vec<_> = parts
            .enumerate()
            .map(|(k, (d, at))| s.spawn(move || part(k + 1, d, at)))
            .collect();
        let mut r = first.map_or(Ok(()), |(d, at)| part(0, d, at));
        for h in others {
            let done = h
                .join()
                .map_err(|_| io::Error::other("encryption thread panicked"))
                .and_then(|x| x);
            r = r.and(done);
        }
        r
    })
}

/// One cluster of a write, ready to be stored.
enum Packed {
    Compressed(Vec<u8>),
    /// Stored as it is: its range in the write's buffer.
    Plain(std::ops::Range<usize>),
}

/// Compress each cluster of `buf` (the last one padded with zeroes), on
/// up to `THREADS` threads, in order.
fn compress_all(codec: Codec, buf: &[u8]) -> io::Result<Vec<Packed>> {
    let n = buf.len().div_ceil(CLUSTER as usize);
    let per = n.div_ceil(THREADS).max(1);
    let part = |first: usize| -> io::Result<Vec<Packed>> {
        let mut z = Compressor::new(codec)?;
        let mut padded = Vec::new();
        (first..(first + per).min(n))
            .map(|i| {
                let range = i * CLUSTER as usize..((i + 1) * CLUSTER as usize).min(buf.len());
                let mut input = &buf[range.clone()];
                if input.len() < CLUSTER as usize {
                    padded = input.to_vec();
                    padded.resize(CLUSTER as usize, 0);
                    input = &padded;
                }
                let mut out = Vec::new();
                Ok(match z.compress(input, &mut out)? {
                    true => Packed::Compressed(out),
                    false => Packed::Plain(range),
                })
            })
            .collect()
    };
    if n <= 1 {
        return part(0);
    }
    std::thread::scope(|s| {
        let others: Vec<_> = (1..THREADS)
            .map(|t| t * per)
            .filter(|&f| f < n)
            .map(|f| s.spawn(move || part(f)))
            .collect();
        let mut all = part(0)?;
        for h in others {
            all.extend(
                h.join()
                    .map_err(|_| io::Error::other("compression thread panicked"))??,
            );
        }
        Ok(all)
    })
}

#[cfg(test)]
mod tests;
