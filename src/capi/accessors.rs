//! Exports: a backup's identity and its parent (as virDomainSnapshotGetName,
//! virDomainGetUUID and virDomainSnapshotGetParent are for snapshots).

use std::ffi::{c_char, c_int, c_uchar, c_uint};

use super::{Call, ffi_entry, new_handle, virDomainBackupPtr};
use crate::error::{Error, Result};

/// libvirt's `VIR_UUID_BUFLEN`: the bytes of a raw UUID.
const UUID_BUFLEN: usize = 16;
/// libvirt's `VIR_UUID_STRING_BUFLEN`: a UUID string and its NUL.
const UUID_STRING_BUFLEN: usize = 37;

/// Refuse a NULL output buffer named `arg`.
fn out_arg<T>(cx: Call, ptr: *mut T, arg: &str) -> Result<*mut T> {
    if ptr.is_null() {
        return Err(Error::invalid_arg(format!(
            "{arg} in {} must not be NULL",
            cx.name()
        )));
    }
    Ok(ptr)
}

/// virDomainBackupGetUUID:
/// @backup: a backup object
/// @uuid: where to store the UUID: a buffer of VIR_UUID_BUFLEN (16) bytes
///        owned by the caller
///
/// Get the UUID of @backup in its raw form (16 bytes, no NUL), as
/// virDomainGetUUID() does for domains. An unmanaged backup (an export)
/// has a UUID of its own, the one its XML shows.
///
/// Returns 0 on success, -1 on error (VIR_ERR_INVALID_ARG for a NULL or
/// invalid @backup or a NULL @uuid, VIR_ERR_NO_DOMAIN_BACKUP once the
/// backup has been deleted). Nothing is allocated: the caller owns @uuid.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetUUID(backup: virDomainBackupPtr, uuid: *mut c_uchar) -> c_int {
    ffi_entry!(virDomainBackupGetUUID, -1, |cx| {
        let b = cx.backup(backup)?;
        let out = out_arg(cx, uuid, "uuid")?;
        b.ensure_exists()?;
        let bytes = b.uuid.as_bytes();
        // SAFETY: the caller passes a writable buffer of VIR_UUID_BUFLEN bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, UUID_BUFLEN) };
        Ok(0)
    })
}

/// virDomainBackupGetUUIDString:
/// @backup: a backup object
/// @buf: where to store the UUID: a buffer of VIR_UUID_STRING_BUFLEN (37)
///       bytes owned by the caller
///
/// Get the UUID of @backup as a NUL-terminated string in its canonical
/// form (36 lower-case characters, e.g.
/// "54c70d40-26bb-48cd-9639-b3a1e9adf650"), as virDomainGetUUIDString()
/// does for domains: the <uuid> of virDomainBackupGetXMLDesc() and what
/// virDomainBackupLookupByUUID() takes.
///
/// Returns 0 on success, -1 on error (VIR_ERR_INVALID_ARG for a NULL or
/// invalid @backup or a NULL @buf, VIR_ERR_NO_DOMAIN_BACKUP once the backup
/// has been deleted). Nothing is allocated: the caller owns @buf.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetUUIDString(
    backup: virDomainBackupPtr,
    buf: *mut c_char,
) -> c_int {
    ffi_entry!(virDomainBackupGetUUIDString, -1, |cx| {
        let b = cx.backup(backup)?;
        let out = out_arg(cx, buf, "buf")?;
        b.ensure_exists()?;
        let mut text = [0u8; UUID_STRING_BUFLEN];
        b.uuid
            .hyphenated()
            .encode_lower(&mut text[..UUID_STRING_BUFLEN - 1]);
        // SAFETY: the caller passes a writable buffer of
        // VIR_UUID_STRING_BUFLEN bytes; `text` ends with its NUL.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), out as *mut u8, UUID_STRING_BUFLEN) };
        Ok(0)
    })
}

/// virDomainBackupGetParent:
/// @backup: a backup object
/// @flags: extra flags; not used yet, so callers should always pass 0
///
/// Get the backup @backup was made on: the parent of an incremental backup
/// (its <parent> in virDomainBackupGetXMLDesc(), as it is now: deleting a
/// backup re-parents its children onto its own parent), or, for an
/// unmanaged export started with a <parent>, that managed backup. As
/// virDomainSnapshotGetParent() does for snapshots.
///
/// Returns a new backup object holding one reference, which the caller
/// releases with virDomainBackupFree(), or NULL on error:
/// VIR_ERR_NO_DOMAIN_BACKUP when @backup has no parent (a full backup, an
/// export without <parent>), when its parent was deleted meanwhile, or when
/// @backup itself has been deleted; VIR_ERR_INVALID_ARG for a NULL or
/// invalid @backup or unknown @flags.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetParent(
    backup: virDomainBackupPtr,
    flags: c_uint,
) -> virDomainBackupPtr {
    ffi_entry!(virDomainBackupGetParent, std::ptr::null_mut(), |cx| {
        let b = cx.backup(backup)?;
        cx.check_flags(flags, 0)?;
        new_handle(b.parent()?)
    })
}
