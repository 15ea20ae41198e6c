//! Catalog records (README "Catalog records"): read strictly. A value that
//! is there but malformed makes the record damaged, with an error naming
//! the element, the attribute and the value; a value that is missing takes
//! its documented default; records written by earlier versions of the
//! library read as they always did. Through the catalog, a damaged value
//! makes whatever reads the record fail with VIR_ERR_OPERATION_FAILED
//! naming the file, while List still answers.

use std::path::PathBuf;

mod common;
use common::{LIST_ALL, WAIT, disk, domain};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::store::catalog::Catalog;
use libvirt_backup::test_api::xml::backup::{
    BackupMode, BackupRecord, BackupState, DiskFormat, DiskRecord, JobStats,
};
use uuid::Uuid;

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

/// A record using every part of the format: two disks (a file with a
/// backing chain, a storage volume), a parent, a checkpoint, numbers.
fn sample() -> BackupRecord {
    BackupRecord {
        uuid: uuid("54c70d40-26bb-48cd-9639-b3a1e9adf650"),
        creation_time: 1_270_477_159,
        created_ns: 1_270_477_159_000_000_123,
        description: Some("nightly".into()),
        state: BackupState::Completed,
        parent: Some(uuid("d2ee2566-bef2-408f-ac7a-eb8004186074")),
        domain_uuid: uuid("c7a5fdbd-cdaf-9455-926a-d65c16db1809"),
        domain_name: "vm1".into(),
        disks: vec![
            DiskRecord {
                name: "vda".into(),
                source: "/img/a.raw".into(),
                source_format: DiskFormat::Raw,
                target: "/b/vda.qcow2".into(),
                format: DiskFormat::Qcow2,
                mode: BackupMode::Incremental,
                virtual_size: 1 << 30,
                volume: None,
                backing: vec![("/b/parent-vda.qcow2".into(), DiskFormat::Qcow2)],
                compression: Default::default(),
                encryption: None,
            },
            DiskRecord {
                name: "vdb".into(),
                source: "/img/b.qcow2".into(),
                source_format: DiskFormat::Qcow2,
                target: "/pool/v".into(),
                format: DiskFormat::Raw,
                mode: BackupMode::Full,
                virtual_size: 5 << 20,
                volume: Some(("p".into(), "v".into())),
                backing: vec![],
                compression: Default::default(),
                encryption: None,
            },
        ],
        uri: "qemu:///system".into(),
        domain_xml: "<domain><name>vm1</name></domain>".into(),
        stats: JobStats {
            total: 11,
            processed: 12,
            written: 13,
            elapsed_ms: 14,
        },
        created_dirs: vec!["/b".into(), "/c".into()],
        checkpoint: Some("cp1".into()),
    }
}

/// `xml` with its one occurrence of `from` replaced by `to`.
fn edit(xml: &str, from: &str, to: &str) -> String {
    assert_eq!(xml.matches(from).count(), 1, "{from} in {xml}");
    xml.replacen(from, to, 1)
}

#[test]
fn the_sample_record_round_trips() {
    let rec = sample();
    let xml = rec.to_catalog_xml().unwrap();
    assert_eq!(BackupRecord::from_catalog_xml(&xml).unwrap(), rec);
}

/// (text to replace, its replacement, what the error must name).
const MALFORMED: &[(&str, &str, &[&str])] = &[
    // <diskinfo> size: a byte count.
    ("size='1073741824'", "size='abc'", &["size", "'abc'", "vda"]),
    ("size='1073741824'", "size='-1'", &["size", "'-1'", "vda"]),
    (
        "size='1073741824'",
        "size='18446744073709551616'",
        &["size", "'18446744073709551616'"],
    ),
    ("size='1073741824'", "size=''", &["size", "''", "vda"]),
    ("size='1073741824'", "size='+5'", &["size", "'+5'"]),
    ("size='1073741824'", "size=' 5'", &["size", "' 5'"]),
    ("size='1073741824'", "size='1e9'", &["size", "'1e9'"]),
    ("size='1073741824'", "size='0x10'", &["size", "'0x10'"]),
    // Formats: raw or qcow2.
    (
        "sourceformat='raw'",
        "sourceformat='vmdk'",
        &["sourceformat", "'vmdk'", "vda"],
    ),
    (
        "<driver type='qcow2'/>",
        "<driver type='vmdk'/>",
        &["<driver>", "'vmdk'", "vda"],
    ),
    (
        "format='qcow2'/>",
        "format='qed'/>",
        &["<backingStore>", "'qed'", "vda"],
    ),
    (
        "format='qcow2'/>",
        "format=''/>",
        &["<backingStore>", "format=''"],
    ),
    ("format='qcow2'/>", "/>", &["<backingStore>", "format"]),
    // UUIDs.
    (
        "<uuid>54c70d40-26bb-48cd-9639-b3a1e9adf650</uuid>",
        "<uuid>54c70d40-26bb-48cd-9639</uuid>",
        &["<uuid>", "'54c70d40-26bb-48cd-9639'"],
    ),
    (
        "uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809'",
        "uuid='vm1'",
        &["<domain>", "uuid", "'vm1'"],
    ),
    (
        "uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809'",
        "",
        &["<domain>", "uuid"],
    ),
    (
        "<uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid>",
        "<uuid>parent</uuid>",
        &["<parent>", "'parent'"],
    ),
    // State, mode, type.
    (
        "<state>completed</state>",
        "<state>done</state>",
        &["<state>", "'done'"],
    ),
    (
        "backupmode='incremental'",
        "backupmode='differential'",
        &["backupmode", "'differential'", "vda"],
    ),
    ("type='file'", "type='nfs'", &["type", "'nfs'", "vda"]),
    ("type='volume'", "type='file'", &["vdb", "pool"]),
    ("pool='p' ", "", &["vdb", "type='volume'", "pool"]),
    // Numbers of the record.
    (
        "<creationTime>1270477159</creationTime>",
        "<creationTime>yesterday</creationTime>",
        &["<creationTime>", "'yesterday'"],
    ),
    (
        "ns='1270477159000000123'",
        "ns='12x'",
        &["<created>", "ns", "'12x'"],
    ),
    (
        "ns='1270477159000000123'",
        "ns='-1'",
        &["<created>", "'-1'"],
    ),
    ("total='11'", "total='abc'", &["<stats>", "total", "'abc'"]),
    (
        "processed='12'",
        "processed='-12'",
        &["<stats>", "processed", "'-12'"],
    ),
    (
        "written='13'",
        "written='99999999999999999999'",
        &["<stats>", "written", "'99999999999999999999'"],
    ),
    (
        "elapsed='14'",
        "elapsed='1.5'",
        &["<stats>", "elapsed", "'1.5'"],
    ),
    // Elements that are there without what they are for.
    (
        "<checkpoint name='cp1'/>",
        "<checkpoint/>",
        &["<checkpoint>", "name"],
    ),
    ("<dir path='/c'/>", "<dir/>", &["<dir>", "path"]),
    (
        "<disk name='vdb' sourceformat",
        "<disk sourceformat",
        &["<diskinfo>", "name"],
    ),
    // Disks named twice, or described but not listed.
    (
        "<disk name='vdb' sourceformat",
        "<disk name='vdz' sourceformat",
        &["<diskinfo>", "'vdz'"],
    ),
    (
        "<disk name='vdb' sourceformat",
        "<disk name='vda' sourceformat",
        &["<diskinfo>", "'vda'", "twice"],
    ),
    (
        "<disk name='vdb' type",
        "<disk name='vda' type",
        &["<disks>", "'vda'", "twice"],
    ),
];

#[test]
fn every_malformed_value_makes_a_damaged_record_naming_it() {
    let good = sample().to_catalog_xml().unwrap();
    let mut wrong = Vec::new();
    for &(from, to, names) in MALFORMED {
        let xml = edit(&good, from, to);
        match BackupRecord::from_catalog_xml(&xml) {
            Ok(_) => wrong.push(format!("{to:?}: read without an error")),
            Err(e) if !e.is(ErrorCode::XmlError) => {
                wrong.push(format!("{to:?}: not an XML error: {e:?}"))
            }
            Err(e) => {
                let missing: Vec<&&str> =
                    names.iter().filter(|n| !e.message.contains(**n)).collect();
                if !missing.is_empty() {
                    wrong.push(format!("{to:?}: {missing:?} not in {:?}", e.message));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Only what a record cannot do without: its uuid, creation time, state,
/// domain uuid, and each disk's name, source and target files.
const MINIMAL: &str = "<domainbackup>
  <uuid>54c70d40-26bb-48cd-9639-b3a1e9adf650</uuid>
  <creationTime>1270477159</creationTime>
  <state>failed</state>
  <domain uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809'/>
  <disks><disk name='vda'><source file='/s'/><target file='/t'/></disk></disks>
</domainbackup>";

/// The defaults README "Catalog records" lists.
fn minimal_record() -> BackupRecord {
    BackupRecord {
        uuid: uuid("54c70d40-26bb-48cd-9639-b3a1e9adf650"),
        creation_time: 1_270_477_159,
        created_ns: 1_270_477_159_000_000_000,
        description: None,
        state: BackupState::Failed,
        parent: None,
        domain_uuid: uuid("c7a5fdbd-cdaf-9455-926a-d65c16db1809"),
        domain_name: String::new(),
        disks: vec![DiskRecord {
            name: "vda".into(),
            source: "/s".into(),
            source_format: DiskFormat::Raw,
            target: "/t".into(),
            format: DiskFormat::Qcow2,
            mode: BackupMode::Full,
            virtual_size: 0,
            volume: None,
            backing: vec![],
            compression: Default::default(),
            encryption: None,
        }],
        uri: String::new(),
        domain_xml: String::new(),
        stats: JobStats::default(),
        created_dirs: vec![],
        checkpoint: None,
    }
}

#[test]
fn missing_values_take_their_documented_defaults() {
    let expected = minimal_record();
    assert_eq!(BackupRecord::from_catalog_xml(MINIMAL).unwrap(), expected);
    // The same with the elements there but their optional attributes missing.
    let empty_elements = MINIMAL.replace(
        "</disk></disks>",
        "<driver/></disk></disks><connection/><created/><stats/>\
         <diskinfo><disk name='vda'/></diskinfo><createddirs/><domainxml/>",
    );
    assert_eq!(
        BackupRecord::from_catalog_xml(&empty_elements).unwrap(),
        expected
    );
    // Without <disks>: no disks.
    let no_disks = MINIMAL.replace(
        "<disks><disk name='vda'><source file='/s'/><target file='/t'/></disk></disks>",
        "",
    );
    let rec = BackupRecord::from_catalog_xml(&no_disks).unwrap();
    assert!(rec.disks.is_empty());
    // What has no default is required.
    for (from, to, names) in [
        ("<state>failed</state>", "", &["<state>"][..]),
        (
            "<domain uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809'/>",
            "",
            &["<domain>"],
        ),
        ("<source file='/s'/>", "", &["vda", "<source file>"]),
        (
            "<target file='/t'/>",
            "<target/>",
            &["vda", "<target file>"],
        ),
        ("<disk name='vda'>", "<disk>", &["<disk>", "name"]),
    ] {
        let e = BackupRecord::from_catalog_xml(&edit(MINIMAL, from, to)).unwrap_err();
        assert!(e.is(ErrorCode::XmlError), "{e:?}");
        for n in names {
            assert!(e.message.contains(n), "{n} not in {}", e.message);
        }
    }
}

/// A record as the library's first version wrote it (commit 0bcbe19):
/// no <checkpoint>, no <backingStore> (an incremental's chain was the one
/// its qcow2 headers named), every disk type='file', and no character
/// references for white space (none of these paths hold any).
const FIRST_FORMAT: &str = "<domainbackup>
  <uuid>0b6e7ff5-33a4-4c4f-9bd5-5b3f2a5cf9a1</uuid>
  <creationTime>1764100000</creationTime>
  <description>nightly &amp; &apos;quoted&apos;</description>
  <state>completed</state>
  <parent>
    <uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid>
  </parent>
  <domain uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809' name='vm1'/>
  <disks>
    <disk name='vda' type='file' backupmode='incremental'>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target file='/backups/vm1/vda.qcow2'/>
      <driver type='qcow2'/>
    </disk>
    <disk name='vdb' type='file' backupmode='full'>
      <source file='/var/lib/libvirt/images/vm1-data.raw'/>
      <target file='/backups/vm1/vdb.raw'/>
      <driver type='raw'/>
    </disk>
  </disks>
  <connection uri='qemu:///system'/>
  <created ns='1764100000123456789'/>
  <diskinfo>
    <disk name='vda' sourceformat='qcow2' size='10737418240'/>
    <disk name='vdb' sourceformat='raw' size='1048576'/>
  </diskinfo>
  <createddirs>
    <dir path='/backups/vm1'/>
  </createddirs>
  <stats total='10738466816' processed='10738466816' written='2148532224' elapsed='5120'/>
  <domainxml>&lt;domain type=&apos;kvm&apos;&gt;
  &lt;name&gt;vm1&lt;/name&gt;
&lt;/domain&gt;
</domainxml>
</domainbackup>
";

fn first_format_record() -> BackupRecord {
    let disk = |name: &str, src: &str, src_fmt, target: &str, fmt, mode, size| DiskRecord {
        name: name.into(),
        source: PathBuf::from(src),
        source_format: src_fmt,
        target: PathBuf::from(target),
        format: fmt,
        mode,
        virtual_size: size,
        volume: None,
        backing: vec![],
        compression: Default::default(),
        encryption: None,
    };
    BackupRecord {
        uuid: uuid("0b6e7ff5-33a4-4c4f-9bd5-5b3f2a5cf9a1"),
        creation_time: 1_764_100_000,
        created_ns: 1_764_100_000_123_456_789,
        description: Some("nightly & 'quoted'".into()),
        state: BackupState::Completed,
        parent: Some(uuid("d2ee2566-bef2-408f-ac7a-eb8004186074")),
        domain_uuid: uuid("c7a5fdbd-cdaf-9455-926a-d65c16db1809"),
        domain_name: "vm1".into(),
        disks: vec![
            disk(
                "vda",
                "/var/lib/libvirt/images/vm1.qcow2",
                DiskFormat::Qcow2,
                "/backups/vm1/vda.qcow2",
                DiskFormat::Qcow2,
                BackupMode::Incremental,
                10 << 30,
            ),
            disk(
                "vdb",
                "/var/lib/libvirt/images/vm1-data.raw",
                DiskFormat::Raw,
                "/backups/vm1/vdb.raw",
                DiskFormat::Raw,
                BackupMode::Full,
                1 << 20,
            ),
        ],
        uri: "qemu:///system".into(),
        domain_xml: "<domain type='kvm'>\n  <name>vm1</name>\n</domain>\n".into(),
        stats: JobStats {
            total: 10_738_466_816,
            processed: 10_738_466_816,
            written: 2_148_532_224,
            elapsed_ms: 5120,
        },
        created_dirs: vec!["/backups/vm1".into()],
        checkpoint: None,
    }
}

/// A record of the versions between volumes and checkpoints (commits
/// 1379963, e95160b) and backing chains (e6a77f0): a storage volume
/// target and a checkpoint, still no <backingStore>.
const VOLUME_FORMAT: &str = "<domainbackup>
  <uuid>2f0c4e8a-8d5e-4a53-b7f4-1f1f0b7f4a11</uuid>
  <creationTime>1764200000</creationTime>
  <state>completed</state>
  <domain uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809' name='vm1'/>
  <checkpoint name='2f0c4e8a-8d5e-4a53-b7f4-1f1f0b7f4a11'/>
  <disks>
    <disk name='vda' type='volume' backupmode='full'>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target pool='backups' volume='vm1-vda.qcow2' file='/srv/pool/vm1-vda.qcow2'/>
      <driver type='qcow2'/>
    </disk>
  </disks>
  <connection uri='qemu:///system'/>
  <created ns='1764200000000000001'/>
  <diskinfo>
    <disk name='vda' sourceformat='qcow2' size='10737418240'/>
  </diskinfo>
  <createddirs/>
  <stats total='10737418240' processed='10737418240' written='10737418240' elapsed='60000'/>
  <domainxml>&lt;domain/&gt;</domainxml>
</domainbackup>
";

fn volume_format_record() -> BackupRecord {
    BackupRecord {
        uuid: uuid("2f0c4e8a-8d5e-4a53-b7f4-1f1f0b7f4a11"),
        creation_time: 1_764_200_000,
        created_ns: 1_764_200_000_000_000_001,
        description: None,
        state: BackupState::Completed,
        parent: None,
        domain_uuid: uuid("c7a5fdbd-cdaf-9455-926a-d65c16db1809"),
        domain_name: "vm1".into(),
        disks: vec![DiskRecord {
            name: "vda".into(),
            source: "/var/lib/libvirt/images/vm1.qcow2".into(),
            source_format: DiskFormat::Qcow2,
            target: "/srv/pool/vm1-vda.qcow2".into(),
            format: DiskFormat::Qcow2,
            mode: BackupMode::Full,
            virtual_size: 10 << 30,
            volume: Some(("backups".into(), "vm1-vda.qcow2".into())),
            backing: vec![],
            compression: Default::default(),
            encryption: None,
        }],
        uri: "qemu:///system".into(),
        domain_xml: "<domain/>".into(),
        stats: JobStats {
            total: 10 << 30,
            processed: 10 << 30,
            written: 10 << 30,
            elapsed_ms: 60_000,
        },
        created_dirs: vec![],
        checkpoint: Some("2f0c4e8a-8d5e-4a53-b7f4-1f1f0b7f4a11".into()),
    }
}

#[test]
fn records_of_earlier_versions_read_as_before() {
    for (xml, expected) in [
        (FIRST_FORMAT, first_format_record()),
        (VOLUME_FORMAT, volume_format_record()),
    ] {
        let rec = BackupRecord::from_catalog_xml(xml).unwrap();
        assert_eq!(rec, expected);
        // Rewritten in today's format, the same record.
        let again = BackupRecord::from_catalog_xml(&rec.to_catalog_xml().unwrap()).unwrap();
        assert_eq!(again, expected);
    }
}

/// The record file of backup `b`.
fn record_file(b: &Backup) -> PathBuf {
    let dom = b.record().unwrap().domain_uuid;
    Catalog::open().unwrap().backup(&dom, &b.uuid).record_path()
}

#[test]
fn a_damaged_value_fails_lookup_naming_the_file_and_list_still_works() {
    let src = disk("damaged-src.raw", "raw", "4M", &["write -P 0x61 0 1M"]);
    let dom = domain("damagedvalue", &[("vda", &src, "raw")]);
    let bk = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let rec = bk.record().unwrap();
    let path = record_file(&bk);
    let text = std::fs::read_to_string(&path).unwrap();
    let size = format!("size='{}'", rec.disks[0].virtual_size);
    std::fs::write(&path, edit(&text, &size, "size='4M'")).unwrap();

    let e = Backup::lookup(&bk.uuid.to_string()).unwrap_err();
    assert!(e.is(ErrorCode::OperationFailed), "{e:?}");
    for n in [
        &*format!("backup record '{}' is damaged", path.display()),
        "size='4M'",
        "vda",
    ] {
        assert!(e.message.contains(n), "{n} not in {}", e.message);
    }
    // List answers from the domain's summary: the backup is still listed,
    // and reading it through the listed object names the file too.
    let listed = Backup::list(&dom, LIST_ALL).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uuid, bk.uuid);
    let e = listed[0].xml_desc().unwrap_err();
    assert!(e.is(ErrorCode::OperationFailed), "{e:?}");
    assert!(
        e.message.contains(&*path.display().to_string()),
        "{}",
        e.message
    );
    // Nothing was removed.
    assert!(path.exists() && rec.disks[0].target.exists());
}

/// A record of today's format as versions before relative names wrote
/// it, for a catalog at `root`: its files in the catalog (the image of the
/// default folder, the parent's image it reads through, the folder it made)
/// by absolute paths, and an image a user named outside the catalog.
fn absolute_names_record(root: &std::path::Path) -> String {
    format!(
        "<domainbackup>
  <uuid>9b1d3c52-3f0e-4c1a-9d6e-0a5b7c2e4f11</uuid>
  <creationTime>1764300000</creationTime>
  <state>completed</state>
  <parent><uuid>5e2a7d10-6c4b-4f8e-a1d3-2b9c8e7f6a05</uuid></parent>
  <domain uuid='c7a5fdbd-cdaf-9455-926a-d65c16db1809' name='vm1'/>
  <disks>
    <disk name='vda' type='file' backupmode='incremental'>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target file='{r}/c7a5fdbd-cdaf-9455-926a-d65c16db1809/9b1d3c52-3f0e-4c1a-9d6e-0a5b7c2e4f11/vda.qcow2'/>
      <driver type='qcow2'/>
    </disk>
    <disk name='vdb' type='file' backupmode='full'>
      <source file='/var/lib/libvirt/images/vm1-b.raw'/>
      <target file='/backups/vm1/vdb.qcow2'/>
      <driver type='qcow2'/>
    </disk>
  </disks>
  <connection uri='qemu:///system'/>
  <created ns='1764300000000000001'/>
  <diskinfo>
    <disk name='vda' sourceformat='qcow2' size='1073741824'>
      <backingStore file='{r}/c7a5fdbd-cdaf-9455-926a-d65c16db1809/5e2a7d10-6c4b-4f8e-a1d3-2b9c8e7f6a05/vda.qcow2' format='qcow2'/>
    </disk>
  </diskinfo>
  <createddirs><dir path='{r}/c7a5fdbd-cdaf-9455-926a-d65c16db1809/9b1d3c52-3f0e-4c1a-9d6e-0a5b7c2e4f11'/></createddirs>
  <stats total='1' processed='1' written='1' elapsed='1'/>
  <domainxml>&lt;domain/&gt;</domainxml>
</domainbackup>
",
        r = root.display()
    )
}

#[test]
fn absolute_names_of_earlier_versions_read_in_place_and_are_written_relative() {
    use std::os::unix::fs::DirBuilderExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("catalog");
    let (dom, b) = (
        uuid("c7a5fdbd-cdaf-9455-926a-d65c16db1809"),
        uuid("9b1d3c52-3f0e-4c1a-9d6e-0a5b7c2e4f11"),
    );
    let folder = root.join(dom.to_string());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)
        .unwrap();
    let record = folder.join(format!("{b}.xml"));
    std::fs::write(&record, absolute_names_record(&root)).unwrap();
    let catalog = Catalog::at(root.clone()).unwrap();
    let own = folder.join(b.to_string());
    let parent = folder.join("5e2a7d10-6c4b-4f8e-a1d3-2b9c8e7f6a05/vda.qcow2");

    // In place: the record reads as it was written.
    let rec = catalog.backup(&dom, &b).record().unwrap().unwrap();
    assert_eq!(rec.disks[0].target, own.join("vda.qcow2"));
    assert_eq!(
        rec.disks[0].backing,
        vec![(parent.clone(), DiskFormat::Qcow2)]
    );
    assert_eq!(rec.disks[1].target, PathBuf::from("/backups/vm1/vdb.qcow2"));
    assert_eq!(rec.created_dirs, vec![own.clone()]);

    // Written again (any change does), the catalog's files are named
    // relative to the root, the user's file absolute; it reads the same.
    catalog.backup(&dom, &b).write_record(&rec).unwrap();
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains(&*root.display().to_string()), "{text}");
    assert!(
        text.contains(&format!("<target file='{dom}/{b}/vda.qcow2'/>")),
        "{text}"
    );
    assert!(
        text.contains("<target file='/backups/vm1/vdb.qcow2'/>"),
        "{text}"
    );
    assert_eq!(catalog.backup(&dom, &b).record().unwrap().unwrap(), rec);

    // Moved, the relative names follow; the user's file stays where it is.
    let moved = tmp.path().join("elsewhere");
    std::fs::rename(&root, &moved).unwrap();
    let there = Catalog::at(moved.clone()).unwrap();
    let rec = there.backup(&dom, &b).record().unwrap().unwrap();
    let here = moved.join(dom.to_string());
    assert_eq!(rec.disks[0].target, here.join(format!("{b}/vda.qcow2")));
    assert_eq!(
        rec.disks[0].backing[0].0,
        here.join("5e2a7d10-6c4b-4f8e-a1d3-2b9c8e7f6a05/vda.qcow2")
    );
    assert_eq!(rec.disks[1].target, PathBuf::from("/backups/vm1/vdb.qcow2"));
    assert_eq!(rec.created_dirs, vec![here.join(b.to_string())]);
}
