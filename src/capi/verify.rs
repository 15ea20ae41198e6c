//! Exports: checking a stored backup against its digests.

use std::ffi::{c_int, c_uint};

use super::{ffi_entry, virDomainBackupPtr};
use crate::ops::history;

/// virDomainBackupVerify:
/// @backup: a managed backup object
/// @flags: extra flags; not used yet, so callers should always pass 0
///
/// Re-read every stored block of the completed backup @backup through its
/// chain (an incremental backup's disks read through their parents' files,
/// as a restore reads them) and check each 64 KiB chunk against the digest
/// index recorded at backup time. Synchronous. Only a backup of a running
/// domain made by an earlier version (QEMU wrote it) has no index: the
/// first verification records it from the files (and logs a warning),
/// later ones check against it. Any other backup whose index is missing
/// fails with
/// VIR_ERR_OPERATION_FAILED ("the data cannot be verified"): its index is
/// never rebuilt from the images it should check.
///
/// While it runs, virDomainBackupGetParameters() on @backup (from another
/// thread, on any handle of the backup) also reports "verify.bytes.total"
/// and "verify.bytes.processed" (ullong), and virDomainBackupAbortJob()
/// stops it. Once it has returned 0, GetParameters reports
/// "verify.recorded" (boolean): true when this verification recorded the
/// index (so it proves the data reads back, not that it is what the guest
/// had), false when it checked the one kept with the backup.
///
/// Returns 0 when every disk matches; -1 with VIR_ERR_OPERATION_FAILED
/// naming the first mismatching disk and guest offset, with
/// VIR_ERR_OPERATION_ABORTED when it was aborted, or with the error that
/// stopped it (VIR_ERR_OPERATION_INVALID for a backup that is not completed
/// or is already being verified in this process).
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupVerify(backup: virDomainBackupPtr, flags: c_uint) -> c_int {
    ffi_entry!(virDomainBackupVerify, -1, |cx| {
        let b = cx.backup(backup)?;
        cx.check_flags(flags, 0)?;
        history::verify(&b)?;
        Ok(0)
    })
}
