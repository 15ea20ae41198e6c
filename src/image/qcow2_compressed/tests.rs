//! Round trips of the compressed writer through the library's own reader
//! (zstd and zlib), through imago (zlib), and through `qemu-img` where it
//! is installed.

use super::*;
use crate::image::qcow2_decode::{Map, Qcow2Image};

/// A disk of 5 clusters and a 1000-byte tail: text, random bytes (which do
/// not compress), a cluster left out, zeroes, text again.
fn disk() -> Vec<u8> {
    let c = CLUSTER as usize;
    let mut d = vec![0u8; 5 * c + 1000];
    let text = b"the quick brown fox jumps over the lazy dog 0123456789\n";
    for (i, b) in d.iter_mut().enumerate() {
        *b = text[i % text.len()];
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut d[c..2 * c] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    d[2 * c..4 * c].fill(0);
    d
}

fn write(codec: Codec, path: &Path, data: &[u8]) {
    let c = CLUSTER as usize;
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    let w = CompressedWriter::create(file, data.len() as u64, None, codec).unwrap();
    w.write(&data[..2 * c], 0).unwrap();
    w.write_zeroes(3 * CLUSTER, CLUSTER).unwrap();
    w.write(&data[4 * c..], 4 * CLUSTER).unwrap();
    w.finish().unwrap();
}

fn own_read(path: &Path, len: usize) -> (Vec<u8>, Vec<Map>) {
    let img = Qcow2Image::open(File::open(path).unwrap()).unwrap();
    assert_eq!(img.size(), len.next_multiple_of(512) as u64);
    let mut back = vec![0xaa; len];
    img.read(&mut back, 0).unwrap();
    let kinds = (0..6)
        .map(|c| img.mapping(c * CLUSTER, CLUSTER).unwrap().0)
        .collect();
    (back, kinds)
}

fn round_trip(codec: Codec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.qcow2");
    let data = disk();
    write(codec, &path, &data);
    let (back, kinds) = own_read(&path, data.len());
    assert!(back == data, "{codec:?}: data differs");
    assert_eq!(kinds[0], Map::Compressed);
    assert!(
        matches!(kinds[1], Map::Plain(_)),
        "random cluster stored plain"
    );
    assert_eq!(kinds[2], Map::Unallocated);
    assert_eq!(kinds[3], Map::Zero);
    assert_eq!(kinds[4], Map::Compressed);
    assert_eq!(kinds[5], Map::Compressed, "the tail cluster");
    // Header; text cluster 0; the plain cluster; clusters 4 and 5 packed
    // into one host cluster; L2, L1, refcount table and block.
    let stored = std::fs::metadata(&path).unwrap().len();
    assert_eq!(stored, 8 * CLUSTER, "{stored} bytes stored");
    qemu_check(&path, &data, codec);
}

/// `qemu-img check` clean and the guest data as QEMU reads it, when
/// `qemu-img` is installed.
fn qemu_check(path: &Path, data: &[u8], codec: Codec) {
    let Ok(out) = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
    else {
        return;
    };
    assert!(out.status.success(), "qemu-img check: {out:?}");
    let raw = path.with_extension("raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let back = std::fs::read(&raw).unwrap();
    // qcow2 sizes are whole sectors.
    assert_eq!(&back[..data.len()], data, "{codec:?} as QEMU reads it");
    assert!(back[data.len()..].iter().all(|&b| b == 0));
}

#[test]
fn zstd_round_trip() {
    round_trip(Codec::Zstd);
}

#[test]
fn zlib_round_trip() {
    round_trip(Codec::Zlib);
}

/// A zlib image is what imago reads too (an independent inflate).
#[test]
fn zlib_read_by_imago() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.qcow2");
    let data = disk();
    write(Codec::Zlib, &path, &data);
    let src = crate::image::disk::Source::open(
        &path,
        crate::xml::backup::DiskFormat::Qcow2,
        crate::image::disk::Chain::None,
    )
    .unwrap();
    let mut back = vec![0u8; data.len()];
    assert!(src.fill(&mut back, 0).unwrap());
    assert!(back == data);
}

/// The header a zstd image carries: version 3, 112 bytes, feature bit 3,
/// compression type 1; a zlib one neither.
#[test]
fn header_fields() {
    let dir = tempfile::tempdir().unwrap();
    for (codec, bit, ty) in [(Codec::Zstd, 8u8, 1u8), (Codec::Zlib, 0, 0)] {
        let path = dir.path().join(format!("{codec:?}.qcow2"));
        write(codec, &path, &disk());
        let h = std::fs::read(&path).unwrap();
        assert_eq!(&h[0..8], b"QFI\xfb\0\0\0\x03");
        assert_eq!(h[79], bit);
        assert_eq!(&h[100..104], &112u32.to_be_bytes());
        assert_eq!(h[104], ty);
        assert_eq!(&h[20..24], &16u32.to_be_bytes());
    }
}

/// An incremental over a backing file: unwritten clusters unallocated,
/// the backing name and format in the header; a write out of guest order
/// is refused.
#[test]
fn backing_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.qcow2");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let size = 2 * L2_ENTRIES * CLUSTER;
    let w = CompressedWriter::create(
        file,
        size,
        Some((Path::new("../p/vda.qcow2"), DiskFormat::Qcow2)),
        Codec::Zstd,
    )
    .unwrap();
    let data = vec![7u8; CLUSTER as usize];
    w.write(&data, L2_ENTRIES * CLUSTER).unwrap();
    assert!(w.write(&data, CLUSTER).is_err());
    let img = Qcow2Image::open(File::open(&path).unwrap());
    drop(img);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("j"))
        .unwrap();
    let w = CompressedWriter::create(
        file,
        size,
        Some((Path::new("../p/vda.qcow2"), DiskFormat::Qcow2)),
        Codec::Zstd,
    )
    .unwrap();
    w.write(&data, L2_ENTRIES * CLUSTER + CLUSTER).unwrap();
    w.finish().unwrap();
    let img = Qcow2Image::open(File::open(dir.path().join("j")).unwrap()).unwrap();
    assert_eq!(img.backing(), Some("../p/vda.qcow2"));
    assert_eq!(
        img.mapping(0, size).unwrap(),
        (Map::Unallocated, (L2_ENTRIES + 1) * CLUSTER)
    );
    let mut back = vec![0u8; CLUSTER as usize];
    img.read(&mut back, (L2_ENTRIES + 1) * CLUSTER).unwrap();
    assert!(back == data);
}
