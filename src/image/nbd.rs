//! A minimal synchronous NBD client for reading disk images.
//!
//! It speaks the fixed-newstyle handshake with structured replies and the
//! `base:allocation` / `qemu:dirty-bitmap:<name>` metadata contexts, which is
//! what qemu-nbd, qemu-storage-daemon and QEMU's built-in NBD server (libvirt
//! pull-mode backups) offer. Only reading is supported: `NBD_CMD_READ` and
//! `NBD_CMD_BLOCK_STATUS`.
//!
//! One request is in flight at a time: the connection sits behind a mutex, so
//! an [`NbdClient`] can be shared between threads. Memory is bounded: reads go
//! straight into the caller's buffer (a bounce buffer of at most one request
//! is used only when the server's minimum block size forces alignment), and
//! at most [`EXTENT_CACHE_MAX`] extents are kept per metadata context.
//!
//! Extents are cached between calls: the client assumes the export does not
//! change while it is connected, which holds for the read-only, point-in-time
//! exports backups read from.
//!
//! Here: the client and the transmission phase (requests, structured
//! replies, the extent caches). The option haggling that precedes it,
//! with its constants, is `handshake.rs`; the socket and the wire's
//! encoding, which both phases use, are `wire.rs`.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use crate::error::{Error, Result};

mod handshake;
mod wire;

use handshake::{DIRTY_BITMAP_PREFIX, HsFail, NBD_OPT_ABORT, handshake, send_option};
use wire::{
    IO_TIMEOUT, MAX_REQUEST, MAX_STRING, Sock, be_u16, be_u32, be_u64, io_error_text, server_text,
};

// Transmission.
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const NBD_CMD_READ: u16 = 0;
const NBD_CMD_DISC: u16 = 2;
const NBD_CMD_BLOCK_STATUS: u16 = 7;

const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;

const NBD_REPLY_TYPE_NONE: u16 = 0;
const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const NBD_REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = NBD_REPLY_TYPE_ERROR_BIT | 2;

const NBD_STATE_HOLE: u32 = 1 << 0;
const NBD_STATE_ZERO: u32 = 1 << 1;
const NBD_STATE_DIRTY: u32 = 1 << 0;

const NBD_ESHUTDOWN: u32 = 108;

/// Extents kept per metadata context from one block status reply.
const EXTENT_CACHE_MAX: usize = 65536;
/// Region asked about in one block status request.
const BLOCK_STATUS_WINDOW: u64 = 1 << 30;

/// Where an NBD export is: the server element of the backup XML.
pub type NbdAddress = crate::xml::backup::NbdServer;

impl fmt::Display for NbdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddress::Tcp { host, port } if host.contains(':') && !host.starts_with('[') => {
                write!(f, "[{host}]:{port}")
            }
            NbdAddress::Tcp { host, port } => write!(f, "{host}:{port}"),
            NbdAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A connection to one export of an NBD server, for reading.
pub struct NbdClient {
    conn: Mutex<Conn>,
    size: u64,
    /// The server as shown in messages ("unix:/path", "host:port").
    server: String,
    export: String,
}

/// Metadata contexts the client can ask about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Allocation,
    Dirty,
}

/// Extents of one metadata context, as last reported by the server.
#[derive(Default)]
struct Extents {
    start: u64,
    /// (end offset, flags), in order, contiguous from `start`.
    list: Vec<(u64, u32)>,
}

impl Extents {
    /// (length from `offset` to the end of its extent, flags), if known.
    fn lookup(&self, offset: u64) -> Option<(u64, u32)> {
        let end = self.list.last()?.0;
        if offset < self.start || offset >= end {
            return None;
        }
        let i = self.list.partition_point(|&(e, _)| e <= offset);
        let (e, flags) = self.list[i];
        Some((e - offset, flags))
    }
}

/// Why a request failed, before it is given context.
enum Fail {
    /// The connection is unusable (I/O error or protocol violation).
    Broken(String),
    /// The server answered the request with an error; the connection is fine.
    Server(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Broken(io_error_text(&e))
    }
}

type Step<T> = std::result::Result<T, Fail>;

/// The socket and the state that goes with it.
struct Conn {
    io: BufReader<Sock>,
    next_handle: u64,
    structured: bool,
    alloc_id: Option<u32>,
    dirty_id: Option<u32>,
    min_block: u64,
    max_request: u64,
    alloc: Extents,
    dirty: Extents,
    /// Set once the connection can no longer be used.
    broken: Option<String>,
    /// The stream is out of step with the protocol: do not even send NBD_CMD_DISC.
    desync: bool,
}

/// The text of an NBD error number (the protocol uses Linux errno values).
fn nbd_errno_text(err: u32) -> String {
    match err {
        1 => "Operation not permitted".into(),
        5 => "Input/output error".into(),
        12 => "Cannot allocate memory".into(),
        22 => "Invalid argument".into(),
        28 => "No space left on device".into(),
        75 => "Value too large for defined data type".into(),
        95 => "Operation not supported".into(),
        NBD_ESHUTDOWN => "Server is shutting down".into(),
        n => format!("error {n}"),
    }
}

fn align_down(v: u64, a: u64) -> u64 {
    v - v % a
}

fn connect_socket(addr: &NbdAddress) -> io::Result<Sock> {
    match addr {
        NbdAddress::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            Ok(Sock::Unix(s))
        }
        NbdAddress::Tcp { host, port } => {
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let mut last = None;
            for sa in (host, *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&sa, IO_TIMEOUT) {
                    Ok(s) => {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        s.set_nodelay(true)?;
                        return Ok(Sock::Tcp(s));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "host name has no address")
            }))
        }
    }
}

impl NbdClient {
    /// Connect, fixed-newstyle handshake, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT for
    /// "base:allocation" (and optionally "qemu:dirty-bitmap:<name>" when `bitmap` is Some), NBD_OPT_GO for `export`.
    pub fn connect(addr: &NbdAddress, export: &str, bitmap: Option<&str>) -> Result<NbdClient> {
        let server = addr.to_string();
        if export.len() > MAX_STRING || export.contains('\0') {
            return Err(Error::invalid_arg(format!(
                "NBD export name '{export}' is not valid"
            )));
        }
        if let Some(b) = bitmap
            && (b.is_empty()
                || DIRTY_BITMAP_PREFIX.len() + b.len() > MAX_STRING
                || b.contains('\0'))
        {
            return Err(Error::invalid_arg(format!(
                "dirty bitmap name '{b}' is not valid"
            )));
        }
        let sock = connect_socket(addr).map_err(|e| {
            Error::operation_failed(format!(
                "cannot connect to NBD server {server}: {}",
                io_error_text(&e)
            ))
        })?;
        let mut io = BufReader::with_capacity(64 << 10, sock);
        let neg = match handshake(&mut io, export, bitmap) {
            Ok(n) => n,
            Err(f) => {
                // Politely end option haggling; the server may already be gone.
                if !matches!(f, HsFail::Broken(_)) {
                    let _ = send_option(&mut io, NBD_OPT_ABORT, &[]);
                }
                io.get_ref().shutdown();
                return Err(Error::operation_failed(match f {
                    HsFail::NoExport => {
                        format!("NBD server {server} has no export '{export}'")
                    }
                    HsFail::Refused(m) => {
                        format!("NBD server {server} refused export '{export}': {m}")
                    }
                    HsFail::Broken(m) => format!(
                        "NBD handshake with server {server} for export '{export}' failed: {m}"
                    ),
                }));
            }
        };
        let max_request =
            align_down(neg.max_block.min(MAX_REQUEST), neg.min_block).max(neg.min_block);
        let client = NbdClient {
            conn: Mutex::new(Conn {
                io,
                next_handle: 1,
                structured: neg.structured,
                alloc_id: neg.alloc_id,
                dirty_id: neg.dirty_id,
                min_block: neg.min_block,
                max_request,
                alloc: Extents::default(),
                dirty: Extents::default(),
                broken: None,
                desync: false,
            }),
            size: neg.size,
            server,
            export: export.to_string(),
        };
        if let Some(b) = bitmap
            && neg.dirty_id.is_none()
        {
            // Dropping the client disconnects.
            return Err(Error::operation_failed(format!(
                "NBD server {} does not offer dirty bitmap '{b}' for export '{}'",
                client.server, client.export
            )));
        }
        Ok(client)
    }

    /// The export's size in bytes, as the server announced it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The connection, or why it cannot be used.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Conn>> {
        let conn = match self.conn.lock() {
            Ok(conn) => conn,
            Err(poisoned) => {
                // A request panicked half-way: the stream may be out of step.
                let mut conn = poisoned.into_inner();
                if !conn.desync {
                    conn.desync = true;
                    conn.io.get_ref().shutdown();
                }
                conn.broken
                    .get_or_insert_with(|| "an earlier request was interrupted".into());
                conn
            }
        };
        if let Some(why) = &conn.broken {
            return Err(Error::operation_failed(format!(
                "connection to NBD server {} for export '{}' is unusable: {why}",
                self.server, self.export
            )));
        }
        Ok(conn)
    }

    /// Read exactly buf.len() bytes at offset (split into requests of at most the server's max block size / 32 MiB).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        let end = offset.checked_add(len).filter(|&e| e <= self.size);
        let Some(end) = end else {
            return Err(Error::invalid_arg(format!(
                "NBD read of {len} bytes at offset {offset} is beyond the end of export '{}' ({} bytes)",
                self.export, self.size
            )));
        };
        if len == 0 {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let (min_block, max_request) = (conn.min_block, conn.max_request);
        let mut bounce = Vec::new();
        let mut pos = offset;
        while pos < end {
            // The aligned request covering `pos`.
            let req_start = align_down(pos, min_block);
            let req_end = (req_start + max_request)
                .min(end.div_ceil(min_block).saturating_mul(min_block))
                .min(self.size);
            let req_len = (req_end - req_start) as u32;
            let copy_end = req_end.min(end);
            let result = if req_start == pos && req_end == copy_end {
                let dst = &mut buf[(pos - offset) as usize..(copy_end - offset) as usize];
                conn.read_request(req_start, dst)
            } else {
                bounce.resize(req_len as usize, 0);
                conn.read_request(req_start, &mut bounce).map(|()| {
                    let from = (pos - req_start) as usize;
                    let n = (copy_end - pos) as usize;
                    buf[(pos - offset) as usize..(copy_end - offset) as usize]
                        .copy_from_slice(&bounce[from..from + n]);
                })
            };
            if let Err(f) = result {
                let why = conn.fail(f);
                return Err(Error::operation_failed(format!(
                    "NBD read at offset {req_start} failed: {why} (export '{}' on NBD server {})",
                    self.export, self.server
                )));
            }
            pos = copy_end;
        }
        Ok(())
    }

    /// Allocation at offset: (is_data, length) where length <= max, >= 1; holes and zero extents (NBD_STATE_HOLE/ZERO) are not data.
    /// If the server has no base:allocation context, report everything as data.
    pub fn extent(&self, offset: u64, max: u64) -> Result<(bool, u64)> {
        self.status(Context::Allocation, offset, max)
            .map(|(flags, len)| (flags & (NBD_STATE_HOLE | NBD_STATE_ZERO) == 0, len))
    }

    /// Dirty extents of the bitmap given at connect: (dirty, length) like extent(); error if no bitmap was negotiated.
    pub fn dirty_extent(&self, offset: u64, max: u64) -> Result<(bool, u64)> {
        self.status(Context::Dirty, offset, max)
            .map(|(flags, len)| (flags & NBD_STATE_DIRTY != 0, len))
    }

    /// (flags, length) of the extent of `ctx` at `offset`, length clamped to `max`.
    fn status(&self, ctx: Context, offset: u64, max: u64) -> Result<(u32, u64)> {
        if offset >= self.size || max == 0 {
            return Err(Error::invalid_arg(format!(
                "NBD block status query at offset {offset} for {max} bytes is outside export '{}' ({} bytes)",
                self.export, self.size
            )));
        }
        let limit = max.min(self.size - offset);
        let mut conn = self.lock()?;
        let id = match ctx {
            Context::Allocation => conn.alloc_id,
            Context::Dirty => conn.dirty_id,
        };
        if id.is_none() {
            return match ctx {
                Context::Allocation => Ok((0, limit)),
                Context::Dirty => Err(Error::operation_invalid(format!(
                    "no dirty bitmap was negotiated with NBD server {} for export '{}'",
                    self.server, self.export
                ))),
            };
        }
        let cached = |c: &Conn| match ctx {
            Context::Allocation => c.alloc.lookup(offset),
            Context::Dirty => c.dirty.lookup(offset),
        };
        if let Some((len, flags)) = cached(&conn) {
            return Ok((flags, len.min(limit)));
        }
        let start = align_down(offset, conn.min_block);
        let window = align_down(BLOCK_STATUS_WINDOW, conn.min_block);
        let len = (self.size - start).min(window) as u32;
        let what = match ctx {
            Context::Allocation => "allocation",
            Context::Dirty => "dirty bitmap",
        };
        match conn.block_status_request(start, len, self.size) {
            Ok(()) => {}
            Err(f) => {
                let why = conn.fail(f);
                return Err(Error::operation_failed(format!(
                    "NBD {what} query at offset {offset} failed: {why} (export '{}' on NBD server {})",
                    self.export, self.server
                )));
            }
        }
        match cached(&conn) {
            Some((len, flags)) => Ok((flags, len.min(limit))),
            None => {
                let why = conn.fail(Fail::Broken(
                    "the server's reply does not cover the offset".into(),
                ));
                Err(Error::operation_failed(format!(
                    "NBD {what} query at offset {offset} failed: {why} (export '{}' on NBD server {})",
                    self.export, self.server
                )))
            }
        }
    }
}

/// The header of one reply message.
enum Header {
    Simple { error: u32 },
    Chunk { flags: u16, typ: u16, len: u32 },
}

/// How the reply to one request ended, as `Conn::read_reply` saw it.
enum Ended {
    /// With a simple reply (`error` 0: success), its payload unread.
    Simple { error: u32 },
    /// With the chunk flagged DONE; the text of the first error chunk, if any.
    Done { error: Option<String> },
}

impl Conn {
    /// Record a failure; returns its text.
    fn fail(&mut self, f: Fail) -> String {
        match f {
            Fail::Broken(why) => {
                self.desync = true;
                self.broken = Some(why.clone());
                self.io.get_ref().shutdown();
                why
            }
            Fail::Server(why) => why,
        }
    }

    fn send_request(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> io::Result<u64> {
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        let mut r = [0u8; 28];
        r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r[4..6].copy_from_slice(&flags.to_be_bytes());
        r[6..8].copy_from_slice(&cmd.to_be_bytes());
        r[8..16].copy_from_slice(&handle.to_be_bytes());
        r[16..24].copy_from_slice(&offset.to_be_bytes());
        r[24..28].copy_from_slice(&len.to_be_bytes());
        self.io.get_mut().write_all(&r)?;
        Ok(handle)
    }

    fn read_header(&mut self, handle: u64) -> Step<Header> {
        let mut m = [0u8; 4];
        self.io.read_exact(&mut m)?;
        let header = match be_u32(&m) {
            SIMPLE_REPLY_MAGIC => {
                let mut h = [0u8; 12];
                self.io.read_exact(&mut h)?;
                if be_u64(&h[4..]) != handle {
                    return Err(Fail::Broken("reply for an unknown request".into()));
                }
                Header::Simple { error: be_u32(&h) }
            }
            STRUCTURED_REPLY_MAGIC if self.structured => {
                let mut h = [0u8; 16];
                self.io.read_exact(&mut h)?;
                if be_u64(&h[4..]) != handle {
                    return Err(Fail::Broken("reply for an unknown request".into()));
                }
                Header::Chunk {
                    flags: be_u16(&h),
                    typ: be_u16(&h[2..]),
                    len: be_u32(&h[12..]),
                }
            }
            _ => return Err(Fail::Broken("bad reply magic".into())),
        };
        Ok(header)
    }

    fn skip(&mut self, n: u64) -> Step<()> {
        let copied = io::copy(&mut (&mut self.io).take(n), &mut io::sink())?;
        if copied != n {
            return Err(Fail::Broken("the server closed the connection".into()));
        }
        Ok(())
    }

    /// Read an error chunk's payload (type has bit 15 set): its text.
    fn read_error_chunk(&mut self, typ: u16, len: u32) -> Step<String> {
        if len < 6 {
            return Err(Fail::Broken("short error chunk".into()));
        }
        let mut h = [0u8; 6];
        self.io.read_exact(&mut h)?;
        let err = be_u32(&h);
        let mlen = be_u16(&h[4..]) as u32;
        if mlen > len - 6 {
            return Err(Fail::Broken("bad error chunk message length".into()));
        }
        let mut msg = vec![0u8; mlen as usize];
        self.io.read_exact(&mut msg)?;
        let mut rest = (len - 6 - mlen) as u64;
        let mut at = None;
        if typ == NBD_REPLY_TYPE_ERROR_OFFSET && rest >= 8 {
            let mut o = [0u8; 8];
            self.io.read_exact(&mut o)?;
            at = Some(be_u64(&o));
            rest -= 8;
        }
        self.skip(rest)?;
        if err == NBD_ESHUTDOWN {
            // The server is going away: no further requests on this connection.
            self.broken = Some("the server is shutting down".into());
        }
        let mut text = nbd_errno_text(err);
        let msg = server_text(&msg);
        if !msg.is_empty() {
            text = format!("{text}: {msg}");
        }
        if let Some(at) = at {
            text = format!("{text} (at offset {at})");
        }
        Ok(text)
    }

    fn simple_error(&mut self, err: u32) -> Fail {
        if err == NBD_ESHUTDOWN {
            self.broken = Some("the server is shutting down".into());
        }
        Fail::Server(nbd_errno_text(err))
    }

    /// Read the reply to request `handle` up to its end. NBD_REPLY_TYPE_NONE
    /// and error chunks are handled here (the first error's text is kept);
    /// every other chunk goes to `chunk` with its type and payload length,
    /// which reads the payload, or returns Ok(false) for a type that has no
    /// place in a reply to `cmd`. A simple reply ends the walk unread beyond
    /// its header: a read's data follows it.
    fn read_reply(
        &mut self,
        handle: u64,
        cmd: &str,
        mut chunk: impl FnMut(&mut Conn, u16, u32) -> Step<bool>,
    ) -> Step<Ended> {
        let mut error: Option<String> = None;
        loop {
            let (flags, typ, len) = match self.read_header(handle)? {
                Header::Simple { error } => return Ok(Ended::Simple { error }),
                Header::Chunk { flags, typ, len } => (flags, typ, len),
            };
            match typ {
                NBD_REPLY_TYPE_NONE => {
                    if len != 0 {
                        return Err(Fail::Broken("bad NBD_REPLY_TYPE_NONE chunk".into()));
                    }
                }
                t if t & NBD_REPLY_TYPE_ERROR_BIT != 0 => {
                    let text = self.read_error_chunk(t, len)?;
                    error.get_or_insert(text);
                }
                t => {
                    if !chunk(self, t, len)? {
                        return Err(Fail::Broken(format!(
                            "unexpected chunk type {t} in reply to {cmd}"
                        )));
                    }
                }
            }
            if flags & NBD_REPLY_FLAG_DONE != 0 {
                return Ok(Ended::Done { error });
            }
        }
    }

    /// One NBD_CMD_READ of `dst.len()` bytes (at most u32::MAX) at `offset`.
    fn read_request(&mut self, offset: u64, dst: &mut [u8]) -> Step<()> {
        let len = dst.len() as u64;
        let handle = self.send_request(NBD_CMD_READ, 0, offset, len as u32)?;
        let req_end = offset + len;
        // Byte ranges received so far, sorted and merged (one range when the
        // server sends chunks in order).
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let ended = self.read_reply(handle, "NBD_CMD_READ", |conn, typ, len| {
            match typ {
                NBD_REPLY_TYPE_OFFSET_DATA => {
                    if len < 9 {
                        return Err(Fail::Broken("short data chunk".into()));
                    }
                    let mut o = [0u8; 8];
                    conn.io.read_exact(&mut o)?;
                    let at = be_u64(&o);
                    let n = (len - 8) as u64;
                    let chunk_end = at
                        .checked_add(n)
                        .filter(|&e| at >= offset && e <= req_end)
                        .ok_or_else(|| Fail::Broken("data chunk outside the request".into()))?;
                    add_range(&mut covered, at, chunk_end)?;
                    let from = (at - offset) as usize;
                    conn.io.read_exact(&mut dst[from..from + n as usize])?;
                }
                NBD_REPLY_TYPE_OFFSET_HOLE => {
                    if len != 12 {
                        return Err(Fail::Broken("bad hole chunk".into()));
                    }
                    let mut p = [0u8; 12];
                    conn.io.read_exact(&mut p)?;
                    let at = be_u64(&p);
                    let n = be_u32(&p[8..]) as u64;
                    let hole_end = at
                        .checked_add(n)
                        .filter(|&e| n > 0 && at >= offset && e <= req_end)
                        .ok_or_else(|| Fail::Broken("hole chunk outside the request".into()))?;
                    add_range(&mut covered, at, hole_end)?;
                    let from = (at - offset) as usize;
                    dst[from..from + n as usize].fill(0);
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        match ended {
            Ended::Simple { .. } if !covered.is_empty() => {
                Err(Fail::Broken("simple reply after structured chunks".into()))
            }
            Ended::Simple { error: 0 } => {
                self.io.read_exact(dst)?;
                Ok(())
            }
            Ended::Simple { error } => Err(self.simple_error(error)),
            Ended::Done { error: Some(e) } => Err(Fail::Server(e)),
            Ended::Done { error: None } if covered != [(offset, req_end)] => Err(Fail::Broken(
                "the server's reply does not cover the whole request".into(),
            )),
            Ended::Done { error: None } => Ok(()),
        }
    }

    /// One NBD_CMD_BLOCK_STATUS of `len` bytes at `offset`; refreshes the
    /// extent caches of the contexts it reports.
    fn block_status_request(&mut self, offset: u64, len: u32, size: u64) -> Step<()> {
        let handle = self.send_request(NBD_CMD_BLOCK_STATUS, 0, offset, len)?;
        let (mut seen_alloc, mut seen_dirty) = (false, false);
        let ended = self.read_reply(handle, "NBD_CMD_BLOCK_STATUS", |conn, typ, len| {
            if typ != NBD_REPLY_TYPE_BLOCK_STATUS {
                return Ok(false);
            }
            if len < 12 || (len - 4) % 8 != 0 {
                return Err(Fail::Broken("bad block status chunk length".into()));
            }
            let mut c = [0u8; 4];
            conn.io.read_exact(&mut c)?;
            let id = be_u32(&c);
            let count = ((len - 4) / 8) as usize;
            let ctx = if Some(id) == conn.alloc_id && !seen_alloc {
                seen_alloc = true;
                Some(Context::Allocation)
            } else if Some(id) == conn.dirty_id && !seen_dirty {
                seen_dirty = true;
                Some(Context::Dirty)
            } else {
                None
            };
            match ctx {
                Some(ctx) => conn.read_extents(ctx, offset, count, size)?,
                None => conn.skip((count * 8) as u64)?,
            }
            Ok(true)
        })?;
        match ended {
            Ended::Simple { error: 0 } => Err(Fail::Broken(
                "simple reply without an error to NBD_CMD_BLOCK_STATUS".into(),
            )),
            Ended::Simple { error } => Err(self.simple_error(error)),
            Ended::Done { error: Some(e) } => {
                // Whatever was cached from this reply is not to be trusted.
                self.alloc = Extents::default();
                self.dirty = Extents::default();
                Err(Fail::Server(e))
            }
            Ended::Done { error: None } => Ok(()),
        }
    }

    /// Read `count` descriptors starting at `offset` into the cache of `ctx`,
    /// keeping at most EXTENT_CACHE_MAX of them.
    fn read_extents(&mut self, ctx: Context, offset: u64, count: usize, size: u64) -> Step<()> {
        let mut list = Vec::with_capacity(count.min(EXTENT_CACHE_MAX));
        let mut end = offset;
        for _ in 0..count {
            let mut d = [0u8; 8];
            self.io.read_exact(&mut d)?;
            let len = be_u32(&d) as u64;
            let flags = be_u32(&d[4..]);
            if len == 0 {
                return Err(Fail::Broken("zero-length extent".into()));
            }
            if list.len() < EXTENT_CACHE_MAX && end < size {
                end = (end + len).min(size);
                // Merge runs of equal flags.
                match list.last_mut() {
                    Some((e, f)) if *f == flags => *e = end,
                    _ => list.push((end, flags)),
                }
            }
        }
        let extents = Extents {
            start: offset,
            list,
        };
        match ctx {
            Context::Allocation => self.alloc = extents,
            Context::Dirty => self.dirty = extents,
        }
        Ok(())
    }
}

/// Add [start, end) to the sorted, merged list of received ranges; overlap
/// with an earlier chunk is a protocol violation.
fn add_range(list: &mut Vec<(u64, u64)>, start: u64, end: u64) -> Step<()> {
    let i = list.partition_point(|&(_, e)| e <= start);
    if i < list.len() && list[i].0 < end {
        return Err(Fail::Broken("overlapping chunks in reply".into()));
    }
    let join_prev = i > 0 && list[i - 1].1 == start;
    let join_next = i < list.len() && list[i].0 == end;
    match (join_prev, join_next) {
        (true, true) => {
            list[i - 1].1 = list[i].1;
            list.remove(i);
        }
        (true, false) => list[i - 1].1 = end,
        (false, true) => list[i].0 = start,
        (false, false) => list.insert(i, (start, end)),
    }
    Ok(())
}

impl Drop for NbdClient {
    /// Soft disconnect: NBD_CMD_DISC, errors ignored. Not sent when the
    /// stream is out of step (or a request panicked half-way).
    fn drop(&mut self) {
        if let Ok(conn) = self.conn.get_mut()
            && !conn.desync
        {
            let _ = conn.send_request(NBD_CMD_DISC, 0, 0, 0);
        }
    }
}
