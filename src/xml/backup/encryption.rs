//! `<encryption format='luks'><secret type='passphrase' uuid='...'/>`
//! (or `usage='...'`) of a `<disk>` or of `<disks>`: which libvirt secret
//! holds a backup's passphrase. Only the secret's id is ever kept; its
//! value stays in libvirt.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::xml::backup::vocabulary::parse_uuid;
use crate::xml::dom::Element;

/// The libvirt secret a backup's passphrase is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretId {
    /// `<secret uuid='...'/>`.
    Uuid(Uuid),
    /// `<secret usage='...'/>`: the secret's usage id (a volume's path,
    /// a name).
    Usage(String),
}

/// `<encryption format='luks'>` and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// Where the passphrase comes from.
    pub secret: SecretId,
}

impl Encryption {
    /// The element as records and GetXMLDesc show it (the secret's id).
    pub fn to_element(&self) -> Element {
        let secret = Element::new("secret").with_attr("type", "passphrase");
        let secret = match &self.secret {
            SecretId::Uuid(u) => secret.with_attr("uuid", u.to_string()),
            SecretId::Usage(u) => secret.with_attr("usage", u),
        };
        Element::new("encryption")
            .with_attr("format", "luks")
            .with_child(secret)
    }
}

/// The `<encryption>` child of `el` (a `<disk>` or `<disks>`), if any.
pub(super) fn parse_encryption(el: &Element) -> Result<Option<Encryption>> {
    let Some(e) = el.child("encryption") else {
        return Ok(None);
    };
    match e.attr("format") {
        Some("luks") => {}
        Some(f) => {
            return Err(Error::config_unsupported(format!(
                "<encryption format='{f}'>: backups are encrypted with 'luks' only"
            )));
        }
        None => return Err(Error::xml("<encryption> needs format='luks'")),
    }
    let s = e
        .child("secret")
        .ok_or_else(|| Error::xml("<encryption> needs a <secret type='passphrase'/>"))?;
    if s.attr("type") != Some("passphrase") {
        return Err(Error::xml(
            "<encryption><secret> must be of type='passphrase'",
        ));
    }
    let secret = match (s.attr("uuid"), s.attr("usage")) {
        (Some(u), None) => SecretId::Uuid(parse_uuid(u)?),
        (None, Some(u)) if !u.is_empty() => SecretId::Usage(u.to_string()),
        _ => {
            return Err(Error::xml(
                "<encryption><secret> names its secret by uuid or by usage (one of them)",
            ));
        }
    };
    Ok(Some(Encryption { secret }))
}
