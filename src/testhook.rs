//! Named stop points for crash tests. Only with the `test-hooks` feature
//! (the test build of the library, `build/test/`): when the process reaches
//! the point named by `LIBVIRT_BACKUP_TEST_STOP`, it kills itself with
//! SIGKILL, so a crash window is hit deterministically instead of by timing.
//! The release library contains neither the code nor the variable's name.
//!
//! Points: `create-job-locked` (CreateXML, once the job's lock file is
//! made, before its record), `create-target-created` (CreateXML, after
//! each target file is created), `atomic-tmp-written` (any atomic write of
//! a catalog file, its temporary file written, before the rename),
//! `delete-marked` (a record renamed to `.deleting`, no data
//! removed yet), `delete-first-disk-removed` (a delete that removed its
//! first disk), `restore-before-define` (a NEW_DOMAIN restore whose files
//! are written, before the domain is defined), `instant-pin-written` (an
//! instant restore, after each disk's overlay and pin), `instant-defined`
//! (an instant restore whose domain is defined, its note still there).
//!
//! `<point>#<n>` kills at the n-th time the process reaches the point
//! (counted from 1); `<point>` alone at the first.

/// Kill the process here if `LIBVIRT_BACKUP_TEST_STOP` names `$point`
/// (test builds only; nothing in release builds).
#[macro_export]
macro_rules! test_stop {
    ($point:expr) => {
        #[cfg(feature = "test-hooks")]
        $crate::testhook::stop($point);
    };
}

#[cfg(feature = "test-hooks")]
pub(crate) fn stop(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(want) = std::env::var("LIBVIRT_BACKUP_TEST_STOP") else {
        return;
    };
    let (name, nth) = match want.split_once('#') {
        Some((name, n)) => (name, n.parse::<u64>().unwrap_or(1)),
        None => (want.as_str(), 1),
    };
    if name != point || HITS.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return;
    }
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; this only keeps the signature honest.
    std::process::abort();
}
