//! The keys of encrypted backups: each disk's libvirt secret (its id in
//! the record) read again through libvirt, on a connection to the
//! record's URI, whenever a backup's images are read or written.

use std::collections::HashMap;
use std::path::PathBuf;

use uuid::Uuid;
use virt::connect::Connect;

use crate::error::{Error, Result};
use crate::hv::libvirt;
use crate::hv::secret;
use crate::image::keys::{self, Lent};
use crate::xml::backup::{BackupRecord, SecretId};

/// Whether `rec` or one of its ancestors (`find` gives a record by uuid)
/// has an encrypted disk.
pub(crate) fn encrypted_chain(
    rec: &BackupRecord,
    find: &dyn Fn(&Uuid) -> Option<BackupRecord>,
) -> bool {
    chain(rec, find)
        .iter()
        .any(|r| r.disks.iter().any(|d| d.encryption.is_some()))
}

fn chain(rec: &BackupRecord, find: &dyn Fn(&Uuid) -> Option<BackupRecord>) -> Vec<BackupRecord> {
    let mut all = vec![rec.clone()];
    while let Some(p) = all.last().and_then(|r| r.parent) {
        match find(&p) {
            Some(r) if !all.iter().any(|x| x.uuid == r.uuid) => all.push(r),
            _ => break,
        }
    }
    all
}

/// One encrypted image of a chain: its path, the record's URI and the
/// secret's id (as recorded), what opens it, and whose it is (for
/// messages).
struct Keyed {
    path: PathBuf,
    uri: String,
    secret: SecretId,
    value: Vec<u8>,
    backup: Uuid,
    disk: String,
}

/// The encrypted images of `rec` and its ancestors with their
/// passphrases, read from libvirt (one connection per URI, one read per
/// secret); nothing (and no connection) when none is encrypted. A missing
/// secret is VIR_ERR_NO_SECRET naming the backup and the disk.
fn read_chain(
    rec: &BackupRecord,
    find: &dyn Fn(&Uuid) -> Option<BackupRecord>,
    conns: &mut HashMap<String, Connect>,
) -> Result<Vec<Keyed>> {
    let mut values: HashMap<(String, SecretId), Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    let read = (|| {
        for r in chain(rec, find) {
            for d in &r.disks {
                let Some(e) = &d.encryption else { continue };
                let k = (r.uri.clone(), e.secret.clone());
                if !values.contains_key(&k) {
                    if !conns.contains_key(&r.uri) {
                        conns.insert(r.uri.clone(), libvirt::open_connection(&r.uri)?);
                    }
                    let v = secret::passphrase(&conns[&r.uri], &e.secret)
                        .map_err(|err| about(err, &r.uuid, &d.name))?;
                    values.insert(k.clone(), v);
                }
                out.push(Keyed {
                    path: d.target.clone(),
                    uri: r.uri.clone(),
                    secret: e.secret.clone(),
                    value: values[&k].clone(),
                    backup: r.uuid,
                    disk: d.name.clone(),
                });
            }
        }
        Ok(())
    })();
    for v in values.values_mut() {
        v.fill(0);
    }
    match read {
        Ok(()) => Ok(out),
        Err(e) => {
            wipe(out);
            Err(e)
        }
    }
}

/// `err` about the key of `backup`'s disk `disk`.
fn about(mut err: Error, backup: &Uuid, disk: &str) -> Error {
    err.message = format!(
        "the key of backup '{backup}' (disk '{disk}'): {}",
        err.message
    );
    err
}

fn wipe(list: Vec<Keyed>) {
    for mut k in list {
        k.value.fill(0);
    }
}

/// Lend the readers the passphrases of the encrypted images of `rec` and
/// its ancestors, read from libvirt; nothing (and no connection) when
/// none is encrypted. A missing secret is VIR_ERR_NO_SECRET.
pub(crate) fn lend_chain(
    rec: &BackupRecord,
    find: &dyn Fn(&Uuid) -> Option<BackupRecord>,
) -> Result<Lent> {
    let list = read_chain(rec, find, &mut HashMap::new())?;
    Ok(keys::lend(
        list.into_iter().map(|k| (k.path, k.value)).collect(),
    ))
}

/// [`lend_chain`], for images QEMU opens too (an instant restore's domain,
/// the daemon of an export), a key QEMU cannot take refused
/// (VIR_ERR_CONFIG_UNSUPPORTED): QEMU reads a LUKS passphrase only as
/// UTF-8 text without NUL, whatever hands it over. With `for_domain`,
/// also each encrypted image's secret as a uuid, for the domain
/// definition that names it (see `secret::uuid_for_disk`).
pub(crate) fn lend_chain_for_qemu(
    rec: &BackupRecord,
    find: &dyn Fn(&Uuid) -> Option<BackupRecord>,
    for_domain: bool,
) -> Result<(Lent, HashMap<PathBuf, Uuid>)> {
    let mut conns = HashMap::new();
    let list = read_chain(rec, find, &mut conns)?;
    let mut uuids = HashMap::new();
    let checked = list.iter().try_for_each(|k| {
        if std::str::from_utf8(&k.value).is_err() || k.value.contains(&0) {
            return Err(about(
                Error::config_unsupported(
                    "QEMU takes a LUKS passphrase only as UTF-8 text without NUL bytes; \
                     this one is binary (the backup reads here, but QEMU cannot open it)",
                ),
                &k.backup,
                &k.disk,
            ));
        }
        if for_domain {
            let u = secret::uuid_for_disk(&conns[&k.uri], &k.secret)
                .map_err(|e| about(e, &k.backup, &k.disk))?;
            uuids.insert(k.path.clone(), u);
        }
        Ok(())
    });
    if let Err(e) = checked {
        wipe(list);
        return Err(e);
    }
    log::debug!(
        "{} encrypted image(s) in the chain of backup '{}'",
        list.len(),
        rec.uuid
    );
    let lent = keys::lend(list.into_iter().map(|k| (k.path, k.value)).collect());
    Ok((lent, uuids))
}
