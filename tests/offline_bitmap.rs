//! Offline incrementals after a live backup: the checkpoint's persistent
//! bitmap in the shut-off domain's qcow2 image tells what changed, so only
//! those clusters are read. A bitmap that cannot be trusted falls back to
//! comparing every chunk with the parent's digest index. On qemu:///system.

mod common;
use std::path::Path;
use std::process::Command;

use common::qemu::{QemuDomain, connect, image, snapshot};
use common::{WAIT, WITH_CHILDREN, child_xml, identical, qemu_io};

use libvirt_backup::test_api::engine::bitmap::dirty_ranges;
use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::xml::backup::BackupMode;

const K64: u64 = 64 << 10;

/// Overwrite the guest cluster at `guest` directly in the image file,
/// behind QEMU's back (so no bitmap sees it): where the data sits comes
/// from `qemu-img map`.
fn write_behind_qemu(img: &Path, guest: u64, byte: u8) {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "qcow2"])
        .arg(img)
        .output()
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host = map
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| {
            let (s, l) = (e["start"].as_u64()?, e["length"].as_u64()?);
            (s <= guest && guest < s + l && e["data"].as_bool()?)
                .then(|| e["offset"].as_u64().map(|o| o + guest - s))
                .flatten()
        })
        .expect("the cluster holds data");
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&vec![byte; K64 as usize], host).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn offline_incremental_reads_only_what_the_bitmap_marks() {
    let conn = connect();
    let a = image("obm-a.qcow2", "qcow2", "256M", &["write -P 0x11 0 128M"]);
    let qd = QemuDomain::define(&conn, "obm", &[("vda", &a, "qcow2")]);
    qd.start();
    let full = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    let bitmap = full.record().unwrap().checkpoint.unwrap();
    qd.stop();

    // Changes made while the domain is off, by a QEMU tool: the bitmap
    // records them (one unaligned, one past the old data).
    qemu_io("qcow2", &a, "write -P 0x22 1M 64k");
    qemu_io("qcow2", &a, "write -P 0x23 100000 1000");
    qemu_io("qcow2", &a, "write -P 0x24 200M 192k");
    let size = 256u64 << 20;
    let dirty = dirty_ranges(&a, &bitmap, size, size).unwrap();
    assert_eq!(
        dirty,
        vec![(64 << 10, 64 << 10), (1 << 20, K64), (200 << 20, 3 * K64)]
    );
    // The proof that only marked clusters are read: a change made behind
    // QEMU's back (no bitmap sees it) is not in the incremental.
    let t1 = snapshot(&a, "qcow2", "obm-t1.raw");
    write_behind_qemu(&a, 64 << 20, 0x99);

    let inc = Backup::create(&qd.dom, &child_xml(&full), WAIT).unwrap();
    let rec = inc.record().unwrap();
    assert_eq!(rec.disks[0].mode, BackupMode::Incremental);
    assert!(identical(&rec.disks[0].target, "qcow2", &t1, "raw"));
    full.delete(WITH_CHILDREN).unwrap();
}

#[test]
fn a_bitmap_left_in_use_falls_back_to_the_digests() {
    let conn = connect();
    let a = image("obi-a.qcow2", "qcow2", "64M", &["write -P 0x31 0 32M"]);
    let qd = QemuDomain::define(&conn, "obi", &[("vda", &a, "qcow2")]);
    qd.start();
    let full = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    qd.stop();

    // A tool that dies with the image open leaves the bitmap 'in-use': its
    // last writes may be missing from it, so it must not be trusted.
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x32 2M 64k", "-c", "flush"])
        .args(["-c", "sigraise 9"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("in-use"));
    write_behind_qemu(&a, 8 << 20, 0x98);
    let t1 = snapshot(&a, "qcow2", "obi-t1.raw");

    let inc = Backup::create(&qd.dom, &child_xml(&full), WAIT).unwrap();
    let rec = inc.record().unwrap();
    assert_eq!(rec.disks[0].mode, BackupMode::Incremental);
    // Both changes are there: every chunk was compared with the parent's.
    assert!(identical(&rec.disks[0].target, "qcow2", &t1, "raw"));
    full.delete(WITH_CHILDREN).unwrap();
}
