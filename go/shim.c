/*
 * shim.c: one C function per call the Go package makes; see shim.h for why
 * each one copies the error itself.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

static void fill(lvbError *err, virErrorPtr e, const char *what)
{
    if (e && e->code != VIR_ERR_OK) {
        err->code = e->code;
        err->domain = e->domain;
        err->level = e->level;
        err->message = e->message ? strdup(e->message) : NULL;
    } else {
        /* A failure without an error would be a bug below us; say so
         * rather than return a nil Go error for a failed call. */
        err->code = VIR_ERR_INTERNAL_ERROR;
        err->domain = VIR_FROM_NONE;
        err->level = VIR_ERR_ERROR;
        err->message = strdup(what);
    }
}

/* The library's last error of this thread. */
static void take(lvbError *err)
{
    fill(err, virDomainBackupGetLastError(), "libvirt-backup call failed without an error");
}

/* libvirt's last error of this thread. */
static void take_libvirt(lvbError *err)
{
    fill(err, virGetLastError(), "libvirt call failed without an error");
}

static void ignore_error(void *opaque, virErrorPtr e)
{
    (void)opaque;
    (void)e;
}

void lvb_init(void)
{
    /* libvirt prints every error to stderr unless a handler is set; Go
     * callers get errors as values (libvirt's Go bindings do the same). */
    virSetErrorFunc(NULL, ignore_error);
}

virConnectPtr lvb_connect_open(const char *uri, lvbError *err)
{
    virConnectPtr c = virConnectOpen(uri);
    if (!c)
        take_libvirt(err);
    return c;
}

int lvb_connect_close(virConnectPtr conn, lvbError *err)
{
    int r = virConnectClose(conn);
    if (r < 0)
        take_libvirt(err);
    return r;
}

virDomainPtr lvb_domain_lookup(virConnectPtr conn, const char *name_or_uuid, lvbError *err)
{
    virDomainPtr d = virDomainLookupByUUIDString(conn, name_or_uuid);
    if (!d)
        d = virDomainLookupByName(conn, name_or_uuid);
    if (!d)
        take_libvirt(err);
    return d;
}

virDomainPtr lvb_domain_define(virConnectPtr conn, const char *xml, lvbError *err)
{
    virDomainPtr d = virDomainDefineXML(conn, xml);
    if (!d)
        take_libvirt(err);
    return d;
}

int lvb_domain_ref(virDomainPtr dom, lvbError *err)
{
    int r = virDomainRef(dom);
    if (r < 0)
        take_libvirt(err);
    return r;
}

int lvb_domain_free(virDomainPtr dom, lvbError *err)
{
    int r = virDomainFree(dom);
    if (r < 0)
        take_libvirt(err);
    return r;
}

char *lvb_domain_name(virDomainPtr dom, lvbError *err)
{
    const char *n = virDomainGetName(dom);
    if (!n) {
        take_libvirt(err);
        return NULL;
    }
    return strdup(n);
}

int lvb_domain_uuid(virDomainPtr dom, char *buf, lvbError *err)
{
    int r = virDomainGetUUIDString(dom, buf);
    if (r < 0)
        take_libvirt(err);
    return r;
}

virDomainBackupPtr lvb_create_xml(virDomainPtr dom, const char *xml, unsigned int flags,
                                  lvbError *err)
{
    virDomainBackupPtr b = virDomainBackupCreateXML(dom, xml, flags);
    if (!b)
        take(err);
    return b;
}

virDomainBackupPtr lvb_start_unmanaged(virDomainPtr dom, const char *xml, unsigned int flags,
                                       lvbError *err)
{
    virDomainBackupPtr b = virDomainBackupStartUnmanaged(dom, xml, flags);
    if (!b)
        take(err);
    return b;
}

int lvb_list(virDomainPtr dom, virDomainBackupPtr **out, unsigned int flags, lvbError *err)
{
    int n = virDomainBackupList(dom, out, flags);
    if (n < 0)
        take(err);
    return n;
}

int lvb_list_children(virDomainBackupPtr backup, virDomainBackupPtr **out, unsigned int flags,
                      lvbError *err)
{
    int n = virDomainBackupListChildren(backup, out, flags);
    if (n < 0)
        take(err);
    return n;
}

int lvb_restore(const char *xml, unsigned int flags, lvbError *err)
{
    int r = virDomainBackupRestore(xml, flags);
    if (r < 0)
        take(err);
    return r;
}

int lvb_restore_unmanaged(virDomainPtr dom, const char *xml, unsigned int flags, lvbError *err)
{
    int r = virDomainBackupRestoreUnmanaged(dom, xml, flags);
    if (r < 0)
        take(err);
    return r;
}

int lvb_set_default_target(virDomainPtr dom, const char *xml, unsigned int flags, lvbError *err)
{
    int r = virDomainSetDefaultTarget(dom, xml, flags);
    if (r < 0)
        take(err);
    return r;
}

int lvb_undefine(virDomainPtr dom, unsigned int flags, lvbError *err)
{
    int r = virDomainBackupUndefineFlags(dom, flags);
    if (r < 0)
        take(err);
    return r;
}

virDomainBackupPtr lvb_lookup_by_uuid(const char *uuid, unsigned int flags, lvbError *err)
{
    virDomainBackupPtr b = virDomainBackupLookupByUUID(uuid, flags);
    if (!b)
        take(err);
    return b;
}

char *lvb_get_xml_desc(virDomainBackupPtr backup, unsigned int flags, lvbError *err)
{
    /* The exported name, not the header's _Generic macro (cgo cannot see
     * through it, and it must never reach libvirt's function of that name). */
    char *x = virDomainBackupObjGetXMLDesc(backup, flags);
    if (!x)
        take(err);
    return x;
}

virDomainPtr lvb_get_domain(virDomainBackupPtr backup, lvbError *err)
{
    virDomainPtr d = virDomainBackupGetDomain(backup);
    if (!d) {
        take(err);
        return NULL;
    }
    /* GetDomain lends the backup's reference; the Go Domain keeps its own. */
    if (virDomainRef(d) < 0) {
        take_libvirt(err);
        return NULL;
    }
    return d;
}

int lvb_finish_job(virDomainBackupPtr backup, unsigned int flags, lvbError *err)
{
    int r = virDomainBackupFinishJob(backup, flags);
    if (r < 0)
        take(err);
    return r;
}

int lvb_abort_job(virDomainBackupPtr backup, unsigned int flags, lvbError *err)
{
    int r = virDomainBackupAbortJob(backup, flags);
    if (r < 0)
        take(err);
    return r;
}

int lvb_delete(virDomainBackupPtr backup, unsigned int flags, lvbError *err)
{
    int r = virDomainBackupDelete(backup, flags);
    if (r < 0)
        take(err);
    return r;
}

int lvb_free(virDomainBackupPtr backup, lvbError *err)
{
    int r = virDomainBackupFree(backup);
    if (r < 0)
        take(err);
    return r;
}

/* The index i of a "disk.<i>.<rest>" parameter name, @rest set to <rest>;
 * -1 for any other name. */
static int disk_index(const char *field, const char **rest)
{
    char *end;
    unsigned long i;
    if (strncmp(field, "disk.", 5) != 0 || field[5] < '0' || field[5] > '9')
        return -1;
    i = strtoul(field + 5, &end, 10);
    if (*end != '.' || i >= 1UL << 20)
        return -1;
    *rest = end + 1;
    return (int)i;
}

/* The "disk.<i>.*" parameters, in one pass over @params (a disk with no
 * name gets ""). Returns -1 when out of memory (what was copied stays in
 * @out, for lvb_params_free). */
static int get_disk_params(virTypedParameterPtr params, int n, lvbParams *out)
{
    const char *rest;
    int i, k, count = 0;

    for (i = 0; i < n; i++) {
        k = disk_index(params[i].field, &rest);
        if (k >= count)
            count = k + 1;
    }
    if (count == 0)
        return 0;
    out->disk = calloc((size_t)count, sizeof(*out->disk));
    if (!out->disk)
        return -1;
    out->ndisk = (unsigned int)count;
    for (i = 0; i < n; i++) {
        virTypedParameterPtr p = &params[i];
        lvbDiskParams *d;
        k = disk_index(p->field, &rest);
        if (k < 0)
            continue;
        d = &out->disk[k];
        if (strcmp(rest, "name") == 0 && p->type == VIR_TYPED_PARAM_STRING && p->value.s) {
            free(d->name);
            d->name = strdup(p->value.s);
            if (!d->name)
                return -1;
        } else if (strcmp(rest, "bytes.total") == 0 && p->type == VIR_TYPED_PARAM_ULLONG) {
            d->bytes_total = p->value.ul;
        } else if (strcmp(rest, "bytes.processed") == 0 && p->type == VIR_TYPED_PARAM_ULLONG) {
            d->bytes_processed = p->value.ul;
        }
    }
    return 0;
}

void lvb_params_free(lvbParams *p)
{
    unsigned int i;
    for (i = 0; i < p->ndisk; i++)
        free(p->disk[i].name);
    free(p->disk);
    free(p->error);
    p->disk = NULL;
    p->ndisk = 0;
    p->error = NULL;
}

int lvb_get_parameters(virDomainBackupPtr backup, lvbParams *out, unsigned int flags,
                       lvbError *err)
{
    virTypedParameterPtr params;
    const char *s = NULL;
    int n = 0, cap;

    memset(out, 0, sizeof(*out));
    if (virDomainBackupGetParameters(backup, NULL, &n, flags) < 0) {
        take(err);
        return -1;
    }
    /* Room for parameters that appear between the two calls ("error" when
     * the job fails, "verify.*" while a verification runs). */
    cap = n + 8;
    params = calloc((size_t)cap, sizeof(*params));
    if (!params) {
        err->code = VIR_ERR_NO_MEMORY;
        err->domain = VIR_FROM_NONE;
        err->level = VIR_ERR_ERROR;
        err->message = strdup("out of memory");
        return -1;
    }
    n = cap;
    if (virDomainBackupGetParameters(backup, params, &n, flags) < 0) {
        take(err);
        free(params);
        return -1;
    }
    /* Absent fields stay zero; the library always sends the first seven. */
    virTypedParamsGetInt(params, n, "state", &out->state);
    virTypedParamsGetBoolean(params, n, "incremental", &out->incremental);
    virTypedParamsGetULLong(params, n, "bytes.total", &out->bytes_total);
    virTypedParamsGetULLong(params, n, "bytes.processed", &out->bytes_processed);
    virTypedParamsGetULLong(params, n, "bytes.written", &out->bytes_written);
    virTypedParamsGetULLong(params, n, "time.elapsed", &out->elapsed_ms);
    virTypedParamsGetUInt(params, n, "disks", &out->disks);
    if (virTypedParamsGetString(params, n, "error", &s) == 1 && s)
        out->error = strdup(s);
    if (virTypedParamsGetULLong(params, n, "verify.bytes.total", &out->verify_total) == 1)
        out->has_verify = 1;
    virTypedParamsGetULLong(params, n, "verify.bytes.processed", &out->verify_processed);
    if (get_disk_params(params, n, out) < 0) {
        virTypedParamsClear(params, n);
        free(params);
        lvb_params_free(out);
        err->code = VIR_ERR_NO_MEMORY;
        err->domain = VIR_FROM_NONE;
        err->level = VIR_ERR_ERROR;
        err->message = strdup("out of memory");
        return -1;
    }
    virTypedParamsClear(params, n);
    free(params);
    return 0;
}

typedef int (*verify_fn)(virDomainBackupPtr, unsigned int);

int lvb_verify(virDomainBackupPtr backup, unsigned int flags, lvbError *err)
{
    /* Looked up at run time so the package builds and runs against a
     * library that does not have virDomainBackupVerify yet. */
    verify_fn fn = (verify_fn)dlsym(RTLD_DEFAULT, "virDomainBackupVerify");
    int r;
    if (!fn) {
        err->code = VIR_ERR_NO_SUPPORT;
        err->domain = VIR_FROM_DOMAIN;
        err->level = VIR_ERR_ERROR;
        err->message = strdup("this function is not supported by the connection driver: "
                              "virDomainBackupVerify: not supported by this library build");
        return -1;
    }
    r = fn(backup, flags);
    if (r < 0)
        take(err);
    return r;
}

virDomainBackupPtr lvb_array_get(virDomainBackupPtr *array, int i)
{
    return array[i];
}

int lvb_get_uuid(virDomainBackupPtr backup, unsigned char *uuid, lvbError *err)
{
    int r = virDomainBackupGetUUID(backup, uuid);
    if (r < 0)
        take(err);
    return r;
}

int lvb_get_uuid_string(virDomainBackupPtr backup, char *buf, lvbError *err)
{
    int r = virDomainBackupGetUUIDString(backup, buf);
    if (r < 0)
        take(err);
    return r;
}

virDomainBackupPtr lvb_get_parent(virDomainBackupPtr backup, unsigned int flags, lvbError *err)
{
    virDomainBackupPtr p = virDomainBackupGetParent(backup, flags);
    if (!p)
        take(err);
    return p;
}
