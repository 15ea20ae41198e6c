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
//!
//! Pause points (`test_pause!`) let a test act in the middle of a job:
//! when the process reaches the point named by `LIBVIRT_BACKUP_TEST_PAUSE`
//! (same `#<n>` rule, hits counted anew for each resume file), it creates
//! the file `$LIBVIRT_BACKUP_TEST_RESUME` with `.paused` appended, then
//! waits until the file `$LIBVIRT_BACKUP_TEST_RESUME` exists. Points: `copy-window` (the copy
//! of an image into another, by a backup, a restore or a merge, after each
//! 4 MiB window it wrote).

/// Kill the process here if `LIBVIRT_BACKUP_TEST_STOP` names `$point`
/// (test builds only; nothing in release builds).
#[macro_export]
macro_rules! test_stop {
    ($point:expr) => {
        #[cfg(feature = "test-hooks")]
        $crate::testhook::stop($point);
    };
}

/// Wait here if `LIBVIRT_BACKUP_TEST_PAUSE` names `$point`, until the file
/// `LIBVIRT_BACKUP_TEST_RESUME` names exists (test builds only; nothing in
/// release builds).
#[macro_export]
macro_rules! test_pause {
    ($point:expr) => {
        #[cfg(feature = "test-hooks")]
        $crate::testhook::pause($point);
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

#[cfg(feature = "test-hooks")]
pub(crate) fn pause(point: &str) {
    use std::sync::Mutex;
    // Hits are counted per resume file: each test names its own, and one
    // process runs many tests.
    static HITS: Mutex<Option<(std::ffi::OsString, u64)>> = Mutex::new(None);
    let (Ok(want), Some(resume)) = (
        std::env::var("LIBVIRT_BACKUP_TEST_PAUSE"),
        std::env::var_os("LIBVIRT_BACKUP_TEST_RESUME"),
    ) else {
        return;
    };
    let (name, nth) = match want.split_once('#') {
        Some((name, n)) => (name, n.parse::<u64>().unwrap_or(1)),
        None => (want.as_str(), 1),
    };
    if name != point {
        return;
    }
    {
        let mut hits = HITS.lock().unwrap();
        let count = match hits.as_mut() {
            Some((file, n)) if *file == resume => n,
            _ => &mut hits.insert((resume.clone(), 0)).1,
        };
        *count += 1;
        if *count != nth {
            return;
        }
    }
    let resume = std::path::PathBuf::from(resume);
    let mut paused = resume.clone().into_os_string();
    paused.push(".paused");
    let _ = std::fs::write(paused, b"");
    while !resume.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
