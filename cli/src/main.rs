//! virt-backup: managed backups of libvirt domains from the command line.
//!
//! Every operation goes through libvirt-backup's public C API (linked
//! dynamically, as a C program links it), and libvirt's own API for the
//! connection, the domain lookup and a key file's secret: whatever this
//! command does, a C, Python or Go program can do.

mod api;
mod completion;
mod config;
mod create;
mod default_target;
mod export;
mod history;
mod hooks;
mod info;
mod journal;
mod keyfile;
mod list;
mod output;
mod progress;
mod prune;
mod prune_cmd;
mod rate;
mod restore;
mod run;
mod run_domain;
mod signals;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use virt::connect::Connect;
use virt::domain::Domain;

use api::{ApiError, Backup, Param};
use info::BackupInfo;
use progress::Progress;
use signals::interrupted;

#[derive(Parser)]
#[command(
    name = "virt-backup",
    version,
    about = "Managed backups of libvirt domains",
    long_about = "Managed backups of libvirt domains: full and incremental backups kept in a \
                  catalog, listed as a tree, verified, restored, pruned and exported over NBD. \
                  Built on libvirt-backup's public C API.\n\n\
                  Exit status: 0 done, 1 failed (message on stderr), 2 bad usage, 128+N \
                  stopped by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."
)]
struct Cli {
    /// Hypervisor connection URI (default: $LIBVIRT_DEFAULT_URI, else libvirt's default)
    #[arg(short = 'c', long = "connect", global = true, value_name = "URI")]
    connect: Option<String>,
    /// Print one JSON document on stdout (no progress)
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but errors
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Job lines and the library's log to the journal: auto (when stderr is
    /// not a terminal), syslog (always) or stderr (never)
    #[arg(long, global = true, value_name = "WHERE")]
    log: Option<journal::LogMode>,
    /// The library's log level (sets LIBVIRT_BACKUP_DEBUG)
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<journal::LogLevel>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back up a domain's disks (full, or incremental on a parent)
    Create(create::CreateArgs),
    /// List a domain's backups (one that no longer exists from the catalog), or all (--all)
    List(ListArgs),
    /// Describe a backup: kind, time, parent, state, sizes, disks (--xml: its XML)
    Info(output::InfoArgs),
    /// Print a backup job's typed parameters
    Status {
        /// A backup UUID, or an unambiguous prefix of one
        uuid: String,
    },
    /// Restore a backup into its (shut off) domain or as a new domain
    Restore(restore::RestoreArgs),
    /// Delete a backup (its children keep their data: it is merged into them)
    Delete(DeleteArgs),
    /// Cancel a running backup job and remove its partial data
    Abort { uuid: String },
    /// Wait for a backup job to end, showing its progress
    Wait { uuid: String },
    /// Serve a domain's disks, or a stored backup, read-only over NBD until Ctrl-C or --timeout
    Export(export::ExportArgs),
    /// Set (persistently), show (--show) or clear (--clear) where a domain's backups go by default
    DefaultTarget(default_target::DefaultTargetArgs),
    /// Delete the backups a retention policy does not keep
    #[command(
        after_help = "A policy in which every --keep-* is 0 keeps every backup (as Proxmox \
                            Backup Server does) and says so. A prune that would remove every \
                            completed backup of the domain is refused unless --force is given."
    )]
    Prune(PruneArgs),
    /// Re-read a backup (or every backup of a domain) and check it against its digests
    Verify {
        /// A backup UUID, or a domain (name, UUID or id): all its backups
        #[arg(value_name = "UUID|DOMAIN")]
        what: String,
    },
    /// Apply the configuration's policies: back up, verify and prune the
    /// domains they cover (what virt-backup.timer runs)
    Run(run::RunArgs),
    /// Show the catalog's job history (every job, failed ones too)
    Log(history::LogArgs),
    /// Check the configuration file `run` reads
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Clean up after an interrupted restore (run by `restore` itself)
    #[command(hide = true)]
    RestoreInterrupted {
        uuid: String,
        #[arg(default_value_t = libc::SIGINT)]
        signal: i32,
    },
    /// Print a shell completion script (bash, zsh, fish)
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the words a completion offers: domain names or backup UUIDs
    #[command(hide = true)]
    CompleteWords { what: completion::Words },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Read the file and check every value; print the policies as understood
    Check {
        /// The configuration file
        #[arg(long, value_name = "FILE", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

#[derive(Args)]
struct ListArgs {
    /// Domain name, UUID or id; a domain that no longer exists is found in
    /// the catalog by the name or UUID its backups recorded
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    domain: Option<String>,
    /// Every backup of every domain in the catalog, defined or not
    #[arg(long)]
    all: bool,
    /// Draw the backups as a tree (like virsh snapshot-list --tree)
    #[arg(long)]
    tree: bool,
    /// Only full backups (chain roots)
    #[arg(long, conflicts_with = "incremental")]
    full: bool,
    /// Only incremental backups
    #[arg(long)]
    incremental: bool,
    /// Only backups with no children
    #[arg(long)]
    leaves: bool,
    /// Only the newest backup
    #[arg(long)]
    latest: bool,
}

#[derive(Args)]
struct DeleteArgs {
    uuid: String,
    /// Delete its descendants too
    #[arg(long)]
    children: bool,
    /// Forget the backup but keep its files
    #[arg(long)]
    metadata_only: bool,
}

#[derive(Args)]
struct PruneArgs {
    domain: String,
    /// Keep the N newest backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: usize,
    /// Keep the newest backup of each of the last N hours that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: usize,
    /// Keep the newest backup of each of the last N days that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: usize,
    /// Keep the newest backup of each of the last N ISO weeks that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: usize,
    /// Keep the newest backup of each of the last N months that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: usize,
    /// Keep the newest backup of each of the last N years that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: usize,
    /// Only print what would be kept and removed
    #[arg(long)]
    dry_run: bool,
    /// Allow a prune that would remove every completed backup of the domain
    /// (refused without it)
    #[arg(long)]
    force: bool,
}

type Res<T> = Result<T, ApiError>;
use api::err;

struct Ctx {
    uri: Option<String>,
    json: bool,
    quiet: bool,
    conn: Option<Connect>,
}

impl Ctx {
    fn conn(&mut self) -> Res<&Connect> {
        if self.conn.is_none() {
            let c = Connect::open(self.uri.as_deref()).map_err(|e| {
                err(format!(
                    "failed to connect to the hypervisor: {}",
                    e.message()
                ))
            })?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_ref().unwrap())
    }

    /// A domain by id, UUID or name, as virsh finds one.
    fn domain(&mut self, s: &str) -> Res<Domain> {
        let conn = self.conn()?;
        if let Ok(id) = s.parse::<u32>()
            && let Ok(d) = conn.lookup_domain_by_id(id)
        {
            return Ok(d);
        }
        if s.len() == 36
            && let Ok(d) = conn.lookup_domain_by_uuid_string(s)
        {
            return Ok(d);
        }
        conn.lookup_domain_by_name(s)
            .map_err(|_| err(format!("failed to get domain '{s}'")))
    }

    fn silent(&self) -> bool {
        self.json || self.quiet
    }

    fn say(&self, s: &str) {
        if !self.silent() {
            println!("{s}");
        }
    }

    fn print_json(&self, v: serde_json::Value) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
    }
}

/// `s` as XML text or attribute value that the library reads back as `s`:
/// the markup characters as entities, and tab, line feed and carriage
/// return as character references, since an XML parser turns them into
/// spaces in an attribute value (and a carriage return into a line feed in
/// text), which would make a path with one of them another path.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// A path given on the command line, as it goes into the XML for the
/// library: XML carries Unicode text, not arbitrary bytes, so a path that
/// is not UTF-8 is refused (naming it, its bytes escaped) rather than
/// replaced by a lossy copy that names another file.
fn utf8_path<'a>(option: &str, path: &'a std::path::Path) -> Res<&'a str> {
    path.to_str().ok_or_else(|| {
        err(format!(
            "{option} {path:?}: the path is not valid UTF-8, and the XML description \
             given to the library cannot carry it; use a path that is valid UTF-8"
        ))
    })
}

/// `--disk NAME[=PATH]` arguments as (name, path).
fn disk_args(args: &[String]) -> Vec<(String, Option<String>)> {
    args.iter()
        .map(|d| match d.split_once('=') {
            Some((n, t)) => (n.to_string(), Some(t.to_string())),
            None => (d.clone(), None),
        })
        .collect()
}

fn info_of(b: &Backup) -> Res<BackupInfo> {
    BackupInfo::parse(&b.xml()?).map_err(err)
}

/// The disks with device='disk' of a domain's definition.
fn domain_disks(dom: &Domain) -> Res<Vec<String>> {
    let xml = dom.xml_desc(0).map_err(|e| err(e.message().to_string()))?;
    let doc = roxmltree::Document::parse(&xml).map_err(|e| err(e.to_string()))?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.attribute("device").unwrap_or("disk") == "disk")
        .filter_map(|n| {
            n.children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dev"))
                .map(str::to_string)
        })
        .collect())
}

/// Follow a job through GetParameters (`prefix`: "bytes" or
/// "verify.bytes") until `done` says it ended; a stopping signal (Ctrl-C,
/// SIGTERM, SIGHUP) calls `on_interrupt` once.
fn follow(
    b: &Backup,
    prefix: &str,
    label: &str,
    silent: bool,
    mut done: impl FnMut() -> Res<bool>,
    mut on_interrupt: impl FnMut(),
) -> Res<Progress> {
    let mut bar = Progress::new(label, silent);
    let mut asked = false;
    loop {
        if interrupted() && !asked {
            asked = true;
            on_interrupt();
        }
        if done()? {
            break;
        }
        if let Ok(p) = b.parameters() {
            let get = |n: &str| {
                api::param(&p, &format!("{prefix}.{n}"))
                    .and_then(Param::as_u64)
                    .unwrap_or(0)
            };
            if prefix == "bytes" {
                bar.update_disks(progress::disk_figures(&p));
            }
            bar.update(get("processed"), get("total"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(bar)
}

fn job_running(b: &Backup) -> Res<bool> {
    Ok(b.finish(api::FINISH_CHECK)? == 1)
}

/// Wait for a job with a progress display; a stopping signal aborts it
/// when `abort`, else stops the waiting and leaves the job running.
fn watch_job(ctx: &Ctx, b: &Backup, label: &str, abort: bool) -> Res<()> {
    let mut bar = follow(
        b,
        "bytes",
        label,
        ctx.silent(),
        || match job_running(b) {
            _ if !abort && interrupted() => Ok(true),
            Ok(r) => Ok(!r),
            Err(_) => Ok(true),
        },
        || {
            if abort {
                signals::notice("aborting the backup job");
                let _ = b.abort();
            }
        },
    )?;
    if !abort && interrupted() {
        bar.finish(false);
        return Err(signals::stopped(
            "stopped waiting; the backup job goes on (`virt-backup abort` cancels it)",
        ));
    }
    // The final answer, with the job's own error.
    let result = b.finish(0).map(drop);
    if let Ok(p) = b.parameters() {
        let get = |n: &str| api::param(&p, n).and_then(Param::as_u64).unwrap_or(0);
        bar.update_disks(progress::disk_figures(&p));
        bar.update(get("bytes.processed"), get("bytes.total"));
    }
    bar.finish(result.is_ok());
    result
}

/// The pipe to the parent of a detached `create --no-wait` (-1: none).
static PARENT_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// `create --no-wait`: the library copies a shut-off domain's disks on a
/// thread of the process that called it, so the job runs in a child
/// process of its own session, which outlives this one; this process
/// prints what the child reports (the UUID, or why it failed) and exits.
/// Returns only in the child.
fn detach(json_out: bool, quiet: bool) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("error: cannot create a pipe");
        std::process::exit(1);
    }
    // SAFETY: called from main before the command has started a thread or
    // opened a connection, so the child is a whole copy of this process.
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("error: cannot fork");
            std::process::exit(1);
        }
        0 => {
            // SAFETY: closes the child's copy of the read end, which nothing
            // else owns, and starts a new session; no pointer is passed.
            unsafe {
                libc::close(fds[0]);
                libc::setsid();
            }
            PARENT_PIPE.store(fds[1], Ordering::SeqCst);
            signals::detached();
        }
        _ => {
            // SAFETY: the parent's copy of the write end, owned by nothing
            // else, closed once.
            unsafe { libc::close(fds[1]) };
            let mut msg = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads at most `buf.len()` bytes into `buf`.
                let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                msg.extend_from_slice(&buf[..n as usize]);
            }
            let msg = String::from_utf8_lossy(&msg);
            match msg.split_once(' ') {
                Some(("OK", uuid)) => {
                    if json_out {
                        println!("{}", json!({"uuid": uuid, "state": "running"}));
                    } else if !quiet {
                        println!("Backup {uuid} started");
                    }
                    std::process::exit(0);
                }
                Some(("ERR", e)) => eprintln!("error: {e}"),
                _ => eprintln!("error: the backup process ended without a word"),
            }
            std::process::exit(1);
        }
    }
}

/// In a detached child: tell the parent, then leave the terminal alone.
fn report_to_parent(msg: &str) {
    let fd = PARENT_PIPE.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: writes `msg.len()` bytes from `msg`; `fd` was taken out of
    // PARENT_PIPE above, so it is closed once; dup2 only replaces the
    // standard descriptors with /dev/null (a path given as a C string).
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::close(fd);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for std_fd in 0..3 {
            libc::dup2(null, std_fd);
        }
    }
}

/// The library has no abort for a restore. What it does promise: the new
/// files of a restore whose process is gone are removed by the next process
/// that opens the catalog. So this process becomes that next process: it
/// replaces itself (exec: the restore's thread and its locks are gone) with
/// `virt-backup restore-interrupted UUID SIGNAL`, which opens the catalog.
fn restart_after_interrupted_restore(uuid: &str) -> ! {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok());
    let sig = std::ffi::CString::new(signals::received().to_string()).unwrap();
    if let (Some(exe), Ok(u)) = (exe, std::ffi::CString::new(uuid)) {
        let args = [
            exe.as_ptr(),
            c"restore-interrupted".as_ptr(),
            u.as_ptr(),
            sig.as_ptr(),
            std::ptr::null(),
        ];
        // SAFETY: `exe`, `u` and `sig` are C strings that outlive the call
        // and `args` is a null-terminated array of pointers to them (or to
        // a static C string).
        unsafe { libc::execv(exe.as_ptr(), args.as_ptr()) };
    }
    eprintln!("error: restore interrupted");
    // SAFETY: _exit takes no pointer; the restore's thread and its locks
    // are left behind on purpose (see above).
    unsafe { libc::_exit(1) }
}

fn cmd_restore_interrupted(uuid: &str, signal: i32) -> Res<()> {
    signals::set_received(signal);
    // Opening the catalog (any lookup does) removes the unfinished files.
    let domain = Backup::lookup(uuid)
        .ok()
        .and_then(|b| info_of(&b).ok())
        .map(|i| i.domain)
        .unwrap_or_default();
    let e = signals::stopped(format!(
        "restore of backup {uuid} stopped, the new files it was writing removed \
         (a disk it was rewriting in place may be partly restored: restoring again completes it)"
    ));
    journal::job_ended("restore", &domain, Some(uuid), Err(&e));
    Err(e)
}

/// A signal during the delete lets it finish (a delete is one call, and a
/// whole one): the command ends as the delete does.
fn cmd_delete(ctx: &mut Ctx, a: &DeleteArgs) -> Res<()> {
    let b = Backup::lookup(&a.uuid)?;
    let info = info_of(&b)?;
    let (domain, uuid) = (info.domain, info.uuid);
    journal::job_started("delete", &domain);
    let mut flags = 0;
    if a.children {
        flags |= api::DELETE_ALL_CHILDREN;
    }
    if a.metadata_only {
        flags |= api::DELETE_METADATA_ONLY;
    }
    let r = b.delete(flags);
    journal::job_ended("delete", &domain, Some(&uuid), r.as_ref().map(|_| ""));
    r?;
    ctx.say(&format!("Backup {uuid} deleted"));
    ctx.print_json(json!({"uuid": uuid, "deleted": true}));
    Ok(())
}

fn cmd_abort(ctx: &mut Ctx, uuid: &str) -> Res<()> {
    let b = Backup::lookup(uuid)?;
    let uuid = b.uuid()?;
    b.abort()?;
    ctx.say(&format!("Backup job {uuid} aborted"));
    ctx.print_json(json!({"uuid": uuid, "aborted": true}));
    Ok(())
}

fn cmd_wait(ctx: &mut Ctx, uuid: &str) -> Res<()> {
    let b = Backup::lookup(uuid)?;
    let uuid = b.uuid()?;
    watch_job(ctx, &b, "backup", false)?;
    ctx.say(&format!("Backup {uuid} completed"));
    ctx.print_json(json!({"uuid": uuid, "state": "completed"}));
    Ok(())
}

/// Verify one backup; whether the verification recorded its digest index
/// (a backup that had none: made by an earlier version) rather than
/// checking the one kept with it.
fn verify_one(ctx: &Ctx, b: Backup, uuid: &str) -> Res<bool> {
    let b = std::sync::Arc::new(b);
    let worker = {
        let b = std::sync::Arc::clone(&b);
        std::thread::spawn(move || b.verify())
    };
    let mut bar = follow(
        &b,
        "verify.bytes",
        &format!("verify {}", &uuid[..8.min(uuid.len())]),
        ctx.silent(),
        || Ok(worker.is_finished()),
        || {
            signals::notice("stopping the verification");
            let _ = b.abort();
        },
    )?;
    let r = worker.join().unwrap();
    bar.finish(r.is_ok());
    r?;
    let params = b.parameters().unwrap_or_default();
    Ok(api::param(&params, "verify.recorded") == Some(&Param::Bool(true)))
}

fn cmd_verify(ctx: &mut Ctx, what: &str) -> Res<()> {
    let targets = verify_targets(ctx, what)?;
    journal::job_started("verify", what);
    let r = verify_all(ctx, targets);
    journal::job_ended("verify", what, None, r.as_deref());
    r.map(drop)
}

/// The backup `what` names, or the completed backups of the domain it
/// names, oldest first.
fn verify_targets(ctx: &mut Ctx, what: &str) -> Res<Vec<(Backup, String)>> {
    Ok(match Backup::lookup(what) {
        Ok(b) => {
            let uuid = b.uuid()?;
            vec![(b, uuid)]
        }
        Err(e) if e.code != 0 && api::is_uuid_prefix(what) && ctx.domain(what).is_err() => {
            return Err(e);
        }
        Err(_) => {
            let dom = ctx.domain(what)?;
            let mut v = Vec::new();
            for b in Backup::list(&dom, 0)? {
                let i = info_of(&b)?;
                if i.state == "completed" {
                    v.push((i.creation_time, b, i.uuid));
                }
            }
            v.sort_by_key(|t| t.0);
            v.into_iter().map(|(_, b, u)| (b, u)).collect()
        }
    })
}

/// Verify each backup in turn; a signal stops the one being verified and
/// the ones after it. The summary for the journal.
fn verify_all(ctx: &Ctx, targets: Vec<(Backup, String)>) -> Res<String> {
    let total = targets.len();
    let mut results = Vec::new();
    let mut failed = None;
    let stop = |results: &Vec<serde_json::Value>, what: String| {
        ctx.print_json(json!({"ok": false, "backups": results}));
        Err(signals::stopped(format!(
            "{what} ({} of {total} backups verified; nothing to clean up)",
            results.len()
        )))
    };
    for (b, uuid) in targets {
        if interrupted() {
            return stop(&results, "verification stopped".into());
        }
        match verify_one(ctx, b, &uuid) {
            Err(_) if interrupted() => {
                return stop(&results, format!("verification of backup {uuid} stopped"));
            }
            Ok(recorded) => {
                ctx.say(&match recorded {
                    true => format!(
                        "Backup {uuid}: index recorded (it had none, made by an earlier \
                         version): the data reads back; the next verify checks it"
                    ),
                    false => format!("Backup {uuid}: OK"),
                });
                results.push(json!({"uuid": uuid, "ok": true, "recorded": recorded}));
            }
            Err(e) => {
                results.push(json!({"uuid": uuid, "ok": false, "error": e.message}));
                failed.get_or_insert(err(format!("backup {uuid}: {}", e.message)));
            }
        }
    }
    ctx.print_json(json!({"ok": failed.is_none(), "backups": results}));
    match failed {
        Some(e) => Err(e),
        None => Ok(format!("{total} backups verified")),
    }
}

fn main() {
    // Quiet end when the reader of our output goes away (`| head`).
    // SAFETY: restores the default action of a signal; no handler of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    // Before the first call into the library, which reads its log variables.
    journal::setup(cli.log, cli.log_level);
    // libvirt's default handler prints every error; ours are printed once, below.
    virt::error::clear_error_callback();
    signals::install();
    if let Command::Create(a) = &cli.command
        && a.no_wait
    {
        detach(cli.json, cli.quiet);
    }
    let mut ctx = Ctx {
        uri: cli.connect.clone(),
        json: cli.json,
        quiet: cli.quiet,
        conn: None,
    };
    let r = match &cli.command {
        Command::Create(a) => create::cmd_create(&mut ctx, a),
        Command::List(a) => list::cmd_list(&mut ctx, a),
        Command::Info(a) => output::cmd_info(&mut ctx, a),
        Command::Status { uuid } => output::cmd_status(&mut ctx, uuid),
        Command::Restore(a) => restore::cmd_restore(&mut ctx, a),
        Command::Delete(a) => cmd_delete(&mut ctx, a),
        Command::Abort { uuid } => cmd_abort(&mut ctx, uuid),
        Command::Wait { uuid } => cmd_wait(&mut ctx, uuid),
        Command::Export(a) => export::cmd_export(&mut ctx, a),
        Command::DefaultTarget(a) => default_target::cmd_default_target(&mut ctx, a),
        Command::Prune(a) => prune_cmd::cmd_prune(&mut ctx, a),
        Command::Verify { what } => cmd_verify(&mut ctx, what),
        Command::Run(a) => run::cmd_run(&mut ctx, a),
        Command::Log(a) => history::cmd_log(&mut ctx, a),
        Command::Config {
            what: ConfigCommand::Check { config },
        } => config::cmd_check(&ctx, config),
        Command::RestoreInterrupted { uuid, signal } => cmd_restore_interrupted(uuid, *signal),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            completion::print(*shell, Cli::command());
            Ok(())
        }
        Command::CompleteWords { what } => {
            completion::words(&mut ctx, *what);
            Ok(())
        }
    };
    if let Err(e) = r {
        // `error: ...` (exit status 1), or `interrupted by SIGTERM: ...`
        // (128 + the signal's number).
        let (line, status) = signals::exit_status(&e);
        report_to_parent(&format!("ERR {}", line.trim_start_matches("error: ")));
        journal::command_failed(&line);
        let _ = std::io::stdout().flush();
        // Not eprintln: after a hang-up (SIGHUP) the terminal may be gone.
        let shown = match cli.json {
            true => output::error_json(&e, &line, status),
            false => line,
        };
        let _ = writeln!(std::io::stderr(), "{shown}");
        std::process::exit(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escape_reads_back_as_the_same_string() {
        // In an attribute a parser turns tab, line feed and carriage return
        // into spaces, and in text a carriage return into a line feed,
        // unless they are character references.
        for s in [
            "/tmp/a b.sock",
            "/tmp/a\tb\nc\rd\r\ne.sock",
            "<&'\">",
            "é/日本/\u{1F600}",
        ] {
            let x = format!("<a v='{0}' w=\"{0}\">{0}</a>", xml_escape(s));
            let doc = roxmltree::Document::parse(&x).unwrap();
            let a = doc.root_element();
            assert_eq!(a.attribute("v"), Some(s), "{x}");
            assert_eq!(a.attribute("w"), Some(s), "{x}");
            assert_eq!(a.text(), Some(s), "{x}");
        }
    }

    #[test]
    fn a_path_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/tmp/nbd-\xff.sock"));
        let e = utf8_path("--unix", p).unwrap_err();
        assert!(
            e.message.starts_with("--unix \"/tmp/nbd-\\xFF.sock\": "),
            "{}",
            e.message
        );
        assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
        let p = std::path::Path::new("/tmp/a\nb.sock");
        assert_eq!(utf8_path("--unix", p).unwrap(), "/tmp/a\nb.sock");
    }
}
