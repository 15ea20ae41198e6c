//! `virt-backup export`: a domain's disks as they are now, or a stored
//! backup, served read-only over NBD until a signal or --timeout.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use virt::domain::Domain;

use crate::api::{self, Backup};
use crate::info::BackupInfo;
use crate::signals::{self, interrupted};
use crate::{Ctx, Res, domain_disks, err, info_of, journal, utf8_path, xml_escape};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// A backup UUID of the catalog (that stored backup), else a domain
    /// (name, UUID or id: its disks as they are now)
    #[arg(value_name = "UUID|DOMAIN")]
    what: String,
    /// Listen on HOST:PORT
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "unix",
        conflicts_with = "unix"
    )]
    tcp: Option<String>,
    /// Listen on a UNIX socket at exactly PATH (which must be valid UTF-8:
    /// it goes into the XML the library reads)
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Serve over TLS to clients with a certificate of the CA (--tcp only;
    /// then HOST may be any address)
    #[arg(long, requires = "tcp")]
    tls: bool,
    /// Also export the changes since this backup as a dirty bitmap (domain
    /// exports only)
    #[arg(long, value_name = "UUID")]
    parent: Option<String>,
    /// Name each export <disk>-SUFFIX (default SUFFIX: the domain's name)
    #[arg(long, value_name = "SUFFIX", num_args = 0..=1, default_missing_value = "")]
    name_suffix: Option<String>,
    /// End the export after this many seconds
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

/// What is served: a domain now, or a stored backup.
enum Source {
    Domain(Domain),
    Stored(BackupInfo),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Domain(d) => d.name().unwrap_or_default(),
            Source::Stored(i) => i.domain.clone(),
        }
    }

    fn disks(&self) -> Res<Vec<String>> {
        match self {
            Source::Domain(d) => domain_disks(d),
            Source::Stored(i) => Ok(i.disks.iter().map(|d| d.name.clone()).collect()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Domain(d) => format!(
                "domain {} (its disks as they are now)",
                d.name().unwrap_or_default()
            ),
            Source::Stored(i) => format!(
                "stored backup {} of domain {} (taken at {})",
                i.uuid, i.domain, i.creation_time
            ),
        }
    }
}

/// A backup UUID of the catalog names that backup; anything else, a domain.
fn source(ctx: &mut Ctx, what: &str) -> Res<Source> {
    match Backup::lookup(what) {
        Ok(b) => {
            if ctx.domain(what).is_ok() {
                return Err(err(format!(
                    "'{what}' names both a backup and a domain; give the backup's full UUID \
                     or the domain's name"
                )));
            }
            Ok(Source::Stored(info_of(&b)?))
        }
        Err(_) => Ok(Source::Domain(ctx.domain(what)?)),
    }
}

/// The `<domainbackup>` document of `export`.
fn export_xml(src: &Source, a: &ExportArgs, unix: Option<&str>) -> Res<String> {
    let mut x = String::from("<domainbackup>");
    if let Source::Stored(i) = src {
        if a.parent.is_some() {
            return Err(err(
                "--parent is for the export of a domain, not of a stored backup",
            ));
        }
        x += &format!("<uuid>{}</uuid>", xml_escape(&i.uuid));
    }
    if let Some(p) = &a.parent {
        let p = Backup::lookup(p)?.uuid()?;
        x += &format!("<parent><uuid>{}</uuid></parent>", xml_escape(&p));
    }
    match (&a.tcp, unix) {
        (Some(hp), _) => {
            let (h, p) = hp
                .rsplit_once(':')
                .ok_or_else(|| err(format!("--tcp wants HOST:PORT, not '{hp}'")))?;
            x += &format!(
                "<server transport='tcp' name='{}' port='{}'{}/>",
                xml_escape(h),
                xml_escape(p),
                if a.tls { " tls='yes'" } else { "" }
            );
        }
        (None, Some(path)) => {
            x += &format!("<server transport='unix' socket='{}'/>", xml_escape(path));
        }
        _ => unreachable!("clap requires one"),
    }
    if let Some(s) = &a.name_suffix {
        let suffix = if s.is_empty() { src.name() } else { s.clone() };
        x += "<disks>";
        for d in src.disks()? {
            x += &format!(
                "<disk name='{}' exportname='{}'/>",
                xml_escape(&d),
                xml_escape(&format!("{d}-{suffix}"))
            );
        }
        x += "</disks>";
    }
    Ok(x + "</domainbackup>")
}

pub(crate) fn cmd_export(ctx: &mut Ctx, a: &ExportArgs) -> Res<()> {
    // Checked before anything starts: never serve at another path.
    let unix = a
        .unix
        .as_deref()
        .map(|p| utf8_path("--unix", p))
        .transpose()?;
    let src = source(ctx, &a.what)?;
    let x = export_xml(&src, a, unix)?;
    let name = src.name();
    journal::job_started("export", &name);
    let r = serve_export(ctx, a, &src, &x, unix);
    journal::job_ended("export", &name, None, r.as_ref().map(|_| ""));
    r
}

/// `export` once its document is made: serve until a signal or --timeout.
fn serve_export(
    ctx: &mut Ctx,
    a: &ExportArgs,
    src: &Source,
    x: &str,
    unix: Option<&str>,
) -> Res<()> {
    let b = match src {
        Source::Domain(d) => Backup::start_unmanaged(d, x)?,
        Source::Stored(_) => api::start_stored_export(x)?,
    };
    let info = info_of(&b)?;
    if ctx.json {
        ctx.print_json(json!({
            "source": match src {
                Source::Domain(_) => json!({"domain": src.name()}),
                Source::Stored(i) => json!({"backup": i.uuid, "domain": i.domain}),
            },
            "server": match (&a.tcp, unix) {
                (Some(t), _) => json!({"tcp": t, "tls": a.tls}),
                (None, u) => json!({"unix": u}),
            },
            "exports": info.disks.iter().map(|d| json!({
                "disk": d.name, "exportname": d.exportname, "exportbitmap": d.exportbitmap,
            })).collect::<Vec<_>>(),
        }));
    } else if !ctx.quiet {
        for d in &info.disks {
            if d.exportbitmap.is_empty() {
                println!("disk {}: export '{}'", d.name, d.exportname);
            } else {
                println!(
                    "disk {}: export '{}' bitmap '{}'",
                    d.name, d.exportname, d.exportbitmap
                );
            }
        }
        println!("serving {}; Ctrl-C ends the export", src.describe());
    }
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    while !interrupted()
        && a.timeout
            .is_none_or(|t| start.elapsed() < Duration::from_secs(t))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    b.finish(0)?;
    ctx.say("export ended");
    if interrupted() {
        return Err(signals::stopped(
            "export ended: its backup job and NBD server stopped",
        ));
    }
    Ok(())
}
