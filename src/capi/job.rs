//! Exports: following, finishing and cancelling backup jobs.

use std::ffi::{c_int, c_uint};

use virt::sys;

use super::{ffi_entry, malloc_string, virDomainBackupPtr};
use crate::error::{Error, Result};
use crate::ops::backup::ParamValue;
use crate::ops::history;

/// virDomainBackupFinishJob:
/// @backup: a backup object
/// @flags: 0, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK or VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL
///
/// With 0, wait for the backup job to end. With CHECK, do not block. With
/// CANCEL, cancel the job and wait until its partial data is removed (as
/// virDomainBackupAbortJob()); cancelling a finished job fails with
/// VIR_ERR_OPERATION_INVALID.
///
/// Returns 0 if the job completed (or was cancelled, with CANCEL), 1 with
/// CHECK while it still runs, -1 if it failed or was cancelled (the last
/// error is the job's) or on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupFinishJob(backup: virDomainBackupPtr, flags: c_uint) -> c_int {
    ffi_entry!(virDomainBackupFinishJob, -1, |cx| {
        let b = cx.backup(backup)?;
        history::finish_job(&b, cx.options(flags)?)
    })
}

/// virDomainBackupAbortJob:
/// @backup: a backup object
/// @flags: extra flags; not used yet, so callers should always pass 0
///
/// Cancel the backup job and wait until its partial data and catalog entry
/// are removed. The handle still answers virDomainBackupGetParameters() with
/// the state "cancelled". While virDomainBackupVerify() runs on the backup in
/// this process, stop that instead (it returns VIR_ERR_OPERATION_ABORTED).
///
/// Returns 0 on success, -1 on error (VIR_ERR_OPERATION_INVALID if the job
/// has already ended).
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupAbortJob(backup: virDomainBackupPtr, flags: c_uint) -> c_int {
    ffi_entry!(virDomainBackupAbortJob, -1, |cx| {
        let b = cx.backup(backup)?;
        cx.check_flags(flags, 0)?;
        history::abort(&b)?;
        Ok(0)
    })
}

/// Write one typed parameter; strings are malloc'd (virTypedParamsClear frees them).
fn fill(slot: &mut sys::virTypedParameter, name: &str, value: &ParamValue) -> Result<()> {
    slot.field = [0; sys::VIR_TYPED_PARAM_FIELD_LENGTH as usize];
    for (dst, src) in slot.field.iter_mut().zip(name.bytes()) {
        *dst = src as std::ffi::c_char;
    }
    match value {
        ParamValue::Int(v) => {
            slot.type_ = sys::VIR_TYPED_PARAM_INT as c_int;
            slot.value.i = *v;
        }
        ParamValue::UInt(v) => {
            slot.type_ = sys::VIR_TYPED_PARAM_UINT as c_int;
            slot.value.ui = *v;
        }
        ParamValue::ULLong(v) => {
            slot.type_ = sys::VIR_TYPED_PARAM_ULLONG as c_int;
            slot.value.ul = *v;
        }
        ParamValue::Boolean(v) => {
            slot.type_ = sys::VIR_TYPED_PARAM_BOOLEAN as c_int;
            slot.value.b = *v as std::ffi::c_char;
        }
        ParamValue::String(s) => {
            slot.type_ = sys::VIR_TYPED_PARAM_STRING as c_int;
            slot.value.s = malloc_string(s)?;
        }
    }
    Ok(())
}

/// virDomainBackupGetParameters:
/// @backup: a backup object
/// @params: caller-allocated array of typed parameters, or NULL to count them
/// @nparams: in: the size of @params; out: how many slots were filled
/// @flags: extra flags; not used yet, so callers should always pass 0
///
/// Describe the backup job: "state" (int, a virDomainBackupState),
/// "incremental" (boolean), "bytes.total", "bytes.processed", "bytes.written",
/// "time.elapsed" (ullong; milliseconds), "disks" (uint), for each disk i
/// from 0 in the backup's disk order "disk.<i>.name" (string),
/// "disk.<i>.bytes.total" and "disk.<i>.bytes.processed" (ullong; the job's
/// "bytes.processed" is their sum) and, only when the state is FAILED,
/// "error" (string). Values are live while the job runs: from a process
/// other than the job's (virDomainBackupLookupByUUID(),
/// virDomainBackupList()), the figures the job publishes twice a second
/// next to its record.
/// While virDomainBackupVerify() runs on the backup in this process, also
/// "verify.bytes.total" and "verify.bytes.processed" (ullong). Once
/// virDomainBackupVerify() has returned 0 for the backup in this process,
/// "verify.recorded" (boolean): whether that verification recorded the
/// backup's digest index (a live backup made by an earlier version has
/// none until then, see virDomainBackupVerify()) rather than checking the
/// one kept with the backup.
/// With @params NULL and *nparams 0, *nparams is set to the number available.
/// String values are malloc'd: release them with virTypedParamsClear().
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetParameters(
    backup: virDomainBackupPtr,
    params: sys::virTypedParameterPtr,
    nparams: *mut c_int,
    flags: c_uint,
) -> c_int {
    ffi_entry!(virDomainBackupGetParameters, -1, |cx| {
        let b = cx.backup(backup)?;
        if nparams.is_null() {
            return Err(Error::invalid_arg(format!(
                "nparams in {} must not be NULL",
                cx.name()
            )));
        }
        // SAFETY: checked non-NULL; the caller owns the int.
        let n = unsafe { *nparams };
        if n < 0 || (params.is_null() && n != 0) {
            return Err(Error::invalid_arg(format!(
                "params in {} must not be NULL when nparams is not 0",
                cx.name()
            )));
        }
        cx.check_flags(flags, 0)?;
        let values = b.parameters()?;
        if params.is_null() {
            // SAFETY: as above.
            unsafe { *nparams = values.len() as c_int };
            return Ok(0);
        }
        let count = values.len().min(n as usize);
        // SAFETY: the caller's array has at least n slots.
        let slots = unsafe { std::slice::from_raw_parts_mut(params, count) };
        for (i, (slot, (name, value))) in slots.iter_mut().zip(&values).enumerate() {
            if let Err(e) = fill(slot, name, value) {
                // SAFETY: the first i slots were filled by us.
                unsafe { sys::virTypedParamsClear(params, i as c_int) };
                return Err(e);
            }
        }
        // SAFETY: as above.
        unsafe { *nparams = count as c_int };
        Ok(0)
    })
}
