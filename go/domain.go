package libvirtbackup

/*
#include "shim.h"
#include <stdlib.h>
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// Conn is a libvirt connection opened by this package.
type Conn struct {
	mu  sync.RWMutex // held for reading by each call, for writing by Close
	ptr C.virConnectPtr
}

// Connect opens a read-write connection to uri (e.g. "qemu:///system").
// Close it with Close.
func Connect(uri string) (*Conn, error) {
	curi := C.CString(uri)
	defer C.free(unsafe.Pointer(curi))
	var cerr C.lvbError
	p := C.lvb_connect_open(curi, &cerr)
	if p == nil {
		return nil, takeError(&cerr)
	}
	c := &Conn{ptr: p}
	runtime.SetFinalizer(c, (*Conn).Close)
	return c, nil
}

// Close drops the connection; domains got from it stay usable (each one
// keeps the connection alive until it is closed).
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return nil
	}
	var cerr C.lvbError
	r := C.lvb_connect_close(c.ptr, &cerr)
	c.ptr = nil
	runtime.SetFinalizer(c, nil)
	if r < 0 {
		return takeError(&cerr)
	}
	return nil
}

func (c *Conn) domainCall(what string, f func(C.virConnectPtr, *C.char, *C.lvbError) C.virDomainPtr) (*Domain, error) {
	if c == nil {
		return nil, errFreed("the connection")
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.ptr == nil {
		return nil, errFreed("the connection")
	}
	cs := C.CString(what)
	defer C.free(unsafe.Pointer(cs))
	var cerr C.lvbError
	d := f(c.ptr, cs, &cerr)
	if d == nil {
		return nil, takeError(&cerr)
	}
	return newDomain(d, nil), nil
}

// LookupDomain finds a domain by UUID or, failing that, by name.
func (c *Conn) LookupDomain(nameOrUUID string) (*Domain, error) {
	return c.domainCall(nameOrUUID, func(p C.virConnectPtr, s *C.char, e *C.lvbError) C.virDomainPtr {
		return C.lvb_domain_lookup(p, s, e)
	})
}

// DefineDomain defines (or redefines) a persistent domain from its libvirt
// XML, as virDomainDefineXML.
func (c *Conn) DefineDomain(xml string) (*Domain, error) {
	return c.domainCall(xml, func(p C.virConnectPtr, s *C.char, e *C.lvbError) C.virDomainPtr {
		return C.lvb_domain_define(p, s, e)
	})
}

// Domain is a libvirt domain (a virDomainPtr reference owned by this
// value). Release it with Close.
type Domain struct {
	mu   sync.RWMutex // held for reading by each call, for writing by Close
	ptr  C.virDomainPtr
	conn *Conn // opened by LookupDomain for this domain alone, or nil
}

func newDomain(p C.virDomainPtr, conn *Conn) *Domain {
	d := &Domain{ptr: p, conn: conn}
	runtime.SetFinalizer(d, (*Domain).Close)
	return d
}

// LookupDomain opens a connection to uri and finds the domain by UUID or,
// failing that, by name. The Domain owns that connection: Close releases
// both.
func LookupDomain(uri, nameOrUUID string) (*Domain, error) {
	c, err := Connect(uri)
	if err != nil {
		return nil, err
	}
	d, err := c.LookupDomain(nameOrUUID)
	if err != nil {
		c.Close()
		return nil, err
	}
	d.conn = c
	return d, nil
}

// DomainFromPointer wraps a virDomainPtr that the caller's own cgo code
// holds (pass it as unsafe.Pointer). The Domain takes a reference of its
// own (virDomainRef), so the caller still frees its pointer as before, and
// Close drops only the Domain's reference.
func DomainFromPointer(p unsafe.Pointer) (*Domain, error) {
	if p == nil {
		return nil, &Error{Code: ERR_INVALID_ARG, Domain: FROM_DOMAIN, Level: ERR_ERROR,
			Message: "invalid argument: DomainFromPointer: NULL domain"}
	}
	dp := C.virDomainPtr(p)
	var cerr C.lvbError
	if C.lvb_domain_ref(dp, &cerr) < 0 {
		return nil, takeError(&cerr)
	}
	return newDomain(dp, nil), nil
}

// Close releases the domain's reference, and the connection LookupDomain
// opened for it. Backups made of the domain stay usable.
func (d *Domain) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ptr == nil {
		return nil
	}
	var cerr C.lvbError
	r := C.lvb_domain_free(d.ptr, &cerr)
	d.ptr = nil
	runtime.SetFinalizer(d, nil)
	var err error
	if r < 0 {
		err = takeError(&cerr)
	}
	if d.conn != nil {
		if cerr := d.conn.Close(); err == nil {
			err = cerr
		}
		d.conn = nil
	}
	return err
}

// call runs f with the domain's handle, which Close cannot release
// meanwhile.
func (d *Domain) call(f func(C.virDomainPtr) error) error {
	if d == nil {
		return errFreed("the domain")
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.ptr == nil {
		return errFreed("the domain")
	}
	return f(d.ptr)
}

// Name is the domain's name.
func (d *Domain) Name() (name string, err error) {
	err = d.call(func(p C.virDomainPtr) error {
		var cerr C.lvbError
		s := C.lvb_domain_name(p, &cerr)
		if s == nil {
			return takeError(&cerr)
		}
		name = C.GoString(s)
		C.free(unsafe.Pointer(s))
		return nil
	})
	return
}

// UUIDString is the domain's UUID.
func (d *Domain) UUIDString() (uuid string, err error) {
	err = d.call(func(p C.virDomainPtr) error {
		var buf [C.VIR_UUID_STRING_BUFLEN]C.char
		var cerr C.lvbError
		if C.lvb_domain_uuid(p, &buf[0], &cerr) < 0 {
			return takeError(&cerr)
		}
		uuid = C.GoString(&buf[0])
		return nil
	})
	return
}

// CreateXML starts a managed backup of the domain described by xml (a
// <domainbackup> document; "" backs up every disk to its default target),
// as virDomainBackupCreateXML. Without DOMAIN_BACKUP_CREATE_WAIT it returns
// once the job has started: wait for it with Backup.FinishJob. Free the
// Backup.
func (d *Domain) CreateXML(xml string, flags DomainBackupCreateFlags) (b *Backup, err error) {
	if xml == "" {
		xml = "<domainbackup/>"
	}
	err = d.call(func(p C.virDomainPtr) error {
		cs := C.CString(xml)
		defer C.free(unsafe.Pointer(cs))
		var cerr C.lvbError
		h := C.lvb_create_xml(p, cs, C.uint(flags), &cerr)
		if h == nil {
			return takeError(&cerr)
		}
		b = newBackup(h, false)
		return nil
	})
	return
}

// StartUnmanaged starts an NBD export of the domain's disks as they are now
// (virDomainBackupStartUnmanaged); end it with Backup.FinishJob or
// Backup.AbortJob. On a nil *Domain it asks for an export of the stored
// backup whose <uuid> the XML names (a NULL domain in C, an API.md
// extension; a library that does not have it yet answers ERR_INVALID_ARG).
func (d *Domain) StartUnmanaged(xml string, flags DomainBackupCreateFlags) (b *Backup, err error) {
	start := func(p C.virDomainPtr) error {
		cs := C.CString(xml)
		defer C.free(unsafe.Pointer(cs))
		var cerr C.lvbError
		h := C.lvb_start_unmanaged(p, cs, C.uint(flags), &cerr)
		if h == nil {
			return takeError(&cerr)
		}
		b = newBackup(h, true)
		return nil
	}
	if d == nil {
		err = start(nil)
	} else {
		err = d.call(start)
	}
	return
}

// List gives the domain's managed backups (virDomainBackupList), oldest
// first; Free each one.
func (d *Domain) List(flags DomainBackupListFlags) (list []*Backup, err error) {
	err = d.call(func(p C.virDomainPtr) error {
		var arr *C.virDomainBackupPtr
		var cerr C.lvbError
		n := C.lvb_list(p, &arr, C.uint(flags), &cerr)
		if n < 0 {
			return takeError(&cerr)
		}
		list = takeArray(arr, n)
		return nil
	})
	return
}

// RestoreUnmanaged writes the domain's disks from sources the library did
// not make (files or NBD exports), as virDomainBackupRestoreUnmanaged.
func (d *Domain) RestoreUnmanaged(xml string, flags DomainBackupRestoreFlags) error {
	return d.call(func(p C.virDomainPtr) error {
		cs := C.CString(xml)
		defer C.free(unsafe.Pointer(cs))
		var cerr C.lvbError
		if C.lvb_restore_unmanaged(p, cs, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
}

// SetDefaultTarget sets where backups of the domain go when their XML
// names no target (virDomainSetDefaultTarget): <target type='dir'> or
// <target type='pool'>.
func (d *Domain) SetDefaultTarget(xml string, flags DomainModificationImpact) error {
	return d.call(func(p C.virDomainPtr) error {
		cs := C.CString(xml)
		defer C.free(unsafe.Pointer(cs))
		var cerr C.lvbError
		if C.lvb_set_default_target(p, cs, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
}

// Undefine undefines the domain (virDomainBackupUndefineFlags): with
// DOMAIN_UNDEFINE_BACKUP it also forgets the domain's backups (their data
// files stay); without it, a domain that has backups is refused with
// ERR_OPERATION_INVALID. The Domain value still needs Close.
func (d *Domain) Undefine(flags DomainUndefineFlags) error {
	return d.call(func(p C.virDomainPtr) error {
		var cerr C.lvbError
		if C.lvb_undefine(p, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
}
