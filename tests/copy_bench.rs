//! Bench rows of the digest index's cost at write time (run by `make
//! bench`; ignored by `cargo test`): the copy engine copies the same raw
//! source (COPY_BENCH_DATA_MB of data, default 1024, in a source twice as
//! large, laid out as bench/copy.c lays them: contiguous, scattered,
//! sparse) into a new qcow2 target, as a full backup does:
//!
//! - ours: with the digest index, as a backup writes it (every 64 KiB
//!   chunk hashed with BLAKE3 by the reader threads, the digests written
//!   to an index file, synced);
//! - the peer: the same copy with no index (`NoDigests`): the copy engine
//!   then does not hash at all, it only tells zero chunks from data (what
//!   a restore from a backup without an index does).
//!
//! The same bytes are read and written either way, so the ratio is the
//! cost of the index: hashing plus writing the index file. Two cases:
//! "memory" (source, target and index on tmpfs, /dev/shm: no disk I/O, the
//! CPU cost alone) and "disk" (in /var/tmp, the source dropped from the page
//! cache before each run, target and index synced: a backup as it runs).
//! Each side runs COPY_BENCH_RUNS times (default 5 in memory, 3 on disk),
//! taking turns at going first; the row shows wall time median/minimum, the ratio of the medians
//! and, in the notes, the ratio of the process CPU times' medians (readers
//! included). The target of the first run of each side is compared with the
//! source (`qemu-img compare`), and the index with the target's data.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use libvirt_backup::test_api::engine::copy::{Baseline, copy_image, read_digests};
use libvirt_backup::test_api::image::disk::{Chain, Source, Target};
use libvirt_backup::test_api::job::Progress;
use libvirt_backup::test_api::store::index::{
    IndexReader, IndexVerifier, IndexWriter, NoDigests,
};
use libvirt_backup::test_api::xml::backup::DiskFormat;

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Contiguous,
    Scattered,
    Sparse,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Contiguous => "contiguous",
            Layout::Scattered => "scattered",
            Layout::Sparse => "sparse",
        }
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A raw image at `path` of 2x `data` bytes holding `data` bytes of
/// pseudo-random data in `layout`'s runs (as bench/copy.c makes them).
fn make_source(path: &Path, layout: Layout, data: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(2 * data).unwrap();
    let (mut x, mut r) = (0x2545f4914f6cdd1du64, 88172645463325252u64);
    let mut buf = vec![0u8; (4 * MIB) as usize];
    let (mut pos, mut written) = (0u64, 0u64);
    while written < data {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (run, gap) = match layout {
            Layout::Contiguous => (256 * MIB, 256 * MIB),
            Layout::Scattered => ((1 + (r >> 33) % 16) * MIB, (1 + (r >> 17) % 16) * MIB),
            Layout::Sparse => (64 << 10, 64 << 10),
        };
        let run = run.min(data - written);
        for o in (0..run).step_by(buf.len()) {
            let n = (run - o).min(buf.len() as u64) as usize;
            for w in buf[..n].chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all_at(&buf[..n], pos + o).unwrap();
        }
        written += run;
        pos += run + gap;
        if pos + run > 2 * data {
            pos = written;
        }
    }
    f.sync_all().unwrap();
}

/// Wall and process CPU seconds (all threads: the readers hash).
fn clocks() -> (Instant, f64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (Instant::now(), ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// Drop `path`'s pages from the page cache.
fn drop_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: an open descriptor of `f`; advice only, no memory involved.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// One copy of `src` into a new qcow2 `dst`, with the index written to
/// `index` if given: wall and CPU seconds, up to the target and index synced.
fn copy_once(src: &Path, dst: &Path, index: Option<&Path>, cold: bool) -> (f64, f64) {
    let _ = std::fs::remove_file(dst);
    if let Some(i) = index {
        let _ = std::fs::remove_file(i);
    }
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if cold {
        drop_cache(src);
    }
    let (t0, c0) = clocks();
    let s = Source::open(src, DiskFormat::Raw, Chain::Header).unwrap();
    let t = Target::create(dst, DiskFormat::Qcow2, s.size(), None, false).unwrap();
    let p = Progress::default();
    match index {
        Some(i) => {
            let mut w = IndexWriter::create(i, s.size()).unwrap();
            copy_image(&s, &t, &p, Baseline::Empty, &mut w).unwrap();
            w.finish().unwrap();
        }
        None => copy_image(&s, &t, &p, Baseline::Empty, &mut NoDigests).unwrap(),
    }
    t.finish(dst).unwrap();
    let (t1, c1) = clocks();
    (t1.duration_since(t0).as_secs_f64(), c1 - c0)
}

/// The target holds the source's data; the index, if any, its digests.
fn check(src: &Path, dst: &Path, index: Option<&Path>) {
    let same = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap()
        .success();
    assert!(same, "{} differs from {}", dst.display(), src.display());
    if let Some(i) = index {
        let t = Source::open(dst, DiskFormat::Qcow2, Chain::Header).unwrap();
        let mut v = IndexVerifier::new(IndexReader::open(i).unwrap());
        read_digests(&t, &Progress::default(), &mut v).unwrap();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Ours (with the index) and the peer (without) on one source; print the row.
fn row(dir: &Path, case: &str, layout: Layout, data: u64, runs: u64) {
    // An index lives in a backup's folder of the catalog: <dir>/<folder>/<file>.
    std::fs::create_dir_all(dir.join("dst.index")).unwrap();
    let (src, dst, idx) = (
        dir.join("src.raw"),
        dir.join("dst.qcow2"),
        dir.join("dst.index/vda.b3"),
    );
    make_source(&src, layout, data);
    let cold = case == "disk";
    if !cold {
        copy_once(&src, &dst, None, false); // the source in the page cache
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for n in 0..runs {
        let ours = |a: &mut Vec<(f64, f64)>| {
            a.push(copy_once(&src, &dst, Some(&idx), cold));
            if n == 0 {
                check(&src, &dst, Some(&idx));
            }
        };
        let peer = |b: &mut Vec<(f64, f64)>| {
            b.push(copy_once(&src, &dst, None, cold));
            if n == 0 {
                check(&src, &dst, None);
            }
        };
        if n % 2 == 0 {
            peer(&mut b);
            ours(&mut a);
        } else {
            ours(&mut a);
            peer(&mut b);
        }
    }
    let split = |v: &[(f64, f64)]| -> (Vec<f64>, Vec<f64>) { v.iter().copied().unzip() };
    let ((mut wa, mut ca), (mut wb, mut cb)) = (split(&a), split(&b));
    let (ma, mb) = (median(&mut wa), median(&mut wb));
    let (na, nb) = (wa[0], wb[0]);
    let cpu = median(&mut ca) / median(&mut cb);
    let q = ma / mb;
    println!(
        "| index at write time vs the same copy without it ({}, {case}, {} MiB) | \
         {ma:.3}/{na:.3} s | {mb:.3}/{nb:.3} s | {q:.2}x | <= 1.10x | {}; min ratio {:.2}x, \
         CPU time medians {cpu:.2}x ({:.2} vs {:.2} s) |",
        layout.name(),
        data / MIB,
        if q <= 1.10 { "met" } else { "MISSED" },
        na / nb,
        median(&mut ca),
        median(&mut cb),
    );
    for p in [&src, &dst, &idx] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
#[ignore]
fn index_cost_rows() {
    let data = env("COPY_BENCH_DATA_MB", 1024) * MIB;
    let only = std::env::var("COPY_BENCH_LAYOUTS").unwrap_or_default();
    let cases = std::env::var("COPY_BENCH_CASES").unwrap_or_else(|_| "memory,disk".into());
    for (case, parent, runs) in [("memory", "/dev/shm", 5), ("disk", "/var/tmp", 3)] {
        if !cases.contains(case) {
            continue;
        }
        let runs = env("COPY_BENCH_RUNS", runs).max(1);
        let dir = tempfile::tempdir_in(parent).unwrap();
        for layout in [Layout::Contiguous, Layout::Scattered, Layout::Sparse] {
            if only.is_empty() || only.contains(layout.name()) {
                row(dir.path(), case, layout, data, runs);
            }
        }
    }
}
