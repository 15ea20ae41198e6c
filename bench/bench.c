/*
 * bench.c: libvirt-backup against its peer, side by side, in one run.
 *
 * Two source images with the same content (a raw one and a qcow2 one), each
 * the disk vda of a test:///default domain (defined, never started, so the
 * library copies the data itself). For each source, one row per question:
 *
 *  1. full backup (CREATE_WAIT) vs `qemu-img convert -O qcow2` + sync of
 *     the same image (target <= 0.8x);
 *  2. incremental backup (parent: that full backup) after 1% of the data
 *     changed vs that full backup (ours vs ours); the notes give the
 *     incremental's bytes.written;
 *  3. restore of a 5-deep chain (full + 4 incrementals, ~1% changed before
 *     each) to a new qcow2 file vs `qemu-img convert -O qcow2` + sync of
 *     the chain's newest file (such a restore points the domain's vda at
 *     the new file; the bench points it back at the source, untimed);
 *  4. in-place restore (REWRITE_EXISTING_DISK) of the disk after 1% of it
 *     changed vs a full rewrite, `qemu-img convert -n` + sync of the same
 *     content over the disk.
 *
 * Then the memory rows (BENCH_RSS=0 skips them): a full backup of each of
 * those disks in a child process (this program again, `bench rss-child`),
 * on its own test:///default; the row shows the child's peak RSS over the
 * backup (VmHWM, reset through /proc/self/clear_refs just before it) less
 * its RSS before it, against 64 MiB per disk-copy.
 *
 * Then, on one running QEMU domain (qemu:///system, TCG, no guest OS; see
 * live.c), whose virtio qcow2 disk the library backs up through libvirt's
 * pull mode (libvirt's backup job exports the disk over NBD; the library
 * reads it with its own client, writes the target and the digest index, and
 * fsyncs the target before the backup completes):
 *
 *  5. full backup vs libvirt's push-mode backup driven by hand
 *     (virDomainBackupBegin with a checkpoint, job polled; QEMU writes the
 *     target) + an fdatasync of its target, as ours is durable when it
 *     completes; the notes give the peer's time without the fdatasync
 *     (target <= 1.0x);
 *  6. full backup vs `virtnbdbackup -l full` (pull mode over NBD too;
 *     target <= 0.33x, 3x faster);
 *  7. incremental backup after 1% of the data changed vs that full backup
 *     (target <= 0.08x);
 *     then the memory row of a full backup of the running domain, in a
 *     child process as above (the reads over NBD happen in it);
 *  8. the domain shut off, 1% changed offline (qemu-io on its image): an
 *     incremental through the checkpoint's persistent bitmap vs the same
 *     with the bitmap disabled (every chunk compared with the digests).
 *
 * Then the copy engine's rows (copy.c: data layouts x sizes, medians and
 * minima, page-cache growth, raw targets, an O_DIRECT dd peer), the cost of
 * the digest index at write time (tests/copy_bench.rs: the same copy with
 * and without hashing and the index file, target <= 1.10x) and the digest
 * index rows (tests/index_bench.rs: a 30-deep delta chain read vs a flat
 * index, a year of daily incrementals' index size); `make bench` runs the
 * two Rust bench tests after this program.
 *
 * "1% changed" is 1% of the data, written by qemu-io as 64 KiB blocks spread
 * evenly over the disk, with a new pattern byte each time (on the running
 * domain, through QEMU: qemu-io on its monitor). A restore is timed up to an
 * fsync of the file it wrote, like the peer's `sync FILE` (and like a backup,
 * which the library fsyncs before calling it completed).
 *
 * Each side runs BENCH_RUNS times, each after a sync(), taking turns at
 * going first (freeing the last run's files, with online discard, slows
 * whoever runs next); the
 * table shows the best time of each side (timings on a shared 2-core machine
 * have large additive spikes, which the minimum filters out) and the ratio
 * ours/peer (lower is better) next to its target. After each of ours' runs
 * the row checks the result with `qemu-img compare` against the source as it
 * was at backup time (for the running domain: a raw copy taken right before
 * the backup, after a flush); a mismatch shows as MISMATCH in the row's
 * notes and makes the program exit 1 once the table is complete. A restore that fails with
 * VIR_ERR_NO_SUPPORT shows as "n/a (reason)".
 *
 * Environment: BENCH_SIZE_MB (virtual disk size, default 2048),
 * BENCH_DATA_PCT (share of the disk holding data, default 50),
 * BENCH_RUNS (default 4), BENCH_DIR (parent of the work folder, default
 * /var/tmp), BENCH_VERBOSE (print every run), BENCH_LIVE_SIZE_MB (the
 * running domain's disk, default 2048), BENCH_LIVE=0 (skip rows 5-8; by
 * default they run and an unreachable libvirtd is an error), BENCH_MAIN=0
 * (skip rows 1-4), BENCH_RSS=0 (skip the memory rows), and the copy
 * engine's rows' knobs (see copy.c: BENCH_COPY_MAX_MB, BENCH_COPY_RUNS,
 * BENCH_COPY_LAYOUTS).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAX_RUNS 16
#define CHAIN_DEPTH 5         /* backups in the chain that row 3 restores */

char *workdir;
long data_pct;
static long size_mb;
static int runs;
static int verbose;
static int mismatches;

long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

void die(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what,
            virDomainBackupGetLastErrorCode() ? virDomainBackupGetLastErrorMessage() : strerror(errno));
    exit(1);
}

static char *vxprintf(const char *fmt, va_list ap)
{
    char *s;
    if (vasprintf(&s, fmt, ap) < 0)
        die("vasprintf");
    return s;
}

/* A malloc'd, formatted string. */
char *xprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    s = vxprintf(fmt, ap);
    va_end(ap);
    return s;
}

/* Run a formatted shell command; exit on failure. */
void sh(const char *fmt, ...)
{
    va_list ap;
    char *cmd;
    va_start(ap, fmt);
    cmd = vxprintf(fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench: command failed: %s\n", cmd);
        exit(1);
    }
    free(cmd);
}

/* Like sh(), timed, after a sync() so that no side pays for the other. */
double timed_sh(const char *fmt, ...)
{
    va_list ap;
    char *cmd;
    double t0;
    va_start(ap, fmt);
    cmd = vxprintf(fmt, ap);
    va_end(ap);
    sync();
    t0 = now();
    sh("%s", cmd);
    t0 = now() - t0;
    free(cmd);
    return t0;
}

/* fsync() @path (fdatasync() if @data_only); exit on failure. */
void fsync_path(const char *path, int data_only)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0 || (data_only ? fdatasync(fd) : fsync(fd)) < 0)
        die(path);
    close(fd);
}

static double best(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
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

/* One qemu-io run on @path: @n writes of @len bytes of @pattern at @offsets. */
void qemu_io_writes(const char *fmt, const char *path, int pattern,
                    const long long *offsets, long long n, long long len)
{
    size_t cap = n * 64 + strlen(path) + 64, used;
    char *cmd = malloc(cap);
    if (!cmd)
        die("malloc");
    used = snprintf(cmd, cap, "qemu-io -f %s", fmt);
    for (long long i = 0; i < n; i++)
        used += snprintf(cmd + used, cap - used, " -c 'write -P 0x%02x %lld %lld'",
                         pattern, offsets[i], len);
    snprintf(cmd + used, cap - used, " '%s' >/dev/null", path);
    sh("%s", cmd);
    free(cmd);
}

/* The disk's writer for images no process has open. */
static void write_image(struct disk *d, const long long *offsets, long long n)
{
    qemu_io_writes(d->fmt, d->src, d->pattern, offsets, n, CHUNK);
}

/* @n offsets, @stride apart from @first; malloc'd. */
long long *spaced(long long n, long long stride, long long first)
{
    long long *offsets = malloc(n * sizeof(*offsets));
    if (!offsets)
        die("malloc");
    for (long long i = 0; i < n; i++)
        offsets[i] = first + i * stride;
    return offsets;
}

/*
 * Change 1% of the data of @d's disk: 64 KiB writes of a new pattern byte,
 * one every disk/count bytes, shifted by @slot blocks so that different slots
 * touch different blocks.
 */
static void change_1pct(struct disk *d, int slot)
{
    long long size = d->size_mb * MiB;
    long long count = size * data_pct / 100 / 100 / CHUNK;
    long long stride, *offsets;
    count = count < 1 ? 1 : count;
    stride = size / count / CHUNK * CHUNK;
    offsets = spaced(count, stride, slot % (stride / CHUNK) * CHUNK);
    d->pattern = d->pattern % 0xfe + 1;
    d->write(d, offsets, count);
    free(offsets);
}

/* The text between @open and the next @close in @xml, malloc'd. */
static char *xml_value(const char *xml, const char *open, const char *close)
{
    const char *s = strstr(xml, open), *e;
    if (!s || !(e = strstr(s += strlen(open), close))) {
        fprintf(stderr, "bench: no %s in backup XML:\n%s\n", open, xml);
        exit(1);
    }
    return strndup(s, e - s);
}

static char *backup_field(virDomainBackupPtr b, const char *open, const char *close)
{
    char *xml = virDomainBackupGetXMLDesc(b, 0), *v;
    if (!xml)
        die("virDomainBackupGetXMLDesc");
    v = xml_value(xml, open, close);
    free(xml);
    return v;
}

static char *backup_uuid(virDomainBackupPtr b)
{
    return backup_field(b, "<uuid>", "</uuid>");
}

/* The file the backup stored vda in. */
char *backup_file(virDomainBackupPtr b)
{
    return backup_field(b, "<target file='", "'");
}

static unsigned long long bytes_written(virDomainBackupPtr b)
{
    virTypedParameter params[16];
    int n = 16;
    unsigned long long v = 0;
    if (virDomainBackupGetParameters(b, params, &n, 0) < 0)
        die("virDomainBackupGetParameters");
    if (virTypedParamsGetULLong(params, n, "bytes.written", &v) != 1)
        die("no bytes.written parameter");
    virTypedParamsClear(params, n);
    return v;
}

/* Delete a backup and its data, if there is one. */
void forget(virDomainBackupPtr *b)
{
    if (!*b)
        return;
    if (virDomainBackupDelete(*b, 0) < 0)
        die("virDomainBackupDelete");
    virDomainBackupFree(*b);
    *b = NULL;
}

/* The path workdir/@name-DISK.qcow2, with no file there; malloc'd. */
char *fresh_file(const struct disk *d, const char *name)
{
    char *path = xprintf("%s/%s-%s.qcow2", workdir, name, d->name);
    sh("rm -f '%s'", path);
    return path;
}

/* A managed backup of vda into fresh_file(@name) (on top of @parent if any); seconds. */
static double backup(struct disk *d, virDomainBackupPtr parent, const char *name,
                     virDomainBackupPtr *out)
{
    char *uuid = parent ? backup_uuid(parent) : NULL, *target = fresh_file(d, name);
    char *xml = xprintf("<domainbackup>%s%s%s<disks><disk name='vda'>"
                        "<target file='%s'/></disk></disks></domainbackup>",
                        uuid ? "<parent><uuid>" : "", uuid ? uuid : "",
                        uuid ? "</uuid></parent>" : "", target);
    double t0;
    sync();
    t0 = now();
    if (!(*out = virDomainBackupCreateXML(d->dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT)))
        die("virDomainBackupCreateXML");
    t0 = now() - t0;
    free(xml);
    free(target);
    free(uuid);
    return t0;
}

/*
 * virDomainBackupRestore of @d's leaf backup (with @disks, if any, inside
 * the XML), then an fsync of @written; seconds, or NA if not supported.
 */
static double restore(struct disk *d, const char *disks, unsigned int flags, const char *written)
{
    const char *prefix = "this function is not supported by the connection driver: ";
    char *uuid = backup_uuid(d->leaf);
    char *xml = xprintf("<domainbackup><uuid>%s</uuid>%s</domainbackup>", uuid, disks);
    const char *msg;
    double t0;
    sync();
    t0 = now();
    if (virDomainBackupRestore(xml, flags) < 0) {
        if (virDomainBackupGetLastErrorCode() != VIR_ERR_NO_SUPPORT)
            die("virDomainBackupRestore");
        msg = virDomainBackupGetLastErrorMessage();
        if (!strncmp(msg, prefix, strlen(prefix)))
            msg += strlen(prefix);
        snprintf(d->note, sizeof(d->note), "n/a (%s)", msg);
        t0 = NA;
    } else {
        fsync_path(written, 0);
        t0 = now() - t0;
    }
    free(xml);
    free(uuid);
    return t0;
}

/* 0 if the two images have the same content, else -1 (and say so). */
int compare(const char *fmt_a, const char *a, const char *fmt_b, const char *b)
{
    char *cmd = xprintf("qemu-img compare -q -f %s -F %s '%s' '%s'", fmt_a, fmt_b, a, b);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "bench: MISMATCH: %s differs from %s (%s: status %d)\n", b, a, cmd, rc);
    free(cmd);
    return rc ? -1 : 0;
}

/* The peer's copy: `qemu-img convert` and a sync of its output; seconds. */
static double convert(const char *opts, const char *fmt_in, const char *in,
                      const char *fmt_out, const char *out)
{
    return timed_sh("qemu-img convert %s -f %s -O %s '%s' '%s' && sync '%s'",
                    opts, fmt_in, fmt_out, in, out, out);
}

/* The chain's newest backup holds what the disk held: convert it. */
static double convert_leaf(struct disk *d, const char *opts, const char *fmt, const char *out)
{
    char *leaf = backup_file(d->leaf);
    double t = convert(opts, "qcow2", leaf, fmt, out);
    free(leaf);
    return t;
}

/* (Re)define @d's domain, inactive, with its disk vda on d->src. */
static void define_domain(virConnectPtr conn, struct disk *d)
{
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    char *xml;
    virDomainPtr dom;
    if (d->dom && virDomainGetUUIDString(d->dom, uuid) < 0)
        die("virDomainGetUUIDString");
    xml = xprintf("<domain type='test'><name>bench-%s</name>%s%s%s<memory>65536</memory>"
                  "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                  "<driver name='qemu' type='%s'/><source file='%s'/><target dev='vda'/>"
                  "</disk></devices></domain>", d->fmt, *uuid ? "<uuid>" : "", uuid,
                  *uuid ? "</uuid>" : "", d->fmt, d->src);
    if (!(dom = virDomainDefineXML(conn, xml)))
        die("virDomainDefineXML");
    if (d->dom)
        virDomainFree(d->dom);
    d->dom = dom;
    free(xml);
}

/* Row 1: full backups. */

double full_ours(struct disk *d)
{
    double t;
    forget(&d->full);
    t = backup(d, NULL, "full", &d->full);
    d->leaf = d->full;
    d->depth = 1;
    if (!d->full_best || t < d->full_best)
        d->full_best = t;
    return t;
}

static double full_peer(struct disk *d)
{
    char *out = fresh_file(d, "peer");
    double t = convert("", d->fmt, d->src, "qcow2", out);
    free(out);
    return t;
}

/* 0 if the chain's newest backup holds what @path holds, else -1. */
int compare_leaf(struct disk *d, const char *fmt, const char *path)
{
    char *leaf = backup_file(d->leaf);
    int rc = compare(fmt, path, "qcow2", leaf);
    free(leaf);
    return rc;
}

static int verify_leaf(struct disk *d)
{
    return compare_leaf(d, d->fmt, d->src);
}

/* Row 2: an incremental on top of the full backup, same 1% changed each run. */

double incr_ours(struct disk *d)
{
    double t;
    change_1pct(d, 0);
    if (d->leaf != d->full)
        forget(&d->leaf);
    t = backup(d, d->full, "incr1", &d->leaf);
    d->depth = 2;
    snprintf(d->note, sizeof(d->note), "bytes.written %.1f MiB",
             bytes_written(d->leaf) / (double)MiB);
    return t;
}

/* Row 3: restore the whole chain to a new file. */

static void extend_chain(struct disk *d)
{
    virDomainBackupPtr parent;
    char name[32];
    while (d->depth < CHAIN_DEPTH) {
        parent = d->leaf;
        change_1pct(d, d->depth);
        snprintf(name, sizeof(name), "incr%d", d->depth++);
        backup(d, parent, name, &d->leaf);
        if (parent != d->full)
            virDomainBackupFree(parent);
    }
    d->saved = xprintf("%s/saved-%s.%s", workdir, d->name, d->fmt);
    sh("cp --sparse=always '%s' '%s'", d->src, d->saved);
}

static double chain_ours(struct disk *d)
{
    char *disks;
    double t;
    free(d->restored);
    d->restored = fresh_file(d, "restored");
    disks = xprintf("<disks><disk name='vda'><target file='%s'/><driver type='qcow2'/>"
                    "</disk></disks>", d->restored);
    t = restore(d, disks, 0, d->restored);
    /* A restore into the domain points its disk at the restored file: move it back. */
    define_domain(virDomainGetConnect(d->dom), d);
    free(disks);
    return t;
}

static double chain_peer(struct disk *d)
{
    char *out = fresh_file(d, "peer");
    double t = convert_leaf(d, "", "qcow2", out);
    free(out);
    return t;
}

static int verify_restored(struct disk *d)
{
    return compare(d->fmt, d->saved, "qcow2", d->restored);
}

/* Row 4: restore over the disk itself after 1% of it changed. */

static double inplace_ours(struct disk *d)
{
    change_1pct(d, CHAIN_DEPTH);
    return restore(d, "", VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK, d->src);
}

static double inplace_peer(struct disk *d)
{
    change_1pct(d, CHAIN_DEPTH);
    return convert_leaf(d, "-n", d->fmt, d->src);
}

static int verify_inplace(struct disk *d)
{
    return compare(d->fmt, d->saved, d->fmt, d->src);
}

static const struct row rows[] = {
    { "full backup vs qemu-img convert + sync", 0.8, NULL, full_ours, full_peer, verify_leaf },
    { "incremental, 1% changed, vs full backup", 0.2, NULL, incr_ours, NULL, verify_leaf },
    { "restore 5-deep chain vs convert of leaf", 1.1, extend_chain, chain_ours, chain_peer,
      verify_restored },
    { "in-place restore, 1% differs, vs rewrite", 0, NULL, inplace_ours, inplace_peer,
      verify_inplace },
};

void print_cells(const char *label, const char *ours, const char *peer,
                 const char *ratio, const char *target, const char *notes)
{
    printf("| %-56s | %10s | %10s | %7s | %8s | %s\n", label, ours, peer, ratio, target, notes);
    fflush(stdout);
}

/* The main table's header (the live rows print it again after the copy rows). */
void print_header(void)
{
    print_cells("row", "ours", "peer", "ratio", "target", "notes");
    print_cells("--------------------------------------------------------", "----------",
                "----------", "-------", "--------", "-----");
}

/* "n/a" for NA, else @v in @fmt; into @buf. */
static const char *cell(char *buf, size_t size, const char *fmt, double v)
{
    if (v == NA)
        return "n/a";
    snprintf(buf, size, fmt, v);
    return buf;
}

static void print_row(const struct row *r, const struct disk *d, double ours, double peer,
                      int wrong)
{
    char label[96], t_ours[32], t_peer[32], ratio[32], target[32], notes[300];
    double q = ours == NA ? NA : ours / peer;
    const char *verdict = wrong ? "MISMATCH (result differs from the source)"
                          : q == NA || !r->target ? ""
                          : q <= r->target ? "met" : "MISSED";
    snprintf(label, sizeof(label), "%s (%s)", r->what, d->name);
    snprintf(notes, sizeof(notes), "%s%s%s", verdict, *verdict && d->note[0] ? "; " : "", d->note);
    print_cells(label, cell(t_ours, sizeof(t_ours), "%.3f s", ours),
                cell(t_peer, sizeof(t_peer), "%.3f s", peer),
                cell(ratio, sizeof(ratio), "%.2fx", q),
                r->target ? cell(target, sizeof(target), "<= %.2fx", r->target) : "-", notes);
}

void bench_row(const struct row *r, struct disk *d)
{
    double a[MAX_RUNS], b[MAX_RUNS];
    int n = 0, wrong = 0;
    d->note[0] = '\0';
    if (r->setup)
        r->setup(d);
    if (r->peer)
        r->peer(d);   /* warm the page cache for both sides */
    do {   /* runs >= 1; who goes first alternates, as freeing the last
            * run's files (online discard) slows whoever runs next */
        if (n % 2 == 0)
            b[n] = r->peer ? r->peer(d) : d->full_best;
        /* Check ours right away: a peer may remove what ours made. */
        a[n] = r->ours(d);
        if (a[n] != NA)
            wrong |= r->verify(d) < 0;
        if (n % 2 == 1)
            b[n] = r->peer ? r->peer(d) : d->full_best;
        if (verbose)
            fprintf(stderr, "  %s (%s) run %d: ours %.3f s, peer %.3f s\n",
                    r->what, d->name, n + 1, a[n] == NA ? 0 : a[n], b[n]);
        if (a[n++] == NA)
            break;
    } while (n < runs);
    mismatches += wrong;
    print_row(r, d, a[n - 1] == NA ? NA : best(a, n), best(b, n), wrong);
}

/* Drop the handles; undefining with UNDEFINE_BACKUP forgets the backups. */
static void release_disk(struct disk *d)
{
    if (d->leaf != d->full)
        virDomainBackupFree(d->leaf);
    virDomainBackupFree(d->full);
    if (virDomainUndefineFlags(d->dom, VIR_DOMAIN_UNDEFINE_BACKUP) < 0)
        die("virDomainUndefineFlags");
    virDomainFree(d->dom);
    free(d->src);
    free(d->saved);
    free(d->restored);
}

static void remove_workdir(void)
{
    char *cmd = xprintf("rm -rf '%s'", workdir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: could not remove %s\n", workdir);
    free(cmd);
    free(workdir);
}

/*
 * SIGINT, SIGTERM, SIGHUP: exit, so that the atexit handlers remove the
 * work folder and the running domain (a second signal kills outright).
 */
static void exit_on_signal(int sig)
{
    exit(128 + sig);
}

static void exit_on_signals(void)
{
    struct sigaction sa = { .sa_handler = exit_on_signal, .sa_flags = SA_RESETHAND };
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

/* Memory rows: one full backup in a child process, its peak RSS. */

/* A "Vm...:" field of /proc/self/status, in KiB (-1 if absent). */
static long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f)
        die("/proc/self/status");
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, field, strlen(field)) && sscanf(line + strlen(field), "%ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/*
 * The child (`bench rss-child URI DOMAIN TARGET FMT SOURCE`): connect to
 * URI, define DOMAIN (a domain XML, for test:///default) or look it up (a
 * name), reset the peak RSS (5 into /proc/self/clear_refs), back vda up
 * into TARGET (CREATE_WAIT), and print "RSS-before peak-RSS" in KiB and
 * the backup's seconds on stdout; then check the backup against SOURCE
 * (format FMT) and delete it. Exit 0 if the backup was right.
 */
static int rss_child(char **argv)
{
    const char *uri = argv[0], *domain = argv[1], *target = argv[2];
    char *xml = xprintf("<domainbackup><disks><disk name='vda'><target file='%s'/>"
                        "<driver type='qcow2'/></disk></disks></domainbackup>", target);
    virConnectPtr c = virConnectOpen(uri);
    virDomainPtr dom;
    virDomainBackupPtr b;
    long before;
    int fd, rc;
    double t0;
    if (!c)
        die(uri);
    dom = strchr(domain, '<') ? virDomainDefineXML(c, domain) : virDomainLookupByName(c, domain);
    if (!dom)
        die("the memory row's domain");
    sync();
    before = status_kib("VmRSS:");
    if ((fd = open("/proc/self/clear_refs", O_WRONLY)) >= 0) {
        if (write(fd, "5", 1) != 1)
            fprintf(stderr, "bench: could not reset the peak RSS: %s\n", strerror(errno));
        close(fd);
    }
    t0 = now();
    if (!(b = virDomainBackupCreateXML(dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT)))
        die("virDomainBackupCreateXML");
    t0 = now() - t0;
    printf("%ld %ld %.3f\n", before, status_kib("VmHWM:"), t0);
    fflush(stdout);
    rc = compare(argv[3], argv[4], "qcow2", target);
    if (virDomainBackupDelete(b, 0) < 0)
        die("virDomainBackupDelete");
    virDomainBackupFree(b);
    if (strchr(domain, '<') && virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP) < 0)
        die("virDomainUndefineFlags");
    virDomainFree(dom);
    virConnectClose(c);
    free(xml);
    return rc ? 1 : 0;
}

/*
 * A memory row: a full backup of @domain's vda (see rss_child) on @uri in a
 * child process; its peak RSS over the backup less its RSS before. @src
 * (@fmt) holds what the backup must hold; @d names the row and gets its note.
 */
void rss_row(const char *uri, const char *domain, const char *fmt, const char *src,
             struct disk *d)
{
    char *target = fresh_file(d, "rss"), label[96], mib[32], notes[300];
    long before = 0, peak = 0;
    double t = 0, grew;
    int fds[2], st, got;
    pid_t pid;
    FILE *f;
    if (pipe(fds) < 0)
        die("pipe");
    fflush(NULL);
    if ((pid = fork()) < 0)
        die("fork");
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/proc/self/exe", "bench", "rss-child", uri, domain, target, fmt, src, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    if (!(f = fdopen(fds[0], "r")))
        die("fdopen");
    got = fscanf(f, "%ld %ld %lf", &before, &peak, &t) == 3;
    fclose(f);
    if (waitpid(pid, &st, 0) < 0)
        die("waitpid");
    if (!got || !WIFEXITED(st) || (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 1)) {
        fprintf(stderr, "bench: the memory row's child failed (status %d)\n", st);
        exit(1);
    }
    mismatches += WEXITSTATUS(st) != 0;
    grew = (peak - before) / 1024.0;
    snprintf(label, sizeof(label), "memory per disk-copy, peak RSS (%s)", d->name);
    snprintf(mib, sizeof(mib), "%.1f MiB", grew);
    snprintf(notes, sizeof(notes), "%s; full backup of a %ld MiB disk in a child process, "
             "%.3f s; RSS %.1f MiB before, peak %.1f MiB",
             WEXITSTATUS(st) ? "MISMATCH (result differs from the source)"
             : grew <= RSS_TARGET_MIB ? "met" : "MISSED",
             d->size_mb, t, before / 1024.0, peak / 1024.0);
    print_cells(label, mib, "-", "-", "<=" XSTR(RSS_TARGET_MIB) " MiB", notes);
    free(target);
}

/* The memory rows of the offline disks: each defined anew in the child's
 * own test:///default (the driver's state is per process). */
static void offline_rss_rows(struct disk *disks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *xml = xprintf("<domain type='test'><name>bench-rss-%s</name><memory>65536</memory>"
                            "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                            "<driver name='qemu' type='%s'/><source file='%s'/><target dev='vda'/>"
                            "</disk></devices></domain>", disks[i].fmt, disks[i].fmt, disks[i].src);
        rss_row("test:///default", xml, disks[i].fmt, disks[i].src, &disks[i]);
        free(xml);
    }
}

static void make_workdir(void)
{
    const char *parent = getenv("BENCH_DIR") && *getenv("BENCH_DIR") ? getenv("BENCH_DIR") : "/var/tmp";
    workdir = xprintf("%s/libvirt-backup-bench.XXXXXX", parent);
    if (!mkdtemp(workdir))
        die("mkdtemp");
    atexit(remove_workdir);
}

int main(int argc, char **argv)
{
    struct disk disks[] = { { .name = "raw", .fmt = "raw", .write = write_image },
                            { .name = "qcow2", .fmt = "qcow2", .write = write_image } };
    const size_t ndisks = sizeof(disks) / sizeof(disks[0]);
    virConnectPtr conn;
    struct rusage ru;

    if (argc == 7 && !strcmp(argv[1], "rss-child"))
        return rss_child(argv + 2);

    size_mb = env_long("BENCH_SIZE_MB", 2048);
    data_pct = env_long("BENCH_DATA_PCT", 50);
    runs = (int)env_long("BENCH_RUNS", 4);
    verbose = getenv("BENCH_VERBOSE") != NULL;
    if (runs < 1 || runs > MAX_RUNS)
        runs = 3;
    if (size_mb < 16 || data_pct < 1 || data_pct > 100) {
        fprintf(stderr, "bench: need BENCH_SIZE_MB >= 16 and 1 <= BENCH_DATA_PCT <= 100\n");
        return 2;
    }
    live_open();
    exit_on_signals();
    make_workdir();
    for (size_t i = 0; i < ndisks; i++) {
        disks[i].src = xprintf("%s/src.%s", workdir, disks[i].fmt);
        disks[i].size_mb = size_mb;
    }
    make_raw(disks[0].src, size_mb, data_pct);
    sh("qemu-img convert -f raw -O qcow2 '%s' '%s'", disks[0].src, disks[1].src);
    if (!(conn = virConnectOpen("test:///default")))
        die("virConnectOpen");
    for (size_t i = 0; i < ndisks; i++)
        define_domain(conn, &disks[i]);

    printf("libvirt-backup benchmark: %ld MiB disk, %ld%% data, best of %d runs%s\n\n",
           size_mb, data_pct, runs, live_summary());
    print_header();
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]) && env_long("BENCH_MAIN", 1); r++)
        for (size_t i = 0; i < ndisks; i++)
            bench_row(&rows[r], &disks[i]);
    if (env_long("BENCH_RSS", 1))
        offline_rss_rows(disks, ndisks);
    mismatches += copy_rows(conn);
    /* The whole process: the copies ran in it, with their bounded buffers
     * (the live rows' copies run in QEMU). */
    getrusage(RUSAGE_SELF, &ru);
    for (size_t i = 0; i < ndisks; i++)
        release_disk(&disks[i]);
    virConnectClose(conn);
    sh("rm -f '%s'/*", workdir);   /* room for the live rows */

    live_rows();
    printf("\npeak resident memory of the process that ran the backups: %.1f MiB\n",
           ru.ru_maxrss / 1024.0);
    if (mismatches)
        fprintf(stderr, "bench: %d row(s) gave a wrong result\n", mismatches);
    return mismatches ? 1 : 0;
}
