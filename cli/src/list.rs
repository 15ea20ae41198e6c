//! `virt-backup list`: a domain's backups, or every backup of the catalog
//! (`--all`: virDomainBackupList with a NULL domain). A domain that no
//! longer exists (undefined with virsh, which knows nothing of backups) is
//! answered from the catalog: the backups whose records name it, by the
//! name or UUID they recorded.

use serde_json::json;

use crate::api::{self, Backup, err};
use crate::info::{self, BackupInfo};
use crate::output::{Described, human};
use crate::{Ctx, ListArgs, Res, info_of};

pub(crate) fn cmd_list(ctx: &mut Ctx, a: &ListArgs) -> Res<()> {
    let mut flags = 0;
    for (on, f) in [
        (a.full, api::LIST_FULL),
        (a.incremental, api::LIST_INCREMENTAL),
        (a.leaves, api::LIST_LEAVES),
        (a.latest, api::LIST_LATEST),
    ] {
        if on {
            flags |= f;
        }
    }
    let mut infos = match &a.domain {
        Some(name) => of_domain(ctx, name, flags)?,
        None => infos_of(&Backup::list_all(flags)?)?,
    };
    // Stable: backups of one second keep the library's order.
    infos.sort_by_key(|i| i.creation_time);
    show(ctx, a, &infos);
    Ok(())
}

fn infos_of(list: &[Backup]) -> Res<Vec<BackupInfo>> {
    list.iter().map(info_of).collect()
}

/// The backups of the domain `name` (id, UUID or name): through libvirt
/// while it exists, else from the catalog; the lookup's error when the
/// catalog has no backup of it either.
fn of_domain(ctx: &mut Ctx, name: &str, flags: u32) -> Res<Vec<BackupInfo>> {
    match ctx.domain(name) {
        Ok(dom) => infos_of(&Backup::list(&dom, flags)?),
        Err(e) => match from_catalog(name, flags)? {
            Some(found) => {
                if !ctx.silent() {
                    eprintln!(
                        "domain '{name}' is not defined here: its backups as the catalog keeps them"
                    );
                }
                Ok(found)
            }
            None => Err(e),
        },
    }
}

/// The backups the catalog keeps of a domain that no longer exists, whose
/// records name it `name` or have `name` as its UUID; `None` if there are
/// none. A name several such domains had is refused: their UUIDs tell
/// them apart.
fn from_catalog(name: &str, flags: u32) -> Res<Option<Vec<BackupInfo>>> {
    // LATEST of the whole catalog would be another domain's: kept here.
    let all = infos_of(&Backup::list_all(flags & !api::LIST_LATEST)?)?;
    let by_uuid = |i: &BackupInfo| i.domain_uuid.eq_ignore_ascii_case(name.trim());
    let mut found: Vec<BackupInfo> = match all.iter().any(by_uuid) {
        true => all.into_iter().filter(by_uuid).collect(),
        false => all.into_iter().filter(|i| i.domain == name).collect(),
    };
    let mut domains: Vec<&str> = found.iter().map(|i| i.domain_uuid.as_str()).collect();
    domains.sort_unstable();
    domains.dedup();
    match domains.len() {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(err(format!(
                "domain '{name}' is not defined here, and the catalog has backups of {n} domains \
                 of that name ({}): name one by its UUID",
                domains.join(", ")
            )));
        }
    }
    if flags & api::LIST_LATEST != 0 {
        found.drain(..found.len() - 1);
    }
    Ok(Some(found))
}

/// Print the list: JSON, a tree, or a table (with each backup's domain for
/// `--all`).
fn show(ctx: &Ctx, a: &ListArgs, infos: &[BackupInfo]) {
    let described: Vec<Described> = (infos.iter())
        .map(|i| Described::new(i.clone(), &[]))
        .collect();
    if ctx.json {
        ctx.print_json(json!(
            described.iter().map(Described::to_json).collect::<Vec<_>>()
        ));
        return;
    }
    if a.tree {
        let items: Vec<(String, Option<String>)> = infos
            .iter()
            .map(|i| (i.uuid.clone(), i.parent.clone()))
            .collect();
        print!("{}", info::tree(&items));
        return;
    }
    let domain = |d: &str| match a.all {
        true => format!("{d:<20}   "),
        false => String::new(),
    };
    println!(
        " {:<36}   {}{:<25}   {:<11}   {:<9}   {:>10}   Description",
        "UUID",
        domain("Domain"),
        "Creation Time",
        "Kind",
        "State",
        "Size"
    );
    println!("{}", "-".repeat(if a.all { 146 } else { 123 }));
    for d in &described {
        let i = &d.info;
        println!(
            " {:<36}   {}{:<25}   {:<11}   {:<9}   {:>10}   {}",
            i.uuid,
            domain(&i.domain),
            info::local_time(i.creation_time),
            i.kind(),
            i.state,
            human(d.stored()),
            i.description
        );
    }
}
