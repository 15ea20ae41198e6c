/*
 * test-restore.c: virDomainBackupRestore.
 *
 * A domain with a raw vda, a qcow2 vdb and a network interface; a full
 * backup and an incremental one, with copies of the disks as they were at
 * each. Then every input error and refusal (running domain, existing files
 * without REWRITE_EXISTING_DISK, a name taken, a damaged backup file), each
 * leaving every file byte for byte as it was; and each restore mode: in
 * place from the full and from the incremental backup, one disk only,
 * another format, new files (the domain repointed), a new domain under the
 * default name and under a given one. Restored disks are compared with
 * `qemu-img compare` and their virtual size (raw ones also with cmp); files
 * a restore must not touch keep their SHA-256.
 */
#include "common.h"

#define UNKNOWN "0badc0de-0000-4000-8000-00000000beef"
#define MAC "52:54:00:aa:bb:cc"

/* A refused restore: @code, and no file created, removed or changed. */
#define EXPECT_RESTORE_FAIL(xml, flags, code)                               \
    EXPECT_INT_FAIL_UNTOUCHED(virDomainBackupRestore((xml), (flags)), (code))

static char vda[1024], vdb[1024];

/* Restore XML for backup @uuid: @inner after <uuid> (NULL: nothing). */
static const char *restore_xml(const char *uuid, const char *inner)
{
    return fmt("<domainbackup><uuid>%s</uuid>%s</domainbackup>", uuid, inner ? inner : "");
}

/* Copies of vda (raw) and vdb (qcow2) as they are now, named after @when. */
static void keep_disks(const char *when)
{
    copy_file(vda, WPATH("%s-vda.raw", when));
    copy_file(vdb, WPATH("%s-vdb.qcow2", when));
}

/* Change both disks in a way no backup holds. */
static void scribble(int pattern)
{
    write_data(vda, "raw", 3 * MiB, 1 * MiB, pattern);
    write_data(vdb, "qcow2", 5 * MiB, 1 * MiB, pattern + 1);
}

/* @a (raw) and @b hold the disks as they were at @when. */
static void expect_disks(const char *when, const char *a, const char *b, const char *bfmt)
{
    char ca[1024], cb[1024], ra[1024], rb[1024];
    snprintf(ca, sizeof(ca), "%s", WPATH("%s-vda.raw", when));
    snprintf(cb, sizeof(cb), "%s", WPATH("%s-vdb.qcow2", when));
    snprintf(ra, sizeof(ra), "%s", a);
    snprintf(rb, sizeof(rb), "%s", b);
    CHECKF(files_identical(ca, ra), "%s differs from vda at %s (cmp)", ra, when);
    CHECKF(disks_identical(ca, "raw", ra, "raw"), "%s differs from vda at %s", ra, when);
    CHECKF(disks_identical(cb, "qcow2", rb, bfmt), "%s differs from vdb at %s", rb, when);
}

/* The domain's disk @dev is the file @path in format @format. */
static void expect_source(virDomainPtr dom, const char *dev, const char *path, const char *format)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s", path);
    CHECKF(strcmp(domain_disk_attr(dom, dev, "source", "file"), p) == 0,
           "%s of %s is '%s', want %s", dev, virDomainGetName(dom),
           domain_disk_attr(dom, dev, "source", "file"), p);
    CHECKF(strcmp(domain_disk_attr(dom, dev, "driver", "type"), format) == 0,
           "%s of %s is %s, want %s", dev, virDomainGetName(dom),
           domain_disk_attr(dom, dev, "driver", "type"), format);
}

/* The domain's MAC address ("" if none). */
static const char *mac_of(virDomainPtr dom)
{
    char *x = virDomainGetXMLDesc(dom, 0);
    const char *m = x ? strstr(x, "<mac ") : NULL;
    const char *v = m ? xml_attr_n(m, strlen(m), "mac", "address") : "";
    free(x);
    return v;
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    virDomainPtr dom, copy;
    virDomainBackupPtr full, inc, damaged;
    char fu[64], iu[64], xml[4096], sums[2][80];

    /* vda raw and vdb qcow2, 16 MiB each, and a MAC address. */
    snprintf(vda, sizeof(vda), "%s", WPATH("rs-vda.raw"));
    snprintf(vdb, sizeof(vdb), "%s", WPATH("rs-vdb.qcow2"));
    make_disk(vda, "raw", 16 * MiB, 0x11);
    make_disk(vdb, "qcow2", 16 * MiB, 0x21);
    {
        test_disk d[] = { { "vda", vda, "raw", NULL }, { "vdb", vdb, "qcow2", NULL } };
        char *x = domain_xml("rs-dom", NULL, d, 2);
        char *dev = strstr(x, "</devices>");
        snprintf(xml, sizeof(xml), "%.*s<interface type='network'><mac address='" MAC "'/>"
                 "<source network='default'/></interface>%s", (int)(dev - x), x, dev);
        free(x);
        dom = virDomainDefineXML(conn, xml);
        REQUIRE(dom != NULL);
    }
    keep_disks("full");
    full = backup_wait(dom, "<domainbackup><description>full</description></domainbackup>");
    REQUIRE(full != NULL);
    snprintf(fu, sizeof(fu), "%s", backup_uuid(full));
    scribble(0x31);
    keep_disks("inc");
    inc = backup_wait(dom, fmt("<domainbackup><parent><uuid>%s</uuid></parent></domainbackup>",
                               fu));
    REQUIRE(inc != NULL);
    snprintf(iu, sizeof(iu), "%s", backup_uuid(inc));
    CHECK(strcmp(backup_mode(inc, "vdb"), "incremental") == 0);
    scribble(0x41);

    /* ---------------------------------------------------------------- */
    section("input checks");
    EXPECT_INT_FAIL_UNTOUCHED(virDomainBackupRestore(NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_RESTORE_FAIL(restore_xml(fu, NULL), 1 << 10, VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_RESTORE_FAIL("<domainbackup><uuid>", 0, VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL("garbage", 0, VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL("<restore/>", 0, VIR_ERR_XML_ERROR);
    /* The backup's <uuid> is required. */
    EXPECT_RESTORE_FAIL("<domainbackup/>", 0, VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(restore_xml("nope", NULL), 0, VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(restore_xml(UNKNOWN, NULL), 0, VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_RESTORE_FAIL(restore_xml(UNKNOWN, NULL), VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN,
                        VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_RESTORE_FAIL(restore_xml(fu, "<disks><disk name='vda'><target file='rel.qcow2'/>"
                                        "</disk></disks>"),
                        VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK, VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(restore_xml(fu, "<disks><disk name='vda'><driver type='vmdk'/>"
                                        "</disk></disks>"),
                        VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK, VIR_ERR_XML_ERROR);
    EXPECT_RESTORE_FAIL(restore_xml(fu, "<disks><disk name='vdz'/></disks>"),
                        VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK, VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("vdz");
    /* <domain name> is for NEW_DOMAIN only. */
    EXPECT_RESTORE_FAIL(restore_xml(fu, "<domain name='rs-x'/>"),
                        VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK, VIR_ERR_INVALID_ARG);
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(fu, fmt("<disks><disk name='vda'><target file='%s'/></disk>"
                                 "<disk name='vdb'><target file='%s'/></disk></disks>",
                                 WPATH("same.qcow2"), WPATH("same.qcow2"))));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_INVALID_ARG);
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(fu, fmt("<disks><disk name='vda'><target file='%s'/></disk></disks>",
                                 WPATH("no/such/dir/x.raw"))));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_INVALID_ARG);

    section("refused: the domain runs");
    CHECK(virDomainCreate(dom) == 0);
    EXPECT_RESTORE_FAIL(restore_xml(fu, NULL), VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK,
                        VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("running");
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(fu, fmt("<disks><disk name='vda'><target file='%s'/></disk></disks>",
                                 WPATH("while-running.raw"))));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_OPERATION_INVALID);
    CHECK(virDomainDestroy(dom) == 0);

    section("refused: existing files without REWRITE_EXISTING_DISK");
    EXPECT_RESTORE_FAIL(restore_xml(fu, NULL), 0, VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("REWRITE_EXISTING_DISK");
    /* One new file, one existing disk: the new one is not created either. */
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(fu, fmt("<disks><disk name='vda'><target file='%s'/></disk>"
                                 "<disk name='vdb'/></disks>", WPATH("would-be-new.raw"))));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_OPERATION_INVALID);
    /* A <target file> that exists. */
    copy_file(WPATH("inc-vda.raw"), WPATH("precious.raw"));
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(fu, fmt("<disks><disk name='vda'><target file='%s'/></disk></disks>",
                                 WPATH("precious.raw"))));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_OPERATION_INVALID);
    EXPECT_RESTORE_FAIL(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_INVALID);

    section("refused: NEW_DOMAIN under a name in use");
    EXPECT_RESTORE_FAIL(restore_xml(fu, "<domain name='rs-dom'/>"),
                        VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("rs-dom");

    /* ---------------------------------------------------------------- */
    section("in place from the full backup (REWRITE_EXISTING_DISK)");
    CHECK(virDomainBackupRestore(restore_xml(fu, NULL),
                                 VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    expect_disks("full", vda, vdb, "qcow2");
    expect_source(dom, "vda", vda, "raw");
    expect_source(dom, "vdb", vdb, "qcow2");

    section("in place from the incremental backup");
    CHECK(virDomainBackupRestore(restore_xml(iu, NULL),
                                 VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    expect_disks("inc", vda, vdb, "qcow2");
    /* Again: nothing differs, nothing is written. */
    snprintf(sums[0], sizeof(sums[0]), "%s", file_sha256(vda));
    CHECK(virDomainBackupRestore(restore_xml(iu, NULL),
                                 VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    CHECK(strcmp(file_sha256(vda), sums[0]) == 0);

    section("in place, one disk only");
    scribble(0x51);
    snprintf(sums[0], sizeof(sums[0]), "%s", file_sha256(vda));
    CHECK(virDomainBackupRestore(restore_xml(fu, "<disks><disk name='vdb'/></disks>"),
                                 VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    CHECK(disks_identical(WPATH("full-vdb.qcow2"), "qcow2", vdb, "qcow2"));
    CHECKF(strcmp(file_sha256(vda), sums[0]) == 0, "vda was touched");

    section("in place, into another format");
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(iu, "<disks><disk name='vdb'><driver type='raw'/></disk></disks>"));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_OPERATION_INVALID);
    CHECK(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    CHECK(strcmp(image_format(vdb), "raw") == 0);
    CHECK(disks_identical(WPATH("inc-vdb.qcow2"), "qcow2", vdb, "raw"));
    expect_source(dom, "vdb", vdb, "raw");

    /* ---------------------------------------------------------------- */
    section("new files with <target file>: the domain is repointed");
    snprintf(sums[0], sizeof(sums[0]), "%s", file_sha256(vda));
    snprintf(sums[1], sizeof(sums[1]), "%s", file_sha256(vdb));
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(iu, fmt("<disks><disk name='vda'><target file='%s'/>"
                                 "<driver type='raw'/></disk>"
                                 "<disk name='vdb'><target file='%s'/></disk></disks>",
                                 WPATH("new-vda.raw"), WPATH("new-vdb.qcow2"))));
    CHECK(virDomainBackupRestore(xml, 0) == 0);
    CHECK(strcmp(image_format(WPATH("new-vda.raw")), "raw") == 0);
    CHECK(strcmp(image_format(WPATH("new-vdb.qcow2")), "qcow2") == 0);
    CHECK(chain_depth(WPATH("new-vdb.qcow2")) == 1);
    expect_disks("inc", WPATH("new-vda.raw"), WPATH("new-vdb.qcow2"), "qcow2");
    expect_source(dom, "vda", WPATH("new-vda.raw"), "raw");
    expect_source(dom, "vdb", WPATH("new-vdb.qcow2"), "qcow2");
    CHECKF(strcmp(file_sha256(vda), sums[0]) == 0, "the old vda file was touched");
    CHECKF(strcmp(file_sha256(vdb), sums[1]) == 0, "the old vdb file was touched");

    /* ---------------------------------------------------------------- */
    section("NEW_DOMAIN, default name and files");
    snprintf(sums[0], sizeof(sums[0]), "%s", file_sha256(WPATH("new-vda.raw")));
    CHECK(virDomainBackupRestore(restore_xml(fu, NULL), VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) ==
          0);
    {
        char name[128];
        snprintf(name, sizeof(name), "rs-dom-restore-%.8s", fu);
        copy = virDomainLookupByName(conn, name);
        CHECKF(copy != NULL, "no domain %s", name);
        if (copy) {
            char uuid[VIR_UUID_STRING_BUFLEN];
            CHECK(virDomainGetUUIDString(copy, uuid) == 0 && strcmp(uuid, dom_uuid(dom)) != 0);
            CHECK(virDomainIsPersistent(copy) == 1);
            CHECK(virDomainIsActive(copy) == 0);
            CHECKF(*mac_of(copy) && strcmp(mac_of(copy), MAC) != 0, "MAC address '%s'",
                   mac_of(copy));
            /* Next to the disks the backup was taken from. */
            expect_source(copy, "vda", WPATH("%s-vda.qcow2", name), "qcow2");
            expect_source(copy, "vdb", WPATH("%s-vdb.qcow2", name), "qcow2");
            CHECK(disks_identical(WPATH("full-vda.raw"), "raw", WPATH("%s-vda.qcow2", name),
                                  "qcow2"));
            CHECK(disks_identical(WPATH("full-vdb.qcow2"), "qcow2", WPATH("%s-vdb.qcow2", name),
                                  "qcow2"));
            drop_domain(copy);
        }
    }
    CHECK(strcmp(mac_of(dom), MAC) == 0);
    expect_source(dom, "vda", WPATH("new-vda.raw"), "raw");
    CHECKF(strcmp(file_sha256(WPATH("new-vda.raw")), sums[0]) == 0, "the domain's vda was touched");

    section("NEW_DOMAIN, given name, one disk, given file");
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(iu, fmt("<domain name='rs-copy'/><disks><disk name='vda'>"
                                 "<target file='%s'/><driver type='raw'/></disk></disks>",
                                 WPATH("copy-vda.raw"))));
    CHECK(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) == 0);
    copy = virDomainLookupByName(conn, "rs-copy");
    CHECK(copy != NULL);
    if (copy) {
        expect_source(copy, "vda", WPATH("copy-vda.raw"), "raw");
        CHECKF(!*domain_disk_attr(copy, "vdb", "target", "dev"),
               "vdb, not restored, is in the new domain");
        CHECK(files_identical(WPATH("inc-vda.raw"), WPATH("copy-vda.raw")));
        /* The name is taken now. */
        EXPECT_RESTORE_FAIL(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN |
                                     VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK,
                            VIR_ERR_OPERATION_INVALID);
        drop_domain(copy);
    }

    /* ---------------------------------------------------------------- */
    /* A raw backup file with bytes flipped on disk: the digest index
     * catches it before anything is written. */
    section("a damaged backup file");
    snprintf(xml, sizeof(xml), "<domainbackup><disks><disk name='vda'><target file='%s'/>"
             "<driver type='raw'/></disk><disk name='vdb' backup='no'/></disks></domainbackup>",
             WPATH("damaged-vda.raw"));
    damaged = backup_wait(dom, xml);
    REQUIRE(damaged != NULL);
    write_data(WPATH("damaged-vda.raw"), "raw", 0, 4096, 0xde);
    /* The disk differs there, so an in-place restore has to read it. */
    write_data(WPATH("new-vda.raw"), "raw", 0, 64 * 1024, 0x99);
    snprintf(xml, sizeof(xml), "%s", restore_xml(backup_uuid(damaged), NULL));
    EXPECT_RESTORE_FAIL(xml, VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK,
                        VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("digest");
    EXPECT_RESTORE_FAIL(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN, VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("digest");
    copy = virDomainLookupByName(conn, fmt("rs-dom-restore-%.8s", backup_uuid(damaged)));
    CHECKF(copy == NULL, "a failed restore defined a domain");
    if (copy)
        virDomainFree(copy);
    virResetLastError();
    snprintf(xml, sizeof(xml), "%s",
             restore_xml(backup_uuid(damaged),
                         fmt("<disks><disk name='vda'><target file='%s'/></disk></disks>",
                             WPATH("from-damaged.qcow2"))));
    EXPECT_RESTORE_FAIL(xml, 0, VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("digest");

    virDomainBackupFree(damaged);
    virDomainBackupFree(inc);
    virDomainBackupFree(full);
    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-restore");
}
