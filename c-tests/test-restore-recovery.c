/*
 * test-restore-recovery.c: the recovery forms of issue 13 through the C
 * header, on libvirt's test driver: VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY
 * (to a folder, refusing an existing file), the export of a stored backup
 * (virDomainBackupStartUnmanaged with a NULL domain, read back with
 * nbdcopy), and VIR_DOMAIN_BACKUP_RESTORE_INSTANT (an overlay on the
 * backup, the backup pinned until the restored domain goes). The Python
 * tests cover the rest (qemu:///system, no libvirtd, blockpull, crash).
 */
#include "common.h"

int main(void)
{
    virConnectPtr conn = open_test_conn();
    char u[64], src[1024], at_backup[1024], out[1024], xml[4096], *desc;
    virDomainPtr dom, inst;
    virDomainBackupPtr b, e;

    dom = simple_domain(conn, "rr-dom", "raw", 16 * MiB);
    snprintf(src, sizeof(src), "%s", WPATH("rr-dom-vda.raw"));
    write_data(src, "raw", 5 * MiB, 64 * 1024, 0x5e);
    snprintf(at_backup, sizeof(at_backup), "%s", WPATH("at-backup.raw"));
    copy_file(src, at_backup);
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b != NULL);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    write_data(src, "raw", 5 * MiB, 64 * 1024, 0x11);

    /* ---------------------------------------------------------------- */
    section("FILES_ONLY: a folder, the domain untouched");
    snprintf(out, sizeof(out), "%s", WPATH("out"));
    CHECK(mkdir(out, 0700) == 0);
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid><target dir='%s'/>"
             "<disks><disk name='vda'><driver type='raw'/></disk></disks></domainbackup>",
             u, out);
    CHECK(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY) == 0);
    CHECK(files_identical(fmt("%s/vda.raw", out), at_backup));
    CHECK(!files_identical(src, at_backup));
    EXPECT_INT_FAIL_UNTOUCHED(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY),
                              VIR_ERR_OPERATION_INVALID);
    EXPECT_INT_FAIL_UNTOUCHED(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_FILES_ONLY |
                                                              VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN),
                              VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("mutually exclusive");

    /* ---------------------------------------------------------------- */
    section("export of the stored backup, NULL domain");
    {
        const char *sock = WPATH("stored.sock");
        char sock_[1024], got[1024];
        snprintf(sock_, sizeof(sock_), "%s", sock);
        snprintf(got, sizeof(got), "%s", WPATH("got.raw"));
        snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid>"
                 "<server transport='unix' socket='%s'/></domainbackup>", u, sock_);
        e = virDomainBackupStartUnmanaged(NULL, xml, 0);
        CHECKF(e != NULL, "%s", virDomainBackupGetLastErrorMessage());
        if (e) {
            CHECK(run(fmt("nbdcopy 'nbd+unix:///vda?socket=%s' '%s'", sock_, got)));
            CHECK(files_identical(got, at_backup));
            EXPECT_INT_FAIL(virDomainBackupDelete(b, 0), VIR_ERR_OPERATION_INVALID);
            EXPECT_MSG_CONTAINS("being exported");
            CHECK(virDomainBackupGetDomain(e) == NULL);
            CHECK(virDomainBackupFinishJob(e, 0) == 0);
            CHECK(!file_exists(sock_));
            CHECK(virDomainBackupFree(e) == 0);
        }
        EXPECT_BACKUP_FAIL(virDomainBackupStartUnmanaged(NULL, xml, 1), VIR_ERR_INVALID_ARG);
    }

    /* ---------------------------------------------------------------- */
    section("INSTANT: an overlay on the backup, pinned");
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid><domain name='rr-instant'/>"
             "</domainbackup>", u);
    CHECK(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN |
                                          VIR_DOMAIN_BACKUP_RESTORE_INSTANT) == 0);
    inst = virDomainLookupByName(conn, "rr-instant");
    CHECK(inst != NULL);
    {
        const char *overlay = WPATH("rr-instant-vda.qcow2");
        char ov[1024];
        snprintf(ov, sizeof(ov), "%s", overlay);
        CHECK(strcmp(backing_file(ov), backup_target(b, "vda")) == 0);
        CHECK(images_equal(ov, "qcow2", at_backup, "raw"));
    }
    desc = virDomainBackupGetXMLDesc(b, 0);
    CHECK(desc && strstr(desc, "<pinnedby domain='rr-instant' disk='vda'"));
    free(desc);
    EXPECT_INT_FAIL(virDomainBackupDelete(b, 0), VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("rr-instant");
    if (inst) {
        CHECK(virDomainUndefine(inst) == 0);
        virDomainFree(inst);
    }
    CHECK(virDomainBackupDelete(b, 0) == 0);
    CHECK(virDomainBackupFree(b) == 0);

    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-restore-recovery");
}
