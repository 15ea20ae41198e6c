//! The hypervisor side: libvirt, storage pools and the qemu tools.

pub mod libvirt;
pub(crate) mod qemu_conf;
pub(crate) mod qemu_tools;
pub(crate) mod secret;
pub mod storage_pool;
