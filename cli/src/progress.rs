//! Progress of a job: a bar on a terminal, a line now and then otherwise,
//! nothing with --quiet or --json.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) enum Progress {
    Bar(ProgressBar),
    Lines {
        label: String,
        last: Option<Instant>,
        last_done: u64,
        /// The latest numbers, printed or not.
        now: (u64, u64),
    },
    Silent,
}

impl Progress {
    pub(crate) fn new(label: &str, silent: bool) -> Progress {
        if silent {
            return Progress::Silent;
        }
        if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                label: label.to_string(),
                last: None,
                last_done: u64::MAX,
                now: (0, 0),
            }
        }
    }

    pub(crate) fn update(&mut self, done: u64, total: u64) {
        match self {
            Progress::Bar(b) => {
                b.set_length(total);
                b.set_position(done);
            }
            Progress::Lines {
                label,
                last,
                last_done,
                now,
            } => {
                *now = (done, total);
                // A line per second at most, and only when something moved.
                if total == 0
                    || last.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                    || *last_done == done
                {
                    return;
                }
                *last = Some(Instant::now());
                *last_done = done;
                let pct = (done * 100).checked_div(total).unwrap_or(0);
                println!("{label}: {done}/{total} bytes ({pct}%)");
                let _ = std::io::stdout().flush();
            }
            Progress::Silent => {}
        }
    }

    /// A display for work whose size the library does not report: a
    /// spinner with the elapsed time on a terminal, one line at the end
    /// otherwise.
    pub(crate) fn spinner(label: &str, silent: bool) -> Progress {
        if silent {
            return Progress::Silent;
        }
        if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(ProgressStyle::with_template("{prefix} {spinner} {elapsed}").unwrap());
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            Progress::Silent
        }
    }

    /// Leave the bar as it ended (complete on success) or as it stopped.
    pub(crate) fn finish(&mut self, ok: bool) {
        match self {
            Progress::Bar(b) => {
                if ok {
                    if let Some(len) = b.length() {
                        b.set_position(len);
                    }
                    b.finish();
                } else {
                    b.abandon();
                }
                // indicatif leaves the cursor after the bar.
                println!();
            }
            Progress::Lines { label, now, .. } if ok => {
                println!("{label}: {}/{} bytes, done", now.1, now.1)
            }
            _ => {}
        }
    }
}
