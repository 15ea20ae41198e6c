/*
 * test-accessors.c: virDomainBackupGetUUID, virDomainBackupGetUUIDString and
 * virDomainBackupGetParent on test:///default.
 *
 * A full backup and two incremental ones on top of each other: the UUID
 * string is the XML's <uuid> and the raw UUID its 16 bytes; GetParent of an
 * incremental is a new handle on its parent (same UUID), GetParent of the
 * full fails with VIR_ERR_NO_DOMAIN_BACKUP. Deleting the middle backup
 * re-parents its child onto the full one, and the handle GetParent gave on
 * it then answers VIR_ERR_NO_DOMAIN_BACKUP. NULL pointers, freed handles
 * and unknown flags give VIR_ERR_INVALID_ARG with libvirt's messages, the
 * handle checked before the flags. valgrind (run.sh) checks that every
 * handle GetParent returns is released by virDomainBackupFree.
 */
#include "common.h"

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The 16 bytes of a UUID string (hyphens skipped); false if malformed. */
static bool parse_uuid(const char *s, unsigned char out[VIR_UUID_BUFLEN])
{
    int n = 0;
    for (; *s && n < 2 * VIR_UUID_BUFLEN; s++) {
        int d;
        if (*s == '-')
            continue;
        if ((d = hex_digit(*s)) < 0)
            return false;
        if (n % 2 == 0)
            out[n / 2] = (unsigned char)(d << 4);
        else
            out[n / 2] |= (unsigned char)d;
        n++;
    }
    return n == 2 * VIR_UUID_BUFLEN && *s == '\0';
}

/* GetUUIDString and GetUUID of @b agree with the <uuid> of its XML. */
static void check_uuid_of(virDomainBackupPtr b, const char *what)
{
    char buf[VIR_UUID_STRING_BUFLEN];
    unsigned char raw[VIR_UUID_BUFLEN], want[VIR_UUID_BUFLEN];
    char xml_uuid[64];

    snprintf(xml_uuid, sizeof(xml_uuid), "%s", backup_uuid(b));
    memset(buf, 'x', sizeof(buf));
    CHECK(virDomainBackupGetUUIDString(b, buf) == 0);
    CHECKF(virDomainBackupGetLastErrorCode() == VIR_ERR_OK, "%s: error left after success", what);
    CHECKF(memchr(buf, '\0', sizeof(buf)) == buf + VIR_UUID_STRING_BUFLEN - 1,
           "%s: the string is not %d characters and its NUL", what, VIR_UUID_STRING_BUFLEN - 1);
    CHECKF(strcmp(buf, xml_uuid) == 0, "%s: GetUUIDString '%s', XML <uuid> '%s'", what, buf,
           xml_uuid);

    memset(raw, 0, sizeof(raw));
    CHECK(virDomainBackupGetUUID(b, raw) == 0);
    CHECKF(parse_uuid(xml_uuid, want), "%s: XML <uuid> '%s' does not parse", what, xml_uuid);
    CHECKF(memcmp(raw, want, VIR_UUID_BUFLEN) == 0, "%s: GetUUID bytes differ from '%s'", what,
           xml_uuid);
}

/* GetParent(@b) must give a new handle on the backup @want_uuid. */
static void expect_parent(virDomainBackupPtr b, const char *want_uuid, const char *what)
{
    char buf[VIR_UUID_STRING_BUFLEN] = "";
    virDomainBackupPtr p = virDomainBackupGetParent(b, 0);
    if (!CHECKF(p != NULL, "%s: GetParent failed: %s", what, virDomainBackupGetLastErrorMessage()))
        return;
    CHECKF(p != b, "%s: GetParent returned the child's own handle", what);
    CHECK(virDomainBackupGetUUIDString(p, buf) == 0);
    CHECKF(strcmp(buf, want_uuid) == 0, "%s: parent is '%s', want '%s'", what, buf, want_uuid);
    CHECKF(strcmp(backup_uuid(p), want_uuid) == 0, "%s: parent's XML <uuid> is '%s'", what,
           backup_uuid(p));
    CHECK(virDomainBackupFree(p) == 0);
    /* The one reference is gone: the handle is refused from now on. */
    EXPECT_INT_FAIL(virDomainBackupGetUUIDString(p, buf), VIR_ERR_INVALID_ARG);
}

static void check_errors(virDomainBackupPtr full, virDomainBackupPtr inc)
{
    char buf[VIR_UUID_STRING_BUFLEN];
    unsigned char raw[VIR_UUID_BUFLEN];

    section("NULL and invalid arguments");
    EXPECT_INT_FAIL(virDomainBackupGetUUID(NULL, raw), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("backup in virDomainBackupGetUUID must be a valid virDomainBackupPtr");
    EXPECT_INT_FAIL(virDomainBackupGetUUID(full, NULL), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("uuid in virDomainBackupGetUUID must not be NULL");
    EXPECT_INT_FAIL(virDomainBackupGetUUIDString(NULL, buf), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("backup in virDomainBackupGetUUIDString");
    EXPECT_INT_FAIL(virDomainBackupGetUUIDString(full, NULL), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("buf in virDomainBackupGetUUIDString must not be NULL");
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("backup in virDomainBackupGetParent must be a valid virDomainBackupPtr");
    /* Something that is not one of our handles at all. */
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent((virDomainBackupPtr)buf, 0),
                       VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupGetUUID((virDomainBackupPtr)raw, raw), VIR_ERR_INVALID_ARG);

    section("flags");
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(inc, 1), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags (0x1) in function virDomainBackupGetParent");
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(inc, 1u << 31), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags (0x80000000) in function virDomainBackupGetParent");
    /* Bad flags on a full backup: the flags are refused before the lookup. */
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(full, 4), VIR_ERR_INVALID_ARG);
    /* The handle is checked before the flags. */
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(NULL, 1), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("backup in virDomainBackupGetParent");

    section("the last error is reset by a call that succeeds");
    EXPECT_INT_FAIL(virDomainBackupGetUUID(NULL, raw), VIR_ERR_INVALID_ARG);
    CHECK(virDomainBackupGetUUID(full, raw) == 0);
    CHECK(virDomainBackupGetLastErrorCode() == VIR_ERR_OK);
    CHECK(virDomainBackupGetLastError() == NULL);
}

/* Delete the middle backup through the handle GetParent gave on it. */
static void check_deleted_parent(virDomainBackupPtr inc2, const char *full_uuid,
                                 const char *inc_uuid)
{
    char buf[VIR_UUID_STRING_BUFLEN];
    unsigned char raw[VIR_UUID_BUFLEN];
    virDomainBackupPtr mid;

    section("a deleted parent");
    mid = virDomainBackupGetParent(inc2, 0);
    REQUIRE(mid != NULL);
    CHECK(virDomainBackupGetUUIDString(mid, buf) == 0 && strcmp(buf, inc_uuid) == 0);
    /* Its child is merged into the full one's delta and re-parented. */
    CHECK(virDomainBackupDelete(mid, 0) == 0);
    EXPECT_INT_FAIL(virDomainBackupGetUUID(mid, raw), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_INT_FAIL(virDomainBackupGetUUIDString(mid, buf), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(mid, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(virDomainBackupFree(mid) == 0);
    expect_parent(inc2, full_uuid, "the child of the deleted backup");
    check_uuid_of(inc2, "the re-parented child");
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    virDomainPtr dom = simple_domain(conn, "accessors", "raw", 16 * MiB);
    virDomainBackupPtr full, inc, inc2, again;
    char full_uuid[64], inc_uuid[64];

    section("a full and two incremental backups");
    full = backup_wait(dom, vda_child_xml("full", NULL, NULL, NULL));
    REQUIRE(full != NULL);
    snprintf(full_uuid, sizeof(full_uuid), "%s", backup_uuid(full));
    write_data(WPATH("accessors-vda.raw"), "raw", 2 * MiB, 64 * 1024, 0x5c);
    inc = backup_wait(dom, vda_child_xml("inc", full_uuid, NULL, NULL));
    REQUIRE(inc != NULL);
    snprintf(inc_uuid, sizeof(inc_uuid), "%s", backup_uuid(inc));
    inc2 = backup_wait(dom, vda_child_xml("inc2", inc_uuid, NULL, NULL));
    REQUIRE(inc2 != NULL);

    section("UUIDs");
    check_uuid_of(full, "full");
    check_uuid_of(inc, "incremental");
    check_uuid_of(inc2, "second incremental");
    /* A handle from a lookup answers the same. */
    again = virDomainBackupLookupByUUID(inc_uuid, 0);
    REQUIRE(again != NULL);
    check_uuid_of(again, "looked-up incremental");

    section("parents");
    expect_parent(inc, full_uuid, "incremental");
    expect_parent(again, full_uuid, "looked-up incremental");
    expect_parent(inc2, inc_uuid, "second incremental");
    EXPECT_BACKUP_FAIL(virDomainBackupGetParent(full, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    EXPECT_MSG_CONTAINS("does not have a parent");
    CHECK(virDomainBackupFree(again) == 0);

    check_errors(full, inc);
    check_deleted_parent(inc2, full_uuid, inc_uuid);

    CHECK(virDomainBackupFree(inc2) == 0);
    CHECK(virDomainBackupFree(inc) == 0);
    CHECK(virDomainBackupFree(full) == 0);
    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-accessors");
}
