//! `nbd_export`: qemu-storage-daemon serving read-only NBD exports, checked
//! with real processes on loopback (qemu-img, qemu-io, nbdinfo, nbdcopy).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{assert_send_sync, free_port, image_in, loopback, qemu_io, run, run_ok};
use libvirt_backup::test_api::engine::export::{ExportDisk, ExportServer, StorageDaemonExport};
use libvirt_backup::test_api::error::{ErrorCode, Result};
use libvirt_backup::test_api::xml::backup::DiskFormat;

const MIB: u64 = 1024 * 1024;

fn stdout_of(prog: &str, args: &[&str]) -> String {
    String::from_utf8(run_ok(prog, args).stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A qcow2 image of `size` MiB with `writes` (qemu-io commands) applied.
fn qcow2(dir: &Path, name: &str, size_mib: u64, writes: &[&str]) -> PathBuf {
    image_in(dir, name, "qcow2", &format!("{size_mib}M"), writes)
}

fn raw(dir: &Path, name: &str, size_mib: u64, writes: &[&str]) -> PathBuf {
    image_in(dir, name, "raw", &format!("{size_mib}M"), writes)
}

fn disk(name: &str, image: &Path, format: DiskFormat, bitmap: Option<&str>) -> ExportDisk {
    ExportDisk {
        export_name: name.into(),
        image: image.to_path_buf(),
        format,
        bitmap: bitmap.map(Into::into),
        backing: None,
    }
}

/// Export `disks` on the unix socket `sock`.
fn start_unix(sock: &Path, disks: &[ExportDisk]) -> Result<StorageDaemonExport> {
    StorageDaemonExport::start(&ExportServer::Unix(sock.to_path_buf()), disks)
}

/// A qcow2 image `dir`/a.qcow2 of `size_mib` MiB with `writes` applied,
/// exported as `name` on `dir`/s.sock.
fn qcow2_export(
    dir: &Path,
    name: &str,
    size_mib: u64,
    writes: &[&str],
) -> (PathBuf, StorageDaemonExport) {
    let img = qcow2(dir, "a.qcow2", size_mib, writes);
    let exp = start_unix(
        &dir.join("s.sock"),
        &[disk(name, &img, DiskFormat::Qcow2, None)],
    )
    .unwrap();
    (img, exp)
}

/// The image's guest-visible bytes.
fn raw_bytes(img: &Path, fmt: &str, tmp: &Path) -> Vec<u8> {
    let out = tmp.join(format!(
        "{}.ref.raw",
        img.file_name().unwrap().to_str().unwrap()
    ));
    common::raw_contents(img, fmt, &out)
}

fn unix_uri(export: &str, sock: &Path) -> String {
    format!("nbd+unix:///{export}?socket={}", s(sock))
}

/// One `nbdinfo --map` extent.
#[derive(Debug)]
struct Extent {
    start: u64,
    len: u64,
    desc: String,
}

fn map(uri: &str, context: Option<&str>) -> Vec<Extent> {
    let opt = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".to_string(),
    };
    stdout_of("nbdinfo", &[&opt, uri])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Extent {
                start: f[0].parse().unwrap(),
                len: f[1].parse().unwrap(),
                desc: f[3..].join(" "),
            }
        })
        .collect()
}

/// Whether every byte of [off, off+len) lies in extents whose description satisfies `pred`.
fn covered(map: &[Extent], off: u64, len: u64, pred: impl Fn(&str) -> bool) -> bool {
    let mut pos = off;
    for e in map {
        if e.start <= pos && pos < e.start + e.len {
            if !pred(&e.desc) {
                return false;
            }
            pos = e.start + e.len;
            if pos >= off + len {
                return true;
            }
        }
    }
    false
}

/// The scratch folder of a running daemon: the folder of its QMP socket,
/// read from its command line.
fn scratch_of(pid: u32) -> PathBuf {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == "--pidfile").unwrap();
    PathBuf::from(&args[i + 1]).parent().unwrap().to_path_buf()
}

fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn export_is_send_and_sync() {
    assert_send_sync::<StorageDaemonExport>();
}

#[test]
fn unix_two_disks_copy_list_map() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let q = qcow2(
        d,
        "vda.qcow2",
        16,
        &["write -P 0xab 1M 64k", "write -P 0xcd 5M 128k"],
    );
    let r = raw(d, "vdb.raw", 8, &["write -P 0x5a 2M 1M"]);
    let want_q = raw_bytes(&q, "qcow2", d);
    let want_r = raw_bytes(&r, "raw", d);
    let sock = d.join("nbd.sock");

    let exp = start_unix(
        &sock,
        &[
            disk("vda", &q, DiskFormat::Qcow2, None),
            disk("vdb", &r, DiskFormat::Raw, None),
        ],
    )
    .unwrap();
    assert!(exp.is_running());

    // nbdcopy of each export equals the image's data, byte for byte.
    for (name, want) in [("vda", &want_q), ("vdb", &want_r)] {
        let out = d.join(format!("{name}.copy"));
        run_ok("nbdcopy", &[&unix_uri(name, &sock), s(&out)]);
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), want.len(), "{name} size");
        assert!(got == *want, "{name} data differs");
    }
    // To stdout as well.
    let out = run_ok("nbdcopy", &[&unix_uri("vdb", &sock), "-"]);
    assert!(out.stdout == want_r);

    // Both exports listed, read-only.
    let list = stdout_of(
        "nbdinfo",
        &["--list", &format!("nbd+unix:///?socket={}", s(&sock))],
    );
    let sections: Vec<&str> = list.split("export=\"").skip(1).collect();
    assert_eq!(sections.len(), 2, "{list}");
    for name in ["vda", "vdb"] {
        let sec = sections
            .iter()
            .find(|sec| sec.starts_with(&format!("{name}\"")))
            .unwrap_or_else(|| panic!("{name} not listed: {list}"));
        assert!(sec.contains("is_read_only: true"), "{list}");
    }
    let size_a = stdout_of("nbdinfo", &["--size", &unix_uri("vda", &sock)]);
    assert_eq!(size_a.trim(), (16 * MIB).to_string());

    // Allocation: data where data was written, holes elsewhere (qcow2).
    let m = map(&unix_uri("vda", &sock), None);
    let data = |d: &str| d == "data";
    let hole = |d: &str| d.contains("hole");
    assert!(covered(&m, MIB, 64 * 1024, data), "{m:?}");
    assert!(covered(&m, 5 * MIB, 128 * 1024, data), "{m:?}");
    assert!(covered(&m, 0, MIB, hole), "{m:?}");
    assert!(covered(&m, 8 * MIB, 8 * MIB, hole), "{m:?}");
    let m = map(&unix_uri("vdb", &sock), None);
    assert!(covered(&m, 2 * MIB, MIB, data), "{m:?}");
    assert!(covered(&m, 6 * MIB, 2 * MIB, hole), "{m:?}");

    // A read-only export refuses writes.
    let w = run(
        "qemu-io",
        &["-f", "raw", "-c", "write 0 512", &unix_uri("vda", &sock)],
    );
    let msg = String::from_utf8_lossy(&w.stderr);
    assert!(
        !w.status.success() || msg.contains("read-only") || msg.contains("Read-only"),
        "{msg}"
    );

    let scratch = scratch_of(exp.pid());
    assert!(scratch.is_dir());
    let pid = exp.pid();
    exp.stop().unwrap();
    assert!(process_gone(pid));
    assert!(!exp.is_running());
    assert!(!sock.exists(), "server socket left behind");
    assert!(!scratch.exists(), "scratch folder left behind");
    exp.stop().unwrap(); // idempotent
}

#[test]
fn scratch_folder_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (_, exp) = qcow2_export(tmp.path(), "a", 1, &[]);
    let scratch = scratch_of(exp.pid());
    assert!(scratch.starts_with(std::env::temp_dir()));
    let mode = std::fs::metadata(&scratch).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // The readiness probe says goodbye properly: the daemon logs nothing.
    for e in std::fs::read_dir(&scratch).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "log") {
            let log = std::fs::read_to_string(&p).unwrap();
            assert!(log.is_empty(), "{log}");
        }
    }
    // A graceful stop (QMP quit) takes milliseconds; the SIGKILL fallback
    // takes at least its 5 s wait, so anything under that was graceful
    // (the margin is for a loaded machine).
    let t = std::time::Instant::now();
    exp.stop().unwrap();
    assert!(t.elapsed().as_secs_f64() < 4.9, "{:?}", t.elapsed());
}

#[test]
fn tcp_port_and_port_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let img = qcow2(tmp.path(), "a.qcow2", 4, &["write -P 0x11 0 1M"]);
    let want = raw_bytes(&img, "qcow2", tmp.path());
    let port = free_port();
    let server = loopback(port);
    let exp =
        StorageDaemonExport::start(&server, &[disk("vda", &img, DiskFormat::Qcow2, None)]).unwrap();
    let uri = format!("nbd://127.0.0.1:{port}/vda");
    let out = run_ok("nbdcopy", &[&uri, "-"]);
    assert!(out.stdout == want);

    // The same port again: qemu-storage-daemon's bind error.
    let img2 = qcow2(tmp.path(), "b.qcow2", 1, &[]);
    let err = StorageDaemonExport::start(&server, &[disk("vdb", &img2, DiskFormat::Qcow2, None)])
        .unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("Address already in use"), "{err}");
    // The first export is unaffected.
    assert!(exp.is_running());
    run_ok("nbdinfo", &["--size", &uri]);

    let pid = exp.pid();
    let scratch = scratch_of(pid);
    exp.stop().unwrap();
    assert!(process_gone(pid));
    assert!(!scratch.exists());
    assert!(!run("nbdinfo", &["--size", &uri]).status.success());
    // The port is free again.
    TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn drop_stops_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, exp) = qcow2_export(tmp.path(), "a", 1, &[]);
    let sock = tmp.path().join("s.sock");
    let pid = exp.pid();
    let scratch = scratch_of(pid);
    assert!(sock.exists());
    drop(exp);
    assert!(process_gone(pid));
    assert!(!sock.exists());
    assert!(!scratch.exists());
}

#[test]
fn stop_after_the_daemon_died() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, exp) = qcow2_export(tmp.path(), "a", 1, &[]);
    let scratch = scratch_of(exp.pid());
    run_ok("kill", &["-KILL", &exp.pid().to_string()]);
    let t = std::time::Instant::now();
    while exp.is_running() {
        assert!(t.elapsed().as_secs() < 5);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    exp.stop().unwrap();
    assert!(process_gone(exp.pid()));
    assert!(!scratch.exists());
}

#[test]
fn dirty_bitmap_export() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = qcow2(d, "a.qcow2", 16, &["write -P 0x01 0 1M"]);
    run_ok("qemu-img", &["bitmap", "--add", s(&img), "b0"]);
    // qemu-io records its writes in the enabled persistent bitmap.
    qemu_io("qcow2", &img, "write -P 0x02 4M 1M");
    qemu_io("qcow2", &img, "write -P 0x03 10M 64k");
    let sock = d.join("s.sock");

    let exp = start_unix(&sock, &[disk("vda", &img, DiskFormat::Qcow2, Some("b0"))]).unwrap();
    let uri = unix_uri("vda", &sock);
    let list = stdout_of("nbdinfo", &[&uri]);
    assert!(list.contains("qemu:dirty-bitmap:b0"), "{list}");
    let m = map(&uri, Some("qemu:dirty-bitmap:b0"));
    let dirty = |d: &str| d == "dirty";
    let clean = |d: &str| d == "clean";
    assert!(covered(&m, 4 * MIB, MIB, dirty), "{m:?}");
    assert!(covered(&m, 10 * MIB, 64 * 1024, dirty), "{m:?}");
    assert!(covered(&m, 0, 4 * MIB, clean), "{m:?}"); // written before the bitmap
    assert!(covered(&m, 5 * MIB, 5 * MIB, clean), "{m:?}");
    assert!(covered(&m, 11 * MIB, 5 * MIB, clean), "{m:?}");
    // Allocation still works next to the bitmap.
    let a = map(&uri, None);
    assert!(covered(&a, 0, MIB, |d| d == "data"), "{a:?}");
    exp.stop().unwrap();

    // A bitmap the image does not have: qemu-storage-daemon's message.
    let err = start_unix(&sock, &[disk("vda", &img, DiskFormat::Qcow2, Some("nope"))]).unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("nope"), "{err}");
    assert!(err.message.to_lowercase().contains("bitmap"), "{err}");
    assert!(!sock.exists(), "socket of a failed start left behind");

    // A bitmap on a raw image is refused up front.
    let r = raw(d, "b.raw", 1, &[]);
    let err = start_unix(&sock, &[disk("vdb", &r, DiskFormat::Raw, Some("b0"))]).unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
}

#[test]
fn export_holds_the_image_read_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, exp) = qcow2_export(tmp.path(), "vda", 4, &["write -P 0x44 0 64k"]);
    // QEMU's image locking: no writer while the export runs.
    let w = run("qemu-io", &["-f", "qcow2", "-c", "write 0 4k", s(&img)]);
    assert!(!w.status.success());
    let msg = String::from_utf8_lossy(&w.stderr);
    assert!(msg.contains("\"write\" lock"), "{msg}");
    // Readers sharing the image are fine.
    run_ok("qemu-img", &["info", "-U", s(&img)]);
    exp.stop().unwrap();
    // Released on stop.
    qemu_io("qcow2", &img, "write 0 4k");
}

#[test]
fn startup_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = qcow2(d, "a.qcow2", 1, &[]);

    // Missing image.
    let err = start_unix(
        &d.join("s.sock"),
        &[
            disk("a", &good, DiskFormat::Qcow2, None),
            disk("b", &d.join("missing.qcow2"), DiskFormat::Qcow2, None),
        ],
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("missing.qcow2"), "{err}");

    // Not a qcow2 image.
    let r = raw(d, "b.raw", 1, &[]);
    let err = start_unix(&d.join("s.sock"), &[disk("b", &r, DiskFormat::Qcow2, None)]).unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("qcow2"), "{err}");

    // Port 0, missing socket folder, a path that is not a socket.
    let err =
        StorageDaemonExport::start(&loopback(0), &[disk("a", &good, DiskFormat::Qcow2, None)])
            .unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    let err = start_unix(
        &d.join("nodir/s.sock"),
        &[disk("a", &good, DiskFormat::Qcow2, None)],
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    let err = start_unix(&good, &[disk("a", &good, DiskFormat::Qcow2, None)]).unwrap_err();
    assert!(err.message.contains("not a socket"), "{err}");
    assert!(good.is_file(), "the image was touched");

    // A socket another export serves is not taken over.
    let sock = d.join("s.sock");
    let first = start_unix(&sock, &[disk("a", &good, DiskFormat::Qcow2, None)]).unwrap();
    let err = start_unix(&sock, &[disk("b", &r, DiskFormat::Raw, None)]).unwrap_err();
    assert!(err.message.contains("in use"), "{err}");
    run_ok("nbdinfo", &["--size", &unix_uri("a", &sock)]);
    first.stop().unwrap();
}
