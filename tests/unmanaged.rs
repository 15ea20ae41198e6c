//! Unmanaged backups: point-in-time NBD exports read with libnbd's tools,
//! on the test driver (qemu-storage-daemon) and on running and inactive
//! QEMU domains (libvirt pull mode, qemu-storage-daemon).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::qemu::{QemuDomain, connect, image, snapshot};
use common::{DELETE_ONE, LIST_ALL, REWRITE, WAIT, WORK, disk, domain, identical};

use libvirt_backup::test_api::error::ErrorCode;
use libvirt_backup::test_api::ops::backup::{Backup, ParamValue};
use libvirt_backup::test_api::ops::options::{ExportOptions, FinishMode, RestoreOptions};

/// A tcp port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copy an NBD export to a raw file with nbdcopy.
fn nbd_copy(uri: &str, name: &str) -> PathBuf {
    let out = WORK.join(name);
    let _ = std::fs::remove_file(&out);
    let st = Command::new("nbdcopy").arg(uri).arg(&out).status().unwrap();
    assert!(st.success(), "nbdcopy {uri}");
    out
}

/// `nbdinfo --map` of a meta context: (offset, length, description) lines.
fn nbd_map(uri: &str, context: &str) -> String {
    let out = Command::new("nbdinfo")
        .arg(format!("--map={context}"))
        .arg(uri)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn state(b: &Backup) -> ParamValue {
    b.parameters().unwrap()[0].1.clone()
}

fn socket_path(name: &str) -> PathBuf {
    let p = WORK.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn unix_uri(export: &str, socket: &Path) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

#[test]
fn test_driver_domain_exported_by_the_storage_daemon() {
    let a = disk("um-a.qcow2", "qcow2", "16M", &["write -P 0x41 1M 2M"]);
    let b = disk("um-b.raw", "raw", "8M", &["write -P 0x42 0 1M"]);
    let dom = domain("um", &[("vda", &a, "qcow2"), ("vdb", &b, "raw")]);
    let sock = socket_path("um.sock");
    let xml = format!(
        "<domainbackup><server transport='unix' socket='{}'/><disks><disk name='vda' exportname='first'/><disk name='vdb'/></disks></domainbackup>",
        sock.display()
    );
    let bk = Backup::start_unmanaged(&dom, &xml, ExportOptions::default()).unwrap();
    let desc = bk.xml_desc().unwrap();
    assert!(
        desc.contains("exportname='first'") && desc.contains(&*sock.to_string_lossy()),
        "{desc}"
    );
    assert_eq!(state(&bk), ParamValue::Int(1));
    assert_eq!(bk.finish_job(FinishMode::Check).unwrap(), 1);
    let got = nbd_copy(&unix_uri("first", &sock), "um-first.raw");
    assert!(identical(&got, "raw", &a, "qcow2"));
    let got = nbd_copy(&unix_uri("vdb", &sock), "um-vdb.raw");
    assert!(identical(&got, "raw", &b, "raw"));
    assert!(nbd_map(&unix_uri("first", &sock), "base:allocation").contains("data"));
    // Never listed; catalog operations are refused.
    assert!(Backup::list(&dom, LIST_ALL).unwrap().is_empty());
    assert!(
        bk.delete(DELETE_ONE)
            .unwrap_err()
            .is(ErrorCode::OperationInvalid)
    );
    // A second export of the same domain waits for this one, and so do a
    // managed backup and a restore (which would change the exported images).
    let err = Backup::start_unmanaged(&dom, &xml, ExportOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    let err = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    let src = b.to_string_lossy().replace("um-b.raw", "um-a.qcow2");
    let from_file = format!(
        "<domainbackup><disks><disk name='vdb'><source file='{src}'><driver type='qcow2'/></source></disk></disks></domainbackup>"
    );
    let err = Backup::restore_unmanaged(&dom, &from_file, REWRITE).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");

    assert_eq!(bk.finish_job(FinishMode::Wait).unwrap(), 0);
    assert!(!sock.exists());
    assert_eq!(state(&bk), ParamValue::Int(2));
    assert!(bk.abort().unwrap_err().is(ErrorCode::OperationInvalid));

    // Bad requests.
    let bad = [
        ("<domainbackup/>", ErrorCode::XmlError),
        (
            "<domainbackup><server transport='udp'/></domainbackup>",
            ErrorCode::XmlError,
        ),
        (
            "<domainbackup><server transport='unix' socket='/nonexistent/s'/></domainbackup>",
            ErrorCode::InvalidArg,
        ),
        (
            "<domainbackup><server transport='unix' socket='/tmp/x.sock'/><disks><disk name='vdz'/></disks></domainbackup>",
            ErrorCode::InvalidArg,
        ),
    ];
    for (x, code) in bad {
        let err = Backup::start_unmanaged(&dom, x, ExportOptions::default()).unwrap_err();
        assert!(err.is(code), "{x}: {err:?}");
    }
}

#[test]
fn running_qemu_domain_pull_mode_with_changes_since_a_parent() {
    let conn = connect();
    let a = image("ump-a.qcow2", "qcow2", "64M", &["write -P 0x51 0 16M"]);
    let qd = QemuDomain::define(&conn, "pull", &[("vda", &a, "qcow2")]);
    qd.start();
    let parent = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    qd.guest_io("virtio-disk0", "write -P 0x52 8M 1M");
    let t0 = snapshot(&a, "qcow2", "ump-t0.raw");

    let port = free_port();
    let xml = format!(
        "<domainbackup><parent><uuid>{}</uuid></parent><server transport='tcp' name='127.0.0.1' port='{port}'/></domainbackup>",
        parent.uuid
    );
    let bk = Backup::start_unmanaged(&qd.dom, &xml, ExportOptions::default()).unwrap();
    let desc = bk.xml_desc().unwrap();
    assert!(desc.contains("exportbitmap='vda-changes'"), "{desc}");
    // Writes after the start are not in the export.
    qd.guest_io("virtio-disk0", "write -P 0x53 0 4M");
    let uri = format!("nbd://127.0.0.1:{port}/vda");
    let got = nbd_copy(&uri, "ump-got.raw");
    assert!(identical(&got, "raw", &t0, "raw"));
    let map = nbd_map(&uri, "qemu:dirty-bitmap:vda-changes");
    let dirty: Vec<&str> = map
        .lines()
        .filter(|l| l.contains("dirty") && !l.contains("clean"))
        .collect();
    assert_eq!(dirty.len(), 1, "{map}");
    assert!(dirty[0].trim_start().starts_with("8388608"), "{map}");
    bk.abort().unwrap();
    assert_eq!(state(&bk), ParamValue::Int(4));
    assert!(!qd.dom.job_info(false).unwrap().is_active());
    parent.delete(DELETE_ONE).unwrap();
}

#[test]
fn inactive_qemu_domain_exports_the_bitmap_of_a_live_parent() {
    let conn = connect();
    let a = image("umi-a.qcow2", "qcow2", "32M", &["write -P 0x61 0 4M"]);
    let qd = QemuDomain::define(&conn, "offexport", &[("vda", &a, "qcow2")]);
    qd.start();
    let parent = Backup::create(&qd.dom, "<domainbackup/>", WAIT).unwrap();
    qd.guest_io("virtio-disk0", "write -P 0x62 2M 64k");
    qd.stop();
    let sock = socket_path("umi.sock");
    let xml = format!(
        "<domainbackup><parent><uuid>{}</uuid></parent><server transport='unix' socket='{}'/></domainbackup>",
        parent.uuid,
        sock.display()
    );
    let bk = Backup::start_unmanaged(&qd.dom, &xml, ExportOptions::default()).unwrap();
    let desc = bk.xml_desc().unwrap();
    let bitmap = format!("libvirt-backup-{}", parent.uuid);
    assert!(desc.contains(&format!("exportbitmap='{bitmap}'")), "{desc}");
    let uri = unix_uri("vda", &sock);
    let got = nbd_copy(&uri, "umi-got.raw");
    assert!(identical(&got, "raw", &a, "qcow2"));
    let map = nbd_map(&uri, &format!("qemu:dirty-bitmap:{bitmap}"));
    assert!(
        map.lines()
            .any(|l| l.trim_start().starts_with("2097152") && l.contains("dirty")),
        "{map}"
    );
    bk.finish_job(FinishMode::Wait).unwrap();
    parent.delete(DELETE_ONE).unwrap();
}

#[test]
fn restore_from_an_nbd_export() {
    let a = disk("umr-a.qcow2", "qcow2", "16M", &["write -P 0x71 0 3M"]);
    let src_dom = domain("umr-src", &[("vda", &a, "qcow2")]);
    let b = disk("umr-b.raw", "raw", "16M", &["write -P 0x72 0 1M"]);
    let dst_dom = domain("umr-dst", &[("vda", &b, "raw")]);
    let sock = socket_path("umr.sock");
    let export = Backup::start_unmanaged(
        &src_dom,
        &format!(
            "<domainbackup><server transport='unix' socket='{}'/></domainbackup>",
            sock.display()
        ),
        ExportOptions::default(),
    )
    .unwrap();
    let xml = format!(
        "<domainbackup><disks><disk name='vda'><source protocol='nbd' name='vda'><host transport='unix' socket='{}'/></source></disk></disks></domainbackup>",
        sock.display()
    );
    let err = Backup::restore_unmanaged(&dst_dom, &xml, RestoreOptions::default()).unwrap_err();
    assert!(err.is(ErrorCode::OperationInvalid), "{err:?}");
    Backup::restore_unmanaged(&dst_dom, &xml, REWRITE).unwrap();
    assert!(identical(&b, "raw", &a, "qcow2"));
    // An export that is not there: a clear error, nothing written.
    let before = std::fs::read(&b).unwrap();
    let err = Backup::restore_unmanaged(
        &dst_dom,
        &xml.replace("name='vda'>", "name='nope'>"),
        REWRITE,
    )
    .unwrap_err();
    assert!(err.message.contains("nope"), "{err:?}");
    assert_eq!(std::fs::read(&b).unwrap(), before);
    export.finish_job(FinishMode::Wait).unwrap();
}

#[test]
fn test_driver_export_with_changes_from_the_digest_index() {
    let a = disk("umd-a.qcow2", "qcow2", "16M", &["write -P 0x81 0 8M"]);
    let dom = domain("umd", &[("vda", &a, "qcow2")]);
    let parent = Backup::create(&dom, "<domainbackup/>", WAIT).unwrap();
    common::qemu_io("qcow2", &a, "write -P 0x82 4M 128k");
    common::qemu_io("qcow2", &a, "write -P 0x83 12M 64k");
    let sock = socket_path("umd.sock");
    let bk = Backup::start_unmanaged(
        &dom,
        &format!(
            "<domainbackup><parent><uuid>{}</uuid></parent><server transport='unix' socket='{}'/></domainbackup>",
            parent.uuid,
            sock.display()
        ),
        ExportOptions::default(),
    )
    .unwrap();
    assert!(
        bk.xml_desc()
            .unwrap()
            .contains("exportbitmap='vda-changes'")
    );
    let uri = unix_uri("vda", &sock);
    let got = nbd_copy(&uri, "umd-got.raw");
    assert!(identical(&got, "raw", &a, "qcow2"));
    let map = nbd_map(&uri, "qemu:dirty-bitmap:vda-changes");
    let dirty: Vec<String> = map
        .lines()
        .filter(|l| l.contains("dirty") && !l.contains("clean"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(dirty, ["4194304 131072", "12582912 65536"], "{map}");
    bk.finish_job(FinishMode::Wait).unwrap();
    // The domain's image was never written: still a plain qcow2 without bitmaps.
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&a)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&info.stdout).contains("bitmaps"));
    parent.delete(DELETE_ONE).unwrap();
}
