/*
 * demo.c: managed backups of a domain of libvirt's built-in test driver.
 *
 * On test:///default it defines a domain with a sparse 1 GiB raw disk
 * holding 8 MiB of data, takes a full backup, changes 4 MiB of the disk
 * with qemu-io, takes an incremental backup on top of the full one, shows
 * what each stored and the incremental's backing chain, restores the
 * incremental as a new domain, and checks with `qemu-img compare` that the
 * restored disk equals the disk at incremental time. Then it cleans up.
 *
 * Usage: demo WORKDIR   (the catalog is $LIBVIRT_BACKUP_DIR, see README)
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvirt-backup/libvirt-backup.h>

static int fail(const char *what)
{
    fprintf(stderr, "demo: %s failed: %s\n", what, virDomainBackupGetLastErrorMessage());
    return 1;
}

/* Run a shell command built like printf; its exit status. */
static int sh(const char *format, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, format);
    vsnprintf(cmd, sizeof(cmd), format, ap);
    va_end(ap);
    fflush(stdout);
    return system(cmd);
}

/* MiB the backup stored (its "bytes.written" parameter). */
static double written_mib(virDomainBackupPtr b)
{
    virTypedParameter params[16];
    int n = 16;
    unsigned long long v = 0;
    if (virDomainBackupGetParameters(b, params, &n, 0) == 0) {
        virTypedParamsGetULLong(params, n, "bytes.written", &v);
        virTypedParamsClear(params, n);
    }
    return v / 1048576.0;
}

/* Back vda up into @target, on top of @parent (NULL: a full backup). */
static virDomainBackupPtr backup(virDomainPtr dom, const char *parent, const char *target,
                                 char uuid[VIR_UUID_STRING_BUFLEN])
{
    char xml[2048];
    char *desc;
    virDomainBackupPtr b;
    snprintf(xml, sizeof(xml),
             "<domainbackup>%s%s%s<disks><disk name='vda'><target file='%s'/></disk></disks>"
             "</domainbackup>", parent ? "<parent><uuid>" : "", parent ? parent : "",
             parent ? "</uuid></parent>" : "", target);
    if (!(b = virDomainBackupCreateXML(dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT)))
        return NULL;
    desc = virDomainBackupGetXMLDesc(b, 0);
    sscanf(desc ? strstr(desc, "<uuid>") : "", "<uuid>%36s", uuid);
    printf("%s backup %s\n  stored %.1f MiB in %s\n", parent ? "incremental" : "full", uuid,
           written_mib(b), target);
    free(desc);
    return b;
}

int main(int argc, char **argv)
{
    char disk[512], xml[2048], full_file[600], inc_file[600], restored[600];
    char full_uuid[VIR_UUID_STRING_BUFLEN] = "", inc_uuid[VIR_UUID_STRING_BUFLEN] = "";
    virConnectPtr conn = NULL;
    virDomainPtr dom = NULL, copy = NULL;
    virDomainBackupPtr full = NULL, inc = NULL;
    int ret = 1;

    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    snprintf(disk, sizeof(disk), "%s/demo-vda.raw", argv[1]);
    snprintf(full_file, sizeof(full_file), "%s/demo-vda.full.qcow2", argv[1]);
    snprintf(inc_file, sizeof(inc_file), "%s/demo-vda.inc.qcow2", argv[1]);
    snprintf(restored, sizeof(restored), "%s/demo-restored-vda.qcow2", argv[1]);

    /* A sparse 1 GiB disk with 8 MiB of data in three places. */
    if (sh("qemu-img create -q -f raw '%s' 1G && qemu-io -f raw -c 'write -q -P 0xab 0 4M' "
           "-c 'write -q -P 0x5a 300M 2M' -c 'write -q -P 0x77 1022M 2M' '%s'", disk, disk)) {
        fprintf(stderr, "demo: cannot prepare %s\n", disk);
        return 1;
    }
    if (!(conn = virConnectOpen("test:///default")))
        return 1;
    snprintf(xml, sizeof(xml),
             "<domain type='test'><name>demo</name><memory>65536</memory>"
             "<os><type>hvm</type></os><devices>"
             "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
             "<source file='%s'/><target dev='vda'/></disk>"
             "</devices></domain>", disk);
    if (!(dom = virDomainDefineXML(conn, xml)))
        goto cleanup;
    printf("defined domain 'demo': disk %s, 1 GiB raw, 8 MiB of data\n", disk);

    if (!(full = backup(dom, NULL, full_file, full_uuid))) {
        fail("full backup");
        goto cleanup;
    }
    if (sh("qemu-io -f raw -c 'write -q -P 0xcd 500M 4M' '%s'", disk))
        goto cleanup;
    printf("qemu-io wrote 4 MiB at offset 500 MiB of the disk\n");
    if (!(inc = backup(dom, full_uuid, inc_file, inc_uuid))) {
        fail("incremental backup");
        goto cleanup;
    }
    printf("  backing chain (qemu-img info --backing-chain):\n");
    sh("qemu-img info --backing-chain '%s' | grep -E '^(image|backing file|disk size):' | "
       "sed 's/^/    /'", inc_file);
    printf("domain 'demo' has %d backups: %d full, %d incremental\n",
           virDomainBackupList(dom, NULL, 0),
           virDomainBackupList(dom, NULL, VIR_DOMAIN_BACKUP_LIST_FULL),
           virDomainBackupList(dom, NULL, VIR_DOMAIN_BACKUP_LIST_INCREMENTAL));

    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid><domain name='demo-restored'/>"
             "</domainbackup>", inc_uuid);
    if (virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) < 0) {
        fail("virDomainBackupRestore");
        goto cleanup;
    }
    if (!(copy = virDomainLookupByName(conn, "demo-restored")))
        goto cleanup;
    printf("restored the incremental backup as new domain 'demo-restored', disk %s\n", restored);
    printf("  restored disk vs the disk at incremental time: ");
    if (sh("qemu-img compare -f raw -F qcow2 '%s' '%s'", disk, restored)) {
        fprintf(stderr, "demo: the restored disk differs\n");
        goto cleanup;
    }
    printf("  restored disk vs the full backup: %s\n",
           sh("qemu-img compare -q -f qcow2 -F qcow2 '%s' '%s'", full_file, restored)
               ? "different (it has the 4 MiB written after it)" : "identical?!");

    if (virDomainBackupDelete(full, VIR_DOMAIN_BACKUP_DELETE_ALL) < 0) {
        fail("virDomainBackupDelete");
        goto cleanup;
    }
    printf("deleted both backups; demo OK\n");
    ret = 0;

 cleanup:
    if (inc)
        virDomainBackupFree(inc);
    if (full)
        virDomainBackupFree(full);
    if (copy) {
        virDomainUndefine(copy);
        virDomainFree(copy);
    }
    if (dom) {
        virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP);
        virDomainFree(dom);
    }
    if (conn)
        virConnectClose(conn);
    return ret;
}
