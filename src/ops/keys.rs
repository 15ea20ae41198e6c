//! The keys of encrypted backups: each disk's libvirt secret (its id in
//! the record) read again through libvirt, on a connection to the
//! record's URI, whenever a backup's images are read or written.

use std::collections::HashMap;

use uuid::Uuid;

use crate::error::Result;
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

/// Lend the readers the passphrases of the encrypted images of `rec` and
/// its ancestors, read from libvirt; nothing (and no connection) when
/// none is encrypted. A missing secret is VIR_ERR_NO_SECRET.
pub(crate) fn lend_chain(
    rec: &BackupRecord,
    find: &dyn Fn(&Uuid) -> Option<BackupRecord>,
) -> Result<Lent> {
    let mut conns = HashMap::new();
    let mut values: HashMap<(String, SecretId), Vec<u8>> = HashMap::new();
    let mut lent = Vec::new();
    for r in chain(rec, find) {
        for d in &r.disks {
            let Some(e) = &d.encryption else { continue };
            let k = (r.uri.clone(), e.secret.clone());
            if !values.contains_key(&k) {
                if !conns.contains_key(&r.uri) {
                    conns.insert(r.uri.clone(), libvirt::open_connection(&r.uri)?);
                }
                let v = secret::passphrase(&conns[&r.uri], &e.secret).map_err(|mut err| {
                    err.message = format!(
                        "the key of backup '{}' (disk '{}'): {}",
                        r.uuid, d.name, err.message
                    );
                    err
                })?;
                values.insert(k.clone(), v);
            }
            lent.push((d.target.clone(), values[&k].clone()));
        }
    }
    for v in values.values_mut() {
        v.fill(0);
    }
    Ok(keys::lend(lent))
}
