//! What each operation was asked to do, as types: the C boundary turns
//! every caller's flag word into one of these (and refuses unknown bits and
//! exclusive pairs there), so nothing below it reads a flag word.
//! `Default` is what a flag word of 0 means.

pub use crate::hv::libvirt::UndefineFlags;

/// `virDomainBackupCreateXML`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Freeze the guest's file systems through its agent (`CREATE_QUIESCE`).
    pub quiesce: bool,
    /// A disk that cannot be copied incrementally is an error, not a full
    /// copy (`CREATE_NO_FALLBACK`).
    pub no_fallback: bool,
    /// Return only when the job has ended (`CREATE_WAIT`).
    pub wait: bool,
}

/// `virDomainBackupStartUnmanaged` of a domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Freeze the guest's file systems around the export's start.
    pub quiesce: bool,
}

/// Which backups a listing keeps by their place in a chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListKind {
    /// Full and incremental.
    #[default]
    Any,
    /// Only full backups, chain roots (`LIST_FULL`).
    Full,
    /// Only incremental backups (`LIST_INCREMENTAL`).
    Incremental,
}

/// `virDomainBackupList` and `virDomainBackupListChildren`: which of the
/// backups to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Full, incremental or both.
    pub kind: ListKind,
    /// Only backups with no children (`LIST_LEAVES`).
    pub leaves: bool,
    /// Only the newest of those kept (`LIST_LATEST`).
    pub latest: bool,
}

/// `virDomainBackupGetXMLDesc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XmlOptions {
    /// Show what libvirt only shows with `VIR_DOMAIN_XML_SECURE` in the
    /// saved domain definition.
    pub secure: bool,
}

/// `virDomainBackupListChildren`: how far down from the backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChildScope {
    /// Its direct children.
    #[default]
    Children,
    /// All its descendants (`LIST_DESCENDANTS`).
    Descendants,
}

/// `virDomainBackupFinishJob`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FinishMode {
    /// Wait for the job to end.
    #[default]
    Wait,
    /// Do not block: 1 while the job runs (`FINISH_JOB_CHECK`).
    Check,
    /// Cancel it, as `AbortJob` (`FINISH_JOB_CANCEL`).
    Cancel,
}

/// `virDomainBackupDelete`: which backups go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeleteScope {
    /// This backup alone; its children are first merged into it.
    #[default]
    One,
    /// This backup and all its descendants (`DELETE_ALL_CHILDREN`).
    WithChildren,
    /// Every managed backup of its domain (`DELETE_ALL`).
    All,
}

/// What `virDomainBackupGetJobHistory` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only jobs that failed, were cancelled or were interrupted.
    pub failed_only: bool,
}

/// `virDomainBackupDelete`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Which backups are deleted.
    pub scope: DeleteScope,
    /// Forget the backups, keep their data files (`DELETE_METADATA_ONLY`).
    pub metadata_only: bool,
}

/// Where a restore puts the disks, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreMode {
    /// Copied into the backup's own domain, which must be shut off.
    #[default]
    InPlace,
    /// Copied for a new domain defined from the saved definition
    /// (`RESTORE_NEW_DOMAIN`).
    NewDomain,
    /// Copied to image files; no domain is touched (`RESTORE_FILES_ONLY`).
    FilesOnly,
    /// Nothing copied: each disk a new overlay on the backup's chain, for
    /// the own domain or, with `new_domain`, a new one (`RESTORE_INSTANT`,
    /// with `RESTORE_NEW_DOMAIN`).
    Instant {
        /// Whether the overlays are for a new domain.
        new_domain: bool,
    },
}

impl RestoreMode {
    /// Whether a new domain is defined.
    pub fn new_domain(self) -> bool {
        matches!(
            self,
            RestoreMode::NewDomain | RestoreMode::Instant { new_domain: true }
        )
    }

    /// Whether only image files are written.
    pub fn files_only(self) -> bool {
        self == RestoreMode::FilesOnly
    }

    /// Whether the restore is instant (an overlay per disk).
    pub fn instant(self) -> bool {
        matches!(self, RestoreMode::Instant { .. })
    }
}

/// `virDomainBackupRestore` and `virDomainBackupRestoreUnmanaged`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Where the disks go, and how.
    pub mode: RestoreMode,
    /// Existing files may be written over (`RESTORE_REWRITE_EXISTING_DISK`).
    pub rewrite: bool,
    /// Start the restored domain (`RESTORE_START`); never with `FilesOnly`.
    pub start: bool,
}

/// `virDomainSetDefaultTarget`: libvirt's `virDomainModificationImpact`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Affect {
    /// The live state of a running domain, else its configuration
    /// (`VIR_DOMAIN_AFFECT_CURRENT`).
    #[default]
    Current,
    /// This process, while the domain runs (`VIR_DOMAIN_AFFECT_LIVE`).
    Live,
    /// The catalog (`VIR_DOMAIN_AFFECT_CONFIG`).
    Config,
    /// Both.
    LiveAndConfig,
}

/// `virDomainBackupUndefineFlags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UndefineOptions {
    /// Forget the domain's managed backups (their data files stay)
    /// (`VIR_DOMAIN_UNDEFINE_BACKUP`); without it a domain that has some
    /// is not undefined.
    pub forget_backups: bool,
    /// libvirt's own undefine flags, passed on unread.
    pub libvirt: UndefineFlags,
}
