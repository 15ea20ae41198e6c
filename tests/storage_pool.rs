//! The storage-pool adapter against real libvirt: the test driver
//! (test:///default, whose state every connection of this process shares
//! while one is open, hence unique pool names) and, when libvirtd answers,
//! the QEMU driver's dir pools (qemu:///system; scripts/start-libvirtd.sh).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use libvirt_backup::test_api::error::{Error, ErrorCode};
use libvirt_backup::test_api::hv::storage_pool::{
    PoolVolume, check_new_volume, check_pool, create_volume, default_volume_name, delete_volume,
    refresh,
};
use libvirt_backup::test_api::xml::backup::DiskFormat;
use uuid::Uuid;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;

/// libvirt's VIR_ERR_NO_STORAGE_POOL.
const NO_STORAGE_POOL: i32 = 49;
const MIB: u64 = 1 << 20;

fn open(uri: &str) -> Option<Connect> {
    // Some calls are expected to fail; keep libvirt from printing them.
    virt::error::clear_error_callback();
    Connect::open(Some(uri)).ok()
}

fn test_conn() -> Connect {
    open("test:///default").expect("test:///default opens")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

fn pool_xml(kind: &str, name: &str, target: &Path, source: &str) -> String {
    format!(
        "<pool type='{kind}'><name>{name}</name><source>{source}</source>\
         <target><path>{}</path></target></pool>",
        target.display()
    )
}

/// A pool destroyed (and undefined if persistent) however the test ends.
struct PoolGuard(StoragePool);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if self.0.is_active().unwrap_or(false) {
            let _ = self.0.destroy();
        }
        if self.0.is_persistent().unwrap_or(false) {
            let _ = self.0.undefine();
        }
    }
}

/// A started, transient pool.
fn start_pool(conn: &Connect, kind: &str, name: &str, target: &Path, source: &str) -> PoolGuard {
    PoolGuard(
        conn.create_storage_pool_xml(&pool_xml(kind, name, target, source), 0)
            .unwrap_or_else(|e| panic!("create {kind} pool {name}: {e}")),
    )
}

fn volume_names(pool: &StoragePool) -> Vec<String> {
    pool.list_all_volumes(0)
        .unwrap()
        .iter()
        .map(|v| v.name().unwrap())
        .collect()
}

fn assert_code(err: &Error, code: ErrorCode) {
    assert!(err.is(code), "expected {code:?}, got {err:?}");
}

#[test]
fn test_driver_volume_lifecycle() {
    let conn = test_conn();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bk-life");
    let guard = start_pool(&conn, "dir", &name, dir.path(), "");
    let vol = "vm1-vda.qcow2";

    check_pool(&conn, &name).unwrap();
    let planned = check_new_volume(&conn, &name, vol).unwrap();
    assert_eq!(planned, dir.path().join(vol));
    assert!(!planned.exists(), "the check creates nothing");
    assert!(volume_names(&guard.0).is_empty());

    let pv = create_volume(&conn, &name, vol, DiskFormat::Qcow2, 4 * MIB).unwrap();
    assert_eq!(
        pv,
        PoolVolume {
            pool: name.clone(),
            volume: vol.to_string(),
            path: planned.clone()
        }
    );
    assert!(pv.path.starts_with(dir.path()));
    assert_eq!(volume_names(&guard.0), vec![vol.to_string()]);
    let xml = guard
        .0
        .lookup_storage_vol_by_name(vol)
        .unwrap()
        .xml_desc(0)
        .unwrap();
    assert!(xml.contains("<format type='qcow2'/>"), "{xml}");
    assert!(
        xml.contains("<capacity unit='bytes'>4194304</capacity>"),
        "{xml}"
    );

    // The engine writes the file; the pool is refreshed.
    fs::write(&pv.path, vec![1u8; 65536]).unwrap();
    refresh(&conn, &name);
    assert_eq!(volume_names(&guard.0), vec![vol.to_string()]);

    let err = check_new_volume(&conn, &name, vol).unwrap_err();
    assert_code(&err, ErrorCode::InvalidArg);
    assert!(
        err.message.contains(&format!(
            "target volume '{vol}' already exists in pool '{name}'"
        )),
        "{err:?}"
    );
    let err = create_volume(&conn, &name, vol, DiskFormat::Qcow2, MIB).unwrap_err();
    assert_code(&err, ErrorCode::InvalidArg);

    delete_volume(Some(&conn), &pv).unwrap();
    assert!(!pv.path.exists(), "the file is removed");
    assert!(
        volume_names(&guard.0).is_empty(),
        "libvirt forgot the volume"
    );
    // Deleting again is no error.
    delete_volume(Some(&conn), &pv).unwrap();
    // The name is free again.
    assert_eq!(check_new_volume(&conn, &name, vol).unwrap(), planned);
}

#[test]
fn test_driver_raw_volume() {
    let conn = test_conn();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bk-raw");
    let guard = start_pool(&conn, "dir", &name, dir.path(), "");
    let pv = create_volume(&conn, &name, "d.raw", DiskFormat::Raw, MIB).unwrap();
    let xml = guard
        .0
        .lookup_storage_vol_by_name("d.raw")
        .unwrap()
        .xml_desc(0)
        .unwrap();
    assert!(xml.contains("<format type='raw'/>"), "{xml}");
    delete_volume(Some(&conn), &pv).unwrap();
    assert!(volume_names(&guard.0).is_empty());
}

#[test]
fn unknown_pool() {
    let conn = test_conn();
    let name = unique("no-such-pool");
    for err in [
        check_new_volume(&conn, &name, "v.qcow2").unwrap_err(),
        check_pool(&conn, &name).unwrap_err(),
        create_volume(&conn, &name, "v.qcow2", DiskFormat::Qcow2, MIB).unwrap_err(),
    ] {
        assert_eq!(err.code, NO_STORAGE_POOL, "{err:?}");
        assert!(err.message.contains(&format!("'{name}'")), "{err:?}");
    }
}

#[test]
fn inactive_pool() {
    let conn = test_conn();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bk-inactive");
    let _guard = PoolGuard(
        conn.define_storage_pool_xml(&pool_xml("dir", &name, dir.path(), ""), 0)
            .unwrap(),
    );
    for err in [
        check_pool(&conn, &name).unwrap_err(),
        check_new_volume(&conn, &name, "v.qcow2").unwrap_err(),
        create_volume(&conn, &name, "v.qcow2", DiskFormat::Qcow2, MIB).unwrap_err(),
    ] {
        assert_code(&err, ErrorCode::OperationInvalid);
        assert!(
            err.message.contains(&format!("'{name}' is not active")),
            "{err:?}"
        );
    }
}

#[test]
fn pool_types() {
    let conn = test_conn();
    // The test driver keeps logical pools as metadata: no volume group is needed.
    let lv = unique("bk-lvm");
    let _lv = start_pool(
        &conn,
        "logical",
        &lv,
        Path::new(&format!("/dev/{lv}")),
        &format!("<name>{lv}</name>"),
    );
    for err in [
        check_pool(&conn, &lv).unwrap_err(),
        check_new_volume(&conn, &lv, "v.qcow2").unwrap_err(),
    ] {
        assert_code(&err, ErrorCode::NoSupport);
        assert!(err.message.contains("type 'logical'"), "{err:?}");
        assert!(err.message.contains("not supported yet"), "{err:?}");
        assert!(err.message.contains(&lv), "{err:?}");
    }

    // netfs (and fs) pools are directories once mounted.
    let dir = tempfile::tempdir().unwrap();
    let nfs = unique("bk-netfs");
    let _nfs = start_pool(
        &conn,
        "netfs",
        &nfs,
        dir.path(),
        "<host name='nfs.example'/><dir path='/export'/>",
    );
    check_pool(&conn, &nfs).unwrap();
    assert_eq!(
        check_new_volume(&conn, &nfs, "v.qcow2").unwrap(),
        dir.path().join("v.qcow2")
    );
}

#[test]
fn bad_targets() {
    let conn = test_conn();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bk-bad");
    let guard = start_pool(&conn, "dir", &name, dir.path(), "");

    for vol in ["", ".", "..", "a/b", "../escape.qcow2", "nul\0.qcow2"] {
        let err = check_new_volume(&conn, &name, vol).unwrap_err();
        assert_code(&err, ErrorCode::InvalidArg);
    }

    // A file libvirt has not picked up yet is an existing target too.
    fs::write(dir.path().join("stray.qcow2"), b"x").unwrap();
    let err = check_new_volume(&conn, &name, "stray.qcow2").unwrap_err();
    assert_code(&err, ErrorCode::InvalidArg);
    assert!(err.message.contains("already exists"), "{err:?}");
    assert!(volume_names(&guard.0).is_empty());

    // The test driver accepts a pool over a directory that does not exist;
    // the engine could not write there.
    let missing = unique("bk-missing");
    let _missing = start_pool(&conn, "dir", &missing, &dir.path().join("nope"), "");
    check_pool(&conn, &missing).unwrap();
    let err = check_new_volume(&conn, &missing, "v.qcow2").unwrap_err();
    assert_code(&err, ErrorCode::OperationInvalid);
    assert!(err.message.contains("does not exist"), "{err:?}");
}

#[test]
fn delete_after_pool_is_gone() {
    let conn = test_conn();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bk-gone");
    let guard = start_pool(&conn, "dir", &name, dir.path(), "");
    let pv = create_volume(&conn, &name, "v.qcow2", DiskFormat::Qcow2, MIB).unwrap();
    fs::write(&pv.path, b"data").unwrap();
    drop(guard); // the transient pool disappears
    assert!(check_pool(&conn, &name).is_err());
    delete_volume(Some(&conn), &pv).unwrap();
    assert!(!pv.path.exists());

    // Without a connection only the file is removed; a missing file is fine.
    fs::write(&pv.path, b"data").unwrap();
    delete_volume(None, &pv).unwrap();
    assert!(!pv.path.exists());
    delete_volume(None, &pv).unwrap();
}

#[test]
fn delete_leaves_an_unrelated_volume_alone() {
    // The record names a path the pool's volume of that name does not have.
    let conn = test_conn();
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let name = unique("bk-other");
    let guard = start_pool(&conn, "dir", &name, dir.path(), "");
    create_volume(&conn, &name, "v.qcow2", DiskFormat::Qcow2, MIB).unwrap();
    let stale = PoolVolume {
        pool: name.clone(),
        volume: "v.qcow2".into(),
        path: other.path().join("v.qcow2"),
    };
    fs::write(&stale.path, b"data").unwrap();
    delete_volume(Some(&conn), &stale).unwrap();
    assert!(!stale.path.exists());
    assert_eq!(volume_names(&guard.0), vec!["v.qcow2".to_string()]);
}

#[test]
fn default_names() {
    let uuid = Uuid::parse_str("54c70d40-26bb-48cd-9639-b3a1e9adf650").unwrap();
    assert_eq!(
        default_volume_name("vm1", &uuid, "vda", DiskFormat::Qcow2),
        "vm1-54c70d40-26bb-48cd-9639-b3a1e9adf650-vda.qcow2"
    );
    assert_eq!(
        default_volume_name("vm1", &uuid, "vdb", DiskFormat::Raw),
        "vm1-54c70d40-26bb-48cd-9639-b3a1e9adf650-vdb.raw"
    );
}

#[test]
fn qemu_dir_pool() {
    let Some(conn) = open("qemu:///system") else {
        eprintln!(
            "qemu:///system does not answer: skipping (run scripts/start-libvirtd.sh as root)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let name = unique("bk-qemu");
    let guard = start_pool(&conn, "dir", &name, dir.path(), "");
    let vol = "vm1-vda.qcow2";

    check_pool(&conn, &name).unwrap();
    let planned = check_new_volume(&conn, &name, vol).unwrap();
    assert_eq!(planned, dir.path().join(vol));
    assert!(!planned.exists());

    let pv = create_volume(&conn, &name, vol, DiskFormat::Qcow2, 16 * MIB).unwrap();
    assert_eq!(pv.path, planned);
    let meta = fs::metadata(&pv.path).expect("the QEMU driver creates the file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let head = fs::read(&pv.path).unwrap();
    assert_eq!(&head[..4], b"QFI\xfb", "a qcow2 image");
    assert_eq!(volume_names(&guard.0), vec![vol.to_string()]);

    let err = check_new_volume(&conn, &name, vol).unwrap_err();
    assert_code(&err, ErrorCode::InvalidArg);

    // The engine rewrites the file; libvirt sees it after a refresh.
    fs::write(&pv.path, vec![7u8; 3 * MIB as usize]).unwrap();
    refresh(&conn, &name);
    let info = guard
        .0
        .lookup_storage_vol_by_name(vol)
        .unwrap()
        .info()
        .unwrap();
    assert!(info.allocation >= 3 * MIB, "{info:?}");

    let raw = create_volume(&conn, &name, "d.raw", DiskFormat::Raw, 8 * MIB).unwrap();
    let meta = fs::metadata(&raw.path).unwrap();
    assert_eq!(meta.len(), 8 * MIB);
    delete_volume(Some(&conn), &raw).unwrap();

    delete_volume(Some(&conn), &pv).unwrap();
    assert!(!pv.path.exists());
    assert!(volume_names(&guard.0).is_empty());
}
