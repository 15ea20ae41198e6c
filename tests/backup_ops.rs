//! Backup operations end to end on libvirt's test driver (no daemon).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{
    DELETE_ONE, LIST_ALL, LIST_FULL, LIST_INCREMENTAL, LIST_LATEST, LIST_LEAVES, WAIT, WORK, disk,
    domain, forget_backups, identical,
};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::hv::libvirt::DomainRef;
use libvirt_backup::test_api::ops::backup::{Backup, ParamValue};
use libvirt_backup::test_api::ops::options::{
    Affect, ChildScope, CreateOptions, FinishMode, UndefineOptions,
};
use libvirt_backup::test_api::store::catalog::Catalog;
use uuid::Uuid;

fn catalog_files(dom: &DomainRef) -> usize {
    let dir = Catalog::open().unwrap().domain(&dom.uuid().unwrap()).path();
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn full_backup_of_two_disks_lists_and_deletes() {
    let a = disk("two-a.raw", "raw", "32M", &["write -P 0x61 1M 3M"]);
    let b = disk("two-b.qcow2", "qcow2", "16M", &["write -P 0x62 0 1M"]);
    let dom = domain("two", &[("vda", &a, "raw"), ("vdb", &b, "qcow2")]);
    let bk = Backup::create(
        &dom,
        "<domainbackup><description>x</description></domainbackup>",
        WAIT,
    )
    .unwrap();
    let rec = bk.record().unwrap();
    assert_eq!(rec.disks.len(), 2);
    assert!(identical(&a, "raw", &rec.disks[0].target, "qcow2"));
    assert!(identical(&b, "qcow2", &rec.disks[1].target, "qcow2"));
    // Default location: <catalog>/<domain>/<backup>/<disk>.qcow2
    let expect = Catalog::open()
        .unwrap()
        .backup(&dom.uuid().unwrap(), &bk.uuid)
        .data_dir()
        .join("vda.qcow2");
    assert_eq!(rec.disks[0].target, expect);
    let params = bk.parameters().unwrap();
    assert_eq!(params[0], ("state".into(), ParamValue::Int(2)));
    assert!(params.contains(&("bytes.total".into(), ParamValue::ULLong(48 << 20))));
    assert!(params.contains(&("bytes.written".into(), ParamValue::ULLong(4 << 20))));
    assert_eq!(Backup::list(&dom, LIST_ALL).unwrap().len(), 1);
    let found = Backup::lookup(&bk.uuid.to_string()).unwrap();
    assert_eq!(found.xml_desc().unwrap(), bk.xml_desc().unwrap());
    bk.delete(DELETE_ONE).unwrap();
    assert!(!rec.disks[0].target.exists());
    assert!(!rec.disks[0].target.parent().unwrap().exists());
    assert!(bk.xml_desc().unwrap_err().is(ErrorCode::NoDomainBackup));
    assert_eq!(Backup::list(&dom, LIST_ALL).unwrap().len(), 0);
}

#[test]
fn refused_requests_create_nothing() {
    let a = disk("refuse-a.raw", "raw", "8M", &["write -P 1 0 1M"]);
    let dom = domain("refuse", &[("vda", &a, "raw")]);
    let existing = WORK.join("refuse-existing.qcow2");
    std::fs::write(&existing, b"precious").unwrap();
    let bad = [
        (
            "<domainbackup><disks><disk name='vdz'/></disks></domainbackup>",
            ErrorCode::InvalidArg,
        ),
        ("<domainbackup><disks", ErrorCode::XmlError),
        (
            &*format!(
                "<domainbackup><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
                existing.display()
            ),
            ErrorCode::InvalidArg,
        ),
        (
            "<domainbackup><parent><uuid>d2ee2566-bef2-408f-ac7a-eb8004186074</uuid></parent></domainbackup>",
            ErrorCode::NoDomainBackup,
        ),
        (
            "<domainbackup><disks><disk name='vda' backup='no'/></disks></domainbackup>",
            ErrorCode::InvalidArg,
        ),
        (
            "<domainbackup><disks><disk name='vda'><target file='/nonexistent-dir/x.qcow2'/></disk></disks></domainbackup>",
            ErrorCode::InvalidArg,
        ),
    ];
    for (xml, code) in bad {
        let err = Backup::create(&dom, xml, CreateOptions::default()).unwrap_err();
        assert!(err.is(code), "{xml}: {err:?}");
        assert_eq!(catalog_files(&dom), 0, "{xml} left files behind");
    }
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    // An unknown pool keeps libvirt's VIR_ERR_NO_STORAGE_POOL.
    let err = Backup::create(
        &dom,
        "<domainbackup><disks><disk name='vda' type='volume'><target pool='p' volume='v'/></disk></disks></domainbackup>",
        CreateOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.code, 49, "{err:?}");
    assert_eq!(catalog_files(&dom), 0);

    // A source that vanished is reported with its name.
    let gone = disk("refuse-gone.raw", "raw", "1M", &[]);
    let dom2 = domain("refuse-gone", &[("vda", &gone, "raw")]);
    std::fs::remove_file(&gone).unwrap();
    let err = Backup::create(&dom2, "<domainbackup/>", CreateOptions::default()).unwrap_err();
    assert!(
        err.is(ErrorCode::OperationFailed) && err.message.contains("refuse-gone.raw"),
        "{err:?}"
    );
}

#[test]
fn uuid_must_be_unused_and_parent_must_exist() {
    let a = disk("uuid-a.raw", "raw", "4M", &["write -P 1 0 1M"]);
    let dom = domain("uuidcheck", &[("vda", &a, "raw")]);
    let u = Uuid::new_v4();
    let xml = format!("<domainbackup><uuid>{u}</uuid></domainbackup>");
    let bk = Backup::create(&dom, &xml, WAIT).unwrap();
    assert_eq!(bk.uuid, u);
    let err = Backup::create(&dom, &xml, WAIT).unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    // An existing, completed parent is accepted.
    let child = Backup::create(
        &dom,
        &format!("<domainbackup><parent><uuid>{u}</uuid></parent></domainbackup>"),
        WAIT,
    )
    .unwrap();
    child.delete(DELETE_ONE).unwrap();
    // A parent of another domain is refused.
    let b = disk("uuid-b.raw", "raw", "4M", &[]);
    let other = domain("uuidcheck-other", &[("vda", &b, "raw")]);
    let err = Backup::create(
        &other,
        &format!("<domainbackup><parent><uuid>{u}</uuid></parent></domainbackup>"),
        CreateOptions::default(),
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    bk.delete(DELETE_ONE).unwrap();
}

#[test]
fn cancel_removes_everything() {
    let a = disk("cancel-a.raw", "raw", "1G", &["write -P 0x33 0 1G"]);
    let dom = domain("cancel", &[("vda", &a, "raw")]);
    let bk = Backup::create(&dom, "<domainbackup/>", CreateOptions::default()).unwrap();
    let target = Backup::list(&dom, LIST_ALL).unwrap()[0]
        .record()
        .unwrap()
        .disks[0]
        .target
        .clone();
    assert!(target.exists());
    match bk.abort() {
        Ok(()) => {
            assert_eq!(
                bk.parameters().unwrap()[0],
                ("state".into(), ParamValue::Int(4))
            );
            assert!(!target.exists());
            assert_eq!(Backup::list(&dom, LIST_ALL).unwrap().len(), 0);
            assert!(
                bk.finish_job(FinishMode::Wait)
                    .unwrap_err()
                    .is(ErrorCode::OperationAborted)
            );
        }
        // The machine was fast enough to finish first.
        Err(e) => {
            assert!(e.is(ErrorCode::OperationInvalid));
            bk.delete(DELETE_ONE).unwrap();
        }
    }
    assert!(bk.abort().unwrap_err().is(ErrorCode::OperationInvalid));
}

#[test]
fn list_flags_and_undefine_guard() {
    let a = disk("flags-a.raw", "raw", "4M", &["write -P 1 0 1M"]);
    let dom = domain("flags", &[("vda", &a, "raw")]);
    let first = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let second = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let latest = Backup::list(&dom, LIST_LATEST).unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].uuid, second.uuid);
    assert_eq!(Backup::list(&dom, LIST_FULL).unwrap().len(), 2);
    assert_eq!(Backup::list(&dom, LIST_INCREMENTAL).unwrap().len(), 0);
    assert_eq!(Backup::list(&dom, LIST_LEAVES).unwrap().len(), 2);
    assert_eq!(
        first
            .list_children(ChildScope::Descendants, LIST_ALL)
            .unwrap()
            .len(),
        0
    );

    let err = libvirt_backup::test_api::ops::backup::undefine(&dom, UndefineOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid));
    assert!(dom.uuid().is_ok());
    let target = first.record().unwrap().disks[0].target.clone();
    libvirt_backup::test_api::ops::backup::undefine(&dom, forget_backups()).unwrap();
    assert!(target.exists(), "undefine keeps data files");
    assert!(
        Backup::lookup(&first.uuid.to_string())
            .unwrap_err()
            .is(ErrorCode::NoDomainBackup)
    );
}

/// A small tmpfs, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = WORK.join(format!("fs-{}", Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_target_disk_fails_cleanly_and_keeps_earlier_backups() {
    let a = disk("full-a.raw", "raw", "64M", &["write -P 0x5c 0 64M"]);
    let dom = domain("fulldisk", &[("vda", &a, "raw")]);
    let earlier = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let fs = SmallFs::mount("8M");
    let target = fs.0.join("vda.qcow2");
    let xml = format!(
        "<domainbackup><disks><disk name='vda'><target file='{}'/></disk></disks></domainbackup>",
        target.display()
    );
    let err = Backup::create(&dom, &xml, WAIT).unwrap_err();
    assert!(err.is(ErrorCode::OperationFailed), "{err:?}");
    assert!(err.message.contains("target image"), "{}", err.message);
    assert_eq!(
        std::fs::read_dir(&fs.0).unwrap().count(),
        0,
        "partial target left behind"
    );
    let listed = Backup::list(&dom, LIST_ALL).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uuid, earlier.uuid);
    let rec = earlier.record().unwrap();
    assert!(identical(&a, "raw", &rec.disks[0].target, "qcow2"));
    earlier.delete(DELETE_ONE).unwrap();
}

#[test]
fn default_targets_live_and_config() {
    let a = disk("deftgt-a.raw", "raw", "4M", &["write -P 7 0 1M"]);
    let dom = domain("deftgt", &[("vda", &a, "raw")]);
    let config_dir = WORK.join("deftgt-config");
    let live_dir = WORK.join("deftgt-live");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&live_dir).unwrap();
    let xml = |d: &Path| format!("<target type='dir'><path>{}</path></target>", d.display());
    use libvirt_backup::test_api::ops::backup::set_default_target;

    // Inactive domain: LIVE is refused, CURRENT means CONFIG.
    let err = set_default_target(&dom, &xml(&live_dir), Affect::Live).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    set_default_target(&dom, &xml(&config_dir), Affect::Current).unwrap();
    let b1 = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let t1 = b1.record().unwrap().disks[0].target.clone();
    assert_eq!(t1, config_dir.join(b1.uuid.to_string()).join("vda.qcow2"));
    assert!(identical(&a, "raw", &t1, "qcow2"));

    // Running (test driver): LIVE wins over CONFIG while it runs.
    dom.domain().create().unwrap();
    set_default_target(&dom, &xml(&live_dir), Affect::Live).unwrap();
    let b2 = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let t2 = b2.record().unwrap().disks[0].target.clone();
    assert!(t2.starts_with(&live_dir), "{}", t2.display());
    assert!(identical(&a, "raw", &t2, "qcow2"));

    // Shut off again: back to CONFIG.
    dom.domain().destroy().unwrap();
    let b3 = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    assert!(
        b3.record().unwrap().disks[0]
            .target
            .starts_with(&config_dir)
    );

    // An unknown pool and a missing folder are refused.
    let err = set_default_target(
        &dom,
        "<target type='pool'><pool>nopool</pool></target>",
        Affect::Config,
    )
    .unwrap_err();
    assert_eq!(err.code, 49, "{err:?}");
    let err = set_default_target(&dom, &xml(&WORK.join("nope")), Affect::Config).unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg));
    for b in [b1, b2, b3] {
        b.delete(DELETE_ONE).unwrap();
    }
}
