//! The operations behind the C API: create, list and lookup, restore,
//! delete and merge, exports.

pub mod backup;
pub mod export;
pub mod export_access;
pub mod merge;
pub mod restore;
