//! Read-only NBD exports of disk images served by one `qemu-storage-daemon`.
//!
//! This is the export side of unmanaged backups (`virDomainBackupStartUnmanaged`)
//! for domains libvirt cannot back up itself: inactive domains, and drivers with
//! no backup support (libvirt's `test:///default`). One daemon process serves
//! every selected disk as a named, read-only NBD export, each optionally with a
//! persistent dirty bitmap of its qcow2 image (`qemu:dirty-bitmap:<name>`).
//!
//! # Point in time
//!
//! The images belong to an inactive domain, so nothing writes them while the
//! export is set up. The daemon opens every image read-only with QEMU's image
//! locking (OFD locks, `locking=auto`): it holds the "consistent read"
//! permission and does not share "write". As long as the daemon runs, any QEMU
//! process that wants to open the image for writing — starting the domain,
//! `qemu-io`, `qemu-img commit`, … — fails with `Failed to get "write" lock`,
//! so what the export serves stays the image as it was when the export
//! started. (Tools that ignore QEMU's locks can still write; libvirt does not.)
//! Stop the export before the domain is started again.
//!
//! # Process
//!
//! The daemon gets a private scratch folder (mode 0700 under
//! [`std::env::temp_dir`]) holding its QMP monitor socket, pid file and stderr
//! log; the folder is removed on [`StorageDaemonExport::stop`]. The daemon
//! writes its pid file only after every block node, the NBD server and every
//! export were created, so the pid file plus a successful NBD handshake mean
//! the export is fully up; any configuration error (port in use, unreadable
//! image, missing bitmap) makes the daemon exit with the reason on stderr,
//! which [`StorageDaemonExport::start`] returns. The daemon gets SIGTERM
//! when the process that started it dies: an export never outlives the
//! process that can stop it.
//!
//! # TLS
//!
//! With a certificate folder ([`StorageDaemonExport::start_tls`]) the NBD
//! server takes a `tls-creds-x509` object (endpoint server, `verify-peer`):
//! a client must negotiate TLS and show a certificate of the folder's CA.
//! The readiness probe is unaffected: before TLS the server still answers
//! `NBD_OPT_ABORT`.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, Result};
use crate::image::disk::{Chain, Source};
use crate::xml::backup::DiskFormat;
use secrets::KeyPipes;

/// The program started; found through `PATH`.
const DAEMON: &str = "qemu-storage-daemon";
/// How long `start` waits for the NBD server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for the daemon to exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of single socket operations (NBD probe, QMP).
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// NBD's limit on export names (bytes).
const NBD_MAX_NAME: usize = 4096;

/// Where the NBD server listens (tcp: exactly `host:port`, port 0 refused;
/// unix: a socket path whose folder must exist).
pub type ExportServer = crate::xml::backup::NbdServer;

/// One disk image to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDisk {
    /// The name clients ask the server for.
    pub export_name: String,
    /// The image file to serve.
    pub image: PathBuf,
    /// The image's format.
    pub format: DiskFormat,
    /// A persistent bitmap already in the (qcow2) image to export as "qemu:dirty-bitmap:<name>".
    pub bitmap: Option<String>,
    /// The images a qcow2 `image` reads through, nearest first, as the
    /// library resolved them (a stored backup's chain): each is given to
    /// the daemon as a node of its own, so the daemon never follows a
    /// header's backing name (QEMU joins a relative one to the path it
    /// reached the image by, `..` and all, which a deep chain of relative
    /// names grows past PATH_MAX). `None`: the daemon follows the headers.
    pub backing: Option<Vec<(PathBuf, DiskFormat)>>,
}

/// A running `qemu-storage-daemon` serving read-only NBD exports.
/// Stopped by [`stop`](Self::stop) or when dropped.
#[derive(Debug)]
pub struct StorageDaemonExport {
    pid: u32,
    server: ExportServer,
    scratch: PathBuf,
    qmp_socket: PathBuf,
    /// `None` once stopped.
    child: Mutex<Option<Child>>,
}

impl StorageDaemonExport {
    /// Start qemu-storage-daemon: for each disk a read-only file blockdev + format blockdev,
    /// an NBD server on `server` (tcp: bind exactly host:port; port 0 is not allowed — callers pass one; unix: the socket path, whose folder must exist),
    /// one export per disk (writable=off, name=export_name, bitmaps=[bitmap] if any), and a QMP monitor on a private unix socket
    /// in a scratch folder (created 0700 under std::env::temp_dir(), removed on stop).
    /// Waits until the NBD server accepts connections (poll connect, up to 10 s), else kills the daemon and returns an error with the daemon's stderr.
    /// Errors: port in use / bad image / bitmap missing -> Error::operation_failed with qemu-storage-daemon's message.
    /// Bad arguments (no disk, empty or duplicate export names, port 0, a bitmap on a raw image,
    /// a unix path that is not a socket or is served by someone else) -> Error::invalid_arg / operation_failed before anything starts.
    pub fn start(server: &ExportServer, disks: &[ExportDisk]) -> Result<StorageDaemonExport> {
        Self::start_tls(server, disks, None)
    }

    /// [`start`](Self::start), with TLS when `cert_dir` is given: the
    /// server's x509 credentials are read from that folder (`ca-cert.pem`,
    /// `server-cert.pem`, `server-key.pem`, QEMU's layout) and every client
    /// must show a certificate signed by its CA (`verify-peer`); a client
    /// that does not speak TLS is refused during NBD negotiation. The
    /// caller checks the folder first (`ops::export_access`).
    pub fn start_tls(
        server: &ExportServer,
        disks: &[ExportDisk],
        cert_dir: Option<&Path>,
    ) -> Result<StorageDaemonExport> {
        validate(server, disks)?;
        // The daemon follows qcow2 backing files as their headers name
        // them: only chains whose every level records its format (never
        // probed) are served. A chain given node by node is the one the
        // headers must name.
        for d in disks {
            let chain = match &d.backing {
                Some(levels) => Chain::Recorded(levels),
                None => Chain::Header,
            };
            Source::open(&d.image, d.format, chain)?;
        }

        let scratch = make_scratch_dir()?;
        match spawn_and_wait(server, disks, cert_dir, &scratch) {
            Ok((child, qmp_socket)) => Ok(StorageDaemonExport {
                pid: child.id(),
                server: server.clone(),
                scratch,
                qmp_socket,
                child: Mutex::new(Some(child)),
            }),
            Err(e) => {
                crate::warn_if_err!(
                    fs::remove_dir_all(&scratch),
                    "cannot remove scratch folder '{}'",
                    scratch.display()
                );
                if let ExportServer::Unix(path) = server {
                    remove_socket(path);
                }
                Err(e)
            }
        }
    }

    /// The daemon's pid (tests).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stop: quit via QMP (or SIGTERM), wait for exit (SIGKILL after 5 s), remove the scratch folder and a unix server socket. Idempotent.
    pub fn stop(&self) -> Result<()> {
        let mut guard = self.lock();
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        let ended = self.terminate(&mut child);

        let mut cleanup = Ok(());
        if let Err(e) = fs::remove_dir_all(&self.scratch)
            && e.kind() != io::ErrorKind::NotFound
        {
            cleanup = Err(Error::io(
                "cannot remove the export's scratch folder",
                &self.scratch,
                e,
            ));
        }
        if let ExportServer::Unix(path) = &self.server {
            remove_socket(path);
        }
        ended.and(cleanup)
    }

    /// Whether the daemon still runs.
    pub fn is_running(&self) -> bool {
        match self.lock().as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// End the daemon and reap it.
    fn terminate(&self, child: &mut Child) -> Result<()> {
        let reap_err = |e: io::Error| {
            Error::operation_failed(format!("cannot wait for {DAEMON} (pid {}): {e}", self.pid))
        };
        if child.try_wait().map_err(reap_err)?.is_some() {
            return Ok(());
        }
        if qmp_quit(&self.qmp_socket).is_err() {
            // The monitor is unusable: qemu-storage-daemon also quits cleanly on SIGTERM.
            if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                crate::warn_if_err!(
                    rustix::process::kill_process(pid, rustix::process::Signal::TERM),
                    "cannot stop qemu-storage-daemon {}",
                    self.pid
                );
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().map_err(reap_err)?.is_some() {
                return Ok(());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        // Still there after STOP_TIMEOUT: SIGKILL.
        ::log::warn!("qemu-storage-daemon {} did not stop: killing it", self.pid);
        crate::warn_if_err!(child.kill(), "cannot kill qemu-storage-daemon {}", self.pid);
        child.wait().map_err(reap_err)?;
        Ok(())
    }
}

impl Drop for StorageDaemonExport {
    fn drop(&mut self) {
        crate::warn_if_err!(self.stop(), "cannot stop qemu-storage-daemon {}", self.pid);
    }
}

fn validate(server: &ExportServer, disks: &[ExportDisk]) -> Result<()> {
    match server {
        ExportServer::Tcp { host, port } => {
            if host.is_empty() {
                return Err(Error::invalid_arg("NBD server host must not be empty"));
            }
            if *port == 0 {
                return Err(Error::invalid_arg("NBD server port must not be 0"));
            }
        }
        ExportServer::Unix(path) => check_unix_path(path)?,
    }
    if disks.is_empty() {
        return Err(Error::invalid_arg("no disk to export"));
    }
    for (i, d) in disks.iter().enumerate() {
        if d.export_name.is_empty() || d.export_name.len() > NBD_MAX_NAME {
            return Err(Error::invalid_arg(format!(
                "export name '{}' must have 1 to {NBD_MAX_NAME} bytes",
                d.export_name
            )));
        }
        if disks[..i].iter().any(|o| o.export_name == d.export_name) {
            return Err(Error::invalid_arg(format!(
                "export name '{}' is used twice",
                d.export_name
            )));
        }
        if d.image.as_os_str().is_empty() || d.image.to_str().is_none() {
            return Err(Error::invalid_arg(format!(
                "image path '{}' must be non-empty UTF-8",
                d.image.display()
            )));
        }
        match &d.bitmap {
            Some(b) if b.is_empty() => {
                return Err(Error::invalid_arg(format!(
                    "empty bitmap name for export '{}'",
                    d.export_name
                )));
            }
            Some(b) if d.format == DiskFormat::Raw => {
                return Err(Error::invalid_arg(format!(
                    "bitmap '{b}' requested for export '{}', but raw image '{}' cannot hold bitmaps",
                    d.export_name,
                    d.image.display()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The unix socket's folder must exist; an existing path must be a stale
/// socket (QEMU unlinks whatever is at the path before binding).
fn check_unix_path(path: &Path) -> Result<()> {
    if path.to_str().is_none_or(str::is_empty) {
        return Err(Error::invalid_arg(format!(
            "socket path '{}' must be non-empty UTF-8",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::invalid_arg(format!(
            "the folder of socket '{}' does not exist",
            path.display()
        )));
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot inspect socket path", path, e)),
        Ok(m) if !m.file_type().is_socket() => Err(Error::operation_failed(format!(
            "'{}' exists and is not a socket",
            path.display()
        ))),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(Error::operation_failed(format!(
                "socket '{}' is already in use by another server",
                path.display()
            ))),
            Err(_) => Ok(()), // stale: the daemon replaces it
        },
    }
}

fn make_scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "libvirt-backup-nbd-{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("cannot create scratch folder", &dir, e))?;
    Ok(dir)
}

/// Start the daemon and wait until it serves. Returns it and its QMP socket path.
fn spawn_and_wait(
    server: &ExportServer,
    disks: &[ExportDisk],
    cert_dir: Option<&Path>,
    scratch: &Path,
) -> Result<(Child, PathBuf)> {
    let qmp_socket = scratch.join("qmp.sock");
    let pid_file = scratch.join("daemon.pid");
    let log_path = scratch.join("stderr.log");
    let log =
        File::create(&log_path).map_err(|e| Error::io("cannot create daemon log", &log_path, e))?;

    // Through sh for its umask: the NBD socket the daemon creates is its
    // owner's from the start (anyone who can connect reads the disks).
    let keys = KeyPipes::of(disks)?;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 077 && exec \"$0\" \"$@\"", DAEMON])
        .args(daemon_args(server, disks, cert_dir, &qmp_socket, &keys)?)
        .arg("--pidfile")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let child = spawn_tied_to_process(cmd, keys.fds())
        .map_err(|e| Error::operation_failed(format!("cannot run {DAEMON}: {e}")))?;
    // The daemon has its own read ends (it reads them as it starts).
    drop(keys);

    wait_until_serving(child, server, &pid_file, &log_path).map(|child| (child, qmp_socket))
}

/// Start `cmd` so that the child gets SIGTERM when this process dies: an
/// export ends with the process that runs it (whose registration in the
/// catalog, `store::exports`, goes stale at the same time), instead of a
/// daemon serving on with nobody to stop it. Linux signals the child when
/// the thread that forked it ends, not the process: children are forked by
/// one thread that lasts as long as the process (one per process, made
/// anew in a forked child, which has no threads but the forking one).
/// The descriptors `inherit` (close on exec here) stay open in the child.
fn spawn_tied_to_process(mut cmd: Command, inherit: Vec<RawFd>) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: Mutex<Option<(u32, mpsc::Sender<Request>)>> = Mutex::new(None);

    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and makes
    // only system calls, all async-signal-safe (no allocation: `inherit`
    // is only read); the descriptors of `inherit` are open in the child,
    // as the caller holds them open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), rustix::io::FdFlags::empty())?;
            }
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent died before the line above: nobody would signal.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::other("the parent process ended"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        let me = std::process::id();
        if spawner.as_ref().is_none_or(|(pid, _)| *pid != me) {
            let (tx, rx) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("lvb-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        // The asker gave up waiting: nothing to tell.
                        let _ = reply.send(cmd.spawn());
                    }
                })?;
            *spawner = Some((me, tx));
        }
        let (_, tx) = spawner.as_ref().expect("made above");
        tx.send((cmd, reply))
            .map_err(|_| io::Error::other("the spawning thread ended"))?;
    }
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawning thread ended"))?
}

/// Wait until the daemon serves NBD (its pid file appears after every
/// export was created); on exit or timeout, fail with what it printed.
fn wait_until_serving(
    mut child: Child,
    server: &ExportServer,
    pid_file: &Path,
    log_path: &Path,
) -> Result<Child> {
    let stderr = || {
        fs::read_to_string(log_path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let msg = stderr();
                return Err(Error::operation_failed(if msg.is_empty() {
                    format!("{DAEMON} exited at start ({status})")
                } else {
                    msg
                }));
            }
            Ok(None) => {}
            Err(e) => {
                crate::warn_if_err!(child.kill(), "cannot kill qemu-storage-daemon");
                crate::warn_if_err!(child.wait(), "cannot reap qemu-storage-daemon");
                return Err(Error::operation_failed(format!(
                    "cannot wait for {DAEMON}: {e}"
                )));
            }
        }
        if pid_file.exists() && probe_nbd(server).is_ok() {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            crate::warn_if_err!(child.kill(), "cannot kill qemu-storage-daemon");
            crate::warn_if_err!(child.wait(), "cannot reap qemu-storage-daemon");
            let msg = stderr();
            return Err(Error::operation_failed(format!(
                "{DAEMON} did not serve NBD on {} within {} s{}{}",
                describe(server),
                START_TIMEOUT.as_secs(),
                if msg.is_empty() { "" } else { ": " },
                msg
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn describe(server: &ExportServer) -> String {
    match server {
        ExportServer::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        ExportServer::Tcp { host, port } => format!("{host}:{port}"),
        ExportServer::Unix(p) => format!("unix socket '{}'", p.display()),
    }
}

/// The daemon's command line, without `--pidfile`. Order matters: nodes, then
/// the NBD server, then the exports that need both. Every JSON argument is
/// built by serde_json, so names and paths are escaped whatever they hold.
fn daemon_args(
    server: &ExportServer,
    disks: &[ExportDisk],
    cert_dir: Option<&Path>,
    qmp_socket: &Path,
    keys: &KeyPipes,
) -> Result<Vec<String>> {
    let mut args = keys.args().to_vec();
    for (i, d) in disks.iter().enumerate() {
        args.extend(disk_nodes(i, d, keys)?);
    }
    args.extend(server_args(server, cert_dir)?);
    for (i, d) in disks.iter().enumerate() {
        let mut export = json!({
            "type": "nbd",
            "id": format!("export{i}"),
            "node-name": format!("disk{i}"),
            "name": d.export_name,
            "writable": false,
        });
        if let Some(b) = &d.bitmap {
            export["bitmaps"] = json!([b]);
        }
        args.push("--export".into());
        args.push(export.to_string());
    }
    // --chardev takes QemuOpts syntax only: a comma in a value is doubled.
    args.push("--chardev".into());
    args.push(format!(
        "socket,id=qmp0,path={},server=on,wait=off",
        utf8(qmp_socket)?.replace(',', ",,")
    ));
    args.push("--monitor".into());
    args.push("chardev=qmp0,mode=control".into());
    Ok(args)
}

/// The `--blockdev` arguments of disk `i`: a read-only file node and a
/// format node (`disk<i>`, what the export serves) for its image, and, for
/// a chain given node by node (`ExportDisk::backing`), the same for each
/// level below (`disk<i>.<level>`, deepest first), each qcow2 node naming
/// the next as its backing (the last none), so no header's name is
/// followed. A qcow2 level whose key is lent is opened with it (`secrets`).
fn disk_nodes(i: usize, d: &ExportDisk, keys: &KeyPipes) -> Result<Vec<String>> {
    let mut levels = vec![(d.image.as_path(), d.format)];
    if let Some(b) = &d.backing {
        levels.extend(b.iter().map(|(p, f)| (p.as_path(), *f)));
    }
    let name = |kind: &str, l: usize| match l {
        0 => format!("{kind}{i}"),
        l => format!("{kind}{i}.{l}"),
    };
    let node = |l: usize| name("disk", l);
    let mut args = Vec::new();
    // Deepest first: a node names its backing node once that exists.
    for (l, (path, format)) in levels.iter().enumerate().rev() {
        let file = name("file", l);
        let mut image = json!({
            "driver": format.as_str(),
            "node-name": node(l),
            "file": file,
            "read-only": true,
        });
        if let Some(e) = (*format == DiskFormat::Qcow2)
            .then(|| keys.encrypt(path))
            .flatten()
        {
            image["encrypt"] = e;
        }
        if d.backing.is_some() && *format == DiskFormat::Qcow2 {
            image["backing"] = match l + 1 < levels.len() {
                true => json!(node(l + 1)),
                false => serde_json::Value::Null,
            };
        }
        let file_node = json!({
            "driver": "file",
            "node-name": file,
            "filename": utf8(path)?,
            "read-only": true,
        });
        args.extend(["--blockdev".into(), file_node.to_string()]);
        args.extend(["--blockdev".into(), image.to_string()]);
    }
    Ok(args)
}

/// The NBD server's arguments: with `cert_dir`, its x509 credentials
/// object (JSON, not QemuOpts: a folder name may hold commas) and
/// `tls-creds`.
fn server_args(server: &ExportServer, cert_dir: Option<&Path>) -> Result<Vec<String>> {
    let mut args: Vec<String> = Vec::new();
    let addr = match server {
        ExportServer::Tcp { host, port } => json!({
            "type": "inet",
            "host": host,
            "port": port.to_string(),
        }),
        ExportServer::Unix(path) => json!({"type": "unix", "path": utf8(path)?}),
    };
    let mut nbd = json!({ "addr": addr });
    if let Some(dir) = cert_dir {
        args.push("--object".into());
        args.push(
            json!({
                "qom-type": "tls-creds-x509",
                "id": "tls0",
                "dir": utf8(dir)?,
                "endpoint": "server",
                "verify-peer": true,
            })
            .to_string(),
        );
        nbd["tls-creds"] = json!("tls0");
    }
    args.push("--nbd-server".into());
    args.push(nbd.to_string());
    Ok(args)
}

/// A path the daemon's JSON arguments can carry.
fn utf8(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::invalid_arg(format!("path '{}' is not UTF-8", p.display())))
}

const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const NBD_IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1;
const NBD_FLAG_C_NO_ZEROES: u32 = 2;
const NBD_OPT_ABORT: u32 = 2;

/// Connect to the NBD server, check its newstyle greeting and leave politely
/// (NBD_OPT_ABORT), so the daemon logs no failed negotiation.
fn probe_nbd(server: &ExportServer) -> io::Result<()> {
    match server {
        ExportServer::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            nbd_handshake(s)
        }
        ExportServer::Tcp { host, port } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolves to nothing");
            for addr in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                    Ok(s) => {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        return nbd_handshake(s);
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

fn nbd_handshake<S: Read + Write>(mut s: S) -> io::Result<()> {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)?;
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&greeting[i..i + 8]);
        u64::from_be_bytes(b)
    };
    if word(0) != NBD_MAGIC || word(8) != NBD_IHAVEOPT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an NBD newstyle server",
        ));
    }
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes());
    msg.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&NBD_OPT_ABORT.to_be_bytes());
    msg.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&msg)?;
    s.flush()?;
    // The server acknowledges the abort and closes; wait for that so it does
    // not see a connection dropped mid-negotiation.
    let mut sink = [0u8; 64];
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Ask the daemon to quit over its QMP monitor.
fn qmp_quit(path: &Path) -> io::Result<()> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut writer = s;
    let mut line = String::new();

    reader.read_line(&mut line)?;
    if !matches!(qmp_message(&line), Ok(QmpMessage::Greeting)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no QMP greeting",
        ));
    }
    for command in ["qmp_capabilities", "quit"] {
        writer.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())?;
        // Wait for the answer: QEMU drops the commands still queued when the
        // client hangs up, so closing right after "quit" would lose it.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            match qmp_message(&line)? {
                QmpMessage::Return => break,
                QmpMessage::Error(line) => return Err(io::Error::other(line)),
                // An event: keep reading.
                QmpMessage::Greeting | QmpMessage::Other => {}
            }
        }
    }
    Ok(())
}

/// One line of the QMP monitor, by the member that says what it is.
#[derive(Debug, PartialEq, Eq)]
enum QmpMessage {
    /// `{"QMP": …}`: the greeting.
    Greeting,
    /// `{"return": …}`: the command succeeded.
    Return,
    /// `{"error": …}`: the command failed; the line, to report.
    Error(String),
    /// Anything else (`{"event": …}`): no answer to a command.
    Other,
}

/// Parse one line of the QMP monitor: a JSON object, told apart by its own
/// members only, so that a value that merely holds "return" (an event's
/// data, an error's description) is never taken for a command's success.
/// A line that is not a JSON object is a protocol error.
fn qmp_message(line: &str) -> io::Result<QmpMessage> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        bad(format!(
            "QMP sent a line that is not JSON ({e}): {}",
            line.trim()
        ))
    })?;
    let Some(members) = value.as_object() else {
        return Err(bad(format!(
            "QMP sent a line that is not a JSON object: {}",
            line.trim()
        )));
    };
    Ok(if members.contains_key("error") {
        QmpMessage::Error(line.trim().to_string())
    } else if members.contains_key("return") {
        QmpMessage::Return
    } else if members.contains_key("QMP") {
        QmpMessage::Greeting
    } else {
        QmpMessage::Other
    })
}

/// Remove a unix socket file (only a socket: never another kind of file).
fn remove_socket(path: &Path) {
    if let Ok(m) = fs::symlink_metadata(path)
        && m.file_type().is_socket()
    {
        crate::warn_if_err!(
            fs::remove_file(path),
            "cannot remove socket '{}'",
            path.display()
        );
    }
}

mod secrets;
#[cfg(test)]
mod tests;
