//! The libvirt adapter: everything the core asks of a domain. Most of it goes
//! through the `virt` crate's safe wrappers; what `virt` 0.5 does not wrap
//! goes through raw `virt::sys` calls, each `unsafe` block with its SAFETY
//! note: `silence` (a connection's error handler), and the second
//! `impl DomainRef` block: `virDomainBackupBegin`, the job statistics (read
//! by name, for the job's error message the crate's `JobStats` lacks),
//! `virDomainAbortJob`, `virDomainFSFreeze`/`Thaw` and the checkpoint calls.

use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;

use crate::error::{Error, ErrorCode, Result};

/// libvirt's `VIR_DOMAIN_XML_SECURE`: the saved definition keeps secrets so a
/// restored domain is the same machine.
use virt::sys::VIR_DOMAIN_XML_SECURE;

/// The flags of libvirt's own `virDomainUndefineFlags` (its
/// `virDomainUndefineFlagsValues`), carried from the caller to libvirt
/// unread: the library only adds the ones its own backups need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UndefineFlags(virt::sys::virDomainUndefineFlagsValues);

impl UndefineFlags {
    /// A caller's libvirt flags, as given to `virDomainUndefineFlags`.
    pub fn from_libvirt(flags: virt::sys::virDomainUndefineFlagsValues) -> Self {
        UndefineFlags(flags)
    }

    /// Also remove the metadata of the domain's checkpoints.
    pub fn with_checkpoints_metadata(self) -> Self {
        UndefineFlags(self.0 | virt::sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    }
}

/// A domain handle the library holds a reference on. Clones share it: a
/// listing hands one to each of thousands of backups, and each libvirt
/// reference costs a call into libvirt.
#[derive(Clone, Debug)]
pub struct DomainRef {
    dom: std::sync::Arc<Domain>,
}

impl DomainRef {
    /// Take over a handle, the reference it holds included.
    pub fn new(dom: Domain) -> Self {
        DomainRef {
            dom: std::sync::Arc::new(dom),
        }
    }

    /// The wrapped handle, for the C boundary that hands it back to callers.
    pub fn domain(&self) -> &Domain {
        &self.dom
    }

    /// The domain's UUID.
    pub fn uuid(&self) -> Result<Uuid> {
        let s = self.dom.uuid_string()?;
        Uuid::parse_str(&s)
            .map_err(|_| Error::internal(format!("libvirt returned a bad uuid '{s}'")))
    }

    /// The domain's name.
    pub fn name(&self) -> Result<String> {
        Ok(self.dom.name()?)
    }

    /// The current definition, secrets included.
    pub fn xml(&self) -> Result<String> {
        Ok(self.dom.xml_desc(VIR_DOMAIN_XML_SECURE)?)
    }

    /// Whether the domain is running.
    pub fn is_active(&self) -> Result<bool> {
        Ok(self.dom.is_active()?)
    }

    /// The URI of the domain's connection.
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

    /// `virDomainUndefineFlags`.
    pub fn undefine(&self, flags: UndefineFlags) -> Result<()> {
        Ok(self.dom.undefine_flags(flags.0)?)
    }

    /// Start the (persistent, shut-off) domain.
    pub fn start(&self) -> Result<()> {
        self.dom.create()?;
        Ok(())
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
    lookup_domain(&open_connection(uri)?, uri, uuid)
}

/// The domain `uuid` on `conn` (opened from `uri`): `VIR_ERR_NO_DOMAIN`
/// when there is none.
pub fn lookup_domain(conn: &Connect, uri: &str, uuid: &Uuid) -> Result<DomainRef> {
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

/// Connections of the library's own, opened once per URI: for finding
/// many domains again (a listing of the whole catalog).
#[derive(Default)]
pub struct Connections(std::collections::HashMap<String, std::result::Result<Connect, Error>>);

impl Connections {
    /// The domain `uuid` on `uri`: `VIR_ERR_NO_DOMAIN` when there is none
    /// there, the connection's error when `uri` cannot be reached.
    pub fn domain(&mut self, uri: &str, uuid: &Uuid) -> Result<DomainRef> {
        let conn = (self.0.entry(uri.to_string())).or_insert_with(|| open_connection(uri));
        match conn {
            Ok(c) => lookup_domain(c, uri, uuid),
            Err(e) => Err(e.clone()),
        }
    }
}

/// What `virDomainGetJobStats` says about a domain's job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobInfo {
    /// A `virDomainJobType`: 0 none, 1/2 running, 3 completed, 4 failed, 5 cancelled.
    pub kind: i32,
    /// A `virDomainJobOperation` (9 is a backup), when libvirt reports one.
    pub operation: Option<i32>,
    /// Bytes the job has to copy (disk figures, else data figures; 0 if unknown).
    pub total: u64,
    /// Bytes the job has copied so far.
    pub processed: u64,
    /// The job's error message, when libvirt gives one.
    pub error: Option<String>,
}

impl JobInfo {
    /// Whether the job is still running (`kind` 1 or 2).
    pub fn is_active(&self) -> bool {
        matches!(self.kind, 1 | 2)
    }
}

/// A libvirt call's result: the last libvirt error when it returned -1 or NULL.
fn check(rc: i32) -> Result<i32> {
    if rc < 0 {
        return Err(virt::error::Error::last_error().into());
    }
    Ok(rc)
}

fn c_string(s: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| Error::invalid_arg("string contains a NUL byte"))
}

/// Take over a string libvirt allocated.
///
/// SAFETY: `p` is NULL or a NUL-terminated string from libvirt's allocator.
unsafe fn owned_string(p: *mut std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: per the function's contract.
    let s = unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by libvirt with malloc.
    unsafe { libc::free(p.cast()) };
    Some(s)
}

/// The backup, checkpoint and job calls the `virt` crate does not wrap.
impl DomainRef {
    fn ptr(&self) -> virt::sys::virDomainPtr {
        // SAFETY: the pointer stays valid while `self` holds its reference.
        unsafe { self.dom.as_ptr() }
    }

    /// `virDomainBackupBegin`.
    pub fn backup_begin(
        &self,
        backup_xml: &str,
        checkpoint_xml: Option<&str>,
        flags: virt::sys::virDomainBackupBeginFlags,
    ) -> Result<()> {
        let b = c_string(backup_xml)?;
        let c = checkpoint_xml.map(c_string).transpose()?;
        // SAFETY: valid domain and NUL-terminated strings that outlive the call.
        let rc = unsafe {
            virt::sys::virDomainBackupBegin(
                self.ptr(),
                b.as_ptr(),
                c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                flags,
            )
        };
        check(rc).map(|_| ())
    }

    /// `virDomainBackupGetXMLDesc`: the document of the domain's running
    /// backup job.
    pub fn backup_xml(&self) -> Result<String> {
        // SAFETY: valid domain; the result is a string libvirt allocated.
        let p = unsafe { virt::sys::virDomainBackupGetXMLDesc(self.ptr(), 0) };
        // SAFETY: NULL or a NUL-terminated string from libvirt's allocator.
        unsafe { owned_string(p) }.ok_or_else(|| virt::error::Error::last_error().into())
    }

    /// `virDomainGetJobStats` of the current job, or of the last completed
    /// one with `completed`. The `virt` crate's own wrapper is unsound when
    /// no job runs, hence this one.
    pub fn job_info(&self, completed: bool) -> Result<JobInfo> {
        let mut kind = 0;
        let mut params: virt::sys::virTypedParameterPtr = std::ptr::null_mut();
        let mut n = 0;
        let flags = if completed {
            virt::sys::VIR_DOMAIN_JOB_STATS_COMPLETED
        } else {
            0
        };
        // SAFETY: valid domain and out-pointers.
        check(unsafe {
            virt::sys::virDomainGetJobStats(self.ptr(), &mut kind, &mut params, &mut n, flags)
        })?;
        let mut info = JobInfo {
            kind,
            ..JobInfo::default()
        };
        let ull = |name: &std::ffi::CStr| -> Option<u64> {
            let mut v = 0u64;
            // SAFETY: `params`/`n` as libvirt returned them.
            let rc =
                unsafe { virt::sys::virTypedParamsGetULLong(params, n, name.as_ptr(), &mut v) };
            (rc == 1).then_some(v)
        };
        info.total = ull(virt::sys::VIR_DOMAIN_JOB_DISK_TOTAL)
            .or_else(|| ull(virt::sys::VIR_DOMAIN_JOB_DATA_TOTAL))
            .unwrap_or(0);
        info.processed = ull(virt::sys::VIR_DOMAIN_JOB_DISK_PROCESSED)
            .or_else(|| ull(virt::sys::VIR_DOMAIN_JOB_DATA_PROCESSED))
            .unwrap_or(0);
        let mut op = 0;
        // SAFETY: as above.
        if unsafe {
            virt::sys::virTypedParamsGetInt(
                params,
                n,
                virt::sys::VIR_DOMAIN_JOB_OPERATION.as_ptr(),
                &mut op,
            )
        } == 1
        {
            info.operation = Some(op);
        }
        let mut msg: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: as above; the string stays owned by `params`.
        if unsafe {
            virt::sys::virTypedParamsGetString(
                params,
                n,
                virt::sys::VIR_DOMAIN_JOB_ERRMSG.as_ptr(),
                &mut msg,
            )
        } == 1
            && !msg.is_null()
        {
            // SAFETY: a NUL-terminated string inside `params`.
            info.error = Some(
                unsafe { std::ffi::CStr::from_ptr(msg) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        if !params.is_null() {
            // SAFETY: frees what virDomainGetJobStats allocated.
            unsafe { virt::sys::virTypedParamsFree(params, n) };
        }
        Ok(info)
    }

    /// `virDomainAbortJob`.
    pub fn abort_job(&self) -> Result<()> {
        // SAFETY: valid domain.
        check(unsafe { virt::sys::virDomainAbortJob(self.ptr()) }).map(|_| ())
    }

    /// Freeze (true) or thaw the guest's file systems through its agent.
    pub fn fs_freeze(&self, freeze: bool) -> Result<()> {
        // SAFETY: valid domain, no mount point list.
        let rc = unsafe {
            if freeze {
                virt::sys::virDomainFSFreeze(self.ptr(), std::ptr::null_mut(), 0, 0)
            } else {
                virt::sys::virDomainFSThaw(self.ptr(), std::ptr::null_mut(), 0, 0)
            }
        };
        check(rc).map(|_| ())
    }

    /// The domain's checkpoints: name and XML. Listing (rather than looking
    /// one up by name) raises no libvirt error for a missing one.
    pub fn checkpoints(&self) -> Result<Vec<(String, String)>> {
        let mut list: *mut virt::sys::virDomainCheckpointPtr = std::ptr::null_mut();
        // SAFETY: valid domain and out-pointer.
        let n = check(unsafe { virt::sys::virDomainListAllCheckpoints(self.ptr(), &mut list, 0) })?;
        let mut out = Vec::new();
        for i in 0..n as usize {
            // SAFETY: libvirt returned `n` valid checkpoint pointers.
            let cp = unsafe { *list.add(i) };
            // SAFETY: valid checkpoint; the name is owned by it.
            let name =
                unsafe { std::ffi::CStr::from_ptr(virt::sys::virDomainCheckpointGetName(cp)) }
                    .to_string_lossy()
                    .into_owned();
            // SAFETY: valid checkpoint; the XML is ours to free.
            let xml = unsafe { owned_string(virt::sys::virDomainCheckpointGetXMLDesc(cp, 0)) };
            // SAFETY: each entry holds one reference.
            unsafe { virt::sys::virDomainCheckpointFree(cp) };
            out.push((name, xml.unwrap_or_default()));
        }
        if !list.is_null() {
            // SAFETY: the array itself was malloc'd by libvirt.
            unsafe { libc::free(list.cast()) };
        }
        Ok(out)
    }

    /// A checkpoint's XML with `VIR_DOMAIN_CHECKPOINT_XML_SIZE`: QEMU sizes
    /// each disk's changes since the checkpoint, which fails if a bitmap is
    /// missing or broken.
    pub fn checkpoint_sizes(&self, name: &str) -> Result<String> {
        let n = c_string(name)?;
        // SAFETY: valid domain and name.
        let cp = unsafe { virt::sys::virDomainCheckpointLookupByName(self.ptr(), n.as_ptr(), 0) };
        if cp.is_null() {
            return Err(virt::error::Error::last_error().into());
        }
        // SAFETY: valid checkpoint; the XML is ours to free.
        let xml = unsafe {
            owned_string(virt::sys::virDomainCheckpointGetXMLDesc(
                cp,
                virt::sys::VIR_DOMAIN_CHECKPOINT_XML_SIZE,
            ))
        };
        let result = xml.ok_or_else(|| virt::error::Error::last_error().into());
        // SAFETY: the reference the lookup gave.
        unsafe { virt::sys::virDomainCheckpointFree(cp) };
        result
    }

    /// Delete a checkpoint by name (`metadata_only`: forget it, keep bitmaps).
    pub fn delete_checkpoint(&self, name: &str, metadata_only: bool) -> Result<()> {
        let n = c_string(name)?;
        // SAFETY: valid domain and name.
        let cp = unsafe { virt::sys::virDomainCheckpointLookupByName(self.ptr(), n.as_ptr(), 0) };
        if cp.is_null() {
            return Err(virt::error::Error::last_error().into());
        }
        let flags = if metadata_only {
            virt::sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
        } else {
            0
        };
        // SAFETY: valid checkpoint.
        let rc = unsafe { virt::sys::virDomainCheckpointDelete(cp, flags) };
        let result = check(rc).map(|_| ());
        // SAFETY: the reference the lookup gave.
        unsafe { virt::sys::virDomainCheckpointFree(cp) };
        result
    }
}
