//! What a job did, for someone reading the journal after a timer ran it:
//! one syslog line when a job starts, one when it ends (completed with the
//! backup's UUID, kind and bytes; failed with the error; interrupted by a
//! signal with what was cleaned up), and the error of any other command
//! that fails.
//!
//! Lines go to the journal when standard error is not a terminal (a timer,
//! a service, cron), or always with `--log syslog`, never with
//! `--log stderr` (also `VIRT_BACKUP_LOG=auto|syslog|stderr`). Each is one
//! datagram to `/dev/log` (`VIRT_BACKUP_SYSLOG_SOCKET` names another
//! socket, for tests), RFC 3164 style as the library's own syslog output
//! writes them: `<PRI>virt-backup[PID]: MESSAGE`, facility daemon, so that
//! `journalctl -t virt-backup` shows the command's lines and the library's
//! together.
//!
//! The API, for every command that runs jobs:
//!
//! - `job_started(kind, domain)`: `create vm1: started` (info).
//! - `job_ended(kind, domain, uuid, result)`: `result` is `Ok(summary)`
//!   (`backup_summary` makes the usual one) or the command's error:
//!   `create vm1: completed: backup UUID (incremental, 1048576 bytes
//!   written)` (info), `create vm1: failed: backup UUID: MESSAGE` (err),
//!   `create vm1: interrupted by SIGTERM: MESSAGE` (warning; the message
//!   says what was cleaned up).
//! - `command_failed(line)`: the final error line of a command, sent only
//!   when no `job_ended` reported a failure already.
//!
//! `setup` (in `main`, before the first call into the library) decides
//! whether lines are sent and points the library's own log at the journal
//! too (`LIBVIRT_BACKUP_LOG_OUTPUTS=syslog:virt-backup` at level warning,
//! or at `--log-level`), unless the user set the library's log variables.

use std::io::IsTerminal;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::api::ApiError;
use crate::signals;

/// Where the job lines and the library's log go.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum LogMode {
    /// The journal when standard error is not a terminal
    Auto,
    /// Always the journal (syslog)
    Syslog,
    /// Never the journal: the library logs to standard error
    Stderr,
}

/// The library's log level (`LIBVIRT_BACKUP_DEBUG`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl LogLevel {
    fn word(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

pub(crate) const SOCKET_VAR: &str = "VIRT_BACKUP_SYSLOG_SOCKET";
pub(crate) const MODE_VAR: &str = "VIRT_BACKUP_LOG";
const IDENT: &str = "virt-backup";
/// Facility daemon, as the library's syslog output.
const FACILITY: u8 = 3;
const ERR: u8 = 3;
const WARNING: u8 = 4;
const INFO: u8 = 6;

/// Whether lines are sent.
static ON: AtomicBool = AtomicBool::new(false);
/// Whether a `job_ended` reported a failure.
static FAILURE_SENT: AtomicBool = AtomicBool::new(false);

/// The mode given, else `VIRT_BACKUP_LOG`'s, else auto.
fn mode_of(given: Option<LogMode>) -> LogMode {
    use clap::ValueEnum;
    given
        .or_else(|| {
            let v = std::env::var(MODE_VAR).ok()?;
            LogMode::from_str(v.trim(), true).ok()
        })
        .unwrap_or(LogMode::Auto)
}

/// Decide where lines go and set the library's log variables; call before
/// any other thread exists and before the first call into the library
/// (which reads them once).
pub(crate) fn setup(mode: Option<LogMode>, level: Option<LogLevel>) {
    let on = match mode_of(mode) {
        LogMode::Auto => !std::io::stderr().is_terminal(),
        LogMode::Syslog => true,
        LogMode::Stderr => false,
    };
    ON.store(on, Ordering::SeqCst);
    let set = |v: &str| std::env::var_os(v).is_some();
    let user_log = set("LIBVIRT_BACKUP_DEBUG") || set("LIBVIRT_BACKUP_LOG_FILTERS");
    let user_outputs = set("LIBVIRT_BACKUP_LOG_OUTPUTS");
    // SAFETY: called from `main` before any other thread exists (see above),
    // so nothing reads the environment while it changes.
    unsafe {
        if let Some(l) = level {
            std::env::set_var("LIBVIRT_BACKUP_DEBUG", l.word());
        }
        if on && !user_outputs && (level.is_some() || !user_log) {
            std::env::set_var("LIBVIRT_BACKUP_LOG_OUTPUTS", format!("syslog:{IDENT}"));
            if level.is_none() {
                std::env::set_var("LIBVIRT_BACKUP_DEBUG", "warning");
            }
        }
    }
}

/// `<PRI>virt-backup[PID]: TEXT` (on one line).
fn format_line(severity: u8, text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "<{}>{IDENT}[{}]: {}",
        FACILITY * 8 + severity,
        std::process::id(),
        text.trim()
    )
}

/// One datagram; a journal that is not there loses the line, quietly.
fn send(severity: u8, text: &str) {
    if !ON.load(Ordering::SeqCst) {
        return;
    }
    let path = std::env::var_os(SOCKET_VAR).unwrap_or_else(|| "/dev/log".into());
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(format_line(severity, text).as_bytes(), path);
    }
}

/// `KIND DOMAIN: started`.
pub(crate) fn job_started(kind: &str, domain: &str) {
    send(INFO, &format!("{kind} {domain}: started"));
}

/// `full, 1048576 bytes written`: a backup's usual summary.
pub(crate) fn backup_summary(backup_kind: &str, bytes_written: u64) -> String {
    format!("{backup_kind}, {bytes_written} bytes written")
}

/// The end of a job: `result` is `Ok(summary)` ("" for none) or the error
/// the command ends with (a `signals::stopped` one: interrupted).
pub(crate) fn job_ended(
    kind: &str,
    domain: &str,
    uuid: Option<&str>,
    result: Result<&str, &ApiError>,
) {
    let (severity, text) = ended_line(kind, domain, uuid, result);
    if severity != INFO {
        FAILURE_SENT.store(true, Ordering::SeqCst);
    }
    send(severity, &text);
}

fn ended_line(
    kind: &str,
    domain: &str,
    uuid: Option<&str>,
    result: Result<&str, &ApiError>,
) -> (u8, String) {
    let backup = uuid.map(|u| format!(": backup {u}")).unwrap_or_default();
    match result {
        Ok("") => (INFO, format!("{kind} {domain}: completed{backup}")),
        Ok(s) if uuid.is_some() => (INFO, format!("{kind} {domain}: completed{backup} ({s})")),
        Ok(s) => (INFO, format!("{kind} {domain}: completed: {s}")),
        Err(e) if signals::is_stopped(e) => (
            WARNING,
            // The message names the backup when there is one.
            format!(
                "{kind} {domain}: interrupted by {}: {}",
                signals::name(signals::received()),
                e.message
            ),
        ),
        Err(e) => (
            ERR,
            format!("{kind} {domain}: failed{backup}: {}", e.message),
        ),
    }
}

/// The final error line of a command (`error: ...`), unless a job's end
/// already told the journal.
pub(crate) fn command_failed(line: &str) {
    if !FAILURE_SENT.load(Ordering::SeqCst) {
        send(ERR, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let pid = std::process::id();
        assert_eq!(
            format_line(INFO, "create vm1: started\n"),
            format!("<30>virt-backup[{pid}]: create vm1: started")
        );
        assert_eq!(
            format_line(ERR, "a\nb"),
            format!("<27>virt-backup[{pid}]: a b")
        );
        let s = backup_summary("full", 42);
        assert_eq!(
            ended_line("create", "vm1", Some("u-1"), Ok(&s)),
            (
                INFO,
                "create vm1: completed: backup u-1 (full, 42 bytes written)".into()
            )
        );
        assert_eq!(
            ended_line("prune", "vm1", None, Ok("2 removed, 3 kept")),
            (INFO, "prune vm1: completed: 2 removed, 3 kept".into())
        );
        let e = crate::api::err("disk 'vdz' not found");
        assert_eq!(
            ended_line("create", "vm1", None, Err(&e)),
            (ERR, "create vm1: failed: disk 'vdz' not found".into())
        );
    }
}
