//! libvirt-backup: managed backups for libvirt domains, behind a C ABI.
//!
//! Layers, each folder using only those below it (checked by `tests/layers.rs`):
//! `capi` (the only `extern "C"` code; README "How it is built" lists the
//! files with `unsafe`) calls `ops` (the operations),
//! which drive `engine` (how bytes move) over `image` (raw/qcow2/NBD),
//! `store` (catalog and digest indexes), `hv` (libvirt, pools, qemu tools)
//! and `job` (background jobs); `xml` and `error` serve everyone. Flag
//! words stop at `capi`: it alone reads `flags` (the C values) and hands
//! `ops` typed options (`ops::options`).

pub mod capi;
pub(crate) mod flags;
mod logging;
pub(crate) mod testhook;

// The internals. Parts of them are `pub` only for the integration tests
// (`test_api` below): that surface is no API, but `missing_docs` holds for
// it as for `capi`, the C API, so every item it reaches says what it is.
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod hv;
pub(crate) mod image;
pub(crate) mod job;
pub(crate) mod ops;
pub(crate) mod store;
pub(crate) mod xml;

/// The internals the integration tests in `tests/` drive directly, laid out
/// as in the crate (`test_api::ops::backup` is `crate::ops::backup`). Not an
/// API: the C functions of `capi` are.
#[doc(hidden)]
pub mod test_api {
    /// `crate::engine`: the copy, the offline bitmap, the NBD export.
    pub mod engine {
        pub use crate::engine::{bitmap, copy, export};
    }
    /// `crate::error`: the library's error and its C codes.
    pub mod error {
        pub use crate::error::{Error, ErrorCode, Result};
    }
    /// `crate::hv`: libvirt domains and storage pools.
    pub mod hv {
        pub use crate::hv::{libvirt, storage_pool};
    }
    /// `crate::image`: image files, chains, backing files, the NBD client,
    /// QEMU's image locks.
    pub mod image {
        pub use crate::image::{backing, chain, disk, nbd, qemu_lock};
    }
    /// `crate::job`: a job's progress and rate limit.
    pub mod job {
        pub use crate::job::{Clock, ManualClock, Progress, RateLimit, SystemClock};
    }
    /// `crate::ops`: the backup operations and their typed options.
    pub mod ops {
        pub use crate::ops::{backup, options};
    }
    /// `crate::store`: the catalog, digest indexes, secure removal.
    pub mod store {
        pub use crate::store::{catalog, index, secure};
    }
    /// `crate::xml`: the backup and domain XML.
    pub mod xml {
        pub use crate::xml::{backup, dom, domain};
    }
}
