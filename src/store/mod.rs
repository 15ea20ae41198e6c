//! What is kept on disk between calls: the catalog (its layout in `names`,
//! its entities as handles in `catalog` and `domain`, one module per
//! concern of theirs) and the format of the digest indexes. See
//! `catalog`'s module doc for where each concern lives.

pub mod catalog;
pub(crate) mod chain;
pub(crate) mod delete;
pub(crate) mod domain;
pub(crate) mod exports;
pub(crate) mod folder;
pub(crate) mod history;
pub mod index;
pub(crate) mod leftovers;
pub(crate) mod locks;
pub(crate) mod names;
pub(crate) mod notes;
pub(crate) mod paths;
pub(crate) mod pins;
pub(crate) mod records;
pub mod secure;
pub(crate) mod summary;
