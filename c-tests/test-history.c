/*
 * test-history.c: virDomainBackupGetJobHistory.
 *
 * A backup that completes, a create refused (unknown disk), a verify and a
 * delete each leave one <job> in the catalog's history, oldest first, with
 * its kind, state, domain, backup, times, bytes, host, pid and, for the
 * failure, the error code and message; VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED
 * keeps only the failure; a NULL domain gives every domain's jobs, another
 * domain only its own. Errors: unknown flags, a bad domain pointer.
 */
#include "common.h"

/* The number of occurrences of @needle in @s. */
static int count_of(const char *s, const char *needle)
{
    int n = 0;
    while (s && (s = strstr(s, needle))) {
        n++;
        s += strlen(needle);
    }
    return n;
}

/* The @i-th (from 0) <job ...>...</job> of @xml, in a static buffer. */
static const char *job_at(const char *xml, int i)
{
    static char out[4096];
    const char *s = xml, *e;
    out[0] = '\0';
    while (s && (s = strstr(s, "<job ")) && i-- > 0)
        s += 5;
    if (!s || !(e = strstr(s, "</job>")))
        return out;
    snprintf(out, sizeof(out), "%.*s", (int)(e - s + 6), s);
    return out;
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    virDomainPtr dom = simple_domain(conn, "hist-dom", "raw", 8 * MiB);
    virDomainPtr other = simple_domain(conn, "hist-other", "raw", 4 * MiB);
    virDomainBackupPtr b;
    char *x, u[64], host[256], pid[32];
    const char *j;

    gethostname(host, sizeof(host));
    snprintf(pid, sizeof(pid), "<pid>%d</pid>", (int)getpid());

    section("an empty history");
    x = virDomainBackupGetJobHistory(dom, 0);
    CHECKF(x && strstr(x, "<jobhistory") && !strstr(x, "<job "), "%s", x ? x : "");
    free(x);

    section("a completed backup, a refused create, a verify, a delete");
    b = backup_wait(dom, "<domainbackup/>");
    REQUIRE(b);
    snprintf(u, sizeof(u), "%s", backup_uuid(b));
    EXPECT_BACKUP_FAIL(virDomainBackupCreateXML(dom,
                                                "<domainbackup><disks><disk name='vdz'/>"
                                                "</disks></domainbackup>", 0),
                       VIR_ERR_INVALID_ARG);
    CHECK(virDomainBackupVerify(b, 0) == 0);
    CHECK(virDomainBackupDelete(b, 0) == 0);
    CHECK(virDomainBackupFree(b) == 0);
    b = backup_wait(other, "<domainbackup/>");
    CHECK(b && virDomainBackupFree(b) == 0);

    x = virDomainBackupGetJobHistory(dom, 0);
    REQUIRE(x);
    CHECKF(count_of(x, "<job ") == 4, "4 jobs of the domain: %s", x);
    j = job_at(x, 0);
    CHECKF(strstr(j, "kind='create'") && strstr(j, "state='completed'"), "first: %s", j);
    CHECKF(strstr(j, fmt("<domain uuid='%s' name='hist-dom'/>", dom_uuid(dom))), "%s", j);
    CHECKF(strstr(j, fmt("<backup uuid='%s'/>", u)), "%s", j);
    CHECKF(strstr(j, "<start>") && strstr(j, "<end>") && strstr(j, "<bytes>8388608</bytes>")
           && strstr(j, "<written>"), "%s", j);
    CHECKF(strstr(j, fmt("<host>%s</host>", host)) && strstr(j, pid), "%s", j);
    CHECKF(!strstr(j, "<error"), "%s", j);
    j = job_at(x, 1);
    CHECKF(strstr(j, "kind='create'") && strstr(j, "state='failed'"), "second: %s", j);
    CHECKF(strstr(j, "<error code='8'>") && strstr(j, "vdz"), "%s", j);
    CHECKF(!strstr(j, "<backup "), "%s", j);
    j = job_at(x, 2);
    CHECKF(strstr(j, "kind='verify'") && strstr(j, "state='completed'")
           && strstr(j, fmt("<backup uuid='%s'/>", u)) && strstr(j, "<bytes>"), "third: %s", j);
    j = job_at(x, 3);
    CHECKF(strstr(j, "kind='delete'") && strstr(j, "state='completed'")
           && strstr(j, fmt("<backup uuid='%s'/>", u)), "fourth: %s", j);
    CHECKF(!strstr(x, "hist-other"), "another domain's job: %s", x);
    free(x);

    section("only failures");
    x = virDomainBackupGetJobHistory(dom, VIR_DOMAIN_BACKUP_JOB_HISTORY_FAILED);
    CHECKF(x && count_of(x, "<job ") == 1 && strstr(x, "state='failed'"), "%s", x ? x : "");
    free(x);

    section("every domain");
    x = virDomainBackupGetJobHistory(NULL, 0);
    CHECKF(x && count_of(x, "<job ") == 5 && strstr(job_at(x, 4), "hist-other"), "%s",
           x ? x : "");
    free(x);

    section("errors");
    EXPECT_STR_FAIL(virDomainBackupGetJobHistory(dom, 1u << 5), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags (0x20) in function virDomainBackupGetJobHistory");
    EXPECT_STR_FAIL(virDomainBackupGetJobHistory((virDomainPtr)conn, 0), VIR_ERR_INVALID_ARG);

    drop_domain(dom);
    drop_domain(other);
    virConnectClose(conn);
    return t_done("test-history");
}
