/*
 * bench.c: libvirt-backup against its peer, side by side, in one run.
 *
 * For each row, the same source image is copied by the library (a managed
 * full backup of a test:///default domain, CREATE_WAIT) and by
 * `qemu-img convert -O qcow2` followed by an fsync of its output (the
 * library fsyncs its targets before it calls a backup completed). Each side
 * runs BENCH_RUNS times, alternating, each after a sync(); the table shows
 * the best time of each side (timings on a shared 2-core machine have large
 * additive spikes, which the minimum filters out) and the ratio
 * library/peer (lower is better).
 *
 * Environment: BENCH_SIZE_MB (virtual disk size, default 2048),
 * BENCH_DATA_PCT (share of the disk holding data, default 50),
 * BENCH_RUNS (default 5), BENCH_DIR (work folder, default a new one in /tmp).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libvirt-backup/libvirt-backup.h>

#define MiB (1024LL * 1024)

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what,
            virDomainBackupGetLastErrorCode() ? virDomainBackupGetLastErrorMessage() : strerror(errno));
    exit(1);
}

static void run(const char *cmd)
{
    if (system(cmd) != 0) {
        fprintf(stderr, "bench: command failed: %s\n", cmd);
        exit(1);
    }
}

/*
 * A raw image of @size_mb MiB where @pct percent of the 1 MiB blocks hold
 * pseudo-random data, spread over the disk in runs of 1 to 16 MiB; one run
 * in eight is allocated but all zero (which a good copier skips).
 */
static void make_raw(const char *path, long size_mb, long pct)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char *buf = malloc(MiB), *zero = calloc(1, MiB);
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    long mb = 0, runs = 0;
    if (fd < 0 || !buf || !zero || ftruncate(fd, size_mb * MiB) < 0)
        die("create source image");
    while (mb < size_mb) {
        long len = 1 + (long)((x >> 33) % 16);
        int data = (long)((x >> 17) % 100) < pct;
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        for (long i = 0; i < len && mb < size_mb; i++, mb++) {
            if (!data)
                continue;
            for (size_t j = 0; j < MiB / 8; j++) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                ((uint64_t *)buf)[j] = x;
            }
            if (pwrite(fd, runs % 8 == 7 ? zero : buf, MiB, mb * MiB) != MiB)
                die("write source image");
        }
        runs += data;
    }
    if (fsync(fd) < 0)
        die("sync source image");
    close(fd);
    free(buf);
    free(zero);
}

static double best(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

/* One managed full backup of @dom's vda into @target; seconds taken. */
static double ours(virDomainPtr dom, const char *target)
{
    char xml[2048], cmd[1100];
    double t0;
    virDomainBackupPtr b;
    snprintf(cmd, sizeof(cmd), "rm -f '%s'", target);
    run(cmd);
    snprintf(xml, sizeof(xml),
             "<domainbackup><disks><disk name='vda'><target file='%s'/></disk></disks></domainbackup>",
             target);
    sync();   /* start with nothing dirty, so neither side pays for the other */
    t0 = now();
    if (!(b = virDomainBackupCreateXML(dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT)))
        die("virDomainBackupCreateXML");
    t0 = now() - t0;
    /* Forget it (keep the file) so the next run can reuse the path. */
    if (virDomainBackupDelete(b, VIR_DOMAIN_BACKUP_DELETE_METADATA_ONLY) < 0)
        die("virDomainBackupDelete");
    virDomainBackupFree(b);
    return t0;
}

static double peer(const char *src, const char *fmt, const char *target)
{
    char cmd[2048];
    double t0;
    snprintf(cmd, sizeof(cmd), "rm -f '%s'", target);
    run(cmd);
    snprintf(cmd, sizeof(cmd), "qemu-img convert -f %s -O qcow2 '%s' '%s' && sync '%s'",
             fmt, src, target, target);
    sync();
    t0 = now();
    run(cmd);
    return now() - t0;
}

static void row(virConnectPtr conn, const char *label, const char *dir,
                const char *src, const char *fmt, int runs)
{
    char xml[2048], t_ours[600], t_peer[600], cmd[3000];
    double a[16], b[16];
    virDomainPtr dom;
    snprintf(xml, sizeof(xml),
             "<domain type='test'><name>bench-%s</name><memory>65536</memory>"
             "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
             "<driver name='qemu' type='%s'/><source file='%s'/><target dev='vda'/>"
             "</disk></devices></domain>", fmt, fmt, src);
    if (!(dom = virDomainDefineXML(conn, xml)))
        die("virDomainDefineXML");
    snprintf(t_ours, sizeof(t_ours), "%s/ours-%s.qcow2", dir, fmt);
    snprintf(t_peer, sizeof(t_peer), "%s/peer-%s.qcow2", dir, fmt);
    peer(src, fmt, t_peer);   /* warm the page cache for both sides */
    for (int i = 0; i < runs; i++) {
        b[i] = peer(src, fmt, t_peer);
        a[i] = ours(dom, t_ours);
        if (getenv("BENCH_VERBOSE"))
            fprintf(stderr, "  %s run %d: ours %.3f s, peer %.3f s\n", fmt, i + 1, a[i], b[i]);
    }
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f %s -F qcow2 '%s' '%s'", fmt, src, t_ours);
    run(cmd);
    double ma = best(a, runs), mb = best(b, runs);
    printf("| %-34s | %8.3f s | %8.3f s | %6.2fx |\n", label, ma, mb, ma / mb);
    fflush(stdout);
    virDomainUndefine(dom);
    virDomainFree(dom);
}

int main(void)
{
    long size_mb = env_long("BENCH_SIZE_MB", 2048);
    long pct = env_long("BENCH_DATA_PCT", 50);
    int runs = (int)env_long("BENCH_RUNS", 5);
    char dir[400], raw[500], qcow[500], cmd[1200], *tmp = NULL;
    char tmpl[] = "/var/tmp/libvirt-backup-bench.XXXXXX";
    virConnectPtr conn;

    if (runs < 1 || runs > 16)
        runs = 5;
    if (getenv("BENCH_DIR") && *getenv("BENCH_DIR")) {
        snprintf(dir, sizeof(dir), "%s", getenv("BENCH_DIR"));
    } else {
        if (!(tmp = mkdtemp(tmpl)))
            die("mkdtemp");
        snprintf(dir, sizeof(dir), "%s", tmp);
    }
    snprintf(raw, sizeof(raw), "%s/src.raw", dir);
    snprintf(qcow, sizeof(qcow), "%s/src.qcow2", dir);
    make_raw(raw, size_mb, pct);
    snprintf(cmd, sizeof(cmd), "qemu-img convert -f raw -O qcow2 '%s' '%s'", raw, qcow);
    run(cmd);
    if (!(conn = virConnectOpen("test:///default")))
        die("virConnectOpen");

    printf("libvirt-backup benchmark: %ld MiB disk, %ld%% data, best of %d runs\n\n",
           size_mb, pct, runs);
    printf("| %-34s | %10s | %10s | %7s |\n", "row", "ours", "peer", "ratio");
    printf("|%s|%s|%s|%s|\n", "------------------------------------", "------------",
           "------------", "---------");
    row(conn, "full backup raw vs qemu-img convert", dir, raw, "raw", runs);
    row(conn, "full backup qcow2 vs qemu-img convert", dir, qcow, "qcow2", runs);

    {
        /* The whole process: the copies ran in it, with their bounded buffers. */
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("\npeak resident memory of the process that ran the backups: %.1f MiB\n",
               ru.ru_maxrss / 1024.0);
    }
    virConnectClose(conn);
    if (tmp) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
        run(cmd);
    }
    return 0;
}
