/*
 * test-create.c: virDomainBackupCreateXML and virDomainSetDefaultTarget.
 *
 * Full backups raw->qcow2 (default format), raw->raw and qcow2->qcow2,
 * several disks with backup='no', given and generated UUIDs, description,
 * the default location in the catalog, a default target folder, storage
 * pool volumes (explicit and as the default target), sparse
 * targets, one incremental backup; then every validation error, each
 * checked by its code and for leaving no file and no catalog entry behind.
 */
#include "common.h"

#include <sys/socket.h>
#include <sys/un.h>

#define GIVEN_UUID "54c70d40-26bb-48cd-9639-b3a1e9adf650"
#define OTHER_UUID "d2ee2566-bef2-408f-ac7a-eb8004186074"

static bool looks_like_uuid(const char *s)
{
    int i;
    if (strlen(s) != 36)
        return false;
    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!strchr("0123456789abcdef", s[i])) {
            return false;
        }
    }
    return true;
}

/* A backup of vda into volume @volume of storage pool @pool. */
static const char *volume_xml(const char *pool, const char *volume)
{
    return fmt("<domainbackup><disks><disk name='vda' type='volume'>"
               "<target pool='%s' volume='%s'/></disk></disks></domainbackup>", pool, volume);
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    const char *w = workdir();
    const char *cat = catalog_dir();
    char vda[1024], vdb[1024], vdc[1024], xml[4096], dom1_uuid[64], gen_uuid[64];
    char *x;
    virDomainBackupPtr b;
    virDomainPtr dom1, dom2, dom3, dom4;

    /* dom1: vda raw, vdb qcow2, vdc raw (left out with backup='no'),
     * and a cdrom (never part of a backup). */
    snprintf(vda, sizeof(vda), "%s/dom1-vda.raw", w);
    snprintf(vdb, sizeof(vdb), "%s/dom1-vdb.qcow2", w);
    snprintf(vdc, sizeof(vdc), "%s/dom1-vdc.raw", w);
    make_disk(vda, "raw", 64 * MiB, 0x11);
    make_disk(vdb, "qcow2", 64 * MiB, 0x22);
    make_disk(vdc, "raw", 32 * MiB, 0x33);
    make_image(WPATH("dom1-cd.raw"), "raw", 1 * MiB);
    {
        test_disk disks[] = {
            { "vda", vda, "raw", NULL },
            { "vdb", vdb, "qcow2", NULL },
            { "vdc", vdc, "raw", NULL },
            { "hdc", WPATH("dom1-cd.raw"), "raw", "cdrom" },
        };
        dom1 = define_domain(conn, "create-dom1", disks, 4);
    }
    snprintf(dom1_uuid, sizeof(dom1_uuid), "%s", dom_uuid(dom1));

    /* ---------------------------------------------------------------- */
    section("full backup, default location, given uuid, description");
    b = backup_wait(dom1,
                    "<domainbackup><uuid>" GIVEN_UUID "</uuid>"
                    "<description>first &amp; full</description>"
                    "<disks><disk name='vdc' backup='no'/></disks></domainbackup>");
    if (b) {
        const char *dir = fmt("%s/%s/%s", cat, dom1_uuid, GIVEN_UUID);
        const char *ta = fmt("%s/vda.qcow2", dir);
        const char *tb = fmt("%s/vdb.qcow2", dir);
        x = virDomainBackupGetXMLDesc(b, 0);
        CHECK(x != NULL);
        CHECKF(x && strcmp(xml_text(x, "uuid"), GIVEN_UUID) == 0, "uuid in XML: %s",
               x ? x : "");
        CHECKF(x && strstr(x, "first &amp; full"), "description missing: %s", x ? x : "");
        CHECKF(x && !strstr(x, "name='vdc'") && !strstr(x, "name=\"vdc\""),
               "vdc (backup='no') is in the backup: %s", x ? x : "");
        {
            /* Among the backup's disks (the saved <definition> after them
             * holds the whole domain, cdrom included). */
            const char *ds = x ? strstr(x, "<disks>") : NULL;
            const char *de = ds ? strstr(ds, "</disks>") : NULL;
            CHECKF(ds && de && !memmem(ds, (size_t)(de - ds), "hdc", 3),
                   "the cdrom is in the backup: %s", x ? x : "");
            CHECKF(x && strstr(x, "<definition>") && strstr(x, "hdc"),
                   "the saved definition is not in the XML: %s", x ? x : "");
        }
        free(x);
        CHECKF(file_exists(ta), "default target %s missing", ta);
        CHECKF(file_exists(tb), "default target %s missing", tb);
        CHECKF(!file_exists(fmt("%s/vdc.qcow2", dir)), "vdc was backed up");
        CHECKF(!file_exists(fmt("%s/hdc.qcow2", dir)), "the cdrom was backed up");
        CHECKF(strcmp(image_format(ta), "qcow2") == 0, "%s is %s, not qcow2 (default)", ta,
               image_format(ta));
        CHECKF(strcmp(image_format(tb), "qcow2") == 0, "%s is %s, not qcow2", tb,
               image_format(tb));
        CHECKF(image_virtual_size(ta) == 64 * MiB, "virtual size of %s: %lld", ta,
               image_virtual_size(ta));
        CHECKF(images_equal(vda, "raw", ta, "qcow2"), "raw vda differs from its qcow2 backup");
        CHECKF(images_equal(vdb, "qcow2", tb, "qcow2"), "qcow2 vdb differs from its backup");
        CHECK(virDomainBackupFree(b) == 0);
    }
    CHECK(count_backups(dom1) == 1);
    CHECK(catalog_records() == 1);

    /* ---------------------------------------------------------------- */
    section("explicit targets raw->raw and qcow2->qcow2, generated uuid");
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks>"
             "<disk name='vda' backup='yes' type='file'><target file='%s/t-vda.raw'/>"
             "<driver type='raw'/></disk>"
             "<disk name='vdb' type='file'><target file='%s/t-vdb.qcow2'/>"
             "<driver type='qcow2'/></disk>"
             "<disk name='vdc' backup='no'/>"
             "</disks></domainbackup>", w, w);
    b = backup_wait(dom1, xml);
    gen_uuid[0] = '\0';
    if (b) {
        const char *ta = WPATH("t-vda.raw");
        const char *tb = WPATH("t-vdb.qcow2");
        snprintf(gen_uuid, sizeof(gen_uuid), "%s", backup_uuid(b));
        CHECKF(looks_like_uuid(gen_uuid), "generated uuid '%s' is not a uuid", gen_uuid);
        CHECKF(strcmp(gen_uuid, GIVEN_UUID) != 0, "generated uuid equals the given one");
        CHECKF(strcmp(image_format(ta), "raw") == 0, "%s is %s, not raw", ta, image_format(ta));
        CHECKF(file_size(ta) == 64 * MiB, "raw target size %lld", file_size(ta));
        CHECKF(strcmp(image_format(tb), "qcow2") == 0, "%s is %s", tb, image_format(tb));
        CHECKF(images_equal(vda, "raw", ta, "raw"), "raw->raw copy differs");
        CHECKF(images_equal(vdb, "qcow2", tb, "qcow2"), "qcow2->qcow2 copy differs");
        CHECKF(!file_exists(fmt("%s/%s/%s", cat, dom1_uuid, gen_uuid)) ||
                   !file_exists(fmt("%s/%s/%s/vdc.qcow2", cat, dom1_uuid, gen_uuid)),
               "vdc was backed up");
        CHECK(virDomainBackupFree(b) == 0);
    }
    CHECK(count_backups(dom1) == 2);

    /* Without WAIT: the call returns at once, FinishJob waits. */
    section("create without WAIT, then FinishJob");
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks><disk name='vda'><target file='%s/nowait-vda.qcow2'/></disk>"
             "<disk name='vdb' backup='no'/><disk name='vdc' backup='no'/>"
             "</disks></domainbackup>", w);
    b = virDomainBackupCreateXML(dom1, xml, 0);
    CHECK(b != NULL);
    if (b) {
        CHECK(virDomainBackupFinishJob(b, 0) == 0);
        CHECKF(images_equal(vda, "raw", WPATH("nowait-vda.qcow2"), "qcow2"),
               "copy made without WAIT differs");
        CHECK(virDomainBackupFree(b) == 0);
    }
    CHECK(count_backups(dom1) == 3);

    /* NO_FALLBACK only matters for incremental disks: a full backup works. */
    section("create with NO_FALLBACK (a full backup has nothing to fall back from)");
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks><disk name='vda'><target file='%s/nofb-vda.qcow2'/></disk>"
             "<disk name='vdb' backup='no'/><disk name='vdc' backup='no'/>"
             "</disks></domainbackup>", w);
    b = virDomainBackupCreateXML(dom1, xml, VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK |
                                                VIR_DOMAIN_BACKUP_CREATE_WAIT);
    CHECK(b != NULL);
    if (b) {
        CHECK(images_equal(vda, "raw", WPATH("nofb-vda.qcow2"), "qcow2"));
        CHECK(virDomainBackupDelete(b, 0) == 0);
        virDomainBackupFree(b);
    }
    CHECK(count_backups(dom1) == 3);

    /* ---------------------------------------------------------------- */
    section("virDomainSetDefaultTarget type='dir' (CONFIG)");
    dom2 = simple_domain(conn, "create-dom2", "raw", 64 * MiB);
    if (mkdir(WPATH("deftarget"), 0755) < 0)
        FATAL("mkdir deftarget: %s", strerror(errno));
    snprintf(xml, sizeof(xml), "<target type='dir'><path>%s/deftarget</path></target>", w);
    CHECK(virDomainSetDefaultTarget(dom2, xml, VIR_DOMAIN_AFFECT_CONFIG) == 0);
    CHECK(virDomainBackupGetLastError() == NULL);
    b = backup_wait(dom2, "<domainbackup/>");
    if (b) {
        const char *u = backup_uuid(b);
        const char *t = fmt("%s/deftarget/%s/vda.qcow2", w, u);
        CHECKF(file_exists(t), "backup is not at %s", t);
        CHECKF(!file_exists(fmt("%s/%s/%s/vda.qcow2", cat, dom_uuid(dom2), u)),
               "backup went to the catalog despite the default target");
        CHECKF(images_equal(WPATH("create-dom2-vda.raw"), "raw", t, "qcow2"),
               "copy in the default target folder differs");
        CHECK(virDomainBackupFree(b) == 0);
    }
    /* A disk's own <target> wins over the default target. */
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("own.qcow2"), NULL));
    b = backup_wait(dom2, xml);
    CHECKF(file_exists(WPATH("own.qcow2")), "explicit target ignored");
    if (b)
        virDomainBackupFree(b);

    section("virDomainSetDefaultTarget errors");
    snprintf(xml, sizeof(xml), "<target type='dir'><path>%s/deftarget</path></target>", w);
    EXPECT_INT_FAIL(virDomainSetDefaultTarget(NULL, xml, 0), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainSetDefaultTarget(dom2, NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainSetDefaultTarget(dom2, xml, 1 << 10), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_INT_FAIL(virDomainSetDefaultTarget(dom2, "<target type='dir'><path>", 0),
                    VIR_ERR_XML_ERROR);
    EXPECT_INT_FAIL(virDomainSetDefaultTarget(dom2, "<target type='nfs'/>", 0),
                    VIR_ERR_XML_ERROR);
    /* LIVE on a domain that is not running (libvirt's convention). */
    EXPECT_INT_FAIL(virDomainSetDefaultTarget(dom2, xml, VIR_DOMAIN_AFFECT_LIVE),
                    VIR_ERR_OPERATION_INVALID);

    /* ---------------------------------------------------------------- */
    /* The test driver has no backup job of its own and its guests never
     * write to their images, so the library copies the images of a running
     * test domain itself (API.md DESIGN NOTES; src/hv/libvirt.rs
     * images_are_quiet). LIVE default targets apply to running domains. */
    section("running test-driver domain, LIVE default target");
    {
        virDomainPtr dom5 = simple_domain(conn, "create-running", "raw", 16 * MiB);
        CHECK(virDomainCreate(dom5) == 0);
        CHECK(virDomainIsActive(dom5) == 1);
        if (mkdir(WPATH("livetarget"), 0755) < 0)
            FATAL("mkdir livetarget: %s", strerror(errno));
        snprintf(xml, sizeof(xml), "<target type='dir'><path>%s/livetarget</path></target>", w);
        CHECK(virDomainSetDefaultTarget(dom5, xml, VIR_DOMAIN_AFFECT_LIVE) == 0);
        b = backup_wait(dom5, "<domainbackup/>");
        if (b) {
            const char *t = fmt("%s/livetarget/%s/vda.qcow2", w, backup_uuid(b));
            CHECKF(file_exists(t), "backup of the running domain is not at %s", t);
            CHECKF(images_equal(WPATH("create-running-vda.raw"), "raw", t, "qcow2"),
                   "copy of the running domain differs");
            CHECK(virDomainBackupDelete(b, 0) == 0);
            virDomainBackupFree(b);
        }
        virDomainDestroy(dom5);
        drop_domain(dom5);
    }

    /* ---------------------------------------------------------------- */
    section("sparse target: 1 GiB disk, 24 MiB of data");
    {
        char disk[1024];
        int i;
        snprintf(disk, sizeof(disk), "%s/sparse.raw", w);
        make_image(disk, "raw", 1 * GiB);
        for (i = 0; i < 8; i++)
            write_data(disk, "raw", i * 128 * MiB + 5 * MiB, 3 * MiB, 0x60 + i);
        {
            test_disk d = { "vda", disk, "raw", NULL };
            dom3 = define_domain(conn, "create-dom3", &d, 1);
        }
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("sparse-bk.qcow2"), NULL));
        b = backup_wait(dom3, xml);
        if (b) {
            long long used = allocated_bytes(WPATH("sparse-bk.qcow2"));
            CHECKF(used > 0 && used < 64 * MiB,
                   "qcow2 target of a 1 GiB disk with 24 MiB of data uses %lld bytes", used);
            CHECKF(image_virtual_size(WPATH("sparse-bk.qcow2")) == 1 * GiB,
                   "virtual size %lld", image_virtual_size(WPATH("sparse-bk.qcow2")));
            CHECKF(images_equal(disk, "raw", WPATH("sparse-bk.qcow2"), "qcow2"),
                   "sparse copy differs");
            virDomainBackupFree(b);
        }
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("sparse-bk.raw"), "raw"));
        b = backup_wait(dom3, xml);
        if (b) {
            long long used = allocated_bytes(WPATH("sparse-bk.raw"));
            CHECKF(used > 0 && used < 64 * MiB,
                   "raw target of a 1 GiB disk with 24 MiB of data uses %lld bytes", used);
            CHECKF(images_equal(disk, "raw", WPATH("sparse-bk.raw"), "raw"),
                   "sparse raw copy differs");
            virDomainBackupFree(b);
        }
    }

    section("sparse qcow2 source: 1 GiB, 24 MiB of data");
    {
        char disk[1024];
        virDomainPtr dq;
        int i;
        snprintf(disk, sizeof(disk), "%s/sparse-src.qcow2", w);
        make_image(disk, "qcow2", 1 * GiB);
        for (i = 0; i < 4; i++)
            write_data(disk, "qcow2", i * 256 * MiB + 1 * MiB, 6 * MiB, 0x70 + i);
        {
            test_disk d = { "vda", disk, "qcow2", NULL };
            dq = define_domain(conn, "create-sparse-q", &d, 1);
        }
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("sparse-q-bk.qcow2"), NULL));
        b = backup_wait(dq, xml);
        if (b) {
            long long used = allocated_bytes(WPATH("sparse-q-bk.qcow2"));
            CHECKF(used > 0 && used < 64 * MiB,
                   "qcow2 target of a 1 GiB qcow2 disk with 24 MiB of data uses %lld bytes",
                   used);
            CHECKF(images_equal(disk, "qcow2", WPATH("sparse-q-bk.qcow2"), "qcow2"),
                   "sparse qcow2 copy differs");
            virDomainBackupDelete(b, 0);
            virDomainBackupFree(b);
        }
        drop_domain(dq);
    }

    /* The guest sees the whole chain: the backup holds it, flattened. */
    section("qcow2 source with a backing file");
    {
        char base[1024], top[1024];
        virDomainPtr dc;
        snprintf(base, sizeof(base), "%s/chain-base.qcow2", w);
        snprintf(top, sizeof(top), "%s/chain-top.qcow2", w);
        make_image(base, "qcow2", 64 * MiB);
        write_data(base, "qcow2", 0, 4 * MiB, 0xb1);
        write_data(base, "qcow2", 40 * MiB, 2 * MiB, 0xb2);
        if (!run(fmt("qemu-img create -q -f qcow2 -b '%s' -F qcow2 '%s'", base, top)))
            FATAL("cannot create %s", top);
        write_data(top, "qcow2", 1 * MiB, 1 * MiB, 0xc1);      /* over base data */
        write_data(top, "qcow2", 20 * MiB, 1 * MiB, 0xc2);     /* over a hole */
        {
            test_disk d = { "vda", top, "qcow2", NULL };
            dc = define_domain(conn, "create-chain", &d, 1);
        }
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("chain-bk.qcow2"), NULL));
        b = backup_wait(dc, xml);
        if (b) {
            CHECKF(images_equal(top, "qcow2", WPATH("chain-bk.qcow2"), "qcow2"),
                   "backup of a qcow2 with a backing file differs from what the guest sees");
            CHECKF(!run(fmt("qemu-img info '%s' | grep -q '^backing file:'",
                            WPATH("chain-bk.qcow2"))),
                   "the full backup has a backing file");
            virDomainBackupDelete(b, 0);
            virDomainBackupFree(b);
        }
        drop_domain(dc);
    }

    /* A size that is no multiple of the copy chunk or of a cluster. */
    section("odd-sized raw disk (5 MiB + 1.5 KiB), data up to its last byte");
    {
        char disk[1024];
        virDomainPtr dodd;
        long long size = 5 * MiB + 3 * 512;
        snprintf(disk, sizeof(disk), "%s/odd.raw", w);
        make_image(disk, "raw", size);
        write_data(disk, "raw", 0, 4096, 0x0d);
        write_data(disk, "raw", size - 70 * 1024, 70 * 1024, 0x0e);
        {
            test_disk d = { "vda", disk, "raw", NULL };
            dodd = define_domain(conn, "create-odd", &d, 1);
        }
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("odd-bk.qcow2"), NULL));
        b = backup_wait(dodd, xml);
        if (b) {
            CHECKF(image_virtual_size(WPATH("odd-bk.qcow2")) == size,
                   "virtual size %lld, want %lld", image_virtual_size(WPATH("odd-bk.qcow2")),
                   size);
            CHECKF(images_equal(disk, "raw", WPATH("odd-bk.qcow2"), "qcow2"),
                   "odd-sized qcow2 copy differs");
            virDomainBackupFree(b);
        }
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("odd-bk.raw"), "raw"));
        b = backup_wait(dodd, xml);
        if (b) {
            CHECKF(file_size(WPATH("odd-bk.raw")) == size, "raw target size %lld, want %lld",
                   file_size(WPATH("odd-bk.raw")), size);
            CHECKF(images_equal(disk, "raw", WPATH("odd-bk.raw"), "raw"),
                   "odd-sized raw copy differs");
            virDomainBackupFree(b);
        }
        drop_domain(dodd);
    }

    /* ---------------------------------------------------------------- */
    section("argument and flag errors");
    EXPECT_CREATE_FAIL(NULL, "<domainbackup/>", 0, VIR_ERR_INVALID_ARG);
    EXPECT_CREATE_FAIL(dom1, NULL, 0, VIR_ERR_INVALID_ARG);
    EXPECT_CREATE_FAIL(dom1, "<domainbackup/>", 1 << 10, VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_MSG_CONTAINS("0x400");

    section("malformed XML and bad values");
    EXPECT_CREATE_FAIL(dom1, "", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1, "not xml at all", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1, "<domainbackup><uuid>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1, "<domainbackup></domain>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1, "<domain/>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1, "<domainbackup><uuid>not-a-uuid</uuid></domainbackup>", 0,
                       VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1,
                       "<domainbackup><disks><disk name='vda'><driver type='vmdk'/></disk>"
                       "</disks></domainbackup>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1,
                       "<domainbackup><disks><disk name='vda' backup='maybe'/>"
                       "</disks></domainbackup>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1,
                       "<domainbackup><disks><disk name='vda'><target file='rel.qcow2'/>"
                       "</disk></disks></domainbackup>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1,
                       "<domainbackup><disks><disk name='vda'/><disk name='vda'/>"
                       "</disks></domainbackup>", 0, VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1, "<domainbackup><disks><disk/></disks></domainbackup>", 0,
                       VIR_ERR_XML_ERROR);
    EXPECT_CREATE_FAIL(dom1,
                       "<domainbackup><parent><uuid>zzz</uuid></parent></domainbackup>", 0,
                       VIR_ERR_XML_ERROR);

    section("two disks, one target");
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks><disk name='vda'><target file='%s/same.qcow2'/></disk>"
             "<disk name='vdb'><target file='%s/same.qcow2'/></disk>"
             "</disks></domainbackup>", w, w);
    EXPECT_CREATE_FAIL(dom1, xml, 0, VIR_ERR_INVALID_ARG);

    section("unknown disk name");
    EXPECT_CREATE_FAIL(dom1, "<domainbackup><disks><disk name='vdz'/></disks></domainbackup>",
                       0, VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("vdz");

    section("existing target file");
    {
        struct stat st1, st2;
        FILE *f = fopen(WPATH("exists.qcow2"), "w");
        if (!f)
            FATAL("cannot create exists.qcow2");
        fputs("precious content\n", f);
        fclose(f);
        stat(WPATH("exists.qcow2"), &st1);
        snprintf(xml, sizeof(xml),
                 "<domainbackup><disks><disk name='vda'><target file='%s/exists.qcow2'/></disk>"
                 "<disk name='vdb'><target file='%s/would-be-created.qcow2'/></disk>"
                 "</disks></domainbackup>", w, w);
        EXPECT_CREATE_FAIL(dom1, xml, 0, VIR_ERR_INVALID_ARG);
        CHECK(stat(WPATH("exists.qcow2"), &st2) == 0 && same_stat(&st1, &st2));
        CHECK(file_contains(WPATH("exists.qcow2"), "precious content"));
        CHECK(!file_exists(WPATH("would-be-created.qcow2")));
        /* The same with the WAIT flag. */
        EXPECT_CREATE_FAIL(dom1, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT, VIR_ERR_INVALID_ARG);
        CHECK(file_contains(WPATH("exists.qcow2"), "precious content"));
    }

    section("duplicate uuid");
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>" GIVEN_UUID "</uuid><disks>"
             "<disk name='vda'><target file='%s/dup-vda.qcow2'/></disk>"
             "<disk name='vdb'><target file='%s/dup-vdb.qcow2'/></disk>"
             "</disks></domainbackup>", w, w);
    EXPECT_CREATE_FAIL(dom1, xml, 0, VIR_ERR_INVALID_ARG);
    /* Backup UUIDs are global (LookupByUUID): another domain cannot reuse it. */
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>" GIVEN_UUID "</uuid><disks>"
             "<disk name='vda'><target file='%s/dup2-vda.qcow2'/></disk>"
             "</disks></domainbackup>", w);
    EXPECT_CREATE_FAIL(dom2, xml, 0, VIR_ERR_INVALID_ARG);

    section("parent: missing, of another domain, raw target for a delta");
    snprintf(xml, sizeof(xml), "%s",
             vda_child_xml(NULL, OTHER_UUID, WPATH("inc-vda.qcow2"), NULL));
    EXPECT_CREATE_FAIL(dom1, xml, 0, VIR_ERR_NO_DOMAIN_BACKUP);
    snprintf(xml, sizeof(xml), "%s",
             vda_child_xml(NULL, GIVEN_UUID, WPATH("inc2-vda.qcow2"), NULL));
    EXPECT_CREATE_FAIL(dom2, xml, 0, VIR_ERR_OPERATION_INVALID);
    snprintf(xml, sizeof(xml), "<domainbackup><parent><uuid>" GIVEN_UUID "</uuid></parent>"
             "<disks><disk name='vda'><target file='%s'/><driver type='raw'/></disk>"
             "<disk name='vdb' backup='no'/><disk name='vdc' backup='no'/></disks>"
             "</domainbackup>", WPATH("inc-vda.raw"));
    EXPECT_CREATE_FAIL(dom1, xml, 0, VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("vda");

    /* The details (chains, fallbacks, listing) are in test-incremental.c. */
    section("an incremental backup on top of the first one");
    snprintf(xml, sizeof(xml), "<domainbackup><parent><uuid>" GIVEN_UUID "</uuid></parent>"
             "<disks><disk name='vda'><target file='%s'/></disk>"
             "<disk name='vdb' backup='no'/><disk name='vdc' backup='no'/></disks>"
             "</domainbackup>", WPATH("inc-vda.qcow2"));
    b = backup_wait(dom1, xml);
    if (b) {
        CHECK(strcmp(backup_parent(b), GIVEN_UUID) == 0);
        CHECKF(strcmp(backup_mode(b, "vda"), "incremental") == 0, "vda stored '%s'",
               backup_mode(b, "vda"));
        CHECKF(strcmp(backing_file(WPATH("inc-vda.qcow2")),
                      fmt("%s/%s/" GIVEN_UUID "/vda.qcow2", cat, dom1_uuid)) == 0,
               "backing file of the incremental copy: '%s'",
               backing_file(WPATH("inc-vda.qcow2")));
        CHECK(images_equal(vda, "raw", WPATH("inc-vda.qcow2"), "qcow2"));
        /* Nothing changed since the parent: nothing stored. */
        CHECKF(backup_written(b) == 0, "bytes.written %llu", backup_written(b));
        CHECK(virDomainBackupDelete(b, 0) == 0);
        virDomainBackupFree(b);
    }

    /* A dir pool of the test driver whose folder is real: libvirt knows the
     * volume, the library writes its file. */
    section("type='volume' targets, SetDefaultTarget type='pool'");
    {
        char pdir[1024];
        virStoragePoolPtr pool;
        snprintf(pdir, sizeof(pdir), "%s", WPATH("pool"));
        if (mkdir(pdir, 0755) < 0)
            FATAL("mkdir %s: %s", pdir, strerror(errno));
        pool = virStoragePoolCreateXML(conn, fmt("<pool type='dir'><name>bk-pool</name>"
                                                 "<target><path>%s</path></target></pool>", pdir),
                                       0);
        REQUIRE(pool != NULL);
        EXPECT_CREATE_FAIL(dom2, volume_xml("no-such-pool", "vm1-vda-bk.qcow2"), 0,
                           VIR_ERR_NO_STORAGE_POOL);
        EXPECT_MSG_CONTAINS("no-such-pool");
        b = backup_wait(dom2, volume_xml("bk-pool", "vm1-vda-bk.qcow2"));
        if (b) {
            const char *t = fmt("%s/vm1-vda-bk.qcow2", pdir);
            CHECKF(strcmp(backup_target(b, "vda"), t) == 0, "target '%s', want %s",
                   backup_target(b, "vda"), t);
            CHECK(images_equal(WPATH("create-dom2-vda.raw"), "raw", t, "qcow2"));
            CHECKF(virStoragePoolNumOfVolumes(pool) == 1, "the pool has %d volumes",
                   virStoragePoolNumOfVolumes(pool));
            /* The volume exists now. */
            EXPECT_CREATE_FAIL(dom2, volume_xml("bk-pool", "vm1-vda-bk.qcow2"), 0,
                               VIR_ERR_INVALID_ARG);
            CHECK(virDomainBackupDelete(b, 0) == 0);
            CHECK(!file_exists(t));
            CHECK(virStoragePoolNumOfVolumes(pool) == 0);
            virDomainBackupFree(b);
        }
        CHECK(virDomainSetDefaultTarget(dom2, "<target type='pool'><pool>bk-pool</pool></target>",
                                        VIR_DOMAIN_AFFECT_CONFIG) == 0);
        b = backup_wait(dom2, "<domainbackup/>");
        if (b) {
            /* Default volume name: <domain>-<backup uuid>-<disk>.<format>. */
            const char *t = fmt("%s/create-dom2-%s-vda.qcow2", pdir, backup_uuid(b));
            CHECKF(strcmp(backup_target(b, "vda"), t) == 0, "target '%s', want %s",
                   backup_target(b, "vda"), t);
            CHECK(images_equal(WPATH("create-dom2-vda.raw"), "raw", t, "qcow2"));
            CHECK(virDomainBackupDelete(b, 0) == 0);
            CHECK(virStoragePoolNumOfVolumes(pool) == 0);
            virDomainBackupFree(b);
        }
        EXPECT_INT_FAIL(virDomainSetDefaultTarget(
                            dom2, "<target type='pool'><pool>no-such-pool</pool></target>",
                            VIR_DOMAIN_AFFECT_CONFIG),
                        VIR_ERR_NO_STORAGE_POOL);
        CHECK(virStoragePoolDestroy(pool) == 0);
        virStoragePoolFree(pool);
    }

    section("target folder does not exist");
    {
        char *before = state_snapshot();
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("no/such/dir/x.qcow2"), NULL));
        b = virDomainBackupCreateXML(dom1, xml, 0);
        CHECKF(b == NULL, "a backup into a missing folder was accepted");
        CHECKF(virDomainBackupGetLastErrorCode() == VIR_ERR_INVALID_ARG ||
                   virDomainBackupGetLastErrorCode() == VIR_ERR_OPERATION_FAILED,
               "missing target folder: %s", virDomainBackupGetLastErrorMessage());
        if (b) {
            virDomainBackupFinishJob(b, 0);
            virDomainBackupFree(b);
        }
        EXPECT_UNCHANGED(before);
    }

    section("missing and unreadable source files");
    {
        test_disk d = { "vda", NULL, "raw", NULL };
        char missing[1024];
        snprintf(missing, sizeof(missing), "%s/no-such-source.raw", w);
        d.path = missing;
        dom4 = define_domain(conn, "create-dom4", &d, 1);
        EXPECT_CREATE_FAIL(dom4, "<domainbackup/>", 0, VIR_ERR_OPERATION_FAILED);
        EXPECT_MSG_CONTAINS("no-such-source.raw");
        EXPECT_CREATE_FAIL(dom4, "<domainbackup/>", VIR_DOMAIN_BACKUP_CREATE_WAIT,
                           VIR_ERR_OPERATION_FAILED);
        virDomainUndefine(dom4);
        virDomainFree(dom4);
    }
    {
        /* A socket cannot be opened as a file, even by root. */
        struct sockaddr_un sa;
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        test_disk d = { "vda", NULL, "raw", NULL };
        char sock[1024];
        snprintf(sock, sizeof(sock), "%s/sock.raw", w);
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        if (strlen(sock) >= sizeof(sa.sun_path))
            FATAL("socket path too long: %s", sock);
        memcpy(sa.sun_path, sock, strlen(sock) + 1);
        if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            FATAL("cannot bind %s: %s", sock, strerror(errno));
        d.path = sock;
        dom4 = define_domain(conn, "create-dom5", &d, 1);
        EXPECT_CREATE_FAIL(dom4, "<domainbackup/>", 0, VIR_ERR_OPERATION_FAILED);
        EXPECT_MSG_CONTAINS("sock.raw");
        close(s);
        virDomainUndefine(dom4);
        virDomainFree(dom4);
    }
    if (geteuid() != 0) {
        test_disk d = { "vda", NULL, "raw", NULL };
        char locked[1024];
        snprintf(locked, sizeof(locked), "%s/unreadable.raw", w);
        make_disk(locked, "raw", 8 * MiB, 0x44);
        chmod(locked, 0);
        d.path = locked;
        dom4 = define_domain(conn, "create-dom6", &d, 1);
        EXPECT_CREATE_FAIL(dom4, "<domainbackup/>", 0, VIR_ERR_OPERATION_FAILED);
        EXPECT_MSG_CONTAINS("unreadable.raw");
        virDomainUndefine(dom4);
        virDomainFree(dom4);
    }
    {
        /* Declared qcow2, but not a qcow2 image. */
        test_disk d = { "vda", NULL, "qcow2", NULL };
        FILE *f = fopen(WPATH("garbage.qcow2"), "w");
        if (!f)
            FATAL("cannot create garbage.qcow2");
        fputs("this is not a qcow2 image\n", f);
        fclose(f);
        d.path = WPATH("garbage.qcow2");
        dom4 = define_domain(conn, "create-dom7", &d, 1);
        EXPECT_CREATE_FAIL(dom4, "<domainbackup/>", 0, VIR_ERR_OPERATION_FAILED);
        virDomainUndefine(dom4);
        virDomainFree(dom4);
    }

    /* Failures above left the existing backups alone. */
    section("state after the errors");
    CHECK(count_backups(dom1) == 3);
    CHECK(count_backups(dom2) == 2);
    CHECK(count_backups(dom3) == 2);
    CHECK(catalog_records() == 7);

    drop_domain(dom1);
    drop_domain(dom2);
    drop_domain(dom3);
    virConnectClose(conn);
    return t_done("test-create");
}
