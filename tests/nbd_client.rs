//! The NBD client against real servers (qemu-nbd, qemu-storage-daemon) on
//! loopback: unix sockets and 127.0.0.1.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_send_sync, free_port, loopback, qemu_img, raw_contents};
use libvirt_backup::test_api::image::nbd::{NbdAddress, NbdClient};

const MIB: u64 = 1 << 20;

/// A server process, killed when the guard goes away (even on panic).
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &str, args: &[&str], log: &Path) -> Server {
    let path = log.to_path_buf();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd}: {e}"));
    Server { child, log: path }
}

/// Connect, retrying while the server starts up.
fn connect(
    server: &mut Server,
    addr: &NbdAddress,
    export: &str,
    bitmap: Option<&str>,
) -> NbdClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match NbdClient::connect(addr, export, bitmap) {
            Ok(c) => return c,
            Err(e) => {
                if let Some(status) = server.child.try_wait().unwrap() {
                    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                    panic!("NBD server exited ({status}) before accepting: {e}\n{log}");
                }
                assert!(Instant::now() < deadline, "NBD server did not come up: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A 40 MiB qcow2 with 0xab at [1M, 3M) and nothing else allocated, and its
/// raw contents as qemu-img sees them.
fn make_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let img = common::image_in(
        dir,
        "disk.qcow2",
        "qcow2",
        "40M",
        &["write -q -P 0xab 1M 2M"],
    );
    let expected = raw_contents(&img, "qcow2", &dir.join("disk.raw"));
    assert_eq!(expected.len() as u64, 40 * MIB);
    (img, expected)
}

/// qemu-nbd serving the qcow2 `img` read-only as export 'vda', logging to
/// `dir`/qemu-nbd.log; `args`: where it listens, and more options.
fn qemu_nbd(dir: &Path, img: &Path, args: &[&str]) -> Server {
    let mut all = vec!["-r", "-t", "-e", "8", "-f", "qcow2", "-x", "vda"];
    all.extend_from_slice(args);
    all.push(img.to_str().unwrap());
    spawn("qemu-nbd", &all, &dir.join("qemu-nbd.log"))
}

/// qemu-nbd serving `img` (see `qemu_nbd`) on the unix socket `dir`/nbd.sock
/// with `extra` options; its address, and a client asking for `bitmap`.
fn qemu_nbd_unix(
    dir: &Path,
    img: &Path,
    extra: &[&str],
    bitmap: Option<&str>,
) -> (Server, NbdAddress, NbdClient) {
    let sock = dir.join("nbd.sock");
    let mut args = vec!["-k", sock.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut server = qemu_nbd(dir, img, &args);
    let addr = NbdAddress::Unix(sock);
    let client = connect(&mut server, &addr, "vda", bitmap);
    (server, addr, client)
}

/// All extents of one kind, from offset 0, merged: (flag, start, length).
fn map(size: u64, mut query: impl FnMut(u64, u64) -> (bool, u64)) -> Vec<(bool, u64, u64)> {
    let mut out: Vec<(bool, u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let (flag, len) = query(pos, size - pos);
        assert!(
            len >= 1 && len <= size - pos,
            "bad extent length {len} at {pos}"
        );
        match out.last_mut() {
            Some((f, _, l)) if *f == flag => *l += len,
            _ => out.push((flag, pos, len)),
        }
        pos += len;
    }
    out
}

fn check_contents_and_extents(client: &NbdClient, expected: &[u8]) {
    let size = expected.len() as u64;
    assert_eq!(client.size(), size);

    // One read of the whole image: split into 32 MiB requests.
    let mut all = vec![0u8; size as usize];
    client.read_at(&mut all, 0).unwrap();
    assert!(
        all == expected,
        "whole-image read differs from qemu-img convert"
    );

    // Pieces of odd sizes and offsets, across the data boundaries.
    for &(off, len) in &[
        (0u64, 1usize),
        (MIB - 100, 300),
        (3 * MIB - 7, 4096 + 13),
        (size - 1, 1),
        (5, 0),
    ] {
        let mut b = vec![0x55u8; len];
        client.read_at(&mut b, off).unwrap();
        assert_eq!(
            &b[..],
            &expected[off as usize..off as usize + len],
            "read at {off}+{len}"
        );
    }

    // Reading past the end is refused.
    let mut b = [0u8; 2];
    let err = client.read_at(&mut b, size - 1).unwrap_err();
    assert!(err.message.contains("beyond the end"), "{}", err.message);

    // Allocation: [1M, 3M) is data, the rest is not.
    let m = map(size, |o, max| client.extent(o, max).unwrap());
    assert_eq!(
        m,
        vec![
            (false, 0, MIB),
            (true, MIB, 2 * MIB),
            (false, 3 * MIB, size - 3 * MIB)
        ]
    );
    // Lengths are bounded by max.
    assert_eq!(client.extent(0, 4096).unwrap(), (false, 4096));
    assert_eq!(client.extent(MIB + 10, 1).unwrap(), (true, 1));
    assert_eq!(
        client.extent(MIB + 10, 10 * MIB).unwrap(),
        (true, 2 * MIB - 10)
    );
    assert!(client.extent(size, 1).is_err());
    assert!(client.extent(0, 0).is_err());
}

#[test]
fn client_is_send_and_sync() {
    assert_send_sync::<NbdClient>();
}

#[test]
fn qemu_nbd_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (img, expected) = make_image(dir.path());
    let (_server, addr, client) = qemu_nbd_unix(dir.path(), &img, &[], None);
    check_contents_and_extents(&client, &expected);

    // No bitmap negotiated: dirty_extent() is an error, the connection stays usable.
    let err = client.dirty_extent(0, MIB).unwrap_err();
    assert!(err.message.contains("no dirty bitmap"), "{}", err.message);
    assert!(err.message.contains("'vda'"), "{}", err.message);
    let mut b = [0u8; 16];
    client.read_at(&mut b, MIB).unwrap();
    assert_eq!(b, [0xab; 16]);

    // Unknown export.
    let err = NbdClient::connect(&addr, "nope", None)
        .err()
        .expect("unknown export accepted");
    let sock = dir.path().join("nbd.sock");
    let want = format!("NBD server unix:{} has no export 'nope'", sock.display());
    assert!(err.message.contains(&want), "{}", err.message);

    // A bitmap the server does not export.
    let err = NbdClient::connect(&addr, "vda", Some("b0"))
        .err()
        .expect("missing bitmap accepted");
    assert!(err.message.contains("dirty bitmap 'b0'"), "{}", err.message);

    // Several clients at once.
    let other = NbdClient::connect(&addr, "vda", None).unwrap();
    let mut a = [0u8; 8];
    other.read_at(&mut a, 2 * MIB).unwrap();
    assert_eq!(a, [0xab; 8]);
    drop(other);
    drop(client);
}

#[test]
fn qemu_nbd_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let (img, expected) = make_image(dir.path());
    let port = free_port();
    let mut server = qemu_nbd(
        dir.path(),
        &img,
        &["-b", "127.0.0.1", "-p", &port.to_string()],
    );
    let addr = loopback(port);
    let client = Arc::new(connect(&mut server, &addr, "vda", None));
    check_contents_and_extents(&client, &expected);

    // Reads from several threads at once share the connection.
    let threads: Vec<_> = (0..4u64)
        .map(|i| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                let mut b = vec![0u8; 10 * MIB as usize];
                client.read_at(&mut b, i * 10 * MIB).unwrap();
                b
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let b = t.join().unwrap();
        let off = i * 10 * MIB as usize;
        assert!(b == expected[off..off + b.len()], "thread {i} read differs");
    }

    let err = NbdClient::connect(&addr, "vdb", None)
        .err()
        .expect("unknown export accepted");
    let want = format!("NBD server 127.0.0.1:{port} has no export 'vdb'");
    assert!(err.message.contains(&want), "{}", err.message);
}

#[test]
fn closed_port_and_missing_socket() {
    let port = free_port(); // nothing listens there once the listener is dropped
    let addr = loopback(port);
    let err = NbdClient::connect(&addr, "vda", None)
        .err()
        .expect("connected to a closed port");
    let want = format!("cannot connect to NBD server 127.0.0.1:{port}: ");
    assert!(err.message.contains(&want), "{}", err.message);

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let err = NbdClient::connect(&NbdAddress::Unix(sock.clone()), "vda", None)
        .err()
        .expect("connected to a missing socket");
    let want = format!("cannot connect to NBD server unix:{}: ", sock.display());
    assert!(err.message.contains(&want), "{}", err.message);
}

#[test]
fn not_an_nbd_server() {
    // A listener that greets with garbage and closes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
    });
    let addr = loopback(port);
    let err = NbdClient::connect(&addr, "vda", None)
        .err()
        .expect("garbage accepted");
    assert!(
        err.message.contains("handshake with server 127.0.0.1"),
        "{}",
        err.message
    );
    assert!(err.message.contains("not an NBD server"), "{}", err.message);
    t.join().unwrap();
}

/// A qcow2 with bitmap b0 recording writes at [0, 64K) and [3M, 3M+128K),
/// made after 0xab was written at [1M, 3M).
fn make_bitmap_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let (img, _) = make_image(dir);
    let img_s = img.to_str().unwrap();
    qemu_img(&["bitmap", "--add", "--enable", img_s, "b0"]);
    common::run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -q -P 0xcd 0 64k",
            "-c",
            "write -q -P 0xef 3M 128k",
            img_s,
        ],
    );
    let expected = raw_contents(&img, "qcow2", &dir.join("disk2.raw"));
    (img, expected)
}

fn check_bitmap(client: &NbdClient, expected: &[u8]) {
    let size = expected.len() as u64;
    let dirty = map(size, |o, max| client.dirty_extent(o, max).unwrap());
    assert_eq!(
        dirty,
        vec![
            (true, 0, 64 << 10),
            (false, 64 << 10, 3 * MIB - (64 << 10)),
            (true, 3 * MIB, 128 << 10),
            (false, 3 * MIB + (128 << 10), size - 3 * MIB - (128 << 10)),
        ]
    );
    let alloc = map(size, |o, max| client.extent(o, max).unwrap());
    assert_eq!(
        alloc,
        vec![
            (true, 0, 64 << 10),
            (false, 64 << 10, MIB - (64 << 10)),
            (true, MIB, 2 * MIB + (128 << 10)),
            (false, 3 * MIB + (128 << 10), size - 3 * MIB - (128 << 10)),
        ]
    );
    assert_eq!(client.dirty_extent(10, 100).unwrap(), (true, 100));
    // Read the dirty regions only, as an incremental backup would.
    for &(flag, start, len) in &dirty {
        if flag {
            let mut b = vec![0u8; len as usize];
            client.read_at(&mut b, start).unwrap();
            assert!(b == expected[start as usize..(start + len) as usize]);
        }
    }
}

#[test]
fn qemu_nbd_dirty_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let (img, expected) = make_bitmap_image(dir.path());
    let (_server, addr, client) = qemu_nbd_unix(dir.path(), &img, &["-B", "b0"], Some("b0"));
    check_bitmap(&client, &expected);

    // Another bitmap name than the exported one.
    let err = NbdClient::connect(&addr, "vda", Some("b1"))
        .err()
        .expect("unknown bitmap accepted");
    assert!(err.message.contains("dirty bitmap 'b1'"), "{}", err.message);
}

#[test]
fn qemu_storage_daemon_dirty_bitmap() {
    // QEMU's NBD server as a VM (and libvirt pull-mode backups) uses it.
    let dir = tempfile::tempdir().unwrap();
    let (img, expected) = make_bitmap_image(dir.path());
    let sock = dir.path().join("qsd.sock");
    let blockdev = format!(
        "driver=qcow2,node-name=disk0,read-only=on,file.driver=file,file.filename={}",
        img.display()
    );
    let server_opt = format!("addr.type=unix,addr.path={}", sock.display());
    let mut server = spawn(
        "qemu-storage-daemon",
        &[
            "--blockdev",
            &blockdev,
            "--nbd-server",
            &server_opt,
            "--export",
            "type=nbd,id=exp0,node-name=disk0,name=vda,bitmaps.0=b0",
        ],
        &dir.path().join("qsd.log"),
    );
    let addr = NbdAddress::Unix(sock);
    let client = connect(&mut server, &addr, "vda", Some("b0"));
    check_bitmap(&client, &expected);
    let mut all = vec![0u8; expected.len()];
    client.read_at(&mut all, 0).unwrap();
    assert!(all == expected);
}

#[test]
fn server_killed_mid_session() {
    let dir = tempfile::tempdir().unwrap();
    let (img, expected) = make_image(dir.path());
    let (server, _, client) = qemu_nbd_unix(dir.path(), &img, &[], None);
    let mut b = vec![0u8; MIB as usize];
    client.read_at(&mut b, MIB).unwrap();
    assert!(b == expected[MIB as usize..2 * MIB as usize]);
    drop(server);
    let err = client.read_at(&mut b, 0).unwrap_err();
    assert!(
        err.message.contains("NBD read at offset 0 failed"),
        "{}",
        err.message
    );
    assert!(err.message.contains("'vda'"), "{}", err.message);
    // Later calls fail fast, naming the broken connection.
    let err = client.extent(0, MIB).unwrap_err();
    assert!(err.message.contains("unusable"), "{}", err.message);
}

/// A scripted NBD server on 127.0.0.1 for what qemu does not show: a minimum
/// block size above 1, chunks out of order, error chunks, no
/// base:allocation context, simple replies only. It serves one connection
/// and reports protocol violations by the client.
mod fake {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread::JoinHandle;

    pub(crate) const SIZE: u64 = 65536 + 300;
    pub(crate) const MIN_BLOCK: u64 = 512;
    pub(crate) const MAX_BLOCK: u64 = 32768;
    /// Reads touching this range fail with EIO.
    pub(crate) const BAD: (u64, u64) = (8192, 8704);

    pub(crate) fn byte(i: u64) -> u8 {
        (i.wrapping_mul(7) ^ (i >> 9)) as u8
    }

    fn u16_at(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }
    fn u32_at(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }
    fn u64_at(b: &[u8]) -> u64 {
        u64::from_be_bytes(b[..8].try_into().unwrap())
    }

    fn opt_reply(s: &mut TcpStream, opt: u32, typ: u32, data: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&typ.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        s.write_all(&m).unwrap();
    }

    fn chunk(s: &mut TcpStream, flags: u16, typ: u16, handle: u64, payload: &[u8]) {
        let mut m = Vec::new();
        m.extend_from_slice(&0x668e_33efu32.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&typ.to_be_bytes());
        m.extend_from_slice(&handle.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        s.write_all(&m).unwrap();
    }

    fn data_chunk(s: &mut TcpStream, flags: u16, handle: u64, off: u64, len: u64) {
        let mut p = off.to_be_bytes().to_vec();
        p.extend((off..off + len).map(byte));
        chunk(s, flags, 1, handle, &p);
    }

    /// Serve one client; `structured`: whether to accept structured replies.
    pub(crate) fn start(structured: bool) -> (u16, JoinHandle<Result<(), String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || serve(listener, structured));
        (port, t)
    }

    fn serve(listener: TcpListener, structured: bool) -> Result<(), String> {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"NBDMAGIC").unwrap();
        s.write_all(&0x4948_4156_454f_5054u64.to_be_bytes())
            .unwrap();
        s.write_all(&3u16.to_be_bytes()).unwrap();
        let mut f = [0u8; 4];
        s.read_exact(&mut f).unwrap();
        if u32_at(&f) & 1 == 0 {
            return Err("client did not ask for fixed newstyle".into());
        }
        let mut use_structured = false;
        loop {
            let mut h = [0u8; 16];
            s.read_exact(&mut h).unwrap();
            if u64_at(&h) != 0x4948_4156_454f_5054 {
                return Err("bad option magic".into());
            }
            let opt = u32_at(&h[8..]);
            let mut data = vec![0u8; u32_at(&h[12..]) as usize];
            s.read_exact(&mut data).unwrap();
            match opt {
                8 if structured => {
                    use_structured = true;
                    opt_reply(&mut s, opt, 1, &[]);
                }
                10 if !use_structured => {
                    return Err("NBD_OPT_SET_META_CONTEXT without structured replies".into());
                }
                10 => opt_reply(&mut s, opt, 1, &[]), // no contexts at all
                7 => {
                    let n = u32_at(&data) as usize;
                    let name = &data[4..4 + n];
                    if name != b"vda" {
                        opt_reply(&mut s, opt, (1 << 31) | 6, b"no such export");
                        continue;
                    }
                    let mut info = 0u16.to_be_bytes().to_vec();
                    info.extend_from_slice(&SIZE.to_be_bytes());
                    info.extend_from_slice(&3u16.to_be_bytes()); // HAS_FLAGS | READ_ONLY
                    opt_reply(&mut s, opt, 3, &info);
                    let mut bs = 3u16.to_be_bytes().to_vec();
                    bs.extend_from_slice(&(MIN_BLOCK as u32).to_be_bytes());
                    bs.extend_from_slice(&4096u32.to_be_bytes());
                    bs.extend_from_slice(&(MAX_BLOCK as u32).to_be_bytes());
                    opt_reply(&mut s, opt, 3, &bs);
                    opt_reply(&mut s, opt, 1, &[]);
                    break;
                }
                2 => {
                    opt_reply(&mut s, opt, 1, &[]);
                    return Ok(());
                }
                _ => opt_reply(&mut s, opt, (1 << 31) | 1, &[]),
            }
        }
        loop {
            let mut r = [0u8; 28];
            if s.read_exact(&mut r).is_err() {
                return Err("connection closed without NBD_CMD_DISC".into());
            }
            if u32_at(&r) != 0x2560_9513 {
                return Err("bad request magic".into());
            }
            let cmd = u16_at(&r[6..]);
            let handle = u64_at(&r[8..]);
            let off = u64_at(&r[16..]);
            let len = u32_at(&r[24..]) as u64;
            match cmd {
                2 => return Ok(()),
                0 => {
                    let end = off + len;
                    if !off.is_multiple_of(MIN_BLOCK)
                        || (!len.is_multiple_of(MIN_BLOCK) && end != SIZE)
                    {
                        return Err(format!("unaligned read {off}+{len}"));
                    }
                    if len == 0 || len > MAX_BLOCK || end > SIZE {
                        return Err(format!("bad read length {off}+{len}"));
                    }
                    let bad = off < BAD.1 && end > BAD.0;
                    if !use_structured {
                        let mut m = 0x6744_6698u32.to_be_bytes().to_vec();
                        m.extend_from_slice(&(if bad { 5u32 } else { 0 }).to_be_bytes());
                        m.extend_from_slice(&handle.to_be_bytes());
                        if !bad {
                            m.extend((off..end).map(byte));
                        }
                        s.write_all(&m).unwrap();
                    } else if bad {
                        let mut p = 5u32.to_be_bytes().to_vec();
                        p.extend_from_slice(&10u16.to_be_bytes());
                        p.extend_from_slice(b"bad sector");
                        p.extend_from_slice(&BAD.0.max(off).to_be_bytes());
                        chunk(&mut s, 1, (1 << 15) | 2, handle, &p);
                    } else if len >= 2 * MIN_BLOCK {
                        // Second half, a hole-free first half, out of order.
                        let mid = off + len / 2 / MIN_BLOCK * MIN_BLOCK;
                        data_chunk(&mut s, 0, handle, mid, end - mid);
                        data_chunk(&mut s, 0, handle, off, mid - off);
                        chunk(&mut s, 1, 0, handle, &[]);
                    } else {
                        data_chunk(&mut s, 1, handle, off, len);
                    }
                }
                _ => {
                    let mut m = 0x6744_6698u32.to_be_bytes().to_vec();
                    m.extend_from_slice(&22u32.to_be_bytes());
                    m.extend_from_slice(&handle.to_be_bytes());
                    s.write_all(&m).unwrap();
                }
            }
        }
    }
}

fn check_fake(client: &NbdClient, server: &str) {
    let expected: Vec<u8> = (0..fake::SIZE).map(fake::byte).collect();
    assert_eq!(client.size(), fake::SIZE);
    // No base:allocation context: everything is data.
    assert_eq!(client.extent(0, u64::MAX).unwrap(), (true, fake::SIZE));
    assert_eq!(client.extent(100, 5).unwrap(), (true, 5));
    assert!(client.dirty_extent(0, 1).is_err());

    // Whole export, below and above the bad range, with unaligned edges.
    for &(off, len) in &[
        (0u64, fake::BAD.0),
        (fake::BAD.1, fake::SIZE - fake::BAD.1),
        (1000, 3000),
        (511, 2),
        (fake::SIZE - 301, 301),
        (fake::BAD.1 + 1, 40000),
    ] {
        let mut b = vec![0u8; len as usize];
        client.read_at(&mut b, off).unwrap();
        assert!(
            b == expected[off as usize..(off + len) as usize],
            "read at {off}+{len}"
        );
    }
    let mut b = vec![0u8; 4096];
    let err = client.read_at(&mut b, 8000).unwrap_err();
    assert!(
        err.message
            .contains("NBD read at offset 7680 failed: Input/output error"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains(&format!("export 'vda' on NBD server {server}")),
        "{}",
        err.message
    );
    // A failed read leaves the connection usable.
    client.read_at(&mut b, 0).unwrap();
    assert!(b == expected[..4096]);
}

#[test]
fn scripted_server_structured() {
    let (port, server) = fake::start(true);
    let addr = loopback(port);
    let client = NbdClient::connect(&addr, "vda", None).unwrap();
    check_fake(&client, &addr.to_string());
    let mut b = vec![0u8; 4096];
    let err = client.read_at(&mut b, 8192).unwrap_err();
    assert!(
        err.message
            .contains("Input/output error: bad sector (at offset 8192)"),
        "{}",
        err.message
    );
    drop(client);
    server.join().unwrap().unwrap();
}

#[test]
fn scripted_server_simple_replies() {
    let (port, server) = fake::start(false);
    let addr = NbdAddress::Tcp {
        host: "localhost".into(),
        port,
    };
    let client = NbdClient::connect(&addr, "vda", None).unwrap();
    check_fake(&client, &addr.to_string());
    drop(client);
    server.join().unwrap().unwrap();
}

#[test]
fn scripted_server_unknown_export() {
    let (port, server) = fake::start(true);
    let addr = loopback(port);
    let err = NbdClient::connect(&addr, "sda", None).err().unwrap();
    assert!(
        err.message
            .contains(&format!("NBD server 127.0.0.1:{port} has no export 'sda'")),
        "{}",
        err.message
    );
    // The client ended option haggling with NBD_OPT_ABORT.
    server.join().unwrap().unwrap();
}
