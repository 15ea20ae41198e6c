/*
 * copy.c: the copy engine's rows, data layouts x sizes (bench.c prints the
 * table's other rows).
 *
 * For each layout and each data size (256 MiB, 1 GiB, 4 GiB of data, up to
 * BENCH_COPY_MAX_MB; BENCH_COPY_MAX_MB=0 skips these rows) a raw source
 * image whose virtual size is twice its data, the disk vda of an inactive
 * test:///default domain:
 *
 *  - contiguous: runs of 256 MiB of data, each followed by a hole as long;
 *  - scattered:  runs of 1-16 MiB of data between holes of 1-16 MiB;
 *  - sparse:     64 KiB of data every 128 KiB (the worst case for runs).
 *
 * Rows per source, each side run BENCH_COPY_RUNS times (default 3) after a
 * sync(), taking turns at going first, showing median and minimum:
 *
 *  a. full backup to qcow2 vs `qemu-img convert -O qcow2` + sync (target
 *     <= 0.8x);
 *  b. the same full backup vs a plain O_DIRECT write of the same number of
 *     bytes (`dd oflag=direct bs=4M` from /dev/zero... of the data size)
 *     + sync, the machine's limit (target <= 1.3x);
 *  c. full backup to a raw target vs `qemu-img convert -O raw` + sync
 *     (target <= 0.8x);
 *  d. restore of the qcow2 backup to a new qcow2 file vs `qemu-img
 *     convert -O qcow2` of it + sync (target <= 0.8x).
 *
 * Like every full backup of the library, ours reads the source, hashes
 * every 64 KiB chunk, writes the target and the digest index, and fsyncs
 * both before the backup completes; the cost of the index alone is the
 * row of tests/copy_bench.rs.
 *
 * The notes give the growth of the page cache ("Cached:" in /proc/meminfo)
 * over our median run (target < 256 MiB at every size) and the peer's.
 * Every backup and restore is compared with the source (qemu-img compare).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define COPY_MAX_RUNS 9

enum layout { CONTIGUOUS, SCATTERED, SPARSE };
static const char *layout_names[] = { "contiguous", "scattered", "sparse" };

struct copy_src {
    enum layout layout;
    long data_mb;
    char *path;
    virDomainPtr dom;
    virDomainBackupPtr full;   /* the last qcow2 full backup of ours */
};

/* "Cached:" of /proc/meminfo, in MiB. */
static double cached_mib(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = 0;
    if (!f)
        die("/proc/meminfo");
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Cached: %lf kB", &kb) == 1)
            break;
    fclose(f);
    return kb / 1024;
}

/* Pseudo-random MiB of data in @buf. */
static void fill(char *buf, size_t len, uint64_t *x)
{
    for (size_t j = 0; j < len / 8; j++) {
        *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17;
        ((uint64_t *)buf)[j] = *x;
    }
}

/* The source image of @s: 2x data_mb MiB virtual, data_mb MiB of data. */
static void make_layout(struct copy_src *s)
{
    int fd = open(s->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const long long data = s->data_mb * MiB;
    char *buf = malloc(4 * MiB);
    uint64_t x = 0x2545f4914f6cdd1dULL, r = 88172645463325252ULL;
    long long pos = 0, written = 0;
    if (fd < 0 || !buf || ftruncate(fd, 2 * data) < 0)
        die("create copy source");
    while (written < data) {
        long long run, gap;
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        switch (s->layout) {
        case CONTIGUOUS: run = gap = 256 * MiB; break;
        case SCATTERED:  run = (1 + (r >> 33) % 16) * MiB; gap = (1 + (r >> 17) % 16) * MiB; break;
        default:         run = gap = CHUNK; break;
        }
        if (run > data - written)
            run = data - written;
        for (long long o = 0; o < run; o += 4 * MiB) {
            size_t n = run - o < 4 * MiB ? run - o : 4 * MiB;
            fill(buf, n, &x);
            if (pwrite(fd, buf, n, pos + o) != (ssize_t)n)
                die("write copy source");
        }
        written += run;
        pos += run + gap;
        if (pos + run > 2 * data)   /* the holes got longer than the data: pack */
            pos = written;
    }
    if (fsync(fd) < 0)
        die("sync copy source");
    close(fd);
    free(buf);
}

static virConnectPtr copy_conn;

/* (Re)define @s's domain with vda on s->path (keeping its UUID if defined). */
static void define(struct copy_src *s)
{
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    char *xml;
    if (s->dom && virDomainGetUUIDString(s->dom, uuid) < 0)
        die("virDomainGetUUIDString");
    xml = xprintf("<domain type='test'><name>bench-copy-%s-%ld-%d</name>%s%s%s"
                  "<memory>65536</memory><os><type>hvm</type></os><devices>"
                  "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                  "<source file='%s'/><target dev='vda'/></disk></devices></domain>",
                  layout_names[s->layout], s->data_mb, (int)getpid(), *uuid ? "<uuid>" : "",
                  uuid, *uuid ? "</uuid>" : "", s->path);
    if (s->dom)
        virDomainFree(s->dom);
    if (!(s->dom = virDomainDefineXML(copy_conn, xml)))
        die("virDomainDefineXML");
    free(xml);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    double c[COPY_MAX_RUNS];
    memcpy(c, v, n * sizeof(*v));
    qsort(c, n, sizeof(*c), cmp_double);
    return n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
}

static double minimum(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static double ours_restore(struct copy_src *s, const char *unused);
static double peer_restore(struct copy_src *s, const char *unused);

/* Ours and the peer, timed, and the page-cache growth over each run. */
struct sample {
    double t, cache;
};

static struct sample measure(double (*fn)(struct copy_src *, const char *), struct copy_src *s,
                             const char *arg)
{
    struct sample r;
    double c0;
    /* What the last run left goes first, untimed and outside the page-cache
     * measure (freeing files shrinks the cache). The restore row keeps the
     * full backup it restores. */
    if (fn != ours_restore && fn != peer_restore)
        forget(&s->full);
    sh("rm -f '%s'/copy-peer.* '%s'/copy-dd.raw '%s'/copy-restored.qcow2", workdir, workdir,
       workdir);
    sync();
    c0 = cached_mib();
    r.t = fn(s, arg);
    r.cache = cached_mib() - c0;
    return r;
}

/* A full backup of @s to @fmt; leaves it as s->full (after a qemu-img compare). */
static double ours_full(struct copy_src *s, const char *fmt)
{
    char *target = xprintf("%s/copy-full.%s", workdir, fmt);
    char *xml = xprintf("<domainbackup><disks><disk name='vda'><target file='%s'/>"
                        "<driver type='%s'/></disk></disks></domainbackup>", target, fmt);
    double t0;
    forget(&s->full);
    sh("rm -f '%s'", target);
    t0 = now();
    if (!(s->full = virDomainBackupCreateXML(s->dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT)))
        die("virDomainBackupCreateXML");
    t0 = now() - t0;
    free(xml);
    free(target);
    return t0;
}

static double ours_restore(struct copy_src *s, const char *unused)
{
    char *out = xprintf("%s/copy-restored.qcow2", workdir), *file = backup_file(s->full);
    char *uuid = NULL;
    char *desc = virDomainBackupGetXMLDesc(s->full, 0), *u = desc ? strstr(desc, "<uuid>") : NULL;
    char *xml;
    double t0;
    int fd;
    (void)unused;
    if (!u)
        die("backup uuid");
    uuid = strndup(u + 6, 36);
    xml = xprintf("<domainbackup><uuid>%s</uuid><disks><disk name='vda'><target file='%s'/>"
                  "<driver type='qcow2'/></disk></disks></domainbackup>", uuid, out);
    sh("rm -f '%s'", out);
    t0 = now();
    if (virDomainBackupRestore(xml, 0) < 0)
        die("virDomainBackupRestore");
    if ((fd = open(out, O_RDONLY)) < 0 || fsync(fd) < 0)
        die(out);
    close(fd);
    t0 = now() - t0;
    /* The restore pointed vda at the new file: point it back. */
    define(s);
    free(xml);
    free(uuid);
    free(desc);
    free(file);
    return t0;
}

static double peer_convert(struct copy_src *s, const char *fmt)
{
    char *out = xprintf("%s/copy-peer.%s", workdir, fmt);
    double t;
    sh("rm -f '%s'", out);
    t = timed_sh("qemu-img convert -f raw -O %s '%s' '%s' && sync '%s'", fmt, s->path, out, out);
    free(out);
    return t;
}

static double peer_dd(struct copy_src *s, const char *unused)
{
    char *out = xprintf("%s/copy-dd.raw", workdir);
    double t;
    (void)unused;
    sh("rm -f '%s'", out);
    t = timed_sh("dd if=/dev/zero of='%s' bs=4M count=%ld oflag=direct status=none && sync '%s'",
                 out, s->data_mb / 4, out);
    free(out);
    return t;
}

static double peer_restore(struct copy_src *s, const char *unused)
{
    char *out = xprintf("%s/copy-peer.qcow2", workdir), *file = backup_file(s->full);
    double t;
    (void)unused;
    sh("rm -f '%s'", out);
    t = timed_sh("qemu-img convert -f qcow2 -O qcow2 '%s' '%s' && sync '%s'", file, out, out);
    free(file);
    free(out);
    return t;
}

static int check_full(struct copy_src *s, const char *fmt)
{
    char *file = backup_file(s->full);
    int rc = compare("raw", s->path, fmt, file);
    free(file);
    return rc;
}

static int check_restore(struct copy_src *s, const char *fmt)
{
    char *out = xprintf("%s/copy-restored.qcow2", workdir);
    int rc = compare("raw", s->path, fmt, out);
    free(out);
    return rc;
}

struct copy_row {
    const char *what, *fmt;
    double target;
    double (*ours)(struct copy_src *, const char *);
    double (*peer)(struct copy_src *, const char *);
    int (*check)(struct copy_src *, const char *);
};

static const struct copy_row copy_rows_def[] = {
    { "full backup vs qemu-img convert", "qcow2", 0.8, ours_full, peer_convert, check_full },
    { "full backup vs dd oflag=direct", "qcow2", 1.3, ours_full, peer_dd, check_full },
    { "full backup raw target vs convert -O raw", "raw", 0.8, ours_full, peer_convert,
      check_full },
    { "restore to new qcow2 vs convert", "qcow2", 0.8, ours_restore, peer_restore,
      check_restore },
};

static int copy_mismatches;

static void run_copy_row(const struct copy_row *r, struct copy_src *s, int runs)
{
    struct sample a[COPY_MAX_RUNS], b[COPY_MAX_RUNS];
    double ta[COPY_MAX_RUNS], tb[COPY_MAX_RUNS];
    char label[128], cells[5][32], notes[256];
    int wrong = 0;
    for (int n = 0; n < runs; n++) {
        if (n % 2 == 0)
            b[n] = measure(r->peer, s, r->fmt);
        a[n] = measure(r->ours, s, r->fmt);
        wrong |= r->check(s, r->fmt) < 0;
        if (n % 2 == 1)
            b[n] = measure(r->peer, s, r->fmt);
        ta[n] = a[n].t;
        tb[n] = b[n].t;
        if (getenv("BENCH_VERBOSE"))
            fprintf(stderr, "  %s (%s %ld MiB) run %d: ours %.3f s (+%.0f MiB cached), "
                    "peer %.3f s (+%.0f MiB)\n", r->what, layout_names[s->layout], s->data_mb,
                    n + 1, a[n].t, a[n].cache, b[n].t, b[n].cache);
    }
    copy_mismatches += wrong;
    double ma = median(ta, runs), mb = median(tb, runs);
    double ca[COPY_MAX_RUNS], cb[COPY_MAX_RUNS];
    for (int n = 0; n < runs; n++) {
        ca[n] = a[n].cache;
        cb[n] = b[n].cache;
    }
    snprintf(label, sizeof(label), "%s (%s, %ld MiB)", r->what, layout_names[s->layout],
             s->data_mb);
    snprintf(cells[0], 32, "%.3f/%.3f", ma, minimum(ta, runs));
    snprintf(cells[1], 32, "%.3f/%.3f", mb, minimum(tb, runs));
    snprintf(cells[2], 32, "%.2fx", ma / mb);
    snprintf(cells[3], 32, "<= %.1fx", r->target);
    snprintf(notes, sizeof(notes), "%s; min ratio %.2fx; cache %+.0f MiB (peer %+.0f)",
             wrong ? "MISMATCH" : ma / mb <= r->target ? "met" : "MISSED",
             minimum(ta, runs) / minimum(tb, runs), median(ca, runs), median(cb, runs));
    printf("| %-64s | %13s | %13s | %6s | %7s | %s\n", label, cells[0], cells[1], cells[2],
           cells[3], notes);
    fflush(stdout);
}

/* Returns the number of rows whose result differed from the source. */
int copy_rows(virConnectPtr conn)
{
    static const long sizes[] = { 256, 1024, 4096 };
    long max = env_long("BENCH_COPY_MAX_MB", 4096);
    int runs = (int)env_long("BENCH_COPY_RUNS", 3);
    const char *only = getenv("BENCH_COPY_LAYOUTS");   /* e.g. "contiguous,sparse" */
    if (max <= 0)
        return 0;
    copy_conn = conn;
    runs = runs < 1 ? 1 : runs > COPY_MAX_RUNS ? COPY_MAX_RUNS : runs;
    printf("\ncopy engine: raw sources of 2x their data, median/min of %d runs "
           "(seconds), ratio of medians\n\n", runs);
    printf("| %-64s | %13s | %13s | %6s | %7s | %s\n", "row", "ours med/min", "peer med/min",
           "ratio", "target", "notes");
    for (int l = CONTIGUOUS; l <= SPARSE; l++) {
        if (only && !strstr(only, layout_names[l]))
            continue;
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]) && sizes[i] <= max; i++) {
            struct copy_src s = { .layout = l, .data_mb = sizes[i] };
            s.path = xprintf("%s/copy-src.raw", workdir);
            make_layout(&s);
            define(&s);
            for (size_t r = 0; r < sizeof(copy_rows_def) / sizeof(copy_rows_def[0]); r++) {
                /* The restore row restores the qcow2 full backup. */
                if (copy_rows_def[r].ours == ours_restore)
                    ours_full(&s, "qcow2");
                run_copy_row(&copy_rows_def[r], &s, runs);
            }
            forget(&s.full);
            if (virDomainUndefineFlags(s.dom, VIR_DOMAIN_UNDEFINE_BACKUP) < 0)
                die("virDomainUndefineFlags");
            virDomainFree(s.dom);
            sh("rm -f '%s'/copy-*", workdir);
            free(s.path);
        }
    }
    return copy_mismatches;
}
