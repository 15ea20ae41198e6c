//! Progress of a job: a bar on a terminal (and one per disk when the job
//! reports its disks), a line now and then otherwise (with each disk's
//! percentage), nothing with --quiet or --json.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::{self, Param};

/// One disk's figures: name, bytes to examine, examined.
pub(crate) type DiskFigures = (String, u64, u64);

pub(crate) enum Progress {
    Bar {
        multi: MultiProgress,
        total: ProgressBar,
        /// One per disk, under the total, once the job has said its disks.
        disks: Vec<ProgressBar>,
    },
    Lines {
        label: String,
        last: Option<Instant>,
        last_done: u64,
        /// The latest numbers, printed or not.
        now: (u64, u64),
        /// The latest per-disk figures, printed with the next line.
        disks: Vec<DiskFigures>,
    },
    Silent,
}

/// The `disk.<i>.*` parameters of a backup job, in its disk order.
pub(crate) fn disk_figures(params: &[(String, Param)]) -> Vec<DiskFigures> {
    let mut out = Vec::new();
    while let Some(Param::Str(name)) = api::param(params, &format!("disk.{}.name", out.len())) {
        let i = out.len();
        let get = |k: &str| {
            api::param(params, &format!("disk.{i}.bytes.{k}"))
                .and_then(Param::as_u64)
                .unwrap_or(0)
        };
        out.push((name.clone(), get("total"), get("processed")));
    }
    out
}

/// A bar drawn under `multi` (on stdout) in `template`.
fn bar_in(multi: &MultiProgress, len: Option<u64>, template: &str, prefix: &str) -> ProgressBar {
    let bar = multi.add(ProgressBar::with_draw_target(
        len,
        ProgressDrawTarget::hidden(),
    ));
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// A disk's bar: its name, a bar, its percentage and bytes.
const DISK_TEMPLATE: &str =
    "  {prefix:<8} [{bar:30.green/blue}] {percent:>3}% {bytes}/{total_bytes}";

impl Progress {
    pub(crate) fn new(label: &str, silent: bool) -> Progress {
        if silent {
            return Progress::Silent;
        }
        if std::io::stdout().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let total = bar_in(
                &multi,
                Some(0),
                "{prefix} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                label,
            );
            total.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar {
                multi,
                total,
                disks: Vec::new(),
            }
        } else {
            Progress::Lines {
                label: label.to_string(),
                last: None,
                last_done: u64::MAX,
                now: (0, 0),
                disks: Vec::new(),
            }
        }
    }

    /// Each disk's figures (`disk_figures`): a bar per disk on a terminal,
    /// made the first time; a note for the next line otherwise.
    pub(crate) fn update_disks(&mut self, figures: Vec<DiskFigures>) {
        match self {
            Progress::Bar { multi, disks, .. } => {
                if disks.is_empty() {
                    for (name, total, _) in &figures {
                        disks.push(bar_in(multi, Some(*total), DISK_TEMPLATE, name));
                    }
                }
                for (bar, (_, total, done)) in disks.iter().zip(&figures) {
                    bar.set_length(*total);
                    bar.set_position(*done);
                }
            }
            Progress::Lines { disks, .. } => *disks = figures,
            Progress::Silent => {}
        }
    }

    pub(crate) fn update(&mut self, done: u64, total: u64) {
        match self {
            Progress::Bar { total: b, .. } => {
                b.set_length(total);
                b.set_position(done);
            }
            Progress::Lines {
                label,
                last,
                last_done,
                now,
                disks,
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
                let pct = |done: u64, total: u64| (done * 100).checked_div(total).unwrap_or(0);
                let per_disk: Vec<String> = (disks.iter())
                    .map(|(name, total, done)| format!("{name} {}%", pct(*done, *total)))
                    .collect();
                let per_disk = match per_disk.is_empty() {
                    true => String::new(),
                    false => format!(" [{}]", per_disk.join(", ")),
                };
                println!(
                    "{label}: {done}/{total} bytes ({}%){per_disk}",
                    pct(done, total)
                );
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
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let total = bar_in(&multi, None, "{prefix} {spinner} {elapsed}", label);
            total.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar {
                multi,
                total,
                disks: Vec::new(),
            }
        } else {
            Progress::Silent
        }
    }

    /// Leave the bar as it ended (complete on success) or as it stopped.
    pub(crate) fn finish(&mut self, ok: bool) {
        match self {
            Progress::Bar { total, disks, .. } => {
                for b in std::iter::once(&*total).chain(disks.iter()) {
                    if ok {
                        if let Some(len) = b.length() {
                            b.set_position(len);
                        }
                        b.finish();
                    } else {
                        b.abandon();
                    }
                }
                // indicatif leaves the cursor after the bars.
                println!();
            }
            Progress::Lines { label, now, .. } if ok => {
                println!("{label}: {}/{} bytes, done", now.1, now.1)
            }
            _ => {}
        }
    }
}
