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

/// `virDomainSetDefaultTarget`; `<target type='none'/>` clears the setting.
pub fn set_default_target(dom: &DomainRef, xml: &str, affect: Affect) -> Result<()> {
    let target = DefaultTarget::parse_setting(xml)?;
    if let Some(t) = &target {
        check_default_target(dom, t)?;
    }
    let uuid = dom.uuid()?;
    let (live, config) = affected(dom, affect)?;
    if config {
        let d = recovery::open_catalog()?.domain(&uuid);
        match &target {
            Some(t) => d.set_default_target(t)?,
            None => d.clear_default_target()?,
        }
    }
    if live {
        let mut live_targets = create::LIVE_TARGETS.lock().unwrap();
        match target {
            Some(t) => live_targets.insert(uuid, t),
            None => live_targets.remove(&uuid),
        };
    }
    Ok(())
}

/// Which of the live and the persistent settings `affect` names: the live
/// state of a running domain, else its config, for CURRENT.
fn affected(dom: &DomainRef, affect: Affect) -> Result<(bool, bool)> {
    let active = dom.is_active()?;
    let (live, config) = match affect {
        Affect::Current => (active, !active),
        Affect::Live => (true, false),
        Affect::Config => (false, true),
        Affect::LiveAndConfig => (true, true),
    };
    if live && !active {
        return Err(Error::operation_invalid("domain is not running"));
    }
    Ok((live, config))
}

/// A target that backups can go to: a running pool, or a folder of ours.
fn check_default_target(dom: &DomainRef, target: &DefaultTarget) -> Result<()> {
    match target {
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
    Ok(())
}

/// `virDomainGetDefaultTarget`: the setting `affect` names as a document
/// SetDefaultTarget takes, `<target type='none'/>` when there is none.
/// CURRENT is the one in force: the live one of a running domain, else the
/// persistent one; LIVE and CONFIG together are refused.
pub(crate) fn default_target(dom: &DomainRef, affect: Affect) -> Result<String> {
    let uuid = dom.uuid()?;
    let active = dom.is_active()?;
    let live = || {
        create::LIVE_TARGETS
            .lock()
            .unwrap()
            .get(&uuid)
            .filter(|_| active)
            .cloned()
    };
    let config = || recovery::open_catalog()?.domain(&uuid).default_target();
    let target = match affect {
        Affect::LiveAndConfig => {
            return Err(Error::invalid_arg(
                "VIR_DOMAIN_AFFECT_LIVE and VIR_DOMAIN_AFFECT_CONFIG exclude each other here",
            ));
        }
        Affect::Live if !active => {
            return Err(Error::operation_invalid("domain is not running"));
        }
        Affect::Live => live(),
        Affect::Config => config()?,
        Affect::Current => match live() {
            Some(t) => Some(t),
            None => config()?,
        },
    };
    match target {
        Some(t) => t.to_xml(),
        None => Ok(DefaultTarget::NONE_XML.to_string()),
    }
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
