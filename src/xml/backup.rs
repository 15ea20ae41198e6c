//! The `<domainbackup>` documents of API.md: what callers send (create,
//! unmanaged, restore, default target) and the record the catalog keeps.
//!
//! One module per kind of document, all reached through this one (the
//! library names them `xml::backup::…`):
//! - `vocabulary.rs`: the schemas callers' documents are held to, and what
//!   every document shares (disk formats, UUIDs, disk names, paths as XML
//!   strings);
//! - `request.rs`: the documents callers send, each read into a request;
//! - `record.rs`: a managed backup as the catalog keeps it, and its catalog
//!   file (each element's format and parse function side by side);
//! - `description.rs`: the public document of a backup
//!   (`virDomainBackupGetXMLDesc`), which parses back as input.
//!
//! The modules use each other only downwards (requests, record and
//! description use the vocabulary; the description uses the record's
//! types); this one only gathers them.

mod description;
mod encryption;
mod record;
mod request;
mod vocabulary;

pub use description::parent_and_domain;
pub use encryption::{Encryption, SecretId};
pub use record::{BackupMode, BackupRecord, BackupState, DiskRecord, JobStats};
pub use request::{
    CreateRequest, DefaultTarget, DiskRequest, NBD_PORT, NbdServer, RestoreDisk, RestoreRequest,
    Target, UnmanagedRequest, UnmanagedRestoreDisk, UnmanagedRestoreRequest, UnmanagedSource,
};
pub use vocabulary::{Compression, DEFAULT_TARGET, DOMAINBACKUP, DiskFormat, parse_uuid, path_str};

#[cfg(test)]
mod tests;
