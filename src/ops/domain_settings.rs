//! What is set on a domain rather than on one backup: its default
//! target (`virDomainSetDefaultTarget`), and the removal of its backups'
//! metadata with the domain (`virDomainBackupUndefineFlags`).

use super::create;
use crate::error::{Error, Result};
use crate::hv::libvirt::DomainRef;
use crate::hv::storage_pool;
use crate::job;
use crate::ops::options::{Affect, UndefineOptions};
use crate::ops::recovery;
use crate::store::catalog::Catalog;
use crate::store::folder::Folder;
use crate::store::secure;
use crate::xml::backup::{BackupState, DefaultTarget};

/// `virDomainSetDefaultTarget`.
pub fn set_default_target(dom: &DomainRef, xml: &str, affect: Affect) -> Result<()> {
    let target = DefaultTarget::parse(xml)?;
    match &target {
        DefaultTarget::Pool(p) => storage_pool::check_pool(&dom.connect()?, p)?,
        DefaultTarget::Dir(p) if !p.is_dir() => {
            return Err(Error::invalid_arg(format!(
                "default target folder '{}' does not exist",
                p.display()
            )));
        }
        DefaultTarget::Dir(p) => {
            secure::refuse_inside(Catalog::open()?.root(), p, "default target folder")?;
            // Backups' folders are made in it and later removed from it:
            // a folder another user can write is refused (they could swap
            // a backup's folder for a link to another VM's images).
            Folder::open_outside(p, "default target")?;
        }
    }
    let uuid = dom.uuid()?;
    let active = dom.is_active()?;
    let (live, config) = match affect {
        // The live state of a running domain, else its config.
        Affect::Current => (active, !active),
        Affect::Live => (true, false),
        Affect::Config => (false, true),
        Affect::LiveAndConfig => (true, true),
    };
    if live && !active {
        return Err(Error::operation_invalid("domain is not running"));
    }
    if config {
        recovery::open_catalog()?
            .domain(&uuid)
            .set_default_target(&target)?;
    }
    if live {
        create::LIVE_TARGETS.lock().unwrap().insert(uuid, target);
    }
    Ok(())
}

/// `virDomainBackupUndefineFlags`.
pub fn undefine(dom: &DomainRef, opts: UndefineOptions) -> Result<()> {
    let catalog = recovery::open_catalog()?;
    let uuid = dom.uuid()?;
    let _guard = catalog.domain(&uuid).lock()?;
    let records = recovery::list_domain(&catalog, &uuid)?;
    if !opts.forget_backups && !records.is_empty() {
        return Err(Error::operation_invalid(format!(
            "cannot undefine domain with {} managed backups",
            records.len()
        )));
    }
    if job::running_for_domain(&uuid).is_some()
        || records.iter().any(|r| r.state == BackupState::Running)
    {
        return Err(Error::operation_invalid(
            "cannot undefine a domain while a backup job runs",
        ));
    }
    let mut flags = opts.libvirt;
    if records.iter().any(|r| r.checkpoint.is_some()) {
        // The checkpoints of our backups go with the backups' metadata.
        flags = flags.with_checkpoints_metadata();
    }
    dom.undefine(flags)?;
    catalog.domain(&uuid).forget()?;
    create::LIVE_TARGETS.lock().unwrap().remove(&uuid);
    Ok(())
}
