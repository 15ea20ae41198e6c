/*
 * test-incremental.c: incremental backups on the library's own engine.
 *
 * A tree on one raw disk: full <- inc1 <- inc2 <- inc3, a branch on inc1
 * and a second full backup. Each backup holds the disk as it was when it
 * was taken, stores only the 64 KiB chunks that changed, and its qcow2 file
 * is backed by its parent's. Then the listing flags over that tree; every
 * full-copy fallback (new disk, grown and shrunk disk, changed format,
 * parent's copy gone), each refused by NO_FALLBACK with nothing created; a
 * raw target refused for a delta; and last, inc1 deleted from the middle of
 * the chain and the leaf restored byte for byte.
 */
#include "common.h"

#define KiB 1024LL

/* One backup of the tree, and a copy of the disk as it was then. */
typedef struct {
    const char *label; /* its description */
    char uuid[64];
    char target[1024]; /* its vda.qcow2 */
    char copy[1024];   /* the disk when it was taken (raw) */
    virDomainBackupPtr b;
} node;

static char disk[1024]; /* the tree domain's vda */

/* Back vda up as @label on top of @parent (NULL: full), keeping a copy
 * of the disk as it is. */
static void take(virDomainPtr dom, node *n, const char *label, const node *parent)
{
    n->label = label;
    snprintf(n->target, sizeof(n->target), "%s", WPATH("%s.qcow2", label));
    snprintf(n->copy, sizeof(n->copy), "%s", WPATH("%s-disk.raw", label));
    copy_file(disk, n->copy);
    n->b = backup_wait(dom, vda_child_xml(label, parent ? parent->uuid : NULL, n->target, NULL));
    if (!n->b)
        FATAL("backup '%s' failed", label);
    snprintf(n->uuid, sizeof(n->uuid), "%s", backup_uuid(n->b));
}

/* @n is @mode ('full' / 'incremental'), on top of @parent, in a chain of
 * @depth files, equal to the disk when it was taken, and stored @written
 * bytes (-1: not checked). */
static void check_node(const node *n, const char *mode, const node *parent, int depth,
                       long long written)
{
    printf("%s: %s, chain of %d\n", n->label, mode, depth);
    CHECKF(strcmp(backup_mode(n->b, "vda"), mode) == 0, "%s: vda stored '%s', want '%s'",
           n->label, backup_mode(n->b, "vda"), mode);
    CHECKF(strcmp(backup_parent(n->b), parent ? parent->uuid : "") == 0,
           "%s: parent '%s', want %s", n->label, backup_parent(n->b),
           parent ? parent->label : "none");
    CHECKF(backup_incremental(n->b) == (strcmp(mode, "incremental") == 0),
           "%s: 'incremental' parameter %d", n->label, backup_incremental(n->b));
    CHECKF(chain_depth(n->target) == depth, "%s: backing chain of %d, want %d", n->label,
           chain_depth(n->target), depth);
    if (parent && depth > 1)
        CHECKF(strcmp(backing_file(n->target), parent->target) == 0,
               "%s: backing file '%s', want %s", n->label, backing_file(n->target),
               parent->target);
    CHECKF(disks_identical(n->copy, "raw", n->target, "qcow2"),
           "%s differs from the disk when it was taken", n->label);
    if (written >= 0)
        CHECKF(backup_written(n->b) == (unsigned long long)written,
               "%s: bytes.written %llu, want %lld", n->label, backup_written(n->b), written);
}

/* XML for a backup of fb-dom's two disks on top of @parent (NULL: full),
 * vdb left out when @with_vdb is false; vda in the default location. */
static const char *two_disks_xml(const char *label, const char *parent, bool with_vdb)
{
    return fmt("<domainbackup><description>%s</description>%s<disks>%s</disks></domainbackup>",
               label, parent ? fmt("<parent><uuid>%s</uuid></parent>", parent) : "",
               with_vdb ? "" : "<disk name='vdb' backup='no'/>");
}

/* A child of @parent that cannot be incremental for @why must be refused
 * by NO_FALLBACK (nothing created), then made with the full copy: returns it. */
static virDomainBackupPtr fallback_child(virDomainPtr dom, const char *label,
                                         virDomainBackupPtr parent, const char *why)
{
    char xml[2048];
    snprintf(xml, sizeof(xml), "%s", two_disks_xml(label, backup_uuid(parent), true));
    EXPECT_CREATE_FAIL(dom, xml,
                       VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK | VIR_DOMAIN_BACKUP_CREATE_WAIT,
                       VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS(why);
    return backup_wait(dom, xml);
}

/* Both disks of @b equal the domain's disks now, stored as @vda_mode and
 * @vdb_mode (into qcow2 files). */
static void check_two(virDomainBackupPtr b, const char *vda, const char *vdb,
                      const char *vdb_fmt, const char *vda_mode, const char *vdb_mode)
{
    char ta[1024], tb[1024], db[1024];
    snprintf(ta, sizeof(ta), "%s", backup_target(b, "vda"));
    snprintf(tb, sizeof(tb), "%s", backup_target(b, "vdb"));
    snprintf(db, sizeof(db), "%s", vdb);
    CHECKF(strcmp(backup_mode(b, "vda"), vda_mode) == 0, "vda stored '%s', want '%s'",
           backup_mode(b, "vda"), vda_mode);
    CHECKF(strcmp(backup_mode(b, "vdb"), vdb_mode) == 0, "vdb stored '%s', want '%s'",
           backup_mode(b, "vdb"), vdb_mode);
    CHECK(disks_identical(vda, "raw", ta, "qcow2"));
    CHECK(disks_identical(db, vdb_fmt, tb, "qcow2"));
    CHECKF((chain_depth(ta) == 1) == (strcmp(vda_mode, "full") == 0),
           "vda stored '%s' in a chain of %d", vda_mode, chain_depth(ta));
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    virDomainPtr dom, fb;
    node full, inc1, inc2, inc3, branch, full2;
    char vda[1024];
    char xml[4096];

    snprintf(disk, sizeof(disk), "%s", WPATH("inc-dom-vda.raw"));
    /* 32 MiB raw, 2.5 MiB of data (make_disk). */
    dom = simple_domain(conn, "inc-dom", "raw", 32 * MiB);

    /* ---------------------------------------------------------------- */
    section("a chain: full <- inc1 <- inc2 <- inc3");
    take(dom, &full, "full", NULL);
    check_node(&full, "full", NULL, 1, 2 * MiB + 512 * KiB);

    write_data(disk, "raw", 4 * MiB, 1 * MiB, 0x51);
    take(dom, &inc1, "inc1", &full);
    check_node(&inc1, "incremental", &full, 2, 1 * MiB);
    CHECKF(allocated_bytes(inc1.target) < allocated_bytes(full.target),
           "inc1 uses %lld bytes, the full backup %lld", allocated_bytes(inc1.target),
           allocated_bytes(full.target));

    /* 100 KiB across two chunks, and one chunk of inc1's data rewritten. */
    write_data(disk, "raw", 20 * MiB + 10 * KiB, 100 * KiB, 0x52);
    write_data(disk, "raw", 4 * MiB, 64 * KiB, 0x53);
    take(dom, &inc2, "inc2", &inc1);
    check_node(&inc2, "incremental", &inc1, 3, 3 * 64 * KiB);

    /* Nothing changed: nothing stored, the chain still reads the same. */
    take(dom, &inc3, "inc3", &inc2);
    check_node(&inc3, "incremental", &inc2, 4, 0);

    section("a branch on inc1, with data of the full backup zeroed");
    /* The full backup's first MiB now reads as zeroes: the delta must hide
     * it (zero clusters are no stored data). */
    write_data(disk, "raw", 0, 1 * MiB, 0);
    write_data(disk, "raw", 8 * MiB, 64 * KiB, 0x54);
    take(dom, &branch, "branch", &inc1);
    /* What inc2 stored, plus the new chunk. */
    check_node(&branch, "incremental", &inc1, 3, 4 * 64 * KiB);

    section("a second full backup");
    take(dom, &full2, "full2", NULL);
    check_node(&full2, "full", NULL, 1, -1);

    /* ---------------------------------------------------------------- */
    section("List flags over the tree");
    EXPECT_LIST(dom, 0, "full inc1 inc2 inc3 branch full2 ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_FULL, "full full2 ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_INCREMENTAL, "inc1 inc2 inc3 branch ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_LEAVES, "inc3 branch full2 ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_LEAVES | VIR_DOMAIN_BACKUP_LIST_INCREMENTAL,
                "inc3 branch ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_LEAVES | VIR_DOMAIN_BACKUP_LIST_FULL, "full2 ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_LATEST, "full2 ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_LATEST | VIR_DOMAIN_BACKUP_LIST_INCREMENTAL,
                "branch ");

    section("ListChildren over the tree");
    EXPECT_CHILDREN(full.b, 0, "inc1 ");
    EXPECT_CHILDREN(full.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, "inc1 inc2 inc3 branch ");
    EXPECT_CHILDREN(inc1.b, 0, "inc2 branch ");
    EXPECT_CHILDREN(inc1.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, "inc2 inc3 branch ");
    EXPECT_CHILDREN(full.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS | VIR_DOMAIN_BACKUP_LIST_LEAVES,
                    "inc3 branch ");
    EXPECT_CHILDREN(full.b, VIR_DOMAIN_BACKUP_LIST_LEAVES, "");
    EXPECT_CHILDREN(full.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS | VIR_DOMAIN_BACKUP_LIST_FULL, "");
    EXPECT_CHILDREN(full.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS | VIR_DOMAIN_BACKUP_LIST_LATEST,
                    "branch ");
    EXPECT_CHILDREN(inc2.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, "inc3 ");
    EXPECT_CHILDREN(inc3.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, "");
    EXPECT_CHILDREN(full2.b, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, "");

    /* ---------------------------------------------------------------- */
    /* fb-dom: vda raw, vdb qcow2; every child falls back for one reason. */
    section("fallback: a disk the parent does not have");
    snprintf(vda, sizeof(vda), "%s", WPATH("fb-vda.raw"));
    make_disk(vda, "raw", 16 * MiB, 0x21);
    make_disk(WPATH("fb-vdb.qcow2"), "qcow2", 16 * MiB, 0x31);
    {
        test_disk d[] = { { "vda", vda, "raw", NULL },
                          { "vdb", WPATH("fb-vdb.qcow2"), "qcow2", NULL } };
        fb = define_domain(conn, "fb-dom", d, 2);
    }
    {
        virDomainBackupPtr p, c1, c2, c3, c4, c5;
        p = backup_wait(fb, two_disks_xml("p", NULL, false));
        REQUIRE(p != NULL);
        write_data(vda, "raw", 1 * MiB, 1 * MiB, 0x22);
        c1 = fallback_child(fb, "c1", p, "vdb");
        REQUIRE(c1 != NULL);
        check_two(c1, vda, WPATH("fb-vdb.qcow2"), "qcow2", "incremental", "full");
        CHECK(backup_incremental(c1) == 1);

        section("a grown disk stores only its new tail");
        CHECK(truncate(vda, 17 * MiB) == 0);
        write_data(vda, "raw", 16 * MiB, 1 * MiB, 0x23);
        snprintf(xml, sizeof(xml), "%s", two_disks_xml("c2", backup_uuid(c1), true));
        c2 = virDomainBackupCreateXML(fb, xml, VIR_DOMAIN_BACKUP_CREATE_NO_FALLBACK |
                                                   VIR_DOMAIN_BACKUP_CREATE_WAIT);
        REQUIRE(c2 != NULL);
        check_two(c2, vda, WPATH("fb-vdb.qcow2"), "qcow2", "incremental", "incremental");
        CHECK(image_virtual_size(backup_target(c2, "vda")) == 17 * MiB);
        CHECKF(backup_written(c2) == 1 * MiB, "bytes.written %llu", backup_written(c2));

        section("fallback: a shrunk disk");
        CHECK(truncate(vda, 12 * MiB) == 0);
        c3 = fallback_child(fb, "c3", c2, "shrank");
        REQUIRE(c3 != NULL);
        check_two(c3, vda, WPATH("fb-vdb.qcow2"), "qcow2", "full", "incremental");
        CHECK(backup_incremental(c3) == 1);

        section("fallback: a disk whose format changed");
        if (!run(fmt("qemu-img convert -f qcow2 -O raw '%s' '%s'", WPATH("fb-vdb.qcow2"),
                     WPATH("fb-vdb.raw"))))
            FATAL("qemu-img convert failed");
        {
            test_disk d[] = { { "vda", vda, "raw", NULL },
                              { "vdb", WPATH("fb-vdb.raw"), "raw", NULL } };
            char *x = domain_xml("fb-dom", dom_uuid(fb), d, 2);
            virDomainPtr again = virDomainDefineXML(conn, x);
            free(x);
            REQUIRE(again != NULL);
            virDomainFree(again);
        }
        c4 = fallback_child(fb, "c4", c3, "format");
        REQUIRE(c4 != NULL);
        check_two(c4, vda, WPATH("fb-vdb.raw"), "raw", "incremental", "full");

        section("fallback: the parent's copy is gone");
        CHECK(unlink(backup_target(c4, "vda")) == 0);
        c5 = fallback_child(fb, "c5", c4, "missing");
        REQUIRE(c5 != NULL);
        check_two(c5, vda, WPATH("fb-vdb.raw"), "raw", "full", "incremental");

        section("a raw target for a disk that would be incremental");
        snprintf(xml, sizeof(xml),
                 "<domainbackup><parent><uuid>%s</uuid></parent><disks>"
                 "<disk name='vdb'><target file='%s'/><driver type='raw'/></disk>"
                 "</disks></domainbackup>", backup_uuid(c5), WPATH("c6-vdb.raw"));
        EXPECT_CREATE_FAIL(fb, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT, VIR_ERR_INVALID_ARG);
        EXPECT_MSG_CONTAINS("vdb");
        /* ... is fine for a disk that falls back to a full copy anyway. */
        snprintf(xml, sizeof(xml),
                 "<domainbackup><parent><uuid>%s</uuid></parent><disks>"
                 "<disk name='vdb' backup='no'/></disks></domainbackup>", backup_uuid(c5));
        {
            virDomainBackupPtr novdb = backup_wait(fb, xml);
            REQUIRE(novdb != NULL);
            snprintf(xml, sizeof(xml),
                     "<domainbackup><parent><uuid>%s</uuid></parent><disks>"
                     "<disk name='vdb'><target file='%s'/><driver type='raw'/></disk>"
                     "</disks></domainbackup>", backup_uuid(novdb), WPATH("c7-vdb.raw"));
            {
                virDomainBackupPtr c7 = backup_wait(fb, xml);
                if (c7) {
                    CHECK(strcmp(backup_mode(c7, "vdb"), "full") == 0);
                    CHECK(strcmp(image_format(WPATH("c7-vdb.raw")), "raw") == 0);
                    CHECK(files_identical(WPATH("fb-vdb.raw"), WPATH("c7-vdb.raw")));
                    virDomainBackupFree(c7);
                }
            }
            virDomainBackupFree(novdb);
        }
        virDomainBackupFree(p);
        virDomainBackupFree(c1);
        virDomainBackupFree(c2);
        virDomainBackupFree(c3);
        virDomainBackupFree(c4);
        virDomainBackupFree(c5);
    }

    /* ---------------------------------------------------------------- */
    section("delete inc1 from the middle of the chain: merged into inc2 and branch");
    CHECK(virDomainBackupDelete(inc1.b, 0) == 0);
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(inc1.b, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECKF(!file_exists(inc1.target), "inc1's file %s is still there", inc1.target);
    check_node(&inc2, "incremental", &full, 2, -1);
    check_node(&inc3, "incremental", &inc2, 3, -1);
    check_node(&branch, "incremental", &full, 2, -1);
    EXPECT_CHILDREN(full.b, 0, "inc2 branch ");
    EXPECT_LIST(dom, VIR_DOMAIN_BACKUP_LIST_INCREMENTAL, "inc2 inc3 branch ");

    section("restore the leaf inc3, byte for byte");
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>%s</uuid><domain name='inc-leaf'/><disks><disk name='vda'>"
             "<target file='%s'/><driver type='raw'/></disk></disks></domainbackup>",
             inc3.uuid, WPATH("leaf.raw"));
    CHECK(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) == 0);
    CHECKF(files_identical(inc3.copy, WPATH("leaf.raw")),
           "the restored leaf differs from the disk when inc3 was taken");
    CHECK(disks_identical(inc3.copy, "raw", WPATH("leaf.raw"), "raw"));
    {
        virDomainPtr leaf = virDomainLookupByName(conn, "inc-leaf");
        CHECK(leaf != NULL);
        if (leaf)
            CHECK(strcmp(domain_disk_attr(leaf, "vda", "source", "file"), WPATH("leaf.raw")) == 0);
        drop_domain(leaf);
    }

    virDomainBackupFree(full.b);
    virDomainBackupFree(inc1.b);
    virDomainBackupFree(inc2.b);
    virDomainBackupFree(inc3.b);
    virDomainBackupFree(branch.b);
    virDomainBackupFree(full2.b);
    drop_domain(fb);
    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-incremental");
}
