//! Delta digest indexes: an incremental's index stores only the chunks that
//! changed and resolves the rest through its parent's. Restores, in-place
//! restores, merges (delete of a parent) and metadata-only deletes all read
//! them; every result is checked byte for byte. On libvirt's test driver.

use std::path::Path;

mod common;
use common::{
    DELETE_ONE, METADATA_ONLY, REWRITE, WAIT, WITH_CHILDREN, WORK, child_xml, disk, domain,
    identical, qemu_io, snapshot,
};

use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::ops::options::RestoreOptions;
use libvirt_backup::test_api::store::catalog::Catalog;
use libvirt_backup::test_api::store::index::{IndexReader, parent_of};

fn magic(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()[..8].to_vec()
}

/// Restore `b`'s vda to a new qcow2 file and compare it with `want`.
fn restores_to(b: &Backup, name: &str, want: &Path) -> bool {
    let out = WORK.join(name);
    let xml = format!(
        "<domainbackup><uuid>{}</uuid><disks><disk name='vda'><target file='{}'/>\
         <driver type='qcow2'/></disk></disks></domainbackup>",
        b.uuid,
        out.display()
    );
    Backup::restore(&xml, RestoreOptions::default()).unwrap();
    identical(&out, "qcow2", want, "qcow2")
}

#[test]
fn chains_of_delta_indexes_restore_merge_and_forget_byte_exact() {
    let src = disk("dix.qcow2", "qcow2", "64M", &["write -P 0x11 0 40M"]);
    let dom = domain("dix", &[("vda", &src, "qcow2")]);
    let catalog = Catalog::open().unwrap();
    let dom_uuid = dom.uuid().unwrap();
    let idx = |b: &Backup| catalog.backup(&dom_uuid, &b.uuid).index_path("vda");

    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    qemu_io("qcow2", &src, "write -P 0x12 1M 64k");
    qemu_io("qcow2", &src, "write -z 8M 128k");
    let i1 = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    let t1 = snapshot(&src, "dix-t1.qcow2");
    qemu_io("qcow2", &src, "write -P 0x13 1M 32k");
    qemu_io("qcow2", &src, "write -P 0x14 50M 64k");
    let i2 = Backup::create(&dom, &child_xml(&i1), WAIT).unwrap();
    let t2 = snapshot(&src, "dix-t2.qcow2");
    qemu_io("qcow2", &src, "write -P 0x15 20M 1M");
    let i3 = Backup::create(&dom, &child_xml(&i2), WAIT).unwrap();
    let t3 = snapshot(&src, "dix-t3.qcow2");

    // A flat index for the full backup, deltas (a few entries) after it.
    assert_eq!(magic(&idx(&full)), b"LVBKDIG1");
    for (b, depth) in [(&i1, 1), (&i2, 2), (&i3, 3)] {
        assert_eq!(magic(&idx(b)), b"LVBKDIG2");
        assert_eq!(IndexReader::open(&idx(b)).unwrap().depth(), depth);
    }
    let flat = std::fs::metadata(idx(&full)).unwrap().len();
    let delta = std::fs::metadata(idx(&i3)).unwrap().len();
    assert!(delta * 20 < flat, "delta {delta} bytes vs flat {flat}");

    // Restores read through the deltas and check every byte against them.
    assert!(restores_to(&i1, "dix-r1.qcow2", &t1));
    assert!(restores_to(&i2, "dix-r2.qcow2", &t2));
    // The domain now uses dix-r2.qcow2: change it, rewrite it in place to i3.
    let r2 = WORK.join("dix-r2.qcow2");
    qemu_io("qcow2", &r2, "write -P 0x77 3M 64k");
    let xml = format!("<domainbackup><uuid>{}</uuid></domainbackup>", i3.uuid);
    Backup::restore(&xml, REWRITE).unwrap();
    assert!(identical(&r2, "qcow2", &t3, "qcow2"));

    // Deleting i1 merges it into i2: i2's index is rewritten against the
    // full backup's, and i1's index goes.
    let i1_dir = idx(&i1).parent().unwrap().to_path_buf();
    i1.delete(DELETE_ONE).unwrap();
    assert!(!i1_dir.exists());
    let p = parent_of(&idx(&i2)).unwrap().unwrap();
    assert_eq!(
        p.parent().unwrap().file_name(),
        idx(&full).parent().unwrap().file_name()
    );
    assert!(restores_to(&i2, "dix-r2b.qcow2", &t2));
    assert!(restores_to(&i3, "dix-r3.qcow2", &t3));

    // Forgetting the full backup (its files stay) makes i2's index flat.
    full.delete(METADATA_ONLY).unwrap();
    assert_eq!(magic(&idx(&i2)), b"LVBKDIG1");
    assert!(parent_of(&idx(&i3)).unwrap().is_some());
    assert!(restores_to(&i3, "dix-r3b.qcow2", &t3));
    i2.delete(WITH_CHILDREN).unwrap();
}
