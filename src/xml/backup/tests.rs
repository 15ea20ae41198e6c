//! Tests of the `<domainbackup>` documents: requests read, records and
//! descriptions written and read back, odd paths kept exactly.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::*;
use crate::xml::dom;

const INPUT: &str = "<domainbackup>
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
</domainbackup>";

#[test]
fn parses_the_api_example() {
    let r = CreateRequest::parse(INPUT).unwrap();
    assert_eq!(
        r.uuid.unwrap().to_string(),
        "54c70d40-26bb-48cd-9639-b3a1e9adf650"
    );
    assert_eq!(r.description.as_deref(), Some("Any & string"));
    assert!(r.parent.is_some());
    let disks = r.disks.unwrap();
    assert_eq!(disks.len(), 3);
    assert_eq!(
        disks[0].target,
        Some(Target::File("/backups/vm1-vda.qcow2".into()))
    );
    assert_eq!(disks[0].format, Some(DiskFormat::Qcow2));
    assert!(matches!(disks[1].target, Some(Target::Volume { .. })));
    assert!(!disks[2].backup);
}

#[test]
fn refuses_bad_input() {
    for bad in [
        "<domainbackup><uuid>nope</uuid></domainbackup>",
        "<backup/>",
        "<domainbackup><disks><disk/></disks></domainbackup>",
        "<domainbackup><disks><disk name='a'/><disk name='a'/></disks></domainbackup>",
        "<domainbackup><disks><disk name='a'><target file='rel'/></disk></disks></domainbackup>",
        "<domainbackup><disks><disk name='a'><driver type='vmdk'/></disk></disks></domainbackup>",
        "<domainbackup><disks><disk name='a' backup='maybe'/></disks></domainbackup>",
        "<domainbackup><parent/></domainbackup>",
    ] {
        let e = CreateRequest::parse(bad).unwrap_err();
        assert!(e.is(crate::error::ErrorCode::XmlError), "{bad}");
    }
}

#[test]
fn catalog_record_round_trips_and_public_form_parses_as_input() {
    let rec = BackupRecord {
        uuid: Uuid::new_v4(),
        creation_time: 1270477159,
        created_ns: 1_270_477_159_000_000_123,
        description: Some("d <x>".into()),
        state: BackupState::Completed,
        parent: None,
        domain_uuid: Uuid::new_v4(),
        domain_name: "vm1".into(),
        disks: vec![DiskRecord {
            name: "vda".into(),
            source: "/img/a.raw".into(),
            source_format: DiskFormat::Raw,
            target: "/b/vda.qcow2".into(),
            format: DiskFormat::Qcow2,
            mode: BackupMode::Full,
            virtual_size: 1 << 30,
            volume: None,
            backing: vec![],
            compression: Compression::Zstd,
            encryption: Some(super::Encryption {
                secret: super::SecretId::Usage("backup key".into()),
            }),
        }],
        uri: "test:///default".into(),
        domain_xml: "<domain><name>vm1</name></domain>".into(),
        stats: JobStats {
            total: 1,
            processed: 1,
            written: 1,
            elapsed_ms: 5,
        },
        created_dirs: vec!["/b".into()],
        checkpoint: None,
    };
    let back = BackupRecord::from_catalog_xml(&rec.to_catalog_xml().unwrap()).unwrap();
    assert_eq!(back, rec);
    let public = rec.public_element().unwrap().to_xml().unwrap();
    assert!(
        public.contains("<secret type='passphrase' usage='backup key'/>"),
        "{public}"
    );
    let input = CreateRequest::parse(&public).unwrap();
    assert_eq!(input.uuid, Some(rec.uuid));
    let disk = &input.disks.unwrap()[0];
    assert_eq!(disk.target, Some(Target::File("/b/vda.qcow2".into())));
    assert_eq!(disk.encryption, rec.disks[0].encryption);
}

#[test]
fn the_description_carries_the_saved_definition_secrets_only_when_secure() {
    let mut rec = BackupRecord::sample(
        Uuid::new_v4(),
        "/b/vda.qcow2".into(),
        BackupState::Completed,
    );
    rec.domain_xml = "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
        <name>vm1</name><devices><graphics type='vnc' port='-1' passwd='s3cret'/>\
        <disk type='network'><source protocol='https' name='x'><host name='h'/>\
        <cookies><cookie name='c'>v4lue</cookie></cookies></source></disk></devices>\
        <qemu:commandline><qemu:arg value='-s'/></qemu:commandline></domain>"
        .into();
    for secure in [false, true] {
        let mut el = rec.public_element().unwrap();
        el.children.extend(rec.definition_element(secure));
        let xml = el.to_xml().unwrap();
        assert_eq!(xml.contains("s3cret"), secure, "{xml}");
        assert_eq!(xml.contains("v4lue"), secure, "{xml}");
        assert!(xml.contains("<qemu:arg value='-s'/>"), "{xml}");
        // It parses back as input, the definition ignored.
        let input = CreateRequest::parse(&xml).unwrap();
        assert_eq!(input.uuid, Some(rec.uuid));
        let def = crate::xml::dom::parse(&xml).unwrap();
        let def = def
            .child("definition")
            .and_then(|d| d.child("domain"))
            .unwrap();
        assert_eq!(def.child_text("name"), Some("vm1"));
    }
    // None saved, or one that does not read: no <definition>.
    for text in ["", "<domain>"] {
        rec.domain_xml = text.into();
        assert!(rec.definition_element(true).is_none());
    }
}

/// Absolute paths with every character an XML reader would otherwise
/// change or misread.
const ODD_PATHS: &[&str] = &[
    "/b/\u{fc}ber dir/vda.qcow2",
    "/b/q\"uote'apos",
    "/b/back\\slash",
    "/b/amp&amp;<lt>&gt;",
    "/b/tab\there",
    "/b/new\nline",
    "/b/cr\rhere",
    "/b/crlf\r\nhere",
    "/b/trailing \n",
    "/b/all \u{fc}\"'\\&<>\t\n\r end",
];

/// `s` as an attribute value, written independently of the library's
/// writer: every markup or white space character as a character reference.
fn attr(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' | '<' | '>' | '\'' | '"' | '\t' | '\n' | '\r' => format!("&#{};", c as u32),
            c => c.to_string(),
        })
        .collect()
}

#[test]
fn odd_paths_round_trip_through_catalog_record_and_description() {
    for &p in ODD_PATHS {
        let mut rec = BackupRecord::sample(Uuid::new_v4(), p.into(), BackupState::Completed);
        rec.description = Some(format!("about {p}"));
        rec.disks[0].source = format!("{p}.src").into();
        rec.disks[0].backing = vec![(format!("{p}.parent").into(), DiskFormat::Qcow2)];
        rec.created_dirs = vec![p.into(), "/b".into()];
        rec.domain_xml = format!(
            "<domain><devices><disk><source file='{}'/></disk></devices></domain>\r\n",
            attr(p)
        );
        let back = BackupRecord::from_catalog_xml(&rec.to_catalog_xml().unwrap()).unwrap();
        assert_eq!(back, rec, "{p:?}");
        // GetXMLDesc's document parses back as input with the same target.
        let desc = rec.public_element().unwrap().to_xml().unwrap();
        let input = CreateRequest::parse(&desc).unwrap();
        assert_eq!(
            input.disks.unwrap()[0].target,
            Some(Target::File(p.into())),
            "{desc}"
        );
        // And as a restore document.
        let restore = RestoreRequest::parse(&desc).unwrap();
        assert_eq!(restore.disks.unwrap()[0].target, Some(PathBuf::from(p)));
        // An export socket.
        let srv = NbdServer::Unix(p.into());
        let el = dom::parse(&srv.element("server").unwrap().to_xml().unwrap()).unwrap();
        assert_eq!(NbdServer::parse(&el, "server").unwrap(), srv);
    }
}

#[test]
fn odd_paths_in_caller_documents_are_read_exactly() {
    for &p in ODD_PATHS {
        let xml = format!(
            "<domainbackup><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
            attr(p)
        );
        let r = CreateRequest::parse(&xml).unwrap();
        assert_eq!(r.disks.unwrap()[0].target, Some(Target::File(p.into())));
        let u = "54c70d40-26bb-48cd-9639-b3a1e9adf650";
        let xml = format!(
            "<domainbackup><uuid>{u}</uuid><target dir='{}'/></domainbackup>",
            attr(p)
        );
        let r = RestoreRequest::parse(&xml).unwrap();
        assert_eq!(r.target_dir, Some(PathBuf::from(p)));
    }
}

#[test]
fn default_target_paths_read_back_exactly_or_are_refused() {
    for &p in ODD_PATHS {
        let d = DefaultTarget::Dir(p.into());
        if p.trim() != p {
            // <path> is read trimmed: such a path would come back as
            // another one, so it is refused (parse never makes one).
            let e = d.to_xml().unwrap_err();
            assert!(e.is(crate::error::ErrorCode::InvalidArg), "{e:?}");
            assert!(
                e.message.contains(&p.escape_debug().to_string()),
                "{}",
                e.message
            );
            continue;
        }
        assert_eq!(
            DefaultTarget::parse(&d.to_xml().unwrap()).unwrap(),
            d,
            "{p:?}"
        );
    }
    let d = DefaultTarget::parse("<target type='dir'><path>\n  /b/x y\n</path></target>").unwrap();
    assert_eq!(d, DefaultTarget::Dir("/b/x y".into()));
}

#[test]
fn a_path_that_is_not_utf8_is_refused_not_rewritten() {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(b"/b/x\xff\xfe\ny.qcow2"));
    let e = path_str(p).unwrap_err();
    assert!(e.is(crate::error::ErrorCode::InternalError), "{e:?}");
    assert!(
        e.message.contains("'/b/x\\xff\\xfe\\ny.qcow2'"),
        "{}",
        e.message
    );
    assert_eq!(path_str(Path::new("/b/\u{fc}\n")).unwrap(), "/b/\u{fc}\n");
    // Nothing with such a path is written.
    let rec = BackupRecord::sample(Uuid::new_v4(), p.into(), BackupState::Completed);
    assert!(
        rec.to_catalog_xml()
            .unwrap_err()
            .is(crate::error::ErrorCode::InternalError)
    );
    assert!(rec.public_element().is_err());
    assert!(DefaultTarget::Dir(p.into()).to_xml().is_err());
    assert!(NbdServer::Unix(p.into()).element("server").is_err());
}

#[test]
fn a_record_holding_a_character_xml_cannot_carry_is_refused() {
    let mut rec = BackupRecord::sample(Uuid::new_v4(), "/b/v".into(), BackupState::Completed);
    rec.uri = "test:///default?x=\u{1}".into();
    let e = rec.to_catalog_xml().unwrap_err();
    assert!(e.is(crate::error::ErrorCode::InvalidArg), "{e:?}");
    assert!(
        e.message.contains("attribute 'uri' of <connection>")
            && e.message.contains("test:///default?x=\\u{1}"),
        "{}",
        e.message
    );
    let mut rec = BackupRecord::sample(Uuid::new_v4(), "/b/v\u{0}".into(), BackupState::Completed);
    rec.description = None;
    let e = rec.to_catalog_xml().unwrap_err();
    assert!(
        e.message.contains("attribute 'file' of <target>"),
        "{}",
        e.message
    );
}

#[test]
fn restore_target_dir_and_stored_export_uuid() {
    let u = "54c70d40-26bb-48cd-9639-b3a1e9adf650";
    let r = RestoreRequest::parse(&format!(
        "<domainbackup><uuid>{u}</uuid><target dir='/r'/></domainbackup>"
    ))
    .unwrap();
    assert_eq!(r.target_dir, Some(PathBuf::from("/r")));
    for bad in ["<target dir='rel'/>", "<target file='/x'/>"] {
        let xml = format!("<domainbackup><uuid>{u}</uuid>{bad}</domainbackup>");
        assert!(RestoreRequest::parse(&xml).is_err(), "{bad}");
    }
    let srv = "<server transport='unix' socket='/s'/>";
    let e = UnmanagedRequest::parse(&format!(
        "<domainbackup><uuid>{u}</uuid>{srv}</domainbackup>"
    ))
    .unwrap();
    assert_eq!(e.backup, Some(Uuid::parse_str(u).unwrap()));
    let e = UnmanagedRequest::parse(&format!("<domainbackup>{srv}</domainbackup>")).unwrap();
    assert_eq!(e.backup, None);
}

#[test]
fn default_target_forms() {
    let d = DefaultTarget::parse("<target type='dir'><path>/backups</path></target>").unwrap();
    assert_eq!(d, DefaultTarget::Dir("/backups".into()));
    assert_eq!(DefaultTarget::parse(&d.to_xml().unwrap()).unwrap(), d);
    assert!(DefaultTarget::parse("<target type='nfs'/>").is_err());
    assert!(DefaultTarget::parse("<target type='dir'><path>rel</path></target>").is_err());
}

#[test]
fn reads_the_bandwidth_strictly() {
    let doc = |inner: &str| format!("<domainbackup>{inner}</domainbackup>");
    let bw = |inner: &str| CreateRequest::parse(&doc(inner)).map(|r| r.bandwidth);
    assert_eq!(bw("").unwrap(), None);
    assert_eq!(bw("<bandwidth bytes='1'/>").unwrap(), Some(1));
    assert_eq!(
        bw("<bandwidth bytes='104857600'/>").unwrap(),
        Some(100 << 20)
    );
    assert_eq!(
        bw("<bandwidth bytes='18446744073709551615'/>").unwrap(),
        Some(u64::MAX)
    );
    for (bad, says) in [
        ("<bandwidth/>", "needs a bytes attribute"),
        ("<bandwidth bytes=''/>", "bytes=''>: not a positive integer"),
        ("<bandwidth bytes='0'/>", "bytes='0'>: a limit of 0"),
        ("<bandwidth bytes='000'/>", "bytes='000'>: a limit of 0"),
        (
            "<bandwidth bytes='-5'/>",
            "bytes='-5'>: not a positive integer",
        ),
        ("<bandwidth bytes='+5'/>", "bytes='+5'>: not a positive"),
        ("<bandwidth bytes=' 5'/>", "bytes=' 5'>: not a positive"),
        ("<bandwidth bytes='1.5'/>", "bytes='1.5'>: not a positive"),
        ("<bandwidth bytes='100M'/>", "bytes='100M'>: not a positive"),
        ("<bandwidth bytes='fast'/>", "bytes='fast'>: not a positive"),
        ("<bandwidth bytes='0x10'/>", "bytes='0x10'>: not a positive"),
        (
            "<bandwidth bytes='18446744073709551616'/>",
            "bytes='18446744073709551616'>: too large",
        ),
        ("<bandwidth bytes='1' rate='2'/>", "rate"),
        ("<bandwidth bytes='1'>5</bandwidth>", "bandwidth"),
        ("<bandwidth bytes='1'/><bandwidth bytes='2'/>", "bandwidth"),
    ] {
        let e = bw(bad).unwrap_err();
        assert!(e.is(crate::error::ErrorCode::XmlError), "{bad}: {e:?}");
        assert!(e.message.contains(says), "{bad}: {}", e.message);
    }
}

/// `<compression>` on `<disks>` and on a `<disk>`, each name read and
/// written back as it was; unknown names and a missing type refused; a
/// record without it reads as none.
#[test]
fn compression_parses_and_formats() {
    let req = CreateRequest::parse(
        "<domainbackup><disks><compression type='zlib'/>\
         <disk name='vda'><compression type='zstd'/></disk><disk name='vdb'/>\
         </disks></domainbackup>",
    )
    .unwrap();
    assert_eq!(req.compression, Some(Compression::Zlib));
    assert!(!req.encrypted() && req.compressed());
    let disks = req.disks.unwrap();
    assert_eq!(disks[0].compression, Some(Compression::Zstd));
    assert_eq!(disks[1].compression, None);
    for c in [Compression::None, Compression::Zlib, Compression::Zstd] {
        assert_eq!(Compression::parse(c.as_str()).unwrap(), c);
    }
    for bad in [
        "<domainbackup><disks><compression type='lz77'/></disks></domainbackup>",
        "<domainbackup><disks><disk name='vda'><compression/></disk></disks></domainbackup>",
    ] {
        let e = CreateRequest::parse(bad).unwrap_err();
        assert!(e.is(crate::error::ErrorCode::XmlError), "{}", e.message);
    }
    let enc = CreateRequest::parse(
        "<domainbackup><disks><disk name='vda'><encryption format='luks'>\
         <secret type='passphrase' usage='x'/></encryption></disk></disks></domainbackup>",
    )
    .unwrap();
    assert!(enc.encrypted() && !enc.compressed());
}

/// `<encryption format='luks'>` on `<disks>` or a disk: the secret by uuid
/// or usage, kept as its id; other formats and secrets refused.
#[test]
fn encryption_secret_ids() {
    use super::{Encryption, SecretId};
    let u = "0a81f5b2-8403-4e69-9a5c-2e5f3d9b1c01";
    let req = CreateRequest::parse(&format!(
        "<domainbackup><disks><encryption format='luks'>\
         <secret type='passphrase' uuid='{u}'/></encryption>\
         <disk name='vda'><encryption format='luks'>\
         <secret type='passphrase' usage='backups'/></encryption></disk>\
         <disk name='vdb'/></disks></domainbackup>"
    ))
    .unwrap();
    let all = req.encryption.clone().unwrap();
    assert_eq!(all.secret, SecretId::Uuid(u.parse().unwrap()));
    let disks = req.disks.clone().unwrap();
    assert_eq!(
        disks[0].encryption,
        Some(Encryption {
            secret: SecretId::Usage("backups".into())
        })
    );
    assert_eq!(disks[1].encryption, None);
    assert!(req.encrypted());
    let shown = all.to_element();
    assert_eq!(shown.attr("format"), Some("luks"));
    let s = shown.child("secret").unwrap();
    assert_eq!(
        (s.attr("type"), s.attr("uuid")),
        (Some("passphrase"), Some(u))
    );
    let bad = |inner: &str| {
        CreateRequest::parse(&format!(
            "<domainbackup><disks><encryption{inner}</encryption></disks></domainbackup>"
        ))
        .unwrap_err()
    };
    let e = bad(" format='qcow'><secret type='passphrase' usage='x'/>");
    assert!(
        e.is(crate::error::ErrorCode::ConfigUnsupported),
        "{}",
        e.message
    );
    for inner in [
        "><secret type='passphrase' usage='x'/>",
        " format='luks'>",
        " format='luks'><secret type='volume' usage='x'/>",
        " format='luks'><secret type='passphrase'/>",
        &format!(" format='luks'><secret type='passphrase' usage='x' uuid='{u}'/>"),
        " format='luks'><secret type='passphrase' uuid='nope'/>",
    ] {
        let e = bad(inner);
        assert!(
            e.is(crate::error::ErrorCode::XmlError),
            "{inner}: {}",
            e.message
        );
    }
}
