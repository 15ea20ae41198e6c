/*
 * test-job.c: background jobs. CreateXML without WAIT, the running state,
 * FinishJob (0, CHECK, CANCEL), AbortJob, GetParameters (every field, its
 * type and value, the per-disk string and numbers, strings freed by
 * virTypedParamsClear from a full or a cut-short array), a job under a
 * <bandwidth> limit, a failed job, and the errors of each call.
 */
#include "common.h"

#include <signal.h>
#include <sys/resource.h>

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* The state named in a backup's XML ("" if none). */
static const char *xml_state(virDomainBackupPtr b)
{
    static char st[32];
    char *x = virDomainBackupGetXMLDesc(b, 0);
    snprintf(st, sizeof(st), "%s", x ? xml_text(x, "state") : "");
    free(x);
    return st;
}

/* The process killed in the middle of a job: start one, check it runs,
 * write its UUID to @uuid_file and die by SIGKILL. */
static int kill_child(const char *dom_uuid_s, const char *disk, const char *target,
                      const char *uuid_file)
{
    virConnectPtr conn = open_test_conn();
    test_disk d = { "vda", disk, "raw", NULL };
    char *dx = domain_xml("job-big", dom_uuid_s, &d, 1);
    virDomainPtr dom = virDomainDefineXML(conn, dx);
    virDomainBackupPtr b;
    char xml[2048];
    FILE *f;
    free(dx);
    if (!dom)
        return 2;
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks><disk name='vda'><target file='%s'/></disk>"
             "</disks></domainbackup>", target);
    b = virDomainBackupCreateXML(dom, xml, 0);
    if (!b)
        return 2;
    if (virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) != 1)
        return 3;
    f = fopen(uuid_file, "w");
    if (!f)
        return 2;
    fprintf(f, "%s", backup_uuid(b));
    fclose(f);
    raise(SIGKILL);
    return 4;
}

int main(int argc, char **argv)
{
    virConnectPtr conn;
    const char *w;
    char disk[1024], big[1024], xml[4096];
    virDomainPtr dom, bigdom;
    virDomainBackupPtr b, c;
    params pr;
    long long data = 0, stored = 0;
    int i, n;

    if (argc == 6 && strcmp(argv[1], "killchild") == 0)
        return kill_child(argv[2], argv[3], argv[4], argv[5]);
    conn = open_test_conn();
    w = workdir();

    /* 512 MiB with 256 KiB of data every 8 MiB: 16 MiB of data. The
     * library stores whole 64 KiB chunks (its digest and qcow2 cluster
     * size): a run that does not start on a chunk stores 5 of them. */
    snprintf(disk, sizeof(disk), "%s/job-vda.raw", w);
    make_image(disk, "raw", 512 * MiB);
    for (i = 0; i < 64; i++) {
        long long off = (long long)i * 8 * MiB + 4096 * i, len = 256 * 1024;
        write_data(disk, "raw", off, len, 0x10 + i);
        data += len;
        stored += ((off + len - 1) / (64 * 1024) - off / (64 * 1024) + 1) * 64 * 1024;
    }
    {
        test_disk d = { "vda", disk, "raw", NULL };
        dom = define_domain(conn, "job-dom", &d, 1);
    }

    /* ---------------------------------------------------------------- */
    section("a job without WAIT: running or completed, listed at once");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("job.qcow2"), NULL));
    b = virDomainBackupCreateXML(dom, xml, 0);
    REQUIRE(b != NULL);
    {
        virDomainBackupPtr *list = NULL;
        const char *st;
        CHECK(virDomainBackupList(dom, &list, 0) == 1);
        if (list && list[0]) {
            st = xml_state(list[0]);
            CHECKF(strcmp(st, "running") == 0 || strcmp(st, "completed") == 0,
                   "listed backup in state '%s'", st);
        }
        free_list(list);
        st = xml_state(b);
        CHECKF(strcmp(st, "running") == 0 || strcmp(st, "completed") == 0, "state '%s'", st);
    }
    n = virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK);
    CHECKF(n == 0 || n == 1, "FinishJob(CHECK) returned %d", n);

    section("GetParameters while the job runs");
    {
        int count = 0;
        CHECK(virDomainBackupGetParameters(b, NULL, &count, 0) == 0);
        CHECKF(count == 10, "%d parameters, want 10 (7 + 3 for the disk)", count);
    }
    {
        unsigned long long last = 0;
        int polls = 0;
        do {
            pr = GET_PARAMS(b);
            if (!pr.p)
                break;
            n = p_state(&pr);
            CHECKF(n == VIR_DOMAIN_BACKUP_STATE_RUNNING || n == VIR_DOMAIN_BACKUP_STATE_COMPLETED,
                   "state %d while polling", n);
            CHECK(p_ull(&pr, "bytes.total") == 512ULL * MiB);
            CHECKF(p_ull(&pr, "bytes.processed") >= last, "bytes.processed went backwards");
            last = p_ull(&pr, "bytes.processed");
            CHECK(last <= p_ull(&pr, "bytes.total"));
            CHECK(p_ull(&pr, "bytes.written") <= (unsigned long long)stored);
            /* One disk: its figures are the job's. */
            CHECK(p_ull(&pr, "disk.0.bytes.processed") == last);
            CHECK(p_ull(&pr, "disk.0.bytes.total") == 512ULL * MiB);
            free_params(&pr);
            if (n != VIR_DOMAIN_BACKUP_STATE_RUNNING)
                break;
            sleep_ms(20);
        } while (++polls < 3000);
    }
    CHECK(virDomainBackupFinishJob(b, 0) == 0);
    CHECK(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 0);
    CHECK(virDomainBackupFinishJob(b, 0) == 0);
    CHECK(strcmp(xml_state(b), "completed") == 0);
    CHECK(images_equal(disk, "raw", WPATH("job.qcow2"), "qcow2"));

    section("GetParameters of the completed job");
    pr = GET_PARAMS(b);
    if (pr.p) {
        virTypedParameterPtr p;
        CHECKF(pr.n == 10, "%d parameters, want 10", pr.n);
        CHECK(p_state(&pr) == VIR_DOMAIN_BACKUP_STATE_COMPLETED);
        p = param(&pr, "incremental", VIR_TYPED_PARAM_BOOLEAN);
        CHECK(p && p->value.b == 0);
        CHECK(p_ull(&pr, "bytes.total") == 512ULL * MiB);
        CHECK(p_ull(&pr, "bytes.processed") == 512ULL * MiB);
        CHECKF(p_ull(&pr, "bytes.written") >= (unsigned long long)data &&
                   p_ull(&pr, "bytes.written") <= (unsigned long long)stored,
               "bytes.written %llu, data %lld, in whole chunks %lld",
               p_ull(&pr, "bytes.written"), data, stored);
        param(&pr, "time.elapsed", VIR_TYPED_PARAM_ULLONG);
        p = param(&pr, "disks", VIR_TYPED_PARAM_UINT);
        CHECK(p && p->value.ui == 1);
        CHECKF(virTypedParamsGet(pr.p, pr.n, "error") == NULL, "'error' on a completed job");
        p = param(&pr, "disk.0.name", VIR_TYPED_PARAM_STRING);
        CHECKF(p && p->value.s && strcmp(p->value.s, "vda") == 0, "disk.0.name '%s'",
               p && p->value.s ? p->value.s : "(null)");
        CHECK(p_ull(&pr, "disk.0.bytes.total") == 512ULL * MiB);
        CHECK(p_ull(&pr, "disk.0.bytes.processed") == 512ULL * MiB);
        /* The field names are exactly API.md's, in its order. */
        {
            const char *names[] = { "state", "incremental", "bytes.total", "bytes.processed",
                                    "bytes.written", "time.elapsed", "disks", "disk.0.name",
                                    "disk.0.bytes.total", "disk.0.bytes.processed" };
            for (i = 0; i < 10 && i < pr.n; i++)
                CHECKF(strcmp(pr.p[i].field, names[i]) == 0, "parameter %d is '%s', want '%s'",
                       i, pr.p[i].field, names[i]);
        }
    }
    {
        /* time.elapsed is frozen once the job has ended. */
        unsigned long long e1 = p_ull(&pr, "time.elapsed"), e2;
        params again;
        sleep_ms(30);
        again = GET_PARAMS(b);
        e2 = p_ull(&again, "time.elapsed");
        CHECKF(e1 == e2, "time.elapsed moves after the end: %llu then %llu", e1, e2);
        free_params(&again);
    }
    {
        /* A listed handle (no job in hand) reports the same numbers. */
        virDomainBackupPtr *list = NULL;
        CHECK(virDomainBackupList(dom, &list, 0) == 1);
        if (list && list[0]) {
            params lp = GET_PARAMS(list[0]);
            CHECK(p_state(&lp) == VIR_DOMAIN_BACKUP_STATE_COMPLETED);
            CHECK(p_ull(&lp, "bytes.total") == p_ull(&pr, "bytes.total"));
            CHECK(p_ull(&lp, "bytes.processed") == p_ull(&pr, "bytes.processed"));
            CHECK(p_ull(&lp, "bytes.written") == p_ull(&pr, "bytes.written"));
            /* From the record: the same per-disk figures. */
            {
                virTypedParameterPtr s = param(&lp, "disk.0.name", VIR_TYPED_PARAM_STRING);
                CHECK(s && s->value.s && strcmp(s->value.s, "vda") == 0);
                CHECK(p_ull(&lp, "disk.0.bytes.processed") == p_ull(&pr, "disk.0.bytes.processed"));
                CHECK(p_ull(&lp, "disk.0.bytes.total") == p_ull(&pr, "disk.0.bytes.total"));
            }
            /* Same backup, same job: the same duration. The job's clock
             * stops before its record is written, with the value written. */
            CHECKF(p_ull(&lp, "time.elapsed") == p_ull(&pr, "time.elapsed"),
                   "time.elapsed %llu from a listed handle, %llu from the job's",
                   p_ull(&lp, "time.elapsed"), p_ull(&pr, "time.elapsed"));
            free_params(&lp);
        }
        free_list(list);
    }
    free_params(&pr);

    section("GetParameters with fewer slots, and its errors");
    {
        virTypedParameter few[3];
        int nn = 3;
        memset(few, 0, sizeof(few));
        CHECK(virDomainBackupGetParameters(b, few, &nn, 0) == 0);
        CHECKF(nn == 3, "filled %d of 3 slots", nn);
        CHECK(strcmp(few[0].field, "state") == 0);
        virTypedParamsClear(few, nn);
        /* Cut short right after the disk's name: the one string filled is
         * the caller's, freed by virTypedParamsClear (valgrind checks). */
        {
            virTypedParameter eight[8];
            memset(eight, 0, sizeof(eight));
            nn = 8;
            CHECK(virDomainBackupGetParameters(b, eight, &nn, 0) == 0);
            CHECKF(nn == 8, "filled %d of 8 slots", nn);
            CHECK(strcmp(eight[7].field, "disk.0.name") == 0);
            CHECK(eight[7].type == VIR_TYPED_PARAM_STRING && eight[7].value.s &&
                  strcmp(eight[7].value.s, "vda") == 0);
            virTypedParamsClear(eight, nn);
        }
        nn = 5;
        EXPECT_INT_FAIL(virDomainBackupGetParameters(b, NULL, &nn, 0), VIR_ERR_INVALID_ARG);
        EXPECT_INT_FAIL(virDomainBackupGetParameters(b, few, NULL, 0), VIR_ERR_INVALID_ARG);
        nn = 3;
        EXPECT_INT_FAIL(virDomainBackupGetParameters(b, few, &nn, 1), VIR_ERR_INVALID_ARG);
        EXPECT_MSG_CONTAINS("unsupported flags");
        nn = 0;
        EXPECT_INT_FAIL(virDomainBackupGetParameters(NULL, NULL, &nn, 0), VIR_ERR_INVALID_ARG);
    }

    section("finished job: Abort and CANCEL refused, flag errors");
    EXPECT_INT_FAIL(virDomainBackupAbortJob(b, 0), VIR_ERR_OPERATION_INVALID);
    EXPECT_INT_FAIL(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL),
                    VIR_ERR_OPERATION_INVALID);
    EXPECT_INT_FAIL(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL |
                                                    VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK),
                    VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupFinishJob(b, 1 << 10), VIR_ERR_INVALID_ARG);
    EXPECT_MSG_CONTAINS("unsupported flags");
    EXPECT_INT_FAIL(virDomainBackupAbortJob(b, 1), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupFinishJob(NULL, 0), VIR_ERR_INVALID_ARG);
    EXPECT_INT_FAIL(virDomainBackupAbortJob(NULL, 0), VIR_ERR_INVALID_ARG);
    {
        /* Through a listed handle as well. */
        virDomainBackupPtr *list = NULL;
        CHECK(virDomainBackupList(dom, &list, 0) == 1);
        if (list && list[0]) {
            EXPECT_INT_FAIL(virDomainBackupAbortJob(list[0], 0), VIR_ERR_OPERATION_INVALID);
            CHECK(virDomainBackupFinishJob(list[0], VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 0);
            CHECK(virDomainBackupFinishJob(list[0], 0) == 0);
        }
        free_list(list);
    }
    CHECK(count_backups(dom) == 1);
    virDomainBackupFree(b);

    /* ---------------------------------------------------------------- */
    /* 2 GiB with 256 KiB of data every 2 MiB (256 MiB of data): long
     * enough under valgrind to be cancelled while it runs. */
    snprintf(big, sizeof(big), "%s/big-vda.raw", w);
    make_image(big, "raw", 2 * GiB);
    for (i = 0; i < 1024; i++)
        write_data(big, "raw", (long long)i * 2 * MiB, 256 * 1024, 0x80 + (i & 0x3f));
    {
        test_disk d = { "vda", big, "raw", NULL };
        bigdom = define_domain(conn, "job-big", &d, 1);
    }

    section("AbortJob on a running job");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("cancel/big.qcow2"), NULL));
    if (mkdir(WPATH("cancel"), 0755) < 0)
        FATAL("mkdir: %s", strerror(errno));
    b = virDomainBackupCreateXML(bigdom, xml, 0);
    REQUIRE(b != NULL);
    {
        char u[64];
        snprintf(u, sizeof(u), "%s", backup_uuid(b));
        n = virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK);
        CHECKF(n == 1, "FinishJob(CHECK) right after the start returned %d, want 1 (running)", n);
        if (n == 1) {
            CHECK(strcmp(xml_state(b), "running") == 0);
            CHECK(count_backups(bigdom) == 1);
            CHECK(file_exists(WPATH("cancel/big.qcow2")));
            /* A second job on the same domain while one runs. */
            snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("second.qcow2"), NULL));
            EXPECT_BACKUP_FAIL(virDomainBackupCreateXML(bigdom, xml, 0),
                               VIR_ERR_OPERATION_INVALID);
            CHECK(!file_exists(WPATH("second.qcow2")));
            /* A running backup cannot be deleted, nor its domain undefined. */
            EXPECT_INT_FAIL(virDomainBackupDelete(b, 0), VIR_ERR_OPERATION_INVALID);
            EXPECT_INT_FAIL(virDomainUndefineFlags(bigdom, VIR_DOMAIN_UNDEFINE_BACKUP),
                            VIR_ERR_OPERATION_INVALID);
            CHECK(virDomainIsPersistent(bigdom) == 1);
            pr = GET_PARAMS(b);
            if (pr.p) {
                CHECK(p_state(&pr) == VIR_DOMAIN_BACKUP_STATE_RUNNING);
                CHECK(p_ull(&pr, "bytes.total") == 2ULL * GiB);
            }
            free_params(&pr);

            CHECK(virDomainBackupAbortJob(b, 0) == 0);

            CHECK(count_backups(bigdom) == 0);
            CHECKF(!file_exists(WPATH("cancel/big.qcow2")), "partial target left behind");
            CHECK(catalog_records() == 1);
            pr = GET_PARAMS(b);
            if (pr.p) {
                CHECKF(p_state(&pr) == VIR_DOMAIN_BACKUP_STATE_CANCELLED, "state %d after abort",
                       p_state(&pr));
                CHECKF(virTypedParamsGet(pr.p, pr.n, "error") == NULL,
                       "'error' on a cancelled job");
                CHECK(p_ull(&pr, "bytes.processed") < 2ULL * GiB);
            }
            free_params(&pr);
            EXPECT_INT_FAIL(virDomainBackupFinishJob(b, 0), VIR_ERR_OPERATION_ABORTED);
            EXPECT_INT_FAIL(virDomainBackupAbortJob(b, 0), VIR_ERR_OPERATION_INVALID);
            EXPECT_INT_FAIL(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL),
                            VIR_ERR_OPERATION_INVALID);
            EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(u, 0), VIR_ERR_NO_DOMAIN_BACKUP);
        }
        virDomainBackupFree(b);
    }

    section("FinishJob(CANCEL) on a running job");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("cancel2.qcow2"), NULL));
    b = virDomainBackupCreateXML(bigdom, xml, 0);
    REQUIRE(b != NULL);
    n = virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK);
    CHECKF(n == 1, "FinishJob(CHECK) right after the start returned %d, want 1", n);
    if (n == 1) {
        CHECK(virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CANCEL) == 0);
        CHECK(count_backups(bigdom) == 0);
        CHECK(!file_exists(WPATH("cancel2.qcow2")));
        pr = GET_PARAMS(b);
        if (pr.p)
            CHECK(p_state(&pr) == VIR_DOMAIN_BACKUP_STATE_CANCELLED);
        free_params(&pr);
    }
    virDomainBackupFree(b);

    /* API.md: no half-written backup is ever listed, even after the process
     * is killed mid-job: the next process that opens the catalog discards it. */
    section("a process killed in the middle of a job");
    {
        char du[VIR_UUID_STRING_BUFLEN], ub[64] = "", rec[1400];
        const char *target = WPATH("killed.qcow2");
        const char *ufile = WPATH("killed-uuid");
        pid_t pid;
        int st = 0;
        FILE *f;
        snprintf(du, sizeof(du), "%s", dom_uuid(bigdom));
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid == 0) {
            execl(argv[0], argv[0], "killchild", du, big, target, ufile, (char *)NULL);
            _exit(127);
        }
        REQUIRE(pid > 0 && waitpid(pid, &st, 0) == pid);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 3) {
            printf("note: the job of the killed process ended before the kill; "
                   "not exercised\n");
        } else {
            CHECKF(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
                   "the child did not die by SIGKILL (status 0x%x)", st);
            f = fopen(ufile, "r");
            CHECK(f != NULL);
            if (f) {
                if (!fgets(ub, sizeof(ub), f))
                    ub[0] = '\0';
                fclose(f);
            }
            snprintf(rec, sizeof(rec), "%s/%s/%s.xml", catalog_dir(), du, ub);
            /* The dead job's record and partial file are there until a
             * process reads the catalog (else this test shows nothing). */
            CHECKF(file_exists(rec), "no record %s of the killed job", rec);
            CHECKF(file_exists(target), "no partial target of the killed job");
            CHECK(count_backups(bigdom) == 0);
            CHECKF(!file_exists(rec), "record of the killed job not discarded");
            CHECKF(!file_exists(target), "partial target of the killed job not removed");
            EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(ub, 0), VIR_ERR_NO_DOMAIN_BACKUP);
        }
    }

    /* Freeing the only handle of a running job neither stops nor breaks it. */
    section("a job outlives its handle");
    snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("orphan.qcow2"), NULL));
    b = virDomainBackupCreateXML(dom, xml, 0);
    CHECK(b != NULL);
    if (b) {
        char u[64];
        snprintf(u, sizeof(u), "%s", backup_uuid(b));
        CHECK(virDomainBackupFree(b) == 0);
        c = virDomainBackupLookupByUUID(u, 0);
        CHECK(c != NULL);
        if (c) {
            CHECK(virDomainBackupFinishJob(c, 0) == 0);
            CHECK(strcmp(xml_state(c), "completed") == 0);
            virDomainBackupFree(c);
        }
        CHECK(images_equal(disk, "raw", WPATH("orphan.qcow2"), "qcow2"));
    }

    /* ---------------------------------------------------------------- */
    section("two disks under a <bandwidth> limit: per-disk figures while it runs");
    {
        char da[1024], db[1024];
        test_disk d2[2] = { { "vda", da, "raw", NULL }, { "vdb", db, "raw", NULL } };
        virDomainPtr two;
        int polls = 0, both = 0;
        snprintf(da, sizeof(da), "%s/bw-vda.raw", w);
        snprintf(db, sizeof(db), "%s/bw-vdb.raw", w);
        make_image(da, "raw", 4 * MiB);
        make_image(db, "raw", 2 * MiB);
        write_data(da, "raw", 0, 4 * MiB, 0x21);
        write_data(db, "raw", 0, 2 * MiB, 0x22);
        two = define_domain(conn, "job-bw", d2, 2);
        /* Refused, naming the value, and nothing made. */
        EXPECT_CREATE_FAIL(two, "<domainbackup><bandwidth bytes='0'/></domainbackup>", 0,
                           VIR_ERR_XML_ERROR);
        EXPECT_MSG_CONTAINS("bytes='0'");
        EXPECT_CREATE_FAIL(two, "<domainbackup><bandwidth bytes='-5'/></domainbackup>", 0,
                           VIR_ERR_XML_ERROR);
        EXPECT_CREATE_FAIL(two, "<domainbackup><bandwidth bytes='1M'/></domainbackup>", 0,
                           VIR_ERR_XML_ERROR);
        EXPECT_MSG_CONTAINS("bytes='1M'");
        /* 6 MiB at 2 MiB/s: about 3 s. */
        snprintf(xml, sizeof(xml),
                 "<domainbackup><bandwidth bytes='%lld'/><disks>"
                 "<disk name='vda'><target file='%s'/></disk>"
                 "<disk name='vdb'><target file='%s'/></disk></disks></domainbackup>",
                 2 * MiB, WPATH("bw-a.qcow2"), WPATH("bw-b.qcow2"));
        b = virDomainBackupCreateXML(two, xml, 0);
        REQUIRE(b != NULL);
        {
            char *x = virDomainBackupGetXMLDesc(b, 0);
            char want[64];
            snprintf(want, sizeof(want), "<bandwidth bytes='%lld'/>", 2 * MiB);
            CHECKF(x && (strstr(x, want) || strcmp(xml_state(b), "completed") == 0),
                   "no %s in the running job's description: %s", want, x ? x : "(null)");
            free(x);
        }
        do {
            virTypedParameterPtr na, nb;
            unsigned long long pa, pb;
            pr = GET_PARAMS(b);
            if (!pr.p)
                break;
            n = p_state(&pr);
            CHECKF(pr.n == 7 + 6, "%d parameters, want 13", pr.n);
            na = param(&pr, "disk.0.name", VIR_TYPED_PARAM_STRING);
            nb = param(&pr, "disk.1.name", VIR_TYPED_PARAM_STRING);
            CHECK(na && na->value.s && strcmp(na->value.s, "vda") == 0);
            CHECK(nb && nb->value.s && strcmp(nb->value.s, "vdb") == 0);
            CHECK(p_ull(&pr, "disk.0.bytes.total") == 4ULL * MiB);
            CHECK(p_ull(&pr, "disk.1.bytes.total") == 2ULL * MiB);
            pa = p_ull(&pr, "disk.0.bytes.processed");
            pb = p_ull(&pr, "disk.1.bytes.processed");
            CHECKF(pa + pb == p_ull(&pr, "bytes.processed"), "%llu + %llu != %llu", pa, pb,
                   p_ull(&pr, "bytes.processed"));
            CHECK(pa <= 4ULL * MiB && pb <= 2ULL * MiB);
            if (n == VIR_DOMAIN_BACKUP_STATE_RUNNING && pa + pb > 0)
                both++;
            free_params(&pr);
            if (n != VIR_DOMAIN_BACKUP_STATE_RUNNING)
                break;
            sleep_ms(100);
        } while (++polls < 600);
        CHECKF(both > 0, "never saw the job running with bytes processed (%d polls)", polls);
        CHECK(virDomainBackupFinishJob(b, 0) == 0);
        pr = GET_PARAMS(b);
        if (pr.p) {
            CHECK(p_ull(&pr, "disk.0.bytes.processed") == 4ULL * MiB);
            CHECK(p_ull(&pr, "disk.1.bytes.processed") == 2ULL * MiB);
            CHECK(p_ull(&pr, "bytes.processed") == 6ULL * MiB);
        }
        free_params(&pr);
        {
            char *x = virDomainBackupGetXMLDesc(b, 0);
            CHECKF(x && !strstr(x, "<bandwidth"), "a limit in an ended job's description");
            free(x);
        }
        CHECK(images_equal(da, "raw", WPATH("bw-a.qcow2"), "qcow2"));
        CHECK(images_equal(db, "raw", WPATH("bw-b.qcow2"), "qcow2"));
        virDomainBackupFree(b);
        drop_domain(two);
    }

    /* ---------------------------------------------------------------- */
    /* A job that fails while it copies: the process may not write files
     * larger than 32 MiB (RLIMIT_FSIZE), so writing the target fails with
     * EFBIG once 32 MiB of its 256 MiB of data are stored. */
    section("a job that fails (target write error)");
    {
        struct rlimit old, lim;
        signal(SIGXFSZ, SIG_IGN);
        REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
        lim = old;
        lim.rlim_cur = 32 * MiB;
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("failed.qcow2"), NULL));
        REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
        b = virDomainBackupCreateXML(bigdom, xml, 0);
        CHECK(b != NULL);
        n = b ? virDomainBackupFinishJob(b, 0) : -1;
        REQUIRE(setrlimit(RLIMIT_FSIZE, &old) == 0);
        if (b) {
            int code = virDomainBackupGetLastErrorCode();
            CHECKF(n == -1 && code == VIR_ERR_OPERATION_FAILED,
                   "FinishJob of a failed job: %d, %s (%d): %s", n, err_name(code), code,
                   virDomainBackupGetLastErrorMessage());
            CHECK(count_backups(bigdom) == 0);
            CHECKF(!file_exists(WPATH("failed.qcow2")), "target of a failed job left behind");
            pr = GET_PARAMS(b);
            if (pr.p) {
                virTypedParameterPtr e;
                CHECKF(pr.n == 11, "%d parameters on a failed job, want 11 (with 'error')", pr.n);
                CHECK(p_state(&pr) == VIR_DOMAIN_BACKUP_STATE_FAILED);
                e = param(&pr, "error", VIR_TYPED_PARAM_STRING);
                CHECKF(e && e->value.s && *e->value.s, "no error text");
                if (e && e->value.s)
                    printf("error parameter: %s\n", e->value.s);
            }
            free_params(&pr);
            n = virDomainBackupFinishJob(b, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK);
            CHECKF(n == -1, "FinishJob(CHECK) of a failed job returned %d", n);
            EXPECT_INT_FAIL(virDomainBackupAbortJob(b, 0), VIR_ERR_OPERATION_INVALID);
            virDomainBackupFree(b);
        }

        /* With WAIT, the failed job gives NULL and leaves nothing. */
        snprintf(xml, sizeof(xml), "%s", vda_backup_xml(WPATH("failed2.qcow2"), NULL));
        {
            char *before = state_snapshot();
            REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
            b = virDomainBackupCreateXML(bigdom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT);
            n = virDomainBackupGetLastErrorCode();
            REQUIRE(setrlimit(RLIMIT_FSIZE, &old) == 0);
            CHECKF(b == NULL && n == VIR_ERR_OPERATION_FAILED,
                   "CreateXML(WAIT) of a failing job: %p, %s (%d)", (void *)b, err_name(n), n);
            if (b)
                virDomainBackupFree(b);
            EXPECT_UNCHANGED(before);
        }
    }
    CHECK(count_backups(bigdom) == 0);

    drop_domain(dom);
    drop_domain(bigdom);
    virConnectClose(conn);
    return t_done("test-job");
}
