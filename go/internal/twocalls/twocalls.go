// Package twocalls makes a library call and reads the thread's last error
// in two separate cgo calls, as a Go program calling the C API directly
// would. The tests run it next to the package to show what the package's
// one-call shims prevent: between the two calls the goroutine can move to
// another OS thread, or another goroutine can run on its thread, and the
// error read is then someone else's (or none).
package twocalls

/*
#cgo pkg-config: libvirt-backup libvirt
#include <libvirt-backup/libvirt-backup.h>
#include <stdlib.h>
*/
import "C"

import "unsafe"

// LookupByUUID looks a backup up, frees it if found, then reads the last
// error in a second cgo call. found is true if the lookup succeeded.
func LookupByUUID(uuid string) (found bool, code int, message string) {
	cs := C.CString(uuid)
	b := C.virDomainBackupLookupByUUID(cs, 0)
	C.free(unsafe.Pointer(cs))
	if b != nil {
		C.virDomainBackupFree(b)
		return true, 0, ""
	}
	code = int(C.virDomainBackupGetLastErrorCode())
	message = C.GoString(C.virDomainBackupGetLastErrorMessage())
	return false, code, message
}
