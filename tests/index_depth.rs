//! A delta digest index read through the deepest chain the writer makes
//! (32 deltas): the same digests as a flat index of the same data, one
//! descriptor per reader whatever the depth, a damaged middle level
//! reported by name, and a middle level rewritten by a merge while a
//! reader reads through it. Its own test binary, so that nothing
//! else opens files while it counts descriptors.

use std::path::{Path, PathBuf};

use libvirt_backup::test_api::store::index::{
    DIGEST_CHUNK, Digest, IndexReader, IndexWriter, digest, rebase,
};

/// MAX_DEPTH of the index module.
const DEPTH: usize = 32;
/// Four of the reader's batches.
const CHUNKS: u64 = 16384;
/// Chunks the middle level changes: more than the reader takes from a
/// level at a time, so it comes back to the file.
const MID: usize = 1200;

fn d(a: usize, b: usize) -> Digest {
    digest(format!("{a}/{b}").as_bytes())
}

fn slot(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(format!("{name}.index"));
    std::fs::create_dir_all(&f).unwrap();
    f.join("vda.b3")
}

fn write(path: &Path, parent: Option<&Path>, ds: &[Digest]) {
    let mut w = IndexWriter::create_delta(path, CHUNKS * DIGEST_CHUNK, parent).unwrap();
    for x in ds {
        w.push(x).unwrap();
    }
    w.finish().unwrap();
}

fn read_all(r: &mut IndexReader) -> libvirt_backup::test_api::error::Result<Vec<Digest>> {
    let mut v = Vec::new();
    while let Some(x) = r.next_digest()? {
        v.push(x);
    }
    Ok(v)
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A flat index, then DEPTH deltas on it, each changing 8 chunks spread
/// over the disk (the middle one MID; some changed again by later levels).
/// Returns the levels, oldest first, and the digests of the newest.
fn chain(dir: &Path) -> (Vec<PathBuf>, Vec<Digest>) {
    let mut v: Vec<Digest> = (0..CHUNKS as usize).map(|i| d(0, i)).collect();
    let root = slot(dir, "root");
    write(&root, None, &v);
    let mut levels = vec![root];
    for k in 1..=DEPTH {
        if k == DEPTH / 2 {
            for j in 0..MID {
                v[j * 10] = d(k, j);
            }
        }
        for j in 0..8 {
            v[(k * 37 + j * 2039) % CHUNKS as usize] = d(k, j);
        }
        let p = slot(dir, &format!("l{k}"));
        write(&p, levels.last().map(|p| p.as_path()), &v);
        levels.push(p);
    }
    (levels, v)
}

#[test]
fn a_32_deep_delta_index_reads_as_flat_with_one_descriptor_and_names_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (levels, want) = chain(dir.path());
    let leaf = levels.last().unwrap();
    assert_eq!(IndexReader::open(leaf).unwrap().depth(), DEPTH);

    // (a) The same digests as a flat index of the same data.
    let flat = slot(dir.path(), "flat");
    write(&flat, None, &want);
    assert_eq!(IndexReader::open(&flat).unwrap().depth(), 0);
    let got = read_all(&mut IndexReader::open(leaf).unwrap()).unwrap();
    assert_eq!(got, read_all(&mut IndexReader::open(&flat).unwrap()).unwrap());
    assert_eq!(got, want);

    // (b) One descriptor per reader, checked after every digest; 16
    // readers (a 16-disk backup's parents) hold 16, under a limit that 16
    // readers holding every level (33 files each) would break.
    let before = fds();
    let mut r = IndexReader::open(leaf).unwrap();
    assert_eq!(fds(), before + 1);
    let mut n = 0;
    while r.next_digest().unwrap().is_some() {
        n += 1;
        assert_eq!(fds(), before + 1, "after {n} digests");
    }
    drop(r);
    assert_eq!(fds(), before);
    let (soft, hard) = {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `l` is a valid rlimit for getrlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        (l.rlim_cur, l.rlim_max)
    };
    let limit = |cur| {
        let l = libc::rlimit {
            rlim_cur: cur,
            rlim_max: hard,
        };
        // SAFETY: `l` is a valid rlimit; lowering our own soft limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
    };
    limit((before + 16 + 8) as u64);
    let read = (|| {
        let mut readers: Vec<IndexReader> = (0..16)
            .map(|_| IndexReader::open(leaf))
            .collect::<libvirt_backup::test_api::error::Result<_>>()?;
        let peak = fds();
        for r in &mut readers {
            assert_eq!(read_all(r)?, want);
        }
        Ok::<_, libvirt_backup::test_api::error::Error>(peak)
    })();
    limit(soft);
    assert_eq!(read.unwrap(), before + 16);

    // (c) A middle level damaged: cut short (found when opening), or an
    // entry out of order (found when reading it); both named.
    let mid = &levels[DEPTH / 2];
    let name = mid.display().to_string();
    let good = std::fs::read(mid).unwrap();
    std::fs::write(mid, &good[..good.len() - 20]).unwrap();
    let e = IndexReader::open(leaf).err().expect("a cut-short level is refused");
    assert!(e.message.contains(&name), "{}", e.message);
    let mut bad = good.clone();
    // The header (24 bytes), the parent's name, then 40-byte entries: make
    // the fourth entry's chunk number smaller than the third's.
    let first = 24 + 2 + u16::from_le_bytes([good[24], good[25]]) as usize;
    bad[first + 3 * 40..first + 3 * 40 + 8].copy_from_slice(&0u64.to_le_bytes());
    std::fs::write(mid, &bad).unwrap();
    let e = read_all(&mut IndexReader::open(leaf).unwrap()).expect_err("out of order");
    assert!(e.message.contains(&name), "{}", e.message);
    assert!(e.message.contains("out of order"), "{}", e.message);

    // A merge while a reader reads through the chain: the middle level's
    // backup is deleted, so its child's index is rewritten as a delta
    // against the middle one's parent (renamed over it), then the middle
    // level removed. The reader goes on with the same digests.
    std::fs::write(mid, &good).unwrap();
    let mut r = IndexReader::open(leaf).unwrap();
    let first = r.next_digest().unwrap().unwrap();
    let child = &levels[DEPTH / 2 + 1];
    let before = std::fs::metadata(child).unwrap().len();
    rebase(child, Some(&levels[DEPTH / 2 - 1])).unwrap();
    assert!(std::fs::metadata(child).unwrap().len() > before);
    std::fs::remove_dir_all(mid.parent().unwrap()).unwrap();
    let rest = read_all(&mut r).unwrap();
    assert_eq!([vec![first], rest].concat(), want);
    assert_eq!(IndexReader::open(leaf).unwrap().depth(), DEPTH - 1);
    assert_eq!(read_all(&mut IndexReader::open(leaf).unwrap()).unwrap(), want);
}
