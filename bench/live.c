/*
 * live.c: the rows on one running QEMU domain (bench.c prints the table).
 *
 * The domain (qemu:///system, type='qemu' so TCG, no guest OS: it sits in
 * the firmware and never writes its disk) has one virtio qcow2 disk of
 * BENCH_LIVE_SIZE_MB MiB, BENCH_DATA_PCT percent of it written by qemu-io
 * before the domain starts. Guest writes go through QEMU: qemu-io on its
 * HMP monitor, through virDomainQemuMonitorCommand (no virsh process).
 * Before each of ours' backups, untimed, the disk is flushed and copied with
 * `qemu-img convert -U -O raw`: the backup must hold what that copy holds.
 *
 * Ours: the library backs the running domain up through libvirt's pull
 * mode: libvirt's backup job (with a checkpoint) exports the disk over NBD,
 * the library reads the export with its own client (one connection per
 * reader thread; an incremental reads only what the checkpoint's bitmap
 * marks), writes the qcow2 target and the digest index itself, and fsyncs
 * the target before it calls the backup completed.
 *
 * The peers:
 *  - libvirt's push mode driven by hand: `qemu-img create` of the qcow2
 *    target, virDomainBackupBegin (REUSE_EXTERNAL) with a checkpoint,
 *    virDomainGetJobStats every 10 ms until the job is gone, then the
 *    completed job's stats must say it completed, then an fdatasync of the
 *    target, as ours is durable when it completes; all timed. The row's
 *    notes give the peer's best run split into libvirt's job and the
 *    fdatasync (measured here, the fdatasync takes milliseconds: what QEMU
 *    wrote was already on disk when the job ended). The checkpoint is
 *    deleted after each run, untimed.
 *  - `virtnbdbackup -d DOM -l full -o DIR` (pull mode over NBD, its stream
 *    format); its checkpoints (virtnbdbackup.N) and folder are removed after
 *    each run, untimed. It refuses to run next to a checkpoint it did not
 *    make, so our full backup (and its checkpoint) is deleted before each
 *    of its runs, untimed. (Its output is not synced: the peer is timed
 *    as it runs.)
 *
 * After rows 5-7, the memory row of a live full backup (bench.c's rss_row:
 * a child process, its peak RSS over the backup), then row 8.
 *
 * After the rows the domain is destroyed and undefined with its checkpoints'
 * metadata and its managed backups (VIR_DOMAIN_UNDEFINE_BACKUP); on failure
 * or a signal, at exit, through libvirt alone.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/libvirt-qemu.h>

#include "bench.h"

#define URI "qemu:///system"
#define QEMU_IO "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend"
#define HAND_CHECKPOINT "bench-by-hand"
#define VIRTNBDBACKUP_CHECKPOINTS "virtnbdbackup."
#define FILL_PERIOD (16 * MiB)    /* the data: one run at the start of each period */

static virConnectPtr conn;
static struct disk live = { .name = "live", .fmt = "qcow2" };
static int skip;                   /* BENCH_LIVE=0 */

static void pause_10ms(void)
{
    const struct timespec t = { 0, 10 * 1000 * 1000 };
    nanosleep(&t, NULL);
}

static void die_virt(const char *what) __attribute__((noreturn));
static void die_virt(const char *what)
{
    fprintf(stderr, "bench: %s: %s\n", what, virGetLastErrorMessage());
    exit(1);
}

/* Connect now, so that a missing libvirtd fails the bench before it starts. */
void live_open(void)
{
    const char *v = getenv("BENCH_LIVE");
    skip = v && !strcmp(v, "0");
    if (skip)
        return;
    live.size_mb = env_long("BENCH_LIVE_SIZE_MB", 2048);
    if (live.size_mb < 16) {
        fprintf(stderr, "bench: need BENCH_LIVE_SIZE_MB >= 16\n");
        exit(2);
    }
    if (system("command -v virtnbdbackup >/dev/null") != 0) {
        fprintf(stderr, "bench: the live rows need virtnbdbackup: run "
                "scripts/install-deps.sh bench as root (or set BENCH_LIVE=0 to skip them)\n");
        exit(1);
    }
    if (!(conn = virConnectOpen(URI))) {
        fprintf(stderr, "bench: the live rows need libvirtd with the QEMU driver on %s: %s\n"
                "bench: start it as root with scripts/start-libvirtd.sh (make bench does), "
                "or set BENCH_LIVE=0 to skip these rows\n", URI, virGetLastErrorMessage());
        exit(1);
    }
}

const char *live_summary(void)
{
    static char s[160];
    if (skip)
        return "; live rows skipped (BENCH_LIVE=0)";
    snprintf(s, sizeof(s), "; live: running QEMU domain (TCG), %ld MiB virtio qcow2 disk",
             live.size_mb);
    return s;
}

/* Run qemu-io command @io on the disk inside QEMU, through the HMP monitor. */
static void guest_io(struct disk *d, const char *io)
{
    char *cmd = xprintf(QEMU_IO " \"%s\"", io), *out = NULL;
    if (virDomainQemuMonitorCommand(d->dom, cmd, &out, VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) < 0)
        die_virt(cmd);
    if (strstr(out, "rror") || strstr(out, "ailed")) {
        fprintf(stderr, "bench: %s: %s\n", cmd, out);
        exit(1);
    }
    free(out);
    free(cmd);
}

/* Flush QEMU's cache of the disk, then copy the disk: what the next backup must hold. */
static void snapshot(struct disk *d)
{
    guest_io(d, "flush");
    sh("qemu-img convert -U -f %s -O raw '%s' '%s'", d->fmt, d->src, d->saved);
}

/* The disk's writer: a guest write per block, then a new snapshot. */
static void write_guest(struct disk *d, const long long *offsets, long long n)
{
    char io[96];
    for (long long i = 0; i < n; i++) {
        snprintf(io, sizeof(io), "write -P 0x%02x %lld %lld", d->pattern, offsets[i], CHUNK);
        guest_io(d, io);
    }
    snapshot(d);
}

static int verify_snapshot(struct disk *d)
{
    return compare_leaf(d, "raw", d->saved);
}

/* Delete the domain's checkpoints whose names start with @prefix. */
static void delete_checkpoints(struct disk *d, const char *prefix)
{
    virDomainCheckpointPtr *cps = NULL;
    int n = virDomainListAllCheckpoints(d->dom, &cps, 0);
    if (n < 0)
        die_virt("virDomainListAllCheckpoints");
    for (int i = 0; i < n; i++) {
        if (!strncmp(virDomainCheckpointGetName(cps[i]), prefix, strlen(prefix)) &&
            virDomainCheckpointDelete(cps[i], 0) < 0)
            die_virt("virDomainCheckpointDelete");
        virDomainCheckpointFree(cps[i]);
    }
    free(cps);
}

/* The domain's job type now (@flags 0) or its last completed job's (COMPLETED). */
static int job_type(virDomainPtr dom, unsigned int flags, int *operation, char *error, size_t size)
{
    virTypedParameterPtr params = NULL;
    const char *msg = NULL;
    int n = 0, type;
    if (virDomainGetJobStats(dom, &type, &params, &n, flags) < 0)
        die_virt("virDomainGetJobStats");
    if (operation && virTypedParamsGetInt(params, n, VIR_DOMAIN_JOB_OPERATION, operation) != 1)
        *operation = -1;
    if (error)
        snprintf(error, size, "%s",
                 virTypedParamsGetString(params, n, VIR_DOMAIN_JOB_ERRMSG, &msg) == 1 ? msg : "?");
    virTypedParamsFree(params, n);
    return type;
}

/* Poll the domain's job every 10 ms until it is gone; exit unless it was a completed backup. */
static void wait_backup_job(virDomainPtr dom)
{
    char error[256];
    int type, op;
    while (job_type(dom, 0, NULL, NULL, 0) != VIR_DOMAIN_JOB_NONE)
        pause_10ms();
    type = job_type(dom, VIR_DOMAIN_JOB_STATS_COMPLETED, &op, error, sizeof(error));
    if (type != VIR_DOMAIN_JOB_COMPLETED || op != VIR_DOMAIN_JOB_OPERATION_BACKUP) {
        fprintf(stderr, "bench: libvirt's backup job ended with job type %d, operation %d: %s\n",
                type, op, error);
        exit(1);
    }
}

/* Row 5's peer's timed runs (bench_row's first call warms the cache,
 * untimed): the best total, and libvirt's job alone in that run. */
static int push_calls;
static double push_best = -1, push_job;

/*
 * Row 5's peer: libvirt's push-mode backup with a checkpoint, by hand,
 * then an fdatasync of its target (the library's backup is durable when
 * it completes: so is the peer's when its time stops).
 */
static double push_by_hand(struct disk *d)
{
    static const char checkpoint[] =
        "<domaincheckpoint><name>" HAND_CHECKPOINT "</name><disks>"
        "<disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>";
    char *target = fresh_file(d, "peer");
    char *xml = xprintf("<domainbackup mode='push'><disks>"
                        "<disk name='vda' backup='yes' type='file'><target file='%s'/>"
                        "<driver type='qcow2'/></disk></disks></domainbackup>", target);
    double t0, job;
    sync();
    t0 = now();
    sh("qemu-img create -q -f qcow2 '%s' %ldM", target, d->size_mb);
    if (virDomainBackupBegin(d->dom, xml, checkpoint, VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL) < 0)
        die_virt("virDomainBackupBegin");
    wait_backup_job(d->dom);
    job = now() - t0;
    fsync_path(target, 1);
    t0 = now() - t0;
    if (push_calls++ && (push_best < 0 || t0 < push_best)) {
        push_best = t0;
        push_job = job;
        snprintf(d->note, sizeof(d->note), "peer's best run: %.3f s, of which libvirt's job "
                 "%.3f s and the fdatasync %.3f s", t0, job, t0 - job);
    }
    delete_checkpoints(d, HAND_CHECKPOINT);
    free(xml);
    free(target);
    return t0;
}

/*
 * virtnbdbackup refuses to start while libvirt reports a backup block job
 * on a disk, which it may do for a moment after the domain's job ended: wait
 * for it to go (at most 10 s), and say so in the row's notes.
 */
static void wait_no_block_job(struct disk *d)
{
    virDomainBlockJobInfo info;
    double t0 = now(), waited;
    int rc;
    while ((rc = virDomainGetBlockJobInfo(d->dom, "vda", &info, 0)) > 0 && now() - t0 < 10)
        pause_10ms();
    if (rc < 0)
        die_virt("virDomainGetBlockJobInfo");
    waited = now() - t0;
    if (waited > 0.005)
        snprintf(d->note, sizeof(d->note), "waited %.2f s for libvirt to drop a block job first",
                 waited);
}

/* Row 6's peer: virtnbdbackup's full backup into a new folder. */
static double virtnbdbackup_full(struct disk *d)
{
    char *out = xprintf("%s/virtnbdbackup", workdir);
    double t;
    forget(&d->full);
    d->leaf = NULL;
    wait_no_block_job(d);
    t = timed_sh("virtnbdbackup -d '%s' -l full -o '%s' >'%s.log' 2>&1 || "
                 "{ tail -n 20 '%s.log' >&2; exit 1; }",
                 virDomainGetName(d->dom), out, out, out);
    delete_checkpoints(d, VIRTNBDBACKUP_CHECKPOINTS);
    sh("rm -rf '%s' '%s.log'", out, out);
    free(out);
    return t;
}

/* Row 7's setup: row 6's peer may have removed our full backup (it runs
 * last on some runs): take one again, untimed, to build on. */
static void ensure_full(struct disk *d)
{
    if (!d->full)
        full_ours(d);
}

static const struct row rows[] = {
    { "full backup vs libvirt push mode by hand + fsync", 1.0, NULL, full_ours, push_by_hand,
      verify_snapshot },
    { "full backup vs virtnbdbackup -l full", 0.33, NULL, full_ours, virtnbdbackup_full,
      verify_snapshot },
    { "incremental, 1% changed, vs full backup", 0.08, ensure_full, incr_ours, NULL,
      verify_snapshot },
};

/*
 * Row 8: the domain shut off, 1% changed by qemu-io on its image (QEMU's
 * block layer keeps the checkpoint's persistent bitmap up to date), an
 * incremental on the live full backup: through the bitmap (ours) vs the
 * same with the bitmap disabled, so the library compares every chunk with
 * the parent's digests (peer). Both are checked against the image.
 */
static void write_offline(struct disk *d, const long long *offsets, long long n)
{
    qemu_io_writes(d->fmt, d->src, d->pattern, offsets, n, CHUNK);
    sh("qemu-img convert -f %s -O raw '%s' '%s'", d->fmt, d->src, d->saved);
}

static void shut_off(struct disk *d)
{
    ensure_full(d);
    if (virDomainIsActive(d->dom) == 1 && virDomainShutdownFlags(d->dom, 0) < 0)
        die_virt("virDomainShutdown");
    /* No guest OS to act on ACPI: QEMU quits on destroy (SIGTERM) and
     * stores its persistent bitmaps in the image first. */
    if (virDomainIsActive(d->dom) == 1 && virDomainDestroy(d->dom) < 0)
        die_virt("virDomainDestroy");
    d->write = write_offline;
}

/* The full backup's checkpoint names the bitmap: libvirt-backup-<its uuid>. */
static void set_bitmap(struct disk *d, const char *how)
{
    char *xml = virDomainBackupGetXMLDesc(d->full, 0), *u = xml ? strstr(xml, "<uuid>") : NULL;
    if (!u)
        die("virDomainBackupGetXMLDesc");
    sh("qemu-img bitmap %s -f qcow2 '%s' 'libvirt-backup-%.36s'", how, d->src, u + 6);
    free(xml);
}

static double offline_digests(struct disk *d)
{
    double t;
    set_bitmap(d, "--disable");
    t = incr_ours(d);
    set_bitmap(d, "--enable");
    return t;
}

static const struct row offline_row = { "offline incremental, 1%, bitmap vs digests", 0.5,
                                        shut_off, incr_ours, offline_digests,
                                        verify_snapshot };

/* data_pct percent of the disk: one run of pattern bytes per FILL_PERIOD. */
static void fill(struct disk *d)
{
    long long n = d->size_mb * MiB / FILL_PERIOD, *offsets = spaced(n, FILL_PERIOD, 0);
    qemu_io_writes(d->fmt, d->src, 0x5a, offsets, n, FILL_PERIOD * data_pct / 100 / CHUNK * CHUNK);
    free(offsets);
}

/*
 * Destroy and undefine the domain, its checkpoints' metadata too; idempotent.
 * @managed: through the library, which also forgets the domain's backups;
 * else through libvirt alone, the way out at exit, on failure too (the
 * library's catalog goes with `make bench`'s): the library must not be
 * called from an atexit handler, its Rust thread-locals are gone by then and
 * it aborts. (The parentheses keep the header from routing the name to the
 * library.)
 */
static void remove_domain(int managed)
{
    const unsigned int flags = VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
    virDomainPtr dom = live.dom;
    if (dom) {
        if (virDomainIsActive(dom) == 1 && virDomainDestroy(dom) < 0)
            fprintf(stderr, "bench: virDomainDestroy: %s\n", virGetLastErrorMessage());
        if (managed ? virDomainUndefineFlags(dom, flags | VIR_DOMAIN_UNDEFINE_BACKUP) < 0
                    : (virDomainUndefineFlags)(dom, flags) < 0)
            fprintf(stderr, "bench: could not undefine %s: %s\n", virDomainGetName(dom),
                    managed ? virDomainBackupGetLastErrorMessage() : virGetLastErrorMessage());
        virDomainFree(dom);
        live.dom = NULL;
    }
    if (conn)
        virConnectClose(conn);
    conn = NULL;
}

static void remove_domain_at_exit(void)
{
    remove_domain(0);
}

/* After the rows: drop the backup handles, then remove the domain. */
static void teardown(void)
{
    if (live.leaf && live.leaf != live.full)
        virDomainBackupFree(live.leaf);
    if (live.full)
        virDomainBackupFree(live.full);
    live.leaf = live.full = NULL;
    remove_domain(1);
}

static void start(struct disk *d)
{
    char *xml;
    d->write = write_guest;
    d->src = xprintf("%s/src-live.qcow2", workdir);
    d->saved = xprintf("%s/saved-live.raw", workdir);
    sh("qemu-img create -q -f %s '%s' %ldM", d->fmt, d->src, d->size_mb);
    fill(d);
    xml = xprintf("<domain type='qemu'><name>libvirt-backup-bench-%d</name>"
                  "<memory unit='MiB'>64</memory>"
                  "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
                  "<devices><disk type='file' device='disk'><driver name='qemu' type='%s'/>"
                  "<source file='%s'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
                  (int)getpid(), d->fmt, d->src);
    atexit(remove_domain_at_exit);
    if (!(d->dom = virDomainDefineXML(conn, xml)))
        die_virt("virDomainDefineXML");
    if (virDomainCreate(d->dom) < 0)
        die_virt("virDomainCreate");
    free(xml);
    snapshot(d);
}

void live_rows(void)
{
    if (skip)
        return;
    start(&live);
    printf("\nrunning QEMU domain (live; row 8: then shut off)\n\n");
    print_header();
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++)
        bench_row(&rows[r], &live);
    /* A full backup of the running domain in a child process (pull mode:
     * the library's process reads QEMU's export and writes the target). */
    if (env_long("BENCH_RSS", 1))
        rss_row(URI, virDomainGetName(live.dom), "raw", live.saved, &live);
    bench_row(&offline_row, &live);
    teardown();
    free(live.src);
    free(live.saved);
}
