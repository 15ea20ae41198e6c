//! Helpers shared by the integration tests: images made and checked by qemu tools.

#![allow(dead_code)]

pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{LazyLock, Mutex};

use libvirt_backup::libvirt::DomainRef;
use virt::connect::Connect;

/// Run `qemu-img` and require success.
pub fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img {args:?} failed");
}

/// Run one `qemu-io` command on an image and require success.
pub fn qemu_io(fmt: &str, path: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", fmt, "-c", cmd])
        .arg(path)
        .output()
        .expect("qemu-io runs");
    assert!(
        out.status.success(),
        "qemu-io {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether two images hold the same data (`qemu-img compare`).
pub fn identical(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

pub const WAIT: u32 = 1 << 2;

/// One catalog and work folder for this test binary (the catalog root is
/// process-wide, from LIBVIRT_BACKUP_DIR).
pub static WORK: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap().keep();
    // SAFETY: set once, before any test reads it (all go through WORK).
    unsafe { std::env::set_var("LIBVIRT_BACKUP_DIR", dir.join("catalog")) };
    dir
});

/// The test driver shares one state per process; keep a connection open.
pub static CONN: LazyLock<Mutex<Connect>> =
    LazyLock::new(|| Mutex::new(Connect::open(Some("test:///default")).unwrap()));

pub fn disk(name: &str, fmt: &str, size: &str, writes: &[&str]) -> PathBuf {
    let p = WORK.join(name);
    qemu_img(&["create", "-q", "-f", fmt, p.to_str().unwrap(), size]);
    for w in writes {
        qemu_io(fmt, &p, w);
    }
    p
}

/// Define (or redefine, keeping its UUID) a test-driver domain with these disks.
pub fn domain(name: &str, disks: &[(&str, &Path, &str)]) -> DomainRef {
    let mut devs = String::new();
    for (dev, path, fmt) in disks {
        devs.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{}'/><target dev='{dev}'/></disk>",
            path.display()
        ));
    }
    let conn = CONN.lock().unwrap();
    let uuid = conn
        .list_all_domains(0)
        .unwrap()
        .into_iter()
        .find(|d| d.name().unwrap() == name)
        .map(|d| format!("<uuid>{}</uuid>", d.uuid_string().unwrap()))
        .unwrap_or_default();
    let xml = format!(
        "<domain type='test'><name>{name}</name>{uuid}<memory>65536</memory><os><type>hvm</type></os><devices>{devs}</devices></domain>"
    );
    DomainRef::new(conn.define_domain_xml(&xml).unwrap())
}
