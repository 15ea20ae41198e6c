package libvirtbackup

/*
#include "shim.h"
*/
import "C"

import (
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// UUIDString gives the backup's UUID (virDomainBackupGetUUIDString; read
// once, then kept). An unmanaged export has a UUID of its own.
func (b *Backup) UUIDString() (string, error) {
	b.uuidMu.Lock()
	defer b.uuidMu.Unlock()
	if b.uuid != "" {
		return b.uuid, nil
	}
	err := b.call(func(p C.virDomainBackupPtr) error {
		var buf [C.VIR_UUID_STRING_BUFLEN]C.char
		var cerr C.lvbError
		if C.lvb_get_uuid_string(p, &buf[0], &cerr) < 0 {
			return takeError(&cerr)
		}
		b.uuid = C.GoString(&buf[0])
		return nil
	})
	return b.uuid, err
}

// UUID gives the backup's UUID as its 16 raw bytes
// (virDomainBackupGetUUID).
func (b *Backup) UUID() (uuid [16]byte, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		if C.lvb_get_uuid(p, (*C.uchar)(unsafe.Pointer(&uuid[0])), &cerr) < 0 {
			return takeError(&cerr)
		}
		return nil
	})
	return
}

// GetParent is virDomainBackupGetParent as it is (flags: 0): a new Backup
// on the backup this one was made on (Free it), or ERR_NO_DOMAIN_BACKUP
// for a full backup. Parent gives nil for a full backup instead.
func (b *Backup) GetParent(flags uint32) (parent *Backup, err error) {
	err = b.call(func(p C.virDomainBackupPtr) error {
		var cerr C.lvbError
		h := C.lvb_get_parent(p, C.uint(flags), &cerr)
		if h == nil {
			return takeError(&cerr)
		}
		parent = newBackup(h, false)
		return nil
	})
	return
}

// Parent gives the backup this one was made on, a new Backup to Free, or
// (nil, nil) for a full backup. Deleting a parent re-parents its children
// onto its own parent, so Parent follows merges; an error
// (ERR_NO_DOMAIN_BACKUP) means this backup itself is gone.
func (b *Backup) Parent() (*Backup, error) {
	parent, err := b.GetParent(0)
	var e *Error
	if err == nil || !errors.As(err, &e) || e.Code != ERR_NO_DOMAIN_BACKUP {
		return parent, err
	}
	// No parent, or it was deleted meanwhile (this backup then has a new
	// one): the XML tells, and fails if this backup is gone.
	info, err := b.Info()
	if err != nil {
		return nil, err
	}
	if info.ParentUUID == "" {
		return nil, nil
	}
	return b.GetParent(0)
}

// Backup kinds (BackupInfo.Kind).
const (
	// BackupKindFull is a chain root (DOMAIN_BACKUP_LIST_FULL).
	BackupKindFull = "full"
	// BackupKindIncremental is made on a parent (DOMAIN_BACKUP_LIST_INCREMENTAL).
	BackupKindIncremental = "incremental"
)

// BackupInfo is what a backup's XML says of it (Backup.Info), with the
// sizes of its files.
type BackupInfo struct {
	UUID        string
	ParentUUID  string            // "" for a full backup or an export without <parent>
	Kind        string            // BackupKindFull or BackupKindIncremental
	Time        time.Time         // creation time (second precision); zero for an unmanaged export
	State       DomainBackupState // running, completed, failed or cancelled
	Description string            // "" when none was given
	DomainName  string            // at backup time, also when the domain is gone
	DomainUUID  string
	Disks       []BackupDisk
	// StoredSize is what this backup's own target files take on disk (the
	// sum of the Disks' StoredSize that are known; an incremental's parents
	// are not counted), -1 when none is known.
	StoredSize int64
}

// BackupDisk is one <disk> of a backup's XML; values the XML does not
// carry are "".
type BackupDisk struct {
	Name         string
	Type         string // "file" or "volume"
	Mode         string // "full" or "incremental": how this disk was copied
	Source       string // the image it was copied from
	Target       string // the backup's file
	Format       string // "qcow2" or "raw"
	Pool, Volume string // for a volume target
	ExportName   string // for an unmanaged export
	ExportBitmap string // for an unmanaged export with a <parent>
	// StoredSize: the XML carries no sizes, so this is what Target takes
	// on disk according to stat(2) (allocated blocks × 512, as du counts),
	// or -1 when this process cannot stat it (another host's path, a
	// folder it may not search, a missing file) and for an export.
	StoredSize int64
}

// descXML is the part of a <domainbackup> description Info reads.
type descXML struct {
	UUID         string `xml:"uuid"`
	CreationTime string `xml:"creationTime"`
	Description  string `xml:"description"`
	State        string `xml:"state"`
	Parent       *struct {
		UUID string `xml:"uuid"`
	} `xml:"parent"`
	Domain struct {
		UUID string `xml:"uuid,attr"`
		Name string `xml:"name,attr"`
	} `xml:"domain"`
	Disks []struct {
		Name         string `xml:"name,attr"`
		Type         string `xml:"type,attr"`
		Mode         string `xml:"backupmode,attr"`
		ExportName   string `xml:"exportname,attr"`
		ExportBitmap string `xml:"exportbitmap,attr"`
		Source       struct {
			File string `xml:"file,attr"`
		} `xml:"source"`
		Target struct {
			File   string `xml:"file,attr"`
			Pool   string `xml:"pool,attr"`
			Volume string `xml:"volume,attr"`
		} `xml:"target"`
		Driver struct {
			Type string `xml:"type,attr"`
		} `xml:"driver"`
	} `xml:"disks>disk"`
}

var backupStates = map[string]DomainBackupState{
	"running":   DOMAIN_BACKUP_STATE_RUNNING,
	"completed": DOMAIN_BACKUP_STATE_COMPLETED,
	"failed":    DOMAIN_BACKUP_STATE_FAILED,
	"cancelled": DOMAIN_BACKUP_STATE_CANCELLED,
}

// Info reads the backup's XML (XMLDesc(0)) afresh: a running backup's
// state changes, a deleted one gives ERR_NO_DOMAIN_BACKUP.
func (b *Backup) Info() (*BackupInfo, error) {
	desc, err := b.XMLDesc(0)
	if err != nil {
		return nil, err
	}
	var doc descXML
	if err := xml.Unmarshal([]byte(desc), &doc); err != nil {
		return nil, xmlError("cannot read the backup's XML: %v", err)
	}
	info := &BackupInfo{
		UUID: strings.TrimSpace(doc.UUID), Kind: BackupKindFull,
		Description: doc.Description, DomainName: doc.Domain.Name, DomainUUID: doc.Domain.UUID,
		StoredSize: -1,
	}
	if doc.Parent != nil {
		info.ParentUUID = strings.TrimSpace(doc.Parent.UUID)
		info.Kind = BackupKindIncremental
	}
	state, ok := backupStates[strings.TrimSpace(doc.State)]
	if !ok {
		return nil, xmlError("backup XML with state %q", doc.State)
	}
	info.State = state
	if t := strings.TrimSpace(doc.CreationTime); t != "" {
		secs, err := strconv.ParseInt(t, 10, 64)
		if err != nil {
			return nil, xmlError("backup XML with creationTime %q", t)
		}
		info.Time = time.Unix(secs, 0)
	}
	for _, d := range doc.Disks {
		disk := BackupDisk{
			Name: d.Name, Type: d.Type, Mode: d.Mode, Source: d.Source.File,
			Target: d.Target.File, Format: d.Driver.Type, Pool: d.Target.Pool,
			Volume: d.Target.Volume, ExportName: d.ExportName, ExportBitmap: d.ExportBitmap,
			StoredSize: storedSize(d.Target.File),
		}
		if disk.StoredSize >= 0 {
			info.StoredSize = max0(info.StoredSize) + disk.StoredSize
		}
		info.Disks = append(info.Disks, disk)
	}
	return info, nil
}

func max0(n int64) int64 {
	if n < 0 {
		return 0
	}
	return n
}

// storedSize is what the file at path takes on disk, -1 if unknown.
func storedSize(path string) int64 {
	if path == "" {
		return -1
	}
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1
	}
	return st.Blocks * 512
}

func xmlError(format string, args ...any) error {
	return &Error{Code: ERR_XML_ERROR, Domain: FROM_DOMAIN, Level: ERR_ERROR,
		Message: "XML error: " + fmt.Sprintf(format, args...)}
}

// Kind gives BackupKindFull or BackupKindIncremental (Info().Kind).
func (b *Backup) Kind() (string, error) {
	info, err := b.Info()
	if err != nil {
		return "", err
	}
	return info.Kind, nil
}

// Time gives the creation time (Info().Time).
func (b *Backup) Time() (time.Time, error) {
	info, err := b.Info()
	if err != nil {
		return time.Time{}, err
	}
	return info.Time, nil
}

// State gives the backup's state as its XML says it (Info().State).
func (b *Backup) State() (DomainBackupState, error) {
	info, err := b.Info()
	if err != nil {
		return 0, err
	}
	return info.State, nil
}

// Description gives the <description> given at creation, "" if none.
func (b *Backup) Description() (string, error) {
	info, err := b.Info()
	if err != nil {
		return "", err
	}
	return info.Description, nil
}

// Disks gives the backup's disks (Info().Disks).
func (b *Backup) Disks() ([]BackupDisk, error) {
	info, err := b.Info()
	if err != nil {
		return nil, err
	}
	return info.Disks, nil
}

// StoredSize gives what the backup's own target files take on disk
// (Info().StoredSize; -1 when unknown).
func (b *Backup) StoredSize() (int64, error) {
	info, err := b.Info()
	if err != nil {
		return -1, err
	}
	return info.StoredSize, nil
}
