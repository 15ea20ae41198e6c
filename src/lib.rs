//! libvirt-backup: managed backups for libvirt domains, behind a C ABI.
//!
//! Layers, each folder using only those below it (checked by `tests/layers.rs`):
//! `capi` (the only `unsafe`/`extern "C"` code) calls `ops` (the operations),
//! which drive `engine` (how bytes move) over `image` (raw/qcow2/NBD),
//! `store` (catalog and digest indexes), `hv` (libvirt, pools, qemu tools)
//! and `job` (background jobs); `xml` and `error` serve everyone. Flag
//! words stop at `capi`: it alone reads `flags` (the C values) and hands
//! `ops` typed options (`ops::options`).

pub mod capi;
pub mod engine;
pub mod error;
pub mod flags;
pub mod hv;
pub mod image;
pub mod job;
mod logging;
pub mod ops;
pub mod store;
#[doc(hidden)]
pub mod testhook;
pub mod xml;
