//! Bench rows of the digest index (run by `make bench`; ignored by `cargo
//! test`): reading an index through a 30-deep chain of deltas vs reading a
//! flat one of the same disk, and what a year of daily incrementals with 1 %
//! changed costs in index files, for a 100 GiB disk (INDEX_BENCH_GIB).

use std::path::{Path, PathBuf};
use std::time::Instant;

use libvirt_backup::store::index::{Digest, IndexReader, IndexWriter, ZERO_DIGEST, chunks, rebase};

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

/// A day's index on `parent`: 1 % of the chunks changed, spread out.
fn day(path: &Path, parent: Option<&Path>, size: u64, rng: &mut Rng) {
    let mut prev = parent.map(|p| IndexReader::open(p).unwrap());
    let mut w = IndexWriter::create_delta(path, size, parent).unwrap();
    for _ in 0..chunks(size) {
        let old = prev
            .as_mut()
            .map_or_else(|| rng.digest(), |r| r.next_digest().unwrap().unwrap());
        w.push(&if rng.next().is_multiple_of(100) {
            rng.digest()
        } else {
            old
        })
        .unwrap();
    }
    w.finish().unwrap();
}

fn read_all(path: &Path) -> f64 {
    let t = Instant::now();
    let mut r = IndexReader::open(path).unwrap();
    let mut n = 0u64;
    while let Some(d) = r.next_digest().unwrap() {
        n += d[0] as u64;
    }
    std::hint::black_box(n);
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore]
fn index_rows() {
    let gib: u64 = std::env::var("INDEX_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let size = gib << 30;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut prev: Option<PathBuf> = None;
    let (mut total, mut flat_total, mut deepest) = (0u64, 0u64, 0usize);
    let mut at_30 = None;
    for k in 0..365 {
        let p = slot(dir.path(), &format!("d{k}"));
        day(&p, prev.as_deref(), size, &mut rng);
        total += std::fs::metadata(&p).unwrap().len();
        flat_total += 24 + chunks(size) * 32;
        let depth = IndexReader::open(&p).unwrap().depth();
        deepest = deepest.max(depth);
        if depth == 30 && at_30.is_none() {
            at_30 = Some(p.clone());
        }
        prev = Some(p);
    }
    let deep = at_30.expect("a 30-deep index");
    let flat = slot(dir.path(), "flat");
    std::fs::copy(&deep, &flat).unwrap();
    rebase(&flat, None).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        b.push(read_all(&flat));
        a.push(read_all(&deep));
    }
    let (ma, mb) = (median(a.clone()), median(b.clone()));
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "| index read, 30-deep delta chain vs flat ({gib} GiB disk) | {ma:.3}/{:.3} s | {mb:.3}/{:.3} s | {:.2}x | <= 1.2x |",
        min(&a),
        min(&b),
        ma / mb
    );
    println!(
        "| index files, a year of daily 1% changes ({gib} GiB disk, chain depth <= {deepest}) | {:.2} GiB | flat: {:.2} GiB | {:.3}x | |",
        total as f64 / (1u64 << 30) as f64,
        flat_total as f64 / (1u64 << 30) as f64,
        total as f64 / flat_total as f64
    );
}
