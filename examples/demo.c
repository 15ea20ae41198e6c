/*
 * demo.c: a managed backup of a domain of libvirt's built-in test driver.
 *
 * Creates a 1 GiB raw disk holding a few MiB of data, defines a domain that
 * uses it on test:///default, takes a full backup into the catalog, lists
 * the domain's backups, prints the backup's XML, and checks the copy byte
 * for byte with `qemu-img compare`.
 *
 * Usage: demo WORKDIR   (the catalog is $LIBVIRT_BACKUP_DIR, see README)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvirt-backup/libvirt-backup.h>

static int fail(const char *what)
{
    fprintf(stderr, "demo: %s failed: %s\n", what, virDomainBackupGetLastErrorMessage());
    return 1;
}

/* Write @len bytes of @pattern at @offset of @path. */
static int write_pattern(const char *path, off_t offset, size_t len, int pattern)
{
    char *buf = malloc(len);
    int fd = open(path, O_WRONLY);
    int ok = buf && fd >= 0;
    if (ok) {
        memset(buf, pattern, len);
        ok = pwrite(fd, buf, len, offset) == (ssize_t)len;
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    char disk[512], xml[2048], cmd[2048], target[600];
    virConnectPtr conn = NULL;
    virDomainPtr dom = NULL;
    virDomainBackupPtr backup = NULL;
    virDomainBackupPtr *list = NULL;
    char *desc = NULL;
    int ret = 1, n, i;

    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    snprintf(disk, sizeof(disk), "%s/demo-vda.raw", argv[1]);
    snprintf(target, sizeof(target), "%s/demo-vda-backup.qcow2", argv[1]);

    /* A sparse 1 GiB disk with 8 MiB of data in three places. */
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f raw '%s' 1G", disk);
    if (system(cmd) != 0 ||
        write_pattern(disk, 0, 4 << 20, 0xab) < 0 ||
        write_pattern(disk, 300 << 20, 2 << 20, 0x5a) < 0 ||
        write_pattern(disk, (1 << 30) - (2 << 20), 2 << 20, 0x77) < 0) {
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
    printf("defined domain 'demo' with disk %s\n", disk);

    snprintf(xml, sizeof(xml),
             "<domainbackup><description>demo backup</description><disks>"
             "<disk name='vda'><target file='%s'/></disk>"
             "</disks></domainbackup>", target);
    if (!(backup = virDomainBackupCreateXML(dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT))) {
        fail("virDomainBackupCreateXML");
        goto cleanup;
    }

    if ((n = virDomainBackupList(dom, &list, 0)) < 0) {
        fail("virDomainBackupList");
        goto cleanup;
    }
    printf("domain 'demo' has %d backup(s)\n", n);
    for (i = 0; i < n; i++)
        virDomainBackupFree(list[i]);
    free(list);

    if (!(desc = virDomainBackupGetXMLDesc(backup, 0))) {
        fail("virDomainBackupGetXMLDesc");
        goto cleanup;
    }
    printf("%s", desc);

    fflush(stdout);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -f raw -F qcow2 '%s' '%s'", disk, target);
    if (system(cmd) != 0) {
        fprintf(stderr, "demo: the backup differs from the disk\n");
        goto cleanup;
    }
    snprintf(cmd, sizeof(cmd), "du -k '%s' | cut -f1", target);
    printf("backup file uses (KiB): ");
    fflush(stdout);
    if (system(cmd) != 0)
        goto cleanup;

    if (virDomainBackupDelete(backup, 0) < 0) {
        fail("virDomainBackupDelete");
        goto cleanup;
    }
    printf("backup deleted; demo OK\n");
    ret = 0;

 cleanup:
    free(desc);
    if (backup)
        virDomainBackupFree(backup);
    if (dom) {
        virDomainUndefine(dom);
        virDomainFree(dom);
    }
    if (conn)
        virConnectClose(conn);
    return ret;
}
