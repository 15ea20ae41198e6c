//! Backups of running QEMU domains through libvirt (push mode, one
//! checkpoint per backup), on a real libvirtd. Guest writes go through QEMU
//! (qemu-io over the HMP monitor).

mod common;
use common::qemu::{QemuDomain, connect, image, snapshot};
use common::{
    DELETE_ONE, LIST_ALL, REWRITE, WAIT, WAIT_NO_FALLBACK, WITH_CHILDREN, child_xml,
    forget_backups, identical,
};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::{Backup, ParamValue};
use libvirt_backup::test_api::ops::options::{CreateOptions, FinishMode};
use libvirt_backup::test_api::xml::backup::BackupMode;

fn param(b: &Backup, name: &str) -> ParamValue {
    b.parameters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .unwrap()
}

/// The checkpoint a live backup creates.
fn cp(b: &Backup) -> String {
    format!("libvirt-backup-{}", b.uuid)
}

#[test]
fn full_then_incremental_of_a_running_domain() {
    let conn = connect();
    let a = image("live-a.qcow2", "qcow2", "512M", &["write -P 0x11 0 256M"]);
    let qd = QemuDomain::define(&conn, "live", &[("vda", &a, "qcow2")]);
    qd.start();
    qd.guest_io("virtio-disk0", "write -P 0xcd 32M 4M");
    let t0 = snapshot(&a, "qcow2", "live-t0.raw");

    // Started without WAIT: a guest write made while the job runs is not in it.
    let full = Backup::create(&qd.dom, "<domainbackup/>", CreateOptions::default()).unwrap();
    let running = full.finish_job(FinishMode::Check).unwrap() == 1;
    qd.guest_io("virtio-disk0", "write -P 0xab 0 8M");
    full.finish_job(FinishMode::Wait).unwrap();
    let rec = full.record().unwrap();
    assert!(identical(&rec.disks[0].target, "qcow2", &t0, "raw"));
    assert_eq!(rec.checkpoint.as_deref(), Some(&*cp(&full)));
    assert!(qd.checkpoints().contains(&cp(&full)));
    assert_eq!(param(&full, "state"), ParamValue::Int(2));
    assert_eq!(param(&full, "bytes.total"), ParamValue::ULLong(512 << 20));
    eprintln!("guest write landed while the job ran: {running}");

    // 8 MiB were written since (the write above): the incremental copies them.
    let t1 = snapshot(&a, "qcow2", "live-t1.raw");
    let inc = Backup::create(&qd.dom, &child_xml(&full), WAIT).unwrap();
    let irec = inc.record().unwrap();
    assert_eq!(irec.disks[0].mode, BackupMode::Incremental);
    assert!(identical(&irec.disks[0].target, "qcow2", &t1, "raw"));
    assert_eq!(param(&inc, "incremental"), ParamValue::Boolean(true));
    // Read through libvirt's export: only what the checkpoint's bitmap
    // marks was read and written.
    assert_eq!(param(&inc, "bytes.total"), ParamValue::ULLong(512 << 20));
    assert_eq!(param(&inc, "bytes.written"), ParamValue::ULLong(8 << 20));
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--backing-chain"])
        .arg(&irec.disks[0].target)
        .output()
        .unwrap();
    // Both in the catalog's default folders: the parent is named relative
    // to the incremental's folder (the catalog can move whole).
    let parent = &rec.disks[0].target;
    let named = format!(
        "backing file: ../{}/{}",
        full.uuid,
        parent.file_name().unwrap().to_string_lossy()
    );
    assert!(
        String::from_utf8_lossy(&info.stdout).contains(&named),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );

    // Restore into the running domain is refused.
    let err = Backup::restore(
        &format!("<domainbackup><uuid>{}</uuid></domainbackup>", inc.uuid),
        REWRITE,
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");

    // Deleting removes the checkpoints; the child is merged first.
    full.delete(DELETE_ONE).unwrap();
    assert!(!qd.checkpoints().contains(&cp(&full)));
    assert!(identical(&irec.disks[0].target, "qcow2", &t1, "raw"));
    inc.delete(DELETE_ONE).unwrap();
    assert!(qd.checkpoints().is_empty());
}

#[test]
fn unusable_checkpoints_fall_back_to_full_copies() {
    let conn = connect();
    let a = image("fb-a.qcow2", "qcow2", "64M", &["write -P 0x21 0 8M"]);
    let b = image("fb-b.raw", "raw", "32M", &["write -P 0x22 0 4M"]);
    let qd = QemuDomain::define(
        &conn,
        "fallback",
        &[("vda", &a, "qcow2"), ("vdb", &b, "raw")],
    );

    // A parent taken while the domain was off has no checkpoint.
    let off = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    qd.start();
    let err = Backup::create(&qd.dom, &child_xml(&off), WAIT_NO_FALLBACK).unwrap_err();
    assert!(
        err.is(ErrorCode::OperationInvalid) && err.message.contains("off"),
        "{err:?}"
    );
    assert_eq!(Backup::list(&qd.dom, LIST_ALL).unwrap().len(), 1);
    let on = Backup::create(&qd.dom, &child_xml(&off), WAIT).unwrap();
    let rec = on.record().unwrap();
    assert_eq!(rec.parent, Some(off.uuid));
    assert!(rec.disks.iter().all(|d| d.mode == BackupMode::Full));
    assert!(on.xml_desc().unwrap().contains("backupmode='full'"));

    // A raw disk keeps no bitmap: full; the qcow2 disk goes incremental.
    qd.guest_io("virtio-disk0", "write -P 0x23 1M 1M");
    let inc = Backup::create(&qd.dom, &child_xml(&on), WAIT).unwrap();
    let irec = inc.record().unwrap();
    assert_eq!(irec.disks[0].mode, BackupMode::Incremental);
    assert_eq!(irec.disks[1].mode, BackupMode::Full);
    let ta = snapshot(&a, "qcow2", "fb-ta.raw");
    assert!(identical(&irec.disks[0].target, "qcow2", &ta, "raw"));

    // The checkpoint deleted behind the library's back.
    qd.dom.delete_checkpoint(&cp(&inc), false).unwrap();
    let err = Backup::create(&qd.dom, &child_xml(&inc), WAIT_NO_FALLBACK).unwrap_err();
    assert!(err.message.contains("no longer exists"), "{err:?}");
    let after = Backup::create(&qd.dom, &child_xml(&inc), WAIT).unwrap();
    assert!(
        after
            .record()
            .unwrap()
            .disks
            .iter()
            .all(|d| d.mode == BackupMode::Full)
    );

    // A running parent and an offline child: the child is incremental
    // against the parent's copy (its digest index is built from it).
    qd.guest_io("virtio-disk0", "write -P 0x24 2M 64k");
    qd.stop();
    let offline = Backup::create(&qd.dom, &child_xml(&after), WAIT).unwrap();
    let orec = offline.record().unwrap();
    assert_eq!(orec.disks[0].mode, BackupMode::Incremental);
    assert_eq!(
        param(&offline, "bytes.written"),
        ParamValue::ULLong(64 << 10)
    );
    assert!(identical(&orec.disks[0].target, "qcow2", &a, "qcow2"));
    off.delete(WITH_CHILDREN).unwrap();
}

#[test]
fn quiesce_without_agent_cancel_and_one_job_at_a_time() {
    let conn = connect();
    let a = image("ctl-a.qcow2", "qcow2", "2G", &["write -P 0x31 0 1536M"]);
    let qd = QemuDomain::define(&conn, "control", &[("vda", &a, "qcow2")]);
    qd.start();

    // No guest agent: a clear error, nothing created.
    let err = Backup::create(
        &qd.dom,
        "<domainbackup/>",
        CreateOptions {
            quiesce: true,
            wait: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.message.contains("quiesce"), "{err:?}");
    assert!(Backup::list(&qd.dom, LIST_ALL).unwrap().is_empty());
    assert!(qd.checkpoints().is_empty());

    // A second job while one runs; then cancel the first.
    let bk = Backup::create(&qd.dom, "<domainbackup/>", CreateOptions::default()).unwrap();
    let target = bk.record().unwrap().disks[0].target.clone();
    let err = Backup::create(&qd.dom, "<domainbackup/>", CreateOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    bk.abort().unwrap();
    assert_eq!(param(&bk, "state"), ParamValue::Int(4));
    assert!(!target.exists());
    assert!(qd.checkpoints().is_empty());
    assert!(Backup::list(&qd.dom, LIST_ALL).unwrap().is_empty());

    // Undefine with the backup flag takes the checkpoints' metadata along.
    let kept = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    assert_eq!(qd.checkpoints().len(), 1);
    libvirt_backup::test_api::ops::backup::undefine(&qd.dom, forget_backups()).unwrap();
    assert!(kept.record().is_err());
}

#[test]
fn a_disk_swapped_while_off_falls_back_to_a_full_copy() {
    let conn = connect();
    let a = image("swap-a.qcow2", "qcow2", "64M", &["write -P 0x41 0 8M"]);
    let qd = QemuDomain::define(&conn, "swap", &[("vda", &a, "qcow2")]);
    qd.start();
    let parent = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    qd.stop();
    // The same file name, another image: a copy without the checkpoint's bitmap.
    let copy = a.with_extension("copy");
    common::qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        a.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    std::fs::rename(&copy, &a).unwrap();
    qd.start();
    qd.guest_io("virtio-disk0", "write -P 0x42 1M 64k");
    let err = Backup::create(&qd.dom, &child_xml(&parent), WAIT_NO_FALLBACK).unwrap_err();
    assert!(
        err.is(ErrorCode::OperationInvalid) && err.message.contains("bitmap"),
        "{err:?}"
    );
    let child = Backup::create(&qd.dom, &child_xml(&parent), WAIT).unwrap();
    let rec = child.record().unwrap();
    assert_eq!(rec.disks[0].mode, BackupMode::Full);
    let t = snapshot(&a, "qcow2", "swap-t.raw");
    assert!(identical(&rec.disks[0].target, "qcow2", &t, "raw"));
    parent.delete(WITH_CHILDREN).unwrap();
}
