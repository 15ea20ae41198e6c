//! One job per domain, for every engine: a managed backup (`create`), an
//! export of the domain (`export`) and a restore into it (`restore`) each
//! hold a [`DomainClaim`] for as long as they run, and a claim is refused
//! with `VIR_ERR_OPERATION_INVALID` while any thread or process holds one
//! for the domain, or (a running QEMU domain) libvirt runs a job on it.
//!
//! A claim is three things, taken in this order and released together when
//! it is dropped:
//! 1. the domain's job lock (`store::locks::DomainJobLock`, an flock on
//!    `<root>/.domain-locks/<domain>` taken without waiting), which every
//!    thread and process contends for, so that the check and the start of
//!    a job are one step: of 8 threads or 2 processes asking at once,
//!    exactly one gets it;
//! 2. this process's registry of claims, which also counts the jobs of
//!    `crate::job` until they have ended (a job's claim goes with its
//!    `JobLock` a moment before the job is marked ended);
//! 3. for a running QEMU domain, libvirt's word that no job runs on it.
//!
//! `DomainClaim::check` makes the same checks without taking anything, to
//! refuse a request before it is planned; the claim repeats them.
//!
//! A backup's job keeps its claim inside its `JobLock`
//! (`BackupDir::lock_job`), which drops it after the job's files are gone.
//! Verification (`verify`) reads a stored backup and claims no domain.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::job;
use crate::store::catalog::Catalog;
use crate::store::locks::{DomainHold, DomainJobLock};

/// The claims held in this process: (claim, domain).
static CLAIMS: Mutex<Vec<(u64, Uuid)>> = Mutex::new(Vec::new());

/// Numbers claims, so that each removes only itself from `CLAIMS`.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A domain claimed for one job; dropping it releases the claim.
#[derive(Debug)]
pub(super) struct DomainClaim {
    id: u64,
    _lock: DomainJobLock,
}

impl DomainClaim {
    /// Claim `domain` (`dom`) in `catalog`; with `libvirt` (a running QEMU
    /// domain), libvirt must run no job on it either.
    pub(super) fn take(
        catalog: &Catalog,
        dom: &DomainRef,
        domain: &Uuid,
        libvirt: bool,
    ) -> Result<Self> {
        let lock = catalog.domain(domain).claim_job()?;
        DomainClaim::check(dom, domain, libvirt)?;
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        CLAIMS.lock().unwrap().push((id, *domain));
        Ok(DomainClaim { id, _lock: lock })
    }

    /// Refuse when this process holds a claim on `domain` or runs a job of
    /// it, or (with `libvirt`) libvirt runs a job on it. Takes nothing: a
    /// request is refused before it is planned, and `take` checks again.
    pub(super) fn check(dom: &DomainRef, domain: &Uuid, libvirt: bool) -> Result<()> {
        let claimed = CLAIMS.lock().unwrap().iter().any(|(_, d)| d == domain);
        if claimed || job::running_for_domain(domain).is_some() {
            return Err(Error::operation_invalid(
                "the domain already has a backup job running",
            ));
        }
        if libvirt && dom.job_info(false)?.is_active() {
            return Err(Error::operation_invalid(
                "the domain already has a job running",
            ));
        }
        Ok(())
    }
}

impl Drop for DomainClaim {
    fn drop(&mut self) {
        CLAIMS.lock().unwrap().retain(|(id, _)| *id != self.id);
    }
}

impl DomainHold for DomainClaim {
    fn release(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hv::libvirt;

    /// The test driver's own domain, "test".
    fn test_domain() -> (DomainRef, Uuid) {
        let uuid = Uuid::parse_str("6695eb01-f6a4-8304-79aa-97f2502e193f").unwrap();
        (
            libvirt::open_domain("test:///default", &uuid).unwrap(),
            uuid,
        )
    }

    #[test]
    fn a_claim_refuses_every_other_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::at(dir.path().join("cat")).unwrap();
        let (dom, uuid) = test_domain();
        let claim = DomainClaim::take(&cat, &dom, &uuid, false).unwrap();
        // Another descriptor of the lock, and this process's registry.
        let other = Catalog::at(dir.path().join("cat")).unwrap();
        for e in [
            DomainClaim::take(&other, &dom, &uuid, false).unwrap_err(),
            DomainClaim::check(&dom, &uuid, false).unwrap_err(),
        ] {
            assert!(
                e.message
                    .contains("the domain already has a backup job running")
            );
        }
        drop(claim);
        DomainClaim::check(&dom, &uuid, false).unwrap();
        // A backup's job keeps its claim until its job lock goes.
        let claim = DomainClaim::take(&other, &dom, &uuid, false).unwrap();
        let backup = cat.backup(&uuid, &Uuid::new_v4());
        let job = backup.lock_job(claim).unwrap();
        assert!(DomainClaim::check(&dom, &uuid, false).is_err());
        assert!(DomainClaim::take(&cat, &dom, &uuid, false).is_err());
        drop(job);
        drop(DomainClaim::take(&cat, &dom, &uuid, false).unwrap());
    }
}
