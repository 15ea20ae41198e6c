//! The C boundary: the only place with `extern "C"`, raw pointers and
//! `unsafe`. Every export goes through [`ffi_entry!`], which follows
//! libvirt's entry-point order (reset error, check handles, check flags, do,
//! dispatch error) and turns panics into an error and the sentinel.

// Exports take raw pointers from C and check them themselves (NULL, handle
// registry, libvirt's class check), so they are safe to call from Rust's view.
#![allow(
    non_camel_case_types,
    non_snake_case,
    clippy::missing_safety_doc,
    clippy::not_unsafe_ptr_arg_deref
)]

use std::collections::HashSet;
use std::ffi::{CStr, c_char};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use virt::domain::Domain;
use virt::sys;

use crate::backup::Backup;
use crate::error::{Error, Result};
use crate::libvirt::DomainRef;

pub mod backup;
pub mod domain;
pub mod error;
pub mod job;
pub mod restore;

pub use crate::flags::{
    virDomainBackupCreateFlags, virDomainBackupDeleteFlags, virDomainBackupFinishJobFlags,
    virDomainBackupListFlags, virDomainBackupRestoreFlags, virDomainBackupState,
};

/// Run the body of an exported function: reset the thread's last error,
/// catch panics, and on failure record the error and return `$sentinel`.
macro_rules! ffi_entry {
    ($func:expr, $sentinel:expr, $body:block) => {{
        $crate::capi::error::reset();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || -> $crate::error::Result<_> { $body },
        ));
        match result {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                $crate::capi::error::set(e);
                $sentinel
            }
            Err(_) => {
                $crate::capi::error::set($crate::error::Error::internal(format!(
                    "unexpected failure in {}",
                    $func
                )));
                $sentinel
            }
        }
    }};
}
pub(crate) use ffi_entry;

/// The object behind a `virDomainBackupPtr`.
pub struct virDomainBackup {
    refs: AtomicUsize,
    backup: Arc<Backup>,
}

/// A pointer to a backup object, as in API.md.
pub type virDomainBackupPtr = *mut virDomainBackup;

/// Live handles: a pointer is only dereferenced if it is in this set, so a
/// stale or foreign pointer gives VIR_ERR_INVALID_ARG instead of a crash.
static HANDLES: LazyLock<Mutex<HashSet<usize>>> = LazyLock::new(Default::default);

/// Hand a new handle (holding one reference) to the caller.
pub(crate) fn new_handle(backup: Arc<Backup>) -> virDomainBackupPtr {
    let ptr = Box::into_raw(Box::new(virDomainBackup {
        refs: AtomicUsize::new(1),
        backup,
    }));
    HANDLES.lock().unwrap().insert(ptr as usize);
    ptr
}

/// Whether `ptr` is one of our live handles.
pub(crate) fn is_handle(ptr: *const virDomainBackup) -> bool {
    HANDLES.lock().unwrap().contains(&(ptr as usize))
}

fn bad_handle(func: &str) -> Error {
    Error::invalid_arg(format!(
        "backup in {func} must be a valid virDomainBackupPtr"
    ))
}

/// The backup behind a handle.
pub(crate) fn backup_of(ptr: virDomainBackupPtr, func: &str) -> Result<Arc<Backup>> {
    let handles = HANDLES.lock().unwrap();
    if ptr.is_null() || !handles.contains(&(ptr as usize)) {
        return Err(bad_handle(func));
    }
    // SAFETY: registered pointers come from Box::into_raw and are removed
    // (under this lock) before they are freed.
    Ok(Arc::clone(unsafe { &(*ptr).backup }))
}

pub(crate) fn handle_ref(ptr: virDomainBackupPtr, func: &str) -> Result<()> {
    let handles = HANDLES.lock().unwrap();
    if ptr.is_null() || !handles.contains(&(ptr as usize)) {
        return Err(bad_handle(func));
    }
    // SAFETY: as in backup_of.
    unsafe { (*ptr).refs.fetch_add(1, Ordering::Relaxed) };
    Ok(())
}

pub(crate) fn handle_unref(ptr: virDomainBackupPtr, func: &str) -> Result<()> {
    let mut handles = HANDLES.lock().unwrap();
    if ptr.is_null() || !handles.contains(&(ptr as usize)) {
        return Err(bad_handle(func));
    }
    // SAFETY: as in backup_of; the last reference removes and frees it.
    unsafe {
        if (*ptr).refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            handles.remove(&(ptr as usize));
            drop(Box::from_raw(ptr));
        }
    }
    Ok(())
}

/// Borrow a caller's `virDomainPtr`, taking our own reference on it.
pub(crate) fn domain_of(ptr: sys::virDomainPtr, func: &str) -> Result<DomainRef> {
    let bad = || Error::invalid_arg(format!("domain in {func} must be a valid virDomainPtr"));
    if ptr.is_null() {
        return Err(bad());
    }
    // SAFETY: virDomainRef checks the object's class and refuses others;
    // the new reference is owned by the Domain wrapper.
    if unsafe { sys::virDomainRef(ptr) } < 0 {
        return Err(bad());
    }
    Ok(DomainRef::new(unsafe { Domain::from_ptr(ptr) }))
}

/// A NUL-terminated UTF-8 argument.
pub(crate) fn str_arg<'a>(ptr: *const c_char, name: &str, func: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid_arg(format!(
            "{name} in {func} must not be NULL"
        )));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid_arg(format!("{name} in {func} is not valid UTF-8")))
}

/// A `malloc`'d copy of `s`, for the caller to `free()`.
pub(crate) fn malloc_string(s: &str) -> Result<*mut c_char> {
    let bytes = s.as_bytes();
    if bytes.contains(&0) {
        return Err(Error::internal("string contains a NUL byte"));
    }
    // SAFETY: we allocate len+1 bytes and write exactly that many.
    unsafe {
        let p = libc::malloc(bytes.len() + 1) as *mut u8;
        if p.is_null() {
            return Err(Error::internal("out of memory"));
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        Ok(p as *mut c_char)
    }
}

/// Fill a caller's list pointer with a NULL-terminated `malloc`'d array of
/// new handles (or only count them when `out` is NULL).
pub(crate) fn return_list(
    backups: Vec<Arc<Backup>>,
    out: *mut *mut virDomainBackupPtr,
) -> Result<i32> {
    let n = backups.len();
    if out.is_null() {
        return Ok(n as i32);
    }
    // SAFETY: an array of n+1 pointers, written in full before it is handed out.
    unsafe {
        let arr = libc::calloc(n + 1, std::mem::size_of::<virDomainBackupPtr>())
            as *mut virDomainBackupPtr;
        if arr.is_null() {
            return Err(Error::internal("out of memory"));
        }
        for (i, b) in backups.into_iter().enumerate() {
            *arr.add(i) = new_handle(b);
        }
        *out = arr;
    }
    Ok(n as i32)
}
