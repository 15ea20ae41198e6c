//! Exports: per-domain settings and undefine.

use std::ffi::{c_char, c_int, c_uint};

use virt::sys;

use super::{ffi_entry, malloc_string};
use crate::ops::domain_settings;

/// virDomainSetDefaultTarget:
/// @domain: a domain object
/// @xmlDesc: <target type='dir'><path>/backups</path></target> or
///           <target type='pool'><pool>default</pool></target>
/// @flags: bitwise-OR of virDomainModificationImpact
///
/// Set where backups of @domain go when a disk has no <target>: each disk to
/// <path>/<backup uuid>/<disk>.<format>, or to a new volume
/// '<domain name>-<backup uuid>-<disk>.<format>' of a running, file-backed
/// (dir, fs, netfs) storage pool. VIR_DOMAIN_AFFECT_CONFIG keeps the
/// setting in the catalog; VIR_DOMAIN_AFFECT_LIVE keeps it in this process
/// while the domain runs (and wins over CONFIG); VIR_DOMAIN_AFFECT_CURRENT
/// means LIVE for a running domain and CONFIG otherwise. A folder inside
/// the backup catalog is refused (VIR_ERR_INVALID_ARG).
///
/// The document is checked as libvirt's schema validation checks libvirt's:
/// one that is not well-formed XML 1.0 (UTF-8; no DOCTYPE, so no entities
/// beyond the predefined ones), that holds an element or attribute outside
/// the <target> document, repeats a single element, or is
/// over the limits (1 MiB, 64 levels) is refused with
/// VIR_ERR_XML_ERROR naming its line and column, and nothing is done.
///
/// <target type='none'/> clears the setting (LIVE, CONFIG or both, as
/// above): backups without a <target> then go to the catalog (or, after
/// clearing the LIVE one only, to the CONFIG one). Clearing a setting
/// that is not there is no error.
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainSetDefaultTarget(
    domain: sys::virDomainPtr,
    xmlDesc: *const c_char,
    flags: c_uint,
) -> c_int {
    ffi_entry!(virDomainSetDefaultTarget, -1, |cx| {
        let dom = cx.domain(domain)?;
        let xml = cx.str_arg(xmlDesc, "xmlDesc")?;
        domain_settings::set_default_target(&dom, xml, cx.options(flags)?)?;
        Ok(0)
    })
}

/// virDomainGetDefaultTarget:
/// @domain: a domain object
/// @flags: one of virDomainModificationImpact
///
/// Where backups of @domain go when a disk has no <target>, as the
/// document virDomainSetDefaultTarget() takes: <target type='dir'>,
/// <target type='pool'>, or <target type='none'/> when nothing is set.
/// VIR_DOMAIN_AFFECT_CONFIG gives the persistent setting (kept in the
/// catalog), VIR_DOMAIN_AFFECT_LIVE the one of this process (the domain
/// must be running), VIR_DOMAIN_AFFECT_CURRENT the one in force: the live
/// one of a running domain if set, else the persistent one. LIVE with
/// CONFIG is refused (VIR_ERR_INVALID_ARG).
///
/// Returns the document, to be freed with free(), or NULL on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainGetDefaultTarget(
    domain: sys::virDomainPtr,
    flags: c_uint,
) -> *mut c_char {
    ffi_entry!(virDomainGetDefaultTarget, std::ptr::null_mut(), |cx| {
        let dom = cx.domain(domain)?;
        malloc_string(&domain_settings::default_target(&dom, cx.options(flags)?)?)
    })
}

/// virDomainBackupUndefineFlags:
/// @domain: a domain object
/// @flags: bitwise-OR of virDomainUndefineFlagsValues and VIR_DOMAIN_UNDEFINE_BACKUP
///
/// virDomainUndefineFlags() that knows about managed backups: a domain that
/// has some is only undefined with VIR_DOMAIN_UNDEFINE_BACKUP, which also
/// forgets their metadata (data files stay); without it the call fails with
/// VIR_ERR_OPERATION_INVALID, as libvirt does for snapshots. The other flags
/// go to libvirt unchanged. The header maps virDomainUndefineFlags() here
/// unless LIBVIRT_BACKUP_NO_UNDEFINE_HOOK is defined.
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupUndefineFlags(domain: sys::virDomainPtr, flags: c_uint) -> c_int {
    ffi_entry!(virDomainBackupUndefineFlags, -1, |cx| {
        let dom = cx.domain(domain)?;
        domain_settings::undefine(&dom, cx.options(flags)?)?;
        Ok(0)
    })
}
