//! Which backups a retention policy keeps, with the rules of Proxmox Backup
//! Server's prune options: the options run in the order keep-last,
//! keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly, over
//! the backups newest first.
//! keep-last keeps the N newest. Each period option then keeps the newest
//! backup of each of the last N periods (hour, day, ISO week, month, year in
//! local time)
//! that have backups, skipping periods that already hold a backup kept by an
//! earlier option and backups an earlier option already decided about; the
//! other backups of a period it covered are removed. Whatever no option kept
//! is removed. As in Proxmox Backup Server, a policy in which no option keeps
//! anything (every N is 0) keeps every backup instead of none.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Policy {
    pub keep_last: usize,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
    pub keep_yearly: usize,
}

impl Policy {
    /// Whether some option keeps a backup (Proxmox Backup Server's
    /// `keeps_something`). A policy that keeps nothing keeps everything.
    pub(crate) fn keeps_something(&self) -> bool {
        self.keep_last > 0
            || self.keep_hourly > 0
            || self.keep_daily > 0
            || self.keep_weekly > 0
            || self.keep_monthly > 0
            || self.keep_yearly > 0
    }
}

/// Whether a selection (`select`'s result) removes every backup it was given
/// (and there was one): such a prune needs `--force`.
pub(crate) fn removes_all(keep: &[bool]) -> bool {
    !keep.is_empty() && keep.iter().all(|k| !*k)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// The period a timestamp falls in, in local time (`period_key` in tests
/// takes UTC so that results do not depend on the machine's zone).
pub(crate) fn local_period(t: i64, p: Period) -> String {
    period_key(t, p, false)
}

pub(crate) fn period_key(t: i64, p: Period, utc: bool) -> String {
    let fmt = match p {
        Period::Hour => c"%Y/%m/%d/%H",
        Period::Day => c"%Y/%m/%d",
        Period::Week => c"%G/%V",
        Period::Month => c"%Y/%m",
        Period::Year => c"%Y",
    };
    let time = t as libc::time_t;
    // SAFETY: libc::tm is a plain C struct (ints and a pointer) for which
    // all zeroes is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; the _r variants are
    // thread-safe.
    unsafe {
        if utc {
            libc::gmtime_r(&time, &mut tm);
        } else {
            libc::localtime_r(&time, &mut tm);
        }
    }
    let mut buf = [0u8; 32];
    // SAFETY: strftime writes at most `buf.len()` bytes into `buf`, from a
    // static C format and a filled `tm`, and returns how many.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            fmt.as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mark {
    Keep,
    Remove,
}

/// Mark up to `keep` selections (`select` names the period of a backup).
fn mark_selections(
    marks: &mut HashMap<usize, Mark>,
    newest_first: &[(usize, i64)],
    keep: usize,
    select: impl Fn(usize, i64) -> String,
) {
    let already: HashSet<String> = newest_first
        .iter()
        .filter(|(i, _)| marks.get(i) == Some(&Mark::Keep))
        .map(|&(i, t)| select(i, t))
        .collect();
    let mut included = HashSet::new();
    for &(i, t) in newest_first {
        if marks.contains_key(&i) {
            continue;
        }
        let id = select(i, t);
        if already.contains(&id) {
            continue;
        }
        if included.contains(&id) {
            marks.insert(i, Mark::Remove);
        } else {
            if included.len() >= keep {
                break;
            }
            included.insert(id.clone());
            marks.insert(i, Mark::Keep);
        }
    }
}

/// For backups given as (creation time, order among equal times), which to
/// keep: a vector of the same length. `period` names the period of a time.
/// A policy that keeps nothing keeps them all.
pub(crate) fn select(
    times: &[i64],
    policy: &Policy,
    period: impl Fn(i64, Period) -> String,
) -> Vec<bool> {
    if !policy.keeps_something() {
        return vec![true; times.len()];
    }
    let mut order: Vec<(usize, i64)> = times.iter().copied().enumerate().collect();
    // Newest first; among equal times the later in the list is newer.
    order.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut marks = HashMap::new();
    mark_selections(&mut marks, &order, policy.keep_last, |i, _| i.to_string());
    for (n, p) in [
        (policy.keep_hourly, Period::Hour),
        (policy.keep_daily, Period::Day),
        (policy.keep_weekly, Period::Week),
        (policy.keep_monthly, Period::Month),
        (policy.keep_yearly, Period::Year),
    ] {
        if n > 0 {
            mark_selections(&mut marks, &order, n, |_, t| period(t, p));
        }
    }
    (0..times.len())
        .map(|i| marks.get(&i) == Some(&Mark::Keep))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86400;
    // 2026-01-05 (a Monday) 12:00 UTC.
    const MON: i64 = 1_767_614_400;

    fn utc(t: i64, p: Period) -> String {
        period_key(t, p, true)
    }

    fn kept(times: &[i64], p: Policy) -> Vec<usize> {
        select(times, &p, utc)
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn period_keys() {
        assert_eq!(utc(MON, Period::Day), "2026/01/05");
        assert_eq!(utc(MON, Period::Week), "2026/02");
        assert_eq!(utc(MON - DAY, Period::Week), "2026/01");
        assert_eq!(utc(MON, Period::Month), "2026/01");
        // ISO week of 2021-01-01 belongs to 2020.
        assert_eq!(utc(1_609_459_200, Period::Week), "2020/53");
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let times = [MON, MON + 10, MON + 20, MON + 30];
        let p = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        assert_eq!(kept(&times, p), vec![2, 3]);
        // The list order does not matter, only the times.
        let times = [MON + 30, MON, MON + 20, MON + 10];
        assert_eq!(kept(&times, p), vec![0, 2]);
    }

    #[test]
    fn daily_skips_days_already_kept_and_counts_days_with_backups() {
        // Two backups a day for five days (morning, evening), plus a gap day.
        let mut times = Vec::new();
        for d in [0, 1, 2, 4, 5] {
            times.push(MON + d * DAY - 3600 * 4);
            times.push(MON + d * DAY + 3600 * 4);
        }
        let p = Policy {
            keep_last: 1,
            keep_daily: 3,
            ..Policy::default()
        };
        // keep-last takes day 5's evening (index 9); day 5 is then covered,
        // so daily keeps the evenings of days 4, 2 and 1 (day 3 had none).
        assert_eq!(kept(&times, p), vec![3, 5, 7, 9]);
    }

    #[test]
    fn weekly_and_monthly_look_only_at_older_backups() {
        // One backup per day for 40 days.
        let times: Vec<i64> = (0..40).map(|d| MON + d * DAY).collect();
        let p = Policy {
            keep_last: 2,
            keep_daily: 3,
            keep_weekly: 2,
            keep_monthly: 2,
            ..Policy::default()
        };
        let k = kept(&times, p);
        // Day 0 is Mon 2026-01-05 (ISO week 2), day 39 Fri 2026-02-13
        // (week 7, which starts with day 35), day 27 is Sun 2026-02-01.
        // last: 39, 38. daily: 37, 36, 35. weekly: week 7 is covered, so
        // day 34 (week 6) and day 27 (week 5); the rest of weeks 6 and 5,
        // down to day 21, is marked removed on the way. monthly: February is
        // covered; the newest backup of January not yet decided is day 20.
        assert_eq!(k, vec![20, 27, 34, 35, 36, 37, 38, 39]);
    }

    #[test]
    fn nothing_but_keep_last_removes_the_rest() {
        let times: Vec<i64> = (0..5).map(|d| MON + d * DAY).collect();
        let p = Policy {
            keep_last: 5,
            ..Policy::default()
        };
        assert_eq!(kept(&times, p), vec![0, 1, 2, 3, 4]);
        let p = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        assert_eq!(kept(&times, p), vec![3, 4]);
    }

    #[test]
    fn a_policy_that_keeps_nothing_keeps_everything() {
        // As Proxmox Backup Server: every N at 0 is no policy, not "remove all".
        let times: Vec<i64> = (0..5).map(|d| MON + d * DAY).collect();
        for p in [
            Policy::default(),
            Policy {
                keep_last: 0,
                keep_hourly: 0,
                keep_daily: 0,
                keep_weekly: 0,
                keep_monthly: 0,
                keep_yearly: 0,
            },
        ] {
            assert!(!p.keeps_something());
            assert_eq!(kept(&times, p), vec![0, 1, 2, 3, 4]);
            assert!(!removes_all(&select(&times, &p, utc)));
        }
        assert!(kept(&[], Policy::default()).is_empty());
        // Any single option at 1 keeps something, hence at least one backup.
        for p in [
            Policy {
                keep_last: 1,
                ..Policy::default()
            },
            Policy {
                keep_daily: 1,
                ..Policy::default()
            },
            Policy {
                keep_weekly: 1,
                ..Policy::default()
            },
            Policy {
                keep_monthly: 1,
                ..Policy::default()
            },
            Policy {
                keep_hourly: 1,
                ..Policy::default()
            },
            Policy {
                keep_yearly: 1,
                ..Policy::default()
            },
        ] {
            assert!(p.keeps_something());
            assert_eq!(kept(&times, p), vec![4]);
        }
    }

    #[test]
    fn removing_every_backup_is_told_apart() {
        assert!(removes_all(&[false]));
        assert!(removes_all(&[false, false, false]));
        assert!(!removes_all(&[false, true, false]));
        assert!(!removes_all(&[true]));
        // Nothing to remove is not removing everything.
        assert!(!removes_all(&[]));
    }

    #[test]
    fn hourly_and_yearly_periods() {
        // Four backups an hour apart, then one a year and a day later.
        let mut times: Vec<i64> = (0..4).map(|h| MON + h * 3600).collect();
        times.push(MON + 366 * DAY);
        let p = Policy {
            keep_hourly: 2,
            ..Policy::default()
        };
        // The newest (next year) and the newest hour before it.
        assert_eq!(kept(&times, p), vec![3, 4]);
        let p = Policy {
            keep_yearly: 5,
            ..Policy::default()
        };
        assert_eq!(kept(&times, p), vec![3, 4]);
        assert_eq!(utc(MON, Period::Hour), "2026/01/05/12");
        assert_eq!(utc(MON, Period::Year), "2026");
    }
}
