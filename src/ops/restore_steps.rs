//! Steps every kind of restore shares: which disks a request selects, and
//! starting the restored domain (`VIR_DOMAIN_BACKUP_RESTORE_START`).

use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::ops::options::RestoreOptions;

/// Which disks a request selects: each must be one of `available`.
pub(crate) fn select<'a, T>(
    requested: Option<&'a [T]>,
    available: &[&'a str],
    name_of: impl Fn(&T) -> &str,
) -> Result<Vec<(&'a str, Option<&'a T>)>> {
    match requested {
        None => Ok(available.iter().map(|n| (*n, None)).collect()),
        Some(list) => list
            .iter()
            .map(|r| {
                let n = name_of(r);
                available
                    .iter()
                    .find(|a| **a == n)
                    .map(|a| (*a, Some(r)))
                    .ok_or_else(|| {
                        Error::invalid_arg(format!("the backup has no disk named '{n}'"))
                    })
            })
            .collect(),
    }
}

/// `VIR_DOMAIN_BACKUP_RESTORE_START`: start the restored domain. A failure
/// to start leaves the restore done and says so.
pub(crate) fn start_if_asked(dom: &DomainRef, opts: RestoreOptions) -> Result<()> {
    if !opts.start {
        return Ok(());
    }
    dom.start().map_err(|mut e| {
        e.message = format!(
            "the disks are restored but the domain did not start: {}",
            e.message
        );
        e
    })
}
