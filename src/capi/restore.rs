//! Exports: restoring backups.

use std::ffi::{c_char, c_int, c_uint};

use virt::sys;

use super::{domain_of, ffi_entry, str_arg};
use crate::backup::Backup;
use crate::error::check_flags;
use crate::flags::bits::RESTORE_FLAGS;

/// virDomainBackupRestore:
/// @xmlDesc: a <domainbackup> document naming the backup (<uuid>) and,
///           optionally, the disks to restore and where
/// @flags: bitwise-OR of virDomainBackupRestoreFlags
///
/// Restore a managed backup into its domain (which must be shut off) or, with
/// VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN, as a new domain. Existing files are
/// only written with VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK.
///
/// Returns 0 on success, -1 on error. This version checks the request and
/// the backup, then fails with VIR_ERR_NO_SUPPORT: restore is not supported yet.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupRestore(xmlDesc: *const c_char, flags: c_uint) -> c_int {
    ffi_entry!("virDomainBackupRestore", -1, {
        let xml = str_arg(xmlDesc, "xmlDesc", "virDomainBackupRestore")?;
        check_flags(flags, RESTORE_FLAGS, "virDomainBackupRestore")?;
        Backup::restore(xml, flags)?;
        Ok(0)
    })
}

/// virDomainBackupRestoreUnmanaged:
/// @domain: the domain whose disks are written
/// @xmlDesc: a <domainbackup> document giving each disk's source (file or NBD)
/// @flags: bitwise-OR of virDomainBackupRestoreFlags
///
/// Write @domain's disks from sources the library did not make.
///
/// Returns 0 on success, -1 on error. This version checks the request and
/// then fails with VIR_ERR_NO_SUPPORT: it is not supported yet.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupRestoreUnmanaged(
    domain: sys::virDomainPtr,
    xmlDesc: *const c_char,
    flags: c_uint,
) -> c_int {
    ffi_entry!("virDomainBackupRestoreUnmanaged", -1, {
        let dom = domain_of(domain, "virDomainBackupRestoreUnmanaged")?;
        let xml = str_arg(xmlDesc, "xmlDesc", "virDomainBackupRestoreUnmanaged")?;
        check_flags(flags, RESTORE_FLAGS, "virDomainBackupRestoreUnmanaged")?;
        Backup::restore_unmanaged(&dom, xml, flags)?;
        Ok(0)
    })
}
