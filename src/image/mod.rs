//! Reading and writing disk images: raw and qcow2 files, and NBD exports.

pub mod backing;
pub mod buffer;
pub mod cache;
pub mod chain;
pub mod disk;
pub mod file;
pub mod nbd;
