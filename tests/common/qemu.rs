//! QEMU domains on a real libvirtd (qemu:///system, TCG, no guest OS),
//! started by scripts/start-libvirtd.sh (make check does).

use std::path::{Path, PathBuf};
use std::process::Command;

use libvirt_backup::test_api::hv::libvirt::DomainRef;
use virt::connect::Connect;

use super::{WORK, qemu_img, qemu_io};

pub(crate) const URI: &str = "qemu:///system";

pub(crate) fn connect() -> Connect {
    // The test expects some libvirt calls to fail; keep libvirt from printing them.
    virt::error::clear_error_callback();
    Connect::open(Some(URI)).unwrap_or_else(|e| {
        panic!("{URI} is not reachable ({e}); start it with scripts/start-libvirtd.sh")
    })
}

/// A QEMU domain (TCG, no guest OS) that is undefined, stopped and has its
/// backup metadata forgotten when the test ends, even on failure.
pub(crate) struct QemuDomain {
    pub dom: DomainRef,
}

impl QemuDomain {
    pub(crate) fn define(conn: &Connect, name: &str, disks: &[(&str, &Path, &str)]) -> QemuDomain {
        let name = format!("lvb-{name}-{}", std::process::id());
        let mut devs = String::new();
        for (dev, path, fmt) in disks {
            devs.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>\
                 <source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
                path.display()
            ));
        }
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os>\
             <devices>{devs}</devices></domain>"
        );
        QemuDomain {
            dom: DomainRef::new(conn.define_domain_xml(&xml).unwrap()),
        }
    }
}

impl Drop for QemuDomain {
    fn drop(&mut self) {
        let d = self.dom.domain();
        if d.is_active().unwrap_or(false) {
            let _ = d.destroy();
        }
        let _ = libvirt_backup::test_api::ops::backup::undefine(&self.dom, super::forget_backups());
        let _ = d.undefine();
    }
}

pub(crate) fn image(name: &str, fmt: &str, size: &str, writes: &[&str]) -> PathBuf {
    let p = WORK.join(name);
    qemu_img(&["create", "-q", "-f", fmt, p.to_str().unwrap(), size]);
    for w in writes {
        qemu_io(fmt, &p, w);
    }
    p
}

impl QemuDomain {
    /// Start the domain (TCG, no OS: it sits in the firmware).
    pub(crate) fn start(&self) {
        self.dom.domain().create().unwrap();
    }

    pub(crate) fn stop(&self) {
        self.dom.domain().destroy().unwrap();
    }

    /// Run a `qemu-io` command on a virtio disk through the HMP monitor, so
    /// the write goes through QEMU (and its dirty bitmaps), then flush so
    /// the image file is consistent for readers outside QEMU.
    pub(crate) fn guest_io(&self, device: &str, cmd: &str) {
        let name = self.dom.name().unwrap();
        for c in [cmd, "flush"] {
            let hmp = format!("qemu-io -d /machine/peripheral/{device}/virtio-backend \"{c}\"");
            let out = Command::new("virsh")
                .args(["-c", URI, "qemu-monitor-command", &name, "--hmp", &hmp])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && !text.contains("rror"),
                "guest io {c}: {text}"
            );
        }
    }

    /// The domain's checkpoints by name.
    pub(crate) fn checkpoints(&self) -> Vec<String> {
        self.dom
            .checkpoints()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }
}

/// A raw copy of an image as it is now (readable while QEMU runs, after a flush).
pub(crate) fn snapshot(image: &Path, fmt: &str, name: &str) -> PathBuf {
    let p = WORK.join(name);
    let _ = std::fs::remove_file(&p);
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        fmt,
        "-O",
        "raw",
        image.to_str().unwrap(),
        p.to_str().unwrap(),
    ]);
    p
}
