//! `virt-backup prune`, and the same prune for `run`'s retention: which
//! completed backups of a domain a policy keeps (`prune::select`), then
//! the deletes, newest first.

use serde_json::json;
use virt::domain::Domain;

use crate::api::{Backup, err};
use crate::info::{self, BackupInfo};
use crate::{Ctx, PruneArgs, Res, info_of};

/// What a prune kept and removed (UUIDs, oldest first).
pub(crate) struct Pruned {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    /// The policy kept nothing, so everything was kept.
    pub keep_all: bool,
}

/// Apply `policy` to the completed backups of `dom` (`name` in messages);
/// with `dry_run` only decide. `show` receives each decision as it is
/// made ("keep"/"remove", the backup).
pub(crate) fn prune_domain(
    dom: &Domain,
    name: &str,
    policy: &crate::prune::Policy,
    dry_run: bool,
    force: bool,
    mut show: impl FnMut(bool, &BackupInfo),
) -> Res<Pruned> {
    let mut items = Vec::new();
    for b in Backup::list(dom, 0)? {
        let i = info_of(&b)?;
        if i.state == "completed" {
            items.push((b, i));
        }
    }
    // Oldest first: equal times keep the list's order.
    items.sort_by_key(|(_, i)| i.creation_time);
    let times: Vec<i64> = items.iter().map(|(_, i)| i.creation_time).collect();
    let keep = crate::prune::select(&times, policy, crate::prune::local_period);
    // A safety net under the selection: never every backup without --force.
    if crate::prune::removes_all(&keep) && !force {
        return Err(err(format!(
            "this prune would remove all {} backups of {name} and keep none: refused \
             (give --force to remove them all)",
            items.len()
        )));
    }
    let mut out = Pruned {
        kept: Vec::new(),
        removed: Vec::new(),
        keep_all: !policy.keeps_something(),
    };
    for ((_, i), k) in items.iter().zip(&keep) {
        show(*k, i);
        let list = if *k { &mut out.kept } else { &mut out.removed };
        list.push(i.uuid.clone());
    }
    if !dry_run {
        crate::journal::job_started("prune", name);
        let r = delete_unkept(&items, &keep);
        let done = format!("{} removed, {} kept", out.removed.len(), out.kept.len());
        crate::journal::job_ended("prune", name, None, r.as_ref().map(|_| done.as_str()));
        r?;
    }
    Ok(out)
}

/// Delete what `keep` does not keep, newest first: each delete merges the
/// backup into its children, so a kept child is rebased step by step
/// instead of made full each time. A signal stops it between two deletes.
fn delete_unkept(items: &[(Backup, BackupInfo)], keep: &[bool]) -> Res<()> {
    let total = keep.iter().filter(|k| !**k).count();
    let mut deleted = 0;
    for ((b, i), k) in items.iter().zip(keep).rev() {
        if *k {
            continue;
        }
        if crate::interrupted() {
            return Err(crate::signals::stopped(format!(
                "prune stopped after deleting {deleted} of {total} backups \
                 (each delete done is whole; the others are kept)"
            )));
        }
        b.delete(0)
            .map_err(|e| err(format!("cannot delete backup {}: {}", i.uuid, e.message)))?;
        deleted += 1;
    }
    Ok(())
}

pub(crate) fn cmd_prune(ctx: &mut Ctx, a: &PruneArgs) -> Res<()> {
    let dom = ctx.domain(&a.domain)?;
    let policy = crate::prune::Policy {
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
    };
    let silent = ctx.silent();
    let p = prune_domain(&dom, &a.domain, &policy, a.dry_run, a.force, |k, i| {
        if !silent {
            println!(
                "{} {}  {}",
                if k { "keep  " } else { "remove" },
                i.uuid,
                info::local_time(i.creation_time)
            );
        }
    })?;
    // Proxmox's rule: no option keeps anything, so nothing is pruned.
    if p.keep_all {
        ctx.say(&format!(
            "no --keep-* option keeps a backup (all are 0): keeping all {} backups of {}",
            p.kept.len(),
            a.domain
        ));
    }
    ctx.print_json(json!({
        "keep": p.kept, "remove": p.removed, "dry_run": a.dry_run, "keep_all": p.keep_all,
    }));
    Ok(())
}
