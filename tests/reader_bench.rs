//! Bench (ignored by `cargo test`; `cargo test --release --test
//! reader_bench -- --ignored --nocapture`): a shut-off domain's disk read
//! by the library itself with QEMU's image locks (`Source::open_locked`)
//! against the same disk read through a read-only `qemu-storage-daemon`
//! (which takes QEMU's locks by itself) over NBD on a unix socket, one
//! connection per reader thread (READER_BENCH_CONNS, default 2); each
//! copied in full into a new qcow2 target by the copy engine. A 1 GiB disk
//! (READER_BENCH_MIB) in three layouts (one long run of data, 64 KiB runs
//! every 128 KiB, 5 % in 64 KiB runs), raw and qcow2; the source's pages
//! are dropped before each copy (a backup reads a cold disk), the two
//! readers alternate, READER_BENCH_RUNS (default 3) copies each; the
//! median and the best time are shown, with the daemon's start and stop
//! counted in, and the median CPU time (this process's and the daemon's).

mod common;
use common::qemu_img;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use libvirt_backup::test_api::engine::copy::{Baseline, copy_image};
use libvirt_backup::test_api::engine::export::{ExportDisk, StorageDaemonExport};
use libvirt_backup::test_api::image::disk::{Source, Target};
use libvirt_backup::test_api::image::nbd::NbdClient;
use libvirt_backup::test_api::job::Progress;
use libvirt_backup::test_api::store::index::NoDigests;
use libvirt_backup::test_api::xml::backup::{DiskFormat, NbdServer};

const MIB: u64 = 1 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Write `runs` (offset, length) of non-zero data into a new raw file.
fn raw_image(path: &Path, size: u64, runs: impl Iterator<Item = (u64, u64)>) -> u64 {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut data = 0;
    for (i, (off, len)) in runs.enumerate() {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = ((i * 31 + k / 4096) % 251) as u8 + 1;
            }
            f.write_all_at(&buf[..n], off + done).unwrap();
            done += n as u64;
        }
        data += len;
    }
    f.sync_all().unwrap();
    data
}

fn drop_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: an open descriptor; the call only advises the page cache.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn copy(src: &Source, dst: &Path) {
    let _ = std::fs::remove_file(dst);
    let t = Target::create(dst, DiskFormat::Qcow2, src.size(), None, false).unwrap();
    copy_image(
        src,
        &t,
        &Progress::default(),
        Baseline::Empty,
        &mut NoDigests,
    )
    .unwrap();
    t.finish(dst).unwrap();
}

/// CPU time used so far by this process and its waited-for children (the
/// storage daemons), in seconds.
fn cpu() -> f64 {
    let used = |who| {
        // SAFETY: `getrusage` fills the zeroed struct it is given.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `r` is a valid, writable `struct rusage`.
        unsafe { libc::getrusage(who, &mut r) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    };
    used(libc::RUSAGE_SELF) + used(libc::RUSAGE_CHILDREN)
}

/// One copy's wall time and CPU seconds (ours and the daemon's).
type Run = (Duration, f64);

fn direct(img: &Path, fmt: DiskFormat, dst: &Path) -> Run {
    drop_cache(img);
    let (t, c) = (Instant::now(), cpu());
    let src = Source::open_locked(img, fmt, "vda").unwrap();
    copy(&src, dst);
    drop(src);
    (t.elapsed(), cpu() - c)
}

fn nbd(img: &Path, fmt: DiskFormat, dst: &Path, dir: &Path, conns: u64) -> Run {
    drop_cache(img);
    let (t, c) = (Instant::now(), cpu());
    let server = NbdServer::Unix(dir.join("nbd.sock"));
    let disk = ExportDisk {
        export_name: "vda".into(),
        image: img.to_path_buf(),
        format: fmt,
        bitmap: None,
        backing: None,
    };
    let daemon = StorageDaemonExport::start(&server, &[disk]).unwrap();
    // Two: one per reader thread of the copy engine, as a running domain's
    // export is read.
    let clients = (0..conns)
        .map(|_| NbdClient::connect(&server, "vda", None).unwrap())
        .collect();
    let src = Source::nbd(clients).unwrap();
    copy(&src, dst);
    drop(src);
    daemon.stop().unwrap();
    (t.elapsed(), cpu() - c)
}

/// The median and the minimum time (the run least disturbed by the
/// machine's other work), and the median CPU seconds.
fn summary(v: &[Run]) -> (Duration, Duration, f64) {
    let mut t: Vec<Duration> = v.iter().map(|r| r.0).collect();
    let mut c: Vec<f64> = v.iter().map(|r| r.1).collect();
    t.sort();
    c.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0], c[c.len() / 2])
}

/// The data runs (offset, length) of a layout.
type Layout = Box<dyn Iterator<Item = (u64, u64)>>;

#[test]
#[ignore]
fn direct_read_with_locks_vs_storage_daemon_over_nbd() {
    let size = env_u64("READER_BENCH_MIB", 1024) * MIB;
    let runs = env_u64("READER_BENCH_RUNS", 3);
    let conns = env_u64("READER_BENCH_CONNS", 2);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let k64 = 64 << 10;
    let layouts: [(&str, Layout); 3] = [
        ("contiguous", Box::new(std::iter::once((0, size)))),
        (
            "64k-scattered",
            Box::new((0..size / (2 * k64)).map(move |i| (i * 2 * k64, k64))),
        ),
        (
            "sparse-5%",
            Box::new((0..size / (20 * k64)).map(move |i| (i * 20 * k64, k64))),
        ),
    ];
    println!(
        "layout          format  data MiB  direct MiB/s (median, best), CPU s  nbd MiB/s (median, best), CPU s  speed ratio direct/nbd (median, best)"
    );
    for (name, layout) in layouts {
        let raw = dir.path().join(format!("{name}.raw"));
        let data = raw_image(&raw, size, layout);
        let qcow2 = dir.path().join(format!("{name}.qcow2"));
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ]);
        for (img, fmt) in [(&raw, DiskFormat::Raw), (&qcow2, DiskFormat::Qcow2)] {
            let dst = dir.path().join("target.qcow2");
            let (mut d, mut n) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                d.push(direct(img, fmt, &dst));
                n.push(nbd(img, fmt, &dst, dir.path(), conns));
            }
            let (d, n) = (summary(&d), summary(&n));
            let rate = |t: Duration| size as f64 / MIB as f64 / t.as_secs_f64();
            let ratio = |d: Duration, n: Duration| n.as_secs_f64() / d.as_secs_f64();
            println!(
                "{name:<15} {:<7} {:>8}  {:>6.0} {:>6.0} {:>5.2}  {:>6.0} {:>6.0} {:>5.2}  {:>5.2} {:>5.2}",
                fmt.as_str(),
                data / MIB,
                rate(d.0),
                rate(d.1),
                d.2,
                rate(n.0),
                rate(n.1),
                n.2,
                ratio(d.0, n.0),
                ratio(d.1, n.1)
            );
        }
        let _ = std::fs::remove_file(&qcow2);
        let _ = std::fs::remove_file(&raw);
    }
}
