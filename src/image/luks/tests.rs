//! The LUKS header, the anti-forensic splitter and XTS sector IVs; whole
//! encrypted qcow2 images written here and read by `qemu-img` (with the
//! secret), and written by `qemu-img` and read here, where it is
//! installed.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::image::qcow2_compressed::CompressedWriter;
use crate::image::qcow2_decode::{Map, Qcow2Image};
use crate::xml::backup::DiskFormat;

const FAST: Iterations = Iterations {
    slot: 1000,
    digest: 1000,
};
const CLUSTER: usize = 1 << 16;
const MARKER: &[u8] = b"LUKS-MARKER-plaintext-that-must-not-show-";

fn area_reader(area: &[u8]) -> impl Fn(&mut [u8], u64) -> io::Result<()> + '_ {
    |buf: &mut [u8], at: u64| {
        let at = at as usize;
        buf.copy_from_slice(&area[at..at + buf.len()]);
        Ok(())
    }
}

/// What a key does to two sectors of zeroes and of text at sector 9.
fn sample(key: &LuksKey) -> Vec<u8> {
    let mut buf = vec![0u8; 2 * SECTOR];
    buf[SECTOR..SECTOR + MARKER.len()].copy_from_slice(MARKER);
    key.encrypt(&mut buf, 9);
    buf
}

#[test]
fn af_split_merge() {
    let key: Vec<u8> = (0..64u8).collect();
    let split = af_split(&key, STRIPES).unwrap();
    assert_eq!(split.len(), 64 * STRIPES);
    assert_eq!(af_merge(&split, STRIPES), key);
    // Every stripe counts: one bit changed anywhere loses the key.
    for at in [0, 64 * 1234 + 5, split.len() - 1] {
        let mut bent = split.clone();
        bent[at] ^= 1;
        assert_ne!(af_merge(&bent, STRIPES), key, "bit at {at}");
    }
    // Two splits of one key differ (random stripes).
    assert_ne!(af_split(&key, STRIPES).unwrap(), split);
}

/// The header as QEMU lays it out; the passphrase opens it, another one
/// does not.
#[test]
fn header_round_trip() {
    let (area, key) = create(b"secret passphrase", FAST).unwrap();
    assert_eq!(area.len() as u64, HEADER_AREA);
    assert_eq!(HEADER_AREA, 4040 * 512);
    assert_eq!(&area[..8], b"LUKS\xba\xbe\0\x01");
    assert_eq!(field(&area, 8, 32), b"aes");
    assert_eq!(field(&area, 40, 32), b"xts-plain64");
    assert_eq!(field(&area, 72, 32), b"sha256");
    assert_eq!(be32(&area, 104), 4040);
    assert_eq!(be32(&area, 108), 64);
    assert_eq!(be32(&area, 164), 1000);
    assert_eq!(field(&area, 168, 40).len(), 36, "uuid");
    for i in 0..SLOTS {
        let s = 208 + i * 48;
        let state = if i == 0 { SLOT_ACTIVE } else { SLOT_DISABLED };
        assert_eq!(be32(&area, s), state);
        assert_eq!(be32(&area, s + 40), 8 + 504 * i as u32);
        assert_eq!(be32(&area, s + 44), 4000);
    }
    let opened = unlock(&area_reader(&area), b"secret passphrase").unwrap();
    assert_eq!(sample(&opened), sample(&key));
    assert!(matches!(
        unlock(&area_reader(&area), b"secret passphrasE"),
        Err(UnlockError::WrongKey)
    ));
    let mut other = area.clone();
    other[0] = b'X';
    assert!(matches!(
        unlock(&area_reader(&other), b"secret passphrase"),
        Err(UnlockError::Io(_))
    ));
}

/// plain64: a sector's IV is its number; sectors are independent.
#[test]
fn xts_sector_ivs() {
    let (_, key) = create(b"k", FAST).unwrap();
    let mut plain = vec![0u8; 3 * SECTOR];
    plain
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 7) as u8);
    plain[..SECTOR].fill(0x5a);
    plain[SECTOR..2 * SECTOR].fill(0x5a);
    let mut whole = plain.clone();
    key.encrypt(&mut whole, 100);
    for i in 0..3 {
        let mut one = plain[i * SECTOR..(i + 1) * SECTOR].to_vec();
        key.encrypt(&mut one, 100 + i as u64);
        assert_eq!(one, whole[i * SECTOR..(i + 1) * SECTOR], "sector {i}");
    }
    assert_ne!(
        whole[..SECTOR],
        whole[SECTOR..2 * SECTOR],
        "same text, other IV"
    );
    let mut back = whole.clone();
    key.decrypt(&mut back, 100);
    assert_eq!(back, plain);
    let mut shifted = whole;
    key.decrypt(&mut shifted, 101);
    assert_ne!(shifted, plain);
}

fn qemu_img() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// Three clusters of marked text, one of zeroes, one unwritten, a tail.
fn disk() -> Vec<u8> {
    let mut d = vec![0u8; 5 * CLUSTER + 1536];
    for (i, b) in d.iter_mut().enumerate() {
        *b = MARKER[i % MARKER.len()];
    }
    d[3 * CLUSTER..5 * CLUSTER].fill(0);
    d
}

fn new_file(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap()
}

fn write_full(path: &Path, data: &[u8], pass: &[u8]) {
    let w = CompressedWriter::create_encrypted(new_file(path), data.len() as u64, None, pass, FAST)
        .unwrap();
    w.write(&data[..3 * CLUSTER], 0).unwrap();
    w.write_zeroes(3 * CLUSTER as u64, CLUSTER as u64).unwrap();
    w.write(&data[5 * CLUSTER..], 5 * CLUSTER as u64).unwrap();
    w.finish().unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Written here, read here with the key (not without it, not with
/// another), and nowhere in clear in the file.
#[test]
fn encrypted_image_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.qcow2");
    let data = disk();
    write_full(&path, &data, b"pass");
    let bytes = std::fs::read(&path).unwrap();
    assert!(!contains(&bytes, &MARKER[..16]), "plaintext in the image");
    assert_eq!(&bytes[32..36], &2u32.to_be_bytes(), "crypt_method LUKS");
    let img = Qcow2Image::open_with_key(File::open(&path).unwrap(), Some(b"pass")).unwrap();
    let mut back = vec![0u8; data.len()];
    img.read(&mut back, 0).unwrap();
    assert!(back == data);
    let kinds: Vec<_> = (0..6)
        .map(|c| img.mapping(c * CLUSTER as u64, CLUSTER as u64).unwrap().0)
        .collect();
    let e = Map::Encrypted;
    assert_eq!(kinds, [e, e, e, Map::Zero, Map::Unallocated, e]);
    let locked = Qcow2Image::open(File::open(&path).unwrap()).unwrap();
    assert_eq!(locked.size(), data.len() as u64);
    assert!(locked.read(&mut back, 0).is_err());
    let wrong = Qcow2Image::open_with_key(File::open(&path).unwrap(), Some(b"Pass"));
    let err = wrong.err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("wrong key"), "{err}");
}

/// `qemu-img` reads an image written here with the secret (so the IVs are
/// the host offsets: the data clusters lie past the 2 MiB header area, far
/// from their guest offsets), and finds it clean.
#[test]
fn written_here_read_by_qemu() {
    if !qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.qcow2");
    let raw = dir.path().join("e.raw");
    let data = disk();
    write_full(&path, &data, b"pass word");
    run(Command::new("qemu-img")
        .args([
            "check",
            "--object",
            "secret,id=s0,data=pass word",
            "--image-opts",
        ])
        .arg(format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s0",
            path.display()
        )));
    run(Command::new("qemu-img")
        .args([
            "convert",
            "--object",
            "secret,id=s0,data=pass word",
            "--image-opts",
        ])
        .arg(format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s0",
            path.display()
        ))
        .args(["-O", "raw"])
        .arg(&raw));
    let back = std::fs::read(&raw).unwrap();
    assert!(back[..data.len()] == data[..], "as QEMU reads it");
    // An incremental over it: its own header and key, one cluster.
    let top = dir.path().join("i.qcow2");
    let w = CompressedWriter::create_encrypted(
        new_file(&top),
        data.len() as u64,
        Some((Path::new("e.qcow2"), DiskFormat::Qcow2)),
        b"pass word",
        FAST,
    )
    .unwrap();
    let mut changed = data.clone();
    changed[CLUSTER..2 * CLUSTER].fill(0x33);
    w.write(&changed[CLUSTER..2 * CLUSTER], CLUSTER as u64)
        .unwrap();
    w.finish().unwrap();
    let raw2 = dir.path().join("i.raw");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "--object",
            "secret,id=s0,data=pass word",
            "--image-opts",
        ])
        .arg(format!(
            "driver=qcow2,file.filename={},encrypt.key-secret=s0,backing.encrypt.key-secret=s0",
            top.display()
        ))
        .args(["-O", "raw"])
        .arg(&raw2));
    let back = std::fs::read(&raw2).unwrap();
    assert!(
        back[..data.len()] == changed[..],
        "the chain as QEMU reads it"
    );
}

/// An image `qemu-img` encrypted (its PBKDF2, splitter and XTS) read here
/// with the passphrase: a known answer from QEMU itself.
#[test]
fn written_by_qemu_read_here() {
    if !qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("d.raw");
    let path = dir.path().join("q.qcow2");
    let data = disk();
    std::fs::write(&raw, &data[..5 * CLUSTER]).unwrap();
    // QEMU times its PBKDF2 to pick the iterations; on a busy machine the
    // timing may fail ("Unable to get accurate CPU usage"): tried again.
    for attempt in 1.. {
        let _ = std::fs::remove_file(&path);
        let out = Command::new("qemu-img")
            .args(["convert", "--object", "secret,id=s0,data=qemu pass"])
            .args(["-O", "qcow2", "-o"])
            .arg("encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100")
            .arg(&raw)
            .arg(&path)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(attempt < 5 && why.contains("accurate CPU usage"), "{out:?}");
    }
    let bytes = std::fs::read(&path).unwrap();
    assert!(!contains(&bytes, &MARKER[..16]));
    let img = Qcow2Image::open_with_key(File::open(&path).unwrap(), Some(b"qemu pass")).unwrap();
    let mut back = vec![0u8; 5 * CLUSTER];
    img.read(&mut back, 0).unwrap();
    assert!(back[..] == data[..5 * CLUSTER]);
    let wrong = Qcow2Image::open_with_key(File::open(&path).unwrap(), Some(b"qemu Pass"));
    assert_eq!(wrong.err().unwrap().kind(), io::ErrorKind::PermissionDenied);
}

/// New images' PBKDF2: at least LUKS's minimum of 1000 iterations, and a
/// passphrase tried in well under a second here.
#[test]
fn default_iterations() {
    const { assert!(DEFAULT_ITERATIONS.slot >= 1000 && DEFAULT_ITERATIONS.digest >= 1000) };
    let (area, key) = create(b"p", DEFAULT_ITERATIONS).unwrap();
    assert_eq!(be32(&area, 212), DEFAULT_ITERATIONS.slot);
    let t = std::time::Instant::now();
    let opened = unlock(&area_reader(&area), b"p").unwrap();
    let took = t.elapsed();
    eprintln!("unlock with the default iterations: {took:?}");
    assert_eq!(sample(&opened), sample(&key));
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

/// The XTS here against the xts-mode crate's (an independent
/// implementation, IEEE 1619): same bytes both ways, for sectors past
/// 2^32.
#[test]
fn xts_matches_reference() {
    use aes::cipher::KeyInit;
    let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
    let ours = LuksKey::new(&key);
    let reference = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(&key[..32]).unwrap(),
        aes::Aes256::new_from_slice(&key[32..]).unwrap(),
    );
    let mut plain = vec![0u8; 8 * SECTOR];
    plain
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 31 % 251) as u8);
    let first = (1u64 << 33) + 5;
    let mut a = plain.clone();
    ours.encrypt(&mut a, first);
    let mut b = plain.clone();
    reference.encrypt_area(&mut b, SECTOR, first as u128, xts_mode::get_tweak_default);
    assert_eq!(a, b);
    ours.decrypt(&mut a, first);
    assert_eq!(a, plain);
}

/// Encrypting into another buffer (the writer's one pass) gives what
/// encrypting in place gives, and decrypts back.
#[test]
fn encrypt_into_matches_in_place() {
    let key = LuksKey::new(&(0..64).map(|i| i as u8 * 3).collect::<Vec<_>>());
    let plain: Vec<u8> = (0..3 * SECTOR).map(|i| (i * 7 % 251) as u8).collect();
    let mut in_place = plain.clone();
    key.encrypt(&mut in_place, 77);
    let mut into = vec![0u8; plain.len()];
    key.encrypt_into(&plain, &mut into, 77);
    assert_eq!(in_place, into);
    assert_ne!(into, plain);
    key.decrypt(&mut into, 77);
    assert_eq!(into, plain);
}
