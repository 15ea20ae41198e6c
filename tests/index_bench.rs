//! Bench rows of the digest index (run by `make bench` and `make
//! bench-scale`; ignored by `cargo test`), for a 100 GiB disk
//! (INDEX_BENCH_GIB), each read INDEX_BENCH_RUNS times (default 31), flat
//! and delta alternately, wall time median/minimum (and the ratio of the
//! thread CPU times' medians, less disturbed by a busy machine):
//! - the deepest index a year of daily 1 % changes makes (its deltas kept
//!   within an eighth of a flat index's bytes) read vs a flat one of the same
//!   digests;
//! - a 30-deep chain of deltas (0.1 % changed a day) read vs a flat one;
//! - the index files of that year.

use std::path::{Path, PathBuf};
use std::time::Instant;

use libvirt_backup::test_api::store::index::{
    Digest, IndexReader, IndexWriter, ZERO_DIGEST, chunks, parent_of, rebase,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn digest(&mut self) -> Digest {
        let mut d = ZERO_DIGEST;
        for c in d.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        d
    }
}

fn slot(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(format!("{name}.index"));
    std::fs::create_dir_all(&f).unwrap();
    f.join("vda.b3")
}

/// A day's index on `parent`: one chunk in `every` changed, spread out.
fn day(path: &Path, parent: Option<&Path>, size: u64, every: u64, rng: &mut Rng) {
    let mut prev = parent.map(|p| IndexReader::open(p).unwrap());
    let mut w = IndexWriter::create_delta(path, size, parent).unwrap();
    for _ in 0..chunks(size) {
        let old = prev
            .as_mut()
            .map_or_else(|| rng.digest(), |r| r.next_digest().unwrap().unwrap());
        w.push(&if rng.next().is_multiple_of(every) {
            rng.digest()
        } else {
            old
        })
        .unwrap();
    }
    w.finish().unwrap();
}

/// Read the index at `path` through: wall and thread CPU seconds.
fn read_all(path: &Path) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu());
    let mut r = IndexReader::open(path).unwrap();
    let mut n = 0u64;
    while let Some(d) = r.next_digest().unwrap() {
        n += d[0] as u64;
    }
    std::hint::black_box(n);
    (t.elapsed().as_secs_f64(), cpu() - c)
}

fn cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Drop `path` from the page cache and read it back: files written in
/// different ways sit in the cache in pages of different sizes, which read
/// up to 30 % apart here; read back, they are alike.
fn recache(path: &Path) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path).unwrap();
    f.sync_data().unwrap();
    // SAFETY: an open descriptor of `f`; advice only, no memory involved.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    std::io::copy(&mut (&mut f).take(u64::MAX), &mut std::io::sink()).unwrap();
}

/// Read `deep` and a flat copy of it alternately; print the row.
fn compare(dir: &Path, what: &str, deep: &Path) {
    let flat = slot(dir, &format!("flat-{}", what.replace(' ', "-")));
    std::fs::copy(deep, &flat).unwrap();
    rebase(&flat, None).unwrap();
    let mut files = vec![flat.clone(), deep.to_path_buf()];
    while let Some(p) = parent_of(files.last().unwrap()).unwrap() {
        files.push(p);
    }
    // The year's files written back first, so that writeback does not run
    // beside the reads.
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    files.iter().for_each(|p| recache(p));
    let depth = IndexReader::open(deep).unwrap().depth();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..env("INDEX_BENCH_RUNS", 31) {
        b.push(read_all(&flat));
        a.push(read_all(deep));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let split = |v: &[(f64, f64)]| -> (Vec<f64>, Vec<f64>) { v.iter().copied().unzip() };
    let ((mut wa, mut ca), (mut wb, mut cb)) = (split(&a), split(&b));
    let (ma, mb) = (median(&mut wa), median(&mut wb));
    let (na, nb) = (wa[0], wb[0]);
    let cpu = median(&mut ca) / median(&mut cb);
    println!(
        "| index read, {what} ({depth} deltas) vs flat | {ma:.4}/{na:.4} s | {mb:.4}/{nb:.4} s | \
         {:.2}x (minima {:.2}x, CPU time medians {cpu:.2}x) | <= 1.2x |",
        ma / mb,
        na / nb
    );
}

#[test]
#[ignore]
fn index_rows() {
    let gib = env("INDEX_BENCH_GIB", 100);
    let size = gib << 30;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut prev: Option<PathBuf> = None;
    let (mut total, mut flat_total, mut deepest) = (0u64, 0u64, (0, None));
    for k in 0..365 {
        let p = slot(dir.path(), &format!("d{k}"));
        day(&p, prev.as_deref(), size, 100, &mut rng);
        total += std::fs::metadata(&p).unwrap().len();
        flat_total += 24 + chunks(size) * 32;
        let depth = IndexReader::open(&p).unwrap().depth();
        if depth > deepest.0 {
            deepest = (depth, Some(p.clone()));
        }
        prev = Some(p);
    }
    compare(
        dir.path(),
        "deepest of a year of 1 % a day",
        &deepest.1.expect("a delta index"),
    );
    // 30 days of 0.1 % on a flat index: a 30-deep chain within budget.
    let mut prev = slot(dir.path(), "s0");
    std::fs::copy(dir.path().join("d364.index/vda.b3"), &prev).unwrap();
    rebase(&prev, None).unwrap();
    for k in 1..=30 {
        let p = slot(dir.path(), &format!("s{k}"));
        day(&p, Some(&prev), size, 1000, &mut rng);
        prev = p;
    }
    compare(dir.path(), "30-deep chain of 0.1 % a day", &prev);
    println!(
        "| index files, a year of daily 1 % changes ({gib} GiB disk, deltas <= {}) | {:.2} GiB | \
         flat: {:.2} GiB | {:.3}x | ~1-2 GiB |",
        deepest.0,
        total as f64 / (1u64 << 30) as f64,
        flat_total as f64 / (1u64 << 30) as f64,
        total as f64 / flat_total as f64
    );
}
