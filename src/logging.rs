//! What the library decided and why, through the `log` facade, set up the
//! way libvirt's own log is (`LIBVIRT_DEBUG`, `LIBVIRT_LOG_FILTERS`,
//! `LIBVIRT_LOG_OUTPUTS`), read once, at the first call into the library:
//!
//! - `LIBVIRT_BACKUP_DEBUG`: the level logged: `1`/`debug`, `2`/`info`,
//!   `3`/`warning`, `4`/`error`. Unset (and no filter): nothing is logged,
//!   so a quiet run prints nothing.
//! - `LIBVIRT_BACKUP_LOG_FILTERS`: space-separated `LEVEL:MATCH` pairs; a
//!   message whose module (`ops::create`, `store::catalog`, …) contains
//!   MATCH is logged from LEVEL up, whatever the default. `+` before the
//!   level is accepted and ignored, as libvirt's stack-trace flag.
//! - `LIBVIRT_BACKUP_LOG_OUTPUTS`: space-separated outputs, each
//!   optionally after `LEVEL:`: `stderr` (the default), `file:PATH`
//!   (appended to), `syslog[:IDENT]` or `journald` (a datagram to
//!   `/dev/log`, which the journal also reads).
//!
//! A line reads as libvirt's: `TIME: PID: LEVEL : MODULE: message`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, Once};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The crate's own prefix of a module path, left out of filters and lines.
const CRATE: &str = "libvirt_backup::";

/// Where lines go.
enum Output {
    Stderr(Level),
    File(Level, Mutex<File>),
    Syslog(Level, String, UnixDatagram),
}

struct Logger {
    default: Option<Level>,
    filters: Vec<(Level, String)>,
    outputs: Vec<Output>,
}

fn level_of(word: &str) -> Option<Level> {
    match word.trim_start_matches('+') {
        "1" | "debug" => Some(Level::Debug),
        "2" | "info" => Some(Level::Info),
        "3" | "warning" | "warn" => Some(Level::Warn),
        "4" | "error" => Some(Level::Error),
        _ => None,
    }
}

/// `LEVEL:MATCH` pairs; a malformed one is skipped (a log setting never
/// makes a call fail).
fn parse_filters(text: &str) -> Vec<(Level, String)> {
    text.split_whitespace()
        .filter_map(|f| {
            let (level, what) = f.split_once(':')?;
            Some((level_of(level)?, what.to_string()))
        })
        .collect()
}

fn parse_outputs(text: &str, default: Level) -> Vec<Output> {
    text.split_whitespace()
        .filter_map(|o| {
            let (level, rest) = match o.split_once(':') {
                Some((l, rest)) if level_of(l).is_some() => (level_of(l)?, rest),
                _ => (default, o),
            };
            let (kind, arg) = rest.split_once(':').unwrap_or((rest, ""));
            match kind {
                "stderr" => Some(Output::Stderr(level)),
                "file" if !arg.is_empty() => OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(arg)
                    .ok()
                    .map(|f| Output::File(level, Mutex::new(f))),
                "syslog" | "journald" => {
                    let ident = if arg.is_empty() { "libvirt-backup" } else { arg };
                    let sock = UnixDatagram::unbound().ok()?;
                    sock.connect("/dev/log").ok()?;
                    Some(Output::Syslog(level, ident.to_string(), sock))
                }
                _ => None,
            }
        })
        .collect()
}

impl Logger {
    fn from_env() -> Logger {
        let var = |n: &str| std::env::var(n).unwrap_or_default();
        let default = level_of(var("LIBVIRT_BACKUP_DEBUG").trim());
        let filters = parse_filters(&var("LIBVIRT_BACKUP_LOG_FILTERS"));
        let lowest = filters
            .iter()
            .map(|f| f.0)
            .chain(default)
            .max()
            .unwrap_or(Level::Error);
        let mut outputs = parse_outputs(&var("LIBVIRT_BACKUP_LOG_OUTPUTS"), lowest);
        if outputs.is_empty() {
            outputs.push(Output::Stderr(lowest));
        }
        Logger {
            default,
            filters,
            outputs,
        }
    }

    /// The most verbose level anything may log: the facade's cut-off.
    fn max_level(&self) -> LevelFilter {
        self.filters
            .iter()
            .map(|f| f.0)
            .chain(self.default)
            .max()
            .map_or(LevelFilter::Off, |l| l.to_level_filter())
    }

    /// The level a module logs from: the first filter it matches, else the
    /// default.
    fn level_for(&self, target: &str) -> Option<Level> {
        let module = target.strip_prefix(CRATE).unwrap_or(target);
        self.filters
            .iter()
            .find(|(_, m)| module.contains(m.as_str()))
            .map(|f| f.0)
            .or(self.default)
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        self.level_for(m.target()).is_some_and(|l| m.level() <= l)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let module = r.target().strip_prefix(CRATE).unwrap_or(r.target());
        let level = match r.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug | Level::Trace => "debug",
        };
        let text = format!("{level} : {module}: {}", r.args());
        for o in &self.outputs {
            match o {
                Output::Stderr(max) if r.level() <= *max => {
                    let _ = writeln!(std::io::stderr(), "{}: {text}", stamp());
                }
                Output::File(max, f) if r.level() <= *max => {
                    if let Ok(mut f) = f.lock() {
                        let _ = writeln!(f, "{}: {text}", stamp());
                    }
                }
                Output::Syslog(max, ident, sock) if r.level() <= *max => {
                    syslog(sock, ident, r.level(), &text)
                }
                _ => {}
            }
        }
    }

    fn flush(&self) {}
}

/// One message in the syslog protocol (facility daemon).
fn syslog(sock: &UnixDatagram, ident: &str, level: Level, text: &str) {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    let line = format!("<{}>{ident}[{}]: {text}", 3 * 8 + severity, std::process::id());
    let _ = sock.send(line.as_bytes());
}

/// `2026-12-06 20:52:03.123+0000: 4242`, libvirt's line head.
fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}+0000: {}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis(),
        std::process::id()
    )
}

/// The calendar date of a day count since 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Set the log up from the environment, once per process; later calls do
/// nothing. A process that installed its own `log` logger first keeps it.
pub(crate) fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let logger = Logger::from_env();
        let max = logger.max_level();
        if max != LevelFilter::Off && log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(max);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_levels_read_as_libvirt_writes_them() {
        let l = Logger {
            default: level_of("3"),
            filters: parse_filters("1:ops::create +2:store bogus 9:x"),
            outputs: Vec::new(),
        };
        assert_eq!(l.filters.len(), 2);
        assert_eq!(l.level_for("libvirt_backup::ops::create"), Some(Level::Debug));
        assert_eq!(l.level_for("libvirt_backup::store::catalog"), Some(Level::Info));
        assert_eq!(l.level_for("libvirt_backup::image::disk"), Some(Level::Warn));
        assert_eq!(l.max_level(), LevelFilter::Debug);
        let quiet = Logger {
            default: None,
            filters: Vec::new(),
            outputs: Vec::new(),
        };
        assert_eq!(quiet.max_level(), LevelFilter::Off);
        assert_eq!(quiet.level_for("libvirt_backup::ops"), None);
    }

    #[test]
    fn outputs_take_an_optional_level() {
        let o = parse_outputs("stderr 4:stderr nonsense file:", Level::Info);
        assert!(matches!(o[..], [Output::Stderr(Level::Info), Output::Stderr(Level::Error)]));
    }

    #[test]
    fn line_head_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_428), (2025, 12, 6));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
