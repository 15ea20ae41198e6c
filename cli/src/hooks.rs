//! The commands a policy runs around a backup (hooks) and after a run
//! (notifications): each through `/bin/sh -c`, in a process group of its
//! own so that a timeout or an interrupt ends all it started, with its
//! output kept for the report.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a command ended when it did not succeed, with the end of what it
/// printed (standard error, else standard output).
fn failure(what: &str, how: String, out: &[u8], err: &[u8]) -> String {
    let text = if err.iter().any(|b| !b.is_ascii_whitespace()) {
        err
    } else {
        out
    };
    let text = String::from_utf8_lossy(text);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!("{what} {how}: {}", line.trim()),
        None => format!("{what} {how}"),
    }
}

/// Read a pipe to its end on a thread of its own, so that a command that
/// fills one pipe does not block while we wait on the other.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Run `cmd` with `env` added to ours and `input` on its standard input;
/// kill its process group after `timeout` or when `stop` says so.
/// `what` names it in the error ("pre-hook"). Ok: its standard output.
pub(crate) fn run(
    what: &str,
    cmd: &str,
    env: &[(&str, String)],
    input: Option<&str>,
    timeout: Duration,
    stop: impl Fn() -> bool,
) -> Result<Vec<u8>, String> {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(cmd).process_group(0);
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .spawn()
        .map_err(|e| format!("{what} '{cmd}' could not be started: {e}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A command that does not read its input is not a failure.
        let _ = stdin.write_all(text.as_bytes());
    }
    let start = Instant::now();
    let mut killed = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(format!("{what} '{cmd}': {e}")),
        }
        if killed.is_none() && (start.elapsed() >= timeout || stop()) {
            killed = Some(if stop() {
                "was interrupted"
            } else {
                "timed out"
            });
            // SAFETY: a plain kill of the group the child leads (its pid is
            // the group id: process_group(0)); no pointer.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if let Some(how) = killed {
        let how = if how == "timed out" {
            format!("timed out after {} s and was killed", timeout.as_secs())
        } else {
            how.to_string()
        };
        return Err(failure(what, how, &out, &err));
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(out),
        (Some(n), _) => Err(failure(
            what,
            format!("failed (exit status {n})"),
            &out,
            &err,
        )),
        (None, Some(s)) => Err(failure(
            what,
            format!("was killed by signal {s}"),
            &out,
            &err,
        )),
        (None, None) => Err(failure(what, "failed".into(), &out, &err)),
    }
}

/// Mail `body` to `to` through `sendmail -t` (the addresses are in the
/// header, so none is ever read as an option).
pub(crate) fn mail(
    sendmail: &Path,
    to: &[String],
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    let message = format!(
        "To: {}\nSubject: {}\nContent-Type: text/plain; charset=utf-8\n\n{body}",
        to.iter().map(|t| clean(t)).collect::<Vec<_>>().join(", "),
        clean(subject)
    );
    let cmd = format!("exec {} -t -oi", shell_quote(&sendmail.to_string_lossy()));
    run(
        "sendmail",
        &cmd,
        &[],
        Some(&message),
        Duration::from_secs(120),
        || false,
    )
    .map(drop)
}

/// `s` as one word for `/bin/sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(cmd: &str, env: &[(&str, String)], input: Option<&str>) -> Result<Vec<u8>, String> {
        run("hook", cmd, env, input, Duration::from_secs(5), || false)
    }

    #[test]
    fn a_hook_sees_its_environment_and_input() {
        let env = [("VIRT_BACKUP_DOMAIN", "vm 1".to_string())];
        let out = quick(
            "printf '%s|' \"$VIRT_BACKUP_DOMAIN\"; cat",
            &env,
            Some("report"),
        )
        .unwrap();
        assert_eq!(out, b"vm 1|report");
    }

    #[test]
    fn failures_say_how_with_the_last_line_printed() {
        let e = quick("echo one >&2; echo 'cannot freeze' >&2; exit 3", &[], None).unwrap_err();
        assert_eq!(e, "hook failed (exit status 3): cannot freeze");
        let e = quick("echo only-stdout; exit 1", &[], None).unwrap_err();
        assert_eq!(e, "hook failed (exit status 1): only-stdout");
        let e = quick("kill -TERM $$", &[], None).unwrap_err();
        assert_eq!(e, "hook was killed by signal 15");
        let e = run(
            "hook",
            "sleep 30",
            &[],
            None,
            Duration::from_millis(300),
            || false,
        )
        .unwrap_err();
        assert!(e.starts_with("hook timed out after 0 s"), "{e}");
    }

    #[test]
    fn a_timeout_kills_what_the_hook_started_too() {
        let dir = std::env::temp_dir().join(format!("vb-hook-{}", std::process::id()));
        let flag = dir.with_extension("flag");
        let cmd = format!("(sleep 1; touch {}) & wait", flag.display());
        let start = Instant::now();
        assert!(
            run("hook", &cmd, &[], None, Duration::from_millis(200), || {
                false
            })
            .is_err()
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(1300));
        assert!(!flag.exists(), "the hook's child outlived the timeout");
    }

    #[test]
    fn quoting_survives_the_shell() {
        let q = shell_quote("it's a path");
        let out = quick(&format!("printf %s {q}"), &[], None).unwrap();
        assert_eq!(out, b"it's a path");
    }
}
