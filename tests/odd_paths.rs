//! Paths holding non-ASCII, quotes, a backslash, white space and markup
//! characters, through a whole backup's life on libvirt's test driver:
//! every document the library writes (its catalog record, GetXMLDesc, the
//! definition a restore gives libvirt) carries them exactly, and the files
//! are made, read and removed at exactly those paths.

use std::path::{Path, PathBuf};

mod common;
use common::{
    DELETE_ONE, LIST_ALL, NEW_DOMAIN, REWRITE, WAIT, WORK, disk, domain, identical, qemu_io,
    snapshot,
};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::{Backup, set_default_target};
use libvirt_backup::test_api::ops::options::Affect;
use libvirt_backup::test_api::xml::backup::{BackupRecord, CreateRequest, Target};

/// Every character an XML reader turns into another unless it is written
/// as a reference (tab, line feed, carriage return: a space each in an
/// attribute value), or that is markup, plus non-ASCII.
const ODD: &str = "\u{fc} \"q\" 'a' back\\slash tab\tnl\ncr\rcrlf\r\n amp& lt< gt>";

/// `s` as an attribute value, escaped independently of the library: every
/// markup and white space character as a character reference.
fn attr(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' | '<' | '>' | '\'' | '"' | '\t' | '\n' | '\r' => format!("&#{};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn text(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The path a reader that normalizes attribute values would have made of `p`.
fn normalized(p: &Path) -> PathBuf {
    text(p)
        .replace("\r\n", " ")
        .replace(['\t', '\n', '\r'], " ")
        .into()
}

/// The catalog file of a backup, read from disk.
fn catalog_record(uuid: &str) -> BackupRecord {
    let name = format!("{uuid}.xml");
    let mut dirs = vec![WORK.join("catalog")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_str() == Some(name.as_str()) {
                let xml = std::fs::read_to_string(e.path()).unwrap();
                return BackupRecord::from_catalog_xml(&xml).unwrap();
            }
        }
    }
    panic!("no catalog record {name}");
}

/// The `<target file>` of disk vda in a GetXMLDesc document, read as a
/// caller reads it.
fn described_target(desc: &str) -> PathBuf {
    let req = CreateRequest::parse(desc).unwrap();
    let disks = req.disks.unwrap();
    let vda = disks.iter().find(|d| d.name == "vda").unwrap();
    match &vda.target {
        Some(Target::File(p)) => p.clone(),
        other => panic!("vda target {other:?} in {desc}"),
    }
}

#[test]
fn a_backup_at_an_odd_path_keeps_it_exactly() {
    let src = disk("odd-src.raw", "raw", "4M", &["write -P 0x5a 0 1M"]);
    let dom = domain("oddpaths", &[("vda", &src, "raw")]);
    // A file with an odd name in a folder with one.
    let dir = WORK.join(format!("dir {ODD}"));
    std::fs::create_dir(&dir).unwrap();
    let target = dir.join(format!("vda {ODD}.qcow2"));
    let xml = format!(
        "<domainbackup><disks><disk name='vda'><target file='{}'/><driver type='qcow2'/></disk></disks></domainbackup>",
        attr(text(&target))
    );
    let b = Backup::create(&dom, &xml, WAIT).unwrap();
    let uuid = b.uuid.to_string();

    // The file is at exactly that path, and nothing at the path a lossy
    // writer or reader would have used.
    assert!(target.is_file(), "no backup at {target:?}");
    assert!(!normalized(&target).exists());
    assert!(!normalized(&dir).exists());
    assert!(identical(&target, "qcow2", &src, "raw"));

    // GetXMLDesc names it exactly, from this handle and from a new one.
    let desc = b.xml_desc().unwrap();
    assert_eq!(described_target(&desc), target, "{desc}");
    let found = Backup::lookup(&uuid).unwrap();
    assert_eq!(found.xml_desc().unwrap(), desc);
    // And the catalog record, as the library reloads it and as its file reads.
    for rec in [b.record().unwrap(), catalog_record(&uuid)] {
        assert_eq!(rec.disks[0].target, target);
        assert_eq!(rec.disks[0].source, src);
    }

    // A default target folder with an odd name (kept in the catalog as
    // the text of <path>): the next backup's folder is made in it.
    let default_dir = WORK.join(format!("default {ODD}"));
    std::fs::create_dir(&default_dir).unwrap();
    set_default_target(
        &dom,
        &format!(
            "<target type='dir'><path>{}</path></target>",
            attr(text(&default_dir))
        ),
        Affect::Current,
    )
    .unwrap();
    let d = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let d_dir = default_dir.join(d.uuid.to_string());
    let d_target = d_dir.join("vda.qcow2");
    assert!(d_target.is_file(), "no backup at {d_target:?}");
    assert!(identical(&d_target, "qcow2", &src, "raw"));
    assert_eq!(described_target(&d.xml_desc().unwrap()), d_target);
    for rec in [d.record().unwrap(), catalog_record(&d.uuid.to_string())] {
        assert_eq!(rec.disks[0].target, d_target);
        assert_eq!(rec.created_dirs, std::slice::from_ref(&d_dir));
    }
    d.delete(DELETE_ONE).unwrap();
    assert!(!d_dir.exists());
    assert!(default_dir.is_dir());

    // Restore in place reads the backup at its path.
    let t0 = snapshot(&src, "odd-src-t0.raw");
    qemu_io("raw", &src, "write -P 0x66 0 2M");
    let whole = format!("<domainbackup><uuid>{uuid}</uuid></domainbackup>");
    Backup::restore(&whole, REWRITE).unwrap();
    assert!(identical(&src, "raw", &t0, "raw"));

    // Restore as a new domain to a new file at an odd path: the file is
    // there, and libvirt was given exactly that path (its block statistics
    // answer for it, and not for the normalized one).
    let out = WORK.join(format!("restored {ODD}.raw"));
    let name = "oddpaths-copy";
    let xml = format!(
        "<domainbackup><uuid>{uuid}</uuid><domain name='{name}'/><disks><disk name='vda'><target file='{}'/><driver type='raw'/></disk></disks></domainbackup>",
        attr(text(&out))
    );
    Backup::restore(&xml, NEW_DOMAIN).unwrap();
    assert!(out.is_file(), "no restored file at {out:?}");
    assert!(!normalized(&out).exists());
    assert!(identical(&out, "raw", &t0, "raw"));
    let copy = common::CONN
        .lock()
        .unwrap()
        .lookup_domain_by_name(name)
        .unwrap();
    copy.create().unwrap();
    let stats = copy.block_stats(text(&out));
    let wrong = copy.block_stats(text(&normalized(&out)));
    copy.destroy().unwrap();
    copy.undefine().unwrap();
    stats.unwrap_or_else(|e| panic!("libvirt does not know {out:?}: {e}"));
    assert!(wrong.is_err());

    // Delete removes the file at its path.
    b.delete(DELETE_ONE).unwrap();
    assert!(!target.exists());
    assert!(dir.is_dir());
    assert!(
        Backup::lookup(&uuid)
            .unwrap_err()
            .is(ErrorCode::NoDomainBackup)
    );
    // The restored copy is the caller's.
    assert!(out.is_file());
}

/// A character XML 1.0 cannot carry at all is refused by name, as a
/// reference or literally, before anything is made.
#[test]
fn a_target_xml_cannot_carry_is_refused() {
    let src = disk("odd-ctl.raw", "raw", "1M", &[]);
    let dom = domain("oddpaths-ctl", &[("vda", &src, "raw")]);
    let target = WORK.join("ctl\u{1}.qcow2");
    for t in ["&#1;", "&#x1F;", "&#0;", "&#xFFFE;"] {
        let xml = format!(
            "<domainbackup><disks><disk name='vda'><target file='{}{t}'/></disk></disks></domainbackup>",
            text(&WORK.join("ctl"))
        );
        let err = Backup::create(&dom, &xml, WAIT).unwrap_err();
        assert!(err.is(ErrorCode::XmlError), "{err:?}");
        assert!(
            err.message
                .contains(&format!("bad character reference '{t}'")),
            "{}",
            err.message
        );
    }
    let xml = format!(
        "<domainbackup><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
        text(&target)
    );
    let err = Backup::create(&dom, &xml, WAIT).unwrap_err();
    assert!(err.is(ErrorCode::XmlError), "{err:?}");
    assert!(
        err.message.contains("U+0001 is not allowed"),
        "{}",
        err.message
    );
    assert!(!target.exists());
    assert!(Backup::list(&dom, LIST_ALL).unwrap().is_empty());
}
