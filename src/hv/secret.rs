//! The passphrase of an encrypted backup: the value of a libvirt secret,
//! looked up by uuid or by usage id on the caller's connection. The value
//! is never stored by the library; records keep the secret's id.

use std::ffi::CStr;

use virt::connect::Connect;
use virt::secret::Secret;

use crate::error::{Error, ErrorCode, Result};
use crate::xml::backup::SecretId;

/// How a secret is named in messages.
fn named(id: &SecretId) -> String {
    match id {
        SecretId::Uuid(u) => format!("uuid '{u}'"),
        SecretId::Usage(u) => format!("usage '{u}'"),
    }
}

/// The usage id of `secret` (virt's `usage_id` frees the string libvirt
/// keeps: not used).
fn usage_id(secret: &Secret) -> Option<String> {
    // SAFETY: a valid secret; the string returned belongs to it and is
    // only copied here, while `secret` lives.
    let p = unsafe { virt::sys::virSecretGetUsageID(secret.as_ptr()) };
    match p.is_null() {
        true => None,
        // SAFETY: a NUL-terminated string of the secret's (checked above).
        false => Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()),
    }
}

/// The value of `secret`, its buffer wiped and freed once copied (virt's
/// `value` leaves it in memory).
fn value(secret: &Secret) -> std::result::Result<Vec<u8>, virt::error::Error> {
    let mut size: usize = 0;
    // SAFETY: a valid secret and a valid place for the size.
    let p = unsafe { virt::sys::virSecretGetValue(secret.as_ptr(), &mut size, 0) };
    if p.is_null() {
        return Err(virt::error::Error::last_error());
    }
    // SAFETY: libvirt returned `size` bytes at `p`, ours to free.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
    let v = bytes.to_vec();
    bytes.fill(0);
    // SAFETY: allocated by libvirt with malloc, freed once, not used after.
    unsafe { libc::free(p.cast()) };
    Ok(v)
}

/// The secret `id` names on `conn`: VIR_ERR_NO_SECRET when there is none.
/// A usage id is matched whatever the secret's usage type.
fn lookup(conn: &Connect, id: &SecretId) -> Result<Secret> {
    let missing = |why: String| {
        Error::new(
            ErrorCode::NoSecret,
            format!("secret not found: no secret with {} ({why})", named(id)),
        )
    };
    match id {
        SecretId::Uuid(u) => conn
            .lookup_secret_by_uuid_string(&u.to_string())
            .map_err(|e| missing(e.message().to_string())),
        SecretId::Usage(usage) => conn
            .list_all_secrets(0)?
            .into_iter()
            .find(|s| usage_id(s).is_some_and(|u| &u == usage))
            .ok_or_else(|| missing("none has that usage id".into())),
    }
}

/// The value of the secret `id` names on `conn`: VIR_ERR_NO_SECRET when
/// there is no such secret or it has no value (an empty one counts as
/// none); libvirt's VIR_ERR_INVALID_SECRET for a private one, whose value
/// only libvirt reads. A usage id is matched whatever the secret's usage
/// type.
pub(crate) fn passphrase(conn: &Connect, id: &SecretId) -> Result<Vec<u8>> {
    let secret = lookup(conn, id)?;
    let value = value(&secret).map_err(|e| {
        let mut err = Error::from(e);
        err.message = match err.code == virt::sys::VIR_ERR_INVALID_SECRET as i32 {
            // Its value reads only inside libvirt: a backup's key must be
            // readable by its owner (`virsh secret-get-value`).
            true => format!(
                "secret {} is private: a backup's key must be a secret defined with \
                 private='no' ({})",
                named(id),
                err.message
            ),
            false => {
                err.code = ErrorCode::NoSecret as i32;
                format!("secret {}: no value: {}", named(id), err.message)
            }
        };
        err
    })?;
    match value.is_empty() {
        true => Err(Error::new(
            ErrorCode::NoSecret,
            format!(
                "secret not found: no secret with {} (its value is empty)",
                named(id)
            ),
        )),
        false => Ok(value),
    }
}

/// The uuid of the secret `id` names on `conn`, as a domain definition
/// names it for QEMU: libvirt looks a disk's secret up as a volume
/// secret, and refuses one of another usage type when the domain starts,
/// so it is refused here first (VIR_ERR_CONFIG_UNSUPPORTED); a usage id
/// (which the library matches whatever the usage type) becomes the uuid.
pub(crate) fn uuid_for_disk(conn: &Connect, id: &SecretId) -> Result<uuid::Uuid> {
    let secret = lookup(conn, id)?;
    let kind = secret.usage_type()?;
    if kind != virt::sys::VIR_SECRET_USAGE_TYPE_NONE
        && kind != virt::sys::VIR_SECRET_USAGE_TYPE_VOLUME
    {
        return Err(Error::config_unsupported(format!(
            "secret {} is not a volume secret (usage type {kind}): libvirt gives QEMU a \
             disk's key only from a secret of usage type 'volume' (or none)",
            named(id)
        )));
    }
    let u = secret.uuid_string()?;
    ::log::debug!("secret {} is uuid {u} for QEMU", named(id));
    uuid::Uuid::parse_str(&u).map_err(|e| Error::internal(format!("secret uuid '{u}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On qemu:///system's secret driver where it answers (the test
    /// driver has none): found by uuid and by usage, with its value; a
    /// missing one, or one without a value, is VIR_ERR_NO_SECRET.
    #[test]
    fn lookup_by_uuid_and_usage() {
        let Ok(conn) = Connect::open(Some("qemu:///system")) else {
            return;
        };
        crate::hv::libvirt::silence(&conn);
        let uuid = uuid::Uuid::new_v4();
        let usage = format!("backup-key-{uuid}");
        let xml = |private: &str| {
            format!(
                "<secret ephemeral='yes' private='{private}'><uuid>{uuid}</uuid>\
             <usage type='volume'><volume>{usage}</volume></usage></secret>"
            )
        };
        let locked = conn.define_secret_xml(&xml("yes"), 0).unwrap();
        locked.set_value(b"k3y", 0).unwrap();
        let e = passphrase(&conn, &SecretId::Uuid(uuid)).unwrap_err();
        assert!(e.message.contains("private='no'"), "{}", e.message);
        locked.undefine().unwrap();
        let s = conn.define_secret_xml(&xml("no"), 0).unwrap();
        let none = passphrase(&conn, &SecretId::Uuid(uuid)).unwrap_err();
        assert!(none.is(ErrorCode::NoSecret), "{}", none.message);
        s.set_value(b"k3y", 0).unwrap();
        assert_eq!(passphrase(&conn, &SecretId::Uuid(uuid)).unwrap(), b"k3y");
        assert_eq!(
            passphrase(&conn, &SecretId::Usage(usage.clone())).unwrap(),
            b"k3y"
        );
        s.undefine().unwrap();
        for id in [SecretId::Uuid(uuid), SecretId::Usage(usage)] {
            let e = passphrase(&conn, &id).unwrap_err();
            assert!(e.is(ErrorCode::NoSecret), "{}", e.message);
            assert!(e.message.contains("secret not found"), "{}", e.message);
        }
    }
}
