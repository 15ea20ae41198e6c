package libvirtbackup

/*
#include "shim.h"
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// ErrorNumber is a libvirt virErrorNumber.
type ErrorNumber int

// The error codes this package returns (API.md "Errors"); libvirt's other
// codes can come through from libvirt calls and keep libvirt's numbers.
const (
	ERR_OK                   = ErrorNumber(C.VIR_ERR_OK)
	ERR_INTERNAL_ERROR       = ErrorNumber(C.VIR_ERR_INTERNAL_ERROR)
	ERR_NO_MEMORY            = ErrorNumber(C.VIR_ERR_NO_MEMORY)
	ERR_NO_SUPPORT           = ErrorNumber(C.VIR_ERR_NO_SUPPORT)
	ERR_INVALID_ARG          = ErrorNumber(C.VIR_ERR_INVALID_ARG)
	ERR_OPERATION_FAILED     = ErrorNumber(C.VIR_ERR_OPERATION_FAILED)
	ERR_XML_ERROR            = ErrorNumber(C.VIR_ERR_XML_ERROR)
	ERR_NO_DOMAIN            = ErrorNumber(C.VIR_ERR_NO_DOMAIN)
	ERR_NO_STORAGE_POOL      = ErrorNumber(C.VIR_ERR_NO_STORAGE_POOL)
	ERR_OPERATION_INVALID    = ErrorNumber(C.VIR_ERR_OPERATION_INVALID)
	ERR_ARGUMENT_UNSUPPORTED = ErrorNumber(C.VIR_ERR_ARGUMENT_UNSUPPORTED)
	ERR_OPERATION_ABORTED    = ErrorNumber(C.VIR_ERR_OPERATION_ABORTED)
	ERR_NO_DOMAIN_BACKUP     = ErrorNumber(C.VIR_ERR_NO_DOMAIN_BACKUP)
)

// ErrorDomain is a libvirt virErrorDomain (which part raised the error).
type ErrorDomain int

const (
	FROM_NONE    = ErrorDomain(C.VIR_FROM_NONE)
	FROM_DOMAIN  = ErrorDomain(C.VIR_FROM_DOMAIN)
	FROM_TEST    = ErrorDomain(C.VIR_FROM_TEST)
	FROM_QEMU    = ErrorDomain(C.VIR_FROM_QEMU)
	FROM_STORAGE = ErrorDomain(C.VIR_FROM_STORAGE)
)

// ErrorLevel is a libvirt virErrorLevel.
type ErrorLevel int

const (
	ERR_NONE    = ErrorLevel(C.VIR_ERR_NONE)
	ERR_WARNING = ErrorLevel(C.VIR_ERR_WARNING)
	ERR_ERROR   = ErrorLevel(C.VIR_ERR_ERROR)
)

// Error is the error of a failed call: the library's (or libvirt's) last
// error, copied in the same cgo call that failed, so it is the calling
// goroutine's own error whatever OS thread it ran on. Get it with
// errors.As:
//
//	var e *libvirtbackup.Error
//	if errors.As(err, &e) && e.Code == libvirtbackup.ERR_NO_DOMAIN_BACKUP { ... }
type Error struct {
	Code    ErrorNumber
	Domain  ErrorDomain
	Message string
	Level   ErrorLevel
}

// Error formats the error as libvirt's Go bindings do.
func (e *Error) Error() string {
	return fmt.Sprintf("virError(Code=%d, Domain=%d, Message='%s')", e.Code, e.Domain, e.Message)
}

// takeError turns an error filled by a shim into a *Error and frees its
// message.
func takeError(ce *C.lvbError) *Error {
	e := &Error{
		Code:   ErrorNumber(ce.code),
		Domain: ErrorDomain(ce.domain),
		Level:  ErrorLevel(ce.level),
	}
	if ce.message != nil {
		e.Message = C.GoString(ce.message)
		C.free(unsafe.Pointer(ce.message))
		ce.message = nil
	}
	return e
}

// errFreed is what a call on a handle that was already freed or closed
// returns (the library would say the same of a NULL handle).
func errFreed(what string) *Error {
	return &Error{
		Code:    ERR_INVALID_ARG,
		Domain:  FROM_DOMAIN,
		Message: "invalid argument: " + what + " was already freed",
		Level:   ERR_ERROR,
	}
}
