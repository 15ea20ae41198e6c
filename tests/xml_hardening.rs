//! Hostile documents and stale handles, through the exported C functions
//! (issue 9): nothing may crash the caller, every refusal is a clear
//! libvirt-style error, and work stays linear in the input.

use std::ffi::{CStr, CString, c_void};
use std::time::Duration;

mod common;
use common::{CONN, cpu_time, disk, domain};

use libvirt_backup::capi::backup::{
    get_xml_desc_dispatch, virDomainBackupCreateXML, virDomainBackupDelete, virDomainBackupFree,
    virDomainBackupGetDomain, virDomainBackupListChildren, virDomainBackupLookupByUUID,
    virDomainBackupObjGetXMLDesc, virDomainBackupRef, virDomainBackupStartUnmanaged,
};
use libvirt_backup::capi::domain::virDomainSetDefaultTarget;
use libvirt_backup::capi::error::{
    virDomainBackupGetLastErrorCode, virDomainBackupGetLastErrorMessage,
};
use libvirt_backup::capi::job::virDomainBackupFinishJob;
use libvirt_backup::capi::restore::{virDomainBackupRestore, virDomainBackupRestoreUnmanaged};
use libvirt_backup::capi::{virDomainBackupCreateFlags, virDomainBackupPtr};
use libvirt_backup::test_api::hv::libvirt::DomainRef;
use libvirt_backup::test_api::xml::backup::{BackupRecord, CreateRequest, DefaultTarget, RestoreRequest};
use libvirt_backup::test_api::xml::{dom, domain as domxml};
use virt::sys;

const VIR_ERR_INVALID_ARG: i32 = 8;
const WAIT: u32 = virDomainBackupCreateFlags::VIR_DOMAIN_BACKUP_CREATE_WAIT as u32;
const VIR_ERR_XML_ERROR: i32 = 27;

fn last_code() -> i32 {
    virDomainBackupGetLastErrorCode()
}

fn last_message() -> String {
    // SAFETY: a NUL-terminated string owned by the library until the next call.
    unsafe { CStr::from_ptr(virDomainBackupGetLastErrorMessage()) }
        .to_string_lossy()
        .into_owned()
}

/// The test driver's domain every XML-taking export is called with.
fn test_domain() -> DomainRef {
    let a = disk("hard-a.raw", "raw", "1M", &["write -P 0x33 0 64k"]);
    domain("hardening", &[("vda", &a, "raw")])
}

fn dom_ptr(dom: &DomainRef) -> sys::virDomainPtr {
    // SAFETY: the pointer is used only while `dom` lives.
    unsafe { dom.domain().as_ptr() }
}

/// Every export that takes a document, called with `xml`: (name, rc == failure).
fn call_every_entry_point(
    dom: sys::virDomainPtr,
    xml: &str,
) -> Vec<(&'static str, bool, i32, String)> {
    let x = CString::new(xml).unwrap();
    let mut out = Vec::new();
    let mut record = |name, failed: bool| out.push((name, failed, last_code(), last_message()));
    record(
        "virDomainBackupCreateXML",
        virDomainBackupCreateXML(dom, x.as_ptr(), 0).is_null(),
    );
    record(
        "virDomainBackupStartUnmanaged",
        virDomainBackupStartUnmanaged(dom, x.as_ptr(), 0).is_null(),
    );
    record(
        "virDomainSetDefaultTarget",
        virDomainSetDefaultTarget(dom, x.as_ptr(), 0) == -1,
    );
    record(
        "virDomainBackupRestore",
        virDomainBackupRestore(x.as_ptr(), 0) == -1,
    );
    record(
        "virDomainBackupRestoreUnmanaged",
        virDomainBackupRestoreUnmanaged(dom, x.as_ptr(), 0) == -1,
    );
    out
}

/// `n` nested elements under `root`.
fn nested(root: &str, inner: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * (2 * inner.len() + 5) + 64);
    s.push_str(&format!("<{root}>"));
    for _ in 0..n {
        s.push_str(&format!("<{inner}>"));
    }
    for _ in 0..n {
        s.push_str(&format!("</{inner}>"));
    }
    s.push_str(&format!("</{root}>"));
    s
}

fn assert_xml_error(results: &[(&str, bool, i32, String)], what: &str, needle: &str) {
    for (name, failed, code, msg) in results {
        assert!(*failed, "{name} accepted {what}");
        assert_eq!(*code, VIR_ERR_XML_ERROR, "{name} on {what}: {msg}");
        assert!(msg.contains(needle), "{name} on {what}: {msg}");
        // Only the size check, made before reading, has no position.
        assert!(
            has_line_column(msg) || msg.contains("larger than the limit"),
            "{name} on {what}: no position in {msg}"
        );
    }
}

fn has_line_column(msg: &str) -> bool {
    let Some(rest) = msg.split("line ").nth(1) else {
        return false;
    };
    let (line, rest) = rest.split_once(", column ").unwrap_or(("", ""));
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    line.parse::<usize>().is_ok() && !col.is_empty()
}

/// Run `f` on a thread with a 256 KiB stack (a daemon's worker thread).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(f)
        .unwrap()
        .join()
        .expect("no crash on a small stack")
}

/// Deep documents kill the caller with recursion; here every entry point
/// refuses them, on the main test thread and on a small stack.
#[test]
fn deep_nesting_is_refused_by_every_entry_point() {
    let dom = test_domain();
    let ptr = dom_ptr(&dom) as usize;
    for (root, inner) in [
        ("domainbackup", "disks"),
        ("target", "path"),
        ("domainbackup", "x"),
    ] {
        for n in [150_000, 10_000] {
            let xml = nested(root, inner, n);
            let t = cpu_time();
            assert_xml_error(
                &call_every_entry_point(ptr as sys::virDomainPtr, &xml),
                "a deep document",
                "",
            );
            let x2 = xml.clone();
            let small =
                on_small_stack(move || call_every_entry_point(ptr as sys::virDomainPtr, &x2));
            assert_xml_error(&small, "a deep document on a small stack", "");
            assert!(
                (cpu_time() - t) < Duration::from_secs(10),
                "{:?}",
                (cpu_time() - t)
            );
        }
    }
    // The well-formed deep document exceeds the depth limit, not any other rule.
    let xml = nested("domainbackup", "disks", 150_000);
    let r = call_every_entry_point(ptr as sys::virDomainPtr, &xml);
    for (name, _, _, msg) in &r {
        if *name != "virDomainSetDefaultTarget" {
            assert!(
                msg.contains("nested deeper than 64") || msg.contains("larger than the limit"),
                "{name}: {msg}"
            );
        }
    }
}

/// Documents libvirt writes (domain XML, the catalog) are bounded too, with
/// larger limits, and parsed and dropped without recursion.
#[test]
fn deep_libvirt_documents_are_refused_without_recursion() {
    let check = || {
        for n in [150_000, 10_000, 300] {
            let domain_xml = nested("domain", "devices", n);
            let e = domxml::parse_disks(&domain_xml).unwrap_err();
            assert!(
                e.message.contains("nested deeper than 256"),
                "{}",
                e.message
            );
            assert!(domxml::restored_definition(&domain_xml, Some("b"), &[]).is_err());
            let e =
                BackupRecord::from_catalog_xml(&nested("domainbackup", "disks", n)).unwrap_err();
            assert_eq!(e.code, VIR_ERR_XML_ERROR);
            assert!(dom::parse(&nested("a", "b", n)).is_err());
        }
        // 250 levels are fine for libvirt's documents (libxml2's default limit is 256).
        assert!(domxml::parse_disks(&nested("domain", "devices", 250)).is_ok());
    };
    check();
    on_small_stack(check);
}

/// A tree built in memory, however deep, is serialized and dropped without
/// recursion (a 256 KiB stack holds a few thousand frames at most).
#[test]
fn deep_trees_serialize_and_drop_iteratively() {
    on_small_stack(|| {
        let deep = |n| {
            let mut el = dom::Element::new("leaf");
            for _ in 0..n {
                el = dom::Element::new("n").with_child(el);
            }
            el
        };
        drop(deep(1_000_000));
        // The output grows with the square of the depth (indentation).
        let el = deep(5_000);
        let xml = el.to_xml().unwrap();
        assert!(xml.starts_with("<n>\n  <n>\n"));
        assert_eq!(xml.matches("<leaf/>").count(), 1);
        assert_eq!(xml.matches("</n>").count(), 5_000);
    });
    // And the iterative writer writes what the parser reads back.
    let el = dom::parse("<a x='1 &amp; 2'><b>t&lt;</b><c><d/></c><e/></a>").unwrap();
    assert_eq!(
        el.to_xml().unwrap(),
        "<a x='1 &amp; 2'>\n  <b>t&lt;</b>\n  <c>\n    <d/>\n  </c>\n  <e/>\n</a>\n"
    );
    let xml = el.to_xml().unwrap();
    assert_eq!(dom::parse(&xml).unwrap().to_xml().unwrap(), xml);
}

/// Every way a document can fail to be well-formed XML 1.0, with what the
/// old parser did with some of them in the comment.
const MALFORMED: &[(&str, &str)] = &[
    // A malformed attribute silently dropped backup='no'.
    (
        "<domainbackup><disks><disk name='vda' backup='no' bad/></disks></domainbackup>",
        "needs '='",
    ),
    (
        "<domainbackup><disks><disk name='vda' backup=no/></disks></domainbackup>",
        "must be quoted",
    ),
    (
        "<domainbackup><disks><disk name='vda'backup='no'/></disks></domainbackup>",
        "separated by whitespace",
    ),
    (
        "<domainbackup><disks><disk name='a' name='b'/></disks></domainbackup>",
        "duplicate attribute",
    ),
    (
        "<domainbackup><disks><disk name='a<b'/></disks></domainbackup>",
        "'<' is not allowed",
    ),
    (
        "<domainbackup><disks><disk name='a&b'/></disks></domainbackup>",
        "reference",
    ),
    (
        "<domainbackup><disks><disk name='&#0;'/></disks></domainbackup>",
        "reference",
    ),
    // A declared non-UTF-8 encoding was ignored.
    (
        "<?xml version='1.0' encoding='ISO-8859-1'?><domainbackup/>",
        "must be UTF-8",
    ),
    ("<?xml version='1.1'?><domainbackup/>", "version 1.0"),
    ("<?xml encoding='UTF-8'?><domainbackup/>", "needs version"),
    (" <?xml version='1.0'?><domainbackup/>", "must come first"),
    (
        "<domainbackup><uuid>x</uid></domainbackup>",
        "malformed document",
    ),
    ("<domainbackup><disks>", "not closed"),
    ("<domainbackup/>junk", "outside the root"),
    ("junk<domainbackup/>", "outside the root"),
    ("<domainbackup/><domainbackup/>", "after the root"),
    ("<domainbackup/><!-- c --><x/>", "after the root"),
    ("", "no root element"),
    ("<!-- only a comment -->", "no root element"),
    ("<1domainbackup/>", "invalid element name"),
    ("<domainbackup><a:b/></domainbackup>", "not declared"),
    ("<domainbackup a:b='1'/>", "not declared"),
    (
        "<domainbackup><description>&nope;</description></domainbackup>",
        "unknown entity",
    ),
    (
        "<domainbackup><description>&#xD800;</description></domainbackup>",
        "character reference",
    ),
    (
        "<domainbackup><description>a & b</description></domainbackup>",
        "malformed document",
    ),
    (
        "<domainbackup><description>\u{1}</description></domainbackup>",
        "U+0001",
    ),
    (
        "<domainbackup><description>]]></description></domainbackup>",
        "']]>'",
    ),
    (
        "<domainbackup><!-- a -- b --></domainbackup>",
        "malformed document",
    ),
    (
        "<?xml-stylesheet x?><?XML y?><domainbackup/>",
        "processing instruction",
    ),
    ("<![CDATA[x]]><domainbackup/>", "outside the root"),
    // Entities can only come from a DOCTYPE: refused outright.
    (
        "<!DOCTYPE domainbackup [<!ENTITY x 'vda'>]><domainbackup><description>&x;</description></domainbackup>",
        "DOCTYPE",
    ),
    (
        "<!DOCTYPE domainbackup SYSTEM '/etc/passwd'><domainbackup/>",
        "DOCTYPE",
    ),
    // Our vocabulary: a misspelt <disks> used to send every disk to default targets.
    (
        "<domainbackup><dsks><disk name='vda'/></dsks></domainbackup>",
        "unknown element <dsks>",
    ),
    (
        "<domainbackup><disks><disk name='vda'><traget file='/x'/></disk></disks></domainbackup>",
        "unknown element <traget>",
    ),
    (
        "<domainbackup><disks><disk name='vda' bakup='no'/></disks></domainbackup>",
        "unknown attribute 'bakup'",
    ),
    (
        "<domainbackup><uuid>a</uuid><uuid>b</uuid></domainbackup>",
        "more than once",
    ),
    (
        "<domainbackup><disks>vda</disks></domainbackup>",
        "text is not allowed",
    ),
    ("<domainbackups/>", "expected root element"),
];

/// Each malformed document: VIR_ERR_XML_ERROR naming line and column, from
/// every entry point, and nothing done.
#[test]
fn malformed_documents_are_refused_with_line_and_column() {
    let dom = test_domain();
    let ptr = dom_ptr(&dom);
    for (xml, needle) in MALFORMED {
        let r = call_every_entry_point(ptr, xml);
        for (name, failed, code, msg) in &r {
            assert!(*failed, "{name} accepted {xml:?}");
            assert_eq!(*code, VIR_ERR_XML_ERROR, "{name} on {xml:?}: {msg}");
            assert!(has_line_column(msg), "{name} on {xml:?}: {msg}");
            // SetDefaultTarget's root is <target>: its first complaint may be that.
            if *name != "virDomainSetDefaultTarget" {
                assert!(msg.contains(needle), "{name} on {xml:?}: {msg}");
            }
        }
    }
    // Positions are where the problem is.
    let e = CreateRequest::parse("<domainbackup>\n  <disks>\n    <dsk name='vda'/>\n").unwrap_err();
    assert!(e.message.contains("line 3, column 5"), "{}", e.message);
    let e = RestoreRequest::parse("<domainbackup>\n<uuid>\u{1}</uuid></domainbackup>").unwrap_err();
    assert!(e.message.contains("line 2, column 7"), "{}", e.message);
    let e = DefaultTarget::parse("<target type='dir' type='pool'/>").unwrap_err();
    assert!(e.message.contains("line 1, column 20"), "{}", e.message);
}

/// What well-formed XML may contain is still accepted: declaration, BOM,
/// comments, PIs, CDATA, references, either quote, white space around '='.
#[test]
fn well_formed_variants_are_accepted() {
    let xml = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\" standalone='yes'?>\n\
        <!-- c --><?pi data?>\n<domainbackup>\r\n <description><![CDATA[<x>]]>&#65;&#x42;&lt;&apos;</description>\n\
        <disks ><disk name = \"vda\"\tbackup='no'/></disks></domainbackup >\n<!-- end -->\n";
    let r = CreateRequest::parse(xml).unwrap();
    assert_eq!(r.description.as_deref(), Some("<x>AB<'"));
    assert!(!r.disks.unwrap()[0].backup);
    // Foreign namespaces in libvirt's documents (metadata) are fine when declared.
    let d = "<domain xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'><devices>\
        <disk><target dev='vda'/></disk></devices><q:commandline/><metadata><m:x xmlns:m='urn:x' m:a='1'/></metadata></domain>";
    assert_eq!(domxml::parse_disks(d).unwrap().len(), 1);
    let out = domxml::restored_definition(d, None, &[]).unwrap();
    assert!(out.contains("xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'"));
    // Attribute values are normalized as XML requires.
    let el = dom::parse("<a v='x\r\ny\tz&#10;'/>").unwrap();
    assert_eq!(el.attr("v"), Some("x y z\n"));
}

fn many_disks(n: usize, with_uuid: bool) -> String {
    let mut s = String::from("<domainbackup>");
    if with_uuid {
        s.push_str("<uuid>54c70d40-26bb-48cd-9639-b3a1e9adf650</uuid>");
    }
    s.push_str("<disks>");
    for i in 0..n {
        s.push_str(&format!("<disk name='d{i}'/>"));
    }
    s.push_str("</disks></domainbackup>");
    s
}

/// 50 000 disks used to take minutes (a quadratic duplicate check); now a
/// clear error at once, and the largest allowed document parses fast.
#[test]
fn huge_disk_lists_are_refused_quickly() {
    let dom = test_domain();
    let ptr = dom_ptr(&dom);
    for n in [50_000, 1025] {
        let xml = many_disks(n, true);
        let t = cpu_time();
        let r = call_every_entry_point(ptr, &xml);
        assert!(
            (cpu_time() - t) < Duration::from_secs(2),
            "{n} disks: {:?}",
            (cpu_time() - t)
        );
        for (name, failed, code, msg) in &r {
            assert!(*failed && *code == VIR_ERR_XML_ERROR, "{name}: {msg}");
            if *name != "virDomainSetDefaultTarget" {
                assert!(
                    msg.contains("at most 1024") || msg.contains("more than 16384 elements"),
                    "{name} with {n} disks: {msg}"
                );
            }
        }
    }
    let t = cpu_time();
    let r = RestoreRequest::parse(&many_disks(1024, true)).unwrap();
    assert_eq!(r.disks.unwrap().len(), 1024);
    let mut dup = many_disks(1024, true);
    dup = dup.replace("name='d1023'", "name='d0'");
    assert!(
        RestoreRequest::parse(&dup)
            .unwrap_err()
            .message
            .contains("listed twice")
    );
    // A megabyte of white space is over the size limit, refused before reading.
    let big = format!("<domainbackup>{}</domainbackup>", " ".repeat(1 << 20));
    assert!(
        RestoreRequest::parse(&big)
            .unwrap_err()
            .message
            .contains("larger than the limit")
    );
    assert!(
        (cpu_time() - t) < Duration::from_secs(1),
        "{:?}",
        (cpu_time() - t)
    );
}

/// A freed handle stays refused, even after many new handles: its address is
/// never handed out again, so it cannot name (and delete) another backup.
#[test]
fn stale_handles_are_refused_and_never_reused() {
    let a = disk("stale-a.raw", "raw", "1M", &["write -P 0x44 0 64k"]);
    let dom = domain("stale", &[("vda", &a, "raw")]);
    let ptr = dom_ptr(&dom);
    let x = CString::new("<domainbackup/>").unwrap();
    let first = virDomainBackupCreateXML(ptr, x.as_ptr(), WAIT);
    assert!(!first.is_null(), "{}", last_message());
    let first_desc = desc(first).unwrap();
    assert_eq!(virDomainBackupFree(first), 0);
    let second = virDomainBackupCreateXML(ptr, x.as_ptr(), WAIT);
    assert!(!second.is_null(), "{}", last_message());
    let uuid = between(&desc(second).unwrap(), "<uuid>", "</uuid>");
    let c_uuid = CString::new(uuid.clone()).unwrap();
    let mut handles: Vec<virDomainBackupPtr> = Vec::new();
    for _ in 0..200 {
        let h = virDomainBackupLookupByUUID(c_uuid.as_ptr(), 0);
        assert!(!h.is_null());
        assert_ne!(h, first, "a freed handle's address was handed out again");
        handles.push(h);
    }
    for h in handles.drain(..100) {
        assert_eq!(virDomainBackupFree(h), 0);
    }
    for _ in 0..100 {
        let h = virDomainBackupLookupByUUID(c_uuid.as_ptr(), 0);
        assert!(!handles.contains(&h) && h != first && h != second);
        handles.push(h);
    }
    // Every call through the stale handle is refused, the other backup untouched.
    assert_eq!(virDomainBackupDelete(first, 0), -1);
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG, "{}", last_message());
    assert!(desc(first).is_none());
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG);
    assert!(get_xml_desc_dispatch(first as *mut c_void, 0).is_null());
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG);
    assert_eq!(virDomainBackupRef(first), -1);
    assert_eq!(virDomainBackupFree(first), -1);
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG);
    assert_eq!(virDomainBackupFinishJob(first, 0), -1);
    assert!(virDomainBackupGetDomain(first).is_null());
    assert_eq!(
        virDomainBackupListChildren(first, std::ptr::null_mut(), 0),
        -1
    );
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG);
    // A handle given where a domain is expected is refused, not passed to libvirt.
    assert!(virDomainBackupCreateXML(second as sys::virDomainPtr, x.as_ptr(), 0).is_null());
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG);
    assert!(desc(second).unwrap().contains(&uuid));
    assert!(!first_desc.contains(&uuid));
    for h in handles {
        assert_eq!(virDomainBackupFree(h), 0);
    }
    // Clean up both backups through live handles.
    assert_eq!(virDomainBackupDelete(second, 0), 0, "{}", last_message());
    assert_eq!(virDomainBackupFree(second), 0);
    let first_uuid = CString::new(between(&first_desc, "<uuid>", "</uuid>")).unwrap();
    let again = virDomainBackupLookupByUUID(first_uuid.as_ptr(), 0);
    assert!(!again.is_null());
    assert_eq!(virDomainBackupDelete(again, 0), 0, "{}", last_message());
    assert_eq!(virDomainBackupFree(again), 0);
}

fn desc(h: virDomainBackupPtr) -> Option<String> {
    let p = virDomainBackupObjGetXMLDesc(h, 0);
    if p.is_null() {
        return None;
    }
    // SAFETY: a malloc'd NUL-terminated string, ours to free.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: `p` came from the library's malloc and is freed once.
    unsafe { libc::free(p as *mut c_void) };
    Some(s)
}

fn between(s: &str, a: &str, b: &str) -> String {
    s.split(a)
        .nth(1)
        .unwrap()
        .split(b)
        .next()
        .unwrap()
        .to_string()
}

/// virDomainBackupGetXMLDesc given an object of the wrong type fails with
/// an error of its own, never NULL with "no error".
#[test]
fn get_xml_desc_of_a_wrong_object_sets_an_error() {
    let conn = CONN.lock().unwrap();
    // SAFETY: the pointer is only passed on, while `conn` lives.
    let conn_ptr = unsafe { conn.as_ptr() } as *mut c_void;
    let p = get_xml_desc_dispatch(conn_ptr, 0);
    assert!(p.is_null());
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG, "{}", last_message());
    assert!(last_message().contains("virDomainBackupGetXMLDesc"));
    // NULL, too.
    assert!(get_xml_desc_dispatch(std::ptr::null_mut(), 0).is_null());
    assert_eq!(last_code(), VIR_ERR_INVALID_ARG);
    drop(conn);
    // A real domain still goes to libvirt's function: the test driver has
    // no backup job, and the error is libvirt's, as for any libvirt call.
    let dom = test_domain();
    libvirt_backup::capi::error::virDomainBackupResetLastError();
    // SAFETY: clears this thread's libvirt error; no arguments.
    unsafe { sys::virResetLastError() };
    let p = get_xml_desc_dispatch(dom_ptr(&dom) as *mut c_void, 0);
    assert!(p.is_null());
    // SAFETY: reads this thread's libvirt error pointer, not dereferenced.
    assert!(!unsafe { sys::virGetLastError() }.is_null());
    assert_eq!(last_code(), 0);
}

/// The same class of cost within one tag: many attributes or namespace
/// declarations (libvirt's documents may be 32 MiB) are checked in linear time.
#[test]
fn wide_tags_parse_in_linear_time() {
    let n: usize = std::env::var("WIDE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let mut attrs = String::from("<domain");
    for i in 0..n {
        attrs.push_str(&format!(" a{i}='v'"));
    }
    attrs.push_str("/>");
    let mut decls = String::from("<domain");
    for i in 0..n {
        decls.push_str(&format!(" xmlns:p{i}='urn:{i}'"));
    }
    decls.push_str(&format!("><p{}:x p0:y='1'/></domain>", n - 1));
    let t = cpu_time();
    assert_eq!(dom::parse(&attrs).unwrap().attrs.len(), n);
    assert_eq!(dom::parse(&decls).unwrap().children.len(), 1);
    let dup = attrs.replace("/>", " a7='w'/>");
    assert!(
        dom::parse(&dup)
            .unwrap_err()
            .message
            .contains("duplicate attribute 'a7'")
    );
    assert!(
        (cpu_time() - t) < Duration::from_secs(3),
        "{:?}",
        (cpu_time() - t)
    );
}
