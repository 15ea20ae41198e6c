//! Backups kept as storage-pool volumes, on libvirt's test driver.

mod common;
use common::{CONN, DELETE_ONE, LIST_ALL, WAIT, WORK, disk, domain, identical, qemu_io};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::{Backup, set_default_target};
use libvirt_backup::test_api::ops::options::Affect;
use virt::storage_pool::StoragePool;

fn volumes(pool: &StoragePool) -> Vec<String> {
    let mut v: Vec<String> = pool
        .list_all_volumes(0)
        .unwrap()
        .iter()
        .map(|v| v.name().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn volume_targets_and_default_pool() {
    let dir = WORK.join("pool-bk");
    std::fs::create_dir_all(&dir).unwrap();
    let pool = CONN
        .lock()
        .unwrap()
        .create_storage_pool_xml(
            &format!(
                "<pool type='dir'><name>bkpool</name><target><path>{}</path></target></pool>",
                dir.display()
            ),
            0,
        )
        .unwrap();
    let src = disk("pool-src.qcow2", "qcow2", "16M", &["write -P 0x21 0 2M"]);
    let dom = domain("pooldom", &[("vda", &src, "qcow2")]);

    let full = Backup::create(
        &dom,
        "<domainbackup><disks><disk name='vda' type='volume'><target pool='bkpool' volume='full.qcow2'/></disk></disks></domainbackup>",
        WAIT,
    )
    .unwrap();
    let rec = full.record().unwrap();
    assert_eq!(rec.disks[0].target, dir.join("full.qcow2"));
    assert!(identical(&rec.disks[0].target, "qcow2", &src, "qcow2"));
    let xml = full.xml_desc().unwrap();
    assert!(
        xml.contains("type='volume'") && xml.contains("volume='full.qcow2'"),
        "{xml}"
    );
    assert_eq!(volumes(&pool), ["full.qcow2"]);

    // The same volume again: refused, nothing created.
    let err = Backup::create(
        &dom,
        "<domainbackup><disks><disk name='vda' type='volume'><target pool='bkpool' volume='full.qcow2'/></disk></disks></domainbackup>",
        WAIT,
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    let err = Backup::create(
        &dom,
        "<domainbackup><disks><disk name='vda' type='volume'><target pool='nopool' volume='x'/></disk></disks></domainbackup>",
        WAIT,
    )
    .unwrap_err();
    assert!(err.message.contains("nopool"), "{err:?}");
    assert_eq!(Backup::list(&dom, LIST_ALL).unwrap().len(), 1);

    // A default pool target: later backups (here an incremental) go there.
    let err = set_default_target(
        &dom,
        "<target type='pool'><pool>nopool</pool></target>",
        Affect::Current,
    )
    .unwrap_err();
    assert!(err.message.contains("nopool"));
    set_default_target(
        &dom,
        "<target type='pool'><pool>bkpool</pool></target>",
        Affect::Current,
    )
    .unwrap();
    qemu_io("qcow2", &src, "write -P 0x22 1M 64k");
    let inc = Backup::create(
        &dom,
        &format!(
            "<domainbackup><parent><uuid>{}</uuid></parent></domainbackup>",
            full.uuid
        ),
        WAIT,
    )
    .unwrap();
    let name = format!("pooldom-{}-vda.qcow2", inc.uuid);
    assert_eq!(volumes(&pool), ["full.qcow2".to_string(), name.clone()]);
    let inc_file = dir.join(&name);
    assert!(identical(&inc_file, "qcow2", &src, "qcow2"));

    // Deleting the backups deletes their volumes (the middle is merged first).
    full.delete(DELETE_ONE).unwrap();
    assert_eq!(volumes(&pool), [name]);
    assert!(identical(&inc_file, "qcow2", &src, "qcow2"));
    inc.delete(DELETE_ONE).unwrap();
    assert!(volumes(&pool).is_empty());
    assert!(!inc_file.exists());
    pool.destroy().unwrap();
}
