//! `virt-backup run`: apply the configuration's policies (config.rs) to
//! the domains they cover: back up, verify, prune, one job per domain,
//! several domains at once up to `[run] parallel`; then a summary, the
//! notifications, and an exit status that says whether every domain went
//! well. One domain's work is in run_domain.rs.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;

use clap::Args;
use serde_json::json;
use virt::connect::Connect;

use crate::config::{self, Config, NotifyWhen};
use crate::run_domain::{self, Outcome, Report};
use crate::{Ctx, Res, err, hooks};

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Domains to back up now (names; each must be covered by a policy)
    #[arg(
        value_name = "DOMAIN",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    domains: Vec<String>,
    /// Every domain the policies cover
    #[arg(long)]
    all: bool,
    /// The configuration file
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Print what would be done (domain, policy, full or incremental and
    /// why) and do nothing
    #[arg(long)]
    dry_run: bool,
}

/// One domain to work on, as planned before any work starts.
pub(crate) struct Item {
    /// Index of its policy in the configuration.
    pub policy: usize,
    pub label: String,
    pub uri: Option<String>,
    pub domain: String,
    pub uuid: String,
    /// Why it cannot be worked on (a missing domain, a connection error).
    pub error: Option<String>,
}

fn failed_item(policy: usize, label: &str, uri: &Option<String>, domain: &str, e: String) -> Item {
    Item {
        policy,
        label: label.to_string(),
        uri: uri.clone(),
        domain: domain.to_string(),
        uuid: String::new(),
        error: Some(e),
    }
}

/// The domains of a connection, by (name, UUID).
fn domains_of(uri: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let conn = Connect::open(uri)
        .map_err(|e| format!("failed to connect to the hypervisor: {}", e.message()))?;
    let doms = conn
        .list_all_domains(0)
        .map_err(|e| format!("cannot list the domains: {}", e.message()))?;
    let mut out: Vec<(String, String)> = doms
        .iter()
        .filter_map(|d| Some((d.name().ok()?, d.uuid_string().ok()?)))
        .collect();
    out.sort();
    Ok(out)
}

/// Which domains the run covers, and under which policy: the first
/// policy that covers a domain is its policy.
fn plan(cfg: &Config, ctx_uri: &Option<String>, a: &RunArgs) -> Vec<Item> {
    let mut items = Vec::new();
    let mut taken = HashSet::new();
    let mut named: Vec<(&str, bool)> = a.domains.iter().map(|d| (d.as_str(), false)).collect();
    for (i, p) in cfg.policies.iter().enumerate() {
        let p = p.get_ref();
        let label = p.label(i + 1);
        let uri = p.connect.clone().or_else(|| ctx_uri.clone());
        let doms = match domains_of(uri.as_deref()) {
            Ok(d) => d,
            Err(e) => {
                if a.all {
                    items.push(failed_item(i, &label, &uri, "*", e));
                }
                continue;
            }
        };
        if a.all {
            for lit in p.domains.iter().filter(|d| config::is_literal(d)) {
                if !doms.iter().any(|(n, _)| n == lit) {
                    let e = format!("domain '{lit}' not found (policy {label})");
                    items.push(failed_item(i, &label, &uri, lit, e));
                }
            }
        }
        for (name, uuid) in &doms {
            let wanted = if a.all {
                true
            } else {
                match named
                    .iter_mut()
                    .find(|(n, done)| !*done && (n == name || n == uuid))
                {
                    Some(entry) if p.covers(name) => {
                        entry.1 = true;
                        true
                    }
                    _ => false,
                }
            };
            if wanted && p.covers(name) && taken.insert((uri.clone(), uuid.clone())) {
                items.push(Item {
                    policy: i,
                    label: label.clone(),
                    uri: uri.clone(),
                    domain: name.clone(),
                    uuid: uuid.clone(),
                    error: None,
                });
            }
        }
    }
    for (n, _) in named.iter().filter(|(_, done)| !*done) {
        let e =
            format!("no policy covers domain '{n}' (or it does not exist on their connections)");
        items.push(failed_item(0, "-", ctx_uri, n, e));
    }
    items
}

/// Work through `items`, `parallel` at a time; reports in `items`' order.
fn work(cfg: &Config, items: Vec<Item>, dry_run: bool, silent: bool) -> Vec<Report> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate().collect::<VecDeque<_>>());
    let reports: Mutex<Vec<Option<Report>>> = Mutex::new((0..n).map(|_| None).collect());
    let workers = cfg.run.parallel.min(n).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let Some((i, item)) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let r = run_domain::run(cfg, &item, dry_run);
                    if !silent {
                        println!("{}", r.line());
                    }
                    reports.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    reports
        .into_inner()
        .unwrap()
        .into_iter()
        .flatten()
        .collect()
}

/// The summary table (and each error in full below it).
fn summary(reports: &[Report]) -> String {
    let mut rows = vec![
        [
            "DOMAIN", "POLICY", "RESULT", "LEVEL", "BACKUP", "WRITTEN", "PRUNED", "VERIFIED",
            "TIME",
        ]
        .map(String::from),
    ];
    for r in reports {
        rows.push([
            r.domain.clone(),
            r.policy.clone(),
            r.outcome.word().to_string(),
            r.level.clone().unwrap_or_else(|| "-".into()),
            r.backup
                .as_deref()
                .map(|u| u[..8.min(u.len())].to_string())
                .unwrap_or("-".into()),
            if r.backup.is_some() {
                crate::output::human(Some(r.written))
            } else {
                "-".into()
            },
            r.pruned.len().to_string(),
            r.verified.len().to_string(),
            format!("{:.1}s", r.seconds),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap())
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    for r in reports.iter().filter(|r| r.error.is_some()) {
        out += &format!("\n{}: {}", r.domain, r.error.as_deref().unwrap_or(""));
    }
    if reports.iter().any(|r| r.error.is_some()) {
        out.push('\n');
    }
    out
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Tell whoever the configuration names, when it asks to be told.
fn notify(cfg: &Config, reports: &[Report], text: &str) -> Result<(), String> {
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .map(|r| r.domain.as_str())
        .collect();
    let n = &cfg.notify;
    let wanted = match n.when {
        NotifyWhen::Never => false,
        NotifyWhen::Always => true,
        NotifyWhen::Failure => !failed.is_empty(),
    };
    if !wanted {
        return Ok(());
    }
    let status = if failed.is_empty() { "ok" } else { "failed" };
    let subject = if failed.is_empty() {
        format!(
            "virt-backup on {}: {} domains backed up",
            host_name(),
            reports.len()
        )
    } else {
        format!(
            "virt-backup on {}: {} of {} domains FAILED ({})",
            host_name(),
            failed.len(),
            reports.len(),
            failed.join(", ")
        )
    };
    let mut errors = Vec::new();
    if let Some(cmd) = &n.command {
        let env = [
            ("VIRT_BACKUP_STATUS", status.to_string()),
            ("VIRT_BACKUP_SUBJECT", subject.clone()),
            ("VIRT_BACKUP_FAILED_DOMAINS", failed.join(" ")),
        ];
        let body = format!("{subject}\n\n{text}");
        let timeout = std::time::Duration::from_secs(120);
        if let Err(e) = hooks::run(
            "notification command",
            cmd,
            &env,
            Some(&body),
            timeout,
            || false,
        ) {
            errors.push(e);
        }
    }
    if !n.mail_to.is_empty() {
        let sendmail = n
            .sendmail
            .clone()
            .unwrap_or_else(|| "/usr/sbin/sendmail".into());
        if let Err(e) = hooks::mail(&sendmail, &n.mail_to, &subject, text) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

pub(crate) fn cmd_run(ctx: &mut Ctx, a: &RunArgs) -> Res<()> {
    let cfg = config::load(&a.config).map_err(err)?;
    let items = plan(&cfg, &ctx.uri, a);
    if items.is_empty() {
        return Err(err(format!(
            "the policies of '{}' cover no domain: nothing to do",
            a.config.display()
        )));
    }
    let reports = work(&cfg, items, a.dry_run, ctx.silent());
    let text = summary(&reports);
    if !ctx.silent() {
        print!("\n{text}");
    }
    let failed = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .count();
    let notified = if a.dry_run {
        Ok(())
    } else {
        notify(&cfg, &reports, &text)
    };
    ctx.print_json(json!({
        "ok": failed == 0 && notified.is_ok(),
        "dry_run": a.dry_run,
        "domains": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
        "notification_error": notified.as_ref().err(),
    }));
    if crate::interrupted() {
        return Err(crate::signals::stopped(format!(
            "run: the running jobs were aborted (their partial data removed), \
             the other domains not started; {failed} of {} domains not done",
            reports.len()
        )));
    }
    match (failed, notified) {
        (0, Ok(())) => Ok(()),
        (0, Err(e)) => Err(err(format!(
            "every domain went well, but the notification failed: {e}"
        ))),
        (n, Ok(())) => Err(err(format!("{n} of {} domains failed", reports.len()))),
        (n, Err(e)) => Err(err(format!(
            "{n} of {} domains failed, and the notification failed too: {e}",
            reports.len()
        ))),
    }
}
