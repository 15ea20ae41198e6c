//! Reading a qcow2 image whose compressed clusters imago cannot read:
//! zstd ones (compression type 1, incompatible feature bit 3, which imago
//! refuses to open). One level of a chain, without its backing file: what
//! each guest cluster is (unallocated, zeroes, a plain cluster in the file,
//! a compressed one) and its data, zstd and zlib clusters decompressed
//! here.
//!
//! Read-only, version 3 images only, without external data file or
//! extended L2 entries (the incompatible features other than bit 3 are
//! refused), as `qcow2_compressed` writes and QEMU writes them.
//!
//! LUKS-encrypted images (crypt_method 2, see `luks`) are read here too:
//! opened with the passphrase, their clusters are decrypted (the IV of a
//! sector is its host offset / 512); opened without, their map reads but
//! their data does not.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use crate::image::codec::{self, Codec};
use crate::image::luks::{self, LuksKey, UnlockError};

const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Host offsets in L1 and plain L2 entries: bits 9-55.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 tables kept in memory.
const L2_CACHED: usize = 8;

/// What a run of guest clusters of one image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Map {
    /// Nothing: the backing file's data shows through.
    Unallocated,
    /// Zeroes, hiding the backing file's data.
    Zero,
    /// Plain clusters at this host offset (of the run's start).
    Plain(u64),
    /// Compressed clusters.
    Compressed,
    /// Encrypted clusters: read through `Qcow2Image::read` only.
    Encrypted,
}

/// One qcow2 image, read through its own file only.
pub(crate) struct Qcow2Image {
    file: File,
    size: u64,
    cluster_bits: u32,
    codec: Codec,
    l1: Vec<u64>,
    backing: Option<String>,
    l2: Mutex<Vec<(usize, Arc<Vec<u64>>)>>,
    crypt: Crypt,
}

/// Whether and how the data clusters are encrypted.
enum Crypt {
    Clear,
    /// Opened without the passphrase: the data does not read.
    Locked,
    Luks(Box<LuksKey>),
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Read `buf.len()` bytes at `at`; what lies past the file's end reads as
/// zeroes (a descriptor's last sector may reach past it).
fn read_upto(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

/// Whether the qcow2 header in `file` sets a compression type imago does
/// not read (anything but zlib): such an image is read here.
pub(crate) fn needs_own_reader(file: &File) -> io::Result<bool> {
    let mut h = [0u8; 105];
    read_upto(file, &mut h, 0)?;
    Ok(&h[0..4] == b"QFI\xfb"
        && be32(&h, 4) >= 3
        && (be32(&h, 32) == 2
            || (be32(&h, 100) > 104 && (h[104] != 0 || be64(&h, 72) & (1 << 3) != 0))))
}

/// The error of a passphrase that opens none of an image's key slots.
pub(crate) fn wrong_key() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "wrong key: the passphrase opens no key slot of the encrypted image",
    )
}

/// The LUKS header area named by the header extensions of `h` (the
/// header cluster), unlocked with `passphrase`.
fn unlock(file: &File, h: &[u8], passphrase: &[u8]) -> io::Result<LuksKey> {
    let mut at = be32(h, 100) as usize;
    let area = loop {
        if at + 8 > h.len() {
            return Err(bad(
                "encrypted image without its LUKS header extension".into()
            ));
        }
        let (kind, len) = (be32(h, at), be32(h, at + 4) as usize);
        match kind {
            0 => {
                return Err(bad(
                    "encrypted image without its LUKS header extension".into()
                ));
            }
            0x0537_BE77 if len == 16 && at + 24 <= h.len() => {
                break (be64(h, at + 8), be64(h, at + 16));
            }
            _ => at += 8 + len.next_multiple_of(8),
        }
    };
    let read_at = |buf: &mut [u8], off: u64| -> io::Result<()> {
        if off + buf.len() as u64 > area.1 {
            return Err(bad("LUKS key material past the header area".into()));
        }
        read_upto(file, buf, area.0 + off)
    };
    match luks::unlock(&read_at, passphrase) {
        Ok(k) => Ok(k),
        Err(UnlockError::WrongKey) => Err(wrong_key()),
        Err(UnlockError::Io(e)) => Err(e),
    }
}

impl Qcow2Image {
    /// Read the header and L1 table of the qcow2 image in `file`.
    pub(crate) fn open(file: File) -> io::Result<Qcow2Image> {
        Self::open_with_key(file, None)
    }

    /// Read the header and L1 table of the qcow2 image in `file`; an
    /// encrypted one is unlocked with `passphrase` (without one, its data
    /// does not read).
    pub(crate) fn open_with_key(file: File, passphrase: Option<&[u8]>) -> io::Result<Qcow2Image> {
        let mut h = vec![0u8; 112];
        read_upto(&file, &mut h, 0)?;
        if &h[0..4] != b"QFI\xfb" || be32(&h, 4) != 3 {
            return Err(bad("not a qcow2 version 3 image".into()));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("bad cluster_bits {cluster_bits}")));
        }
        let incompatible = be64(&h, 72);
        if incompatible & !(1 << 3) != 0 {
            return Err(bad(format!(
                "unsupported incompatible features {incompatible:#x}"
            )));
        }
        if be32(&h, 96) != 4 {
            return Err(bad("refcounts not of 16 bits".into()));
        }
        let crypt = match (be32(&h, 32), passphrase) {
            (0, _) => Crypt::Clear,
            (2, None) => Crypt::Locked,
            (2, Some(p)) => {
                let mut cluster = vec![0u8; 1 << cluster_bits];
                read_upto(&file, &mut cluster, 0)?;
                Crypt::Luks(Box::new(unlock(&file, &cluster, p)?))
            }
            (m, _) => return Err(bad(format!("unsupported encryption method {m}"))),
        };
        let codec = match be32(&h, 100) > 104 {
            true => Codec::from_type_byte(h[104])?,
            false => Codec::Zlib,
        };
        if (codec == Codec::Zstd) != (incompatible & (1 << 3) != 0) {
            return Err(bad("compression type and feature bit 3 disagree".into()));
        }
        let (l1_len, l1_off) = (be32(&h, 36) as usize, be64(&h, 40));
        let size = be64(&h, 24);
        let per_l1 = 1u64 << (2 * cluster_bits - 3);
        if (l1_len as u64) < size.div_ceil(per_l1) || l1_len > 1 << 25 {
            return Err(bad(format!("bad L1 table size {l1_len}")));
        }
        let mut raw = vec![0u8; l1_len * 8];
        read_upto(&file, &mut raw, l1_off)?;
        let l1 = raw.chunks(8).map(|c| be64(c, 0)).collect();
        let (b_off, b_len) = (be64(&h, 8), be32(&h, 16));
        let backing = match b_off {
            0 => None,
            _ if b_len > 1023 => return Err(bad("backing file name too long".into())),
            _ => {
                let mut name = vec![0u8; b_len as usize];
                read_upto(&file, &mut name, b_off)?;
                Some(String::from_utf8(name).map_err(|_| bad("backing name not UTF-8".into()))?)
            }
        };
        Ok(Qcow2Image {
            file,
            size,
            cluster_bits,
            codec,
            l1,
            backing,
            l2: Mutex::new(Vec::new()),
            crypt,
        })
    }

    /// The guest size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The backing file the header names, as written there.
    pub(crate) fn backing(&self) -> Option<&str> {
        self.backing.as_deref()
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The L2 table of L1 index `i`; None where the L1 entry is empty.
    fn l2(&self, i: usize) -> io::Result<Option<Arc<Vec<u64>>>> {
        let at = self.l1.get(i).copied().unwrap_or(0) & OFFSET_MASK;
        if at == 0 {
            return Ok(None);
        }
        let mut cache = self.l2.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == i) {
            return Ok(Some(Arc::clone(t)));
        }
        let mut raw = vec![0u8; self.cluster() as usize];
        read_upto(&self.file, &mut raw, at)?;
        let t = Arc::new(raw.chunks(8).map(|c| be64(c, 0)).collect::<Vec<_>>());
        if cache.len() >= L2_CACHED {
            cache.remove(0);
        }
        cache.push((i, Arc::clone(&t)));
        Ok(Some(t))
    }

    /// The L2 entry of guest cluster `c` (0: unallocated).
    fn entry(&self, c: u64) -> io::Result<u64> {
        let per = self.cluster() / 8;
        Ok(match self.l2((c / per) as usize)? {
            None => 0,
            Some(t) => t[(c % per) as usize],
        })
    }

    fn kind(&self, entry: u64) -> Map {
        if entry & COMPRESSED != 0 {
            Map::Compressed
        } else if entry & 1 != 0 {
            Map::Zero
        } else if entry & OFFSET_MASK != 0 {
            match self.crypt {
                Crypt::Clear => Map::Plain(entry & OFFSET_MASK),
                _ => Map::Encrypted,
            }
        } else {
            Map::Unallocated
        }
    }

    /// What `offset..offset+max` holds from `offset` on, and for how many
    /// bytes (at least one cluster's rest, at most `max`): runs of one kind
    /// (plain clusters only while contiguous in the file).
    pub(crate) fn mapping(&self, offset: u64, max: u64) -> io::Result<(Map, u64)> {
        let cs = self.cluster();
        let end = (offset + max).min(self.size);
        if offset >= end {
            return Ok((Map::Zero, max));
        }
        let first = self.kind(self.entry(offset / cs)? & !COPIED);
        let in_first = offset % cs;
        let mut pos = offset - in_first + cs;
        while pos < end {
            let k = self.kind(self.entry(pos / cs)? & !COPIED);
            let same = match (first, k) {
                (Map::Plain(a), Map::Plain(b)) => b == a + (pos - (offset - in_first)),
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            pos += cs;
        }
        let len = pos.min(end) - offset;
        Ok(match first {
            Map::Plain(a) => (Map::Plain(a + in_first), len),
            k => (k, len),
        })
    }

    /// Read `buf.len()` bytes at guest `offset` of this image alone
    /// (unallocated clusters read as zeroes), compressed clusters
    /// decompressed.
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cs = self.cluster();
        let mut cluster = vec![0u8; cs as usize];
        let mut pos = offset;
        let end = offset + buf.len() as u64;
        while pos < end {
            let c = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - pos % cs).min(end - pos)) as usize;
            let out = &mut buf[(pos - offset) as usize..(pos - offset) as usize + n];
            let e = self.entry(c)?;
            match self.kind(e & !COPIED) {
                Map::Unallocated | Map::Zero => out.fill(0),
                Map::Plain(at) => read_upto(&self.file, out, at + within as u64)?,
                Map::Encrypted => {
                    self.read_encrypted(e & OFFSET_MASK, &mut cluster)?;
                    out.copy_from_slice(&cluster[within..within + n]);
                }
                Map::Compressed => {
                    self.read_compressed(e, &mut cluster)?;
                    out.copy_from_slice(&cluster[within..within + n]);
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Read and decrypt the encrypted cluster at host offset `at`.
    fn read_encrypted(&self, at: u64, out: &mut [u8]) -> io::Result<()> {
        let Crypt::Luks(key) = &self.crypt else {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "encrypted image opened without its key",
            ));
        };
        read_upto(&self.file, out, at)?;
        key.decrypt(out, at / luks::SECTOR as u64);
        Ok(())
    }

    /// Decompress the cluster of compressed L2 entry `e` into `out`.
    fn read_compressed(&self, e: u64, out: &mut [u8]) -> io::Result<()> {
        let shift = 62 - (self.cluster_bits - 8);
        let at = e & ((1u64 << shift) - 1);
        let sectors = ((e >> shift) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
        let len = (sectors * 512 - (at & 511)) as usize;
        let mut z = vec![0u8; len];
        read_upto(&self.file, &mut z, at)?;
        codec::decompress(self.codec, &z, out)
    }
}
