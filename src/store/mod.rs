//! What is kept on disk between calls: the catalog (records, locks, paths)
//! and the format of the digest indexes.

pub mod catalog;
pub mod chain;
pub mod exports;
pub mod folder;
pub mod index;
pub mod pins;
pub mod secure;
pub mod summary;
