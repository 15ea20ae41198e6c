//! The libvirt adapter: everything the core asks of a domain, through the
//! `virt` crate's safe wrappers.

use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;

use crate::error::{Error, ErrorCode, Result};

/// libvirt's `VIR_DOMAIN_XML_SECURE`: the saved definition keeps secrets so a
/// restored domain is the same machine.
use crate::flags::bits::VIR_DOMAIN_XML_SECURE;

/// A domain handle the library holds a reference on.
#[derive(Clone, Debug)]
pub struct DomainRef {
    dom: Domain,
}

impl DomainRef {
    pub fn new(dom: Domain) -> Self {
        DomainRef { dom }
    }

    /// The wrapped handle, for the C boundary that hands it back to callers.
    pub fn domain(&self) -> &Domain {
        &self.dom
    }

    pub fn uuid(&self) -> Result<Uuid> {
        let s = self.dom.uuid_string()?;
        Uuid::parse_str(&s)
            .map_err(|_| Error::internal(format!("libvirt returned a bad uuid '{s}'")))
    }

    pub fn name(&self) -> Result<String> {
        Ok(self.dom.name()?)
    }

    /// The current definition, secrets included.
    pub fn xml(&self) -> Result<String> {
        Ok(self.dom.xml_desc(VIR_DOMAIN_XML_SECURE)?)
    }

    pub fn is_active(&self) -> Result<bool> {
        Ok(self.dom.is_active()?)
    }

    pub fn uri(&self) -> Result<String> {
        Ok(self.dom.connect()?.uri()?)
    }

    /// The hypervisor driver name, e.g. "Test" or "QEMU".
    pub fn driver(&self) -> Result<String> {
        Ok(self.dom.connect()?.driver_type()?)
    }

    /// Whether the library copies this domain's images itself, given whether
    /// it is `active`: always for an inactive domain, and for a running one on
    /// drivers that have no backup job of their own (the test driver's guests
    /// never write to their files).
    pub fn images_are_quiet(&self, active: bool) -> Result<bool> {
        Ok(!active || self.driver()?.eq_ignore_ascii_case("test"))
    }

    /// The connection the domain was obtained on.
    pub fn connect(&self) -> Result<Connect> {
        Ok(self.dom.connect()?)
    }

    /// Replace the persistent definition (same name and UUID).
    pub fn redefine(&self, xml: &str) -> Result<()> {
        Connect::define_domain_xml(&self.connect()?, xml)?;
        Ok(())
    }

    pub fn undefine(&self, flags: u32) -> Result<()> {
        Ok(self.dom.undefine_flags(flags)?)
    }
}

/// Keep libvirt from printing errors raised on a connection the library
/// opened itself: they are reported through our last error instead. The
/// caller's own connections and global handler are left alone.
pub(crate) fn silence(conn: &Connect) {
    extern "C" fn ignore(_data: *mut std::ffi::c_void, _err: virt::sys::virErrorPtr) {}
    // SAFETY: a valid connection; the handler is a plain function.
    unsafe { virt::sys::virConnSetErrorFunc(conn.as_ptr(), std::ptr::null_mut(), Some(ignore)) };
}

/// Open a connection of the library's own, its errors silenced.
pub fn open_connection(uri: &str) -> Result<Connect> {
    let conn = Connect::open(Some(uri))?;
    silence(&conn);
    Ok(conn)
}

/// Whether a domain of this name exists on the connection.
pub fn domain_name_taken(conn: &Connect, name: &str) -> Result<bool> {
    Ok(conn
        .list_all_domains(0)?
        .iter()
        .any(|d| d.name().is_ok_and(|n| n == name)))
}

/// Define a new persistent domain.
pub fn define_domain(conn: &Connect, xml: &str) -> Result<DomainRef> {
    Ok(DomainRef::new(conn.define_domain_xml(xml)?))
}

/// Find a domain again from a process that has only the URI and UUID.
pub fn open_domain(uri: &str, uuid: &Uuid) -> Result<DomainRef> {
    let conn = open_connection(uri)?;
    match conn.lookup_domain_by_uuid_string(&uuid.to_string()) {
        Ok(d) => Ok(DomainRef::new(d)),
        Err(e) => {
            let mut err = Error::from(e);
            if err.code == ErrorCode::NoDomain as i32 || err.message.is_empty() {
                err = Error::new(
                    ErrorCode::NoDomain,
                    format!("Domain not found: no domain with matching uuid '{uuid}' on '{uri}'"),
                );
            }
            Err(err)
        }
    }
}
