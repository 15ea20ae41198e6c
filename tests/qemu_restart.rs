//! libvirtd restarted while a live backup copies. The library reads QEMU's
//! NBD export directly, so the copy itself does not need libvirtd; what
//! needs it is ending libvirt's pull-mode job and, on failure, removing the
//! backup's checkpoint. Either outcome is fine — the backup completes (the
//! daemon kept the job across its restart) or fails with a clear error (it
//! did not) — as long as it is one point in time and nothing is left: no
//! libvirt job on the domain, no scratch folder, and the next backup works.
//!
//! Its own test binary: restarting the daemon breaks every connection of
//! the process, which would fail tests running beside it.

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::qemu::{QemuDomain, connect, image, snapshot};
use common::{WAIT, identical};

use libvirt_backup::test_api::hv::libvirt::DomainRef;
use libvirt_backup::test_api::ops::backup::Backup;
use libvirt_backup::test_api::ops::options::{CreateOptions, FinishMode};

fn restart_libvirtd() {
    let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "libvirtd does not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/start-libvirtd.sh");
    let out = Command::new("sh").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch_folders() -> Vec<String> {
    let root = std::env::var("LIBVIRT_BACKUP_DIR").unwrap();
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(".scratch-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn libvirtd_restarted_mid_copy() {
    let conn = connect();
    let a = image("rs-a.qcow2", "qcow2", "2G", &["write -P 0x11 0 1536M"]);
    let qd = QemuDomain::define(&conn, "restart", &[("vda", &a, "qcow2")]);
    qd.start();
    let name = qd.dom.name().unwrap();
    let then = snapshot(&a, "qcow2", "rs-then.raw");

    let b = Backup::create(&qd.dom, "<domainbackup/>", CreateOptions::default()).unwrap();
    assert_eq!(
        b.finish_job(FinishMode::Check).unwrap(),
        1,
        "the job ended at once"
    );
    restart_libvirtd();
    let outcome = b.finish_job(FinishMode::Wait);

    // The old connection is gone: go on (and clean up) with a new one.
    let conn = connect();
    let qd2 = QemuDomain {
        dom: DomainRef::new(conn.lookup_domain_by_name(&name).unwrap()),
    };
    match outcome {
        Ok(_) => {
            let rec = b.record().unwrap();
            assert!(identical(&rec.disks[0].target, "qcow2", &then, "raw"));
            b.verify().unwrap();
        }
        Err(e) => {
            eprintln!("the backup failed, as it may: {}", e.message);
            assert!(b.record().is_err(), "a failed backup left its record");
        }
    }
    assert!(
        !qd2.dom.job_info(false).unwrap().is_active(),
        "libvirt's job was left behind"
    );
    assert!(scratch_folders().is_empty(), "{:?}", scratch_folders());
    let next = Backup::create(&qd2.dom, "<domainbackup/>", WAIT).unwrap();
    let rec = next.record().unwrap();
    assert!(identical(&rec.disks[0].target, "qcow2", &then, "raw"));
    drop(qd);
}
