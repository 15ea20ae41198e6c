//! The hypervisor side: libvirt, storage pools and the qemu tools.

pub mod libvirt;
pub mod qemu_conf;
pub mod qemu_tools;
pub mod storage_pool;
