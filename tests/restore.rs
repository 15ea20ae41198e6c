//! Restore on libvirt's test driver: in place, to new files, as a new
//! domain, from any backup of a chain; refusals touch nothing.

use std::path::Path;

mod common;
use common::{
    CONN, DELETE_ONE, NEW_DOMAIN, REWRITE, WAIT, WITH_CHILDREN, WORK, child_xml, disk, domain,
    identical, qemu_io, snapshot,
};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::ops::options::RestoreOptions;
use libvirt_backup::test_api::xml::domain::parse_disks;

fn whole(b: &Backup) -> String {
    format!("<domainbackup><uuid>{}</uuid></domainbackup>", b.uuid)
}

fn checksum(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn in_place_from_every_backup_of_a_chain() {
    let src = disk("rip.qcow2", "qcow2", "32M", &["write -P 0x11 0 8M"]);
    let dom = domain("rip", &[("vda", &src, "qcow2")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let t0 = snapshot(&src, "rip-t0.qcow2");
    qemu_io("qcow2", &src, "write -P 0x22 1M 1M");
    qemu_io("qcow2", &src, "write -z 6M 1M");
    let inc = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    let t1 = snapshot(&src, "rip-t1.qcow2");
    qemu_io("qcow2", &src, "write -P 0x33 20M 2M");

    // Without REWRITE_EXISTING_DISK: refused, the disk untouched.
    let before = checksum(&src);
    let err = Backup::restore(&whole(&full), RestoreOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    assert_eq!(checksum(&src), before);

    Backup::restore(&whole(&full), REWRITE).unwrap();
    assert!(identical(&src, "qcow2", &t0, "qcow2"));
    Backup::restore(&whole(&inc), REWRITE).unwrap();
    assert!(identical(&src, "qcow2", &t1, "qcow2"));
    // The definition did not change: same file, same format.
    assert_eq!(
        parse_disks(&dom.xml().unwrap()).unwrap()[0].source,
        Some(src.clone())
    );

    // A running domain is refused.
    dom.domain().create().unwrap();
    let err = Backup::restore(&whole(&full), REWRITE).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    dom.domain().destroy().unwrap();
    full.delete(WITH_CHILDREN).unwrap();
}

#[test]
fn corrupt_backup_is_detected_before_the_disk_is_touched() {
    let src = disk("rcor.raw", "raw", "8M", &["write -P 0x41 0 4M"]);
    let dom = domain("rcor", &[("vda", &src, "raw")]);
    let b = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    qemu_io("raw", &src, "write -P 0x42 0 64k");
    let target = b.record().unwrap().disks[0].target.clone();
    // Damage the backup behind the library's back.
    qemu_io("qcow2", &target, "write -P 0x99 0 64k");
    let before = checksum(&src);
    let err = Backup::restore(&whole(&b), REWRITE).unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("digest"), "{}", err.message);
    assert_eq!(checksum(&src), before);
    // To a new file: the half-written file is removed.
    let out = WORK.join("rcor-new.qcow2");
    let err = Backup::restore(
        &format!(
            "<domainbackup><uuid>{}</uuid><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
            b.uuid,
            out.display()
        ),
        RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(err.message.contains("digest"), "{}", err.message);
    assert!(!out.exists());
    b.delete(DELETE_ONE).unwrap();
}

#[test]
fn to_new_files_in_each_format_and_subsets() {
    let a = disk("rnf-a.raw", "raw", "16M", &["write -P 0x51 0 3M"]);
    let b = disk("rnf-b.qcow2", "qcow2", "8M", &["write -P 0x52 1M 1M"]);
    let dom = domain("rnf", &[("vda", &a, "raw"), ("vdb", &b, "qcow2")]);
    let bk = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let ta = snapshot(&a, "rnf-a0.raw");
    let tb = snapshot(&b, "rnf-b0.qcow2");
    qemu_io("raw", &a, "write -P 0x53 0 1M");
    let ra = WORK.join("rnf-out-a.raw");
    let xml = format!(
        "<domainbackup><uuid>{}</uuid><disks><disk name='vda'><target file='{}'/><driver type='raw'/></disk></disks></domainbackup>",
        bk.uuid,
        ra.display()
    );
    Backup::restore(&xml, RestoreOptions::default()).unwrap();
    assert!(identical(&ra, "raw", &ta, "raw"));
    assert_eq!(std::fs::metadata(&ra).unwrap().len(), 16 << 20);
    // The domain's vda now uses the restored file; vdb was left alone.
    let disks = parse_disks(&dom.xml().unwrap()).unwrap();
    assert_eq!(disks[0].source, Some(ra.clone()));
    assert_eq!(disks[1].source, Some(b.clone()));
    // A second restore to the same file needs REWRITE.
    let err = Backup::restore(&xml, RestoreOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid));

    // Format change of an existing disk: replaced by a qcow2 file.
    let xml = format!(
        "<domainbackup><uuid>{}</uuid><disks><disk name='vdb'><driver type='raw'/></disk></disks></domainbackup>",
        bk.uuid
    );
    Backup::restore(&xml, REWRITE).unwrap();
    assert!(identical(&b, "raw", &tb, "qcow2"));
    let disks = parse_disks(&dom.xml().unwrap()).unwrap();
    assert_eq!(disks[1].format.as_deref(), Some("raw"));

    // Unknown disk, bad XML, unknown backup.
    let bad = format!(
        "<domainbackup><uuid>{}</uuid><disks><disk name='vdz'/></disks></domainbackup>",
        bk.uuid
    );
    assert!(
        Backup::restore(&bad, RestoreOptions::default())
            .unwrap_err()
            .is(ErrorCode::InvalidArg)
    );
    assert!(
        Backup::restore("<domainbackup>", RestoreOptions::default())
            .unwrap_err()
            .is(ErrorCode::XmlError)
    );
    let none = "<domainbackup><uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid></domainbackup>";
    assert!(
        Backup::restore(none, RestoreOptions::default())
            .unwrap_err()
            .is(ErrorCode::NoDomainBackup)
    );
    bk.delete(DELETE_ONE).unwrap();
}

#[test]
fn as_a_new_domain() {
    let a = disk("rnd.qcow2", "qcow2", "16M", &["write -P 0x61 0 2M"]);
    let dom = domain("rnd", &[("vda", &a, "qcow2")]);
    // Give the domain a NIC with a MAC, to see it replaced.
    let xml = dom.xml().unwrap().replace(
        "</devices>",
        "<interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/></interface></devices>",
    );
    dom.redefine(&xml).unwrap();
    let bk = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let t0 = snapshot(&a, "rnd-t0.qcow2");
    qemu_io("qcow2", &a, "write -P 0x62 0 1M");
    // The backup's own domain may even be running.
    dom.domain().create().unwrap();
    Backup::restore(&whole(&bk), NEW_DOMAIN).unwrap();
    let name = format!("rnd-restore-{}", &bk.uuid.to_string()[..8]);
    let conn = CONN.lock().unwrap();
    let new = conn.lookup_domain_by_name(&name).unwrap();
    let new_xml = new.xml_desc(0).unwrap();
    assert_ne!(new.uuid_string().unwrap(), dom.uuid().unwrap().to_string());
    assert!(!new_xml.contains("52:54:00:aa:bb:cc"), "{new_xml}");
    let file = WORK.join(format!("{name}-vda.qcow2"));
    assert_eq!(parse_disks(&new_xml).unwrap()[0].source, Some(file.clone()));
    assert!(identical(&file, "qcow2", &t0, "qcow2"));
    // The name is taken now.
    let err = Backup::restore(&whole(&bk), NEW_DOMAIN).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    // A chosen name and file.
    let f2 = WORK.join("rnd-chosen.raw");
    let xml = format!(
        "<domainbackup><uuid>{}</uuid><domain name='rnd-chosen'/><disks><disk name='vda'><target file='{}'/><driver type='raw'/></disk></disks></domainbackup>",
        bk.uuid,
        f2.display()
    );
    Backup::restore(&xml, NEW_DOMAIN).unwrap();
    assert!(conn.lookup_domain_by_name("rnd-chosen").is_ok());
    assert!(identical(&f2, "raw", &t0, "qcow2"));
    dom.domain().destroy().unwrap();
    drop(conn);
    bk.delete(DELETE_ONE).unwrap();
}

#[test]
fn unmanaged_from_files() {
    let a = disk("run-a.qcow2", "qcow2", "8M", &["write -P 0x71 0 1M"]);
    let dom = domain("run", &[("vda", &a, "qcow2")]);
    let other = disk("run-src.raw", "raw", "8M", &["write -P 0x72 2M 1M"]);
    let xml = format!(
        "<domainbackup><disks><disk name='vda'><source file='{}'><driver type='raw'/></source></disk></disks></domainbackup>",
        other.display()
    );
    let before = checksum(&a);
    // A file source's format is stated, never guessed from its bytes.
    let unstated = xml.replace("<driver type='raw'/></source>", "</source>");
    let err = Backup::restore_unmanaged(&dom, &unstated, REWRITE).unwrap_err();
    assert!(
        err.is(ErrorCode::XmlError) && err.message.contains("<driver type> is required"),
        "{err:?}"
    );
    assert_eq!(checksum(&a), before);
    let err = Backup::restore_unmanaged(&dom, &xml, RestoreOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    assert_eq!(checksum(&a), before);
    Backup::restore_unmanaged(&dom, &xml, REWRITE).unwrap();
    assert!(identical(&a, "qcow2", &other, "raw"));

    Backup::restore_unmanaged(
        &dom,
        &xml.replace("<disks>", "<domain name='run-copy'/><disks>"),
        NEW_DOMAIN,
    )
    .unwrap();
    let copy = WORK.join("run-copy-vda.qcow2");
    assert!(identical(&copy, "qcow2", &other, "raw"));
    assert!(
        CONN.lock()
            .unwrap()
            .lookup_domain_by_name("run-copy")
            .is_ok()
    );

    // An NBD server that is not there (tests/unmanaged.rs reads real ones).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nbd = format!(
        "<domainbackup><disks><disk name='vda'><source protocol='nbd' name='vda'><host name='127.0.0.1' port='{port}'/></source></disk></disks></domainbackup>"
    );
    let err = Backup::restore_unmanaged(&dom, &nbd, REWRITE).unwrap_err();
    assert!(
        err.is(ErrorCode::OperationFailed) && err.message.contains("connect"),
        "{err:?}"
    );
    let missing = xml.replace("run-src.raw", "run-nothing.raw");
    let err = Backup::restore_unmanaged(&dom, &missing, REWRITE).unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    let unknown = xml.replace("name='vda'", "name='vdq'");
    assert!(
        Backup::restore_unmanaged(&dom, &unknown, REWRITE)
            .unwrap_err()
            .is(ErrorCode::InvalidArg)
    );
    let nodisks = "<domainbackup/>";
    assert!(
        Backup::restore_unmanaged(&dom, nodisks, REWRITE)
            .unwrap_err()
            .is(ErrorCode::XmlError)
    );
}
