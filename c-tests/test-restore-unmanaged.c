/*
 * test-restore-unmanaged.c: virDomainBackupRestore,
 * virDomainBackupRestoreUnmanaged and virDomainBackupStartUnmanaged. This
 * version of the library validates their input and then fails with
 * VIR_ERR_NO_SUPPORT ("... not supported yet"); nothing may change on disk.
 */
#include "common.h"

#define UNKNOWN "0badc0de-0000-4000-8000-00000000beef"

/* Fails with @code and leaves every file as it was. */
#define EXPECT_RESTORE_FAIL(expr, code)                                     \
    do {                                                                    \
        char *t_before_ = state_snapshot();                                 \
        EXPECT_INT_FAIL((expr), (code));                                    \
        EXPECT_UNCHANGED(t_before_);                                        \
    } while (0)

#define EXPECT_START_FAIL(expr, code)                                       \
    do {                                                                    \
        char *t_before_ = state_snapshot();                                 \
        EXPECT_BACKUP_FAIL((expr), (code));                                 \
        EXPECT_UNCHANGED(t_before_);                                        \
    } while (0)

int main(void)
{
    virConnectPtr conn = open_test_conn();
    const char *w = workdir();
    char xml[4096], u[64], src_vda[1024];
    struct stat st1, st2;
    virDomainPtr dom;
    virDomainBackupPtr b;

    dom = simple_domain(conn, "ru-dom", "raw", 16 * MiB);
    snprintf(src_vda, sizeof(src_vda), "%s/ru-dom-vda.raw", w);
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b != NULL);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    /* Change the disk after the backup, so that a restore would show. */
    write_data(src_vda, "raw", 0, 1 * MiB, 0xee);
    REQUIRE(stat(src_vda, &st1) == 0);

    /* ---------------------------------------------------------------- */
    section("virDomainBackupRestore: input checks");
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(NULL, 0), VIR_ERR_INVALID_ARG);
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid></domainbackup>", u);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(xml, 1 << 10), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("<domainbackup><uuid>", 0), VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("garbage", 0), VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("<restore/>", 0), VIR_ERR_XML_ERROR);
    /* The backup's <uuid> is required. */
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("<domainbackup/>", 0), VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("<domainbackup><uuid>nope</uuid></domainbackup>",
                                               0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("<domainbackup><uuid>" UNKNOWN "</uuid>"
                                               "</domainbackup>", 0),
                        VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore("<domainbackup><uuid>" UNKNOWN "</uuid>"
                                               "</domainbackup>",
                                               VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN),
                        VIR_ERR_NO_DOMAIN_BACKUP);
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>%s</uuid><disks><disk name='vda'>"
             "<target file='relative.qcow2'/></disk></disks></domainbackup>", u);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(xml, 0), VIR_ERR_XML_ERROR);

    section("virDomainBackupRestore: not supported yet");
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid></domainbackup>", u);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(xml, 0), VIR_ERR_NO_SUPPORT);
    EXPECT_MSG_CONTAINS("not supported yet");
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
                        VIR_ERR_NO_SUPPORT);
    EXPECT_MSG_CONTAINS("not supported yet");
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>%s</uuid><domain name='ru-restored'/></domainbackup>", u);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN),
                        VIR_ERR_NO_SUPPORT);
    EXPECT_MSG_CONTAINS("not supported yet");
    {
        virDomainPtr r = virDomainLookupByName(conn, "ru-restored");
        CHECKF(r == NULL, "a refused restore defined a domain");
        if (r)
            virDomainFree(r);
        virResetLastError();
    }
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>%s</uuid><disks><disk name='vda'>"
             "<target file='%s/restored.qcow2'/><driver type='qcow2'/></disk></disks>"
             "</domainbackup>", u, w);
    EXPECT_RESTORE_FAIL(virDomainBackupRestore(xml, 0), VIR_ERR_NO_SUPPORT);
    CHECK(!file_exists(WPATH("restored.qcow2")));
    CHECK(stat(src_vda, &st2) == 0 && same_stat(&st1, &st2));

    /* ---------------------------------------------------------------- */
    section("virDomainBackupRestoreUnmanaged: input checks");
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks><disk name='vda'><source file='%s/ext.qcow2'/></disk>"
             "</disks></domainbackup>", w);
    make_image(WPATH("ext.qcow2"), "qcow2", 16 * MiB);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(NULL, xml, 0), VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged((virDomainPtr)conn, xml, 0),
                        VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, xml, 1 << 10), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, "<domainbackup><disks>", 0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, "<restore/>", 0), VIR_ERR_XML_ERROR);

    section("virDomainBackupRestoreUnmanaged: not supported yet");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, xml, 0), VIR_ERR_NO_SUPPORT);
    EXPECT_MSG_CONTAINS("not supported yet");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, xml, VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
                        VIR_ERR_NO_SUPPORT);
    EXPECT_MSG_CONTAINS("not supported yet");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom,
                            "<domainbackup><disks><disk name='vda'>"
                            "<source protocol='nbd' name='vda'><host name='127.0.0.1' port='10809'/>"
                            "</source></disk></disks></domainbackup>", 0),
                        VIR_ERR_NO_SUPPORT);
    EXPECT_MSG_CONTAINS("not supported yet");
    CHECK(stat(src_vda, &st2) == 0 && same_stat(&st1, &st2));

    /* ---------------------------------------------------------------- */
    section("virDomainBackupStartUnmanaged: input checks");
    {
        const char *ok = "<domainbackup><server transport='tcp' name='127.0.0.1' port='10809'/>"
                         "<disks><disk name='vda' exportname='vda'/></disks></domainbackup>";
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(NULL, ok, 0), VIR_ERR_INVALID_ARG);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged((virDomainPtr)conn, ok, 0),
                          VIR_ERR_INVALID_ARG);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, NULL, 0), VIR_ERR_INVALID_ARG);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, ok, 1 << 10), VIR_ERR_INVALID_ARG);
        EXPECT_MSG_CONTAINS("unsupported flags");
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, "<domainbackup><server", 0),
                          VIR_ERR_XML_ERROR);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, "<backup/>", 0), VIR_ERR_XML_ERROR);
        /* An unmanaged backup needs a <server>. */
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, "<domainbackup/>", 0),
                          VIR_ERR_XML_ERROR);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(
                              dom, "<domainbackup><server transport='carrier-pigeon'/>"
                                   "</domainbackup>", 0),
                          VIR_ERR_XML_ERROR);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(
                              dom, "<domainbackup><parent><uuid>" UNKNOWN "</uuid></parent>"
                                   "<server transport='unix' socket='/tmp/x.sock'/>"
                                   "</domainbackup>", 0),
                          VIR_ERR_NO_DOMAIN_BACKUP);

        section("virDomainBackupStartUnmanaged: not supported yet");
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, ok, 0), VIR_ERR_NO_SUPPORT);
        EXPECT_MSG_CONTAINS("not supported yet");
        snprintf(xml, sizeof(xml),
                 "<domainbackup><parent><uuid>%s</uuid></parent>"
                 "<server transport='unix' socket='%s/nbd.sock'/></domainbackup>", u, w);
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, xml, 0), VIR_ERR_NO_SUPPORT);
        EXPECT_MSG_CONTAINS("not supported yet");
        CHECK(!file_exists(WPATH("nbd.sock")));
        /* Unmanaged backups are never listed. */
        CHECK(virDomainBackupList(dom, NULL, 0) == 1);
    }

    virDomainBackupFree(b);
    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-restore-unmanaged");
}
