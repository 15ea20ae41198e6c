/*
 * test-delete.c: virDomainBackupDelete (0, METADATA_ONLY, ALL, flag
 * errors), the handle after a delete, and virDomainBackupUndefineFlags /
 * virDomainUndefineFlags (mapped by the header) with and without
 * VIR_DOMAIN_UNDEFINE_BACKUP.
 */
#include "common.h"

static int count_backups(virDomainPtr dom)
{
    int n = virDomainBackupList(dom, NULL, 0);
    CHECKF(n >= 0, "virDomainBackupList failed: %s", virDomainBackupGetLastErrorMessage());
    return n;
}

/* Every call on a deleted backup's handle fails with NO_DOMAIN_BACKUP
 * (API.md Ownership), and the handle can still be freed. */
static void check_deleted_handle(virDomainBackupPtr b, const char *how)
{
    virDomainBackupPtr *list = (virDomainBackupPtr *)&list;
    int n = 0;
    printf("deleted handle (%s)\n", how);
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_INT_FAIL(virDomainBackupDelete(b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_INT_FAIL(virDomainBackupListChildren(b, &list, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(list == NULL);
    EXPECT_INT_FAIL(virDomainBackupGetParameters(b, NULL, &n, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_INT_FAIL(virDomainBackupFinishJob(b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_INT_FAIL(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK),
                    VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_INT_FAIL(virDomainBackupAbortJob(b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(virDomainBackupFree(b) == 0);
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    const char *w = workdir();
    const char *cat = catalog_dir();
    char xml[4096], u[64], dir[1200], target[1400];
    virDomainPtr dom, keep, und;
    virDomainBackupPtr b, b2, keepb, lb;
    int i;

    dom = simple_domain(conn, "del-dom", "raw", 16 * MiB);
    keep = simple_domain(conn, "del-keep", "raw", 16 * MiB);
    keepb = backup_wait(keep, "<domainbackup><description>stays</description></domainbackup>");

    /* ---------------------------------------------------------------- */
    section("Delete 0: metadata and files go");
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b != NULL);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    snprintf(dir, sizeof(dir), "%s/%s/%s", cat, dom_uuid(dom), u);
    snprintf(target, sizeof(target), "%s/vda.qcow2", dir);
    CHECK(file_exists(target));
    CHECK(count_backups(dom) == 1);
    CHECK(virDomainBackupDelete(b, 0) == 0);
    CHECK(virDomainBackupGetLastError() == NULL);
    CHECK(count_backups(dom) == 0);
    CHECKF(!file_exists(target), "%s still exists", target);
    CHECKF(!file_exists(dir), "the backup's folder %s still exists", dir);
    CHECKF(!file_exists(fmt("%s/%s/%s.xml", cat, dom_uuid(dom), u)), "catalog record left");
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(u, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    check_deleted_handle(b, "CreateXML handle");

    section("Delete through one handle, another handle on the same backup");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("two.qcow2"), NULL));
    b = backup_wait(dom, xml);
    REQUIRE(b != NULL);
    lb = virDomainBackupLookupByUUID(backup_uuid(b), 0);
    CHECK(lb != NULL);
    CHECK(virDomainBackupDelete(lb, 0) == 0);
    CHECK(!file_exists(WPATH("two.qcow2")));
    check_deleted_handle(lb, "LookupByUUID handle, deleted through itself");
    check_deleted_handle(b, "CreateXML handle, deleted through another");

    /* ---------------------------------------------------------------- */
    section("Delete METADATA_ONLY keeps the data file");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("meta.qcow2"), NULL));
    b = backup_wait(dom, xml);
    REQUIRE(b != NULL);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    CHECK(virDomainBackupDelete(b, VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY) == 0);
    CHECK(count_backups(dom) == 0);
    CHECKF(file_exists(WPATH("meta.qcow2")), "METADATA_ONLY removed the data file");
    CHECK(images_equal(WPATH("del-dom-vda.raw"), "raw", WPATH("meta.qcow2"), "qcow2"));
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(u, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(virDomainBackupFree(b) == 0);
    /* Default location: the file stays too. */
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b != NULL);
    snprintf(target, sizeof(target), "%s/%s/%s/vda.qcow2", cat, dom_uuid(dom), backup_uuid(b));
    CHECK(virDomainBackupDelete(b, VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY) == 0);
    CHECKF(file_exists(target), "METADATA_ONLY removed %s", target);
    CHECK(virDomainBackupFree(b) == 0);
    CHECK(count_backups(dom) == 0);

    /* ---------------------------------------------------------------- */
    section("Delete flag errors change nothing");
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b != NULL);
    {
        char *before = state_snapshot();
        EXPECT_INT_FAIL(virDomainBackupDelete(b, VIR_DOMAIN_BACKUP_DELETE_ALL |
                                                     VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN),
                        VIR_ERR_INVALID_ARG);
        EXPECT_INT_FAIL(virDomainBackupDelete(b, 1 << 10), VIR_ERR_INVALID_ARG);
        EXPECT_MSG_CONTAINS("unsupported flags");
        EXPECT_INT_FAIL(virDomainBackupDelete(NULL, 0), VIR_ERR_INVALID_ARG);
        EXPECT_INT_FAIL(virDomainBackupDelete((virDomainBackupPtr)dom, 0), VIR_ERR_INVALID_ARG);
        EXPECT_UNCHANGED(before);
        CHECK(count_backups(dom) == 1);
    }
    /* A backup without children: ALL_CHILDREN deletes just it. */
    CHECK(virDomainBackupDelete(b, VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN) == 0);
    CHECK(count_backups(dom) == 0);
    CHECK(virDomainBackupFree(b) == 0);

    /* ---------------------------------------------------------------- */
    section("Delete ALL removes every backup of the domain, only of it");
    {
        virDomainBackupPtr bs[3];
        for (i = 0; i < 3; i++) {
            if (i == 1)
                snprintf(xml, sizeof(xml),
                         "<domainbackup><disks><disk name='vda'><target file='%s/all-%d.qcow2'/>"
                         "</disk></disks></domainbackup>", w, i);
            else
                snprintf(xml, sizeof(xml), "<domainbackup/>");
            bs[i] = backup_wait(dom, xml);
        }
        CHECK(count_backups(dom) == 3);
        CHECK(count_backups(keep) == 1);
        if (bs[1]) {
            CHECK(virDomainBackupDelete(bs[1], VIR_DOMAIN_BACKUP_DELETE_ALL) == 0);
        }
        CHECK(count_backups(dom) == 0);
        CHECK(!file_exists(WPATH("all-1.qcow2")));
        for (i = 0; i < 3; i++) {
            if (!bs[i])
                continue;
            EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(bs[i], 0), VIR_ERR_NO_DOMAIN_BACKUP);
            CHECK(virDomainBackupFree(bs[i]) == 0);
        }
        /* Only the data of the backups deleted with their data went: the
         * files kept by METADATA_ONLY above are still there. */
        CHECK(file_exists(WPATH("meta.qcow2")));
        CHECK(count_backups(keep) == 1);
        CHECK(keepb != NULL);
        if (keepb) {
            char *x = virDomainBackupGetXMLDesc(keepb, 0);
            CHECKF(x && strstr(x, "stays"), "the other domain's backup was touched");
            free(x);
        }
    }

    section("Delete ALL|METADATA_ONLY keeps every file");
    {
        virDomainBackupPtr b1, b3;
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("am-1.qcow2"), NULL));
        b1 = backup_wait(dom, xml);
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("am-2.qcow2"), NULL));
        b3 = backup_wait(dom, xml);
        CHECK(count_backups(dom) == 2);
        if (b3)
            CHECK(virDomainBackupDelete(b3, VIR_DOMAIN_BACKUP_DELETE_ALL |
                                                VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY) == 0);
        CHECK(count_backups(dom) == 0);
        CHECK(file_exists(WPATH("am-1.qcow2")));
        CHECK(file_exists(WPATH("am-2.qcow2")));
        if (b1)
            virDomainBackupFree(b1);
        if (b3)
            virDomainBackupFree(b3);
    }

    /* ---------------------------------------------------------------- */
    section("undefine without VIR_DOMAIN_UNDEFINE_BACKUP is refused");
    und = simple_domain(conn, "del-undef", "raw", 16 * MiB);
    b = backup_wait(und, "<domainbackup/>");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("und.qcow2"), NULL));
    b2 = backup_wait(und, xml);
    REQUIRE(b && b2);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    snprintf(target, sizeof(target), "%s/%s/%s/vda.qcow2", cat, dom_uuid(und), u);
    {
        char *before = state_snapshot();
        EXPECT_INT_FAIL(virDomainUndefineFlags(und, 0), VIR_ERR_OPERATION_INVALID);
        EXPECT_INT_FAIL(virDomainBackupUndefineFlags(und, 0), VIR_ERR_OPERATION_INVALID);
        EXPECT_INT_FAIL(virDomainBackupUndefineFlags(und, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE),
                        VIR_ERR_OPERATION_INVALID);
        EXPECT_UNCHANGED(before);
    }
    {
        virDomainPtr again = virDomainLookupByName(conn, "del-undef");
        CHECKF(again != NULL, "the domain is gone after a refused undefine");
        if (again)
            virDomainFree(again);
        CHECK(virDomainIsPersistent(und) == 1);
    }
    CHECK(count_backups(und) == 2);
    EXPECT_INT_FAIL(virDomainBackupUndefineFlags(NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupUndefineFlags((virDomainPtr)conn, 0), VIR_ERR_INVALID_ARG);

    section("undefine with VIR_DOMAIN_UNDEFINE_BACKUP");
    CHECK(virDomainUndefineFlags(und, VIR_DOMAIN_UNDEFINE_BACKUP) == 0);
    {
        virDomainPtr again = virDomainLookupByName(conn, "del-undef");
        CHECKF(again == NULL, "the domain still exists");
        if (again)
            virDomainFree(again);
        virResetLastError();
    }
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(u, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(catalog_records() == 1); /* the other domain's */
    CHECKF(file_exists(target), "data file %s removed by undefine", target);
    CHECKF(file_exists(WPATH("und.qcow2")), "data file und.qcow2 removed by undefine");
    CHECK(images_equal(WPATH("del-undef-vda.raw"), "raw", WPATH("und.qcow2"), "qcow2"));
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(virDomainBackupFree(b) == 0);
    CHECK(virDomainBackupFree(b2) == 0);
    virDomainFree(und);

    section("undefine of a domain without backups, libvirt flags and errors");
    und = simple_domain(conn, "del-plain", "raw", 16 * MiB);
    /* libvirt's own refusal is carried over. */
    EXPECT_INT_FAIL(virDomainUndefineFlags(und, 1U << 20), VIR_ERR_INVALID_ARG);
    {
        virDomainPtr again = virDomainLookupByName(conn, "del-plain");
        CHECK(again != NULL);
        if (again)
            virDomainFree(again);
    }
    CHECK(virDomainUndefineFlags(und, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE) == 0);
    {
        virDomainPtr again = virDomainLookupByName(conn, "del-plain");
        CHECK(again == NULL);
        if (again)
            virDomainFree(again);
        virResetLastError();
    }
    virDomainFree(und);
    und = simple_domain(conn, "del-plain2", "raw", 16 * MiB);
    CHECK(virDomainUndefineFlags(und, 0) == 0);
    virDomainFree(und);

    if (keepb)
        virDomainBackupFree(keepb);
    drop_domain(dom);
    drop_domain(keep);
    virConnectClose(conn);
    return t_done("test-delete");
}
