//! `virt-backup create`: its options, the `<domainbackup>` document it
//! gives the library, and the job it follows.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use virt::domain::Domain;

use crate::api::{self, Backup, Param};
use crate::signals::{self, interrupted};
use crate::{Ctx, Res, domain_disks, err, info_of, journal, rate, report_to_parent, xml_escape};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Level {
    /// Incremental on the domain's latest completed backup, full when it has none
    Auto,
    /// Every disk copied in full
    Full,
    /// Incremental on the domain's latest backup (or on --parent)
    Incremental,
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Domain name, UUID or id
    domain: String,
    /// Back up this disk, and only the disks named so, optionally to a
    /// target file or storage pool (repeatable; default: every disk)
    #[arg(long = "disk", value_name = "NAME[=PATH|=pool:POOL]")]
    disks: Vec<String>,
    /// Back up every disk but this one (repeatable)
    #[arg(long = "exclude", value_name = "DISK", conflicts_with = "disks")]
    exclude: Vec<String>,
    /// Format of the target images
    #[arg(long, value_parser = ["qcow2", "raw"])]
    format: Option<String>,
    /// Store the qcow2 targets' clusters compressed: zstd (the default of
    /// --compress alone; read by QEMU 5.1 and later), zlib, or none
    #[arg(long, value_name = "TYPE", num_args = 0..=1, default_missing_value = "zstd",
          require_equals = true, value_parser = ["zstd", "zlib", "none"])]
    compress: Option<String>,
    /// Encrypt the qcow2 targets (LUKS, as QEMU reads them) with the value
    /// of this libvirt secret, named by its UUID or its usage id (an
    /// incremental keeps its parent's secret without this)
    #[arg(long, value_name = "UUID|USAGE", conflicts_with = "compress")]
    encrypt_secret: Option<String>,
    /// Encrypt the qcow2 targets with the key in FILE (its bytes as they
    /// are; a file of ours that only we may read, not a symlink),
    /// registered as a libvirt secret on the domain's connection, or found
    /// there when registered before
    #[arg(long, value_name = "FILE", conflicts_with_all = ["compress", "encrypt_secret"])]
    encrypt_key_file: Option<PathBuf>,
    /// full (default), incremental (on the latest backup), or auto
    /// (incremental when the domain has a completed backup, else full)
    #[arg(long, value_enum, value_name = "LEVEL", conflicts_with_all = ["incremental", "parent"])]
    level: Option<Level>,
    /// Incremental on top of this backup
    #[arg(long, value_name = "UUID", conflicts_with = "incremental")]
    parent: Option<String>,
    /// Same as --level incremental
    #[arg(long)]
    incremental: bool,
    /// Freeze the guest's file systems (guest agent)
    #[arg(long)]
    quiesce: bool,
    /// Fail rather than copy in full a disk whose parent is unusable
    #[arg(long)]
    no_fallback: bool,
    /// Return as soon as the job has started (print its UUID)
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// A description kept with the backup
    #[arg(long, value_name = "TEXT")]
    description: Option<String>,
    /// Read at most RATE bytes/s from all disks together, e.g. 100M, 1G (units: --help)
    #[arg(long, value_name = "RATE", value_parser = rate::parse_rate, long_help = rate::RATE_HELP)]
    rate: Option<u64>,
    /// Use this <domainbackup> document as is (a limit goes in its <bandwidth>)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["disks", "exclude", "format", "compress", "encrypt_secret", "encrypt_key_file", "parent", "incremental", "level", "description", "rate"])]
    xml: Option<PathBuf>,
}

/// What a create does: full or incremental (on `parent`), and why.
struct Plan {
    parent: Option<String>,
    reason: String,
}

impl Plan {
    fn level(&self) -> &'static str {
        if self.parent.is_some() {
            "incremental"
        } else {
            "full"
        }
    }
}

pub(crate) fn cmd_create(ctx: &mut Ctx, a: &CreateArgs) -> Res<()> {
    journal::job_started("create", &a.domain);
    let mut uuid = None;
    let r = create_job(ctx, a, &mut uuid);
    journal::job_ended("create", &a.domain, uuid.as_deref(), r.as_deref());
    r.map(drop)
}

/// `create`: the backup's summary for the journal, its UUID in `uuid` once
/// the job has started.
fn create_job(ctx: &mut Ctx, a: &CreateArgs, uuid_out: &mut Option<String>) -> Res<String> {
    let dom = ctx.domain(&a.domain)?;
    let key = match &a.encrypt_key_file {
        Some(f) => {
            let k = crate::keyfile::register(ctx.conn()?, f).map_err(err)?;
            ctx.say(&k.line(f));
            Some(k)
        }
        None => None,
    };
    let secret = key.as_ref().map(|k| k.uuid.as_str());
    let secret = secret.or(a.encrypt_secret.as_deref());
    let (xml, plan) = match &a.xml {
        Some(f) => {
            let x = std::fs::read_to_string(f)
                .map_err(|e| err(format!("cannot read '{}': {e}", f.display())))?;
            (x, None)
        }
        None => {
            let plan = plan(&dom, a)?;
            (create_xml(&dom, a, &plan, secret)?, Some(plan))
        }
    };
    let mut flags = 0;
    if a.quiesce {
        flags |= api::CREATE_QUIESCE;
    }
    if a.no_fallback {
        flags |= api::CREATE_NO_FALLBACK;
    }
    if interrupted() {
        return Err(signals::stopped("no backup job was started"));
    }
    let b = Backup::create(&dom, &xml, flags).map_err(crate::restore::in_cli_terms)?;
    let uuid = info_of(&b)?.uuid;
    *uuid_out = Some(uuid.clone());
    if a.no_wait {
        // In the detached process (see `detach`): hand the UUID to the
        // parent, then keep the job's thread alive until the job ends (a
        // signal aborts it), silently: its output goes nowhere now.
        report_to_parent(&format!("OK {uuid}"));
        ctx.quiet = true;
    }
    let r = crate::watch_job(ctx, &b, "backup", true);
    if interrupted() && r.is_err() {
        return Err(signals::stopped(format!(
            "backup job {uuid} aborted, its partial data removed"
        )));
    }
    r.map_err(crate::restore::in_cli_terms)?;
    report_done(ctx, &b, &uuid, plan.as_ref(), key.as_ref())
}

/// The line (or JSON document) of a completed backup; the journal's summary.
fn report_done(
    ctx: &Ctx,
    b: &Backup,
    uuid: &str,
    plan: Option<&Plan>,
    key: Option<&crate::keyfile::KeySecret>,
) -> Res<String> {
    let info = info_of(b)?;
    let written = b
        .parameters()
        .ok()
        .and_then(|p| api::param(&p, "bytes.written").and_then(Param::as_u64))
        .unwrap_or(0);
    let why = plan.map(|p| format!(": {}", p.reason)).unwrap_or_default();
    ctx.say(&format!(
        "Backup {uuid} completed ({}{why}, {written} bytes written)",
        info.kind()
    ));
    let mut j = info.to_json();
    j["bytes_written"] = written.into();
    if let Some(p) = plan {
        j["level"] = p.level().into();
        j["reason"] = p.reason.clone().into();
    }
    if let Some(k) = key {
        j["secret"] = k.to_json();
    }
    ctx.print_json(j);
    Ok(crate::journal::backup_summary(info.kind(), written))
}

/// The domain's newest completed backup, if any.
fn latest_completed(dom: &Domain) -> Res<Option<String>> {
    // The library's newest (by the nanosecond), when it is completed.
    if let Some(b) = Backup::list(dom, api::LIST_LATEST)?.first() {
        let i = info_of(b)?;
        if i.state == "completed" {
            return Ok(Some(i.uuid));
        }
    }
    let mut best = None;
    for b in Backup::list(dom, 0)? {
        let i = info_of(&b)?;
        if i.state == "completed" && best.as_ref().is_none_or(|(t, _)| i.creation_time > *t) {
            best = Some((i.creation_time, i.uuid));
        }
    }
    Ok(best.map(|(_, u)| u))
}

/// Full or incremental, on which parent, and why.
fn plan(dom: &Domain, a: &CreateArgs) -> Res<Plan> {
    let level = match (a.level, a.incremental, &a.parent) {
        (_, _, Some(p)) => {
            // A prefix as the CLI prints UUIDs: the document wants the whole.
            let p = crate::api::Backup::lookup(p)?.uuid()?;
            return Ok(Plan {
                reason: format!("on backup {p}, as asked"),
                parent: Some(p),
            });
        }
        (Some(l), _, _) => l,
        (None, true, _) => Level::Incremental,
        (None, false, _) => Level::Full,
    };
    Ok(match level {
        Level::Full => Plan {
            parent: None,
            reason: "as asked".into(),
        },
        Level::Incremental => {
            let p = latest_completed(dom)?.ok_or_else(|| {
                err(format!(
                    "domain '{}' has no backup to be incremental on (--level auto makes a full one then)",
                    a.domain
                ))
            })?;
            Plan {
                reason: format!("on the latest backup {p}"),
                parent: Some(p),
            }
        }
        Level::Auto => match latest_completed(dom)? {
            Some(p) => Plan {
                reason: format!("auto, on the latest backup {p}"),
                parent: Some(p),
            },
            None => Plan {
                parent: None,
                reason: "no earlier backup".into(),
            },
        },
    })
}

/// The disks of `--disk`/`--exclude` (each must be one of the domain's),
/// as (name, target, backed up); empty when neither is given.
fn disk_selection(dom: &Domain, a: &CreateArgs) -> Res<Vec<(String, Option<String>, bool)>> {
    let asked = crate::disk_args(&a.disks);
    if asked.is_empty() && a.exclude.is_empty() && a.format.is_none() {
        return Ok(Vec::new());
    }
    let all = domain_disks(dom)?;
    let named = asked.iter().map(|(n, _)| n).chain(&a.exclude);
    for n in named {
        if !all.contains(n) {
            return Err(err(format!(
                "domain '{}' has no disk '{n}' (its disks: {})",
                a.domain,
                all.join(", ")
            )));
        }
    }
    Ok(all
        .into_iter()
        .map(|n| {
            let target = asked
                .iter()
                .find(|(a, _)| *a == n)
                .and_then(|(_, t)| t.clone());
            let on = if asked.is_empty() {
                !a.exclude.contains(&n)
            } else {
                asked.iter().any(|(a, _)| *a == n)
            };
            (n, target, on)
        })
        .collect())
}

/// `<encryption>` of `--encrypt-secret`: a UUID names the secret by
/// uuid, anything else by usage id.
pub(crate) fn encryption_xml(id: &str) -> String {
    let uuid = id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    let attr = match uuid {
        true => format!("uuid='{id}'"),
        false => format!("usage='{}'", xml_escape(id)),
    };
    format!("<encryption format='luks'><secret type='passphrase' {attr}/></encryption>")
}

/// The `<domainbackup>` document of `create` without `--xml`.
/// `secret`: the UUID or usage id of --encrypt-secret or --encrypt-key-file.
fn create_xml(dom: &Domain, a: &CreateArgs, plan: &Plan, secret: Option<&str>) -> Res<String> {
    let mut x = String::from("<domainbackup>");
    if let Some(d) = &a.description {
        x += &format!("<description>{}</description>", xml_escape(d));
    }
    if let Some(p) = &plan.parent {
        x += &format!("<parent><uuid>{}</uuid></parent>", xml_escape(p));
    }
    if let Some(rate) = a.rate {
        x += &format!("<bandwidth bytes='{rate}'/>");
    }
    let disks = disk_selection(dom, a)?;
    // What every disk takes: <compression>, <encryption>.
    let for_all = a
        .compress
        .as_ref()
        .map(|c| format!("<compression type='{}'/>", xml_escape(c)))
        .unwrap_or_default()
        + &secret.map(encryption_xml).unwrap_or_default();
    if !disks.is_empty() || !for_all.is_empty() {
        x += "<disks>";
        x += &for_all;
        let dom_name = dom.name().unwrap_or_default();
        for (name, target, on) in &disks {
            if *on {
                x += &create_disk_xml(a, &dom_name, name, target.as_deref());
            } else {
                x += &format!("<disk name='{}' backup='no'/>", xml_escape(name));
            }
        }
        x += "</disks>";
    }
    Ok(x + "</domainbackup>")
}

/// One `<disk>` of `create_xml`: `target` a file, `pool:NAME` (a new
/// volume named after the domain, the disk and the time), or none.
fn create_disk_xml(a: &CreateArgs, dom_name: &str, name: &str, target: Option<&str>) -> String {
    let n = xml_escape(name);
    let fmt = a.format.clone().unwrap_or_else(|| "qcow2".into());
    let driver = a
        .format
        .as_ref()
        .map(|f| format!("<driver type='{}'/>", xml_escape(f)))
        .unwrap_or_default();
    match target {
        Some(t) if t.starts_with("pool:") => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            format!(
                "<disk name='{n}' type='volume'><target pool='{}' volume='{}'/>{driver}</disk>",
                xml_escape(&t[5..]),
                xml_escape(&format!("{dom_name}-{name}-{stamp}.{fmt}"))
            )
        }
        Some(t) => format!(
            "<disk name='{n}' type='file'><target file='{}'/>{driver}</disk>",
            xml_escape(t)
        ),
        None => format!("<disk name='{n}'>{driver}</disk>"),
    }
}
