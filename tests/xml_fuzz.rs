//! Fuzzing every XML parser of the library: a fixed corpus, then random
//! mutations of it from a deterministic generator. Checked: no panic, no
//! crash (the run is on a small stack), bounded time per document, errors
//! are XML errors, and what parses serializes to something that parses to
//! the same thing.
//!
//! `cargo test` runs a fixed number of cases (a few seconds);
//! `make fuzz` (FUZZ_SECONDS=N, FUZZ_SEED=S) runs for N seconds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libvirt_backup::test_api::error::Error;
use libvirt_backup::test_api::xml::backup::DiskFormat;
use libvirt_backup::test_api::xml::backup::{
    BackupRecord, CreateRequest, DefaultTarget, RestoreRequest, UnmanagedRequest,
    UnmanagedRestoreRequest,
};
use libvirt_backup::test_api::xml::{dom, domain};

mod common;
use common::cpu_time;

const VIR_ERR_XML_ERROR: i32 = 27;
/// Cases of the default run.
const CASES: u64 = 12_000;
/// No document may take longer than this (release build).
const MAX_CASE_TIME: Duration = Duration::from_secs(2);

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const SEEDS: &[&str] = &[
    "<domainbackup>
  <uuid>54c70d40-26bb-48cd-9639-b3a1e9adf650</uuid>
  <description>Any &amp; string</description>
  <parent><uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid></parent>
  <disks>
    <disk name='vda' backup='yes' type='file'>
      <target file='/backups/vm1-vda.qcow2'/>
      <driver type='qcow2'/>
    </disk>
    <disk name='vdb' type='volume'><target pool='default' volume='v.qcow2'/></disk>
    <disk name='vdc' backup='no'/>
  </disks>
</domainbackup>",
    "<domainbackup><parent><uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid></parent>
<server transport='tcp' name='127.0.0.1' port='10809'/>
<disks><disk name='vda' exportname='vda'/><disk name='vdb' backup='no'/></disks></domainbackup>",
    "<domainbackup><server transport='unix' socket='/run/x.sock'/></domainbackup>",
    "<domainbackup><uuid>54c70d40-26bb-48cd-9639-b3a1e9adf650</uuid><domain name='vm1-restored'/>
<disks><disk name='vda'><target file='/images/a.qcow2'/><driver type='qcow2'/></disk></disks></domainbackup>",
    "<domainbackup><domain name='n'/><disks><disk name='vda'><source file='/x.qcow2'><driver type='qcow2'/></source></disk>
<disk name='vdb'><source protocol='nbd' name='vdb'><host name='127.0.0.1' port='10809'/></source></disk>
<disk name='vdc'><source protocol='nbd' name='e'><host transport='unix' socket='/s'/></source></disk></disks></domainbackup>",
    "<target type='dir'><path>/backups</path></target>",
    "<target type='pool'><pool>default</pool></target>",
    "<?xml version='1.0' encoding='UTF-8'?>\n<!-- c --><domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm1</name><uuid>0b6c1f7e-8a44-4a8b-9d53-3c2a1f7b9e10</uuid>
  <metadata><app:x xmlns:app='urn:app' app:v='1'>t</app:x></metadata>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/a.qcow2'/><backingStore/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdz'/><target dev='vdb'/></disk>
    <disk type='file' device='cdrom'><target dev='hdc'/></disk>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>
  </devices>
  <qemu:commandline><qemu:arg value='-x'/></qemu:commandline>
</domain>",
    "<a x=\"&lt;&#65;&#x42;\"><![CDATA[<]]>&gt;<?pi d?>\r\n<b/></a>",
];

/// Pieces the mutator inserts: XML syntax, both valid and broken.
const TOKENS: &[&str] = &[
    "<",
    ">",
    "</",
    "/>",
    "&",
    "&amp;",
    "&lt;",
    "&#",
    "&#x",
    ";",
    "&#0;",
    "&#xD800;",
    "&#x10FFFF;",
    "&nope;",
    "'",
    "\"",
    "=",
    " ",
    "\n",
    "\r",
    "\t",
    "<!--",
    "-->",
    "--",
    "<![CDATA[",
    "]]>",
    "<?xml version='1.0'?>",
    "<?xml version='1.0' encoding='latin1'?>",
    "<?pi x?>",
    "<?xml?>",
    "<!DOCTYPE a [<!ENTITY e 'x'>]>",
    "<!ENTITY",
    "xmlns:a='u'",
    "xmlns=''",
    "a:",
    ":",
    "\u{0}",
    "\u{1}",
    "\u{FFFE}",
    "\u{feff}",
    "é",
    "\u{10000}",
    "<disk name='x'/>",
    "<disks>",
    "</disks>",
    "<disk name='vda'>",
    "</disk>",
    "<uuid>",
    "</uuid>",
    " backup='no'",
    " name='a'",
    "<x>",
    "</x>",
    "<domainbackup>",
    "</domainbackup>",
    "<target file='/t'/>",
    "<devices>",
    "</devices>",
];

fn mutate(rng: &mut Rng, doc: &[u8]) -> Vec<u8> {
    let mut d = doc.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(d.len() + 1);
        match rng.below(8) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 | 2 => {
                let t = rng.pick(TOKENS).as_bytes();
                d.splice(at..at, t.iter().copied());
            }
            3 => {
                let end = (at + rng.below(16)).min(d.len());
                d.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(64)).min(d.len());
                let piece = d[at..end].to_vec();
                let to = rng.below(d.len() + 1);
                d.splice(to..to, piece);
            }
            5 => {
                let other = rng.pick(SEEDS).as_bytes();
                let s = rng.below(other.len());
                let e = (s + rng.below(80)).min(other.len());
                d.splice(at..at, other[s..e].iter().copied());
            }
            6 => d.truncate(at),
            _ => {
                let b = rng.next() as u8;
                d.insert(at, b);
            }
        }
    }
    d
}

/// A generated document: deep, wide or long, to find non-linear costs.
fn generated(rng: &mut Rng) -> String {
    let root = *rng.pick(&["domainbackup", "domain", "target", "a"]);
    match rng.below(3) {
        0 => {
            let n = rng.below(400);
            let inner = *rng.pick(&["disks", "devices", "x", "disk"]);
            format!(
                "<{root}>{}{}</{root}>",
                format!("<{inner}>").repeat(n),
                format!("</{inner}>").repeat(n)
            )
        }
        1 => {
            let n = rng.below(3000);
            let mut s = format!("<{root}><disks>");
            for i in 0..n {
                s.push_str(&format!("<disk name='d{}'/>", i % (1 + rng.below(n + 1))));
            }
            s + &format!("</disks></{root}>")
        }
        _ => {
            let n = rng.below(200);
            let mut s = format!("<{root} ");
            for i in 0..n {
                s.push_str(&format!("a{i}='{}' ", "&amp;".repeat(rng.below(50))));
            }
            s + "/>"
        }
    }
}

fn xml_error(what: &str, doc: &str, e: &Error) {
    assert!(
        !e.message.is_empty(),
        "{what}: empty error for {}",
        show(doc)
    );
    assert_eq!(
        e.code,
        VIR_ERR_XML_ERROR,
        "{what}: {} for {}",
        e.message,
        show(doc)
    );
}

fn show(doc: &str) -> String {
    let mut s: String = doc.chars().take(2000).collect();
    if s.len() < doc.len() {
        s.push_str("...");
    }
    format!("{s:?}")
}

/// Every parser on one document.
fn check(doc: &str) {
    match dom::parse(doc) {
        Ok(el) => {
            // What parses serializes to a document that parses the same.
            let out = el.to_xml().unwrap();
            let back = dom::parse(&out)
                .unwrap_or_else(|e| panic!("re-parse failed: {} for {}", e.message, show(doc)));
            assert_eq!(
                back.to_xml().unwrap(),
                out,
                "unstable serialization of {}",
                show(doc)
            );
        }
        Err(e) => xml_error("dom::parse", doc, &e),
    }
    if let Err(e) = dom::parse_with(doc, &dom::Limits::DOCUMENT, None) {
        xml_error("dom::parse_with", doc, &e);
    }
    // Typed documents: XML errors only (their checks are all about the document).
    for (what, r) in [
        ("CreateRequest", CreateRequest::parse(doc).err()),
        ("RestoreRequest", RestoreRequest::parse(doc).err()),
        ("UnmanagedRequest", UnmanagedRequest::parse(doc).err()),
        (
            "UnmanagedRestoreRequest",
            UnmanagedRestoreRequest::parse(doc).err(),
        ),
        ("DefaultTarget", DefaultTarget::parse(doc).err()),
        ("BackupRecord", BackupRecord::from_catalog_xml(doc).err()),
        ("parse_disks", domain::parse_disks(doc).err()),
    ] {
        if let Some(e) = r {
            xml_error(what, doc, &e);
        }
    }
    if let Ok(rec) = BackupRecord::from_catalog_xml(doc) {
        // What the catalog reads, it writes, and reads back the same.
        let out = rec.to_catalog_xml().unwrap();
        assert_eq!(
            BackupRecord::from_catalog_xml(&out).unwrap(),
            rec,
            "record rewritten differently: {}",
            show(doc)
        );
        let _ = CreateRequest::parse(&rec.public_element().unwrap().to_xml().unwrap());
    }
    let p = PathBuf::from("/r/vda.qcow2");
    let disks = [domain::RestoredDisk {
        name: "vda",
        path: &p,
        format: DiskFormat::Qcow2,
    }];
    for name in [None, Some("new")] {
        match domain::restored_definition(doc, name, &disks) {
            Ok(out) => {
                dom::parse(&out).unwrap_or_else(|e| {
                    panic!(
                        "restored definition does not parse: {} for {}",
                        e.message,
                        show(doc)
                    )
                });
            }
            Err(e) => xml_error("restored_definition", doc, &e),
        }
    }
}

/// Expat (Python's pyexpat, with namespaces), asked whether a document is
/// well-formed: the reference the parser is compared with.
struct Expat {
    child: std::process::Child,
}

const EXPAT: &str = r#"
import struct, sys, xml.parsers.expat as E
i, o = sys.stdin.buffer, sys.stdout.buffer
while True:
    h = i.read(4)
    if len(h) < 4:
        break
    d = i.read(struct.unpack('<I', h)[0])
    p = E.ParserCreate(namespace_separator='\x01')
    try:
        p.Parse(d, True)
        o.write(b'1')
    except Exception:
        o.write(b'0')
    o.flush()
"#;

impl Expat {
    fn start() -> Option<Expat> {
        let child = std::process::Command::new("python3")
            .args(["-c", EXPAT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        Some(Expat { child })
    }

    fn well_formed(&mut self, doc: &str) -> bool {
        use std::io::{Read, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(&(doc.len() as u32).to_le_bytes()).unwrap();
        stdin.write_all(doc.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut b = [0u8];
        self.child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut b)
            .unwrap();
        b[0] == b'1'
    }
}

impl Drop for Expat {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Our verdict against expat's. We refuse more by design (DOCTYPEs,
/// encodings other than UTF-8, XML 1.1, limits); anything else that differs
/// is a bug in one of the two.
fn compare(expat: &mut Expat, doc: &str) {
    let ours = dom::parse(doc);
    let theirs = expat.well_formed(doc);
    match (&ours, theirs) {
        // Expat's name characters are XML 1.0 4th edition's; ours (and
        // libxml2's) the 5th edition's, which allow more non-ASCII names.
        (Ok(_), false) if doc.is_ascii() => panic!("accepted, expat refuses: {}", show(doc)),
        (Err(e), true) => {
            let by_design = [
                "DOCTYPE",
                "UTF-8",
                "version 1.0",
                "nested deeper",
                "elements in the document",
                "larger than the limit",
            ];
            // Expat leaves NUL handling to the caller (C strings have none).
            if !by_design.iter().any(|w| e.message.contains(w)) && !doc.contains('\0') {
                panic!("refused ({}), expat accepts: {}", e.message, show(doc));
            }
        }
        _ => {}
    }
}

fn run_one(doc: &str) {
    let t = cpu_time();
    if catch_unwind(AssertUnwindSafe(|| check(doc))).is_err() {
        panic!("a parser panicked on {}", show(doc));
    }
    assert!(
        (cpu_time() - t) < MAX_CASE_TIME,
        "{:?} of CPU for one document: {}",
        (cpu_time() - t),
        show(doc)
    );
}

#[test]
fn every_xml_parser_survives_hostile_input() {
    let seconds: Option<u64> = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    // A daemon's worker thread: a parser that recursed would crash it.
    let stats = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            for s in SEEDS {
                run_one(s);
            }
            let mut expat = Expat::start();
            let mut rng = Rng(seed | 1);
            let start = Instant::now();
            let (mut cases, mut parsed) = (0u64, 0u64);
            loop {
                match seconds {
                    Some(s) if start.elapsed() >= Duration::from_secs(s) => break,
                    None if cases >= CASES => break,
                    _ => {}
                }
                let doc = if rng.below(20) == 0 {
                    generated(&mut rng)
                } else {
                    let base = rng.pick(SEEDS).as_bytes().to_vec();
                    let mut d = mutate(&mut rng, &base);
                    // Mutations of mutations reach further from the seeds.
                    for _ in 0..rng.below(3) {
                        d = mutate(&mut rng, &d);
                    }
                    String::from_utf8_lossy(&d).into_owned()
                };
                run_one(&doc);
                if let Some(x) = expat.as_mut() {
                    compare(x, &doc);
                }
                parsed += dom::parse(&doc).is_ok() as u64;
                cases += 1;
            }
            (cases, parsed, start.elapsed())
        })
        .unwrap()
        .join()
        .expect("fuzzing thread");
    eprintln!(
        "xml fuzz: {} documents ({} well-formed) in {:.1?}, seed {seed}",
        stats.0, stats.1, stats.2
    );
}
