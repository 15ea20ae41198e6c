//! Running QEMU's command-line tools (qemu-img, qemu-io) for the few things
//! the library does not do itself: qcow2 bitmaps.

use std::ffi::OsStr;
use std::process::Command;

use crate::error::{Error, Result};

/// Shorthand for building argument lists of strings and paths.
pub(crate) fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Run `program` with `args`; its stdout, or an error with its stderr.
pub(crate) fn run<I, S>(program: &str, args: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::operation_failed(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(Error::operation_failed(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}
