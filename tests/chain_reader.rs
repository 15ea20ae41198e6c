//! Reading a deep recorded chain level by level: the data is what
//! `qemu-img convert` of the top gives, and the descriptors held stay
//! bounded whatever the depth.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{identical, qcow2_over, qemu_img, raw_contents, truncate};

use libvirt_backup::test_api::engine::copy::{Baseline, copy_image};
use libvirt_backup::test_api::image::chain::{ChainReader, MAX_OPEN};
use libvirt_backup::test_api::image::disk::{Chain, Source, Target};
use libvirt_backup::test_api::job::Progress;
use libvirt_backup::test_api::store::index::NoDigests;
use libvirt_backup::test_api::xml::backup::DiskFormat;

const DEPTH: usize = 100;
const SIZE: u64 = 32 << 20;
const K64: u64 = 64 << 10;

/// Descriptors of this process on files in `dir` (unlinked ones too), not
/// counting what tests running alongside open.
fn open_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
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

    let before = open_in(dir.path());
    let reader = ChainReader::open(top, &chain).unwrap();
    assert_eq!(reader.depth(), DEPTH + 1);
    assert_eq!(reader.size(), SIZE);
    let mut most = open_in(dir.path());
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
        most = most.max(open_in(dir.path()));
    }
    assert!(got == want, "the chain read differs from qemu-img convert");
    let mut whole = vec![0xeeu8; SIZE as usize];
    assert!(reader.fill(&mut whole, 0).unwrap());
    assert!(whole == want, "a whole-disk read differs");
    most = most.max(open_in(dir.path()));
    assert!(
        most - before <= MAX_OPEN,
        "{} descriptors open for a {}-level chain",
        most - before,
        DEPTH + 1
    );
    drop(reader);
    assert_eq!(
        open_in(dir.path()),
        before,
        "closing the reader closes every level"
    );

    // The engine's copy through Source::open(Recorded), sampled by a
    // second thread while it runs.
    let out = dir.path().join("copy.raw");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(open_in(dir.path()));
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
    // Levels, the target and its handles (page cache, O_DIRECT).
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
    // A level replaced after the open (another file at its path, as a
    // merge renames one) is followed: the chain is resolved again and read
    // from the file now there.
    let r = ChainReader::open(&c, &chain).unwrap();
    let copy = d.join("a.copy");
    std::fs::copy(&a, &copy).unwrap();
    std::fs::rename(&copy, &a).unwrap();
    buf.fill(0xee);
    assert!(r.fill(&mut buf, 0).unwrap());
    assert!(buf[..1 << 20].iter().all(|&x| x == 0x0a));
    assert!(buf[1 << 20..].iter().all(|&x| x == 0x0c));
    // Followed only through recorded files: once the top names a file the
    // catalog did not record, a level that changed is not followed.
    let r = ChainReader::open(&c, &chain).unwrap();
    let c2 = d.join("c.copy");
    std::fs::copy(&c, &c2).unwrap();
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        stray.to_str().unwrap(),
        c2.to_str().unwrap(),
    ]);
    std::fs::rename(&c2, &c).unwrap();
    std::fs::copy(&a, &copy).unwrap();
    std::fs::rename(&copy, &a).unwrap();
    let e = r.fill(&mut buf, 0).err().unwrap();
    assert!(e.message.contains("did not record"), "{}", e.message);
    std::fs::copy(&c, &c2).unwrap();
    qemu_img(&[
        "rebase",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        a.to_str().unwrap(),
        c2.to_str().unwrap(),
    ]);
    std::fs::rename(&c2, &c).unwrap();
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
    use libvirt_backup::test_api::store::secure::shrink_before_removal;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, c) = two_levels(d, 12);
    let r = ChainReader::open(&c, &[(a.clone(), DiskFormat::Qcow2)]).unwrap();
    // Levels are held from their first read on (opening checks headers
    // only: a level shrunk before it is read fails the read instead).
    let mut buf = vec![0u8; 13 << 20];
    assert!(r.fill(&mut buf[..1 << 20], 0).unwrap());
    let f = std::fs::File::options().write(true).open(&a).unwrap();
    shrink_before_removal(&f, &mut || panic!("shrank a level a reader holds"));
    drop(f);
    std::fs::remove_file(&a).unwrap();
    assert!(r.fill(&mut buf, 0).unwrap());
    assert!(buf[..12 << 20].iter().all(|&x| x == 0x0a));
    assert!(buf[12 << 20..].iter().all(|&x| x == 0x0c));
    // Nobody reading: the same file gives its blocks back.
    drop(r);
    std::fs::write(&a, vec![1u8; 12 << 20]).unwrap();
    let f = std::fs::File::options().write(true).open(&a).unwrap();
    let mut steps = 0;
    shrink_before_removal(&f, &mut || steps += 1);
    assert!(steps >= 2, "{steps} steps");
}

/// What a delete of the backup whose image is `parent` does to its child's
/// image `child` (`ops::merge`, then the removal of the backup's files): the
/// child's whole content is written to a new file next to it, a delta over
/// `base` (the deleted backup's own parent) or a full copy, and renamed
/// over the child's file; then the parent's file is shrunk (unless a reader
/// holds it) and removed.
fn merge_away(parent: &Path, child: &Path, base: Option<&Path>) {
    use libvirt_backup::test_api::store::secure::shrink_before_removal;
    let tmp = child.with_extension("merge");
    std::fs::copy(child, &tmp).unwrap();
    // A safe rebase writes whatever the new base reads differently.
    let base = base.map_or(String::new(), |b| b.to_str().unwrap().to_string());
    let mut args = vec!["rebase", "-q", "-f", "qcow2", "-b", &base];
    if !base.is_empty() {
        args.extend(["-F", "qcow2"]);
    }
    args.push(tmp.to_str().unwrap());
    qemu_img(&args);
    std::fs::rename(&tmp, child).unwrap();
    if let Ok(f) = std::fs::File::options().write(true).open(parent) {
        shrink_before_removal(&f, &mut || {});
    }
    std::fs::remove_file(parent).unwrap();
}

/// Every byte of `r`, read `piece` bytes at a time.
fn read_all(r: &ChainReader, piece: usize) -> Vec<u8> {
    let mut got = vec![0xeeu8; r.size() as usize];
    for (i, part) in got.chunks_mut(piece).enumerate() {
        if !r.fill(part, (i * piece) as u64).unwrap() {
            part.fill(0);
        }
    }
    got
}

/// A full backup `f` and incrementals `i1`, `i2`, `i3` over it, each
/// holding MiBs of its own and rewriting some of the levels below.
fn four_backups(d: &Path) -> [PathBuf; 4] {
    let [f, i1, i2, i3] = ["f", "i1", "i2", "i3"].map(|n| d.join(format!("{n}.qcow2")));
    create(&f, None);
    qemu_io_all(&f, &["write -P 0x0f 0 6M".into()]);
    create(&i1, Some(&f));
    qemu_io_all(
        &i1,
        &["write -P 0x11 4M 4M".into(), "write -P 0x12 64k 64k".into()],
    );
    create(&i2, Some(&i1));
    qemu_io_all(
        &i2,
        &[
            "write -P 0x22 8M 2M".into(),
            "write -P 0x23 5M 64k".into(),
            "write -z 1M 64k".into(),
        ],
    );
    create(&i3, Some(&i2));
    qemu_io_all(&i3, &["write -P 0x33 10M 1M".into()]);
    [f, i1, i2, i3]
}

/// A backup's parent merged away between the open of a reader and its
/// reads (a Verify or a restore that opened its sources, and a delete of
/// the parent): the reader follows the merge and reads exactly the
/// backup's data, whether the merge rewrote the image read, a level below
/// it, or made a full copy of a chain's root.
#[test]
fn a_merge_between_open_and_read_is_followed() {
    // (backup read, its recorded chain, deleted backup, its child, the
    // child's new base), by index in `four_backups`.
    type Case = (usize, &'static [usize], usize, usize, Option<usize>);
    let cases: [Case; 4] = [
        (2, &[1, 0], 1, 2, Some(0)),
        (3, &[2, 1, 0], 1, 2, Some(0)),
        (2, &[1, 0], 0, 1, None),
        (3, &[2, 1, 0], 2, 3, Some(1)),
    ];
    for (read, below, doomed, child, base) in cases {
        let dir = tempfile::tempdir().unwrap();
        let b = four_backups(dir.path());
        let want = raw_contents(&b[read], "qcow2", &dir.path().join("want.raw"));
        let chain_of = |b: &[PathBuf]| -> Vec<_> {
            below
                .iter()
                .map(|&i| (b[i].clone(), DiskFormat::Qcow2))
                .collect()
        };
        let r = ChainReader::open(&b[read], &chain_of(&b)).unwrap();
        merge_away(&b[doomed], &b[child], base.map(|i| b[i].as_path()));
        let got = read_all(&r, 1 << 20);
        assert!(
            got == want,
            "reading {read} while {doomed} merged into {child}: bytes differ"
        );
        assert_eq!(r.depth(), below.len(), "one level less once followed");
        // A source opened before the merge, as Verify and a restore open
        // theirs, copied after it.
        let dir = tempfile::tempdir().unwrap();
        let b = four_backups(dir.path());
        let src =
            Source::open(&b[read], DiskFormat::Qcow2, Chain::Recorded(&chain_of(&b))).unwrap();
        merge_away(&b[doomed], &b[child], base.map(|i| b[i].as_path()));
        let out = dir.path().join("copy.raw");
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
        assert!(
            std::fs::read(&out).unwrap() == want,
            "copy of {read}: bytes differ"
        );
    }
}

/// A deep chain read part-way, then a level the reader does not hold
/// merged away (its child rewritten by a rename over it, it shrunk and
/// removed), then read on: the data is the backup's, byte for byte, and
/// the descriptors stay bounded.
#[test]
fn a_merge_in_the_middle_of_a_read_is_followed() {
    const LEVELS: u64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut levels: Vec<PathBuf> = Vec::new();
    for k in 0..LEVELS {
        let p = d.join(format!("l{k:02}.qcow2"));
        create(&p, levels.last().map(|b| b.as_path()));
        let mut cmds = vec![format!("write -P {} {}M 1M", k + 1, k)];
        if k > 0 {
            cmds.push(format!("write -P {} {}M 64k", k + 0x40, k - 1));
        }
        qemu_io_all(&p, &cmds);
        levels.push(p);
    }
    let top = levels.last().unwrap().clone();
    let want = raw_contents(&top, "qcow2", &d.join("want.raw"));
    let chain = recorded(&levels);

    let r = ChainReader::open(&top, &chain).unwrap();
    let mut most = open_in(d);
    let mut got = vec![0xeeu8; SIZE as usize];
    // The top's own MiB first: the whole span is mapped, every level
    // consulted, and the least recently used ones (the upper levels) closed
    // again.
    let at = (LEVELS - 1) << 20;
    assert!(r.fill(&mut got[at as usize..][..1 << 20], at).unwrap());
    most = most.max(open_in(d));
    // The backup of l09 deleted: l10 rewritten over l08, l09 removed.
    let (l08, l09, l10) = (&levels[8], &levels[9], &levels[10]);
    merge_away(l09, l10, Some(l08));
    for (i, part) in got.chunks_mut(1 << 20).enumerate() {
        let off = (i as u64) << 20;
        if !r.fill(part, off).unwrap() {
            part.fill(0);
        }
        most = most.max(open_in(d));
    }
    assert!(got == want, "the read across the merge differs");
    assert_eq!(r.depth(), LEVELS as usize - 1);
    assert!(most <= MAX_OPEN, "{most} descriptors open");
    drop(r);
    assert_eq!(open_in(d), 0, "closing the reader closes every level");
}

/// Readers racing a merge (one thread merges while others open readers and
/// read them whole, two threads on each reader, again and again until the
/// merge is done): every open succeeds and every read returns the backup's
/// data.
#[test]
fn reads_racing_merges_return_the_backups_data() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let b = four_backups(dir.path());
        let want = raw_contents(&b[3], "qcow2", &dir.path().join("want.raw"));
        let chain: Vec<_> = [2, 1, 0]
            .iter()
            .map(|&i| (b[i].clone(), DiskFormat::Qcow2))
            .collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Deleting i1 or (odd rounds) f.
                match round % 2 {
                    0 => merge_away(&b[1], &b[2], Some(&b[0])),
                    _ => merge_away(&b[0], &b[1], None),
                }
                done.store(true, Ordering::SeqCst);
            });
            loop {
                let last = done.load(Ordering::SeqCst);
                let r = ChainReader::open(&b[3], &chain).unwrap();
                std::thread::scope(|s| {
                    let other = s.spawn(|| read_all(&r, 256 << 10) == want);
                    assert!(read_all(&r, 1 << 20) == want, "round {round}");
                    assert!(other.join().unwrap(), "round {round}");
                });
                if last {
                    break;
                }
            }
        });
    }
}

/// A level replaced by an image that is not the backup's (another size)
/// is not followed: the read fails, naming the image.
#[test]
fn a_chain_changed_into_another_size_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, c) = two_levels(d, 2);
    let r = ChainReader::open(&c, &[(a.clone(), DiskFormat::Qcow2)]).unwrap();
    let other = d.join("other.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        other.to_str().unwrap(),
        "64M",
    ]);
    std::fs::rename(&other, &c).unwrap();
    std::fs::copy(&a, d.join("a.copy")).unwrap();
    std::fs::rename(d.join("a.copy"), &a).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let e = r
        .fill(&mut buf, 0)
        .expect_err("followed into another image");
    assert!(e.message.contains("size changed"), "{}", e.message);
    assert!(e.message.contains(c.to_str().unwrap()), "{}", e.message);
}
