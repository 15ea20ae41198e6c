//! The one place flag words become options: each caller's `unsigned int
//! flags` is checked against the bits its function accepts (libvirt's
//! wording for the others), its exclusive pairs are refused, and what is
//! left is turned into the typed options of `ops::options`. Nothing below
//! the C boundary sees a flag word.

use crate::error::{Error, Result};
use crate::flags::bits::*;
use crate::ops::options::{
    Affect, ChildScope, CreateOptions, DeleteOptions, DeleteScope, ExportOptions, FinishMode,
    HistoryFilter, ListFilter, ListKind, RestoreMode, RestoreOptions, UndefineFlags,
    UndefineOptions, XmlOptions,
};

/// A caller's flag word, its unknown bits already refused.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flags(u32);

/// A flag and its C name, for the messages that name it.
type Named = (u32, &'static str);

impl Flags {
    /// Refuse the bits outside `allowed`, in libvirt's words.
    pub(crate) fn check(flags: u32, allowed: u32, function: &str) -> Result<Flags> {
        if flags & !allowed != 0 {
            return Err(Error::invalid_arg(format!(
                "unsupported flags (0x{:x}) in function {function}",
                flags & !allowed
            )));
        }
        Ok(Flags(flags))
    }

    fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// Refuse two mutually exclusive flags given together (libvirt's
    /// VIR_EXCLUSIVE_FLAGS_RET wording).
    fn exclusive(self, a: Named, b: Named) -> Result<()> {
        if self.has(a.0) && self.has(b.0) {
            return Err(Error::invalid_arg(format!(
                "Flags '{}' and '{}' are mutually exclusive",
                a.1, b.1
            )));
        }
        Ok(())
    }
}

/// Options a function's flag word stands for.
pub(crate) trait FromFlags: Sized {
    /// The bits the function accepts; any other is refused.
    const ALLOWED: u32;

    /// The options of a word holding only allowed bits; an exclusive pair
    /// is refused here.
    fn from_flags(f: Flags) -> Result<Self>;
}

const LIST_FULL: Named = (VIR_DOMAIN_BACKUP_LIST_FULL, "VIR_DOMAIN_BACKUP_LIST_FULL");
const LIST_INCREMENTAL: Named = (
    VIR_DOMAIN_BACKUP_LIST_INCREMENTAL,
    "VIR_DOMAIN_BACKUP_LIST_INCREMENTAL",
);
const FINISH_CANCEL: Named = (
    VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL,
    "VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL",
);
const FINISH_CHECK: Named = (
    VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK,
    "VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK",
);
const DELETE_ALL: Named = (VIR_DOMAIN_BACKUP_DELETE_ALL, "VIR_DOMAIN_BACKUP_DELETE_ALL");
const DELETE_ALL_CHILDREN: Named = (
    VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN,
    "VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN",
);
const RESTORE_FILES_ONLY: Named = (
    VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY,
    "VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY",
);
const RESTORE_NEW_DOMAIN: Named = (
    VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN,
    "VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN",
);
const RESTORE_INSTANT: Named = (
    VIR_DOMAIN_BACKUP_RESTORE_INSTANT,
    "VIR_DOMAIN_BACKUP_RESTORE_INSTANT",
);
const RESTORE_START: Named = (
    VIR_DOMAIN_BACKUP_RESTORE_START,
    "VIR_DOMAIN_BACKUP_RESTORE_START",
);

impl FromFlags for CreateOptions {
    const ALLOWED: u32 = CREATE_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        Ok(CreateOptions {
            quiesce: f.has(VIR_DOMAIN_BACKUP_CREATE_QUIESCE),
            no_fallback: f.has(VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK),
            wait: f.has(VIR_DOMAIN_BACKUP_CREATE_WAIT),
        })
    }
}

impl FromFlags for ExportOptions {
    const ALLOWED: u32 = VIR_DOMAIN_BACKUP_CREATE_QUIESCE;

    fn from_flags(f: Flags) -> Result<Self> {
        Ok(ExportOptions {
            quiesce: f.has(VIR_DOMAIN_BACKUP_CREATE_QUIESCE),
        })
    }
}

/// `virDomainBackupGetJobHistory`.
impl FromFlags for HistoryFilter {
    const ALLOWED: u32 = VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED;

    fn from_flags(f: Flags) -> Result<Self> {
        Ok(HistoryFilter {
            failed_only: f.has(VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED),
        })
    }
}

/// `virDomainBackupList`.
impl FromFlags for ListFilter {
    const ALLOWED: u32 = LIST_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        f.exclusive(LIST_FULL, LIST_INCREMENTAL)?;
        let kind = if f.has(VIR_DOMAIN_BACKUP_LIST_FULL) {
            ListKind::Full
        } else if f.has(VIR_DOMAIN_BACKUP_LIST_INCREMENTAL) {
            ListKind::Incremental
        } else {
            ListKind::Any
        };
        Ok(ListFilter {
            kind,
            leaves: f.has(VIR_DOMAIN_BACKUP_LIST_LEAVES),
            latest: f.has(VIR_DOMAIN_BACKUP_LIST_LATEST),
        })
    }
}

/// `virDomainBackupGetXMLDesc`.
impl FromFlags for XmlOptions {
    const ALLOWED: u32 = VIR_DOMAIN_XML_SECURE;

    fn from_flags(f: Flags) -> Result<Self> {
        Ok(XmlOptions {
            secure: f.has(VIR_DOMAIN_XML_SECURE),
        })
    }
}

/// `virDomainBackupListChildren`: the filter of List, and how deep.
impl FromFlags for (ChildScope, ListFilter) {
    const ALLOWED: u32 = LIST_CHILDREN_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        let scope = match f.has(VIR_DOMAIN_BACKUP_LIST_DESCENDANTS) {
            true => ChildScope::Descendants,
            false => ChildScope::Children,
        };
        Ok((scope, ListFilter::from_flags(f)?))
    }
}

impl FromFlags for FinishMode {
    const ALLOWED: u32 = FINISH_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        f.exclusive(FINISH_CANCEL, FINISH_CHECK)?;
        Ok(if f.has(VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL) {
            FinishMode::Cancel
        } else if f.has(VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) {
            FinishMode::Check
        } else {
            FinishMode::Wait
        })
    }
}

impl FromFlags for DeleteOptions {
    const ALLOWED: u32 = DELETE_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        f.exclusive(DELETE_ALL, DELETE_ALL_CHILDREN)?;
        let scope = if f.has(VIR_DOMAIN_BACKUP_DELETE_ALL) {
            DeleteScope::All
        } else if f.has(VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN) {
            DeleteScope::WithChildren
        } else {
            DeleteScope::One
        };
        Ok(DeleteOptions {
            scope,
            metadata_only: f.has(VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY),
        })
    }
}

/// `virDomainBackupRestore` and `virDomainBackupRestoreUnmanaged`.
/// FILES_ONLY touches no domain: the flags that make or start one are out.
impl FromFlags for RestoreOptions {
    const ALLOWED: u32 = RESTORE_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        f.exclusive(RESTORE_FILES_ONLY, RESTORE_NEW_DOMAIN)?;
        f.exclusive(RESTORE_FILES_ONLY, RESTORE_INSTANT)?;
        f.exclusive(RESTORE_FILES_ONLY, RESTORE_START)?;
        let new_domain = f.has(VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN);
        let mode = if f.has(VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY) {
            RestoreMode::FilesOnly
        } else if f.has(VIR_DOMAIN_BACKUP_RESTORE_INSTANT) {
            RestoreMode::Instant { new_domain }
        } else if new_domain {
            RestoreMode::NewDomain
        } else {
            RestoreMode::InPlace
        };
        Ok(RestoreOptions {
            mode,
            rewrite: f.has(VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
            start: f.has(VIR_DOMAIN_BACKUP_RESTORE_START),
        })
    }
}

/// `virDomainSetDefaultTarget`: libvirt's `virDomainModificationImpact`.
impl FromFlags for Affect {
    const ALLOWED: u32 = AFFECT_FLAGS;

    fn from_flags(f: Flags) -> Result<Self> {
        Ok(
            match (
                f.has(VIR_DOMAIN_AFFECT_LIVE),
                f.has(VIR_DOMAIN_AFFECT_CONFIG),
            ) {
                (false, false) => Affect::Current,
                (true, false) => Affect::Live,
                (false, true) => Affect::Config,
                (true, true) => Affect::LiveAndConfig,
            },
        )
    }
}

/// `virDomainBackupUndefineFlags`: every bit but the library's own
/// VIR_DOMAIN_UNDEFINE_BACKUP is libvirt's, passed on unread.
impl FromFlags for UndefineOptions {
    const ALLOWED: u32 = !0;

    fn from_flags(f: Flags) -> Result<Self> {
        Ok(UndefineOptions {
            forget_backups: f.has(VIR_DOMAIN_UNDEFINE_BACKUP),
            libvirt: UndefineFlags::from_libvirt(f.0 & !VIR_DOMAIN_UNDEFINE_BACKUP),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: FromFlags>(flags: u32) -> Result<T> {
        T::from_flags(Flags::check(flags, T::ALLOWED, "f")?)
    }

    fn message<T: FromFlags + std::fmt::Debug>(flags: u32) -> String {
        parse::<T>(flags).unwrap_err().message
    }

    #[test]
    fn unknown_bits_are_named_in_libvirts_words() {
        let e = Flags::check(0x13, 0x3, "virDomainBackupVerify").unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::InvalidArg as i32);
        assert!(
            e.message
                .ends_with("unsupported flags (0x10) in function virDomainBackupVerify"),
            "{}",
            e.message
        );
        assert!(Flags::check(0, 0, "f").is_ok());
        assert!(message::<CreateOptions>(1 << 3).contains("(0x8)"));
        assert!(message::<ExportOptions>(1 << 2).contains("(0x4)"));
        assert!(message::<ListFilter>(1 << 4).contains("(0x10)"));
        assert!(message::<FinishMode>(1 << 2).contains("(0x4)"));
        assert!(message::<Affect>(1 << 2).contains("(0x4)"));
    }

    #[test]
    fn create_and_export() {
        assert_eq!(parse::<CreateOptions>(0).unwrap(), CreateOptions::default());
        assert_eq!(
            parse::<CreateOptions>(7).unwrap(),
            CreateOptions {
                quiesce: true,
                no_fallback: true,
                wait: true
            }
        );
        assert!(parse::<ExportOptions>(1).unwrap().quiesce);
    }

    #[test]
    fn list_filters() {
        assert_eq!(parse::<ListFilter>(0).unwrap(), ListFilter::default());
        let f = parse::<ListFilter>(1 | 2 | 8).unwrap();
        assert_eq!((f.kind, f.latest, f.leaves), (ListKind::Full, true, true));
        assert_eq!(parse::<ListFilter>(4).unwrap().kind, ListKind::Incremental);
        assert_eq!(
            message::<ListFilter>(1 | 4),
            "invalid argument: Flags 'VIR_DOMAIN_BACKUP_LIST_FULL' and \
             'VIR_DOMAIN_BACKUP_LIST_INCREMENTAL' are mutually exclusive"
        );
        let (scope, f) = parse::<(ChildScope, ListFilter)>(16 | 4).unwrap();
        assert_eq!(
            (scope, f.kind),
            (ChildScope::Descendants, ListKind::Incremental)
        );
        assert!(message::<(ChildScope, ListFilter)>(1 | 4).contains("mutually exclusive"));
    }

    #[test]
    fn finish_and_delete() {
        assert_eq!(parse::<FinishMode>(0).unwrap(), FinishMode::Wait);
        assert_eq!(parse::<FinishMode>(1).unwrap(), FinishMode::Cancel);
        assert_eq!(parse::<FinishMode>(2).unwrap(), FinishMode::Check);
        assert!(message::<FinishMode>(3).contains(
            "'VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL' and 'VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK'"
        ));
        assert_eq!(parse::<DeleteOptions>(0).unwrap(), DeleteOptions::default());
        assert_eq!(parse::<DeleteOptions>(1).unwrap().scope, DeleteScope::All);
        let d = parse::<DeleteOptions>(2 | 4).unwrap();
        assert_eq!(
            (d.scope, d.metadata_only),
            (DeleteScope::WithChildren, true)
        );
        assert!(message::<DeleteOptions>(3).contains(
            "'VIR_DOMAIN_BACKUP_DELETE_ALL' and 'VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN'"
        ));
    }

    #[test]
    fn restore_modes() {
        let mode = |f| parse::<RestoreOptions>(f).unwrap().mode;
        assert_eq!(mode(0), RestoreMode::InPlace);
        assert_eq!(mode(1), RestoreMode::NewDomain);
        assert_eq!(mode(4), RestoreMode::Instant { new_domain: false });
        assert_eq!(mode(4 | 1), RestoreMode::Instant { new_domain: true });
        assert_eq!(mode(16 | 2), RestoreMode::FilesOnly);
        let o = parse::<RestoreOptions>(2 | 8).unwrap();
        assert_eq!(
            (o.mode, o.rewrite, o.start),
            (RestoreMode::InPlace, true, true)
        );
        for (other, name) in [(1, "NEW_DOMAIN"), (4, "INSTANT"), (8, "START")] {
            assert_eq!(
                message::<RestoreOptions>(16 | other),
                format!(
                    "invalid argument: Flags 'VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY' and \
                     'VIR_DOMAIN_BACKUP_RESTORE_{name}' are mutually exclusive"
                )
            );
        }
        assert!(message::<RestoreOptions>(32).contains("(0x20)"));
    }

    #[test]
    fn affect_and_undefine() {
        assert_eq!(parse::<Affect>(0).unwrap(), Affect::Current);
        assert_eq!(parse::<Affect>(1).unwrap(), Affect::Live);
        assert_eq!(parse::<Affect>(2).unwrap(), Affect::Config);
        assert_eq!(parse::<Affect>(3).unwrap(), Affect::LiveAndConfig);
        let u = parse::<UndefineOptions>(1 << 30 | 1).unwrap();
        assert!(u.forget_backups);
        assert_eq!(u.libvirt, UndefineFlags::from_libvirt(1));
        let u = parse::<UndefineOptions>(4).unwrap();
        assert!(!u.forget_backups);
        assert_eq!(u.libvirt, UndefineFlags::from_libvirt(4));
    }
}
