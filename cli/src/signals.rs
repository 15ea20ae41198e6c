//! SIGINT, SIGTERM and SIGHUP: each asks the running command to stop, the
//! way Ctrl-C always did. The first one is recorded and each command checks
//! for it where it can stop cleanly (`create` aborts its job, `export` ends
//! its job and NBD server, `verify` stops, `wait` stops waiting, `prune`
//! finishes the delete in progress and deletes no more, `restore` has its
//! new files removed); a second one exits at once.
//!
//! A command ended by a signal exits with 128 + the signal's number (130
//! SIGINT, 143 SIGTERM, 129 SIGHUP) after one line on standard error,
//! `interrupted by SIGTERM: ...`, saying what was cleaned up: the command
//! returns `stopped(what)` and `main` prints and exits (`exit_status`).

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::api::ApiError;

/// The signals that stop a command.
const STOPPING: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// How many stopping signals arrived.
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// The first of them (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);

/// The `ApiError` code of a command stopped by a signal (no code of the
/// library's: those are small and positive).
const STOPPED: i32 = i32::MIN;

extern "C" fn on_signal(sig: libc::c_int) {
    let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    if COUNT.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe and takes no pointer.
        unsafe { libc::_exit(128 + sig) };
    }
}

fn set_action(sig: libc::c_int, handler: usize) {
    // SAFETY: `sa` is a zeroed plain C struct (valid for sigaction), filled
    // with SIG_IGN or a handler that only touches atomics and calls _exit,
    // all async-signal-safe; the pointers passed live across each call.
    // SA_RESTART: a system call the signal lands in (a read of the detached
    // child's pipe, a poll inside libvirt) goes on rather than failing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Catch SIGINT, SIGTERM and SIGHUP (once, early in `main`).
pub(crate) fn install() {
    for sig in STOPPING {
        set_action(sig, on_signal as *const () as usize);
    }
}

/// In the detached process of `create --no-wait`: no terminal to hang up,
/// so SIGHUP is ignored; SIGTERM and SIGINT still abort its job.
pub(crate) fn detached() {
    set_action(libc::SIGHUP, libc::SIG_IGN);
}

/// Whether a stopping signal arrived.
pub(crate) fn interrupted() -> bool {
    COUNT.load(Ordering::SeqCst) > 0
}

/// Record `sig` as received: `restore-interrupted`, exec'd by an
/// interrupted restore, carries on its signal.
pub(crate) fn set_received(sig: i32) {
    if STOPPING.contains(&sig) {
        let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
        COUNT.fetch_add(1, Ordering::SeqCst);
    }
}

/// The first stopping signal received (SIGINT if none: a caller asks only
/// after `interrupted()`).
pub(crate) fn received() -> i32 {
    match FIRST.load(Ordering::SeqCst) {
        0 => libc::SIGINT,
        s => s,
    }
}

pub(crate) fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The error of a command stopped by the signal received: `what` says
/// what was done about it (what was cleaned up, what goes on).
pub(crate) fn stopped(what: impl Into<String>) -> ApiError {
    ApiError {
        code: STOPPED,
        message: what.into(),
    }
}

pub(crate) fn is_stopped(e: &ApiError) -> bool {
    e.code == STOPPED
}

/// `interrupted by SIGTERM: ...` for a stopped command, else
/// `error: ...`, and the exit status that goes with it.
pub(crate) fn exit_status(e: &ApiError) -> (String, i32) {
    if is_stopped(e) {
        let sig = received();
        (
            format!("interrupted by {}: {}", name(sig), e.message),
            128 + sig,
        )
    } else {
        (format!("error: {}", e.message), 1)
    }
}

/// A notice when the signal is first acted on, for someone at a terminal
/// (unattended, the final line says it all).
pub(crate) fn notice(what: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let sig = name(received());
        let _ = writeln!(err, "\n{sig} received: {what} (again to exit at once)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_and_line() {
        let (line, code) = exit_status(&crate::api::err("no such backup"));
        assert_eq!((line.as_str(), code), ("error: no such backup", 1));
        assert!(!is_stopped(&crate::api::err("x")));
        set_received(libc::SIGTERM);
        set_received(libc::SIGINT);
        assert!(interrupted());
        let (line, code) = exit_status(&stopped("backup job aborted"));
        assert_eq!(line, "interrupted by SIGTERM: backup job aborted");
        assert_eq!(code, 143);
        assert_eq!((name(libc::SIGHUP), 128 + libc::SIGHUP), ("SIGHUP", 129));
    }
}
