//! The C boundary: the only place with `extern "C"` exports, C callers'
//! raw pointers and flag words (the other files with `unsafe`, system and
//! libvirt calls, are listed in README "How it is built"). Every export goes through [`ffi_entry!`], which
//! follows libvirt's entry-point order (reset error, check handles, turn the
//! flags into options, do, dispatch error) and turns panics into an error
//! and the sentinel. The export names itself once, in the macro: the
//! [`Call`] it hands the body carries that name to every check and message.

// Exports take raw pointers from C and check them themselves (NULL, handle
// registry, libvirt's class check), so they are safe to call from Rust's view.
#![allow(
    non_camel_case_types,
    non_snake_case,
    clippy::missing_safety_doc,
    clippy::not_unsafe_ptr_arg_deref
)]

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_uint};
use std::sync::{Arc, LazyLock, Mutex};

use virt::domain::Domain;
use virt::sys;

use crate::error::{Error, Result};
use crate::ops::DomainRef;
use crate::ops::backup::Backup;
use options::{Flags, FromFlags};

pub mod accessors;
pub mod backup;
pub mod domain;
pub mod error;
pub mod history;
pub mod job;
mod options;
pub mod restore;
pub mod verify;

pub use crate::flags::{
    virDomainBackupCreateFlags, virDomainBackupDeleteFlags, virDomainBackupFinishJobFlags,
    virDomainBackupJobHistoryFlags, virDomainBackupListFlags, virDomainBackupRestoreFlags,
    virDomainBackupState,
};

/// Run the body of the exported function `$func` (its C name, written
/// once): reset the thread's last error, hand the body a [`Call`] named
/// `$func`, catch panics, and on failure record the error and return
/// `$sentinel`.
macro_rules! ffi_entry {
    ($func:ident, $sentinel:expr, |$cx:ident| $body:block) => {{
        let $cx = $crate::capi::Call::new(stringify!($func));
        $crate::logging::init();
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
                    $cx.name()
                )));
                $sentinel
            }
        }
    }};
}
pub(crate) use ffi_entry;

/// One call of an export: its C name, for every check that names it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    name: &'static str,
}

impl Call {
    pub(crate) fn new(name: &'static str) -> Call {
        Call { name }
    }

    /// The export's C name.
    pub(crate) fn name(self) -> &'static str {
        self.name
    }

    /// The options `flags` stands for, after refusing unknown bits and
    /// exclusive pairs.
    pub(crate) fn options<T: FromFlags>(self, flags: c_uint) -> Result<T> {
        T::from_flags(Flags::check(flags, T::ALLOWED, self.name)?)
    }

    /// Refuse any flag outside `allowed`, for a function whose flags change
    /// nothing below this boundary (0 for those that take none yet).
    pub(crate) fn check_flags(self, flags: c_uint, allowed: u32) -> Result<()> {
        Flags::check(flags, allowed, self.name).map(drop)
    }

    /// The backup behind a handle.
    pub(crate) fn backup(self, ptr: virDomainBackupPtr) -> Result<Arc<Backup>> {
        backup_of(ptr, self.name)
    }

    /// Borrow a caller's `virDomainPtr`, taking our own reference on it.
    pub(crate) fn domain(self, ptr: sys::virDomainPtr) -> Result<DomainRef> {
        domain_of(ptr, self.name)
    }

    /// The NUL-terminated UTF-8 argument `arg`.
    pub(crate) fn str_arg<'a>(self, ptr: *const c_char, arg: &str) -> Result<&'a str> {
        str_arg(ptr, arg, self.name)
    }

    pub(crate) fn handle_ref(self, ptr: virDomainBackupPtr) -> Result<()> {
        handle_ref(ptr, self.name)
    }

    pub(crate) fn handle_unref(self, ptr: virDomainBackupPtr) -> Result<()> {
        handle_unref(ptr, self.name)
    }
}

/// The opaque type behind `virDomainBackupPtr`. Its address is only a
/// token: the library never reads through it. It lies in read-only
/// zero-filled memory and is as large as a libvirt object header, so
/// libvirt's own class check, given one by mistake, sees no class instead of
/// reading past it or crashing.
pub struct virDomainBackup {
    _token: [u64; 4],
}

/// A pointer to a backup object, as in API.md.
pub type virDomainBackupPtr = *mut virDomainBackup;

struct Entry {
    refs: usize,
    backup: Arc<Backup>,
}

/// Address space reserved for handle tokens: 2^35 handles of 32 bytes. A
/// read-only MAP_NORESERVE mapping costs no memory, only address space.
const TOKEN_SPACE: usize = 1 << 40;
/// The smallest reservation accepted when address space is limited
/// (RLIMIT_AS): still 2^21 handles.
const MIN_TOKEN_SPACE: usize = 1 << 26;
const TOKEN_SIZE: usize = std::mem::size_of::<virDomainBackup>();

/// Handle tokens and what they stand for. Tokens are consecutive addresses
/// in a region reserved once and never unmapped, and no address is ever
/// handed out twice: a freed handle stays recognisably ours and refused
/// forever, instead of silently naming a later backup, and can never become
/// a libvirt object either.
#[derive(Default)]
struct Handles {
    live: HashMap<usize, Entry>,
    /// The reserved region (0 until the first handle) and its size.
    base: usize,
    size: usize,
    /// Bytes of it handed out so far.
    used: usize,
}

/// Reserve the token region: as large as the address-space limit allows.
fn reserve_tokens() -> Result<(usize, usize)> {
    let mut size = TOKEN_SPACE;
    while size >= MIN_TOKEN_SPACE {
        // SAFETY: a new anonymous mapping at an address of the kernel's
        // choosing; it is never unmapped, so its addresses stay ours.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Ok((p as usize, size));
        }
        size /= 2;
    }
    Err(Error::internal(format!(
        "cannot reserve address space for backup handles: {}",
        std::io::Error::last_os_error()
    )))
}

static HANDLES: LazyLock<Mutex<Handles>> = LazyLock::new(Default::default);

fn lock_handles() -> std::sync::MutexGuard<'static, Handles> {
    // The table stays consistent across a panic (every change is one
    // insert or remove), so a poisoned lock is still usable.
    HANDLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hand a new handle (holding one reference) to the caller.
pub(crate) fn new_handle(backup: Arc<Backup>) -> Result<virDomainBackupPtr> {
    let mut h = lock_handles();
    if h.base == 0 {
        (h.base, h.size) = reserve_tokens()?;
    }
    if h.used + TOKEN_SIZE > h.size {
        return Err(Error::internal(format!(
            "all {} backup handles of this process have been used",
            h.size / TOKEN_SIZE
        )));
    }
    let token = h.base + h.used;
    h.used += TOKEN_SIZE;
    h.live.insert(token, Entry { refs: 1, backup });
    Ok(token as virDomainBackupPtr)
}

/// Whether `ptr` is (or was) one of our handles, rather than a libvirt object.
pub(crate) fn is_ours(ptr: *const virDomainBackup) -> bool {
    let h = lock_handles();
    let p = ptr as usize;
    h.base != 0 && p >= h.base && p < h.base + h.used && (p - h.base).is_multiple_of(TOKEN_SIZE)
}

fn bad_handle(func: &str) -> Error {
    Error::invalid_arg(format!(
        "backup in {func} must be a valid virDomainBackupPtr"
    ))
}

fn backup_of(ptr: virDomainBackupPtr, func: &str) -> Result<Arc<Backup>> {
    let h = lock_handles();
    h.live
        .get(&(ptr as usize))
        .map(|e| Arc::clone(&e.backup))
        .ok_or_else(|| bad_handle(func))
}

fn handle_ref(ptr: virDomainBackupPtr, func: &str) -> Result<()> {
    let mut h = lock_handles();
    let e = h
        .live
        .get_mut(&(ptr as usize))
        .ok_or_else(|| bad_handle(func))?;
    e.refs += 1;
    Ok(())
}

fn handle_unref(ptr: virDomainBackupPtr, func: &str) -> Result<()> {
    let mut h = lock_handles();
    let key = ptr as usize;
    let e = h.live.get_mut(&key).ok_or_else(|| bad_handle(func))?;
    e.refs -= 1;
    if e.refs == 0 {
        h.live.remove(&key);
    }
    Ok(())
}

fn domain_of(ptr: sys::virDomainPtr, func: &str) -> Result<DomainRef> {
    let bad = || Error::invalid_arg(format!("domain in {func} must be a valid virDomainPtr"));
    // One of our handles is not handed to libvirt at all.
    if ptr.is_null() || is_ours(ptr as *const virDomainBackup) {
        return Err(bad());
    }
    // SAFETY: virDomainRef checks the object's class and refuses others;
    // the new reference is owned by the Domain wrapper.
    if unsafe { sys::virDomainRef(ptr) } < 0 {
        return Err(bad());
    }
    // SAFETY: `ptr` is a live virDomainPtr whose new reference (just
    // taken) the Domain owns and frees when dropped.
    Ok(DomainRef::new(unsafe { Domain::from_ptr(ptr) }))
}

fn str_arg<'a>(ptr: *const c_char, name: &str, func: &str) -> Result<&'a str> {
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
    cx: Call,
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
            match new_handle(b) {
                Ok(h) => *arr.add(i) = h,
                Err(e) => {
                    // Nothing is handed out on failure.
                    for j in 0..i {
                        let _ = cx.handle_unref(*arr.add(j));
                    }
                    libc::free(arr as *mut libc::c_void);
                    return Err(e);
                }
            }
        }
        *out = arr;
    }
    Ok(n as i32)
}
