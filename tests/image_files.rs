//! The kinds of file an image may be. A FIFO, a character device, a socket
//! or a folder in place of an image is refused at once, naming the file and
//! what it is (a FIFO would otherwise hang an open or a read forever); a
//! raw image may be a block device (a logical volume), read and written in
//! place with the device's size. `Target::create_from` formats a file the
//! caller created, never opening it again by its path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{identical, qcow2_over, qemu_img, qemu_io};

use libvirt_backup::test_api::engine::copy::{
    Baseline, apply_rewrite, copy_image, plan_rewrite, write_index_file,
};
use libvirt_backup::test_api::image::backing::backing_file;
use libvirt_backup::test_api::image::chain::ChainReader;
use libvirt_backup::test_api::image::disk::{Chain, Source, Target, use_direct_targets};
use libvirt_backup::test_api::job::Progress;
use libvirt_backup::test_api::store::index::{IndexReader, NoDigests};
use libvirt_backup::test_api::xml::backup::DiskFormat;

const MIB: u64 = 1 << 20;
/// Set in the child process `hang_free` starts.
const CHILD: &str = "IMAGE_FILES_TEST_CHILD";

/// Run `body`, the whole of test `name`, in a child process of this test
/// binary, and fail if it has not finished within 30 s: an open or a
/// read blocked on a FIFO never returns, and a thread cannot be stopped.
fn hang_free(name: &str, body: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(out.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(out.path()).unwrap_or_default();
    match status {
        None => panic!("{name} hung (blocked on a special file):\n{said}"),
        Some(st) => assert!(st.success(), "{name} failed:\n{said}"),
    }
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// `r` failed with a message naming `path` and saying it is `what`.
fn refused<T>(r: libvirt_backup::test_api::error::Result<T>, path: &Path, what: &str, op: &str) {
    let Err(e) = r else {
        panic!("{op} of '{}' ({what}) succeeded", path.display())
    };
    let want = format!("is {what}, not a regular file");
    assert!(
        e.message.contains(&want) && e.message.contains(path.to_str().unwrap()),
        "{op}: {}",
        e.message
    );
    assert!(e.message.starts_with("operation failed: "), "{}", e.message);
}

/// Every way the library opens an image, on each kind of special file: an
/// error at once, naming the file and what it is.
#[test]
fn special_files_are_refused_at_once() {
    hang_free("special_files_are_refused_at_once", || {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fifo = d.join("fifo.img");
        mkfifo(&fifo);
        let folder = d.join("folder.img");
        std::fs::create_dir(&folder).unwrap();
        let sock = d.join("socket.img");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let kinds: [(PathBuf, &str); 4] = [
            (fifo.clone(), "a FIFO"),
            ("/dev/null".into(), "a character device"),
            (folder, "a directory"),
            (sock, "a socket"),
        ];
        let good = d.join("good.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", good.to_str().unwrap(), "4M"]);
        for (p, what) in &kinds {
            let recorded = [(good.clone(), DiskFormat::Qcow2)];
            for format in [DiskFormat::Raw, DiskFormat::Qcow2] {
                for chain in [Chain::None, Chain::Header, Chain::Detached] {
                    refused(Source::open(p, format, chain), p, what, "Source::open");
                }
                let chain = Chain::Recorded(&recorded);
                refused(Source::open(p, format, chain), p, what, "Source::open");
                let chain = Chain::Header;
                let t = Target::open_existing(p, format, chain);
                refused(t, p, what, "Target::open_existing");
            }
            refused(ChainReader::open(p, &[]), p, what, "ChainReader::open");
            assert_eq!(backing_file(p), None);
        }
        // A FIFO in place of a new target the caller allows to replace.
        let t = Target::create(&fifo, DiskFormat::Raw, MIB, None, true);
        refused(t, &fifo, "a FIFO", "Target::create");
        let t = Target::create(&fifo, DiskFormat::Qcow2, MIB, None, true);
        refused(t, &fifo, "a FIFO", "Target::create");

        // A FIFO as a level of a backup's chain, at the open and after it
        // (the reader resolves the chain again and finds the FIFO).
        let (a, c) = (d.join("a.qcow2"), d.join("c.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", a.to_str().unwrap(), "4M"]);
        qemu_io("qcow2", &a, "write -P 0x0a 0 1M");
        qcow2_over(&c, &a);
        let recorded = [(a.clone(), DiskFormat::Qcow2)];
        let r = ChainReader::open(&c, &recorded).unwrap();
        std::fs::rename(&a, d.join("a.away")).unwrap();
        mkfifo(&a);
        refused(ChainReader::open(&c, &recorded), &a, "a FIFO", "open");
        let src = Source::open(&c, DiskFormat::Qcow2, Chain::Recorded(&recorded));
        refused(src, &a, "a FIFO", "Source::open");
        let mut buf = vec![0u8; MIB as usize];
        refused(r.fill(&mut buf, 0), &a, "a FIFO", "fill");
        // ... and as the backing file a domain disk's header names.
        let src = Source::open(&c, DiskFormat::Qcow2, Chain::Header);
        refused(src, &a, "a FIFO", "Source::open");
        let t = Target::open_existing(&c, DiskFormat::Qcow2, Chain::Header);
        refused(t, &a, "a FIFO", "Target::open_existing");
    });
}

/// `Target::create_from` formats a file the caller created and opened, and
/// writes it through that descriptor only: renamed away, with another file
/// put at its path, it still gets the data (buffered and direct, raw and
/// qcow2 with a backing file named in its header). A file that is not empty
/// or not regular is refused.
#[test]
fn create_from_writes_the_file_it_was_given() {
    let src_dir = tempfile::tempdir().unwrap();
    let img = src_dir.path().join("src.raw");
    qemu_img(&["create", "-q", "-f", "raw", img.to_str().unwrap(), "6M"]);
    qemu_io("raw", &img, "write -P 0x5a 1M 2M");
    qemu_io("raw", &img, "write -P 0xa5 5M 4k");
    let base = src_dir.path().join("base.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "6M"]);
    for direct in [false, true] {
        if direct {
            use_direct_targets();
        }
        let Ok(dir) = tempfile::tempdir_in("/var/tmp") else {
            continue;
        };
        for (format, backing) in [
            (DiskFormat::Raw, None),
            (DiskFormat::Qcow2, None),
            (DiskFormat::Qcow2, Some((base.as_path(), DiskFormat::Qcow2))),
        ] {
            let path = dir.path().join(format!("t.{}", format.as_str()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            let src = Source::open(&img, DiskFormat::Raw, Chain::None).unwrap();
            let dst = Target::create_from(file, &path, format, src.size(), backing).unwrap();
            let moved = dir.path().join("moved");
            std::fs::rename(&path, &moved).unwrap();
            std::fs::write(&path, b"decoy").unwrap();
            let p = Progress::default();
            copy_image(&src, &dst, &p, Baseline::Empty, &mut NoDigests).unwrap();
            dst.finish(&path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"decoy");
            assert!(
                identical(&img, "raw", &moved, format.as_str()),
                "direct {direct}: {}",
                format.as_str()
            );
            if backing.is_some() {
                let named = backing_file(&moved);
                assert_eq!(named.as_deref(), Some(base.as_path()));
            }
            std::fs::remove_file(&moved).unwrap();
            std::fs::remove_file(&path).unwrap();
        }
    }
    // Not empty: refused, and left as it was.
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    std::fs::write(&full, b"data").unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&full)
        .unwrap();
    let e = Target::create_from(file, &full, DiskFormat::Raw, MIB, None)
        .err()
        .unwrap();
    assert!(e.message.contains("not empty"), "{}", e.message);
    assert_eq!(std::fs::read(&full).unwrap(), b"data");
    // Not a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let e = Target::create_from(file, Path::new("/dev/null"), DiskFormat::Raw, MIB, None)
        .err()
        .unwrap();
    assert!(
        e.message
            .contains("is a character device, not a regular file"),
        "{}",
        e.message
    );
}

/// A loop device over `file`, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    /// None (the test is skipped) where no loop device can be set up.
    fn attach(file: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !dev.is_empty()).then(|| Loop(dev.into()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A raw image on a block device: a source reports the device's size and
/// reads its data; an in-place restore writes into it (data and zeroes,
/// never resizing it). A qcow2 image on one is refused.
#[test]
fn a_raw_image_on_a_block_device() {
    const SIZE: u64 = 8 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // What the device holds: 0xff everywhere but one chunk, which already
    // holds what the backup has there.
    let backing = d.join("device.img");
    let mut old = vec![0xffu8; SIZE as usize];
    old[(3 * MIB) as usize..(3 * MIB + 65536) as usize].fill(0x33);
    std::fs::write(&backing, &old).unwrap();
    let Some(dev) = Loop::attach(&backing) else {
        eprintln!("skipped: no loop device could be set up");
        return;
    };
    // The backup: data, a hole, and that chunk.
    let want_img = d.join("backup.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        want_img.to_str().unwrap(),
        "8M",
    ]);
    qemu_io("raw", &want_img, "write -P 0x5a 0 2M");
    qemu_io("raw", &want_img, "write -P 0x33 3M 64k");
    qemu_io("raw", &want_img, "write -P 0xa5 7M 1M");
    let want = std::fs::read(&want_img).unwrap();

    let have = Source::open(&dev.0, DiskFormat::Raw, Chain::Header).unwrap();
    assert_eq!(have.size(), SIZE, "the device's size");
    // Read through a copy: the device's bytes.
    let copy = d.join("copy.raw");
    let dst = Target::create(&copy, DiskFormat::Raw, have.size(), None, false).unwrap();
    let p = Progress::default();
    copy_image(&have, &dst, &p, Baseline::Empty, &mut NoDigests).unwrap();
    dst.finish(&copy).unwrap();
    assert!(std::fs::read(&copy).unwrap() == old, "the device read back");

    // An in-place restore of the backup onto the device (its index in
    // folders laid out as the catalog's).
    std::fs::create_dir_all(d.join("dom/backup.index")).unwrap();
    let index = d.join("dom/backup.index/vda.b3");
    write_index_file(&index, &want_img, DiskFormat::Raw, Chain::None).unwrap();
    let src = Source::open(&want_img, DiskFormat::Raw, Chain::None).unwrap();
    let plan = plan_rewrite(&src, &mut IndexReader::open(&index).unwrap(), &have, &p).unwrap();
    let dst = Target::open_existing(&dev.0, DiskFormat::Raw, Chain::Header).unwrap();
    apply_rewrite(
        &src,
        &mut IndexReader::open(&index).unwrap(),
        &dst,
        &plan,
        &p,
    )
    .unwrap();
    dst.finish(&dev.0).unwrap();
    let now = Source::open(&dev.0, DiskFormat::Raw, Chain::None).unwrap();
    assert_eq!(now.size(), SIZE, "the device was not resized");
    drop((have, now));
    let st = Command::new("cmp")
        .arg(&dev.0)
        .arg(&want_img)
        .status()
        .unwrap();
    assert!(st.success(), "the device does not hold the backup");
    assert!(std::fs::read(&backing).unwrap() == want);

    // qcow2 images are regular files only.
    let what = "a block device";
    let e = Source::open(&dev.0, DiskFormat::Qcow2, Chain::None);
    refused(e, &dev.0, what, "Source::open");
    let e = Target::open_existing(&dev.0, DiskFormat::Qcow2, Chain::Header);
    refused(e, &dev.0, what, "Target::open_existing");
}
