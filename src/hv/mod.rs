//! The hypervisor side: libvirt, storage pools and the qemu tools.

pub mod libvirt;
pub(crate) mod qemu_conf;
pub(crate) mod qemu_tools;
// Encrypted backups are not wired in yet: reached from its tests only.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod secret;
pub mod storage_pool;
