//! Backups of inactive domains of the QEMU driver (qemu:///system), through
//! a real libvirtd started by scripts/start-libvirtd.sh (make check does).

mod common;
use common::qemu::{QemuDomain, URI, connect, image};
use common::{
    DELETE_ONE, LIST_ALL, NEW_DOMAIN, REWRITE, WAIT, WORK, forget_backups, identical, qemu_io,
};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::hv::libvirt::DomainRef;
use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::ops::options::UndefineOptions;

#[test]
fn inactive_qemu_domain_full_backup() {
    let conn = connect();
    let a = image(
        "q-a.qcow2",
        "qcow2",
        "256M",
        &["write -P 0x41 0 3M", "write -P 0x42 200M 5M"],
    );
    let b = image("q-b.raw", "raw", "64M", &["write -P 0x43 1M 2M"]);
    let qd = QemuDomain::define(&conn, "full", &[("vda", &a, "qcow2"), ("vdb", &b, "raw")]);
    assert!(!qd.dom.is_active().unwrap());

    let bk = Backup::create(
        &qd.dom,
        "<domainbackup><description>qemu</description></domainbackup>",
        WAIT,
    )
    .unwrap();
    let rec = bk.record().unwrap();
    assert_eq!(rec.uri, URI);
    assert!(identical(&a, "qcow2", &rec.disks[0].target, "qcow2"));
    assert!(identical(&b, "raw", &rec.disks[1].target, "qcow2"));
    assert!(rec.domain_xml.contains("<domain type='qemu'"));

    // Found again through the daemon, as a fresh process would.
    let found = Backup::lookup(&bk.uuid.to_string()).unwrap();
    assert_eq!(
        found.domain().unwrap().uuid().unwrap(),
        qd.dom.uuid().unwrap()
    );

    // The domain starts from its (untouched) disks; running, it is backed
    // up by libvirt (tests/qemu_live.rs has the details).
    qd.dom.domain().create().unwrap();
    let live = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    assert!(live.record().unwrap().checkpoint.is_some());
    assert_eq!(Backup::list(&qd.dom, LIST_ALL).unwrap().len(), 2);
    qd.dom.domain().destroy().unwrap();

    // Undefine is refused while backups exist, then forgets them.
    let err =
        libvirt_backup::test_api::ops::backup::undefine(&qd.dom, UndefineOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid));
    libvirt_backup::test_api::ops::backup::undefine(&qd.dom, forget_backups()).unwrap();
    assert!(
        conn.lookup_domain_by_uuid_string(&qd.dom.uuid().unwrap().to_string())
            .is_err()
    );
    assert!(
        rec.disks[0].target.exists(),
        "undefine keeps the data files"
    );
}

/// A transient dir pool removed when the test ends.
struct Pool(virt::storage_pool::StoragePool);

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.0.destroy();
    }
}

#[test]
fn inactive_qemu_domain_chain_restore_and_pool() {
    let conn = connect();
    let a = image("qc-a.qcow2", "qcow2", "64M", &["write -P 0x51 0 4M"]);
    let qd = QemuDomain::define(&conn, "chain", &[("vda", &a, "qcow2")]);
    let pool_dir = WORK.join("qc-pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    let pool_name = format!("lvb-pool-{}", std::process::id());
    let pool = Pool(
        conn.create_storage_pool_xml(
            &format!(
                "<pool type='dir'><name>{pool_name}</name><target><path>{}</path></target></pool>",
                pool_dir.display()
            ),
            0,
        )
        .unwrap(),
    );

    let full = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    let t0 = WORK.join("qc-t0.qcow2");
    std::fs::copy(&a, &t0).unwrap();
    qemu_io("qcow2", &a, "write -P 0x52 1M 1M");
    let inc = Backup::create(
        &qd.dom,
        &format!(
            "<domainbackup><parent><uuid>{}</uuid></parent><disks><disk name='vda' type='volume'>\
             <target pool='{pool_name}' volume='inc.qcow2'/></disk></disks></domainbackup>",
            full.uuid
        ),
        WAIT,
    )
    .unwrap();
    let inc_file = pool_dir.join("inc.qcow2");
    assert!(identical(&inc_file, "qcow2", &a, "qcow2"));
    let names: Vec<String> = pool
        .0
        .list_all_volumes(0)
        .unwrap()
        .iter()
        .map(|v| v.name().unwrap())
        .collect();
    assert_eq!(names, ["inc.qcow2"]);
    let t1 = WORK.join("qc-t1.qcow2");
    std::fs::copy(&a, &t1).unwrap();
    qemu_io("qcow2", &a, "write -P 0x53 0 8M");

    // Back to the full backup in place, then to the incremental.
    Backup::restore(
        &format!("<domainbackup><uuid>{}</uuid></domainbackup>", full.uuid),
        REWRITE,
    )
    .unwrap();
    assert!(identical(&a, "qcow2", &t0, "qcow2"));
    Backup::restore(
        &format!("<domainbackup><uuid>{}</uuid></domainbackup>", inc.uuid),
        REWRITE,
    )
    .unwrap();
    assert!(identical(&a, "qcow2", &t1, "qcow2"));

    // As a new QEMU domain.
    let new_name = format!("lvb-restored-{}", std::process::id());
    Backup::restore(
        &format!(
            "<domainbackup><uuid>{}</uuid><domain name='{new_name}'/></domainbackup>",
            inc.uuid
        ),
        NEW_DOMAIN,
    )
    .unwrap();
    let new = QemuDomain {
        dom: DomainRef::new(conn.lookup_domain_by_name(&new_name).unwrap()),
    };
    let restored = WORK.join(format!("{new_name}-vda.qcow2"));
    assert!(identical(&restored, "qcow2", &t1, "qcow2"));
    assert!(
        new.dom
            .xml()
            .unwrap()
            .contains(&*restored.to_string_lossy())
    );
    // Both the restored domain and the one restored in place start.
    new.dom.domain().create().unwrap();
    new.dom.domain().destroy().unwrap();
    drop(new);
    qd.dom.domain().create().unwrap();
    qd.dom.domain().destroy().unwrap();

    // Deleting the full backup merges it into the incremental volume.
    full.delete(DELETE_ONE).unwrap();
    assert!(identical(&inc_file, "qcow2", &t1, "qcow2"));
    inc.delete(DELETE_ONE).unwrap();
    assert!(!inc_file.exists());
    assert!(pool.0.list_all_volumes(0).unwrap().is_empty());
}
