/*
 * test-errors.c: the thread-local last error. virDomainBackupGetLastError
 * (a filled virError after a failure, NULL after a success),
 * virDomainBackupGetLastErrorMessage / Code, virDomainBackupResetLastError,
 * every call resetting the previous error, errors of libvirt calls carried
 * over, and per-thread errors.
 */
#include "common.h"

#include <pthread.h>

#define UNKNOWN "0badc0de-0000-4000-8000-00000000beef"

/* Check the whole virError after a failure with @code. */
static void check_filled(int code, const char *file, int line)
{
    virErrorPtr e = virDomainBackupGetLastError();
    t_checks++;
    if (!e) {
        t_fail(file, line, "virDomainBackupGetLastError() is NULL after a failure");
        return;
    }
    if (e->code != code)
        t_fail(file, line, "code %d, want %d", e->code, code);
    if (e->code != virDomainBackupGetLastErrorCode())
        t_fail(file, line, "GetLastError()->code %d but GetLastErrorCode() %d", e->code,
               virDomainBackupGetLastErrorCode());
    if (e->domain == VIR_FROM_NONE)
        t_fail(file, line, "error domain is VIR_FROM_NONE");
    if (e->level != VIR_ERR_ERROR)
        t_fail(file, line, "level %d, want VIR_ERR_ERROR", e->level);
    if (!e->message || !*e->message)
        t_fail(file, line, "no message");
    else if (strcmp(e->message, virDomainBackupGetLastErrorMessage()) != 0)
        t_fail(file, line, "message '%s' but GetLastErrorMessage() '%s'", e->message,
               virDomainBackupGetLastErrorMessage());
}
#define CHECK_FILLED(code) check_filled((code), __FILE__, __LINE__)

static void check_clear(const char *file, int line)
{
    const char *m = virDomainBackupGetLastErrorMessage();
    t_checks++;
    if (virDomainBackupGetLastError() != NULL)
        t_fail(file, line, "GetLastError() is not NULL: %s", m);
    if (virDomainBackupGetLastErrorCode() != VIR_ERR_OK)
        t_fail(file, line, "GetLastErrorCode() is %d", virDomainBackupGetLastErrorCode());
    if (!m || strcmp(m, "no error") != 0)
        t_fail(file, line, "GetLastErrorMessage() is '%s', want 'no error'", m ? m : "(null)");
}
#define CHECK_CLEAR() check_clear(__FILE__, __LINE__)

struct thread_result {
    bool clear_at_start;
    int code_after;
    bool main_error_unseen;
};

static void *thread_body(void *arg)
{
    struct thread_result *r = arg;
    virDomainBackupPtr b;
    r->clear_at_start = virDomainBackupGetLastError() == NULL &&
                        virDomainBackupGetLastErrorCode() == VIR_ERR_OK;
    b = virDomainBackupLookupByUUID(UNKNOWN, 0);
    if (b)
        virDomainBackupFree(b);
    r->code_after = virDomainBackupGetLastErrorCode();
    r->main_error_unseen = r->code_after != VIR_ERR_INVALID_ARG;
    return NULL;
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    virDomainPtr dom;
    virDomainBackupPtr b;
    virErrorPtr e;

    dom = simple_domain(conn, "err-dom", "raw", 16 * MiB);

    section("no error at the start");
    CHECK_CLEAR();

    section("a failure fills the virError");
    CHECK(virDomainBackupLookupByUUID("not-a-uuid", 0) == NULL);
    CHECK_FILLED(VIR_ERR_INVALID_ARG);
    /* Reading the error does not reset it, and the pointer stays valid. */
    e = virDomainBackupGetLastError();
    CHECK(virDomainBackupGetLastErrorCode() == VIR_ERR_INVALID_ARG);
    CHECK(virDomainBackupGetLastError() == e);
    CHECK(e && e->code == VIR_ERR_INVALID_ARG && e->message &&
          strcmp(e->message, virDomainBackupGetLastErrorMessage()) == 0);

    section("a success clears it");
    CHECK(virDomainBackupList(dom, NULL, 0) == 0);
    CHECK_CLEAR();

    section("each call resets the previous error");
    CHECK(virDomainBackupLookupByUUID("not-a-uuid", 0) == NULL);
    CHECK_FILLED(VIR_ERR_INVALID_ARG);
    CHECK(virDomainBackupLookupByUUID(UNKNOWN, 0) == NULL);
    CHECK_FILLED(VIR_ERR_NO_DOMAIN_BACKUP);
    CHECK(virDomainBackupCreateXML(dom, "<domainbackup>", 0) == NULL);
    CHECK_FILLED(VIR_ERR_XML_ERROR);
    b = backup_wait(dom, "<domainbackup/>");
    CHECK(b != NULL);
    CHECK_CLEAR();
    if (b) {
        char *x;
        CHECK(virDomainBackupAbortJob(b, 0) == -1);
        CHECK_FILLED(VIR_ERR_OPERATION_INVALID);
        x = virDomainBackupGetXMLDesc(b, 0);
        CHECK(x != NULL);
        CHECK_CLEAR();
        free(x);
        CHECK(virDomainBackupGetXMLDesc(b, 1 << 10) == NULL);
        CHECK_FILLED(VIR_ERR_INVALID_ARG);
        CHECK(virDomainBackupRef(b) == 0);
        CHECK_CLEAR();
        CHECK(virDomainBackupFree(NULL) == -1);
        CHECK_FILLED(VIR_ERR_INVALID_ARG);
        CHECK(virDomainBackupFree(b) == 0);
        CHECK_CLEAR();
        CHECK(virDomainBackupRestore("<domainbackup><uuid>" UNKNOWN "</uuid></domainbackup>", 0) ==
              -1);
        CHECK_FILLED(VIR_ERR_NO_DOMAIN_BACKUP);
        CHECK(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 0);
        CHECK_CLEAR();
        CHECK(virDomainBackupRestore("<domainbackup/>", 0) == -1);
        CHECK_FILLED(VIR_ERR_XML_ERROR);
        CHECK(virDomainBackupFree(b) == 0);
        CHECK_CLEAR();
    }

    section("ResetLastError clears it");
    CHECK(virDomainBackupLookupByUUID(UNKNOWN, 0) == NULL);
    CHECK_FILLED(VIR_ERR_NO_DOMAIN_BACKUP);
    virDomainBackupResetLastError();
    CHECK_CLEAR();
    virDomainBackupResetLastError();
    CHECK_CLEAR();

    section("a failed libvirt call inside: its code and message are carried over");
    {
        virDomainPtr plain = simple_domain(conn, "err-plain", "raw", 16 * MiB);
        virError lv;
        memset(&lv, 0, sizeof(lv));
        /* What libvirt itself says: (name) is not expanded by the header's
         * function-like macro, so this is libvirt's virDomainUndefineFlags. */
        virResetLastError();
        CHECK((virDomainUndefineFlags)(plain, 1U << 20) == -1);
        CHECK(virCopyLastError(&lv) > 0 || lv.code != 0);
        /* The same through the library. */
        CHECK(virDomainBackupUndefineFlags(plain, 1U << 20) == -1);
        CHECK_FILLED(lv.code);
        e = virDomainBackupGetLastError();
        if (e) {
            CHECKF(e->code == lv.code, "code %d, libvirt's %d", e->code, lv.code);
            CHECKF(e->domain == lv.domain, "domain %d, libvirt's %d", e->domain, lv.domain);
            CHECKF(lv.message && e->message && strcmp(e->message, lv.message) == 0,
                   "message '%s', libvirt's '%s'", e->message, lv.message);
        }
        virResetError(&lv);
        CHECK(virDomainUndefineFlags(plain, 0) == 0);
        virDomainFree(plain);
    }

    section("argument errors print nothing");
    {
        /* stderr to a file around calls that fail in the library itself. */
        char path[1024];
        int saved, fd;
        snprintf(path, sizeof(path), "%s/stderr.txt", workdir());
        fflush(stderr);
        saved = dup(2);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        REQUIRE(saved >= 0 && fd >= 0);
        dup2(fd, 2);
        close(fd);
        b = virDomainBackupCreateXML(NULL, "<domainbackup/>", 0);
        b = b ? b : virDomainBackupCreateXML(dom, "<domainbackup", 0);
        b = b ? b : virDomainBackupCreateXML(dom, "<domainbackup/>", 1 << 10);
        b = b ? b : virDomainBackupLookupByUUID(UNKNOWN, 0);
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        CHECK(b == NULL);
        CHECKF(file_size(path) == 0, "the library printed %lld bytes to stderr",
               file_size(path));
    }

    section("the last error is per thread");
    {
        pthread_t t;
        struct thread_result r = { false, -1, false };
        CHECK(virDomainBackupLookupByUUID("not-a-uuid", 0) == NULL);
        CHECK_FILLED(VIR_ERR_INVALID_ARG);
        CHECK(pthread_create(&t, NULL, thread_body, &r) == 0);
        CHECK(pthread_join(t, NULL) == 0);
        CHECKF(r.clear_at_start, "a new thread sees another thread's error");
        CHECKF(r.code_after == VIR_ERR_NO_DOMAIN_BACKUP, "thread's own error: %d", r.code_after);
        /* The main thread still has its own. */
        CHECK_FILLED(VIR_ERR_INVALID_ARG);
    }

    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-errors");
}
