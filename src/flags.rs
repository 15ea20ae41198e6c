//! Flag values of API.md (and the libvirt ones the library accepts).
//! The enums are the public ABI and are emitted into the C header.

#![allow(non_camel_case_types)]

/// Flags of virDomainBackupCreateXML() and virDomainBackupStartUnmanaged().
#[repr(C)]
pub enum virDomainBackupCreateFlags {
    /// Freeze guest file systems through the guest agent.
    VIR_DOMAIN_BACKUP_CREATE_QUIESCE = 1 << 0,
    /// Fail instead of falling back to a full copy of a disk whose parent is unusable.
    VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK = 1 << 1,
    /// Return only when the job has ended; NULL if it failed.
    VIR_DOMAIN_BACKUP_CREATE_WAIT = 1 << 2,
}

/// Flags of virDomainBackupList() and virDomainBackupListChildren().
#[repr(C)]
pub enum virDomainBackupListFlags {
    /// Only full backups (chain roots).
    VIR_DOMAIN_BACKUP_LIST_FULL = 1 << 0,
    /// Only the newest backup.
    VIR_DOMAIN_BACKUP_LIST_LATEST = 1 << 1,
    /// Only incremental backups.
    VIR_DOMAIN_BACKUP_LIST_INCREMENTAL = 1 << 2,
    /// Only backups with no children.
    VIR_DOMAIN_BACKUP_LIST_LEAVES = 1 << 3,
    /// virDomainBackupListChildren(): all descendants, not just direct children.
    VIR_DOMAIN_BACKUP_LIST_DESCENDANTS = 1 << 4,
}

/// Flags of virDomainBackupRestore() and virDomainBackupRestoreUnmanaged().
#[repr(C)]
pub enum virDomainBackupRestoreFlags {
    /// Define a new domain from the definition saved with the backup.
    VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN = 1 << 0,
    /// Allow writing over existing disk images.
    VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK = 1 << 1,
    /// Disks become thin qcow2 overlays on the backup's own chain; no copy.
    VIR_DOMAIN_BACKUP_RESTORE_INSTANT = 1 << 2,
    /// Start the restored domain when done.
    VIR_DOMAIN_BACKUP_RESTORE_START = 1 << 3,
    /// Write the disks to the given targets; touch no domain, need no connection.
    VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY = 1 << 4,
}

/// Flags of virDomainBackupDelete().
#[repr(C)]
pub enum virDomainBackupDeleteFlags {
    /// Every managed backup of this backup's domain.
    VIR_DOMAIN_BACKUP_DELETE_ALL = 1 << 0,
    /// This backup and all its descendants.
    VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN = 1 << 1,
    /// Forget the backup, keep its data files.
    VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY = 1 << 2,
}

/// Flags of virDomainBackupFinishJob().
#[repr(C)]
pub enum virDomainBackupFinishJobFlags {
    /// Cancel the job and wait until its partial data is removed.
    VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL = 1 << 0,
    /// Do not block: return 1 while the job runs.
    VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK = 1 << 1,
}

/// Flags of virDomainBackupGetJobHistory().
#[repr(C)]
pub enum virDomainBackupJobHistoryFlags {
    /// Only jobs that failed, were cancelled or were interrupted.
    VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED = 1 << 0,
}

/// The "state" typed parameter of virDomainBackupGetParameters().
// The variants' names are their docs (API.md describes the parameter): a
// doc comment would also land in the generated header.
#[allow(missing_docs)]
#[repr(C)]
pub enum virDomainBackupState {
    VIR_DOMAIN_BACKUP_STATE_RUNNING = 1,
    VIR_DOMAIN_BACKUP_STATE_COMPLETED = 2,
    VIR_DOMAIN_BACKUP_STATE_FAILED = 3,
    VIR_DOMAIN_BACKUP_STATE_CANCELLED = 4,
}

/// The same flags as plain bit masks, for the C boundary (`capi::options`).
pub(crate) mod bits {
    use super::*;

    pub(crate) const VIR_DOMAIN_BACKUP_CREATE_QUIESCE: u32 =
        virDomainBackupCreateFlags::VIR_DOMAIN_BACKUP_CREATE_QUIESCE as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK: u32 =
        virDomainBackupCreateFlags::VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_CREATE_WAIT: u32 =
        virDomainBackupCreateFlags::VIR_DOMAIN_BACKUP_CREATE_WAIT as u32;

    pub(crate) const VIR_DOMAIN_BACKUP_LIST_FULL: u32 =
        virDomainBackupListFlags::VIR_DOMAIN_BACKUP_LIST_FULL as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_LIST_LATEST: u32 =
        virDomainBackupListFlags::VIR_DOMAIN_BACKUP_LIST_LATEST as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_LIST_INCREMENTAL: u32 =
        virDomainBackupListFlags::VIR_DOMAIN_BACKUP_LIST_INCREMENTAL as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_LIST_LEAVES: u32 =
        virDomainBackupListFlags::VIR_DOMAIN_BACKUP_LIST_LEAVES as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_LIST_DESCENDANTS: u32 =
        virDomainBackupListFlags::VIR_DOMAIN_BACKUP_LIST_DESCENDANTS as u32;

    pub(crate) const VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN: u32 =
        virDomainBackupRestoreFlags::VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK: u32 =
        virDomainBackupRestoreFlags::VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_RESTORE_INSTANT: u32 =
        virDomainBackupRestoreFlags::VIR_DOMAIN_BACKUP_RESTORE_INSTANT as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_RESTORE_START: u32 =
        virDomainBackupRestoreFlags::VIR_DOMAIN_BACKUP_RESTORE_START as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY: u32 =
        virDomainBackupRestoreFlags::VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY as u32;

    pub(crate) const VIR_DOMAIN_BACKUP_DELETE_ALL: u32 =
        virDomainBackupDeleteFlags::VIR_DOMAIN_BACKUP_DELETE_ALL as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN: u32 =
        virDomainBackupDeleteFlags::VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY: u32 =
        virDomainBackupDeleteFlags::VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY as u32;

    pub(crate) const VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL: u32 =
        virDomainBackupFinishJobFlags::VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL as u32;
    pub(crate) const VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK: u32 =
        virDomainBackupFinishJobFlags::VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK as u32;

    pub(crate) const VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED: u32 =
        virDomainBackupJobHistoryFlags::VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED as u32;

    pub(crate) const VIR_DOMAIN_UNDEFINE_BACKUP: u32 = 1 << 30;

    /// libvirt's `virDomainModificationImpact`.
    pub(crate) const VIR_DOMAIN_AFFECT_LIVE: u32 = 1 << 0;
    pub(crate) const VIR_DOMAIN_AFFECT_CONFIG: u32 = 1 << 1;

    /// libvirt's `VIR_DOMAIN_XML_SECURE`.
    pub(crate) const VIR_DOMAIN_XML_SECURE: u32 = 1 << 0;

    pub(crate) const CREATE_FLAGS: u32 = VIR_DOMAIN_BACKUP_CREATE_QUIESCE
        | VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK
        | VIR_DOMAIN_BACKUP_CREATE_WAIT;
    pub(crate) const LIST_FLAGS: u32 = VIR_DOMAIN_BACKUP_LIST_FULL
        | VIR_DOMAIN_BACKUP_LIST_LATEST
        | VIR_DOMAIN_BACKUP_LIST_INCREMENTAL
        | VIR_DOMAIN_BACKUP_LIST_LEAVES;
    pub(crate) const LIST_CHILDREN_FLAGS: u32 = LIST_FLAGS | VIR_DOMAIN_BACKUP_LIST_DESCENDANTS;
    pub(crate) const RESTORE_FLAGS: u32 = VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN
        | VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK
        | VIR_DOMAIN_BACKUP_RESTORE_INSTANT
        | VIR_DOMAIN_BACKUP_RESTORE_START
        | VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY;
    pub(crate) const DELETE_FLAGS: u32 = VIR_DOMAIN_BACKUP_DELETE_ALL
        | VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN
        | VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY;
    pub(crate) const FINISH_FLAGS: u32 =
        VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL | VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK;
    pub(crate) const AFFECT_FLAGS: u32 = VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG;
}
