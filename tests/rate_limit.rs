//! A job's rate limit (`<bandwidth>`) and per-disk progress: the limit
//! holds on the copy engine, holes cost nothing, every disk of a job shares
//! it, and another thread sees each disk's figures while the job runs.
//!
//! What is measured is what the limit controls: the engine's reads of the
//! source (the limit makes each reader wait after the data it read), from
//! the copy's start until its last window was used. Setup (making the
//! images) and the final flush of the target are outside the measure.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;
use common::{WAIT, WORK, disk, domain, identical};

use libvirt_backup::test_api::engine::copy::{Baseline, copy_image};
use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::image::disk::{Chain, Source, Target};
use libvirt_backup::test_api::job::Progress;
use libvirt_backup::test_api::ops::backup::{Backup, ParamValue};
use libvirt_backup::test_api::ops::options::CreateOptions;
use libvirt_backup::test_api::store::index::NoDigests;
use libvirt_backup::test_api::xml::backup::{CreateRequest, DiskFormat};

const MIB: u64 = 1 << 20;

/// A raw image of `size` bytes whose `data` ranges hold non-zero bytes
/// (a pattern that differs per MiB), the rest a hole.
fn image(name: &str, size: u64, data: &[(u64, u64)]) -> std::path::PathBuf {
    let p = WORK.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    for &(at, len) in data {
        for mib in (at..at + len).step_by(MIB as usize) {
            let fill = (mib / MIB % 251 + 1) as u8;
            let buf: Vec<u8> = (0..MIB).map(|i| fill ^ (i as u8 & 0x7f)).collect();
            f.write_all_at(&buf, mib).unwrap();
        }
    }
    f.sync_all().unwrap();
    p
}

/// A copy's timing: how long it took, and when its progress passed each
/// tenth of the image (sampled every 5 ms by another thread).
struct Timing {
    took: Duration,
    tenths: Vec<Duration>,
}

/// Copy `src` (raw) into a new qcow2 at `dst` under `limit` bytes/s.
fn limited_copy(src: &Path, dst: &Path, limit: Option<u64>) -> (Timing, Progress) {
    let s = Source::open(src, DiskFormat::Raw, Chain::Header).unwrap();
    let t = Target::create(dst, DiskFormat::Qcow2, s.size(), None, false).unwrap();
    let p = Progress::limited(limit);
    let size = s.size();
    let start = Instant::now();
    let (took, tenths) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut tenths = Vec::new();
            while tenths.len() < 10 {
                let done = p.processed.load(Ordering::Relaxed);
                while tenths.len() < 10 && done >= size / 10 * (tenths.len() as u64 + 1) {
                    tenths.push(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            tenths
        });
        copy_image(&s, &t, &p, Baseline::Empty, &mut NoDigests).unwrap();
        let took = start.elapsed();
        (took, sampler.join().unwrap())
    });
    t.finish(dst).unwrap();
    (Timing { took, tenths }, p)
}

#[test]
fn the_limit_holds_within_ten_percent_over_256_mib() {
    let size = 256 * MIB;
    let src = image("rate-256.raw", size, &[(0, size)]);
    let dst = WORK.join("rate-256.qcow2");
    // Unlimited first, for the record: what the machine does right now.
    let (free, _) = limited_copy(&src, &WORK.join("rate-256-free.qcow2"), None);
    let limit = 64 * MIB;
    let (timing, p) = limited_copy(&src, &dst, Some(limit));
    let took = timing.took;
    let mib_s = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / MIB as f64;
    // The rate from a tenth of the copy to nine tenths, for the record: a
    // reader held up on a loaded machine catches up to 0.5 s worth there,
    // so it may run above the limit for a while.
    let steady = mib_s(size / 10 * 8, timing.tenths[8] - timing.tenths[0]);
    eprintln!(
        "256 MiB at a limit of 64 MiB/s: {took:.3?} ({:.1} MiB/s, {:+.1}% of the limit; \
         steady {steady:.1} MiB/s); unlimited: {:.3?}",
        mib_s(size, took),
        (mib_s(size, took) / 64.0 - 1.0) * 100.0,
        free.took
    );
    assert_eq!(p.processed.load(Ordering::Relaxed), size);
    assert!(
        took >= Duration::from_millis(3600) && took <= Duration::from_millis(4400),
        "256 MiB at 64 MiB/s took {took:?} (unlimited: {:?})",
        free.took
    );
    assert!(identical(&src, "raw", &dst, "qcow2"));
}

#[test]
fn holes_cost_nothing() {
    // 1 GiB with 32 MiB of data in three places, at 32 MiB/s: about a
    // second, not 32.
    let size = 1024 * MIB;
    let data = [
        (0, 8 * MIB),
        (500 * MIB, 16 * MIB),
        (size - 8 * MIB, 8 * MIB),
    ];
    let src = image("rate-sparse.raw", size, &data);
    let dst = WORK.join("rate-sparse.qcow2");
    let (timing, p) = limited_copy(&src, &dst, Some(32 * MIB));
    let took = timing.took;
    eprintln!("1 GiB holding 32 MiB of data at 32 MiB/s: {took:.3?}");
    assert_eq!(p.processed.load(Ordering::Relaxed), size);
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(identical(&src, "raw", &dst, "qcow2"));
}

fn params(b: &Backup) -> Vec<(String, ParamValue)> {
    b.parameters().unwrap()
}

fn ull(p: &[(String, ParamValue)], name: &str) -> u64 {
    match p.iter().find(|(k, _)| k == name) {
        Some((_, ParamValue::ULLong(v))) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

fn text<'a>(p: &'a [(String, ParamValue)], name: &str) -> &'a str {
    match p.iter().find(|(k, _)| k == name) {
        Some((_, ParamValue::String(v))) => v,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn per_disk_progress_seen_from_another_thread_under_a_shared_limit() {
    // Two disks of different sizes, all data, at 24 MiB/s for both
    // together: 48 MiB take about 2 s, read by two workers at once.
    let a = image("pd-a.raw", 32 * MIB, &[(0, 32 * MIB)]);
    let b = image("pd-b.raw", 16 * MIB, &[(0, 16 * MIB)]);
    let dom = domain("perdisk", &[("vda", &a, "raw"), ("vdb", &b, "raw")]);
    let start = Instant::now();
    let bk = Backup::create(
        &dom,
        &format!(
            "<domainbackup><bandwidth bytes='{}'/></domainbackup>",
            24 * MIB
        ),
        CreateOptions::default(),
    )
    .unwrap();
    // The running job's description shows its limit.
    let desc = bk.xml_desc().unwrap();
    let shown = format!("<bandwidth bytes='{}'/>", 24 * MIB);
    assert!(desc.contains(&shown), "{desc}");
    // ... and reads back as a create document with the same limit.
    assert_eq!(
        CreateRequest::parse(&desc).unwrap().bandwidth,
        Some(24 * MIB)
    );
    let uuid = bk.uuid;
    let watcher = std::thread::spawn(move || {
        // Another handle, in another thread: the same job.
        let other = Backup::lookup(&uuid.to_string()).unwrap();
        let mut seen = Vec::new();
        loop {
            let p = params(&other);
            let running = matches!(p[0].1, ParamValue::Int(1));
            let disks = (
                ull(&p, "disk.0.bytes.processed"),
                ull(&p, "disk.1.bytes.processed"),
            );
            assert_eq!(disks.0 + disks.1, ull(&p, "bytes.processed"));
            seen.push(disks);
            if !running {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let seen = watcher.join().unwrap();
    bk.finish_job(Default::default()).unwrap();
    let took = start.elapsed();
    eprintln!(
        "48 MiB on two disks at 24 MiB/s: {took:.3?}, {} looks",
        seen.len()
    );
    assert!(took >= Duration::from_millis(1700), "{took:?}");
    // Both disks moved while the other was still being copied.
    assert!(
        seen.iter()
            .any(|&(x, y)| x > 0 && y > 0 && x < 32 * MIB && y < 16 * MIB),
        "{seen:?}"
    );
    let p = params(&bk);
    assert_eq!(text(&p, "disk.0.name"), "vda");
    assert_eq!(text(&p, "disk.1.name"), "vdb");
    assert_eq!(ull(&p, "disk.0.bytes.total"), 32 * MIB);
    assert_eq!(ull(&p, "disk.1.bytes.total"), 16 * MIB);
    assert_eq!(ull(&p, "disk.0.bytes.processed"), 32 * MIB);
    assert_eq!(ull(&p, "disk.1.bytes.processed"), 16 * MIB);
    assert_eq!(ull(&p, "bytes.processed"), ull(&p, "bytes.total"));
    // Ended: no limit in the description; a new handle reads the record
    // and finds the same figures.
    assert!(!bk.xml_desc().unwrap().contains("bandwidth"));
    let again = params(&Backup::lookup(&uuid.to_string()).unwrap());
    for k in [
        "disk.0.bytes.processed",
        "disk.1.bytes.total",
        "bytes.processed",
    ] {
        assert_eq!(ull(&again, k), ull(&p, k), "{k}");
    }
    let rec = bk.record().unwrap();
    assert!(identical(&a, "raw", &rec.disks[0].target, "qcow2"));
    assert!(identical(&b, "raw", &rec.disks[1].target, "qcow2"));
}

#[test]
fn a_bad_bandwidth_is_refused_and_nothing_changes() {
    let a = disk("bad-bw.raw", "raw", "4M", &["write -P 0x61 0 1M"]);
    let dom = domain("badbw", &[("vda", &a, "raw")]);
    let target = WORK.join("bad-bw-target.qcow2");
    for v in ["0", "-1", "abc", "1.5", "", "18446744073709551616", "10M"] {
        let xml = format!(
            "<domainbackup><bandwidth bytes='{v}'/><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
            target.display()
        );
        let e = Backup::create(&dom, &xml, WAIT).unwrap_err();
        assert!(e.is(ErrorCode::XmlError), "{v}: {e:?}");
        assert!(
            e.message.contains(&format!("bytes='{v}'")),
            "{v}: {}",
            e.message
        );
        assert!(!target.exists(), "{v}");
        assert!(
            Backup::list(&dom, Default::default()).unwrap().is_empty(),
            "{v}"
        );
    }
}

#[test]
fn cancel_ends_a_wait_for_the_limit() {
    // 64 MiB at 4 MiB/s would take 16 s: a cancel ends it at once.
    let a = image("cancel-bw.raw", 64 * MIB, &[(0, 64 * MIB)]);
    let dom = domain("cancelbw", &[("vda", &a, "raw")]);
    let bk = Backup::create(
        &dom,
        &format!(
            "<domainbackup><bandwidth bytes='{}'/></domainbackup>",
            4 * MIB
        ),
        CreateOptions::default(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    bk.abort().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let p = params(&bk);
    assert!(ull(&p, "bytes.processed") < 64 * MIB);
    assert!(Backup::list(&dom, Default::default()).unwrap().is_empty());
}

#[test]
fn a_running_domain_is_read_under_the_limit_and_reported_per_disk() {
    use common::qemu::{QemuDomain, connect, image, snapshot};
    // Read from libvirt's pull-mode export by the same engine: 48 MiB of
    // data on two disks at 16 MiB/s take about 3 s.
    let conn = connect();
    let a = image("rl-live-a.qcow2", "qcow2", "64M", &["write -P 0x51 0 32M"]);
    let b = image("rl-live-b.qcow2", "qcow2", "32M", &["write -P 0x52 0 16M"]);
    let qd = QemuDomain::define(
        &conn,
        "rl-live",
        &[("vda", &a, "qcow2"), ("vdb", &b, "qcow2")],
    );
    qd.start();
    let (ta, tb) = (
        snapshot(&a, "qcow2", "rl-live-a.raw"),
        snapshot(&b, "qcow2", "rl-live-b.raw"),
    );
    let start = Instant::now();
    let bk = Backup::create(
        &qd.dom,
        &format!(
            "<domainbackup><bandwidth bytes='{}'/></domainbackup>",
            16 * MIB
        ),
        CreateOptions::default(),
    )
    .unwrap();
    let mut moving = 0;
    loop {
        let p = params(&bk);
        let (d0, d1) = (
            ull(&p, "disk.0.bytes.processed"),
            ull(&p, "disk.1.bytes.processed"),
        );
        assert_eq!(d0 + d1, ull(&p, "bytes.processed"));
        if !matches!(p[0].1, ParamValue::Int(1)) {
            break;
        }
        moving += usize::from(d0 + d1 > 0);
        std::thread::sleep(Duration::from_millis(50));
    }
    bk.finish_job(Default::default()).unwrap();
    let took = start.elapsed();
    eprintln!("running domain, 48 MiB of data on two disks at 16 MiB/s: {took:.3?}");
    assert!(took >= Duration::from_millis(2700), "{took:?}");
    assert!(moving >= 5, "{moving} looks with bytes processed");
    let p = params(&bk);
    assert_eq!(
        (text(&p, "disk.0.name"), text(&p, "disk.1.name")),
        ("vda", "vdb")
    );
    assert_eq!(ull(&p, "disk.0.bytes.processed"), 64 * MIB);
    assert_eq!(ull(&p, "disk.1.bytes.processed"), 32 * MIB);
    let rec = bk.record().unwrap();
    assert!(identical(&rec.disks[0].target, "qcow2", &ta, "raw"));
    assert!(identical(&rec.disks[1].target, "qcow2", &tb, "raw"));
}
