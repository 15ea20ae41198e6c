//! The disk engine against real images made and checked by qemu-img.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

mod common;
use common::{identical, qcow2_over, qemu_img, qemu_io, truncate};
use std::sync::atomic::Ordering;

use libvirt_backup::test_api::engine::copy::{Baseline, copy_image};
use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::image::disk::{Chain, Source, Target};
use libvirt_backup::test_api::job::Progress;
use libvirt_backup::test_api::store::index::NoDigests;
use libvirt_backup::test_api::store::index::is_zero;
use libvirt_backup::test_api::xml::backup::DiskFormat;

fn copy(src: &Path, sfmt: DiskFormat, dst: &Path, dfmt: DiskFormat) -> Progress {
    let s = Source::open(src, sfmt, Chain::Header).unwrap();
    let t = Target::create(dst, dfmt, s.size(), None, false).unwrap();
    let p = Progress::default();
    copy_image(&s, &t, &p, Baseline::Empty, &mut NoDigests).unwrap();
    t.finish(dst).unwrap();
    p
}

fn path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn sparse_raw_to_qcow2_copies_only_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = path(&dir, "src.raw");
    qemu_img(&["create", "-q", "-f", "raw", src.to_str().unwrap(), "1G"]);
    qemu_io("raw", &src, "write -P 0xab 0 8M");
    qemu_io("raw", &src, "write -P 0x11 500M 8M");
    qemu_io("raw", &src, "write -P 0x77 1016M 8M");
    let dst = path(&dir, "dst.qcow2");
    let p = copy(&src, DiskFormat::Raw, &dst, DiskFormat::Qcow2);
    assert!(identical(&src, "raw", &dst, "qcow2"));
    assert_eq!(p.processed.load(Ordering::Relaxed), 1 << 30);
    assert_eq!(p.written.load(Ordering::Relaxed), 24 << 20);
    let meta = std::fs::metadata(&dst).unwrap();
    let used = meta.blocks() * 512;
    assert!(used < 64 << 20, "target uses {used} bytes");
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "a backup image is private to its owner"
    );
}

#[test]
fn qcow2_chain_to_raw_reads_through_backing() {
    let dir = tempfile::tempdir().unwrap();
    let base = path(&dir, "base.qcow2");
    let top = path(&dir, "top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "64M"]);
    qemu_io("qcow2", &base, "write -P 0x01 0 4M");
    qemu_io("qcow2", &base, "write -P 0x02 32M 4M");
    qcow2_over(&top, &base);
    qemu_io("qcow2", &top, "write -P 0x03 2M 4M");
    qemu_io("qcow2", &top, "write -z 32M 1M");
    let dst = path(&dir, "flat.raw");
    copy(&top, DiskFormat::Qcow2, &dst, DiskFormat::Raw);
    assert!(identical(&top, "qcow2", &dst, "raw"));
    // The same chain into qcow2.
    let dst2 = path(&dir, "flat.qcow2");
    copy(&top, DiskFormat::Qcow2, &dst2, DiskFormat::Qcow2);
    assert!(identical(&top, "qcow2", &dst2, "qcow2"));
}

#[test]
fn allocated_zeros_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = path(&dir, "zeros.raw");
    // Fully allocated, all zero except one 64 KiB block.
    let f = std::fs::File::create(&src).unwrap();
    f.write_all_at(&vec![0u8; 16 << 20], 0).unwrap();
    f.write_all_at(&vec![0x42u8; 64 << 10], 3 << 20).unwrap();
    drop(f);
    let dst = path(&dir, "zeros.qcow2");
    let p = copy(&src, DiskFormat::Raw, &dst, DiskFormat::Qcow2);
    assert_eq!(p.written.load(Ordering::Relaxed), 64 << 10);
    assert!(identical(&src, "raw", &dst, "qcow2"));
}

#[test]
fn unaligned_sizes_and_tails() {
    let dir = tempfile::tempdir().unwrap();
    let src = path(&dir, "odd.raw");
    let f = std::fs::File::create(&src).unwrap();
    let size = (5 << 20) + 12345;
    f.set_len(size).unwrap();
    f.write_all_at(&vec![0x9cu8; 1000], size - 1000).unwrap();
    f.write_all_at(&vec![0x9du8; 70000], 100).unwrap();
    drop(f);
    for (name, fmt, fs) in [
        ("odd.qcow2", DiskFormat::Qcow2, "qcow2"),
        ("odd2.raw", DiskFormat::Raw, "raw"),
    ] {
        let dst = path(&dir, name);
        copy(&src, DiskFormat::Raw, &dst, fmt);
        assert!(identical(&src, "raw", &dst, fs), "{name}");
    }
}

#[test]
fn cancel_stops_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let src = path(&dir, "c.raw");
    qemu_img(&["create", "-q", "-f", "raw", src.to_str().unwrap(), "64M"]);
    qemu_io("raw", &src, "write -P 0xab 0 64M");
    let s = Source::open(&src, DiskFormat::Raw, Chain::None).unwrap();
    let dst = path(&dir, "c.qcow2");
    let t = Target::create(&dst, DiskFormat::Qcow2, s.size(), None, false).unwrap();
    let p = Progress::default();
    p.cancel.store(true, Ordering::Relaxed);
    let err = copy_image(&s, &t, &p, Baseline::Empty, &mut NoDigests).unwrap_err();
    assert!(err.is(ErrorCode::OperationAborted));
    assert_eq!(p.written.load(Ordering::Relaxed), 0);
}

#[test]
fn targets_are_never_overwritten_and_sources_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let existing = path(&dir, "exists.qcow2");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = Target::create(&existing, DiskFormat::Qcow2, 1 << 20, None, false)
        .err()
        .unwrap();
    assert!(err.is(ErrorCode::OperationFailed));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let err = Source::open(&path(&dir, "missing.raw"), DiskFormat::Raw, Chain::None)
        .err()
        .unwrap();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("missing.raw"));
    // A raw file is not accepted as qcow2.
    let err = Source::open(&existing, DiskFormat::Qcow2, Chain::None)
        .err()
        .unwrap();
    assert!(err.is(ErrorCode::OperationFailed));
}

#[test]
fn zero_test() {
    assert!(is_zero(&[]));
    assert!(is_zero(&[0; 100]));
    let mut v = vec![0u8; 65536 + 7];
    assert!(is_zero(&v));
    v[65536 + 6] = 1;
    assert!(!is_zero(&v));
    v[65536 + 6] = 0;
    v[17] = 1;
    assert!(!is_zero(&v));
}

#[test]
fn a_source_that_changes_size_fails_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let src = path(&dir, "shrink.raw");
    qemu_img(&["create", "-q", "-f", "raw", src.to_str().unwrap(), "8M"]);
    qemu_io("raw", &src, "write -P 0xab 0 8M");
    let s = Source::open(&src, DiskFormat::Raw, Chain::None).unwrap();
    truncate(&src, 4 << 20);
    let dst = path(&dir, "shrink.qcow2");
    let t = Target::create(&dst, DiskFormat::Qcow2, s.size(), None, false).unwrap();
    let err = copy_image(
        &s,
        &t,
        &Progress::default(),
        Baseline::Empty,
        &mut NoDigests,
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed));
    // Seen where its end became a hole, not after copying zeroes.
    assert!(
        err.message.contains("changed size while it was read"),
        "{}",
        err.message
    );
}

/// A raw file whose first bytes are a qcow2 header naming `backing`
/// (what a guest can write at the start of its raw disk).
fn forged_qcow2(dir: &tempfile::TempDir, name: &str, backing: &Path, fmt: Option<&str>) -> PathBuf {
    let p = path(dir, name);
    let b = backing.to_str().unwrap();
    let f = fmt.unwrap_or("raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        b,
        "-F",
        f,
        p.to_str().unwrap(),
        "8M",
    ]);
    if fmt.is_none() {
        // qemu-img always records a format now: hide the backing format
        // extension (magic 0xe2792aca) behind an unknown magic.
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes[..4096]
            .windows(4)
            .position(|w| w == [0xe2, 0x79, 0x2a, 0xca])
            .unwrap();
        bytes[at..at + 4].copy_from_slice(&[0x0b, 0xad, 0xf0, 0x0d]);
        std::fs::write(&p, bytes).unwrap();
    }
    p
}

#[test]
fn backing_files_are_followed_only_as_stated() {
    let dir = tempfile::tempdir().unwrap();
    let secret = path(&dir, "host-secret.raw");
    std::fs::write(&secret, vec![0x5a; 1 << 20]).unwrap();

    // A caller-named image may not have a backing file at all.
    let with_fmt = forged_qcow2(&dir, "named.qcow2", &secret, Some("raw"));
    let err = Source::open(&with_fmt, DiskFormat::Qcow2, Chain::None)
        .err()
        .unwrap();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    assert!(err.message.contains("backing file"), "{err:?}");

    // Headers are followed only when they record the backing format:
    // without one, the backing file's format would have to be probed.
    let no_fmt = forged_qcow2(&dir, "probe.qcow2", &secret, None);
    let err = Source::open(&no_fmt, DiskFormat::Qcow2, Chain::Header)
        .err()
        .unwrap();
    assert!(err.message.contains("never probes"), "{err:?}");
    let flat = path(&dir, "flat.raw");
    copy(&with_fmt, DiskFormat::Qcow2, &flat, DiskFormat::Raw);
    let buf = std::fs::read(&flat).unwrap();
    assert!(buf[..1 << 20].iter().all(|b| *b == 0x5a));

    // A backup's image reads through what the catalog recorded, and a
    // header naming anything else is refused.
    let other = path(&dir, "other.raw");
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
    let recorded = [(other.clone(), DiskFormat::Raw)];
    let err = Source::open(&with_fmt, DiskFormat::Qcow2, Chain::Recorded(&recorded))
        .err()
        .unwrap();
    assert!(err.message.contains("did not record"), "{err:?}");
    let err = Source::open(&with_fmt, DiskFormat::Qcow2, Chain::Recorded(&[]))
        .err()
        .unwrap();
    assert!(err.message.contains("did not record"), "{err:?}");
    let recorded = [(secret.clone(), DiskFormat::Raw)];
    Source::open(&with_fmt, DiskFormat::Qcow2, Chain::Recorded(&recorded)).unwrap();
    // Detached: the image's own header only, nothing it names is opened.
    let gone = forged_qcow2(&dir, "dangling.qcow2", &path(&dir, "nothing"), Some("raw"));
    let s = Source::open(&gone, DiskFormat::Qcow2, Chain::Detached).unwrap();
    assert_eq!(s.size(), 8 << 20);
}
