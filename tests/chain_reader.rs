//! Reading a deep recorded chain level by level: the data is what
//! `qemu-img convert` of the top gives, and the descriptors held stay
//! bounded whatever the depth.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{identical, qcow2_over, qemu_img, truncate};

use libvirt_backup::engine::copy::{Baseline, copy_image};
use libvirt_backup::image::chain::{ChainReader, MAX_OPEN};
use libvirt_backup::image::disk::{Chain, Source, Target};
use libvirt_backup::job::Progress;
use libvirt_backup::store::index::NoDigests;
use libvirt_backup::xml::backup::DiskFormat;

const DEPTH: usize = 100;
const SIZE: u64 = 32 << 20;
const K64: u64 = 64 << 10;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Run `qemu-io` with several commands on one image.
fn qemu_io_all(path: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c.arg(path).output().expect("qemu-io runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create(path: &Path, backing: Option<&Path>) {
    let p = path.to_str().unwrap();
    match backing {
        None => qemu_img(&["create", "-q", "-f", "qcow2", p, "32M"]),
        Some(b) => qcow2_over(path, b),
    }
}

/// A chain of `DEPTH` qcow2 levels above a base: each level writes its own
/// 64 KiB cluster (at a distinct offset), rewrites one a lower level wrote,
/// every tenth level zeroes a cluster lower levels hold data in (an
/// explicit zero cluster, which must hide them), every 25th writes a
/// compressed cluster. The last 17 MiB stay
/// unallocated everywhere. Returns the levels, base first.
fn deep_chain(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("l000.qcow2");
    create(&base, None);
    qemu_io_all(&base, &["write -P 0x01 0 8M".into()]);
    let mut levels = vec![base];
    for k in 1..=DEPTH as u64 {
        let p = dir.join(format!("l{k:03}.qcow2"));
        create(&p, levels.last().map(|b| b.as_path()));
        let mut cmds = vec![
            format!("write -P {} {} 64k", k % 250 + 1, (8 << 20) + k * K64),
            format!(
                "write -P {} {} 32k",
                (k * 7) % 250 + 1,
                (k / 2) * K64 + 16384
            ),
        ];
        if k % 25 == 0 {
            // A compressed cluster: read through the format driver.
            cmds.push(format!(
                "write -c -P {} {} 64k",
                k / 25 + 0x40,
                (13 << 20) + (k / 25) * K64
            ));
        }
        if k % 10 == 0 {
            cmds.push(format!("write -z {} 64k", (k * 3 % 128) * K64));
        }
        qemu_io_all(&p, &cmds);
        levels.push(p);
    }
    levels
}

/// The recorded chain below the top: nearest first, as the catalog keeps it.
fn recorded(levels: &[PathBuf]) -> Vec<(PathBuf, DiskFormat)> {
    levels[..levels.len() - 1]
        .iter()
        .rev()
        .map(|p| (p.clone(), DiskFormat::Qcow2))
        .collect()
}

#[test]
fn a_deep_chain_reads_as_qemu_img_convert_with_few_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let levels = deep_chain(dir.path());
    let top = levels.last().unwrap();
    let chain = recorded(&levels);
    let want = dir.path().join("want.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "qcow2",
        "-O",
        "raw",
        top.to_str().unwrap(),
        want.to_str().unwrap(),
    ]);
    let want = std::fs::read(&want).unwrap();
    assert_eq!(want.len() as u64, SIZE);

    let before = open_fds();
    let reader = ChainReader::open(top, &chain).unwrap();
    assert_eq!(reader.depth(), DEPTH + 1);
    assert_eq!(reader.size(), SIZE);
    let mut most = open_fds();
    // Pieces of 1 MiB, then the whole disk at once: every level is needed
    // for the first 8 MiB, the last 17 MiB are holes everywhere.
    let mut got = vec![0xeeu8; SIZE as usize];
    for (i, part) in got.chunks_mut(1 << 20).enumerate() {
        let off = i as u64 * (1 << 20);
        let data = reader.fill(part, off).unwrap();
        assert_eq!(data, off < 15 << 20, "data reported at offset {off}");
        if !data {
            part.fill(0);
        }
        most = most.max(open_fds());
    }
    assert!(got == want, "the chain read differs from qemu-img convert");
    let mut whole = vec![0xeeu8; SIZE as usize];
    assert!(reader.fill(&mut whole, 0).unwrap());
    assert!(whole == want, "a whole-disk read differs");
    most = most.max(open_fds());
    assert!(
        most - before <= MAX_OPEN,
        "{} descriptors open for a {}-level chain",
        most - before,
        DEPTH + 1
    );
    drop(reader);
    assert_eq!(open_fds(), before, "closing the reader closes every level");

    // The engine's copy through Source::open(Recorded), sampled by a
    // second thread while it runs.
    let out = dir.path().join("copy.raw");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(open_fds());
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            peak
        });
        let src = Source::open(top, DiskFormat::Qcow2, Chain::Recorded(&chain)).unwrap();
        let dst = Target::create(&out, DiskFormat::Raw, src.size(), None, false).unwrap();
        copy_image(
            &src,
            &dst,
            &Progress::default(),
            Baseline::Empty,
            &mut NoDigests,
        )
        .unwrap();
        dst.finish(&out).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap()
    });
    assert!(identical(top, "qcow2", &out, "raw"));
    // Levels, the target and its page-cache handle, the sampler's listing.
    assert!(
        peak - before <= MAX_OPEN + 4,
        "{} descriptors open during a copy of a {}-level chain",
        peak - before,
        DEPTH + 1
    );
    // The copy is sparse: the holes of every level stay holes.
    use std::os::unix::fs::MetadataExt;
    let used = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(used <= 15 << 20, "the copy allocated {used} bytes");
}

#[test]
fn a_header_may_skip_recorded_levels_but_not_name_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c, stray) = (
        d.join("a.qcow2"),
        d.join("b.qcow2"),
        d.join("c.qcow2"),
        d.join("x.qcow2"),
    );
    create(&a, None);
    qemu_io_all(&a, &["write -P 0x0a 0 1M".into()]);
    create(&stray, None);
    // c names a directly although b is recorded between them (a merge
    // removed b's level): allowed, and b is never read.
    create(&b, Some(&a));
    qemu_io_all(&b, &["write -P 0x0b 0 1M".into()]);
    create(&c, Some(&a));
    qemu_io_all(&c, &["write -P 0x0c 1M 1M".into()]);
    let chain = vec![
        (b.clone(), DiskFormat::Qcow2),
        (a.clone(), DiskFormat::Qcow2),
    ];
    let r = ChainReader::open(&c, &chain).unwrap();
    assert_eq!(r.depth(), 2);
    let mut buf = vec![0u8; 2 << 20];
    assert!(r.fill(&mut buf, 0).unwrap());
    assert!(buf[..1 << 20].iter().all(|&x| x == 0x0a));
    assert!(buf[1 << 20..].iter().all(|&x| x == 0x0c));
    // A level replaced after the open (another file at its path) is
    // refused when it is opened for reading, not read.
    let r = ChainReader::open(&c, &chain).unwrap();
    let copy = d.join("a.copy");
    std::fs::copy(&a, &copy).unwrap();
    std::fs::rename(&copy, &a).unwrap();
    let e = r.fill(&mut buf, 0).err().unwrap();
    assert!(
        e.message.contains("changed while it was read"),
        "{}",
        e.message
    );
    // A header naming a file the catalog did not record is refused, even
    // one that exists; so is a level that is not below the one naming it.
    let e = ChainReader::open(&c, &[(stray.clone(), DiskFormat::Qcow2)])
        .err()
        .unwrap();
    assert!(
        e.message.contains("which the catalog did not record"),
        "{}",
        e.message
    );
    let e = ChainReader::open(&b, &[(c.clone(), DiskFormat::Qcow2)])
        .err()
        .unwrap();
    assert!(e.message.contains("did not record"), "{}", e.message);
}

/// `a.qcow2` with `mib` MiB of 0x0a, and `c.qcow2` over it with 1 MiB of
/// 0x0c right after them.
fn two_levels(d: &Path, mib: u64) -> (PathBuf, PathBuf) {
    let (a, c) = (d.join("a.qcow2"), d.join("c.qcow2"));
    create(&a, None);
    qemu_io_all(&a, &[format!("write -P 0x0a 0 {mib}M")]);
    create(&c, Some(&a));
    qemu_io_all(&c, &[format!("write -P 0x0c {mib}M 1M")]);
    (a, c)
}

/// A delete gives back a removed image's blocks by shrinking it from the
/// end: a reader still inside it must fail, never take what imago reads
/// past the new end (zeroes) for the image's metadata or data.
#[test]
fn a_level_shrinking_while_read_is_an_error_not_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, c) = two_levels(d, 4);
    let chain = vec![(a.clone(), DiskFormat::Qcow2)];
    let r = ChainReader::open(&c, &chain).unwrap();
    // The header and the first tables stay; the data and what follows go.
    truncate(&a, 256 << 10);
    let mut buf = vec![0u8; 8 << 20];
    let e = r
        .fill(&mut buf, 0)
        .expect_err("read zeroes from a shrunk level");
    assert!(e.message.contains(a.to_str().unwrap()), "{}", e.message);
}

/// While a reader has a level open, a delete removing that level only
/// unlinks it: the reader reads on from the unlinked file, as before
/// deletes gave blocks back in steps.
#[test]
fn a_delete_does_not_shrink_a_level_a_reader_holds() {
    use libvirt_backup::store::secure::{open_for_removal, shrink_before_removal};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, c) = two_levels(d, 12);
    let r = ChainReader::open(&c, &[(a.clone(), DiskFormat::Qcow2)]).unwrap();
    // Levels are held from their first read on (opening checks headers
    // only: a level shrunk before it is read fails the read instead).
    let mut buf = vec![0u8; 13 << 20];
    assert!(r.fill(&mut buf[..1 << 20], 0).unwrap());
    let f = open_for_removal(&a).unwrap();
    shrink_before_removal(&f, &mut || panic!("shrank a level a reader holds"));
    drop(f);
    std::fs::remove_file(&a).unwrap();
    assert!(r.fill(&mut buf, 0).unwrap());
    assert!(buf[..12 << 20].iter().all(|&x| x == 0x0a));
    assert!(buf[12 << 20..].iter().all(|&x| x == 0x0c));
    // Nobody reading: the same file gives its blocks back.
    drop(r);
    std::fs::write(&a, vec![1u8; 12 << 20]).unwrap();
    let f = open_for_removal(&a).unwrap();
    let mut steps = 0;
    shrink_before_removal(&f, &mut || steps += 1);
    assert!(steps >= 2, "{steps} steps");
}
