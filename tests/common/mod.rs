//! Helpers shared by the integration tests: images made and checked by qemu tools.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

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
