//! How bytes move: the library's own copy (offline), libvirt push/pull
//! (live), and the qemu-storage-daemon export.

pub(crate) mod background;
pub mod bitmap;
pub mod copy;
pub(crate) mod disks;
pub mod export;
pub(crate) mod live;
