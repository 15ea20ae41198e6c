//! The operations behind the C API: create, list and lookup, restore,
//! delete and merge, exports.

pub mod backup;
pub mod export;
pub mod export_stored;
pub mod instant;
pub mod merge;
pub mod pins;
pub mod restore;
pub mod restore_steps;
