//! How bytes move: the library's own copy (offline), libvirt push/pull
//! (live), and the qemu-storage-daemon export.

pub mod background;
pub mod bitmap;
pub mod copy;
pub mod disks;
pub mod export;
pub mod live;
