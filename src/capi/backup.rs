//! Exports: creating, finding, describing and deleting backups.

use std::ffi::{c_char, c_int, c_uint, c_void};

use virt::sys;

use super::{ffi_entry, is_ours, malloc_string, new_handle, return_list, virDomainBackupPtr};
use crate::error::Error;
use crate::ops::backup::Backup;
use crate::ops::history;

/// virDomainBackupCreateXML:
/// @domain: a domain object
/// @xmlDesc: a <domainbackup> document describing the backup
/// @flags: bitwise-OR of virDomainBackupCreateFlags
///
/// Start a managed backup of @domain's disks. Everything is checked first
/// (XML, disk names, parent, targets); on any problem nothing is created.
/// A running QEMU domain's disks are served by libvirt's pull-mode backup
/// job (one new libvirt checkpoint per backup, named
/// "libvirt-backup-<backup uuid>") and copied by the library: the backup
/// holds the disks as they were when this call returned. Every backup's
/// digest index is written as its data is.
/// VIR_DOMAIN_BACKUP_CREATE_QUIESCE freezes the guest's file systems through
/// its agent around that moment; without an agent the call fails and
/// creates nothing. Inactive domains, and domains of drivers without backup
/// jobs (the test driver), are copied by the library itself.
/// With a <parent>, each disk is stored as a qcow2 delta whose backing file
/// is the parent's copy of that disk, holding only the 64 KiB chunks whose
/// digest differs from the parent's digest index (running QEMU domains:
/// among the blocks the parent's checkpoint bitmap marks). A disk that is new, shrank,
/// changed format, or whose parent copy, index or checkpoint is gone or
/// unusable (a parent taken while the domain was off, a raw disk, a broken
/// bitmap) is copied in full (backupmode='full');
/// VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK makes that an
/// error (VIR_ERR_OPERATION_INVALID). <disk type='volume'> targets are new
/// volumes of a file-backed storage pool, created through libvirt.
/// The copy then runs as a background job and the backup is listed at once
/// with state "running"; with VIR_DOMAIN_BACKUP_CREATE_WAIT the call returns
/// only when the job has ended. Explicit targets and default-target folders
/// inside the backup catalog are refused (VIR_ERR_INVALID_ARG), and so is a
/// catalog folder another user could write to (VIR_ERR_OPERATION_FAILED,
/// for every call that uses the catalog).
///
/// The document is checked as libvirt's schema validation checks libvirt's:
/// one that is not well-formed XML 1.0 (UTF-8; no DOCTYPE, so no entities
/// beyond the predefined ones), that holds an element or attribute outside
/// the <domainbackup> vocabulary of API.md, repeats a single element, or is
/// over the limits (1 MiB, 64 levels, 1024 disks) is refused with
/// VIR_ERR_XML_ERROR naming its line and column, and nothing is done.
///
/// Returns a new backup object (one reference: release it with
/// virDomainBackupFree()), or NULL on error, including a job that failed
/// under VIR_DOMAIN_BACKUP_CREATE_WAIT.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupCreateXML(
    domain: sys::virDomainPtr,
    xmlDesc: *const c_char,
    flags: c_uint,
) -> virDomainBackupPtr {
    ffi_entry!(virDomainBackupCreateXML, std::ptr::null_mut(), |cx| {
        let dom = cx.domain(domain)?;
        let xml = cx.str_arg(xmlDesc, "xmlDesc")?;
        let opts = cx.options(flags)?;
        new_handle(history::create(&dom, xml, opts)?)
    })
}

/// virDomainBackupStartUnmanaged:
/// @domain: a domain object, or NULL to export a stored backup
/// @xmlDesc: a <domainbackup> document with a <server> and the disks to export
/// @flags: 0 or VIR_DOMAIN_BACKUP_CREATE_QUIESCE (running QEMU domains)
///
/// Start a read-only NBD export of @domain's disks as they are now, for a
/// backup tool of the caller's: one server (<server transport='tcp'
/// name='H' port='P'/> or transport='unix' socket='/path'), each disk under
/// its exportname (default: its name). A running QEMU domain is exported by
/// libvirt's pull-mode backup job (QEMU keeps the old data of blocks the
/// guest overwrites in scratch files, removed at the end); a shut-off
/// domain, or one of a driver without backup jobs, by qemu-storage-daemon
/// over its image files, which its image locks keep unchanged (the domain
/// cannot start until the export ends). With a <parent>, each export also
/// carries the changes since that backup as a dirty bitmap
/// ("qemu:dirty-bitmap:<exportbitmap>"): the parent's checkpoint bitmap, or,
/// for a parent without one, bits computed from its digest index and served
/// through an overlay. virDomainBackupGetXMLDesc() gives the server (with
/// tls='yes' for a TLS export), and each disk's exportname and
/// exportbitmap. End it with virDomainBackupFinishJob(0) or
/// virDomainBackupAbortJob(); freeing the handle does not end it. Unmanaged
/// backups are never listed; Delete and ListChildren fail on them with
/// VIR_ERR_OPERATION_INVALID.
///
/// Who can read the export: anyone who connects reads the disks.
/// Warning: a plain TCP export (no tls='yes') is readable by anyone who can
/// reach the port, so its server must be a loopback address (127.0.0.1,
/// ::1, a name resolving only to loopback), else VIR_ERR_INVALID_ARG. A
/// unix socket is made mode 0600 (its owner only) before this call returns;
/// its folder is the caller's choice.
///
/// TLS: <server transport='tcp' ... tls='yes'/> serves NBD over TLS with
/// x509 certificates, and only to clients that show a certificate signed by
/// the same CA; such a server may listen on any address (0.0.0.0, a LAN
/// address). The certificates: a running QEMU domain's export is served by
/// libvirt, with the folder and client check of libvirt's qemu.conf
/// (backup_tls_x509_cert_dir, else default_tls_x509_cert_dir, else
/// /etc/pki/qemu; backup_tls_x509_verify, else default_tls_x509_verify,
/// else on); a non-loopback address needs that check on, as seen in the
/// qemu.conf of a local connection (qemu:///system: /etc/libvirt/qemu.conf).
/// The exports qemu-storage-daemon serves (shut-off domains, stored
/// backups) always check client certificates, from the folder named by the
/// environment variable LIBVIRT_BACKUP_TLS_X509_DIR if set (libvirt's
/// exports do not look at it), else the same folder as libvirt's (the
/// qemu.conf of the system daemon for root, of the session daemon
/// otherwise). The folder must hold ca-cert.pem,
/// server-cert.pem and server-key.pem as regular files (no symbolic links),
/// must not be writable by group or others, and the key must not be
/// readable by others (for qemu-storage-daemon: by anyone but its owner,
/// this user or root); otherwise VIR_ERR_CONFIG_UNSUPPORTED names the
/// file, and nothing is started. tls='yes' with a unix socket is
/// VIR_ERR_CONFIG_UNSUPPORTED. A client reads such an export with, e.g.,
/// nbdinfo/nbdcopy 'nbds://HOST:PORT/EXPORT?tls-certificates=DIR', DIR
/// holding ca-cert.pem, client-cert.pem and client-key.pem.
///
/// With a NULL @domain, @xmlDesc holds the <uuid> of a completed managed
/// backup and a <server>: that stored point in time is served read-only
/// (same <disks>/exportname rules, every disk of the backup by default),
/// each disk through the backup's own chain of files, by
/// qemu-storage-daemon; no domain is used, no hypervisor connection but
/// for an encrypted backup's keys (libvirt secrets, missing:
/// VIR_ERR_NO_SECRET before anything starts; handed to the daemon through
/// pipes, never on its command line), and nothing is copied. @flags must
/// be 0; a <parent> is not supported yet there. While it runs, deleting
/// the backup or one of its ancestors fails with
/// VIR_ERR_OPERATION_INVALID. It ends with FinishJob or AbortJob; its
/// virDomainBackupGetDomain() fails with VIR_ERR_NO_DOMAIN. A <uuid> with
/// a non-NULL @domain is VIR_ERR_INVALID_ARG.
///
/// The document is checked as libvirt's schema validation checks libvirt's:
/// one that is not well-formed XML 1.0 (UTF-8; no DOCTYPE, so no entities
/// beyond the predefined ones), that holds an element or attribute outside
/// the <domainbackup> vocabulary of API.md, repeats a single element, or is
/// over the limits (1 MiB, 64 levels, 1024 disks) is refused with
/// VIR_ERR_XML_ERROR naming its line and column, and nothing is done.
///
/// Returns a new backup object (release it with virDomainBackupFree()), or
/// NULL on error (VIR_ERR_OPERATION_INVALID if the domain already has a
/// backup job or export, or the parent's changes cannot be exported).
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupStartUnmanaged(
    domain: sys::virDomainPtr,
    xmlDesc: *const c_char,
    flags: c_uint,
) -> virDomainBackupPtr {
    ffi_entry!(virDomainBackupStartUnmanaged, std::ptr::null_mut(), |cx| {
        if domain.is_null() {
            // The export of a stored backup: the one form without a domain.
            let xml = cx.str_arg(xmlDesc, "xmlDesc")?;
            cx.check_flags(flags, 0)?;
            return new_handle(history::export_stored(xml)?);
        }
        let dom = cx.domain(domain)?;
        let xml = cx.str_arg(xmlDesc, "xmlDesc")?;
        let opts = cx.options(flags)?;
        new_handle(history::start_unmanaged(&dom, xml, opts)?)
    })
}

/// Reset a caller's out pointer before anything can fail.
fn clear_out(backups: *mut *mut virDomainBackupPtr) {
    if !backups.is_null() {
        // SAFETY: a non-NULL out pointer points to writable storage.
        unsafe { *backups = std::ptr::null_mut() };
    }
}

/// virDomainBackupList:
/// @domain: a domain object, or NULL for every domain in the catalog
/// @backups: where to store the array of backups, or NULL to only count them
/// @flags: bitwise-OR of virDomainBackupListFlags (FULL and INCREMENTAL
///         exclude each other; DESCENDANTS is for virDomainBackupListChildren())
///
/// Collect @domain's managed backups (completed and running), oldest first.
/// With a NULL @domain, collect every backup of every domain in the
/// catalog, whether the domain is still defined or not (e.g. undefined
/// with virsh undefine, which knows nothing of backups), oldest first
/// across domains; the flags filter the same way (LATEST gives the one
/// newest backup of the whole catalog). Each backup's domain is looked up
/// again through the connection URI the backup was taken with:
/// virDomainBackupGetDomain() of a backup whose domain is gone fails with
/// VIR_ERR_NO_DOMAIN, and its XML still names the domain (name and UUID)
/// and holds its saved definition. Such a backup restores as a new domain
/// (VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) or to files.
/// If @backups is non-NULL, *backups is set to a malloc'd array of
/// count + 1 entries, the last NULL: free each entry with
/// virDomainBackupFree(), then the array with free(). On error *backups is NULL.
/// A catalog record of the domain that cannot be read, or that says
/// "running" without the lock file its job would have made, fails the call
/// with VIR_ERR_OPERATION_FAILED naming the file (nothing is removed).
///
/// Returns the number of backups, or -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupList(
    domain: sys::virDomainPtr,
    backups: *mut *mut virDomainBackupPtr,
    flags: c_uint,
) -> c_int {
    clear_out(backups);
    ffi_entry!(virDomainBackupList, -1, |cx| {
        if domain.is_null() {
            // The whole catalog: the one form without a domain.
            let filter = cx.options(flags)?;
            return return_list(cx, Backup::list_all(filter)?, backups);
        }
        let dom = cx.domain(domain)?;
        let filter = cx.options(flags)?;
        return_list(cx, Backup::list(&dom, filter)?, backups)
    })
}

/// virDomainBackupListChildren:
/// @backup: a backup object
/// @backups: where to store the array of backups, or NULL to only count them
/// @flags: bitwise-OR of virDomainBackupListFlags
///
/// Collect the direct children of @backup (backups made incrementally on top
/// of it), or all its descendants with VIR_DOMAIN_BACKUP_LIST_DESCENDANTS.
/// The array is returned and freed as for virDomainBackupList().
///
/// Returns the number of backups, or -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupListChildren(
    backup: virDomainBackupPtr,
    backups: *mut *mut virDomainBackupPtr,
    flags: c_uint,
) -> c_int {
    clear_out(backups);
    ffi_entry!(virDomainBackupListChildren, -1, |cx| {
        let b = cx.backup(backup)?;
        let (scope, filter) = cx.options(flags)?;
        return_list(cx, b.list_children(scope, filter)?, backups)
    })
}

/// virDomainBackupLookupByUUID:
/// @uuid: the backup's UUID in its string form
/// @flags: extra flags; not used yet, so callers should always pass 0
///
/// Find a managed backup of any domain in the catalog. The backup's domain is
/// looked up again through the connection URI it was taken with.
///
/// Returns a new backup object (release it with virDomainBackupFree()), or
/// NULL on error (VIR_ERR_NO_DOMAIN_BACKUP if there is no such backup).
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupLookupByUUID(
    uuid: *const c_char,
    flags: c_uint,
) -> virDomainBackupPtr {
    ffi_entry!(virDomainBackupLookupByUUID, std::ptr::null_mut(), |cx| {
        let uuid = cx.str_arg(uuid, "uuid")?;
        cx.check_flags(flags, 0)?;
        new_handle(Backup::lookup(uuid)?)
    })
}

/// virDomainBackupObjGetXMLDesc:
/// @backup: a backup object
/// @flags: 0 or VIR_DOMAIN_XML_SECURE
///
/// The unambiguous name of virDomainBackupGetXMLDesc() for backup objects
/// (libvirt >= 6.0 has a function of that name taking a virDomainPtr; see the
/// header). Describes the backup as a <domainbackup> document, which parses
/// back as virDomainBackupCreateXML() input. The document ends with
/// <definition>: the domain's definition as it was saved at backup time (a
/// libvirt <domain> document, what a restore as a new domain defines),
/// there whether or not the domain still exists; without
/// VIR_DOMAIN_XML_SECURE it leaves out what libvirt shows only with that
/// flag (graphics passwords, network disks' cookies).
///
/// Returns a malloc'd string the caller must free(), or NULL on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupObjGetXMLDesc(
    backup: virDomainBackupPtr,
    flags: c_uint,
) -> *mut c_char {
    // Errors name the function callers know (the header routes it here).
    ffi_entry!(virDomainBackupGetXMLDesc, std::ptr::null_mut(), |cx| {
        let b = cx.backup(backup)?;
        malloc_string(&b.xml_desc_with(cx.options(flags)?)?)
    })
}

type LibvirtGetXMLDesc = unsafe extern "C" fn(sys::virDomainPtr, c_uint) -> *mut c_char;

/// libvirt's own virDomainBackupGetXMLDesc, found by version so that it is
/// never our export of the same name.
fn libvirt_backup_get_xml_desc() -> Option<LibvirtGetXMLDesc> {
    // SAFETY: dlvsym with constant NUL-terminated names; the symbol, if
    // found, has libvirt's documented signature.
    unsafe {
        let sym = libc::dlvsym(
            libc::RTLD_NEXT,
            c"virDomainBackupGetXMLDesc".as_ptr(),
            c"LIBVIRT_6.0.0".as_ptr(),
        );
        if sym.is_null() {
            None
        } else {
            Some(std::mem::transmute::<*mut c_void, LibvirtGetXMLDesc>(sym))
        }
    }
}

/// Exported as `virDomainBackupGetXMLDesc` under our own symbol version (the
/// Makefile's version script); not declared in the header. It answers for
/// our handles (live or released) and NULL, and hands a virDomainPtr to
/// libvirt's function (whose error is then libvirt's, as for any libvirt
/// call), so whichever library a caller's reference binds to, both kinds of
/// object work. Any other object (a virConnectPtr, say) is refused here with
/// our own VIR_ERR_INVALID_ARG, never NULL with "no error".
#[unsafe(export_name = "virDomainBackupGetXMLDesc")]
pub extern "C" fn get_xml_desc_dispatch(obj: *mut c_void, flags: c_uint) -> *mut c_char {
    if obj.is_null() || is_ours(obj as virDomainBackupPtr) {
        return virDomainBackupObjGetXMLDesc(obj as virDomainBackupPtr, flags);
    }
    let dom = obj as sys::virDomainPtr;
    // SAFETY: virDomainRef checks the object's class and refuses others;
    // the reference it takes on a domain is dropped at once.
    if unsafe { sys::virDomainRef(dom) } == 0 {
        // SAFETY: drops the reference virDomainRef just took.
        unsafe { sys::virDomainFree(dom) };
        if let Some(f) = libvirt_backup_get_xml_desc() {
            // SAFETY: a live virDomainPtr, as checked.
            return unsafe { f(dom, flags) };
        }
    }
    ffi_entry!(virDomainBackupGetXMLDesc, std::ptr::null_mut(), |cx| {
        Err(Error::invalid_arg(format!(
            "backup in {} must be a valid virDomainBackupPtr or virDomainPtr",
            cx.name()
        )))
    })
}

/// virDomainBackupGetDomain:
/// @backup: a backup object
///
/// The domain the backup belongs to. No reference is added: the pointer is
/// valid as long as @backup is.
///
/// Returns the domain, or NULL on error (VIR_ERR_NO_DOMAIN if a backup found
/// with virDomainBackupLookupByUUID() or listed with a NULL domain by
/// virDomainBackupList() belongs to a domain that no longer exists, or
/// for the export of a stored backup).
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupGetDomain(backup: virDomainBackupPtr) -> sys::virDomainPtr {
    ffi_entry!(virDomainBackupGetDomain, std::ptr::null_mut(), |cx| {
        let b = cx.backup(backup)?;
        // SAFETY: the handle keeps its reference on the domain.
        Ok(unsafe { b.domain()?.domain().as_ptr() })
    })
}

/// virDomainBackupRef:
/// @backup: a backup object
///
/// Add a reference to @backup; each one is released with virDomainBackupFree().
///
/// Returns 0 on success, -1 on error (VIR_ERR_NO_DOMAIN_BACKUP once the
/// backup has been deleted: only Free is left to do with its handle).
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupRef(backup: virDomainBackupPtr) -> c_int {
    ffi_entry!(virDomainBackupRef, -1, |cx| {
        cx.backup(backup)?.ensure_exists()?;
        cx.handle_ref(backup)?;
        Ok(0)
    })
}

/// virDomainBackupFree:
/// @backup: a backup object
///
/// Release one reference to @backup; the last one frees the object. The
/// backup itself (catalog entry, data, a running job) is not affected. A
/// freed object's address is never handed out again by this process: every
/// later call given it fails with VIR_ERR_INVALID_ARG.
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupFree(backup: virDomainBackupPtr) -> c_int {
    ffi_entry!(virDomainBackupFree, -1, |cx| {
        cx.handle_unref(backup)?;
        Ok(0)
    })
}

/// virDomainBackupDelete:
/// @backup: a backup object
/// @flags: bitwise-OR of virDomainBackupDeleteFlags (ALL and ALL_CHILDREN
///         exclude each other)
///
/// Delete @backup: its catalog entry and, unless
/// VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY, its data files (storage volumes
/// are deleted through libvirt). With VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN
/// its descendants go too; with VIR_DOMAIN_BACKUP_DELETE_ALL every backup of
/// its domain. Without them, a backup that has children is first merged into
/// each direct child: the child's files are rewritten (checked against its
/// digests, then renamed over the old ones) as deltas against @backup's
/// parent, or as full copies if @backup had none, and the child is
/// re-parented; every descendant stays restorable. A crash meanwhile leaves
/// the old or the new state of each child. With METADATA_ONLY the children
/// are re-parented and keep reading through @backup's files. A backup whose
/// job (or a child's) is running is refused (abort it first), and so is a
/// delete that would remove a file another backup's image still names as
/// its backing file (VIR_ERR_OPERATION_INVALID). The record is renamed
/// away before any data goes: a failure or crash midway never leaves a
/// listed backup without its data, and the next List or Delete of the
/// domain finishes a delete cut short. Afterwards the
/// handle is still safe to free, and other calls on it fail with
/// VIR_ERR_NO_DOMAIN_BACKUP.
///
/// Returns 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn virDomainBackupDelete(backup: virDomainBackupPtr, flags: c_uint) -> c_int {
    ffi_entry!(virDomainBackupDelete, -1, |cx| {
        let b = cx.backup(backup)?;
        history::delete(&b, cx.options(flags)?)?;
        Ok(0)
    })
}
