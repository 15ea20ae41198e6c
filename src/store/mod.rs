//! What is kept on disk between calls: the catalog (its layout in `names`,
//! its entities as handles in `catalog` and `domain`, one module per
//! concern of theirs) and the format of the digest indexes. See
//! `catalog`'s module doc for where each concern lives.

pub mod catalog;
pub mod chain;
pub mod delete;
pub mod domain;
pub mod exports;
pub mod folder;
pub mod index;
pub mod leftovers;
pub mod locks;
pub mod names;
pub mod notes;
pub mod pins;
pub mod records;
pub mod secure;
pub mod summary;
