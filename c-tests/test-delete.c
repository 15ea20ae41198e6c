/*
 * test-delete.c: virDomainBackupDelete (0, METADATA_ONLY, ALL, flag
 * errors; backups with children: a chain root, METADATA_ONLY inside a
 * chain, ALL_CHILDREN on a subtree), the handle after a delete, and
 * virDomainBackupUndefineFlags /
 * virDomainUndefineFlags (mapped by the header) with and without
 * VIR_DOMAIN_UNDEFINE_BACKUP.
 */
#include "common.h"

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
    /* Deleting in the middle of a chain: test-incremental.c. */
    section("Delete a chain root: its child becomes a full backup");
    {
        const char *disk = fmt("%s", WPATH("del-dom-vda.raw"));
        virDomainBackupPtr root, kid;
        root = backup_wait(dom, vda_child_xml("root", NULL, WPATH("root.qcow2"), NULL));
        REQUIRE(root != NULL);
        write_data(disk, "raw", 2 * MiB, 1 * MiB, 0x5c);
        kid = backup_wait(dom, vda_child_xml("kid", backup_uuid(root), WPATH("kid.qcow2"), NULL));
        REQUIRE(kid != NULL);
        CHECK(chain_depth(WPATH("kid.qcow2")) == 2);
        CHECK(virDomainBackupDelete(root, 0) == 0);
        CHECK(!file_exists(WPATH("root.qcow2")));
        CHECKF(strcmp(backup_parent(kid), "") == 0, "kid still has parent %s",
               backup_parent(kid));
        CHECK(strcmp(backup_mode(kid, "vda"), "full") == 0);
        CHECK(chain_depth(WPATH("kid.qcow2")) == 1);
        CHECK(images_equal(disk, "raw", WPATH("kid.qcow2"), "qcow2"));
        EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_FULL, "kid ");
        check_deleted_handle(root, "chain root merged into its child");
        CHECK(virDomainBackupDelete(kid, 0) == 0);
        CHECK(virDomainBackupFree(kid) == 0);
        CHECK(count_backups(dom) == 0);
    }

    section("Delete METADATA_ONLY inside a chain: files kept, the child re-parented");
    {
        const char *disk = fmt("%s", WPATH("del-dom-vda.raw"));
        virDomainBackupPtr r, m, l, s, t;
        char ru[64];
        r = backup_wait(dom, vda_child_xml("r", NULL, WPATH("r.qcow2"), NULL));
        REQUIRE(r != NULL);
        snprintf(ru, sizeof(ru), "%s", backup_uuid(r));
        write_data(disk, "raw", 3 * MiB, 1 * MiB, 0x5d);
        m = backup_wait(dom, vda_child_xml("m", ru, WPATH("m.qcow2"), NULL));
        REQUIRE(m != NULL);
        write_data(disk, "raw", 5 * MiB, 1 * MiB, 0x5e);
        l = backup_wait(dom, vda_child_xml("l", backup_uuid(m), WPATH("l.qcow2"), NULL));
        REQUIRE(l != NULL);
        CHECK(virDomainBackupDelete(m, VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY) == 0);
        CHECK(virDomainBackupFree(m) == 0);
        CHECKF(file_exists(WPATH("m.qcow2")), "METADATA_ONLY removed m's file");
        CHECK(strcmp(backup_parent(l), ru) == 0);
        /* l still reads through m's file. */
        CHECK(chain_depth(WPATH("l.qcow2")) == 3);
        CHECK(images_equal(disk, "raw", WPATH("l.qcow2"), "qcow2"));
        EXPECT_CHILDREN(r, 0, "l ");

        section("Delete ALL_CHILDREN removes a subtree only");
        /* r <- l <- s, and t a sibling of l. */
        s = backup_wait(dom, vda_child_xml("s", backup_uuid(l), WPATH("s.qcow2"), NULL));
        write_data(disk, "raw", 6 * MiB, 64 * 1024, 0x5f);
        t = backup_wait(dom, vda_child_xml("t", ru, WPATH("t.qcow2"), NULL));
        REQUIRE(s && t);
        EXPECT_LIST(dom, 0, "r l s t ");
        CHECK(virDomainBackupDelete(l, VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN) == 0);
        EXPECT_LIST(dom, 0, "r t ");
        CHECK(!file_exists(WPATH("l.qcow2")));
        CHECK(!file_exists(WPATH("s.qcow2")));
        CHECK(file_exists(WPATH("m.qcow2")));
        CHECK(images_equal(disk, "raw", WPATH("t.qcow2"), "qcow2"));
        check_deleted_handle(l, "deleted with ALL_CHILDREN");
        check_deleted_handle(s, "descendant deleted with ALL_CHILDREN");
        CHECK(virDomainBackupDelete(r, VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN) == 0);
        CHECK(!file_exists(WPATH("r.qcow2")));
        CHECK(!file_exists(WPATH("t.qcow2")));
        CHECK(count_backups(dom) == 0);
        check_deleted_handle(t, "child of a root deleted with ALL_CHILDREN");
        CHECK(virDomainBackupFree(r) == 0);
    }

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
