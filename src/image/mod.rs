//! Reading and writing disk images: raw and qcow2 files, and NBD exports.

pub mod backing;
pub(crate) mod buffer;
pub(crate) mod cache;
pub mod chain;
pub(crate) mod codec;
pub(crate) mod direct;
pub mod disk;
pub(crate) mod file;
pub(crate) mod keys;
pub(crate) mod luks;
pub mod nbd;
pub(crate) mod qcow2_compressed;
pub(crate) mod qcow2_decode;
pub mod qemu_lock;
