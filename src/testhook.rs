//! Named stop points for crash tests. Only with the `test-hooks` feature
//! (the test build of the library, `build/test/`): when the process reaches
//! the point named by `LIBVIRT_BACKUP_TEST_STOP`, it kills itself with
//! SIGKILL, so a crash window is hit deterministically instead of by timing.
//! The release library contains neither the code nor the variable's name.
//!
//! Points: `create-target-created` (CreateXML, after each target file is
//! created), `delete-marked` (a record renamed to `.deleting`, no data
//! removed yet), `delete-first-disk-removed` (a delete that removed its
//! first disk), `restore-before-define` (a NEW_DOMAIN restore whose files
//! are written, before the domain is defined), `instant-pin-written` (an
//! instant restore, after each disk's overlay and pin), `instant-defined`
//! (an instant restore whose domain is defined, its note still there).

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
pub fn stop(point: &str) {
    if std::env::var("LIBVIRT_BACKUP_TEST_STOP").is_ok_and(|p| p == point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this only keeps the signature honest.
        std::process::abort();
    }
}
