//! Exports: the catalog's job history.

use std::ffi::{c_char, c_uint};

use virt::sys;

use super::{ffi_entry, malloc_string};
use crate::ops::history;
use crate::ops::options::HistoryFilter;

/// virDomainBackupGetJobHistory:
/// @domain: a domain object, or NULL for every domain in the catalog
/// @flags: 0 or VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED (only jobs that
///         failed, were cancelled or were interrupted)
///
/// Describe the jobs the catalog remembers, oldest first: every managed
/// backup's job (virDomainBackupCreateXML()), virDomainBackupDelete()
/// (with the merges into children it makes), virDomainBackupVerify(),
/// the restores (virDomainBackupRestore() in every mode,
/// virDomainBackupRestoreUnmanaged()) and the exports
/// (virDomainBackupStartUnmanaged() of a domain or of a stored backup, up
/// to virDomainBackupFinishJob() or virDomainBackupAbortJob()), of any
/// process or host sharing the catalog. Each is a
/// <job id='…' kind='create|delete|verify|restore|export'
/// state='running|completed|failed|cancelled|interrupted'> in a
/// <jobhistory> document, with <domain uuid='…' name='…'/>,
/// <backup uuid='…'/> (the backup the job is about; for the export of a
/// domain, the export's own UUID), <start> and <end> (Unix seconds),
/// <bytes> (bytes read, copied or verified), <written> (bytes written, by a
/// backup's job), <host>, <pid> and <error code='N'>message</error>; an
/// element is absent when unknown (<end> while the job runs, or when its
/// process died: "interrupted", which a job of this host whose process no
/// longer exists shows; one of another host shows "running"). The history
/// is bounded: about the last 1 to 2 MiB of it is kept.
///
/// Returns the document, malloc'd: the caller releases it with free(); or
/// NULL on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetJobHistory(
    domain: sys::virDomainPtr,
    flags: c_uint,
) -> *mut c_char {
    ffi_entry!(virDomainBackupGetJobHistory, std::ptr::null_mut(), |cx| {
        let dom = match domain.is_null() {
            // The whole catalog: the one form without a domain.
            true => None,
            false => Some(cx.domain(domain)?),
        };
        let filter: HistoryFilter = cx.options(flags)?;
        malloc_string(&history::history_xml(dom.as_ref(), filter)?)
    })
}
