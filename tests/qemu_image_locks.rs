//! QEMU's image locks on a domain disk's files while the library reads
//! them (`Source::open_locked`, `image::qemu_lock`), played against QEMU's
//! own tools: writers are kept out of every file of the chain, readers are
//! not; a writer already there refuses the open, naming itself; changes
//! made by a writer that ignores the locks are found at the end.

mod common;
use common::{WORK, qemu_img, qemu_io};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::image::disk::Source;
use libvirt_backup::test_api::xml::backup::DiskFormat;

fn image(name: &str, fmt: &str, size: &str, backing: Option<&Path>) -> PathBuf {
    let p = WORK.join(name);
    let _ = std::fs::remove_file(&p);
    let mut args = vec!["create", "-q", "-f", fmt];
    let b = backing.map(|b| b.to_str().unwrap().to_string());
    if let Some(b) = &b {
        args.extend(["-b", b, "-F", "qcow2"]);
    }
    args.extend([p.to_str().unwrap(), size]);
    qemu_img(&args);
    p
}

fn tool(cmd: &str, args: &[&str], path: &Path) -> Output {
    Command::new(cmd).args(args).arg(path).output().unwrap()
}

/// A `qemu-io` write to `path`, which QEMU's locks refuse.
fn write_refused(fmt: &str, path: &Path) {
    let out = tool("qemu-io", &["-f", fmt, "-c", "write -P 0x66 0 64k"], path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Failed to get \"write\" lock"),
        "qemu-io write to {} was not refused: {err}",
        path.display()
    );
}

/// What only reads still works.
fn readers_work(fmt: &str, path: &Path) {
    for (cmd, args) in [
        ("qemu-img", vec!["info", "-f", fmt]),
        ("qemu-io", vec!["-r", "-f", fmt, "-c", "read 0 64k"]),
    ] {
        let out = tool(cmd, &args, path);
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn locked_source_keeps_writers_out_of_every_file_of_its_chain() {
    let base = image("l-base.qcow2", "qcow2", "16M", None);
    qemu_io("qcow2", &base, "write -P 0x11 0 1M");
    let top = image("l-top.qcow2", "qcow2", "16M", Some(&base));
    qemu_io("qcow2", &top, "write -P 0x22 1M 1M");
    let raw = image("l-disk.raw", "raw", "16M", None);

    let src = Source::open_locked(&top, DiskFormat::Qcow2, "vda").unwrap();
    let src_raw = Source::open_locked(&raw, DiskFormat::Raw, "vdb").unwrap();
    write_refused("qcow2", &top);
    write_refused("qcow2", &base);
    write_refused("raw", &raw);
    let out = Command::new("qemu-img")
        .args(["resize", "-f", "raw"])
        .arg(&raw)
        .arg("+1M")
        .output()
        .unwrap();
    assert!(!out.status.success(), "resize of a locked raw image");
    readers_work("qcow2", &top);
    readers_work("qcow2", &base);
    readers_work("raw", &raw);
    // The locks held (and a second reader of the same disk) do not
    // conflict with one another.
    let again = Source::open_locked(&top, DiskFormat::Qcow2, "vda").unwrap();
    drop(again);
    write_refused("qcow2", &top);
    src.locks().unwrap().check_unchanged().unwrap();

    drop((src, src_raw));
    qemu_io("qcow2", &top, "write -P 0x33 0 64k");
    qemu_io("qcow2", &base, "write -P 0x33 0 64k");
    qemu_io("raw", &raw, "write -P 0x33 0 64k");
}

/// The locks outlive the source they were taken for while a `locks()` of
/// it is held: the job keeps them until its record is written.
#[test]
fn locks_live_as_long_as_their_holder() {
    let raw = image("h-disk.raw", "raw", "8M", None);
    let src = Source::open_locked(&raw, DiskFormat::Raw, "vda").unwrap();
    let locks = src.locks().unwrap();
    drop(src);
    write_refused("raw", &raw);
    drop(locks);
    qemu_io("raw", &raw, "write -P 0x33 0 64k");
}

/// A `qemu-io` left running on an image, its stdin a pipe.
struct Writer(Child);

impl Writer {
    fn start(fmt: &str, path: &Path) -> Writer {
        let child = Command::new("qemu-io")
            .args(["-f", fmt])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let w = Writer(child);
        // Its locks are taken once its image is open.
        let end = Instant::now() + Duration::from_secs(10);
        while !locked_by_writer(path) {
            assert!(
                Instant::now() < end,
                "qemu-io did not lock {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut i) = self.0.stdin.take() {
            let _ = i.write_all(b"quit\n");
        }
        let _ = self.0.wait();
    }
}

/// Whether some process holds byte 101 ("write") of `path` (/proc/locks).
fn locked_by_writer(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|t| t.ends_with(&format!(":{ino}")))
                .is_some_and(|i| {
                    let s: u64 = f[i + 1].parse().unwrap_or(u64::MAX);
                    let e: u64 = f[i + 2].parse().unwrap_or(u64::MAX);
                    s <= 101 && 101 <= e
                })
        })
}

#[test]
fn a_writer_already_there_refuses_the_open_and_is_named() {
    let base = image("w-base.qcow2", "qcow2", "16M", None);
    let top = image("w-top.qcow2", "qcow2", "16M", Some(&base));
    for (held, fmt) in [(&top, "qcow2"), (&base, "qcow2")] {
        let w = Writer::start(fmt, held);
        let Err(e) = Source::open_locked(&top, DiskFormat::Qcow2, "vda") else {
            panic!("{} opened while qemu-io writes it", held.display());
        };
        assert!(e.is(ErrorCode::OperationInvalid), "{e:?}");
        let want = [
            "disk 'vda'".to_string(),
            format!("image '{}'", held.display()),
            "\"write\" lock".to_string(),
            format!("qemu-io (pid {})", w.pid()),
        ];
        for w in want {
            assert!(e.message.contains(&w), "{w} not in: {}", e.message);
        }
        drop(w);
        // Once the writer is gone, nothing of the refused open was kept.
        let src = Source::open_locked(&top, DiskFormat::Qcow2, "vda").unwrap();
        drop(src);
        qemu_io("qcow2", held, "write -P 0x44 0 64k");
    }
}

/// A change made to an image behind the locks' back.
type Change = fn(&Path);

#[test]
fn changes_by_writers_that_ignore_the_locks_are_found() {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let cases: [(&str, Change); 4] = [
        ("changed size (8388608 -> 75497472 bytes)", |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(f.metadata().unwrap().len() + (64 << 20)).unwrap();
        }),
        ("was modified", |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.write_all_at(b"changed", 4096).unwrap();
        }),
        ("status change time", |p| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
        }),
        ("replaced by another file", |p| {
            let other = p.with_extension("new");
            std::fs::copy(p, &other).unwrap();
            std::fs::rename(&other, p).unwrap();
        }),
    ];
    for (i, (why, change)) in cases.into_iter().enumerate() {
        let raw = image(&format!("c-{i}.raw"), "raw", "8M", None);
        qemu_io("raw", &raw, "write -P 0x55 0 1M");
        let src = Source::open_locked(&raw, DiskFormat::Raw, "vdb").unwrap();
        let locks = src.locks().unwrap();
        locks.check_unchanged().unwrap();
        // Times are kept at a clock tick: make sure one passes.
        std::thread::sleep(Duration::from_millis(20));
        change(&raw);
        let e = locks.check_unchanged().unwrap_err();
        assert!(e.is(ErrorCode::OperationFailed), "{e:?}");
        assert!(
            e.message.contains(why) && e.message.contains("disk 'vdb'"),
            "{why} not in: {}",
            e.message
        );
    }
}
