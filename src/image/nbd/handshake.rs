//! The NBD handshake (fixed newstyle): the greeting, structured replies,
//! the metadata contexts (`base:allocation`, a dirty bitmap) and
//! `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` on a server without it), up to
//! the transmission phase, with the protocol's constants for it.

use std::io::{self, BufReader, Read, Write};

use super::wire::{MAX_REQUEST, Sock, be_u16, be_u32, be_u64, io_error_text, server_text};

// Handshake.
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

const NBD_OPT_EXPORT_NAME: u32 = 1;
pub(super) const NBD_OPT_ABORT: u32 = 2;
const NBD_OPT_GO: u32 = 7;
const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
const NBD_OPT_SET_META_CONTEXT: u32 = 10;

const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_REP_META_CONTEXT: u32 = 4;
const NBD_REP_ERR_BIT: u32 = 1 << 31;
const NBD_REP_ERR_UNSUP: u32 = NBD_REP_ERR_BIT | 1;
const NBD_REP_ERR_POLICY: u32 = NBD_REP_ERR_BIT | 2;
const NBD_REP_ERR_INVALID: u32 = NBD_REP_ERR_BIT | 3;
const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_ERR_BIT | 4;
const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_ERR_BIT | 5;
const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_ERR_BIT | 6;
const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_ERR_BIT | 7;
const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_ERR_BIT | 8;
const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_ERR_BIT | 9;

const NBD_INFO_EXPORT: u16 = 0;
const NBD_INFO_BLOCK_SIZE: u16 = 3;

const BASE_ALLOCATION: &str = "base:allocation";
pub(super) const DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";

/// Largest option reply payload accepted during the handshake.
const MAX_OPTION_REPLY: u32 = 1 << 20;

fn option_name(opt: u32) -> &'static str {
    match opt {
        NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        NBD_OPT_GO => "NBD_OPT_GO",
        NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        _ => "option",
    }
}

fn rep_err_text(rep: u32) -> String {
    match rep {
        NBD_REP_ERR_UNSUP => "not supported".into(),
        NBD_REP_ERR_POLICY => "forbidden by server policy".into(),
        NBD_REP_ERR_INVALID => "invalid request".into(),
        NBD_REP_ERR_PLATFORM => "not supported on this platform".into(),
        NBD_REP_ERR_TLS_REQD => "TLS is required, which this client does not support".into(),
        NBD_REP_ERR_UNKNOWN => "unknown export".into(),
        NBD_REP_ERR_SHUTDOWN => "server is shutting down".into(),
        NBD_REP_ERR_BLOCK_SIZE_REQD => "block size constraints required".into(),
        NBD_REP_ERR_TOO_BIG => "request too big".into(),
        n => format!("error 0x{n:x}"),
    }
}

/// One option reply during the handshake.
struct OptReply {
    typ: u32,
    data: Vec<u8>,
}

/// What the handshake established.
pub(super) struct Negotiated {
    pub(super) size: u64,
    pub(super) structured: bool,
    pub(super) alloc_id: Option<u32>,
    pub(super) dirty_id: Option<u32>,
    pub(super) min_block: u64,
    pub(super) max_block: u64,
}

/// Handshake failures: `Refused` are answers from the server, `Broken` are
/// I/O errors and protocol violations.
pub(super) enum HsFail {
    NoExport,
    Refused(String),
    Broken(String),
}

impl From<io::Error> for HsFail {
    fn from(e: io::Error) -> Self {
        HsFail::Broken(io_error_text(&e))
    }
}

type Hs<T> = std::result::Result<T, HsFail>;

pub(super) fn send_option(io: &mut BufReader<Sock>, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    io.get_mut().write_all(&msg)
}

fn read_option_reply(io: &mut BufReader<Sock>, opt: u32) -> Hs<OptReply> {
    let mut h = [0u8; 20];
    io.read_exact(&mut h)?;
    if be_u64(&h[0..]) != OPT_REPLY_MAGIC {
        return Err(HsFail::Broken("bad option reply magic".into()));
    }
    if be_u32(&h[8..]) != opt {
        return Err(HsFail::Broken(format!(
            "reply to {} names another option ({})",
            option_name(opt),
            be_u32(&h[8..])
        )));
    }
    let typ = be_u32(&h[12..]);
    let len = be_u32(&h[16..]);
    if len > MAX_OPTION_REPLY {
        return Err(HsFail::Broken(format!(
            "option reply of {len} bytes is too large"
        )));
    }
    let mut data = vec![0u8; len as usize];
    io.read_exact(&mut data)?;
    Ok(OptReply { typ, data })
}

/// The server's refusal of an option, with its message if it sent one.
fn refusal(opt: u32, rep: &OptReply) -> String {
    let msg = server_text(&rep.data);
    if msg.is_empty() {
        format!("{} failed: {}", option_name(opt), rep_err_text(rep.typ))
    } else {
        format!(
            "{} failed: {}: {msg}",
            option_name(opt),
            rep_err_text(rep.typ)
        )
    }
}

fn push_string(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

/// The whole option haggling phase, up to transmission.
pub(super) fn handshake(
    io: &mut BufReader<Sock>,
    export: &str,
    bitmap: Option<&str>,
) -> Hs<Negotiated> {
    let no_zeroes = greet(io)?;
    let structured = structured_replies(io)?;
    let (alloc_id, dirty_id) = match structured {
        true => meta_contexts(io, export, bitmap)?,
        false => (None, None),
    };
    let go = go(io, export, no_zeroes)?;
    Ok(Negotiated {
        size: go.size,
        structured,
        alloc_id,
        dirty_id,
        min_block: go.min_block,
        max_block: go.max_block,
    })
}

/// The server's greeting and our flags; whether the server leaves out the
/// 124 zero bytes after an export's size (`NBD_FLAG_NO_ZEROES`).
fn greet(io: &mut BufReader<Sock>) -> Hs<bool> {
    let mut h = [0u8; 18];
    io.read_exact(&mut h)?;
    if be_u64(&h[0..]) != NBDMAGIC {
        return Err(HsFail::Broken("not an NBD server (bad greeting)".into()));
    }
    match be_u64(&h[8..]) {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(HsFail::Broken(
                "the server speaks the old-style protocol, which is not supported".into(),
            ));
        }
        _ => return Err(HsFail::Broken("bad handshake magic".into())),
    }
    let server_flags = be_u16(&h[16..]);
    if server_flags & NBD_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HsFail::Broken(
            "the server does not support the fixed newstyle handshake".into(),
        ));
    }
    let no_zeroes = server_flags & NBD_FLAG_NO_ZEROES != 0;
    let mut client_flags = NBD_FLAG_C_FIXED_NEWSTYLE;
    if no_zeroes {
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    }
    io.get_mut().write_all(&client_flags.to_be_bytes())?;
    Ok(no_zeroes)
}

/// `NBD_OPT_STRUCTURED_REPLY` (needed for block status): whether the
/// server agreed.
fn structured_replies(io: &mut BufReader<Sock>) -> Hs<bool> {
    send_option(io, NBD_OPT_STRUCTURED_REPLY, &[])?;
    let rep = read_option_reply(io, NBD_OPT_STRUCTURED_REPLY)?;
    match rep.typ {
        NBD_REP_ACK => Ok(true),
        NBD_REP_ERR_TLS_REQD => Err(HsFail::Refused(refusal(NBD_OPT_STRUCTURED_REPLY, &rep))),
        t if t & NBD_REP_ERR_BIT != 0 => Ok(false),
        t => Err(HsFail::Broken(format!(
            "unexpected reply {t} to NBD_OPT_STRUCTURED_REPLY"
        ))),
    }
}

/// `NBD_OPT_SET_META_CONTEXT` for "base:allocation" and the dirty bitmap
/// (if any): their context ids, each `None` when the server has none.
fn meta_contexts(
    io: &mut BufReader<Sock>,
    export: &str,
    bitmap: Option<&str>,
) -> Hs<(Option<u32>, Option<u32>)> {
    let (mut alloc_id, mut dirty_id) = (None, None);
    let dirty_name = bitmap.map(|b| format!("{DIRTY_BITMAP_PREFIX}{b}"));
    let mut data = Vec::new();
    push_string(&mut data, export);
    let queries: Vec<&str> = std::iter::once(BASE_ALLOCATION)
        .chain(dirty_name.as_deref())
        .collect();
    data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in &queries {
        push_string(&mut data, q);
    }
    send_option(io, NBD_OPT_SET_META_CONTEXT, &data)?;
    loop {
        let rep = read_option_reply(io, NBD_OPT_SET_META_CONTEXT)?;
        match rep.typ {
            NBD_REP_ACK => return Ok((alloc_id, dirty_id)),
            NBD_REP_META_CONTEXT => {
                if rep.data.len() < 4 {
                    return Err(HsFail::Broken("short NBD_REP_META_CONTEXT".into()));
                }
                let id = be_u32(&rep.data);
                let name = &rep.data[4..];
                if name == BASE_ALLOCATION.as_bytes() {
                    alloc_id = Some(id);
                } else if dirty_name.as_deref().map(str::as_bytes) == Some(name) {
                    dirty_id = Some(id);
                }
            }
            NBD_REP_ERR_UNKNOWN => return Err(HsFail::NoExport),
            NBD_REP_ERR_TLS_REQD => {
                return Err(HsFail::Refused(refusal(NBD_OPT_SET_META_CONTEXT, &rep)));
            }
            // Any other error: no metadata contexts, which is allowed.
            t if t & NBD_REP_ERR_BIT != 0 => return Ok((None, None)),
            _ => {} // unknown informational reply: ignore
        }
    }
}

/// What `NBD_OPT_GO` tells of the export.
struct Go {
    size: u64,
    min_block: u64,
    max_block: u64,
}

/// Enter transmission with `NBD_OPT_GO`, asking for block size
/// constraints (or with `NBD_OPT_EXPORT_NAME` on a server without it).
fn go(io: &mut BufReader<Sock>, export: &str, no_zeroes: bool) -> Hs<Go> {
    let mut data = Vec::new();
    push_string(&mut data, export);
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    send_option(io, NBD_OPT_GO, &data)?;
    let mut size = None;
    let (mut min_block, mut max_block) = (1u64, MAX_REQUEST);
    loop {
        let rep = read_option_reply(io, NBD_OPT_GO)?;
        match rep.typ {
            NBD_REP_ACK => break,
            NBD_REP_INFO => match info(&rep.data)? {
                Info::Size(n) => size = Some(n),
                Info::BlockSize(min, max) => (min_block, max_block) = (min, max),
                Info::Other => {}
            },
            NBD_REP_ERR_UNKNOWN => return Err(HsFail::NoExport),
            NBD_REP_ERR_UNSUP => {
                size = Some(export_name(io, export, no_zeroes)?);
                break;
            }
            t if t & NBD_REP_ERR_BIT != 0 => {
                return Err(HsFail::Refused(refusal(NBD_OPT_GO, &rep)));
            }
            _ => {} // unknown informational reply: ignore
        }
    }
    let size = size.ok_or_else(|| {
        HsFail::Broken("the server did not send the export size (NBD_INFO_EXPORT)".into())
    })?;
    Ok(Go {
        size,
        min_block,
        max_block,
    })
}

/// One `NBD_REP_INFO` of `NBD_OPT_GO`.
enum Info {
    Size(u64),
    /// Minimum and maximum block size.
    BlockSize(u64, u64),
    /// Name, description, ...: not needed.
    Other,
}

fn info(data: &[u8]) -> Hs<Info> {
    if data.len() < 2 {
        return Err(HsFail::Broken("short NBD_REP_INFO".into()));
    }
    match be_u16(data) {
        NBD_INFO_EXPORT => {
            if data.len() != 12 {
                return Err(HsFail::Broken("bad NBD_INFO_EXPORT length".into()));
            }
            Ok(Info::Size(be_u64(&data[2..])))
        }
        NBD_INFO_BLOCK_SIZE => {
            if data.len() != 14 {
                return Err(HsFail::Broken("bad NBD_INFO_BLOCK_SIZE length".into()));
            }
            let min = be_u32(&data[2..]) as u64;
            let max = be_u32(&data[10..]) as u64;
            if !min.is_power_of_two() || min > 65536 || max < min {
                return Err(HsFail::Broken(format!(
                    "invalid block size constraints (minimum {min}, maximum {max})"
                )));
            }
            Ok(Info::BlockSize(min, max))
        }
        _ => Ok(Info::Other),
    }
}

/// A server without `NBD_OPT_GO`: `NBD_OPT_EXPORT_NAME`, which answers
/// with the export's size (and drops the connection for an unknown one).
fn export_name(io: &mut BufReader<Sock>, export: &str, no_zeroes: bool) -> Hs<u64> {
    send_option(io, NBD_OPT_EXPORT_NAME, export.as_bytes())?;
    let mut r = [0u8; 10];
    match io.read_exact(&mut r) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(HsFail::NoExport),
        Err(e) => return Err(e.into()),
    }
    if !no_zeroes {
        let mut zeroes = [0u8; 124];
        io.read_exact(&mut zeroes)?;
    }
    Ok(be_u64(&r))
}
