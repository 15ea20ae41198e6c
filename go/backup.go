package libvirtbackup

/*
#include "shim.h"
#include <stdlib.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Backup is a backup object (virDomainBackupPtr): a managed backup of the
// catalog or an unmanaged export. It holds one reference: release it with
// Free.
type Backup struct {
	mu        sync.RWMutex // held for reading by each call, for writing by Free
	ptr       C.virDomainBackupPtr
	unmanaged bool // from StartUnmanaged: FinishJob ends the export

	uuidMu sync.Mutex
	uuid   string // cached by UUIDString
}

func newBackup(p C.virDomainBackupPtr, unmanaged bool) *Backup {
	b := &Backup{ptr: p, unmanaged: unmanaged}
	// A safety net for a Backup nobody freed, not a way to manage them.
	runtime.SetFinalizer(b, (*Backup).Free)
	return b
}

// takeArray turns an array from virDomainBackupList* into Backups and
// frees the array (each entry's reference passes to its Backup).
func takeArray(arr *C.virDomainBackupPtr, n C.int) []*Backup {
	list := make([]*Backup, 0, int(n))
	if arr == nil {
		return list
	}
	for i := 0; i < int(n); i++ {
		list = append(list, newBackup(C.lvb_array_get(arr, C.int(i)), false))
	}
	C.free(unsafe.Pointer(arr))
	return list
}

// call runs f with the backup's handle, which Free cannot release
// meanwhile.
func (b *Backup) call(f func(C.virDomainBackupPtr) error) error {
	if b == nil {
		return errFreed("the backup")
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.ptr == nil {
		return errFreed("the backup")
	}
	return f(b.ptr)
}

// Free releases the Backup's reference (virDomainBackupFree). The backup
// itself, its job and its data are not affected. Calling Free again does
// nothing.
func (b *Backup) Free() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ptr == nil {
		return nil
	}
	var cerr C.lvbError
	r := C.lvb_free(b.ptr, &cerr)
	b.ptr = nil
	runtime.SetFinalizer(b, nil)
	if r < 0 {
		return takeError(&cerr)
	}
	return nil
}

// LookupByUUID finds a managed backup of any domain by its UUID
// (virDomainBackupLookupByUUID); flags: 0. Free the Backup.
func LookupByUUID(uuid string, flags uint32) (*Backup, error) {
	cs := C.CString(uuid)
	defer C.free(unsafe.Pointer(cs))
	var cerr C.lvbError
	h := C.lvb_lookup_by_uuid(cs, C.uint(flags), &cerr)
	if h == nil {
		return nil, takeError(&cerr)
	}
	return newBackup(h, false), nil
}

// ListAllBackups gives every managed backup of the catalog, of every
// domain, whether the domain is still defined or not (virDomainBackupList
// with a NULL domain), oldest first. The flags filter as for Domain.List
// (DOMAIN_BACKUP_LIST_LATEST: the newest backup of the whole catalog).
// Domain of a backup whose domain no longer exists fails with
// ERR_NO_DOMAIN; its XMLDesc still names the domain and holds its saved
// <definition>, and Restore with DOMAIN_BACKUP_RESTORE_NEW_DOMAIN brings
// it back. Free each one.
func ListAllBackups(flags DomainBackupListFlags) ([]*Backup, error) {
	var arr *C.virDomainBackupPtr
	var cerr C.lvbError
	n := C.lvb_list(nil, &arr, C.uint(flags), &cerr)
	if n < 0 {
		return nil, takeError(&cerr)
	}
	return takeArray(arr, n), nil
}

// Restore restores the managed backup the XML names (<uuid>) into its own
// shut-off domain or, with DOMAIN_BACKUP_RESTORE_NEW_DOMAIN, as a new
// domain (virDomainBackupRestore).
func Restore(xml string, flags DomainBackupRestoreFlags) error {
	cs := C.CString(xml)
	defer C.free(unsafe.Pointer(cs))
	var cerr C.lvbError
	if C.lvb_restore(cs, C.uint(flags), &cerr) < 0 {
		return takeError(&cerr)
	}
	return nil
}

// XMLDesc gives the backup's <domainbackup> XML (flags: 0 or
// DOMAIN_BACKUP_XML_SECURE). It calls virDomainBackupObjGetXMLDesc, the
// library's own name for virDomainBackupGetXMLDesc.
func (b *Backup) XMLDesc(flags DomainBackupXMLFlags) (desc string, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		s := C.lvb_get_xml_desc(p, C.uint(flags), &cerr)
		if s == nil {
			return takeError(&cerr)
		}
		desc = C.GoString(s)
		C.free(unsafe.Pointer(s))
		return nil
	})
	return
}

// Domain gives the backup's domain (virDomainBackupGetDomain) with a
// reference of its own: Close it. It fails with ERR_NO_DOMAIN when the
// domain no longer exists.
func (b *Backup) Domain() (d *Domain, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		h := C.lvb_get_domain(p, &cerr)
		if h == nil {
			return takeError(&cerr)
		}
		d = newDomain(h, nil)
		return nil
	})
	return
}

// ListChildren gives the backups made on top of this one
// (virDomainBackupListChildren; all descendants with
// DOMAIN_BACKUP_LIST_DESCENDANTS). Free each one.
func (b *Backup) ListChildren(flags DomainBackupListFlags) (list []*Backup, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var arr *C.virDomainBackupPtr
		var cerr C.lvbError
		n := C.lvb_list_children(p, &arr, C.uint(flags), &cerr)
		if n < 0 {
			return takeError(&cerr)
		}
		list = takeArray(arr, n)
		return nil
	})
	return
}

// BackupParameters describes a backup job (virDomainBackupGetParameters);
// values are live while the job runs.
type BackupParameters struct {
	State          DomainBackupState // "state"
	Incremental    bool              // "incremental": a disk was copied incrementally
	BytesTotal     uint64            // "bytes.total": bytes the job has to examine
	BytesProcessed uint64            // "bytes.processed": examined so far
	BytesWritten   uint64            // "bytes.written": data stored in the targets
	Elapsed        time.Duration     // "time.elapsed" (frozen when the job ends)
	Disks          uint              // "disks"
	Error          string            // "error": the reason, only when State is FAILED

	// While Verify runs on the backup: "verify.bytes.total" and
	// "verify.bytes.processed".
	VerifySet            bool
	VerifyBytesTotal     uint64
	VerifyBytesProcessed uint64

	// Each disk's progress, "disk.<i>.*", in the backup's disk order; their
	// BytesProcessed add up to the job's.
	DiskProgress []DiskProgress
}

// DiskProgress is one disk of a backup job (its "disk.<i>.*" parameters).
type DiskProgress struct {
	Name           string // "disk.<i>.name": the disk's name in the domain
	BytesTotal     uint64 // "disk.<i>.bytes.total": the disk's size
	BytesProcessed uint64 // "disk.<i>.bytes.processed": examined so far
}

// Parameters describes the backup's job; flags: 0.
func (b *Backup) Parameters(flags uint32) (params *BackupParameters, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var cp C.lvbParams
		var cerr C.lvbError
		if C.lvb_get_parameters(p, &cp, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		params = &BackupParameters{
			State:                DomainBackupState(cp.state),
			Incremental:          cp.incremental != 0,
			BytesTotal:           uint64(cp.bytes_total),
			BytesProcessed:       uint64(cp.bytes_processed),
			BytesWritten:         uint64(cp.bytes_written),
			Elapsed:              time.Duration(cp.elapsed_ms) * time.Millisecond,
			Disks:                uint(cp.disks),
			VerifySet:            cp.has_verify != 0,
			VerifyBytesTotal:     uint64(cp.verify_total),
			VerifyBytesProcessed: uint64(cp.verify_processed),
		}
		if cp.error != nil {
			params.Error = C.GoString(cp.error)
		}
		if cp.ndisk > 0 {
			disks := unsafe.Slice(cp.disk, int(cp.ndisk))
			params.DiskProgress = make([]DiskProgress, len(disks))
			for i, d := range disks {
				params.DiskProgress[i] = DiskProgress{
					BytesTotal:     uint64(d.bytes_total),
					BytesProcessed: uint64(d.bytes_processed),
				}
				if d.name != nil {
					params.DiskProgress[i].Name = C.GoString(d.name)
				}
			}
		}
		C.lvb_params_free(&cp)
		return nil
	})
	return
}

// FinishJobFlags is virDomainBackupFinishJob as it is: with 0 it blocks
// until the job ends (it cannot be interrupted: prefer FinishJob); with
// DOMAIN_BACKUP_FINISH_JOB_CHECK it returns 1 while the job runs; with
// DOMAIN_BACKUP_FINISH_JOB_CANCEL it cancels the job. It returns 0 when the
// job completed, and the job's error if it failed or was cancelled.
func (b *Backup) FinishJobFlags(flags DomainBackupFinishJobFlags) (ret int, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		r := C.lvb_finish_job(p, C.uint(flags), &cerr)
		if r < 0 {
			return takeError(&cerr)
		}
		ret = int(r)
		return nil
	})
	return
}

// CheckJob tells, without blocking, whether the backup job still runs:
// (true, nil) while it runs, (false, nil) once it completed, and the job's
// error once it failed or was cancelled.
func (b *Backup) CheckJob() (running bool, err error) {
	r, err := b.FinishJobFlags(DOMAIN_BACKUP_FINISH_JOB_CHECK)
	return r == 1, err
}

// FinishJob waits for the backup job to end: nil if it completed, the
// job's *Error if it failed or was cancelled. For an unmanaged export it
// ends the export.
//
// When ctx ends first, FinishJob aborts the job (as AbortJob: its partial
// data and catalog entry are removed) and returns an error wrapping
// ctx.Err(), so errors.Is(err, context.Canceled) or
// context.DeadlineExceeded holds. A job that completed before the abort
// reached it is kept, and FinishJob returns nil. To stop waiting without
// aborting, poll CheckJob instead.
//
// It asks the library every few milliseconds (5 ms, doubling up to 100 ms)
// instead of blocking in C, so a cancelled ctx is honoured at once.
func (b *Backup) FinishJob(ctx context.Context) error {
	if b != nil && b.unmanaged {
		if err := ctx.Err(); err != nil {
			if aerr := b.AbortJob(0); aerr != nil {
				return aerr
			}
			return fmt.Errorf("libvirtbackup: export ended: %w", err)
		}
		_, err := b.FinishJobFlags(0)
		return err
	}
	delay := 5 * time.Millisecond
	for {
		running, err := b.CheckJob()
		if err != nil || !running {
			return err
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return b.abortFor(ctx)
		case <-timer.C:
		}
		if delay < 100*time.Millisecond {
			delay *= 2
		}
	}
}

// abortFor aborts the job because ctx ended.
func (b *Backup) abortFor(ctx context.Context) error {
	err := b.AbortJob(0)
	var e *Error
	if errors.As(err, &e) && e.Code == ERR_OPERATION_INVALID {
		// The job ended on its own meanwhile: report how.
		_, err := b.CheckJob()
		return err
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("libvirtbackup: backup job aborted: %w", ctx.Err())
}

// AbortJob cancels the job (or ends the export) and waits until its partial
// data is removed (virDomainBackupAbortJob); flags: 0. It fails with
// ERR_OPERATION_INVALID when the job has already ended.
func (b *Backup) AbortJob(flags uint32) error {
	return b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		if C.lvb_abort_job(p, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
}

// Delete deletes the backup (virDomainBackupDelete): its data and catalog
// entry; with DOMAIN_BACKUP_DELETE_ALL_CHILDREN its descendants too, with
// DOMAIN_BACKUP_DELETE_ALL every backup of the domain. A backup with
// children is merged into them first. The Backup still needs Free; other
// calls on it then fail with ERR_NO_DOMAIN_BACKUP.
func (b *Backup) Delete(flags DomainBackupDeleteFlags) error {
	return b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		if C.lvb_delete(p, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
}

// Verify re-reads every stored block of the backup through its chain and
// checks it against the digests recorded at backup time
// (virDomainBackupVerify; flags: 0): nil when every disk matches,
// ERR_OPERATION_FAILED naming the first mismatch. A library built without
// virDomainBackupVerify gives ERR_NO_SUPPORT ("not supported by this
// library build").
func (b *Backup) Verify(flags uint32) error {
	return b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		if C.lvb_verify(p, C.uint(flags), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
}
