//! LUKS1 encryption of qcow2 images, as QEMU writes and reads it
//! (`encrypt.format=luks`): the LUKS header, its key slot and master key,
//! and the AES-XTS encryption of data sectors.
//!
//! The header is the one QEMU's LUKS driver creates: aes-256 in
//! xts-plain64 mode (a 64-byte master key), sha256 for PBKDF2 and the
//! anti-forensic splitter, eight key slots of 4000 stripes of which the
//! first is used, key material of slot `i` at sector `8 + 504 i`, the
//! payload (the end of the header area) at sector 4040. In a qcow2 image
//! the area lives in the image's clusters (the full disk encryption header
//! extension gives its place and length); the data clusters are encrypted
//! sector by sector (512 bytes), the IV of a sector being its HOST offset
//! in the image file / 512, little-endian (plain64).

use std::io;

use aes::Aes256;
use aes::cipher::inout::InOutBuf;
use aes::cipher::{Block, BlockDecrypt, BlockEncrypt, KeyInit};
use sha2::{Digest, Sha256};

/// Bytes of an encryption sector.
pub(crate) const SECTOR: usize = 512;
/// Length of the header area: header, key slots' material (bytes).
pub(crate) const HEADER_AREA: u64 = PAYLOAD_SECTORS * SECTOR as u64;
const PAYLOAD_SECTORS: u64 = 8 + SLOTS as u64 * SLOT_SECTORS;
/// Sectors of one slot's key material, rounded up to 4 KiB.
const SLOT_SECTORS: u64 = ((KEY_LEN * STRIPES) as u64)
    .div_ceil(SECTOR as u64)
    .next_multiple_of(8);
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
pub(crate) const KEY_LEN: usize = 64;
const STRIPES: usize = 4000;
const SLOTS: usize = 8;
const DIGEST_LEN: usize = 20;
const SALT_LEN: usize = 32;
const HEADER_LEN: usize = 208 + SLOTS * 48;
const SLOT_ACTIVE: u32 = 0x00AC_71F3;
const SLOT_DISABLED: u32 = 0x0000_DEAD;

/// PBKDF2 iterations of a new header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Iterations {
    /// Of the key slot (the passphrase's).
    pub(crate) slot: u32,
    /// Of the master key digest.
    pub(crate) digest: u32,
}

/// What new images get: a passphrase costs about a fifth of a second to
/// try on one core (sha256 in hardware); a backup's key is a libvirt
/// secret, most often random, rarely a word to guess.
pub(crate) const DEFAULT_ITERATIONS: Iterations = Iterations {
    slot: 1_000_000,
    digest: 5_000,
};

/// Why a header could not be unlocked.
#[derive(Debug)]
pub(crate) enum UnlockError {
    /// No active key slot opens with the passphrase.
    WrongKey,
    /// The header is not one this reads.
    Io(io::Error),
}

impl From<io::Error> for UnlockError {
    fn from(e: io::Error) -> UnlockError {
        UnlockError::Io(e)
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The master key of an image: encrypts and decrypts its data sectors
/// (XTS: the data key, and the tweak key that encrypts each sector's IV).
pub(crate) struct LuksKey {
    data: Aes256,
    tweak: Aes256,
}

/// One sector of XTS from `src` into `dst`: the tweak of each block is
/// the sector's encrypted IV `iv` multiplied by alpha once more for each
/// block (GF(2^128), little-endian as XTS has it); the blocks XORed with
/// their tweaks on their way into `dst`, `cipher` over all of them at
/// once, in place, XORed again.
fn xts_sector(
    src: &[u8],
    dst: &mut [u8],
    iv: &Block<Aes256>,
    cipher: &impl Fn(InOutBuf<'_, '_, Block<Aes256>>),
) {
    // The tweaks are computed again in each pass rather than kept in an
    // array: a u128 stored as two halves and loaded whole stalls the
    // store forwarding.
    let t0 = u128::from_le_bytes((*iv).into());
    let times_alpha = |t: u128| (t << 1) ^ u128::from(((t >> 127) as u64).wrapping_neg() & 0x87);
    let (ins, _) = src.as_chunks::<16>();
    let (outs, _) = dst.as_chunks_mut::<16>();
    let mut t = t0;
    for (o, i) in outs.iter_mut().zip(ins) {
        *o = (u128::from_le_bytes(*i) ^ t).to_le_bytes();
        t = times_alpha(t);
    }
    let (blocks, _) = InOutBuf::from(&mut *dst).into_chunks();
    cipher(blocks);
    let (outs, _) = dst.as_chunks_mut::<16>();
    let mut t = t0;
    for o in outs {
        *o = (u128::from_le_bytes(*o) ^ t).to_le_bytes();
        t = times_alpha(t);
    }
}

/// Sectors whose IVs are encrypted at once (a 64 KiB cluster's).
const IV_BATCH: usize = 128;

impl LuksKey {
    /// The key of master key (or slot key) `key`: 64 bytes.
    pub(crate) fn new(key: &[u8]) -> LuksKey {
        let (a, b) = key.split_at(key.len() / 2);
        LuksKey {
            data: Aes256::new_from_slice(a).expect("32-byte key"),
            tweak: Aes256::new_from_slice(b).expect("32-byte key"),
        }
    }

    /// XTS over each sector of `src` into `dst` (as long), the IV of the
    /// first `first_sector`. Nothing is allocated: this runs over every
    /// byte of an encrypted backup.
    fn xts(
        &self,
        src: Option<&[u8]>,
        dst: &mut [u8],
        first_sector: u64,
        cipher: impl Fn(InOutBuf<'_, '_, Block<Aes256>>),
    ) {
        let mut ivs = [Block::<Aes256>::default(); IV_BATCH];
        let mut sector = [0u8; SECTOR];
        let whole = dst.len() / SECTOR * SECTOR;
        for (batch, sectors) in dst[..whole].chunks_mut(SECTOR * IV_BATCH).enumerate() {
            let n = sectors.len() / SECTOR;
            let first = first_sector + (batch * IV_BATCH) as u64;
            for (i, iv) in ivs[..n].iter_mut().enumerate() {
                // plain64: the sector number, little-endian, in 16 bytes.
                *iv = ((first + i as u64) as u128).to_le_bytes().into();
            }
            self.tweak.encrypt_blocks(&mut ivs[..n]);
            for (i, (out, iv)) in sectors.chunks_exact_mut(SECTOR).zip(&ivs[..n]).enumerate() {
                match src {
                    Some(src) => {
                        let at = (batch * IV_BATCH + i) * SECTOR;
                        xts_sector(&src[at..at + SECTOR], out, iv, &cipher);
                    }
                    None => {
                        sector.copy_from_slice(out);
                        xts_sector(&sector, out, iv, &cipher);
                    }
                }
            }
        }
    }

    /// Encrypt `buf` (whole sectors) in place; its first sector's IV is
    /// `first_sector`.
    pub(crate) fn encrypt(&self, buf: &mut [u8], first_sector: u64) {
        self.xts(None, buf, first_sector, |b| self.data.encrypt_blocks_inout(b));
    }

    /// Encrypt `src` (whole sectors) into `dst`, as long: the copy and
    /// the encryption in one pass over the data.
    pub(crate) fn encrypt_into(&self, src: &[u8], dst: &mut [u8], first_sector: u64) {
        self.xts(Some(src), dst, first_sector, |b| self.data.encrypt_blocks_inout(b));
    }

    /// Decrypt `buf` (whole sectors) in place; its first sector's IV is
    /// `first_sector`.
    pub(crate) fn decrypt(&self, buf: &mut [u8], first_sector: u64) {
        self.xts(None, buf, first_sector, |b| self.data.decrypt_blocks_inout(b));
    }
}

fn random(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(format!("no random bytes: {e}")))
}

fn pbkdf2(secret: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    pbkdf2::pbkdf2_hmac::<Sha256>(secret, salt, iterations, out);
}

/// The anti-forensic diffusion of `block`: each 32-byte piece replaced
/// by the sha256 of its index (big-endian) and itself.
fn diffuse(block: &mut [u8]) {
    for (i, piece) in block.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*piece);
        let d = h.finalize();
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

/// Split `key` into `stripes` stripes of random-looking material that
/// only all together give it back.
pub(crate) fn af_split(key: &[u8], stripes: usize) -> io::Result<Vec<u8>> {
    let n = key.len();
    let mut out = vec![0u8; n * stripes];
    random(&mut out[..n * (stripes - 1)])?;
    let mut block = vec![0u8; n];
    for stripe in out[..n * (stripes - 1)].chunks(n) {
        block.iter_mut().zip(stripe).for_each(|(b, s)| *b ^= s);
        diffuse(&mut block);
    }
    let last = &mut out[n * (stripes - 1)..];
    last.iter_mut()
        .zip(block.iter().zip(key))
        .for_each(|(o, (b, k))| *o = b ^ k);
    Ok(out)
}

/// The key `af_split` split into `material` (`stripes` stripes).
pub(crate) fn af_merge(material: &[u8], stripes: usize) -> Vec<u8> {
    let n = material.len() / stripes;
    let mut block = vec![0u8; n];
    for stripe in material[..n * (stripes - 1)].chunks(n) {
        block.iter_mut().zip(stripe).for_each(|(b, s)| *b ^= s);
        diffuse(&mut block);
    }
    block
        .iter()
        .zip(&material[n * (stripes - 1)..])
        .map(|(b, m)| b ^ m)
        .collect()
}

fn put_str(h: &mut [u8], at: usize, s: &str) {
    h[at..at + s.len()].copy_from_slice(s.as_bytes());
}

fn be32(h: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(h[at..at + 4].try_into().unwrap_or_default())
}

fn field(h: &[u8], at: usize, len: usize) -> &[u8] {
    let f = &h[at..at + len];
    &f[..f.iter().position(|&b| b == 0).unwrap_or(len)]
}

/// A new header area (`HEADER_AREA` bytes) whose first key slot opens
/// with `passphrase`, and the master key it keeps.
#[cfg(test)]
pub(crate) fn create(passphrase: &[u8], it: Iterations) -> io::Result<(Vec<u8>, LuksKey)> {
    let master = new_master()?;
    Ok((header_area(&master, passphrase, it)?, LuksKey::new(&master)))
}

/// A new random master key (its `LuksKey` and header come from it).
pub(crate) fn new_master() -> io::Result<[u8; KEY_LEN]> {
    let mut master = [0u8; KEY_LEN];
    random(&mut master)?;
    Ok(master)
}

/// The header area keeping `master`, whose first key slot opens with
/// `passphrase`: the costly part of `create` (PBKDF2), which a writer
/// runs while it encrypts the data with `LuksKey::new(master)`.
pub(crate) fn header_area(
    master: &[u8; KEY_LEN],
    passphrase: &[u8],
    it: Iterations,
) -> io::Result<Vec<u8>> {
    let mut area = vec![0u8; HEADER_AREA as usize];
    let h = &mut area[..HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6..8].copy_from_slice(&1u16.to_be_bytes());
    put_str(h, 8, "aes");
    put_str(h, 40, "xts-plain64");
    put_str(h, 72, "sha256");
    h[104..108].copy_from_slice(&(PAYLOAD_SECTORS as u32).to_be_bytes());
    h[108..112].copy_from_slice(&(KEY_LEN as u32).to_be_bytes());
    random(&mut h[132..164])?;
    let salt = h[132..164].to_vec();
    pbkdf2(master, &salt, it.digest, &mut h[112..132]);
    h[164..168].copy_from_slice(&it.digest.to_be_bytes());
    put_str(h, 168, &uuid::Uuid::new_v4().to_string());
    for i in 0..SLOTS {
        let s = 208 + i * 48;
        let offset = 8 + i as u64 * SLOT_SECTORS;
        h[s..s + 4].copy_from_slice(&SLOT_DISABLED.to_be_bytes());
        h[s + 40..s + 44].copy_from_slice(&(offset as u32).to_be_bytes());
        h[s + 44..s + 48].copy_from_slice(&(STRIPES as u32).to_be_bytes());
    }
    // Slot 0: the split master key, encrypted with the passphrase's key.
    let mut slot_salt = [0u8; SALT_LEN];
    random(&mut slot_salt)?;
    h[208..212].copy_from_slice(&SLOT_ACTIVE.to_be_bytes());
    h[212..216].copy_from_slice(&it.slot.to_be_bytes());
    h[216..248].copy_from_slice(&slot_salt);
    let mut slot_key = [0u8; KEY_LEN];
    pbkdf2(passphrase, &slot_salt, it.slot, &mut slot_key);
    let mut material = af_split(master, STRIPES)?;
    material.resize((SLOT_SECTORS as usize) * SECTOR, 0);
    LuksKey::new(&slot_key).encrypt(&mut material, 0);
    let at = 8 * SECTOR;
    let len = KEY_LEN * STRIPES;
    area[at..at + len].copy_from_slice(&material[..len]);
    Ok(area)
}

/// Where the header area's key material of the active slots lies, and the
/// header's master key digest, checked: what `unlock` needs to read.
fn parse(h: &[u8]) -> io::Result<Vec<(u32, [u8; SALT_LEN], u64)>> {
    if h.len() < HEADER_LEN || &h[..6] != MAGIC || h[6..8] != [0, 1] {
        return Err(bad("not a LUKS version 1 header".into()));
    }
    let (cipher, mode, hash) = (field(h, 8, 32), field(h, 40, 32), field(h, 72, 32));
    if cipher != b"aes" || mode != b"xts-plain64" || hash != b"sha256" {
        return Err(bad(format!(
            "LUKS cipher {}-{} with {} is not read here (aes xts-plain64 sha256 only)",
            String::from_utf8_lossy(cipher),
            String::from_utf8_lossy(mode),
            String::from_utf8_lossy(hash)
        )));
    }
    if be32(h, 108) as usize != KEY_LEN {
        return Err(bad(format!("LUKS key of {} bytes", be32(h, 108))));
    }
    let mut slots = Vec::new();
    for i in 0..SLOTS {
        let s = 208 + i * 48;
        if be32(h, s) != SLOT_ACTIVE {
            continue;
        }
        if be32(h, s + 44) as usize != STRIPES || be32(h, s + 4) == 0 {
            return Err(bad(format!("LUKS key slot {i}: unexpected stripes")));
        }
        let salt = h[s + 8..s + 40].try_into().unwrap_or_default();
        slots.push((be32(h, s + 4), salt, be32(h, s + 40) as u64 * SECTOR as u64));
    }
    Ok(slots)
}

/// The master key of the header area read by `read_at` (offset within
/// the area) that `passphrase` opens.
pub(crate) fn unlock(
    read_at: &dyn Fn(&mut [u8], u64) -> io::Result<()>,
    passphrase: &[u8],
) -> Result<LuksKey, UnlockError> {
    let mut h = vec![0u8; HEADER_LEN];
    read_at(&mut h, 0)?;
    let slots = parse(&h)?;
    let digest_salt = &h[132..164];
    let digest_iters = be32(&h, 164);
    let mut material = vec![0u8; SLOT_SECTORS as usize * SECTOR];
    for (iters, salt, at) in slots {
        let mut slot_key = [0u8; KEY_LEN];
        pbkdf2(passphrase, &salt, iters, &mut slot_key);
        read_at(&mut material, at)?;
        LuksKey::new(&slot_key).decrypt(&mut material, 0);
        let master = af_merge(&material[..KEY_LEN * STRIPES], STRIPES);
        let mut digest = [0u8; DIGEST_LEN];
        pbkdf2(&master, digest_salt, digest_iters, &mut digest);
        if digest[..] == h[112..132] {
            return Ok(LuksKey::new(&master));
        }
    }
    Err(UnlockError::WrongKey)
}

#[cfg(test)]
mod tests;
