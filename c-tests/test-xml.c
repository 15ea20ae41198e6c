/*
 * test-xml.c: virDomainBackupGetXMLDesc output (API.md "Output of
 * GetXMLDesc"), its use as CreateXML input, and its flags.
 */
#include "common.h"

#define BK_UUID "3a9b6c1e-5f4d-4e2a-8b7c-0d1e2f3a4b5c"

/* attr='value' or attr="value" inside @s. */
static bool has_attr(const char *s, const char *attr, const char *value)
{
    return s && (strstr(s, fmt("%s='%s'", attr, value)) || strstr(s, fmt("%s=\"%s\"", attr, value)));
}

/* The <disk ...>...</disk> element of disk @name in @xml (static copy). */
static const char *disk_element(const char *xml, const char *name)
{
    static char out[4096];
    const char *p = xml;
    out[0] = '\0';
    while (p && (p = strstr(p, "<disk "))) {
        const char *end = strstr(p, "</disk>");
        const char *gt = strchr(p, '>');
        if (!gt)
            break;
        if (gt[-1] == '/')
            end = gt + 1;
        else if (end)
            end += strlen("</disk>");
        else
            break;
        snprintf(out, sizeof(out), "%.*s", (int)(end - p), p);
        {
            /* Only the start tag's attributes decide. */
            char start[1024];
            snprintf(start, sizeof(start), "%.*s", (int)(gt - p + 1), p);
            if (has_attr(start, "name", name))
                return out;
        }
        p = end;
    }
    out[0] = '\0';
    return out;
}

/* Remove the first <tag>...</tag> from @xml (in place). */
static void drop_element(char *xml, const char *tag)
{
    char o[64], c[64];
    char *s, *e;
    snprintf(o, sizeof(o), "<%s>", tag);
    snprintf(c, sizeof(c), "</%s>", tag);
    if (!(s = strstr(xml, o)) || !(e = strstr(s, c)))
        return;
    e += strlen(c);
    memmove(s, e, strlen(e) + 1);
}

/* Replace every @from by @to in @xml (malloc'd result). */
static char *replace_all(const char *xml, const char *from, const char *to)
{
    size_t cap = strlen(xml) * 2 + 1024, n = 0;
    char *out = malloc(cap);
    const char *p = xml, *q;
    while ((q = strstr(p, from))) {
        memcpy(out + n, p, (size_t)(q - p));
        n += (size_t)(q - p);
        memcpy(out + n, to, strlen(to));
        n += strlen(to);
        p = q + strlen(from);
    }
    strcpy(out + n, p);
    return out;
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    const char *w = workdir();
    char vda[1024], vdb[1024], o_vda[1024], o_vdb[1024], xml[4096], duuid[64];
    virDomainPtr dom, other;
    virDomainBackupPtr b;
    char *x, *xs;
    long long t0, t1;

    snprintf(vda, sizeof(vda), "%s/xml-vda.raw", w);
    snprintf(vdb, sizeof(vdb), "%s/xml-vdb.qcow2", w);
    make_disk(vda, "raw", 16 * MiB, 0x21);
    make_disk(vdb, "qcow2", 16 * MiB, 0x31);
    {
        test_disk d[] = { { "vda", vda, "raw", NULL }, { "vdb", vdb, "qcow2", NULL } };
        dom = define_domain(conn, "xml-dom", d, 2);
    }
    snprintf(o_vda, sizeof(o_vda), "%s/other-vda.raw", w);
    snprintf(o_vdb, sizeof(o_vdb), "%s/other-vdb.qcow2", w);
    make_disk(o_vda, "raw", 16 * MiB, 0x71);
    make_disk(o_vdb, "qcow2", 16 * MiB, 0x72);
    {
        test_disk d[] = { { "vda", o_vda, "raw", NULL }, { "vdb", o_vdb, "qcow2", NULL } };
        other = define_domain(conn, "xml-other", d, 2);
    }
    snprintf(duuid, sizeof(duuid), "%s", dom_uuid(dom));

    section("GetXMLDesc of a completed full backup");
    snprintf(xml, sizeof(xml),
             "<domainbackup><uuid>" BK_UUID "</uuid>"
             "<description>nightly &lt;full&gt; &amp; more</description><disks>"
             "<disk name='vda'><target file='%s/bk-vda.qcow2'/></disk>"
             "<disk name='vdb'><target file='%s/bk-vdb.raw'/><driver type='raw'/></disk>"
             "</disks></domainbackup>", w, w);
    t0 = (long long)time(NULL);
    b = backup_wait(dom, xml);
    t1 = (long long)time(NULL);
    if (!b)
        FATAL("cannot create the backup the rest depends on");
    x = virDomainBackupGetXMLDesc(b, 0);
    REQUIRE(x != NULL);
    printf("%s\n", x);
    CHECKF(strncmp(x, "<domainbackup", 13) == 0, "does not start with <domainbackup>");
    CHECKF(strstr(x, "</domainbackup>"), "no </domainbackup>");
    CHECK(strcmp(xml_text(x, "uuid"), BK_UUID) == 0);
    {
        const char *ct = xml_text(x, "creationTime");
        long long v = atoll(ct);
        CHECKF(*ct && v >= t0 - 1 && v <= t1 + 1,
               "creationTime '%s' is not the creation time (%lld..%lld)", ct, t0, t1);
    }
    {
        const char *d = xml_text(x, "description");
        CHECKF(strstr(d, "nightly ") && strstr(d, "&lt;full") && strstr(d, "&amp; more"),
               "description not kept (escaped): '%s'", d);
    }
    CHECK(strcmp(xml_text(x, "state"), "completed") == 0);
    CHECKF(!strstr(x, "<parent>"), "a full backup has a <parent>");
    {
        const char *de = strstr(x, "<domain ");
        CHECKF(de && has_attr(de, "uuid", duuid) && has_attr(de, "name", "xml-dom"),
               "no <domain uuid='%s' name='xml-dom'/>", duuid);
    }
    {
        const char *d = disk_element(x, "vda");
        CHECKF(*d, "no <disk name='vda'>");
        CHECKF(has_attr(d, "type", "file"), "vda: no type='file': %s", d);
        CHECKF(has_attr(d, "backupmode", "full"), "vda: no backupmode='full': %s", d);
        CHECKF(strstr(d, "<source ") && has_attr(strstr(d, "<source "), "file", vda),
               "vda: no <source file='%s'/>: %s", vda, d);
        CHECKF(strstr(d, "<target ") &&
                   has_attr(strstr(d, "<target "), "file", WPATH("bk-vda.qcow2")),
               "vda: wrong <target>: %s", d);
        CHECKF(strstr(d, "<driver ") && has_attr(strstr(d, "<driver "), "type", "qcow2"),
               "vda: no <driver type='qcow2'/>: %s", d);
        d = disk_element(x, "vdb");
        CHECKF(*d, "no <disk name='vdb'>");
        CHECKF(has_attr(d, "backupmode", "full"), "vdb: no backupmode='full': %s", d);
        CHECKF(strstr(d, "<source ") && has_attr(strstr(d, "<source "), "file", vdb),
               "vdb: no <source file='%s'/>: %s", vdb, d);
        CHECKF(strstr(d, "<target ") &&
                   has_attr(strstr(d, "<target "), "file", WPATH("bk-vdb.raw")),
               "vdb: wrong <target>: %s", d);
        CHECKF(strstr(d, "<driver ") && has_attr(strstr(d, "<driver "), "type", "raw"),
               "vdb: no <driver type='raw'/>: %s", d);
    }
    /* Stable: asking twice gives the same document. */
    {
        char *again = virDomainBackupGetXMLDesc(b, 0);
        CHECK(again && strcmp(again, x) == 0);
        free(again);
    }

    section("a listed handle describes the same backup");
    {
        virDomainBackupPtr *list = NULL;
        CHECK(virDomainBackupList(dom, &list, 0) == 1);
        if (list && list[0]) {
            char *lx = virDomainBackupGetXMLDesc(list[0], 0);
            CHECKF(lx && strcmp(lx, x) == 0, "listed handle XML differs:\n%s\n---\n%s",
                   lx ? lx : "(null)", x);
            free(lx);
        }
        free_list(list);
    }

    section("VIR_DOMAIN_XML_SECURE accepted, other flags refused");
    xs = virDomainBackupGetXMLDesc(b, VIR_DOMAIN_XML_SECURE);
    CHECK(xs != NULL);
    CHECKF(xs && strcmp(xml_text(xs, "uuid"), BK_UUID) == 0, "SECURE output: %s",
           xs ? xs : "(null)");
    free(xs);
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, VIR_DOMAIN_XML_INACTIVE), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, VIR_DOMAIN_XML_UPDATE_CPU), VIR_ERR_INVALID_ARG);
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc(b, 1 << 10), VIR_ERR_INVALID_ARG);
    EXPECT_STR_FAIL(virDomainBackupGetXMLDesc((virDomainBackupPtr)NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_STR_FAIL(virDomainBackupObjGetXMLDesc(NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_STR_FAIL(virDomainBackupObjGetXMLDesc((virDomainBackupPtr)dom, 0),
                    VIR_ERR_INVALID_ARG);

    section("the output parses back as CreateXML input");
    {
        /* As is, for another domain with the same disk names: it parses;
         * only its targets (and UUID) are taken. */
        char *before = state_snapshot();
        EXPECT_BACKUP_FAIL(virDomainBackupCreateXML(other, x, 0), VIR_ERR_INVALID_ARG);
        CHECKF(virDomainBackupGetLastErrorCode() != VIR_ERR_XML_ERROR,
               "the output of GetXMLDesc is not valid input");
        EXPECT_UNCHANGED(before);
        before = state_snapshot();
        EXPECT_BACKUP_FAIL(virDomainBackupCreateXML(dom, x, VIR_DOMAIN_BACKUP_CREATE_WAIT),
                           VIR_ERR_INVALID_ARG);
        EXPECT_UNCHANGED(before);
    }
    {
        /* With new targets and without the UUID it is a working request. */
        char *rt = replace_all(x, "/bk-vd", "/rt-vd");
        virDomainBackupPtr b2;
        drop_element(rt, "uuid");
        b2 = virDomainBackupCreateXML(other, rt, VIR_DOMAIN_BACKUP_CREATE_WAIT);
        CHECKF(b2 != NULL, "GetXMLDesc output with new targets refused: %s\n%s",
               virDomainBackupGetLastErrorMessage(), rt);
        if (b2) {
            char *x2 = virDomainBackupGetXMLDesc(b2, 0);
            CHECK(images_equal(o_vda, "raw", WPATH("rt-vda.qcow2"), "qcow2"));
            CHECK(images_equal(o_vdb, "qcow2", WPATH("rt-vdb.raw"), "raw"));
            CHECKF(x2 && strstr(x2, "nightly "), "description not taken from the input");
            CHECKF(x2 && strstr(x2, "<domain ") &&
                       has_attr(strstr(x2, "<domain "), "name", "xml-other"),
                   "backup of xml-other names another domain: %s", x2 ? x2 : "(null)");
            CHECKF(x2 && strcmp(xml_text(x2, "uuid"), BK_UUID) != 0, "UUID reused");
            free(x2);
            virDomainBackupFree(b2);
        }
        free(rt);
    }

    free(x);
    virDomainBackupFree(b);
    drop_domain(dom);
    drop_domain(other);
    virConnectClose(conn);
    return t_done("test-xml");
}
