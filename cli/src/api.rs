//! The library's public C API, as declared in <libvirt-backup/libvirt-backup.h>,
//! and thin safe wrappers. Nothing here reaches inside the library: the
//! command only does what a C, Python or Go program can do.

use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::ptr;

use virt::domain::Domain;
use virt::sys;

#[repr(C)]
pub(crate) struct VirDomainBackup {
    _opaque: [u8; 0],
}
pub(crate) type BackupPtr = *mut VirDomainBackup;

pub(crate) const CREATE_QUIESCE: u32 = 1 << 0;
pub(crate) const CREATE_NO_FALLBACK: u32 = 1 << 1;
pub(crate) const LIST_FULL: u32 = 1 << 0;
pub(crate) const LIST_LATEST: u32 = 1 << 1;
pub(crate) const LIST_INCREMENTAL: u32 = 1 << 2;
pub(crate) const LIST_LEAVES: u32 = 1 << 3;
pub(crate) const RESTORE_NEW_DOMAIN: u32 = 1 << 0;
pub(crate) const RESTORE_REWRITE: u32 = 1 << 1;
pub(crate) const DELETE_ALL_CHILDREN: u32 = 1 << 1;
pub(crate) const DELETE_METADATA_ONLY: u32 = 1 << 2;
pub(crate) const FINISH_CHECK: u32 = 1 << 1;
pub(crate) const AFFECT_LIVE: u32 = 1 << 0;
pub(crate) const AFFECT_CONFIG: u32 = 1 << 1;

unsafe extern "C" {
    fn virDomainBackupCreateXML(d: sys::virDomainPtr, xml: *const c_char, f: c_uint) -> BackupPtr;
    fn virDomainBackupStartUnmanaged(
        d: sys::virDomainPtr,
        xml: *const c_char,
        f: c_uint,
    ) -> BackupPtr;
    fn virDomainBackupList(d: sys::virDomainPtr, out: *mut *mut BackupPtr, f: c_uint) -> c_int;
    fn virDomainBackupLookupByUUID(uuid: *const c_char, f: c_uint) -> BackupPtr;
    fn virDomainBackupObjGetXMLDesc(b: BackupPtr, f: c_uint) -> *mut c_char;
    fn virDomainBackupFree(b: BackupPtr) -> c_int;
    fn virDomainBackupDelete(b: BackupPtr, f: c_uint) -> c_int;
    fn virDomainSetDefaultTarget(d: sys::virDomainPtr, xml: *const c_char, f: c_uint) -> c_int;
    fn virDomainBackupGetLastErrorMessage() -> *const c_char;
    fn virDomainBackupGetLastErrorCode() -> c_int;
    fn virDomainBackupFinishJob(b: BackupPtr, f: c_uint) -> c_int;
    fn virDomainBackupAbortJob(b: BackupPtr, f: c_uint) -> c_int;
    fn virDomainBackupGetParameters(
        b: BackupPtr,
        p: sys::virTypedParameterPtr,
        n: *mut c_int,
        f: c_uint,
    ) -> c_int;
    fn virDomainBackupRestore(xml: *const c_char, f: c_uint) -> c_int;
    fn virDomainBackupVerify(b: BackupPtr, f: c_uint) -> c_int;
    fn virDomainBackupGetUUIDString(b: BackupPtr, buf: *mut c_char) -> c_int;
}

/// libvirt's virErrorNumber for a bad argument (VIR_ERR_INVALID_ARG).
pub(crate) const ERR_INVALID_ARG: i32 = 8;
/// libvirt's virErrorNumber for a backup that does not exist
/// (VIR_ERR_NO_DOMAIN_BACKUP, as the library reports it).
pub(crate) const ERR_NO_DOMAIN_BACKUP: i32 = 104;
/// The fewest characters of a UUID prefix `Backup::lookup` takes.
pub(crate) const MIN_PREFIX: usize = 4;

/// Whether `s` can be (the start of) a backup UUID as the command prints
/// it: hexadecimal digits and dashes, at least `MIN_PREFIX` of them.
pub(crate) fn is_uuid_prefix(s: &str) -> bool {
    s.len() >= MIN_PREFIX && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
}

unsafe extern "C" {
    fn virDomainBackupGetJobHistory(d: sys::virDomainPtr, f: c_uint) -> *mut c_char;
}

pub(crate) const JOB_HISTORY_FAILED: u32 = 1 << 0;

/// The catalog's job history document (every domain's when `dom` is None).
pub(crate) fn job_history(dom: Option<&Domain>, flags: u32) -> Result<String> {
    // SAFETY: `d` is null or the live handle of a domain borrowed for the
    // call; a null result is checked.
    let p = unsafe {
        let d = dom.map_or(ptr::null_mut(), |d| d.as_ptr());
        virDomainBackupGetJobHistory(d, flags)
    };
    if p.is_null() {
        return Err(last_error());
    }
    // SAFETY: not null, a NUL-terminated string the library malloc'd for
    // us; copied out before it is freed.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: malloc'd by the library for the caller to free, once; not
    // read after this.
    unsafe { libc::free(p as *mut libc::c_void) };
    Ok(s)
}

/// The library's last error on this thread.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub(crate) type Result<T> = std::result::Result<T, ApiError>;

pub(crate) fn last_error() -> ApiError {
    // SAFETY: takes no argument; the message is owned by the library, valid
    // until the next call on this thread.
    let msg = unsafe { virDomainBackupGetLastErrorMessage() };
    let message = if msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: not null, a NUL-terminated string the library keeps until
        // its next call on this thread; copied out at once.
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    };
    ApiError {
        // SAFETY: takes no argument and returns a plain int.
        code: unsafe { virDomainBackupGetLastErrorCode() },
        message,
    }
}

pub(crate) fn err(message: impl Into<String>) -> ApiError {
    ApiError {
        code: 0,
        message: message.into(),
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| err("argument contains a NUL byte"))
}

fn check(rc: c_int) -> Result<c_int> {
    if rc < 0 { Err(last_error()) } else { Ok(rc) }
}

/// The one of `uuids` that starts with `prefix` (case aside): an error
/// when none does, or several (naming them).
pub(crate) fn pick_prefix(prefix: &str, uuids: &[&str]) -> Result<usize> {
    let want = prefix.to_ascii_lowercase();
    let found: Vec<usize> = (0..uuids.len())
        .filter(|&i| uuids[i].to_ascii_lowercase().starts_with(&want))
        .collect();
    match found[..] {
        [] => Err(ApiError {
            code: ERR_NO_DOMAIN_BACKUP,
            message: format!("no backup with UUID prefix '{prefix}'"),
        }),
        [i] => Ok(i),
        _ => {
            let mut names: Vec<&str> = found.iter().map(|&i| uuids[i]).collect();
            names.sort_unstable();
            Err(ApiError {
                code: ERR_INVALID_ARG,
                message: format!(
                    "UUID prefix '{prefix}' is ambiguous: it matches backups {}",
                    names.join(", ")
                ),
            })
        }
    }
}

/// One reference on a backup object, released on drop.
pub(crate) struct Backup(BackupPtr);

// SAFETY: the library's handles are thread-safe (API.md: "handles may be
// shared"), and `Backup` only passes its pointer to the library.
unsafe impl Send for Backup {}
// SAFETY: as for Send: every call on a shared handle is the library's to
// synchronize.
unsafe impl Sync for Backup {}

impl Drop for Backup {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a live handle holding the one reference this
        // `Backup` owns; it is released once, here, and never used again.
        unsafe { virDomainBackupFree(self.0) };
    }
}

fn wrap(p: BackupPtr) -> Result<Backup> {
    if p.is_null() {
        Err(last_error())
    } else {
        Ok(Backup(p))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Int(i32),
    UInt(u32),
    ULLong(u64),
    Bool(bool),
    Str(String),
}

impl Param {
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Param::Int(v) => Some(*v as u64),
            Param::UInt(v) => Some(*v as u64),
            Param::ULLong(v) => Some(*v),
            _ => None,
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Param::Int(v) => (*v).into(),
            Param::UInt(v) => (*v).into(),
            Param::ULLong(v) => (*v).into(),
            Param::Bool(v) => (*v).into(),
            Param::Str(v) => v.clone().into(),
        }
    }
}

impl Backup {
    pub(crate) fn create(dom: &Domain, xml: &str, flags: u32) -> Result<Backup> {
        let x = cstr(xml)?;
        // SAFETY: `dom` is a live virDomainPtr borrowed for the call and `x` a
        // NUL-terminated string that outlives it; a null result is checked.
        wrap(unsafe { virDomainBackupCreateXML(dom.as_ptr(), x.as_ptr(), flags) })
    }

    pub(crate) fn start_unmanaged(dom: &Domain, xml: &str) -> Result<Backup> {
        let x = cstr(xml)?;
        // SAFETY: as in `create`: a live domain and a C string that outlive
        // the call; a null result is checked.
        wrap(unsafe { virDomainBackupStartUnmanaged(dom.as_ptr(), x.as_ptr(), 0) })
    }

    /// The backup a UUID names, or the one backup of the catalog whose
    /// UUID starts with `uuid` (at least `MIN_PREFIX` hexadecimal digits,
    /// dashes as printed): an ambiguous prefix is refused, naming the
    /// backups it matches.
    pub(crate) fn lookup(uuid: &str) -> Result<Backup> {
        if uuid.len() >= 32 || !is_uuid_prefix(uuid) {
            return Self::lookup_uuid(uuid);
        }
        let mut all = Vec::new();
        for b in Self::list_all(0)? {
            let u = b.uuid()?;
            all.push((b, u));
        }
        let names: Vec<&str> = all.iter().map(|(_, u)| u.as_str()).collect();
        let i = pick_prefix(uuid, &names)?;
        Ok(all.swap_remove(i).0)
    }

    /// virDomainBackupLookupByUUID.
    fn lookup_uuid(uuid: &str) -> Result<Backup> {
        let u = cstr(uuid)?;
        // SAFETY: `u` is a NUL-terminated string that outlives the call; a
        // null result is checked.
        wrap(unsafe { virDomainBackupLookupByUUID(u.as_ptr(), 0) })
    }

    /// The backup's UUID in its canonical form (virDomainBackupGetUUIDString).
    pub(crate) fn uuid(&self) -> Result<String> {
        let mut buf = [0 as c_char; 37];
        // SAFETY: `self.0` is a live handle and `buf` the
        // VIR_UUID_STRING_BUFLEN bytes the library writes a NUL-terminated
        // string into.
        check(unsafe { virDomainBackupGetUUIDString(self.0, buf.as_mut_ptr()) })?;
        // SAFETY: on success `buf` holds a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        Ok(s.to_string_lossy().into_owned())
    }

    pub(crate) fn list(dom: &Domain, flags: u32) -> Result<Vec<Backup>> {
        // SAFETY: the pointer of a live domain, borrowed for the call.
        Self::list_of(unsafe { dom.as_ptr() }, flags)
    }

    /// Every backup of the catalog (virDomainBackupList with a NULL domain).
    pub(crate) fn list_all(flags: u32) -> Result<Vec<Backup>> {
        Self::list_of(ptr::null_mut(), flags)
    }

    fn list_of(dom: sys::virDomainPtr, flags: u32) -> Result<Vec<Backup>> {
        let mut arr: *mut BackupPtr = ptr::null_mut();
        // SAFETY: `dom` is a live virDomainPtr borrowed for the call (or
        // NULL: the whole catalog) and `arr` a valid place for the library
        // to store its array.
        let n = check(unsafe { virDomainBackupList(dom, &mut arr, flags) })?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: on success `arr` holds `n` handles, each a reference
            // handed to us; each goes into one `Backup` that frees it.
            out.push(Backup(unsafe { *arr.add(i) }));
        }
        // SAFETY: the array was malloc'd by the library for the caller to
        // free; its handles were moved out above and it is not read again.
        unsafe { libc::free(arr as *mut libc::c_void) };
        Ok(out)
    }

    pub(crate) fn xml(&self) -> Result<String> {
        // SAFETY: `self.0` is a live handle; a null result is checked.
        let p = unsafe { virDomainBackupObjGetXMLDesc(self.0, 0) };
        if p.is_null() {
            return Err(last_error());
        }
        // SAFETY: not null, a NUL-terminated string the library malloc'd for
        // us; copied out before it is freed.
        let s = unsafe { CStr::from_ptr(p) }.to_str().map(str::to_owned);
        // SAFETY: malloc'd by the library for the caller to free, once; not
        // read after this.
        unsafe { libc::free(p as *mut libc::c_void) };
        // Data the command reads (UUIDs, paths), not a message: never a
        // lossy copy.
        s.map_err(|_| err("the library returned a backup description that is not UTF-8"))
    }

    pub(crate) fn delete(&self, flags: u32) -> Result<()> {
        // SAFETY: `self.0` is a live handle; deleting leaves it valid to free.
        check(unsafe { virDomainBackupDelete(self.0, flags) }).map(drop)
    }

    pub(crate) fn finish(&self, flags: u32) -> Result<i32> {
        // SAFETY: `self.0` is a live handle.
        check(unsafe { virDomainBackupFinishJob(self.0, flags) })
    }

    pub(crate) fn abort(&self) -> Result<()> {
        // SAFETY: `self.0` is a live handle.
        check(unsafe { virDomainBackupAbortJob(self.0, 0) }).map(drop)
    }

    pub(crate) fn verify(&self) -> Result<()> {
        // SAFETY: `self.0` is a live handle.
        check(unsafe { virDomainBackupVerify(self.0, 0) }).map(drop)
    }

    pub(crate) fn parameters(&self) -> Result<Vec<(String, Param)>> {
        let mut n: c_int = 0;
        // SAFETY: `self.0` is a live handle; a null array asks only for the
        // count, written to `n`.
        check(unsafe { virDomainBackupGetParameters(self.0, ptr::null_mut(), &mut n, 0) })?;
        let mut params: Vec<sys::virTypedParameter> =
            // SAFETY: virTypedParameter is a plain C struct (bytes, ints, a
            // union of numbers and a pointer) for which all zeroes is valid.
            vec![unsafe { std::mem::zeroed() }; n as usize];
        // SAFETY: `params` has room for the `n` parameters the library was
        // asked for; it writes back how many it filled in `n`.
        check(unsafe { virDomainBackupGetParameters(self.0, params.as_mut_ptr(), &mut n, 0) })?;
        let mut out = Vec::new();
        for p in &params[..n as usize] {
            // SAFETY: the library fills `field` with a NUL-terminated name
            // within its fixed size.
            let name = unsafe { CStr::from_ptr(p.field.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: the union member read is the one `type_` names, and a
            // string parameter's `s` is a NUL-terminated string the library
            // allocated (freed by virTypedParamsClear below).
            let v = unsafe {
                match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => Param::Int(p.value.i),
                    sys::VIR_TYPED_PARAM_UINT => Param::UInt(p.value.ui),
                    sys::VIR_TYPED_PARAM_ULLONG => Param::ULLong(p.value.ul),
                    sys::VIR_TYPED_PARAM_BOOLEAN => Param::Bool(p.value.b != 0),
                    sys::VIR_TYPED_PARAM_STRING => {
                        Param::Str(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                    }
                    _ => continue,
                }
            };
            out.push((name, v));
        }
        // SAFETY: frees the strings of the `n` parameters the library filled,
        // once; `out` holds copies of them.
        unsafe { sys::virTypedParamsClear(params.as_mut_ptr(), n) };
        Ok(out)
    }
}

pub(crate) fn param<'a>(params: &'a [(String, Param)], name: &str) -> Option<&'a Param> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

pub(crate) fn restore(xml: &str, flags: u32) -> Result<()> {
    let x = cstr(xml)?;
    // SAFETY: `x` is a NUL-terminated string that outlives the call.
    check(unsafe { virDomainBackupRestore(x.as_ptr(), flags) }).map(drop)
}

pub(crate) fn set_default_target(dom: &Domain, xml: &str, flags: u32) -> Result<()> {
    let x = cstr(xml)?;
    // SAFETY: `dom` is a live virDomainPtr borrowed for the call and `x` a
    // NUL-terminated string that outlives it.
    check(unsafe { virDomainSetDefaultTarget(dom.as_ptr(), x.as_ptr(), flags) }).map(drop)
}

// Restore modes of API.md's EXTENSIONS.
pub(crate) const RESTORE_INSTANT: u32 = 1 << 2;
pub(crate) const RESTORE_START: u32 = 1 << 3;
pub(crate) const RESTORE_FILES_ONLY: u32 = 1 << 4;

unsafe extern "C" {
    fn virDomainGetDefaultTarget(d: sys::virDomainPtr, f: c_uint) -> *mut c_char;
}

/// The export of a stored backup: StartUnmanaged with no domain, the
/// backup's `<uuid>` in `xml`.
pub(crate) fn start_stored_export(xml: &str) -> Result<Backup> {
    let x = cstr(xml)?;
    // SAFETY: a null domain (the backup is named in the document) and a C
    // string that outlives the call; a null result is checked.
    wrap(unsafe { virDomainBackupStartUnmanaged(ptr::null_mut(), x.as_ptr(), 0) })
}

/// A domain's default target, as the document SetDefaultTarget takes
/// (`<target type='none'/>`: none).
pub(crate) fn get_default_target(dom: &Domain, flags: u32) -> Result<String> {
    // SAFETY: `dom` is a live virDomainPtr borrowed for the call; a null
    // result is checked.
    let p = unsafe { virDomainGetDefaultTarget(dom.as_ptr(), flags) };
    if p.is_null() {
        return Err(last_error());
    }
    // SAFETY: not null, a NUL-terminated string the library malloc'd for
    // us; copied out before it is freed.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    // SAFETY: malloc'd by the library for the caller to free, once.
    unsafe { libc::free(p as *mut libc::c_void) };
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_prefixes() {
        let u = [
            "6802055a-dcb3-4a24-9fa7-5f8f025204ae",
            "68020000-dcb3-4a24-9fa7-5f8f025204ae",
            "77bd4d61-558c-4ed6-ba2e-e07de31d7438",
        ];
        assert_eq!(pick_prefix("77bd", &u).unwrap(), 2);
        assert_eq!(pick_prefix("6802055A", &u).unwrap(), 0);
        let e = pick_prefix("6802", &u).unwrap_err();
        assert_eq!(e.code, ERR_INVALID_ARG);
        assert!(e.message.contains(u[0]) && e.message.contains(u[1]), "{e}");
        let e = pick_prefix("ffff", &u).unwrap_err();
        assert_eq!(e.code, ERR_NO_DOMAIN_BACKUP);
        assert_eq!(e.message, "no backup with UUID prefix 'ffff'");
        assert!(is_uuid_prefix("6802-05") && !is_uuid_prefix("680") && !is_uuid_prefix("vm-1"));
    }
}
