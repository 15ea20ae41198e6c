/*
 * test-verify.c: virDomainBackupVerify.
 *
 * A full backup into a raw target (guest offset = file offset) verifies;
 * one flipped byte is reported with the disk and the guest offset of its
 * 64 KiB chunk, and so is the same byte read through an incremental
 * child's chain; mended, both verify again. Errors: flags, NULL handle, a
 * deleted backup. While Verify runs, another thread sees
 * "verify.bytes.total"/"verify.bytes.processed" grow, and AbortJob from
 * another thread stops it with VIR_ERR_OPERATION_ABORTED.
 */
#include "common.h"

#include <pthread.h>

static void flip_byte(const char *path, long long offset)
{
    unsigned char c;
    int fd = open(path, O_RDWR);
    if (fd < 0 || pread(fd, &c, 1, offset) != 1)
        FATAL("cannot read %s", path);
    c ^= 0xff;
    if (pwrite(fd, &c, 1, offset) != 1)
        FATAL("cannot write %s", path);
    close(fd);
}

/* The verify.bytes.* of @b; false when no verification runs. No CHECKs:
 * called from a second thread. */
static bool verify_progress(virDomainBackupPtr b, unsigned long long *total,
                            unsigned long long *done)
{
    virTypedParameter p[16];
    int n = 16;
    virTypedParameterPtr t, d;
    bool ok;
    if (virDomainBackupGetParameters(b, p, &n, 0) < 0)
        return false;
    t = virTypedParamsGet(p, n, "verify.bytes.total");
    d = virTypedParamsGet(p, n, "verify.bytes.processed");
    ok = t && d && t->type == VIR_TYPED_PARAM_ULLONG && d->type == VIR_TYPED_PARAM_ULLONG;
    if (ok) {
        *total = t->value.ul;
        *done = d->value.ul;
    }
    virTypedParamsClear(p, n);
    return ok;
}

typedef struct {
    virDomainBackupPtr b;
    int rc;
    int code;
    char msg[512];
} verify_run;

static void *verify_thread(void *arg)
{
    verify_run *r = arg;
    const char *m;
    r->rc = virDomainBackupVerify(r->b, 0);
    r->code = virDomainBackupGetLastErrorCode();
    m = virDomainBackupGetLastErrorMessage();
    snprintf(r->msg, sizeof(r->msg), "%s", m ? m : "");
    return NULL;
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    const long long size = 64 * MiB;
    virDomainPtr dom = simple_domain(conn, "verify", "raw", size);
    const char *disk = WPATH("verify-vda.raw");
    char full_t[1024], inc_t[1024], full_uuid[64];
    virDomainBackupPtr full, inc, big;
    verify_run r;
    pthread_t th;
    unsigned long long total = 0, done = 0, first = 0, last = 0;
    int seen = 0, i;

    section("a sound backup verifies");
    snprintf(full_t, sizeof(full_t), "%s", WPATH("full.raw"));
    full = backup_wait(dom, vda_backup_xml(full_t, "raw"));
    REQUIRE(full);
    snprintf(full_uuid, sizeof(full_uuid), "%s", backup_uuid(full));
    CHECK(virDomainBackupVerify(full, 0) == 0);
    CHECK(!verify_progress(full, &total, &done)); /* only while it runs */

    section("a flipped byte is found, with its disk and chunk offset");
    flip_byte(full_t, 5 * MiB + 12345);
    EXPECT_INT_FAIL(virDomainBackupVerify(full, 0), VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("disk 'vda'");
    EXPECT_MSG_CONTAINS("offset 5242880 ");

    section("... and through an incremental child's chain");
    write_data(disk, "raw", 20 * MiB, 1 * MiB, 0x66);
    snprintf(inc_t, sizeof(inc_t), "%s", WPATH("inc.qcow2"));
    /* The incremental is made against the parent's index, not its data. */
    inc = backup_wait(dom, vda_child_xml("inc", full_uuid, inc_t, NULL));
    REQUIRE(inc);
    EXPECT_INT_FAIL(virDomainBackupVerify(inc, 0), VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("offset 5242880 ");
    flip_byte(full_t, 5 * MiB + 12345);
    CHECK(virDomainBackupVerify(full, 0) == 0);
    CHECK(virDomainBackupVerify(inc, 0) == 0);

    section("errors");
    EXPECT_INT_FAIL(virDomainBackupVerify(full, 4), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags (0x4) in function virDomainBackupVerify");
    EXPECT_INT_FAIL(virDomainBackupVerify(NULL, 0), VIR_ERR_INVALID_ARG);
    CHECK(virDomainBackupDelete(inc, 0) == 0);
    EXPECT_INT_FAIL(virDomainBackupVerify(inc, 0), VIR_ERR_NO_DOMAIN_BACKUP);
    virDomainBackupFree(inc);
    CHECK(virDomainBackupDelete(full, 0) == 0);
    virDomainBackupFree(full);

    section("progress from another thread, then abort");
    {
        const char *bigdisk = WPATH("big.raw");
        test_disk d = { "vda", NULL, "raw", NULL };
        virDomainPtr bigdom;
        make_image(bigdisk, "raw", 128 * MiB);
        write_data(bigdisk, "raw", 0, 128 * MiB, 0x5a);
        d.path = bigdisk;
        bigdom = define_domain(conn, "verify-big", &d, 1);
        big = backup_wait(bigdom, vda_backup_xml(WPATH("big.qcow2"), NULL));
        REQUIRE(big);

        memset(&r, 0, sizeof(r));
        r.b = big;
        REQUIRE(pthread_create(&th, NULL, verify_thread, &r) == 0);
        /* Watch until it ends; keep the first and last values seen. */
        for (i = 0; i < 1000000; i++) {
            if (verify_progress(big, &total, &done)) {
                if (!seen++)
                    first = done;
                CHECKF(total == (unsigned long long)(128 * MiB), "verify.bytes.total %llu", total);
                CHECKF(done >= last, "processed went back: %llu < %llu", done, last);
                last = done;
            } else if (seen) {
                break;
            }
            usleep(1000);
        }
        pthread_join(th, NULL);
        CHECKF(r.rc == 0, "verify failed: %s", r.msg);
        CHECKF(seen > 1, "progress seen %d times", seen);
        CHECKF(last > first, "progress did not move (%llu .. %llu)", first, last);

        memset(&r, 0, sizeof(r));
        r.b = big;
        REQUIRE(pthread_create(&th, NULL, verify_thread, &r) == 0);
        while (!verify_progress(big, &total, &done) || done == 0)
            usleep(1000);
        CHECKF(done < total, "verification ended before the abort (%llu)", done);
        CHECK(virDomainBackupAbortJob(big, 0) == 0);
        pthread_join(th, NULL);
        CHECKF(r.rc == -1 && r.code == VIR_ERR_OPERATION_ABORTED, "rc %d code %d: %s",
               r.rc, r.code, r.msg);
        CHECK(!verify_progress(big, &total, &done));
        EXPECT_INT_FAIL(virDomainBackupAbortJob(big, 0), VIR_ERR_OPERATION_INVALID);
        virDomainBackupFree(big);
        drop_domain(bigdom);
    }

    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-verify");
}
