/*
 * test-list.c: virDomainBackupList (of a domain, and with a NULL domain of
 * the whole catalog, the backups of an undefined domain included),
 * virDomainBackupListChildren, virDomainBackupLookupByUUID (same process
 * and a fresh one), virDomainBackupGetDomain, virDomainBackupRef /
 * virDomainBackupFree.
 *
 * Run with the argument "child NODE-URI UUID1 UUID2" it is the fresh process:
 * it looks the backups up again with nothing but their UUIDs.
 */
#include "common.h"

#include <pthread.h>

#define NODE_DOM_UUID "6f1c3f4e-8a2b-4c5d-9e0f-112233445566"
/* Given backup UUIDs in descending order, so that sorting by UUID and by
 * creation time give different orders. */
#define U1 "f0000000-0000-4000-8000-000000000001"
#define U2 "80000000-0000-4000-8000-000000000002"
#define U3 "10000000-0000-4000-8000-000000000003"
#define UNKNOWN "0badc0de-0000-4000-8000-00000000beef"

static const char *uuid_of(virDomainBackupPtr b)
{
    return b ? backup_uuid(b) : "(null)";
}

/* virDomainBackupList with @flags must succeed with @want entries, a
 * NULL-terminated array; returns the array (caller frees) or NULL. */
static virDomainBackupPtr *list_expect(virDomainPtr dom, unsigned int flags, int want,
                                       const char *what)
{
    virDomainBackupPtr *list = (virDomainBackupPtr *)&list; /* poison */
    int n = virDomainBackupList(dom, &list, flags);
    CHECKF(n == want, "%s: virDomainBackupList(0x%x) returned %d, want %d (%s)", what, flags,
           n, want, n < 0 ? virDomainBackupGetLastErrorMessage() : "");
    if (n < 0) {
        CHECKF(list == NULL, "%s: *backups not NULL on error", what);
        return NULL;
    }
    CHECKF(list != NULL, "%s: *backups is NULL", what);
    if (list) {
        int i;
        for (i = 0; i < n; i++)
            CHECKF(list[i] != NULL, "%s: entry %d is NULL", what, i);
        CHECKF(list[n] == NULL, "%s: the array is not NULL-terminated", what);
    }
    /* Count only. */
    {
        int c = virDomainBackupList(dom, NULL, flags);
        CHECKF(c == n, "%s: count-only returned %d, list %d", what, c, n);
    }
    return list;
}

/* virDomainBackupList(@flags) must fail with @code and leave *backups NULL. */
static void list_refused(virDomainPtr dom, unsigned int flags, int code)
{
    virDomainBackupPtr *list = (virDomainBackupPtr *)&list; /* poison */
    EXPECT_INT_FAIL(virDomainBackupList(dom, &list, flags), code);
    CHECKF(list == NULL, "*backups not set to NULL on error (flags 0x%x)", flags);
    EXPECT_INT_FAIL(virDomainBackupList(dom, NULL, flags), code);
}

/* Handles shared between threads (API.md: thread-safe, handles may be
 * shared). Each thread counts its own failures. */
struct worker {
    pthread_t tid;
    virDomainPtr dom;
    virDomainBackupPtr shared;
    int errors;
    char first_error[256];
};

static void worker_fail(struct worker *wk, const char *what)
{
    if (!wk->errors++)
        snprintf(wk->first_error, sizeof(wk->first_error), "%s: %s", what,
                 virDomainBackupGetLastErrorMessage());
}

static void *worker_body(void *arg)
{
    struct worker *wk = arg;
    int i;
    for (i = 0; i < 20; i++) {
        virDomainBackupPtr *list = NULL, lb;
        char *x;
        int n;
        if (virDomainBackupRef(wk->shared) < 0)
            worker_fail(wk, "Ref");
        x = virDomainBackupGetXMLDesc(wk->shared, 0);
        if (!x || !strstr(x, U1))
            worker_fail(wk, "GetXMLDesc");
        free(x);
        n = virDomainBackupList(wk->dom, &list, 0);
        if (n != 3)
            worker_fail(wk, "List");
        if (list) {
            int j;
            for (j = 0; list[j]; j++)
                virDomainBackupFree(list[j]);
            free(list);
        }
        lb = virDomainBackupLookupByUUID(U2, 0);
        if (!lb)
            worker_fail(wk, "LookupByUUID");
        else if (virDomainBackupFree(lb) < 0)
            worker_fail(wk, "Free(lookup)");
        if (virDomainBackupLookupByUUID(UNKNOWN, 0) != NULL ||
            virDomainBackupGetLastErrorCode() != VIR_ERR_NO_DOMAIN_BACKUP)
            worker_fail(wk, "LookupByUUID(unknown)");
        if (virDomainBackupFree(wk->shared) < 0)
            worker_fail(wk, "Free");
    }
    return NULL;
}

/* The UUID of the backup @other's domain has, listed with a NULL domain
 * (the newest of the catalog). */
static char other_backup[VIR_UUID_STRING_BUFLEN];

/* virDomainBackupList(NULL, ...): every backup of @dom (U1, U2, U3) and
 * @other (one, the newest), oldest first, under the same flags; then
 * @other is undefined behind the library's back (as virsh undefine does):
 * its backup is still listed, its GetDomain fails with VIR_ERR_NO_DOMAIN,
 * its XML names the domain and holds its saved definition, and it is
 * restored as a new domain. */
static void whole_catalog(virConnectPtr conn, virDomainPtr dom, virDomainPtr other)
{
    virDomainBackupPtr *list;
    int i;
    char xml[512];

    list = list_expect(NULL, 0, 4, "NULL domain");
    if (list) {
        const char *want[] = { U1, U2, U3 };
        for (i = 0; i < 3 && list[i]; i++)
            CHECKF(strcmp(uuid_of(list[i]), want[i]) == 0,
                   "NULL-domain List entry %d is %s, want %s (oldest first)", i,
                   uuid_of(list[i]), want[i]);
        if (list[3]) {
            virDomainPtr d = virDomainBackupGetDomain(list[3]);
            snprintf(other_backup, sizeof(other_backup), "%s", uuid_of(list[3]));
            CHECKF(d && strcmp(virDomainGetName(d), "list-other") == 0,
                   "GetDomain of a listed backup of a defined domain: %s",
                   d ? virDomainGetName(d) : virDomainBackupGetLastErrorMessage());
        }
        if (list[0]) {
            virDomainPtr d = virDomainBackupGetDomain(list[0]);
            CHECK(d != NULL && strcmp(dom_uuid(d), dom_uuid(dom)) == 0);
        }
    }
    free_list(list);
    list = list_expect(NULL, VIR_DOMAIN_BACKUP_LIST_LATEST, 1, "NULL LATEST");
    if (list && list[0])
        CHECKF(strcmp(uuid_of(list[0]), other_backup) == 0,
               "NULL LATEST gave %s, want the catalog's newest %s", uuid_of(list[0]),
               other_backup);
    free_list(list);
    free_list(list_expect(NULL, VIR_DOMAIN_BACKUP_LIST_FULL, 4, "NULL FULL"));
    free_list(list_expect(NULL, VIR_DOMAIN_BACKUP_LIST_LEAVES, 4, "NULL LEAVES"));
    free_list(list_expect(NULL, VIR_DOMAIN_BACKUP_LIST_INCREMENTAL, 0, "NULL INCREMENTAL"));
    list_refused(NULL, VIR_DOMAIN_BACKUP_LIST_FULL | VIR_DOMAIN_BACKUP_LIST_INCREMENTAL,
                 VIR_ERR_INVALID_ARG);
    list_refused(NULL, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, VIR_ERR_INVALID_ARG);
    list_refused(NULL, 1 << 10, VIR_ERR_INVALID_ARG);

    section("NULL-domain List of an undefined domain's backup");
    CHECK(virDomainUndefine(other) == 0); /* libvirt's own: backups stay */
    list = list_expect(NULL, 0, 4, "after undefine");
    if (list && list[3]) {
        virDomainBackupPtr b = list[3];
        char *x;
        CHECK(strcmp(uuid_of(b), other_backup) == 0);
        CHECK(virDomainBackupGetDomain(b) == NULL);
        CHECKF(virDomainBackupGetLastErrorCode() == VIR_ERR_NO_DOMAIN,
               "GetDomain of an undefined domain's backup: %s (%d)",
               virDomainBackupGetLastErrorMessage(), virDomainBackupGetLastErrorCode());
        x = virDomainBackupGetXMLDesc(b, 0);
        CHECKF(x && strstr(x, "name='list-other'") && strstr(x, "<definition>") &&
                   strstr(x, "<name>list-other</name>"),
               "XML of an undefined domain's backup: %s", x ? x : "(null)");
        free(x);
        /* The same handle from LookupByUUID. */
        b = virDomainBackupLookupByUUID(other_backup, 0);
        CHECK(b != NULL);
        if (b) {
            CHECK(virDomainBackupGetDomain(b) == NULL);
            CHECK(virDomainBackupGetLastErrorCode() == VIR_ERR_NO_DOMAIN);
            virDomainBackupFree(b);
        }
    }
    free_list(list);
    /* Its domain's own List is gone with it; the catalog restores it. */
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>%s</uuid><domain name='list-other-back'/></domainbackup>",
             other_backup);
    CHECKF(virDomainBackupRestore(xml, VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN) == 0,
           "restore of an undefined domain's backup as a new domain: %s",
           virDomainBackupGetLastErrorMessage());
    {
        virDomainPtr back = virDomainLookupByName(conn, "list-other-back");
        CHECK(back != NULL);
        if (back)
            CHECK(virDomainBackupList(back, NULL, 0) == 0);
        drop_domain(back);
    }
}

/* The fresh process. */
static int child_main(const char *uri, const char *u_node, const char *u_default)
{
    virDomainBackupPtr b;
    virDomainPtr d;
    char *x;

    section("fresh process: lookup of a backup on a node file domain");
    b = virDomainBackupLookupByUUID(u_node, 0);
    CHECK(b != NULL);
    if (b) {
        x = virDomainBackupGetXMLDesc(b, 0);
        CHECKF(x && strcmp(xml_text(x, "uuid"), u_node) == 0, "XML: %s", x ? x : "(null)");
        CHECKF(x && strstr(x, "<state>completed</state>"), "XML: %s", x ? x : "(null)");
        free(x);
        d = virDomainBackupGetDomain(b);
        CHECK(d != NULL);
        if (d) {
            char u[VIR_UUID_STRING_BUFLEN];
            CHECK(virDomainGetUUIDString(d, u) == 0 && strcmp(u, NODE_DOM_UUID) == 0);
            CHECK(strcmp(virDomainGetName(d), "list-node") == 0);
            /* The domain is usable: List through it. */
            CHECK(virDomainBackupList(d, NULL, 0) == 1);
        }
        CHECK(virDomainBackupFree(b) == 0);
    }
    {
        /* The same domain reached through our own connection. */
        virConnectPtr c = virConnectOpen(uri);
        CHECK(c != NULL);
        if (c) {
            virDomainPtr nd = virDomainLookupByUUIDString(c, NODE_DOM_UUID);
            CHECK(nd != NULL);
            if (nd) {
                virDomainBackupPtr *list = NULL;
                CHECK(virDomainBackupList(nd, &list, 0) == 1);
                if (list && list[0])
                    CHECK(strcmp(backup_uuid(list[0]), u_node) == 0);
                free_list(list);
                virDomainFree(nd);
            }
            virConnectClose(c);
        }
    }

    section("fresh process: backup of a test:///default domain (gone here)");
    b = virDomainBackupLookupByUUID(u_default, 0);
    CHECK(b != NULL);
    if (b) {
        x = virDomainBackupGetXMLDesc(b, 0);
        CHECKF(x && strcmp(xml_text(x, "uuid"), u_default) == 0, "XML: %s", x ? x : "(null)");
        free(x);
        /* test:///default starts empty in every process: the domain is not
         * found (header: VIR_ERR_NO_DOMAIN). */
        d = virDomainBackupGetDomain(b);
        CHECK(d == NULL);
        CHECKF(virDomainBackupGetLastErrorCode() == VIR_ERR_NO_DOMAIN,
               "GetDomain of a vanished domain: %s (%d)", virDomainBackupGetLastErrorMessage(),
               virDomainBackupGetLastErrorCode());
        CHECK(virDomainBackupFree(b) == 0);
    }

    section("fresh process: unknown uuid");
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(UNKNOWN, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    return t_done("test-list (child)");
}

int main(int argc, char **argv)
{
    virConnectPtr conn, nconn;
    virDomainPtr dom, other, ndom;
    virDomainBackupPtr b1, b2, b3, b, *list;
    const char *w;
    char xml[4096], node_uri[1200];
    int i;

    if (argc == 5 && strcmp(argv[1], "child") == 0)
        return child_main(argv[2], argv[3], argv[4]);

    w = workdir();
    conn = open_test_conn();
    dom = simple_domain(conn, "list-dom", "raw", 16 * MiB);
    other = simple_domain(conn, "list-other", "raw", 16 * MiB);

    /* ---------------------------------------------------------------- */
    section("no backups yet");
    list = list_expect(dom, 0, 0, "empty");
    free_list(list);
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_LATEST, 0, "empty LATEST");
    free_list(list);

    /* Three full backups in quick succession (UUIDs in descending order). */
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid></domainbackup>", U1);
    b1 = backup_wait(dom, xml);
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid></domainbackup>", U2);
    b2 = backup_wait(dom, xml);
    snprintf(xml, sizeof(xml), "<domainbackup><uuid>%s</uuid></domainbackup>", U3);
    b3 = backup_wait(dom, xml);
    if (!b1 || !b2 || !b3)
        FATAL("cannot create the backups the rest depends on");
    b = backup_wait(other, "<domainbackup/>");
    if (b)
        virDomainBackupFree(b);

    /* ---------------------------------------------------------------- */
    section("List 0: every backup, oldest first");
    list = list_expect(dom, 0, 3, "flags 0");
    if (list) {
        const char *want[] = { U1, U2, U3 };
        for (i = 0; i < 3 && list[i]; i++)
            CHECKF(strcmp(uuid_of(list[i]), want[i]) == 0,
                   "List entry %d is %s, want %s (creation order, oldest first)", i,
                   uuid_of(list[i]), want[i]);
    }
    free_list(list);

    section("List FULL / LATEST / LEAVES / INCREMENTAL");
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_FULL, 3, "FULL");
    free_list(list);
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_LATEST, 1, "LATEST");
    if (list && list[0])
        CHECKF(strcmp(uuid_of(list[0]), U3) == 0, "LATEST gave %s, want the newest %s",
               uuid_of(list[0]), U3);
    free_list(list);
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_LATEST | VIR_DOMAIN_BACKUP_LIST_FULL, 1,
                       "LATEST|FULL");
    if (list && list[0])
        CHECK(strcmp(uuid_of(list[0]), U3) == 0);
    free_list(list);
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_LEAVES, 3, "LEAVES");
    free_list(list);
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_INCREMENTAL, 0, "INCREMENTAL");
    free_list(list);
    list = list_expect(dom, VIR_DOMAIN_BACKUP_LIST_INCREMENTAL | VIR_DOMAIN_BACKUP_LIST_LATEST,
                       0, "INCREMENTAL|LATEST");
    free_list(list);
    list = list_expect(other, 0, 1, "other domain");
    free_list(list);

    section("List refusals");
    list_refused(dom, VIR_DOMAIN_BACKUP_LIST_FULL | VIR_DOMAIN_BACKUP_LIST_INCREMENTAL,
                 VIR_ERR_INVALID_ARG);
    list_refused(dom, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS, VIR_ERR_INVALID_ARG);
    list_refused(dom, 1 << 10, VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    /* Wrong kind of libvirt object. */
    EXPECT_INT_FAIL(virDomainBackupList((virDomainPtr)conn, NULL, 0), VIR_ERR_INVALID_ARG);

    /* ---------------------------------------------------------------- */
    section("List with a NULL domain: the whole catalog");
    whole_catalog(conn, dom, other);

    /* ---------------------------------------------------------------- */
    section("ListChildren");
    {
        virDomainBackupPtr *l = (virDomainBackupPtr *)&l;
        CHECK(virDomainBackupListChildren(b1, &l, 0) == 0);
        CHECK(l != NULL && l[0] == NULL);
        free_list(l == (virDomainBackupPtr *)&l ? NULL : l);
        l = NULL;
        CHECK(virDomainBackupListChildren(b1, &l, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS) == 0);
        CHECK(l != NULL && l[0] == NULL);
        free_list(l);
        CHECK(virDomainBackupListChildren(b1, NULL, 0) == 0);
        CHECK(virDomainBackupListChildren(b3, NULL, VIR_DOMAIN_BACKUP_LIST_DESCENDANTS |
                                                    VIR_DOMAIN_BACKUP_LIST_LEAVES) == 0);
        l = (virDomainBackupPtr *)&l;
        EXPECT_INT_FAIL(virDomainBackupListChildren(NULL, &l, 0), VIR_ERR_INVALID_ARG);
        CHECK(l == NULL);
        EXPECT_INT_FAIL(virDomainBackupListChildren(b1, NULL, 1 << 10), VIR_ERR_INVALID_ARG);
        EXPECT_INT_FAIL(virDomainBackupListChildren(b1, NULL, VIR_DOMAIN_BACKUP_LIST_FULL |
                                                        VIR_DOMAIN_BACKUP_LIST_INCREMENTAL),
                        VIR_ERR_INVALID_ARG);
        EXPECT_INT_FAIL(virDomainBackupListChildren((virDomainBackupPtr)dom, NULL, 0),
                        VIR_ERR_INVALID_ARG);
    }

    /* ---------------------------------------------------------------- */
    section("LookupByUUID in the same process");
    b = virDomainBackupLookupByUUID(U2, 0);
    CHECK(b != NULL);
    if (b) {
        virDomainPtr d;
        CHECK(strcmp(uuid_of(b), U2) == 0);
        d = virDomainBackupGetDomain(b);
        CHECK(d != NULL);
        if (d) {
            char u[VIR_UUID_STRING_BUFLEN];
            CHECK(virDomainGetUUIDString(d, u) == 0);
            CHECKF(strcmp(u, dom_uuid(dom)) == 0, "GetDomain gave %s, want %s", u,
                   dom_uuid(dom));
        }
        CHECK(virDomainBackupFree(b) == 0);
    }
    /* Upper case and surrounding blanks are still the same UUID. */
    b = virDomainBackupLookupByUUID("F0000000-0000-4000-8000-000000000001", 0);
    CHECKF(b != NULL, "upper-case UUID not found");
    if (b) {
        CHECK(strcmp(uuid_of(b), U1) == 0);
        virDomainBackupFree(b);
    }
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID("not-a-uuid", 0), VIR_ERR_INVALID_ARG);
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID("", 0), VIR_ERR_INVALID_ARG);
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(UNKNOWN, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(U2, 1), VIR_ERR_INVALID_ARG);
    EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(U2, 1 << 10), VIR_ERR_INVALID_ARG);

    /* ---------------------------------------------------------------- */
    section("GetDomain");
    {
        virDomainPtr d = virDomainBackupGetDomain(b1);
        CHECK(d != NULL);
        if (d) {
            char u[VIR_UUID_STRING_BUFLEN];
            CHECK(virDomainGetUUIDString(d, u) == 0 && strcmp(u, dom_uuid(dom)) == 0);
            CHECK(strcmp(virDomainGetName(d), "list-dom") == 0);
        }
        CHECK(virDomainBackupGetDomain(NULL) == NULL);
        CHECK(virDomainBackupGetLastErrorCode() == VIR_ERR_INVALID_ARG);
        CHECK(virDomainBackupGetDomain((virDomainBackupPtr)dom) == NULL);
        CHECK(virDomainBackupGetLastErrorCode() == VIR_ERR_INVALID_ARG);
    }
    /* The backup keeps its domain alive: after the caller frees its own
     * reference, the pointer from GetDomain still works. */
    {
        virDomainPtr d2 = virDomainLookupByName(conn, "list-dom");
        virDomainBackupPtr lb = virDomainBackupLookupByUUID(U3, 0);
        CHECK(d2 && lb);
        if (d2)
            virDomainFree(d2);
        if (lb) {
            virDomainPtr d = virDomainBackupGetDomain(lb);
            CHECK(d != NULL && strcmp(virDomainGetName(d), "list-dom") == 0);
            virDomainBackupFree(lb);
        }
    }

    /* ---------------------------------------------------------------- */
    section("Ref / Free");
    b = virDomainBackupLookupByUUID(U1, 0);
    CHECK(b != NULL);
    if (b) {
        CHECK(virDomainBackupRef(b) == 0);
        CHECK(virDomainBackupFree(b) == 0);
        /* Still one reference: the handle works. */
        CHECK(strcmp(uuid_of(b), U1) == 0);
        CHECK(virDomainBackupFree(b) == 0);
        /* The last reference is gone: the stale pointer is refused, not
         * used (no other handle was made since, so it cannot be reused). */
        EXPECT_INT_FAIL(virDomainBackupFree(b), VIR_ERR_INVALID_ARG);
        EXPECT_INT_FAIL(virDomainBackupRef(b), VIR_ERR_INVALID_ARG);
        EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, 0), VIR_ERR_INVALID_ARG);
    }
    EXPECT_INT_FAIL(virDomainBackupFree(NULL), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupRef(NULL), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupFree((virDomainBackupPtr)dom), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupRef((virDomainBackupPtr)conn), VIR_ERR_INVALID_ARG);
    /* List entries are independent references. */
    list = list_expect(dom, 0, 3, "refs");
    if (list && list[0]) {
        char u0[64];
        b = list[0];
        snprintf(u0, sizeof(u0), "%s", uuid_of(b));
        CHECK(virDomainBackupRef(b) == 0);
        free_list(list);
        CHECK(strcmp(uuid_of(b), u0) == 0);
        CHECK(virDomainBackupFree(b) == 0);
    } else {
        free_list(list);
    }

    /* ---------------------------------------------------------------- */
    section("handles shared between threads");
    {
        struct worker wk[4];
        for (i = 0; i < 4; i++) {
            memset(&wk[i], 0, sizeof(wk[i]));
            wk[i].dom = dom;
            wk[i].shared = b1;
            CHECK(pthread_create(&wk[i].tid, NULL, worker_body, &wk[i]) == 0);
        }
        for (i = 0; i < 4; i++) {
            CHECK(pthread_join(wk[i].tid, NULL) == 0);
            CHECKF(wk[i].errors == 0, "thread %d: %d errors, first: %s", i, wk[i].errors,
                   wk[i].first_error);
        }
        /* The shared handle kept exactly its own reference. */
        CHECK(strcmp(uuid_of(b1), U1) == 0);
    }

    /* ---------------------------------------------------------------- */
    section("lookup from a fresh process (test:///NODE.xml)");
    {
        const char *disk = WPATH("node-vda.raw");
        test_disk d = { "vda", NULL, "raw", NULL };
        char *dx;
        FILE *f;
        make_disk(disk, "raw", 16 * MiB, 0x51);
        d.path = disk;
        dx = domain_xml("list-node", NODE_DOM_UUID, &d, 1);
        f = fopen(WPATH("node.xml"), "w");
        if (!f)
            FATAL("cannot write node.xml");
        fprintf(f, "<node>%s</node>\n", dx);
        fclose(f);
        free(dx);
        snprintf(node_uri, sizeof(node_uri), "test://%s/node.xml", w);
        nconn = virConnectOpen(node_uri);
        if (!nconn)
            FATAL("virConnectOpen(%s) failed", node_uri);
        ndom = virDomainLookupByUUIDString(nconn, NODE_DOM_UUID);
        if (!ndom)
            FATAL("domain of node.xml not found");
        /* Domains of a node file start running; backups of running
         * test-driver domains are checked in test-create. Here the domain is
         * shut off in this process only (the fresh one sees it running), so
         * that the lookup is tested on its own. */
        CHECK(virDomainDestroy(ndom) == 0);
        b = backup_wait(ndom, "<domainbackup><description>node</description></domainbackup>");
        if (b) {
            char ub[64];
            snprintf(ub, sizeof(ub), "%s", uuid_of(b));
            {
                const char *args[] = { argv[0], "child", node_uri, ub, U1, NULL };
                int st = run_argv(args);
                CHECKF(st == 0, "the fresh process failed (exit status %d)", st);
            }
            virDomainBackupFree(b);
        }
        drop_domain(ndom);
        virConnectClose(nconn);
    }

    virDomainBackupFree(b1);
    virDomainBackupFree(b2);
    virDomainBackupFree(b3);
    drop_domain(dom);
    drop_domain(other);
    virConnectClose(conn);
    return t_done("test-list");
}
