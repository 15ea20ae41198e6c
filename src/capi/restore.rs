//! Exports: restoring backups.

use std::ffi::{c_char, c_int, c_uint};

use virt::sys;

use super::ffi_entry;
use crate::ops::history;

/// virDomainBackupRestore:
/// @xmlDesc: a <domainbackup> document naming the backup (<uuid>) and,
///           optionally, the disks to restore and where
/// @flags: bitwise-OR of virDomainBackupRestoreFlags
///
/// Restore a managed backup (any backup of a chain: the disks as they were
/// when it was taken, byte for byte) into its own domain or, with
/// VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN, as a new persistent domain.
///
/// Into its own domain: the domain must be shut off (else
/// VIR_ERR_OPERATION_INVALID). Each disk goes to its current file unless the
/// request gives a <target file>; a file of another format (<driver type>)
/// or another size is replaced by a new file renamed over it, a file of the
/// same format and size is rewritten in place, writing only the 64 KiB
/// chunks that differ. The domain definition is updated to any new file or
/// format. As a new domain: the saved definition with the new name (default
/// '<name>-restore-<first 8 of the backup uuid>'), a new UUID, new MAC
/// addresses, only the restored disks, each at its <target file> or
/// '<folder of the original>/<name>-<disk>.<format>' (qcow2 by default).
/// A target inside the backup catalog is refused (VIR_ERR_INVALID_ARG); an
/// existing <target file> that is not the disk's current image is replaced
/// whole (its format is never guessed from its bytes), in the <driver type>
/// given, else qcow2.
///
/// An existing file is only written with
/// VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK; without it the call
/// fails with VIR_ERR_OPERATION_INVALID and touches nothing. Everything read
/// from the backup is checked against the digests recorded at backup time
/// (VIR_ERR_OPERATION_FAILED on a mismatch, or when the digest index of a
/// backup the library copied is missing: "the data cannot be verified";
/// a running domain's backup, copied by QEMU, has its index built from its
/// image). New files are written and
/// synced before any existing disk is touched, and removed if one fails; an
/// in-place rewrite starts only after every chunk it will write has been
/// read and verified. A failure during that last pass can leave the disk
/// partly restored; running the restore again completes it. If the process
/// dies after writing new files but before the domain using them is
/// defined, the next process that opens the catalog removes them.
///
/// VIR_DOMAIN_BACKUP_RESTORE_START starts the domain once its disks are
/// restored (the restore stays done if it fails to start).
///
/// VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY writes the selected disks to image
/// files and touches no domain (neither the backup's own, which need not
/// exist any more, nor a new one): each disk to its <target file>, else to
/// '<dir>/<disk>.<format>' where <target dir='…'/> sits directly under
/// <domainbackup> (the folder must exist); qcow2 unless <driver type='raw'/>.
/// It opens no hypervisor connection (the catalog and the images are
/// enough), so it works with no libvirt daemon running. An existing file is
/// refused (VIR_ERR_OPERATION_INVALID, nothing written) unless
/// VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK is given: then a file of
/// the same format and size is rewritten in place (only differing chunks),
/// another one replaced by a new file. A file of the backup's own chain is
/// never a target (VIR_ERR_INVALID_ARG). It cannot be combined with
/// NEW_DOMAIN, INSTANT or START; <target dir> is only for it.
///
/// VIR_DOMAIN_BACKUP_RESTORE_INSTANT copies nothing: each restored disk
/// becomes a new, empty qcow2 overlay whose backing file is the backup's own
/// image of that disk (named explicitly, with its recorded format), at its
/// <target file> or next to the disk's file ('<newname>-<disk>.qcow2' with
/// NEW_DOMAIN, '<name>-<disk>-instant-<backup uuid>.qcow2' into the own
/// shut-off domain, whose current files are left as they are); the domain
/// is defined (and started with START) at once whatever the disks' size.
/// The overlay must be a new file (<driver type> can only be qcow2). The
/// guest writes to the overlay only; the backup is never modified. While a
/// disk reads through its files, the backup is pinned: deleting it or one
/// of its ancestors fails with VIR_ERR_OPERATION_INVALID naming the domain
/// and disk, and its XML lists <pinnedby domain='…' disk='…' overlay='…'/>.
/// virDomainBlockPull (virsh blockpull --wait) on the running domain makes
/// the disk independent; the pin is dropped the next time pins are read
/// once no disk of the domain reads the backup's files (or the domain is
/// gone). The backup's images must be readable by the hypervisor. For an
/// encrypted backup the overlay is encrypted too (the key of the nearest
/// encrypted level) and the definition names every level's libvirt secret
/// (`<encryption>` in each `<source>` of an explicit `<backingStore>`
/// chain), so libvirt hands QEMU the keys; a missing secret is
/// VIR_ERR_NO_SECRET, with no overlay and no domain.
///
/// The document is checked as libvirt's schema validation checks libvirt's:
/// one that is not well-formed XML 1.0 (UTF-8; no DOCTYPE, so no entities
/// beyond the predefined ones), that holds an element or attribute outside
/// the <domainbackup> vocabulary of API.md, repeats a single element, or is
/// over the limits (1 MiB, 64 levels, 1024 disks) is refused with
/// VIR_ERR_XML_ERROR naming its line and column, and nothing is done.
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupRestore(xmlDesc: *const c_char, flags: c_uint) -> c_int {
    ffi_entry!(virDomainBackupRestore, -1, |cx| {
        let xml = cx.str_arg(xmlDesc, "xmlDesc")?;
        history::restore(xml, cx.options(flags)?)?;
        Ok(0)
    })
}

/// virDomainBackupRestoreUnmanaged:
/// @domain: the domain whose disks are written
/// @xmlDesc: a <domainbackup> document giving each disk's source (file or NBD)
/// @flags: bitwise-OR of virDomainBackupRestoreFlags
///
/// Write @domain's disks from sources the library did not make, with the
/// rules of virDomainBackupRestore(): each <disk> names one of @domain's
/// disks and its source: <source file='…'><driver type='raw|qcow2'/></source>
/// (the format is required, VIR_ERR_XML_ERROR without it: a format is never
/// guessed from the file's bytes, which a guest may have written; a qcow2
/// file with a backing file is refused with VIR_ERR_INVALID_ARG) or an NBD
/// export (see below), with an optional <target file>
/// and <driver type>; VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN defines a new
/// domain from @domain's current definition (name from <domain name>, else
/// '<name>-restore-<8 random hex digits>'). An existing file is replaced by
/// a complete new file renamed over it (there is no digest index to compare
/// against). An NBD source is <source protocol='nbd' name='EXPORT'> with
/// <host name='H' port='P'/> or <host transport='unix' socket='/path'/>.
///
/// With VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY the sources are written to
/// files as virDomainBackupRestore() does (<target file>, or <target dir>
/// giving '<dir>/<disk>.<format>'): @domain is neither read nor changed,
/// the disk names only name the files. VIR_DOMAIN_BACKUP_RESTORE_START
/// starts the domain once its disks are written. INSTANT is not supported
/// yet from unmanaged sources (VIR_ERR_NO_SUPPORT).
///
/// The document is checked as libvirt's schema validation checks libvirt's:
/// one that is not well-formed XML 1.0 (UTF-8; no DOCTYPE, so no entities
/// beyond the predefined ones), that holds an element or attribute outside
/// the <domainbackup> vocabulary of API.md, repeats a single element, or is
/// over the limits (1 MiB, 64 levels, 1024 disks) is refused with
/// VIR_ERR_XML_ERROR naming its line and column, and nothing is done.
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupRestoreUnmanaged(
    domain: sys::virDomainPtr,
    xmlDesc: *const c_char,
    flags: c_uint,
) -> c_int {
    ffi_entry!(virDomainBackupRestoreUnmanaged, -1, |cx| {
        let dom = cx.domain(domain)?;
        let xml = cx.str_arg(xmlDesc, "xmlDesc")?;
        history::restore_unmanaged(&dom, xml, cx.options(flags)?)?;
        Ok(0)
    })
}
