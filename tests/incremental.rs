//! Incremental chains and branches on libvirt's test driver: each backup,
//! read through its backing chain, equals the source at its time.

use std::path::Path;
use std::process::Command;

mod common;
use common::{
    DELETE_ALL, DELETE_ONE, LIST_ALL, LIST_FULL, LIST_INCREMENTAL, LIST_LEAVES, METADATA_ONLY,
    WAIT, WAIT_NO_FALLBACK, WITH_CHILDREN, WORK, child_xml, disk, domain, identical, qemu_img,
    qemu_io, snapshot,
};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::{Backup, ParamValue};
use libvirt_backup::test_api::ops::options::{ChildScope, DeleteOptions};
use libvirt_backup::test_api::xml::backup::BackupMode;

fn backing_chain(p: &Path) -> Vec<String> {
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain", "--output=json"])
        .arg(p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("\"filename\": \"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

fn written(b: &Backup) -> u64 {
    b.parameters()
        .unwrap()
        .into_iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("bytes.written", ParamValue::ULLong(n)) => Some(n),
            _ => None,
        })
        .unwrap()
}

#[test]
fn chain_and_branch_each_equal_the_source_at_their_time() {
    let src = disk("chain.qcow2", "qcow2", "64M", &["write -P 0x11 0 16M"]);
    let dom = domain("chain", &[("vda", &src, "qcow2")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let t0 = snapshot(&src, "chain-t0.qcow2");

    qemu_io("qcow2", &src, "write -P 0x22 4M 1M");
    let inc1 = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    let t1 = snapshot(&src, "chain-t1.qcow2");
    assert!(
        written(&inc1) <= 1 << 20,
        "only the changed 1 MiB is stored"
    );

    // A zeroed range must read as zeroes through the chain.
    qemu_io("qcow2", &src, "write -z 8M 2M");
    qemu_io("qcow2", &src, "write -P 0x33 40M 64k");
    let inc2 = Backup::create(&dom, &child_xml(&inc1), WAIT).unwrap();
    let t2 = snapshot(&src, "chain-t2.qcow2");

    // A branch: a second child of inc1.
    qemu_io("qcow2", &src, "write -P 0x44 0 64k");
    let branch = Backup::create(&dom, &child_xml(&inc1), WAIT).unwrap();
    let t3 = snapshot(&src, "chain-t3.qcow2");

    for (b, t) in [(&full, &t0), (&inc1, &t1), (&inc2, &t2), (&branch, &t3)] {
        let rec = b.record().unwrap();
        assert!(
            identical(&rec.disks[0].target, "qcow2", t, "qcow2"),
            "{}",
            b.uuid
        );
    }
    let leaf = inc2.record().unwrap();
    assert_eq!(leaf.disks[0].mode, BackupMode::Incremental);
    assert_eq!(
        backing_chain(&leaf.disks[0].target).len(),
        3,
        "inc2 -> inc1 -> full"
    );
    assert!(
        inc2.xml_desc()
            .unwrap()
            .contains("backupmode='incremental'")
    );
    let params = inc2.parameters().unwrap();
    assert!(params.contains(&("incremental".into(), ParamValue::Boolean(true))));

    // Tree listings.
    let direct = full.list_children(ChildScope::Children, LIST_ALL).unwrap();
    assert_eq!(direct.len(), 1);
    let all = full
        .list_children(ChildScope::Descendants, LIST_ALL)
        .unwrap();
    assert_eq!(all.len(), 3);
    let leaves = Backup::list(&dom, LIST_LEAVES).unwrap();
    let mut leaf_ids: Vec<_> = leaves.iter().map(|b| b.uuid).collect();
    leaf_ids.sort();
    let mut want = vec![inc2.uuid, branch.uuid];
    want.sort();
    assert_eq!(leaf_ids, want);
    assert_eq!(Backup::list(&dom, LIST_INCREMENTAL).unwrap().len(), 3);
    assert_eq!(Backup::list(&dom, LIST_FULL).unwrap().len(), 1);
    Backup::list(&dom, LIST_ALL)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .delete(DELETE_ALL)
        .unwrap();
}

#[test]
fn grown_disk_stores_its_tail_shrunk_or_new_disk_falls_back() {
    let a = disk("grow-a.raw", "raw", "8M", &["write -P 0x51 0 8M"]);
    let dom = domain("grow", &[("vda", &a, "raw")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();

    qemu_img(&["resize", "-q", "-f", "raw", a.to_str().unwrap(), "12M"]);
    qemu_io("raw", &a, "write -P 0x52 9M 1M");
    let grown = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    let rec = grown.record().unwrap();
    assert_eq!(rec.disks[0].mode, BackupMode::Incremental);
    assert_eq!(written(&grown), 1 << 20);
    assert!(identical(&rec.disks[0].target, "qcow2", &a, "raw"));

    // Shrunk: a full copy, or an error with NO_FALLBACK (nothing created).
    qemu_img(&[
        "resize",
        "-q",
        "--shrink",
        "-f",
        "raw",
        a.to_str().unwrap(),
        "4M",
    ]);
    let before = Backup::list(&dom, LIST_ALL).unwrap().len();
    let err = Backup::create(&dom, &child_xml(&grown), WAIT_NO_FALLBACK).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    assert!(err.message.contains("shrank"), "{}", err.message);
    assert_eq!(Backup::list(&dom, LIST_ALL).unwrap().len(), before);
    let shrunk = Backup::create(&dom, &child_xml(&grown), WAIT).unwrap();
    let rec = shrunk.record().unwrap();
    assert_eq!(rec.disks[0].mode, BackupMode::Full);
    assert!(shrunk.xml_desc().unwrap().contains("backupmode='full'"));
    assert!(identical(&rec.disks[0].target, "qcow2", &a, "raw"));
    assert_eq!(backing_chain(&rec.disks[0].target).len(), 1);

    // A raw target cannot hold an incremental copy.
    let raw = WORK.join("grow-raw-target.raw");
    let err = Backup::create(
        &dom,
        &format!(
            "<domainbackup><parent><uuid>{}</uuid></parent><disks><disk name='vda'><target file='{}'/><driver type='raw'/></disk></disks></domainbackup>",
            shrunk.uuid,
            raw.display()
        ),
        WAIT,
    )
    .unwrap_err();
    assert!(err.is(ErrorCode::InvalidArg), "{err:?}");
    assert!(!raw.exists());
    full.delete(WITH_CHILDREN).unwrap();
}

#[test]
fn new_disk_and_missing_parent_copy_fall_back_to_full() {
    let a = disk("fb-a.qcow2", "qcow2", "8M", &["write -P 0x61 0 1M"]);
    let b = disk("fb-b.qcow2", "qcow2", "8M", &["write -P 0x62 0 1M"]);
    let one = domain("fb", &[("vda", &a, "qcow2")]);
    let full = Backup::create(&one, "<domainbackup/>", WAIT).unwrap();
    // The domain gains a disk.
    let dom = domain("fb", &[("vda", &a, "qcow2"), ("vdb", &b, "qcow2")]);
    let err = Backup::create(&dom, &child_xml(&full), WAIT_NO_FALLBACK).unwrap_err();
    assert!(err.message.contains("vdb"), "{}", err.message);
    let inc = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    let rec = inc.record().unwrap();
    assert_eq!(rec.disks[0].mode, BackupMode::Incremental);
    assert_eq!(rec.disks[1].mode, BackupMode::Full);
    assert!(identical(&rec.disks[1].target, "qcow2", &b, "qcow2"));

    // The parent's copy deleted behind the library's back.
    std::fs::remove_file(&rec.disks[1].target).unwrap();
    let err = Backup::create(&dom, &child_xml(&inc), WAIT_NO_FALLBACK).unwrap_err();
    assert!(err.message.contains("missing"), "{}", err.message);
    let again = Backup::create(&dom, &child_xml(&inc), WAIT).unwrap();
    let rec = again.record().unwrap();
    assert_eq!(rec.disks[1].mode, BackupMode::Full);
    assert!(identical(&rec.disks[0].target, "qcow2", &a, "qcow2"));
    full.delete(DeleteOptions {
        metadata_only: true,
        ..WITH_CHILDREN
    })
    .unwrap();
}

#[test]
fn deleting_inside_a_chain_merges_into_the_children() {
    let src = disk("merge.qcow2", "qcow2", "32M", &["write -P 0x71 0 8M"]);
    let dom = domain("merge", &[("vda", &src, "qcow2")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    qemu_io("qcow2", &src, "write -P 0x72 1M 1M");
    let mid = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    qemu_io("qcow2", &src, "write -P 0x73 3M 64k");
    qemu_io("qcow2", &src, "write -z 5M 1M");
    let leaf = Backup::create(&dom, &child_xml(&mid), WAIT).unwrap();
    let t_leaf = snapshot(&src, "merge-leaf.qcow2");
    qemu_io("qcow2", &src, "write -P 0x74 9M 64k");
    let branch = Backup::create(&dom, &child_xml(&mid), WAIT).unwrap();
    let t_branch = snapshot(&src, "merge-branch.qcow2");
    let mid_files = mid.record().unwrap().disks[0].target.clone();

    // The middle goes: both children are re-parented onto the full backup.
    mid.delete(DELETE_ONE).unwrap();
    assert!(!mid_files.exists());
    for (b, t) in [(&leaf, &t_leaf), (&branch, &t_branch)] {
        let rec = b.record().unwrap();
        assert_eq!(rec.parent, Some(full.uuid));
        assert_eq!(rec.disks[0].mode, BackupMode::Incremental);
        assert_eq!(backing_chain(&rec.disks[0].target).len(), 2);
        assert!(identical(&rec.disks[0].target, "qcow2", t, "qcow2"));
    }
    // The chain root goes: its children become full copies.
    full.delete(DELETE_ONE).unwrap();
    for (b, t) in [(&leaf, &t_leaf), (&branch, &t_branch)] {
        let rec = b.record().unwrap();
        assert_eq!(rec.parent, None);
        assert_eq!(rec.disks[0].mode, BackupMode::Full);
        assert_eq!(backing_chain(&rec.disks[0].target).len(), 1);
        assert!(identical(&rec.disks[0].target, "qcow2", t, "qcow2"));
    }
    assert_eq!(Backup::list(&dom, LIST_FULL).unwrap().len(), 2);
    // A new incremental on a merged backup still works.
    qemu_io("qcow2", &src, "write -P 0x75 0 64k");
    let next = Backup::create(&dom, &child_xml(&branch), WAIT).unwrap();
    assert!(identical(
        &next.record().unwrap().disks[0].target,
        "qcow2",
        &src,
        "qcow2"
    ));
    Backup::list(&dom, LIST_ALL).unwrap()[0]
        .delete(DELETE_ALL)
        .unwrap();
    assert!(Backup::list(&dom, LIST_ALL).unwrap().is_empty());
}

#[test]
fn metadata_only_and_all_children() {
    let src = disk("mdo.raw", "raw", "8M", &["write -P 0x81 0 2M"]);
    let dom = domain("mdo", &[("vda", &src, "raw")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    qemu_io("raw", &src, "write -P 0x82 0 64k");
    let mid = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    qemu_io("raw", &src, "write -P 0x83 64k 64k");
    let leaf = Backup::create(&dom, &child_xml(&mid), WAIT).unwrap();
    let t_leaf = snapshot(&src, "mdo-leaf.raw");
    let mid_file = mid.record().unwrap().disks[0].target.clone();
    // Forget the middle: its files stay and the leaf still reads through them.
    mid.delete(METADATA_ONLY).unwrap();
    assert!(mid_file.exists());
    let rec = leaf.record().unwrap();
    assert_eq!(rec.parent, Some(full.uuid));
    assert!(identical(&rec.disks[0].target, "qcow2", &t_leaf, "raw"));
    // The subtree goes at once.
    let full_file = full.record().unwrap().disks[0].target.clone();
    full.delete(WITH_CHILDREN).unwrap();
    assert!(!full_file.exists() && !rec.disks[0].target.exists());
    assert!(Backup::list(&dom, LIST_ALL).unwrap().is_empty());
    std::fs::remove_file(&mid_file).unwrap();
}

#[test]
fn a_failed_merge_leaves_the_old_state() {
    let src = disk("mfail.raw", "raw", "8M", &["write -P 0x91 0 4M"]);
    let dom = domain("mfail", &[("vda", &src, "raw")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    qemu_io("raw", &src, "write -P 0x92 0 64k");
    let mid = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    qemu_io("raw", &src, "write -P 0x93 1M 64k");
    let leaf = Backup::create(&dom, &child_xml(&mid), WAIT).unwrap();
    let leaf_file = leaf.record().unwrap().disks[0].target.clone();
    // Damage the middle backup: the merged data would not match the leaf's
    // digests, so the merge must stop before replacing anything.
    let mid_file = mid.record().unwrap().disks[0].target.clone();
    qemu_io("qcow2", &mid_file, "write -P 0x99 0 64k");
    let leaf_bytes = std::fs::read(&leaf_file).unwrap();
    let dir_before = std::fs::read_dir(leaf_file.parent().unwrap())
        .unwrap()
        .count();
    let err = mid.delete(DELETE_ONE).unwrap_err();
    assert!(err.message.contains("digest"), "{}", err.message);
    assert_eq!(std::fs::read(&leaf_file).unwrap(), leaf_bytes);
    assert_eq!(
        std::fs::read_dir(leaf_file.parent().unwrap())
            .unwrap()
            .count(),
        dir_before,
        "no temporary file is left"
    );
    assert!(mid_file.exists());
    assert_eq!(leaf.record().unwrap().parent, Some(mid.uuid));
    full.delete(WITH_CHILDREN).unwrap();
}

#[test]
fn a_missing_index_is_rebuilt_from_the_backup() {
    let src = disk("reidx.qcow2", "qcow2", "16M", &["write -P 0xa1 0 4M"]);
    let dom = domain("reidx", &[("vda", &src, "qcow2")]);
    let full = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    let catalog = libvirt_backup::test_api::store::catalog::Catalog::open().unwrap();
    let index = catalog.backup(&dom.uuid().unwrap(), &full.uuid).index_dir();
    std::fs::remove_dir_all(&index).unwrap();
    qemu_io("qcow2", &src, "write -P 0xa2 1M 64k");
    let inc = Backup::create(&dom, &child_xml(&full), WAIT).unwrap();
    assert!(index.join("vda.b3").exists());
    assert_eq!(written(&inc), 64 << 10);
    assert!(identical(
        &inc.record().unwrap().disks[0].target,
        "qcow2",
        &src,
        "qcow2"
    ));
    full.delete(WITH_CHILDREN).unwrap();
}
