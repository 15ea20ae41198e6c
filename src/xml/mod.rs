//! XML documents: a small element tree, the backup documents, domain disks.

pub mod backup;
pub mod dom;
pub mod domain;
