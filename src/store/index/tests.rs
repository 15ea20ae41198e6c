//! Tests of the digest index's formats, reader and writer.

use super::*;

#[test]
fn round_trip_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let p = slot(dir.path(), "i");
    let size = 3 * DIGEST_CHUNK + 5;
    let mut w = IndexWriter::create(&p, size).unwrap();
    let data = vec![7u8; 100];
    let d = digest(&data);
    assert_ne!(d, ZERO_DIGEST);
    assert_eq!(digest(&[0u8; 4096]), ZERO_DIGEST);
    for x in [d, ZERO_DIGEST, d, d] {
        w.push(&x).unwrap();
    }
    w.finish().unwrap();
    let mut r = IndexReader::open(&p).unwrap();
    assert_eq!(r.size(), size);
    let got: Vec<Digest> = std::iter::from_fn(|| r.next_digest().unwrap()).collect();
    assert_eq!(got, vec![d, ZERO_DIGEST, d, d]);

    // A short index is refused when written and when read.
    let mut w = IndexWriter::create(&p, size).unwrap();
    w.push(&d).unwrap();
    assert!(w.finish().is_err());
    assert!(IndexReader::open(&p).is_err());
    std::fs::write(&p, b"garbage").unwrap();
    assert!(IndexReader::open(&p).is_err());
}

fn d(n: u8) -> Digest {
    digest(&[n; 64])
}

fn write(path: &Path, size: u64, parent: Option<&Path>, ds: &[Digest]) {
    let mut w = IndexWriter::create_delta(path, size, parent).unwrap();
    for x in ds {
        w.push(x).unwrap();
    }
    w.finish().unwrap();
}

fn read_all(path: &Path) -> Vec<Digest> {
    let mut r = IndexReader::open(path).unwrap();
    std::iter::from_fn(|| r.next_digest().unwrap()).collect()
}

/// `<dir>/<name>.index/vda.b3`, its folder created.
fn slot(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(format!("{name}.index"));
    std::fs::create_dir_all(&f).unwrap();
    f.join("vda.b3")
}

#[test]
fn delta_chain_resolves_and_stores_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let c = DIGEST_CHUNK;
    let (a, b, x) = (
        slot(dir.path(), "a"),
        slot(dir.path(), "b"),
        slot(dir.path(), "c"),
    );
    // 100 chunks ahead of those the test changes keep the deltas in
    // budget.
    let pad = |v: Vec<Digest>| [vec![d(42); 100], v].concat();
    let p = 100 * c;
    let base = pad(vec![d(1), ZERO_DIGEST, d(2), d(3)]);
    write(&a, p + 4 * c, None, &base);
    // b: one chunk changed, one became zero, and the disk grew by two.
    let vb = pad(vec![
        d(1),
        ZERO_DIGEST,
        d(9),
        ZERO_DIGEST,
        ZERO_DIGEST,
        d(5),
    ]);
    write(&b, p + 6 * c, Some(&a), &vb);
    assert_eq!(std::fs::read(&b).unwrap()[..8], *MAGIC_DELTA);
    assert_eq!(parent_of(&b).unwrap().unwrap().file_name(), a.file_name());
    // 3 entries: chunks 102, 103 (zero now) and 105.
    let hdr = HEADER as u64 + 2 + "../a.index/vda.b3".len() as u64;
    assert_eq!(std::fs::metadata(&b).unwrap().len(), hdr + 3 * ENTRY + 8);
    assert_eq!(read_all(&b), vb);
    // c on b: smaller than b (its tail must not show through), one change.
    let vc = pad(vec![d(7), ZERO_DIGEST, d(9), ZERO_DIGEST, ZERO_DIGEST]);
    write(&x, p + 5 * c - 100, Some(&b), &vc);
    assert_eq!(IndexReader::open(&x).unwrap().depth(), 2);
    assert_eq!(read_all(&x), vc);

    // Rebase c past b onto a, then flat: same digests, b no longer needed.
    rebase(&x, Some(&a)).unwrap();
    assert_eq!(parent_of(&x).unwrap().unwrap().file_name(), a.file_name());
    std::fs::remove_dir_all(b.parent().unwrap()).unwrap();
    assert_eq!(read_all(&x), vc);
    rebase(&x, None).unwrap();
    assert!(parent_of(&x).unwrap().is_none());
    std::fs::remove_dir_all(a.parent().unwrap()).unwrap();
    assert_eq!(read_all(&x), vc);
}

#[test]
fn delta_refuses_damage_and_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let c = DIGEST_CHUNK;
    // 512 chunks: MAX_DEPTH deltas of one entry each stay in budget.
    let n = 512;
    let disk = |last: Digest| {
        let mut v = vec![d(1); n];
        v[n - 1] = last;
        v
    };
    let root = slot(dir.path(), "r0");
    write(&root, n as u64 * c, None, &disk(d(2)));
    // A missing parent, a truncated delta, a parent path that leaves the
    // catalog's layout: all refused.
    let a = slot(dir.path(), "a");
    write(&a, n as u64 * c, Some(&root), &disk(d(3)));
    let bytes = std::fs::read(&a).unwrap();
    std::fs::write(&a, &bytes[..bytes.len() - 3]).unwrap();
    assert!(IndexReader::open(&a).is_err());
    let mut evil = bytes.clone();
    let at = HEADER + 2;
    evil[at..at + 2].copy_from_slice(b"//");
    std::fs::write(&a, &evil).unwrap();
    assert!(IndexReader::open(&a).is_err());
    std::fs::write(&a, &bytes).unwrap();
    assert_eq!(read_all(&a), disk(d(3)));
    // A chain MAX_DEPTH deltas deep; the next index is written flat.
    let mut prev = root.clone();
    for k in 0..=MAX_DEPTH {
        let p = slot(dir.path(), &format!("l{k}"));
        write(&p, n as u64 * c, Some(&prev), &disk(d(10 + k as u8)));
        let depth = IndexReader::open(&p).unwrap().depth();
        assert_eq!(depth, if k < MAX_DEPTH { k + 1 } else { 0 });
        assert_eq!(read_all(&p), disk(d(10 + k as u8)));
        prev = p;
    }
    std::fs::remove_file(&root).unwrap();
    assert!(IndexReader::open(&a).is_err());
}

#[test]
fn deltas_past_the_budget_are_written_flat() {
    let dir = tempfile::tempdir().unwrap();
    let c = DIGEST_CHUNK;
    // 64 chunks: a flat index is 2 KiB, the budget 256 bytes (6 entries).
    let mut v: Vec<Digest> = (0..64).map(|i| d(i as u8)).collect();
    let mut prev = slot(dir.path(), "r");
    write(&prev, 64 * c, None, &v);
    let mut depths = Vec::new();
    for k in 0..6 {
        for j in 0..3 {
            v[k * 3 + j] = d(100 + k as u8);
        }
        let p = slot(dir.path(), &format!("k{k}"));
        write(&p, 64 * c, Some(&prev), &v);
        depths.push(IndexReader::open(&p).unwrap().depth());
        assert_eq!(read_all(&p), v);
        prev = p;
    }
    // 3, 6 entries in budget; 9 is past it: flat again, then deltas.
    assert_eq!(depths, vec![1, 2, 0, 1, 2, 0]);
}
