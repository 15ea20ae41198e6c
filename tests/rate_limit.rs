//! A job's rate limit (`<bandwidth>`) and per-disk progress: the copy
//! engine charges every byte of data to the limit and waits for it, holes
//! cost nothing, every disk of a job shares it, and another thread sees
//! each disk's figures while the job runs.
//!
//! The copy engine's pacing is checked on a `ManualClock`: the limit's
//! waits move that clock instead of sleeping, so what it reads at the end
//! is the limit's schedule (size / rate), on any machine. How close to the
//! asked rate a copy runs in wall time is a benchmark row
//! (`tests/rate_bench.rs`, `make bench`), not a test. The jobs below run on
//! the real clock; their only timing checks are minimums, which a limit
//! that holds guarantees (a wait never ends early) however slow the machine.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;
use common::{WAIT, WORK, disk, domain, identical};

use libvirt_backup::test_api::engine::copy::{Baseline, copy_image};
use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::image::disk::{Chain, Source, Target};
use libvirt_backup::test_api::job::{ManualClock, Progress, RateLimit};
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

/// Copy `src` (raw) into a new qcow2 at `dst` under a limit of `rate`
/// bytes/s on a manual clock, which the copy's waits move: the progress
/// and the clock.
fn paced_copy(src: &Path, dst: &Path, rate: u64) -> (Progress, Arc<ManualClock>) {
    let s = Source::open(src, DiskFormat::Raw, Chain::Header).unwrap();
    let t = Target::create(dst, DiskFormat::Qcow2, s.size(), None, false).unwrap();
    let clock = Arc::new(ManualClock::default());
    let p = Progress::limited_on(rate, clock.clone());
    copy_image(&s, &t, &p, Baseline::Empty, &mut NoDigests).unwrap();
    t.finish(dst).unwrap();
    (p, clock)
}

/// That the copy's schedule is `data` bytes at `rate`: the manual clock
/// moved by data / rate (each take rounds its cost down to the
/// nanosecond), and the limit was charged `data` bytes.
fn assert_schedule(p: &Progress, clock: &ManualClock, data: u64, rate: u64) {
    let limit = p.rate_limit().unwrap();
    assert_eq!(limit.taken(), data, "bytes charged to the limit");
    let want = Duration::from_nanos((u128::from(data) * 1_000_000_000 / u128::from(rate)) as u64);
    let got = clock.elapsed();
    assert!(
        got <= want && want - got < Duration::from_millis(1),
        "{} MiB at {} MiB/s: the limit's schedule took {got:?}, not {want:?}",
        data / MIB,
        rate / MIB
    );
    assert!(clock.waits() > 0, "the copy never waited for the limit");
}

#[test]
fn the_copy_engine_waits_for_every_byte_of_data() {
    // 64 MiB of data at 16 MiB/s: 4 s of the limit's schedule, however
    // fast the copy itself.
    let size = 64 * MIB;
    let src = image("rate-64.raw", size, &[(0, size)]);
    let dst = WORK.join("rate-64.qcow2");
    let (p, clock) = paced_copy(&src, &dst, 16 * MIB);
    assert_eq!(p.processed.load(Ordering::Relaxed), size);
    assert_schedule(&p, &clock, size, 16 * MIB);
    assert!(identical(&src, "raw", &dst, "qcow2"));
}

#[test]
fn holes_cost_nothing() {
    // 1 GiB with 32 MiB of data in three places, at 32 MiB/s: a second
    // of the limit's schedule, not 32.
    let size = 1024 * MIB;
    let data = [
        (0, 8 * MIB),
        (500 * MIB, 16 * MIB),
        (size - 8 * MIB, 8 * MIB),
    ];
    let src = image("rate-sparse.raw", size, &data);
    let dst = WORK.join("rate-sparse.qcow2");
    let (p, clock) = paced_copy(&src, &dst, 32 * MIB);
    assert_eq!(p.processed.load(Ordering::Relaxed), size);
    assert_schedule(&p, &clock, 32 * MIB, 32 * MIB);
    assert!(identical(&src, "raw", &dst, "qcow2"));
}

#[test]
fn a_limit_of_the_system_clock_makes_the_copy_wait() {
    // The same engine on the real clock: 8 MiB at 16 MiB/s cannot end
    // before 0.5 s (a minimum: a slower machine only takes longer).
    let src = image("rate-real.raw", 8 * MIB, &[(0, 8 * MIB)]);
    let dst = WORK.join("rate-real.qcow2");
    let s = Source::open(&src, DiskFormat::Raw, Chain::Header).unwrap();
    let t = Target::create(&dst, DiskFormat::Qcow2, s.size(), None, false).unwrap();
    let p = Progress::limited(Some(16 * MIB));
    let start = Instant::now();
    copy_image(&s, &t, &p, Baseline::Empty, &mut NoDigests).unwrap();
    let took = start.elapsed();
    t.finish(&dst).unwrap();
    assert_eq!(p.rate_limit().map(RateLimit::taken), Some(8 * MIB));
    assert!(took >= Duration::from_millis(500), "{took:?}");
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
    bk.abort().unwrap();
    // Ended well before its 16 s: most of the image was never read (how
    // soon a wait looks at a cancel: the unit tests of src/job.rs).
    let p = params(&bk);
    assert!(ull(&p, "bytes.processed") < 32 * MIB, "{p:?}");
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
