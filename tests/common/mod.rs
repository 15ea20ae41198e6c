//! Helpers shared by the integration tests: images made and checked by qemu tools.

#![allow(dead_code)]

pub(crate) mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{LazyLock, Mutex};

use libvirt_backup::test_api::hv::libvirt::DomainRef;
use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::ops::options::{
    CreateOptions, DeleteOptions, DeleteScope, ListFilter, ListKind, RestoreMode, RestoreOptions,
    UndefineOptions,
};
use libvirt_backup::test_api::xml::backup::NbdServer;
use virt::connect::Connect;

/// Run `qemu-img` and require success.
pub(crate) fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img {args:?} failed");
}

/// Run one `qemu-io` command on an image and require success.
pub(crate) fn qemu_io(fmt: &str, path: &Path, cmd: &str) {
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
pub(crate) fn identical(a: &Path, fa: &str, b: &Path, fb: &str) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

/// The options the tests ask for most, named as the C flags are.
pub(crate) const WAIT: CreateOptions = CreateOptions {
    quiesce: false,
    no_fallback: false,
    wait: true,
};
pub(crate) const WAIT_NO_FALLBACK: CreateOptions = CreateOptions {
    no_fallback: true,
    ..WAIT
};
pub(crate) const LIST_ALL: ListFilter = ListFilter {
    kind: ListKind::Any,
    leaves: false,
    latest: false,
};
pub(crate) const LIST_FULL: ListFilter = ListFilter {
    kind: ListKind::Full,
    ..LIST_ALL
};
pub(crate) const LIST_INCREMENTAL: ListFilter = ListFilter {
    kind: ListKind::Incremental,
    ..LIST_ALL
};
pub(crate) const LIST_LEAVES: ListFilter = ListFilter {
    leaves: true,
    ..LIST_ALL
};
pub(crate) const LIST_LATEST: ListFilter = ListFilter {
    latest: true,
    ..LIST_ALL
};
pub(crate) const DELETE_ONE: DeleteOptions = DeleteOptions {
    scope: DeleteScope::One,
    metadata_only: false,
};
pub(crate) const DELETE_ALL: DeleteOptions = DeleteOptions {
    scope: DeleteScope::All,
    metadata_only: false,
};
pub(crate) const WITH_CHILDREN: DeleteOptions = DeleteOptions {
    scope: DeleteScope::WithChildren,
    metadata_only: false,
};
pub(crate) const METADATA_ONLY: DeleteOptions = DeleteOptions {
    scope: DeleteScope::One,
    metadata_only: true,
};
pub(crate) const REWRITE: RestoreOptions = RestoreOptions {
    mode: RestoreMode::InPlace,
    rewrite: true,
    start: false,
};
pub(crate) const NEW_DOMAIN: RestoreOptions = RestoreOptions {
    mode: RestoreMode::NewDomain,
    rewrite: false,
    start: false,
};
pub(crate) fn forget_backups() -> UndefineOptions {
    UndefineOptions {
        forget_backups: true,
        ..Default::default()
    }
}

/// One catalog and work folder for this test binary (the catalog root is
/// process-wide, from LIBVIRT_BACKUP_DIR).
pub(crate) static WORK: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap().keep();
    // SAFETY: set once, before any test reads it (all go through WORK).
    unsafe { std::env::set_var("LIBVIRT_BACKUP_DIR", dir.join("catalog")) };
    // The images are big: remove the folder when the test binary exits
    // (KEEP_TEST_WORK=1 keeps it for a look after a failure).
    if std::env::var_os("KEEP_TEST_WORK").is_none() {
        let _ = WORK_PATH.set(dir.clone());
        // SAFETY: registers a plain function that only removes a folder.
        unsafe { libc::atexit(remove_work) };
    }
    dir
});

static WORK_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn remove_work() {
    if let Some(dir) = WORK_PATH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The test driver shares one state per process; keep a connection open.
pub(crate) static CONN: LazyLock<Mutex<Connect>> =
    LazyLock::new(|| Mutex::new(Connect::open(Some("test:///default")).unwrap()));

pub(crate) fn disk(name: &str, fmt: &str, size: &str, writes: &[&str]) -> PathBuf {
    let p = WORK.join(name);
    qemu_img(&["create", "-q", "-f", fmt, p.to_str().unwrap(), size]);
    for w in writes {
        qemu_io(fmt, &p, w);
    }
    p
}

/// Define (or redefine, keeping its UUID) a test-driver domain with these disks.
pub(crate) fn domain(name: &str, disks: &[(&str, &Path, &str)]) -> DomainRef {
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

/// Run a program and return its output, whatever its exit status.
pub(crate) fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog} runs: {e}"))
}

/// Run a program and require success; its output.
pub(crate) fn run_ok(prog: &str, args: &[&str]) -> std::process::Output {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Make an image of `size` (qemu-img's notation) at `dir/name` with `writes`
/// (qemu-io commands) applied.
pub(crate) fn image_in(dir: &Path, name: &str, fmt: &str, size: &str, writes: &[&str]) -> PathBuf {
    let p = dir.join(name);
    qemu_img(&["create", "-q", "-f", fmt, p.to_str().unwrap(), size]);
    for w in writes {
        qemu_io(fmt, &p, w);
    }
    p
}

/// An image's guest-visible bytes: converted to the raw file `out`, read back.
pub(crate) fn raw_contents(img: &Path, fmt: &str, out: &Path) -> Vec<u8> {
    let (from, to) = (img.to_str().unwrap(), out.to_str().unwrap());
    qemu_img(&["convert", "-f", fmt, "-O", "raw", from, to]);
    std::fs::read(out).unwrap()
}

/// A TCP port on 127.0.0.1 that nothing listens on (once this returns).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An NBD server (or export listener) on 127.0.0.1 at `port`.
pub(crate) fn loopback(port: u16) -> NbdServer {
    NbdServer::Tcp {
        host: "127.0.0.1".into(),
        port,
    }
}

/// Fails to compile unless `T` may be shared between threads.
pub(crate) fn assert_send_sync<T: Send + Sync>() {}

/// The XML of an incremental backup of `parent`.
pub(crate) fn child_xml(parent: &Backup) -> String {
    format!(
        "<domainbackup><parent><uuid>{}</uuid></parent></domainbackup>",
        parent.uuid
    )
}

/// A copy of the source as it is now, to compare a backup with later.
pub(crate) fn snapshot(src: &Path, name: &str) -> PathBuf {
    let p = WORK.join(name);
    std::fs::copy(src, &p).unwrap();
    p
}

/// CPU time of this thread: the bound on work, unlike wall time, does not
/// depend on what else the machine runs.
pub(crate) fn cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A new qcow2 image at `top` over the qcow2 image `backing`.
pub(crate) fn qcow2_over(top: &Path, backing: &Path) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        backing.to_str().unwrap(),
        top.to_str().unwrap(),
    ]);
}

/// Cut the file at `path` to `len` bytes, as a delete's shrinking does.
pub(crate) fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}
