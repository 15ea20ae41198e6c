/*
 * shim.h: the C side of package libvirtbackup.
 *
 * The library's last error is thread-local, and a goroutine may move to
 * another OS thread between two cgo calls. So each shim makes one call and,
 * when it fails, copies the error into @err in the same cgo call; Go never
 * reads the thread-local error by itself. The same holds for the libvirt
 * calls the package makes (their error is libvirt's own thread-local one).
 */
#ifndef LIBVIRTBACKUP_GO_SHIM_H
#define LIBVIRTBACKUP_GO_SHIM_H

#include <libvirt-backup/libvirt-backup.h>

/* An error copied out of the thread that raised it; message is malloc'd
 * (NULL if none) and freed by the Go side. */
typedef struct lvbError {
    int code;
    int domain;
    int level;
    char *message;
} lvbError;

/* One disk's "disk.<i>.*" parameters; name is malloc'd. */
typedef struct lvbDiskParams {
    char *name;
    unsigned long long bytes_total;
    unsigned long long bytes_processed;
} lvbDiskParams;

/* virDomainBackupGetParameters() decoded: no typed-parameter union reaches
 * Go. error is malloc'd (NULL when absent); disk is a malloc'd array of
 * ndisk entries (NULL when none), released with lvb_params_free(). */
typedef struct lvbParams {
    int state;
    int incremental;
    unsigned long long bytes_total;
    unsigned long long bytes_processed;
    unsigned long long bytes_written;
    unsigned long long elapsed_ms;
    unsigned int disks;
    char *error;
    int has_verify;
    unsigned long long verify_total;
    unsigned long long verify_processed;
    lvbDiskParams *disk;
    unsigned int ndisk;
} lvbParams;

void lvb_init(void);

/* libvirt */
virConnectPtr lvb_connect_open(const char *uri, lvbError *err);
int lvb_connect_close(virConnectPtr conn, lvbError *err);
virDomainPtr lvb_domain_lookup(virConnectPtr conn, const char *name_or_uuid, lvbError *err);
virDomainPtr lvb_domain_define(virConnectPtr conn, const char *xml, lvbError *err);
int lvb_domain_ref(virDomainPtr dom, lvbError *err);
int lvb_domain_free(virDomainPtr dom, lvbError *err);
char *lvb_domain_name(virDomainPtr dom, lvbError *err);
int lvb_domain_uuid(virDomainPtr dom, char *buf, lvbError *err);

/* libvirt-backup */
virDomainBackupPtr lvb_create_xml(virDomainPtr dom, const char *xml, unsigned int flags,
                                  lvbError *err);
virDomainBackupPtr lvb_start_unmanaged(virDomainPtr dom, const char *xml, unsigned int flags,
                                       lvbError *err);
int lvb_list(virDomainPtr dom, virDomainBackupPtr **out, unsigned int flags, lvbError *err);
int lvb_list_children(virDomainBackupPtr backup, virDomainBackupPtr **out, unsigned int flags,
                      lvbError *err);
int lvb_restore(const char *xml, unsigned int flags, lvbError *err);
int lvb_restore_unmanaged(virDomainPtr dom, const char *xml, unsigned int flags, lvbError *err);
int lvb_set_default_target(virDomainPtr dom, const char *xml, unsigned int flags, lvbError *err);
int lvb_undefine(virDomainPtr dom, unsigned int flags, lvbError *err);
virDomainBackupPtr lvb_lookup_by_uuid(const char *uuid, unsigned int flags, lvbError *err);
char *lvb_get_xml_desc(virDomainBackupPtr backup, unsigned int flags, lvbError *err);
virDomainPtr lvb_get_domain(virDomainBackupPtr backup, lvbError *err);
int lvb_finish_job(virDomainBackupPtr backup, unsigned int flags, lvbError *err);
int lvb_abort_job(virDomainBackupPtr backup, unsigned int flags, lvbError *err);
int lvb_delete(virDomainBackupPtr backup, unsigned int flags, lvbError *err);
int lvb_free(virDomainBackupPtr backup, lvbError *err);
int lvb_get_parameters(virDomainBackupPtr backup, lvbParams *out, unsigned int flags,
                       lvbError *err);
/* Free what lvb_get_parameters() allocated in @p (not @p itself). */
void lvb_params_free(lvbParams *p);
int lvb_verify(virDomainBackupPtr backup, unsigned int flags, lvbError *err);
/* The accessors: @uuid holds VIR_UUID_BUFLEN bytes, @buf VIR_UUID_STRING_BUFLEN. */
int lvb_get_uuid(virDomainBackupPtr backup, unsigned char *uuid, lvbError *err);
int lvb_get_uuid_string(virDomainBackupPtr backup, char *buf, lvbError *err);
virDomainBackupPtr lvb_get_parent(virDomainBackupPtr backup, unsigned int flags, lvbError *err);

/* Entry i of a NULL-terminated array from lvb_list*(). */
virDomainBackupPtr lvb_array_get(virDomainBackupPtr *array, int i);

#endif /* LIBVIRTBACKUP_GO_SHIM_H */
