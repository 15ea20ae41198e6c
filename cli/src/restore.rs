//! `virt-backup restore`: its modes, the document it gives the library,
//! and the library's messages put in the command's words.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::api::{self, ApiError, Backup};
use crate::info::BackupInfo;
use crate::progress::Progress;
use crate::signals::interrupted;
use crate::{Ctx, Res, err, info_of, journal, utf8_path, xml_escape};

const RESTORE_HELP: &str = "\
What each mode changes:
  (default)         writes the backup over the disks of its own domain, which must be
                    shut off (--rewrite to write over files that exist). The domain's
                    definition is unchanged, except with --disk NAME=PATH: the domain is
                    then redefined to use PATH for that disk.
  --new-domain      defines a new domain (new name, UUID and MAC addresses) on new
                    files; the backup's domain is not touched.
  --files-only DIR  writes each disk to DIR/<disk>.<format> (or --disk NAME=PATH);
                    no domain is touched or defined, no hypervisor is needed.
  --instant         copies nothing: each disk becomes a new qcow2 overlay on the
                    backup's files, and the domain (its own, or the new one) is
                    redefined to use the overlays; the backup cannot be deleted while
                    they use it.
  --start           starts the restored domain when done.";

#[derive(Args)]
#[command(after_help = RESTORE_HELP)]
pub(crate) struct RestoreArgs {
    uuid: String,
    /// Define a new domain, leaving the backup's own alone (default name:
    /// <name>-restore-<uuid prefix>, printed)
    #[arg(long, value_name = "NAME", num_args = 0..=1, default_missing_value = "")]
    new_domain: Option<String>,
    /// Restore this disk (repeatable; default: all), optionally to PATH
    /// (into the backup's own domain: redefines the domain to use PATH)
    #[arg(long = "disk", value_name = "NAME[=PATH]")]
    disks: Vec<String>,
    /// Write over existing files
    #[arg(long)]
    rewrite: bool,
    /// Format of the restored images
    #[arg(long, value_parser = ["qcow2", "raw"])]
    format: Option<String>,
    /// Only write image files, into DIR (<disk>.<format>): touch no domain
    #[arg(long, value_name = "DIR", conflicts_with_all = ["new_domain", "instant", "start"])]
    files_only: Option<PathBuf>,
    /// Copy nothing: overlays on the backup's files (redefines the domain)
    #[arg(long)]
    instant: bool,
    /// Start the restored domain when done
    #[arg(long)]
    start: bool,
    /// Register the key in FILE as its libvirt secret first, as `create
    /// --encrypt-key-file` does (an encrypted backup read on a host that
    /// does not have the secret yet)
    #[arg(long, value_name = "FILE")]
    encrypt_key_file: Option<PathBuf>,
}

/// The library's flag names in a message, and the options that stand for them.
const FLAG_WORDS: [(&str, &str); 7] = [
    (
        "VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK",
        "--rewrite",
    ),
    ("VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN", "--new-domain"),
    ("VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY", "--files-only"),
    ("VIR_DOMAIN_BACKUP_RESTORE_INSTANT", "--instant"),
    ("VIR_DOMAIN_BACKUP_RESTORE_START", "--start"),
    ("VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK", "--no-fallback"),
    ("VIR_DOMAIN_BACKUP_CREATE_QUIESCE", "--quiesce"),
];

/// A library error as the user of the command reads it: each flag named
/// by the option that sets it ("use --rewrite", not the C name).
pub(crate) fn in_cli_terms(mut e: ApiError) -> ApiError {
    for (flag, option) in FLAG_WORDS {
        e.message = e.message.replace(flag, option);
    }
    e
}

/// The `<domainbackup>` document and flags of a restore; the new domain's
/// name, if one is defined.
fn restore_request(a: &RestoreArgs, info: &BackupInfo) -> Res<(String, u32, Option<String>)> {
    let mut x = format!("<domainbackup><uuid>{}</uuid>", xml_escape(&info.uuid));
    let mut flags = 0;
    let mut new_name = None;
    if let Some(n) = &a.new_domain {
        flags |= api::RESTORE_NEW_DOMAIN;
        // The library's default name, made here so that it can be printed.
        let n = if n.is_empty() {
            format!("{}-restore-{}", info.domain, &info.uuid[..8])
        } else {
            n.clone()
        };
        x += &format!("<domain name='{}'/>", xml_escape(&n));
        new_name = Some(n);
    }
    if let Some(dir) = &a.files_only {
        flags |= api::RESTORE_FILES_ONLY;
        let dir = std::path::absolute(dir)
            .map_err(|e| err(format!("--files-only {}: {e}", dir.display())))?;
        x += &format!(
            "<target dir='{}'/>",
            xml_escape(utf8_path("--files-only", &dir)?)
        );
    }
    for (set, flag) in [
        (a.rewrite, api::RESTORE_REWRITE),
        (a.instant, api::RESTORE_INSTANT),
        (a.start, api::RESTORE_START),
    ] {
        if set {
            flags |= flag;
        }
    }
    x += &disks_xml(a, info);
    Ok((x + "</domainbackup>", flags, new_name))
}

/// The `<disks>` of a restore (none: every disk, as the library decides).
fn disks_xml(a: &RestoreArgs, info: &BackupInfo) -> String {
    let mut disks = crate::disk_args(&a.disks);
    if disks.is_empty() && a.format.is_some() {
        disks = info.disks.iter().map(|d| (d.name.clone(), None)).collect();
    }
    if disks.is_empty() {
        return String::new();
    }
    let mut x = String::from("<disks>");
    for (n, t) in &disks {
        x += &format!("<disk name='{}'>", xml_escape(n));
        if let Some(t) = t {
            x += &format!("<target file='{}'/>", xml_escape(t));
        }
        if let Some(f) = &a.format {
            x += &format!("<driver type='{}'/>", xml_escape(f));
        }
        x += "</disk>";
    }
    x + "</disks>"
}

pub(crate) fn cmd_restore(ctx: &mut Ctx, a: &RestoreArgs) -> Res<()> {
    let b = Backup::lookup(&a.uuid)?;
    let info = info_of(&b)?;
    if let Some(f) = &a.encrypt_key_file {
        let k = crate::keyfile::register(ctx.conn()?, f).map_err(err)?;
        ctx.say(&k.line(f));
    }
    let (x, flags, new_name) = restore_request(a, &info)?;
    drop(b);
    // The restore call is synchronous and has no job handle: it runs on a
    // thread while this one shows that it is alive and watches for Ctrl-C.
    let domain = info.domain.clone();
    journal::job_started("restore", &domain);
    let worker = std::thread::spawn(move || api::restore(&x, flags));
    let mut bar = Progress::spinner("restore", ctx.silent());
    while !worker.is_finished() {
        if interrupted() {
            crate::restart_after_interrupted_restore(&info.uuid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = worker.join().unwrap().map_err(in_cli_terms);
    bar.finish(r.is_ok());
    journal::job_ended("restore", &domain, Some(&info.uuid), r.as_ref().map(|_| ""));
    r?;
    report_restored(ctx, a, &info, new_name.as_deref());
    Ok(())
}

/// Say what the restore changed.
fn report_restored(ctx: &Ctx, a: &RestoreArgs, info: &BackupInfo, new_name: Option<&str>) {
    let uuid = &info.uuid;
    let what = match (&a.files_only, new_name) {
        (Some(dir), _) => format!("to files in {} (no domain changed)", dir.display()),
        (None, Some(n)) => format!("as new domain {n}"),
        (None, None) => {
            let moved: Vec<&str> = a
                .disks
                .iter()
                .filter(|d| d.contains('='))
                .map(String::as_str)
                .collect();
            if a.instant {
                format!("into domain {} (now running on overlays)", info.domain)
            } else if moved.is_empty() {
                format!("into domain {}", info.domain)
            } else {
                format!(
                    "into domain {} (its definition now uses {})",
                    info.domain,
                    moved.join(", ")
                )
            }
        }
    };
    let started = if a.start { ", started" } else { "" };
    ctx.say(&format!("Backup {uuid} restored {what}{started}"));
    ctx.print_json(json!({
        "uuid": uuid,
        "restored": true,
        "domain": new_name.unwrap_or(&info.domain),
        "new_domain": new_name,
        "files_only": a.files_only,
        "instant": a.instant,
        "started": a.start,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_become_options() {
        let e = in_cli_terms(err(
            "disk 'vda': '/x' exists; VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK is needed",
        ));
        assert_eq!(e.message, "disk 'vda': '/x' exists; --rewrite is needed");
        let e = in_cli_terms(err(
            "<domain name> is only for VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN",
        ));
        assert!(
            e.message.ends_with("only for --new-domain"),
            "{}",
            e.message
        );
        assert!(
            !in_cli_terms(err("VIR_DOMAIN_BACKUP_RESTORE_START"))
                .message
                .contains("VIR_")
        );
    }
}
