//! The thread-local last error (API.md "Errors").

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};

use virt::sys;

use crate::error::Error;

/// The error recorded for this thread, kept with the strings it points to.
struct Stored {
    err: sys::virError,
    _message: CString,
}

thread_local! {
    static LAST: RefCell<Option<Box<Stored>>> = const { RefCell::new(None) };
}

/// libvirt's `VIR_ERR_ERROR` level.
const VIR_ERR_ERROR: sys::virErrorLevel = 2;

// Every access goes through `try_with`: in a C program's atexit handler the
// thread's Rust locals are already destroyed, and a call must still not abort
// (the error is then simply not kept).

pub(crate) fn reset() {
    let _ = LAST.try_with(|l| *l.borrow_mut() = None);
}

pub(crate) fn set(e: Error) {
    let message = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    let err = sys::virError {
        code: e.code,
        domain: e.domain,
        message: message.as_ptr() as *mut c_char,
        level: VIR_ERR_ERROR,
        conn: std::ptr::null_mut(),
        dom: std::ptr::null_mut(),
        str1: std::ptr::null_mut(),
        str2: std::ptr::null_mut(),
        str3: std::ptr::null_mut(),
        int1: 0,
        int2: 0,
        net: std::ptr::null_mut(),
    };
    let _ = LAST.try_with(|l| {
        *l.borrow_mut() = Some(Box::new(Stored {
            err,
            _message: message,
        }))
    });
}

/// virDomainBackupGetLastError:
///
/// The last error raised by a libvirt-backup call on this thread. Every
/// library call resets it on entry.
///
/// Returns a pointer to the error, owned by the library and valid until the
/// next libvirt-backup call on this thread, or NULL if the last call succeeded.
/// Do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetLastError() -> sys::virErrorPtr {
    LAST.try_with(|l| match l.borrow_mut().as_mut() {
        Some(s) => &mut s.err as sys::virErrorPtr,
        None => std::ptr::null_mut(),
    })
    .unwrap_or(std::ptr::null_mut())
}

/// virDomainBackupGetLastErrorMessage:
///
/// The message of the last error on this thread.
///
/// Returns the message, owned by the library and valid until the next
/// libvirt-backup call on this thread, or "no error" if there is none.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetLastErrorMessage() -> *const c_char {
    LAST.try_with(|l| match l.borrow().as_ref() {
        Some(s) => s.err.message as *const c_char,
        None => c"no error".as_ptr(),
    })
    .unwrap_or(c"no error".as_ptr())
}

/// virDomainBackupGetLastErrorCode:
///
/// The code of the last error on this thread.
///
/// Returns a virErrorNumber, VIR_ERR_OK (0) if there is no error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetLastErrorCode() -> c_int {
    LAST.try_with(|l| l.borrow().as_ref().map_or(0, |s| s.err.code))
        .unwrap_or(0)
}

/// virDomainBackupResetLastError:
///
/// Forget the last error of this thread.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupResetLastError() {
    reset();
}
