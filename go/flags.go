package libvirtbackup

/*
#include "shim.h"
*/
import "C"

// DomainBackupCreateFlags are the flags of Domain.CreateXML and
// Domain.StartUnmanaged.
type DomainBackupCreateFlags uint32

const (
	// Freeze guest file systems through the guest agent.
	DOMAIN_BACKUP_CREATE_QUIESCE = DomainBackupCreateFlags(C.VIR_DOMAIN_BACKUP_CREATE_QUIESCE)
	// Fail instead of falling back to a full copy of a disk whose parent is unusable.
	DOMAIN_BACKUP_CREATE_NO_FALLBACK = DomainBackupCreateFlags(C.VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK)
	// Return only when the job has ended (an error if it failed).
	DOMAIN_BACKUP_CREATE_WAIT = DomainBackupCreateFlags(C.VIR_DOMAIN_BACKUP_CREATE_WAIT)
)

// DomainBackupListFlags are the flags of Domain.List and Backup.ListChildren.
type DomainBackupListFlags uint32

const (
	// Only full backups (chain roots).
	DOMAIN_BACKUP_LIST_FULL = DomainBackupListFlags(C.VIR_DOMAIN_BACKUP_LIST_FULL)
	// Only the newest backup.
	DOMAIN_BACKUP_LIST_LATEST = DomainBackupListFlags(C.VIR_DOMAIN_BACKUP_LIST_LATEST)
	// Only incremental backups.
	DOMAIN_BACKUP_LIST_INCREMENTAL = DomainBackupListFlags(C.VIR_DOMAIN_BACKUP_LIST_INCREMENTAL)
	// Only backups with no children.
	DOMAIN_BACKUP_LIST_LEAVES = DomainBackupListFlags(C.VIR_DOMAIN_BACKUP_LIST_LEAVES)
	// ListChildren: all descendants, not just direct children.
	DOMAIN_BACKUP_LIST_DESCENDANTS = DomainBackupListFlags(C.VIR_DOMAIN_BACKUP_LIST_DESCENDANTS)
)

// DomainBackupRestoreFlags are the flags of Restore and
// Domain.RestoreUnmanaged.
type DomainBackupRestoreFlags uint32

const (
	// Define a new domain from the definition saved with the backup.
	DOMAIN_BACKUP_RESTORE_NEW_DOMAIN = DomainBackupRestoreFlags(C.VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN)
	// Allow writing over existing disk images.
	DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK = DomainBackupRestoreFlags(C.VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK)

	// The values below are API.md's EXTENSIONS; they are written out because
	// the C header does not declare them yet. A library that does not know
	// one rejects it with ERR_INVALID_ARG ("unsupported flags").

	// Disks become thin qcow2 overlays on the backup's own chain; no copy.
	DOMAIN_BACKUP_RESTORE_INSTANT = DomainBackupRestoreFlags(1 << 2)
	// Start the restored domain when done.
	DOMAIN_BACKUP_RESTORE_START = DomainBackupRestoreFlags(1 << 3)
	// Write the disks to the given targets; touch no domain, need no connection.
	DOMAIN_BACKUP_RESTORE_FILES_ONLY = DomainBackupRestoreFlags(1 << 4)
)

// DomainBackupDeleteFlags are the flags of Backup.Delete.
type DomainBackupDeleteFlags uint32

const (
	// Every managed backup of this backup's domain.
	DOMAIN_BACKUP_DELETE_ALL = DomainBackupDeleteFlags(C.VIR_DOMAIN_BACKUP_DELETE_ALL)
	// This backup and all its descendants.
	DOMAIN_BACKUP_DELETE_ALL_CHILDREN = DomainBackupDeleteFlags(C.VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN)
	// Forget the backup, keep its data files.
	DOMAIN_BACKUP_DELETE_METADATA_ONLY = DomainBackupDeleteFlags(C.VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY)
)

// DomainBackupFinishJobFlags are the flags of Backup.FinishJobFlags (the
// C call as it is; FinishJob, CheckJob and AbortJob cover its uses).
type DomainBackupFinishJobFlags uint32

const (
	// Cancel the job and wait until its partial data is removed.
	DOMAIN_BACKUP_FINISH_JOB_CANCEL = DomainBackupFinishJobFlags(C.VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL)
	// Do not block: 1 while the job runs.
	DOMAIN_BACKUP_FINISH_JOB_CHECK = DomainBackupFinishJobFlags(C.VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK)
)

// DomainBackupState is the state of a backup job (BackupParameters.State).
type DomainBackupState int

const (
	DOMAIN_BACKUP_STATE_RUNNING   = DomainBackupState(C.VIR_DOMAIN_BACKUP_STATE_RUNNING)
	DOMAIN_BACKUP_STATE_COMPLETED = DomainBackupState(C.VIR_DOMAIN_BACKUP_STATE_COMPLETED)
	DOMAIN_BACKUP_STATE_FAILED    = DomainBackupState(C.VIR_DOMAIN_BACKUP_STATE_FAILED)
	DOMAIN_BACKUP_STATE_CANCELLED = DomainBackupState(C.VIR_DOMAIN_BACKUP_STATE_CANCELLED)
)

// String gives the state as the backup's XML writes it.
func (s DomainBackupState) String() string {
	switch s {
	case DOMAIN_BACKUP_STATE_RUNNING:
		return "running"
	case DOMAIN_BACKUP_STATE_COMPLETED:
		return "completed"
	case DOMAIN_BACKUP_STATE_FAILED:
		return "failed"
	case DOMAIN_BACKUP_STATE_CANCELLED:
		return "cancelled"
	}
	return "unknown"
}

// DomainBackupXMLFlags are the flags of Backup.XMLDesc.
type DomainBackupXMLFlags uint32

const (
	// Include security-sensitive information.
	DOMAIN_BACKUP_XML_SECURE = DomainBackupXMLFlags(C.VIR_DOMAIN_XML_SECURE)
)

// DomainModificationImpact are the flags of Domain.SetDefaultTarget
// (libvirt's virDomainModificationImpact).
type DomainModificationImpact uint32

const (
	DOMAIN_AFFECT_CURRENT = DomainModificationImpact(C.VIR_DOMAIN_AFFECT_CURRENT)
	DOMAIN_AFFECT_LIVE    = DomainModificationImpact(C.VIR_DOMAIN_AFFECT_LIVE)
	DOMAIN_AFFECT_CONFIG  = DomainModificationImpact(C.VIR_DOMAIN_AFFECT_CONFIG)
)

// DomainUndefineFlags are the flags of Domain.Undefine: libvirt's
// virDomainUndefineFlagsValues plus DOMAIN_UNDEFINE_BACKUP.
type DomainUndefineFlags uint32

const (
	DOMAIN_UNDEFINE_MANAGED_SAVE         = DomainUndefineFlags(C.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
	DOMAIN_UNDEFINE_SNAPSHOTS_METADATA   = DomainUndefineFlags(C.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
	DOMAIN_UNDEFINE_NVRAM                = DomainUndefineFlags(C.VIR_DOMAIN_UNDEFINE_NVRAM)
	DOMAIN_UNDEFINE_KEEP_NVRAM           = DomainUndefineFlags(C.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
	DOMAIN_UNDEFINE_CHECKPOINTS_METADATA = DomainUndefineFlags(C.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
	// Also remove the domain's backup metadata (the data files stay).
	DOMAIN_UNDEFINE_BACKUP = DomainUndefineFlags(C.VIR_DOMAIN_UNDEFINE_BACKUP)
)
