// Package libvirtbackup is the Go binding of libvirt-backup, the library
// that adds managed backups (full and incremental, kept in a catalog, listed,
// restored, deleted) and unmanaged NBD exports to libvirt domains. It
// mirrors the C API (virDomainBackup*, see API.md) the way libvirt's own Go
// bindings mirror libvirt: one method per C function, flags as typed
// constants with the C names less the VIR_ prefix, errors as *Error.
//
// Import path: libvirt.org/go/libvirtbackup. The module is not published:
// use it from a source checkout of libvirt-backup with, in your go.mod,
//
//	require libvirt.org/go/libvirtbackup v0.0.0
//	replace libvirt.org/go/libvirtbackup => /path/to/libvirt-backup/go
//
// Build: cgo with pkg-config, against the installed library
// (libvirt-backup and libvirt must be found by pkg-config, e.g.
// PKG_CONFIG_PATH=<prefix>/lib/pkgconfig).
//
// # Backup details
//
// Backup.Info reads a backup's XML into a BackupInfo (kind, creation time,
// state, description, domain, disks); Backup.UUID, UUIDString and
// GetParent are the C accessors virDomainBackupGetUUID,
// virDomainBackupGetUUIDString and virDomainBackupGetParent. The XML
// carries no sizes: BackupDisk.StoredSize is what the target file takes on
// disk according to stat(2), -1 when it cannot be read.
//
// # Errors and goroutines
//
// The C library keeps its last error per OS thread, and a goroutine can
// change threads between two cgo calls. Every call of this package copies
// the error in the same cgo call that failed, so each goroutine gets its
// own error with no runtime.LockOSThread. Errors are *Error values:
//
//	var e *libvirtbackup.Error
//	if errors.As(err, &e) && e.Code == libvirtbackup.ERR_NO_DOMAIN_BACKUP { ... }
//
// Like libvirt's Go bindings, the package installs a libvirt error handler
// that prints nothing (libvirt's default prints every error to stderr).
//
// # Domains
//
// A backup is made of a *Domain. Get one with
//
//   - LookupDomain(uri, nameOrUUID): a domain with a connection of its own,
//     both released by Close;
//   - Connect(uri), then Conn.LookupDomain or Conn.DefineDomain: several
//     domains on one connection;
//   - DomainFromPointer(p): a virDomainPtr your own cgo code holds (the
//     Domain takes a reference of its own; Close drops it).
//
// From libvirt's Go bindings (libvirt.org/go/libvirt), whose Domain does not
// give out its C pointer, go by UUID:
//
//	uuid, err := dom.GetUUIDString()            // dom is a *libvirt.Domain
//	bdom, err := libvirtbackup.LookupDomain(uri, uuid)
//	defer bdom.Close()
//
// For test:///default, whose state lives in the process and is shared by
// its connections only while one of them stays open, keep the libvirt
// connection open while you use bdom (or define the domain through
// Conn.DefineDomain).
//
// # Backups
//
// A *Backup holds one reference on the C handle: release it with Free
// (a finalizer frees a forgotten one, but do not count on it). The other
// methods of a freed Backup return ERR_INVALID_ARG.
package libvirtbackup // import "libvirt.org/go/libvirtbackup"

/*
#cgo pkg-config: libvirt-backup libvirt
#cgo LDFLAGS: -ldl
#include "shim.h"
*/
import "C"

func init() {
	C.lvb_init()
}
