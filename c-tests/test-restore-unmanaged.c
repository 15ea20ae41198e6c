/*
 * test-restore-unmanaged.c: virDomainBackupRestoreUnmanaged from image
 * files the library did not make (over the domain's own disk, into a new
 * file, as a new domain; every refusal leaves every file as it was), NBD
 * sources nobody serves, and the input checks of
 * virDomainBackupStartUnmanaged, then one export of the (test-driver)
 * domain. virDomainBackupRestore is in test-restore.c; exports read with
 * libnbd's tools and restores from them are in test-unmanaged.c.
 */
#include "common.h"

#define UNKNOWN "0badc0de-0000-4000-8000-00000000beef"

/* Fails with @code and leaves every file as it was. */
#define EXPECT_RESTORE_FAIL(expr, code) EXPECT_INT_FAIL_UNTOUCHED(expr, code)

#define EXPECT_START_FAIL(expr, code)                                       \
    do {                                                                    \
        char *t_before_ = state_snapshot();                                 \
        EXPECT_BACKUP_FAIL((expr), (code));                                 \
        EXPECT_UNCHANGED(t_before_);                                        \
    } while (0)

/* <domainbackup> restoring vda from @source, with @extra inside the disk
 * element and @top before <disks>. */
static const char *from_file(const char *source, const char *extra, const char *top)
{
    size_t n = strlen(source);
    const char *format = n > 6 && strcmp(source + n - 6, ".qcow2") == 0 ? "qcow2" : "raw";
    return fmt("<domainbackup>%s<disks><disk name='vda'><source file='%s'>"
               "<driver type='%s'/></source>%s</disk></disks></domainbackup>",
               top, source, format, extra);
}

/* The one defined domain whose name starts with @prefix (NULL if not
 * exactly one). */
static virDomainPtr domain_with_prefix(virConnectPtr conn, const char *prefix)
{
    virDomainPtr *all = NULL, found = NULL;
    int n = virConnectListAllDomains(conn, &all, 0), i, hits = 0;
    for (i = 0; i < n; i++) {
        if (strncmp(virDomainGetName(all[i]), prefix, strlen(prefix)) == 0 && !hits++)
            found = all[i];
        else
            virDomainFree(all[i]);
    }
    free(all);
    if (hits > 1) {
        virDomainFree(found);
        found = NULL;
    }
    return found;
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    char xml[4096], u[64], src_vda[1024], ext_q[1024], ext_r[1024], sum[80];
    struct stat st1, st2;
    virDomainPtr dom, copy;
    virDomainBackupPtr b, e;
    int port;

    dom = simple_domain(conn, "ru-dom", "raw", 16 * MiB);
    snprintf(src_vda, sizeof(src_vda), "%s", WPATH("ru-dom-vda.raw"));
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b != NULL);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    /* Images the library did not make, holding other data than the disk. */
    snprintf(ext_q, sizeof(ext_q), "%s", WPATH("ext.qcow2"));
    snprintf(ext_r, sizeof(ext_r), "%s", WPATH("ext.raw"));
    make_disk(ext_q, "qcow2", 16 * MiB, 0x61);
    make_disk(ext_r, "raw", 16 * MiB, 0x71);

    /* ---------------------------------------------------------------- */
    section("virDomainBackupRestoreUnmanaged: input checks");
    snprintf(xml, sizeof(xml), "%s", from_file(ext_q, "", ""));
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(NULL, xml, 0), VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged((virDomainPtr)conn, xml, 0),
                        VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, xml, 1 << 10), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, "<domainbackup><disks>", 0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, "<restore/>", 0), VIR_ERR_XML_ERROR);
    /* Unmanaged sources are named disk by disk. */
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, "<domainbackup/>", 0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, "<domainbackup><disks><disk name='vda'/></disks></domainbackup>",
                            0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, from_file("ext.qcow2", "", ""), 0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom,
                            "<domainbackup><disks><disk name='vda'><source protocol='nbd' "
                            "name='vda'/></disk></disks></domainbackup>", 0),
                        VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom,
                            "<domainbackup><disks><disk name='vdz'><source file='/x.qcow2'>"
                            "<driver type='qcow2'/></source>"
                            "</disk></disks></domainbackup>", 0),
                        VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("vdz");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, from_file(WPATH("none.qcow2"), "", ""),
                                                        VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
                        VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("none.qcow2");
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, from_file(ext_q, "", "<domain name='ru-x'/>"),
                            VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
                        VIR_ERR_INVALID_ARG);

    section("virDomainBackupRestoreUnmanaged: refusals");
    /* The disk exists: REWRITE_EXISTING_DISK is needed. */
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(dom, xml, 0), VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("REWRITE_EXISTING_DISK");
    CHECK(virDomainCreate(dom) == 0);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, xml, VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
                        VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("running");
    CHECK(virDomainDestroy(dom) == 0);
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, from_file(ext_q, "", "<domain name='ru-dom'/>"),
                            VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN),
                        VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("ru-dom");

    section("virDomainBackupRestoreUnmanaged: NBD sources nobody serves");
    REQUIRE(stat(src_vda, &st1) == 0);
    port = free_tcp_port();
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, nbd_restore_xml("vda", fmt("<host name='127.0.0.1' port='%d'/>",
                                                            port), ""),
                            VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
                        VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS(fmt("127.0.0.1:%d", port));
    EXPECT_RESTORE_FAIL(virDomainBackupRestoreUnmanaged(
                            dom, nbd_restore_xml("vda", fmt("<host transport='unix' socket='%s'/>",
                                                            WPATH("none.sock")), ""),
                            VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN),
                        VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("none.sock");
    CHECK(stat(src_vda, &st2) == 0 && same_stat(&st1, &st2));

    /* ---------------------------------------------------------------- */
    section("virDomainBackupRestoreUnmanaged over the domain's own disk");
    snprintf(sum, sizeof(sum), "%s", file_sha256(ext_q));
    CHECK(virDomainBackupRestoreUnmanaged(dom, xml,
                                          VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    CHECKF(disks_identical(ext_q, "qcow2", src_vda, "raw"), "the disk differs from its source");
    CHECK(strcmp(image_format(src_vda), "raw") == 0);
    CHECK(strcmp(domain_disk_attr(dom, "vda", "source", "file"), src_vda) == 0);
    CHECK(strcmp(domain_disk_attr(dom, "vda", "driver", "type"), "raw") == 0);
    CHECKF(strcmp(file_sha256(ext_q), sum) == 0, "the source image was changed");

    section("virDomainBackupRestoreUnmanaged into a new file");
    snprintf(sum, sizeof(sum), "%s", file_sha256(src_vda));
    CHECK(virDomainBackupRestoreUnmanaged(
              dom, from_file(ext_r, fmt("<target file='%s'/>", WPATH("ru-new.qcow2")), ""), 0) == 0);
    CHECK(strcmp(image_format(WPATH("ru-new.qcow2")), "qcow2") == 0);
    CHECK(disks_identical(ext_r, "raw", WPATH("ru-new.qcow2"), "qcow2"));
    CHECK(strcmp(domain_disk_attr(dom, "vda", "source", "file"), WPATH("ru-new.qcow2")) == 0);
    CHECK(strcmp(domain_disk_attr(dom, "vda", "driver", "type"), "qcow2") == 0);
    CHECKF(strcmp(file_sha256(src_vda), sum) == 0, "the old disk file was changed");

    section("virDomainBackupRestoreUnmanaged as a new domain");
    CHECK(virDomainBackupRestoreUnmanaged(dom, from_file(ext_q, "", "<domain name='ru-copy'/>"),
                                          VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) == 0);
    copy = virDomainLookupByName(conn, "ru-copy");
    CHECK(copy != NULL);
    if (copy) {
        char uuid[VIR_UUID_STRING_BUFLEN];
        CHECK(virDomainGetUUIDString(copy, uuid) == 0 && strcmp(uuid, dom_uuid(dom)) != 0);
        CHECK(strcmp(domain_disk_attr(copy, "vda", "source", "file"),
                     WPATH("ru-copy-vda.qcow2")) == 0);
        CHECK(disks_identical(ext_q, "qcow2", WPATH("ru-copy-vda.qcow2"), "qcow2"));
        drop_domain(copy);
    }
    /* Default name: '<name>-restore-' and 8 characters. */
    CHECK(virDomainBackupRestoreUnmanaged(dom, xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) == 0);
    copy = domain_with_prefix(conn, "ru-dom-restore-");
    CHECKF(copy != NULL, "no single domain named ru-dom-restore-*");
    if (copy) {
        const char *name = virDomainGetName(copy);
        CHECKF(strlen(name) == strlen("ru-dom-restore-") + 8, "name '%s'", name);
        CHECK(disks_identical(ext_q, "qcow2",
                              domain_disk_attr(copy, "vda", "source", "file"), "qcow2"));
        CHECK(strcmp(domain_disk_attr(copy, "vda", "source", "file"),
                     WPATH("%s-vda.qcow2", name)) == 0);
        drop_domain(copy);
    }
    CHECK(virDomainBackupList(dom, NULL, 0) == 1);

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

        section("virDomainBackupStartUnmanaged: an export, never listed");
        snprintf(xml, sizeof(xml),
                 "<domainbackup><parent><uuid>%s</uuid></parent>"
                 "<server transport='unix' socket='%s'/></domainbackup>", u, WPATH("nbd.sock"));
        e = virDomainBackupStartUnmanaged(dom, xml, 0);
        REQUIRE(e != NULL);
        CHECK(file_exists(WPATH("nbd.sock")));
        CHECK(strcmp(backup_disk_attr(e, "vda", "disk", "exportname"), "vda") == 0);
        CHECK(strcmp(backup_disk_attr(e, "vda", "disk", "exportbitmap"), "vda-changes") == 0);
        CHECK(virDomainBackupFinishJob(e, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1);
        CHECK(virDomainBackupList(dom, NULL, 0) == 1);
        EXPECT_INT_FAIL(virDomainBackupDelete(e, 0), VIR_ERR_OPERATION_INVALID);
        /* One export of a domain at a time. */
        EXPECT_START_FAIL(virDomainBackupStartUnmanaged(dom, ok, 0), VIR_ERR_OPERATION_INVALID);
        CHECK(virDomainBackupFinishJob(e, 0) == 0);
        CHECK(!file_exists(WPATH("nbd.sock")));
        CHECK(scratch_empty());
        CHECK(virDomainBackupFree(e) == 0);
    }

    virDomainBackupFree(b);
    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-restore-unmanaged");
}
