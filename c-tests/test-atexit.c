/* The library is usable from an atexit handler, where a C program tidies up:
 * by then the thread's Rust locals are destroyed, and a call must still
 * work (not abort the process). The handler lists, creates and deletes a
 * backup and undefines through the library; any failure ends the process
 * with status 3 (the test harness reports it). */
#define _POSIX_C_SOURCE 200809L
#include <libvirt-backup/libvirt-backup.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static virConnectPtr conn;
static virDomainPtr dom;

static void fail(const char *what)
{
    fprintf(stderr, "FAIL in atexit: %s: %s\n", what, virDomainBackupGetLastErrorMessage());
    _exit(3);
}

static void tidy_up(void)
{
    virDomainBackupPtr *list = NULL;
    if (virDomainBackupList(dom, &list, 0) != 0)
        fail("virDomainBackupList");
    free(list);
    virDomainBackupPtr b = virDomainBackupCreateXML(dom, "<domainbackup/>",
                                                    VIR_DOMAIN_BACKUP_CREATE_WAIT);
    if (!b)
        fail("virDomainBackupCreateXML");
    if (virDomainBackupDelete(b, 0) != 0)
        fail("virDomainBackupDelete");
    virDomainBackupFree(b);
    /* An error is still reported by the return value. */
    if (virDomainBackupDelete(NULL, 0) != -1)
        fail("virDomainBackupDelete(NULL)");
    if (virDomainBackupUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP) != 0)
        fail("virDomainBackupUndefineFlags");
    virDomainFree(dom);
    virConnectClose(conn);
    printf("atexit: list, create, delete and undefine worked\n");
}

int main(void)
{
    char path[4096], xml[8192];
    const char *work = getenv("TEST_WORKDIR");
    snprintf(path, sizeof(path), "%s/atexit-vda.raw", work ? work : "/tmp");
    FILE *f = fopen(path, "w");
    if (!f || ftruncate(fileno(f), 1 << 20) != 0 || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    conn = virConnectOpen("test:///default");
    snprintf(xml, sizeof(xml),
             "<domain type='test'><name>atexit</name><memory>65536</memory>"
             "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
             "<driver name='qemu' type='raw'/><source file='%s'/><target dev='vda'/>"
             "</disk></devices></domain>", path);
    dom = conn ? virDomainDefineXML(conn, xml) : NULL;
    if (!dom) {
        fprintf(stderr, "cannot define the domain\n");
        return 1;
    }
    /* Use the library on this thread first, with an error kept, so that its
     * thread-local state exists (and is destroyed before atexit handlers). */
    if (virDomainBackupDelete(NULL, 0) != -1 || virDomainBackupGetLastErrorCode() == 0) {
        fprintf(stderr, "expected an error\n");
        return 1;
    }
    atexit(tidy_up);
    return 0;
}
