//! How bytes move: the library's own copy (offline), libvirt push/pull
//! (live), and the qemu-storage-daemon export.

pub mod bitmap;
pub mod copy;
pub mod export;
pub mod live;
