//! libvirt-backup: managed backups for libvirt domains, behind a C ABI.
//!
//! Layers: `capi` (the only `unsafe`/`extern "C"` code) calls `backup`
//! (operations), which uses `catalog` (metadata on disk), `job` (background
//! jobs), `disk` (image copy engine), `libvirt` (domain adapter) and `xml`.

pub mod backup;
pub mod capi;
pub mod catalog;
pub mod digest;
pub mod disk;
pub mod error;
pub mod flags;
pub mod job;
pub mod libvirt;
pub mod live;
pub mod merge;
pub mod nbd;
pub mod nbd_export;
pub mod restore;
pub mod storage_pool;
pub mod tools;
pub mod unmanaged;
pub mod verify;
pub mod xml;
