/*
 * common.h: helpers shared by the C tests of libvirt-backup.
 *
 * Every test program includes this file first. It gives:
 *  - CHECK-style assertions that print file:line, the failed expression and
 *    the library's last error, count failures and keep going;
 *  - EXPECT_*_FAIL macros that check a call failed with a given
 *    virErrorNumber (virDomainBackupGetLastErrorCode());
 *  - disk helpers (qemu-img create, pwrite / qemu-io data, qemu-img compare,
 *    allocated size);
 *  - domain helpers on libvirt's test driver, and QEMU domains on
 *    qemu:///system (guest writes through QEMU's monitor, checkpoints,
 *    libvirt jobs, a big image whose backup job runs for seconds);
 *  - NBD helpers (libnbd's nbdcopy and nbdinfo, a free tcp port);
 *  - tree_list() / content_list(): every file under the work folder and
 *    the catalog (names, or names with SHA-256), to check that a failed call
 *    created, removed or changed nothing;
 *  - backup helpers: XML fields (parent, each disk's backupmode and
 *    target), typed parameters, listings as description labels.
 *
 * The environment comes from c-tests/run.sh: LIBVIRT_BACKUP_DIR (the
 * catalog, private to this program) and TEST_WORKDIR (a private scratch
 * folder for disks and targets).
 */
#ifndef LIBVIRT_BACKUP_C_TESTS_COMMON_H
#define LIBVIRT_BACKUP_C_TESTS_COMMON_H

#define _GNU_SOURCE

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvirt-backup/libvirt-backup.h>

#define MiB (1024LL * 1024LL)
#define GiB (1024LL * MiB)

/* ------------------------------------------------------------------ */
/* Assertions                                                          */
/* ------------------------------------------------------------------ */

static int t_checks;
static int t_failures;
static const char *t_section = "";

/* Name the group of checks that follows (printed with failures). */
static inline void section(const char *name)
{
    t_section = name;
    printf("--- %s\n", name);
    fflush(stdout);
}

static inline const char *err_name(int code)
{
    switch (code) {
    case VIR_ERR_OK: return "VIR_ERR_OK";
    case VIR_ERR_INTERNAL_ERROR: return "VIR_ERR_INTERNAL_ERROR";
    case VIR_ERR_NO_SUPPORT: return "VIR_ERR_NO_SUPPORT";
    case VIR_ERR_INVALID_ARG: return "VIR_ERR_INVALID_ARG";
    case VIR_ERR_OPERATION_FAILED: return "VIR_ERR_OPERATION_FAILED";
    case VIR_ERR_XML_ERROR: return "VIR_ERR_XML_ERROR";
    case VIR_ERR_NO_DOMAIN: return "VIR_ERR_NO_DOMAIN";
    case VIR_ERR_OPERATION_INVALID: return "VIR_ERR_OPERATION_INVALID";
    case VIR_ERR_OPERATION_ABORTED: return "VIR_ERR_OPERATION_ABORTED";
    case VIR_ERR_NO_DOMAIN_BACKUP: return "VIR_ERR_NO_DOMAIN_BACKUP";
    case VIR_ERR_NO_STORAGE_POOL: return "VIR_ERR_NO_STORAGE_POOL";
    default: return "(other)";
    }
}

static inline void t_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    t_failures++;
    fflush(stdout);
    fprintf(stderr, "FAIL %s:%d [%s]: ", file, line, t_section);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
}

/* Print the library's last error with a failure (captured by the caller
 * before anything else can reset it). */
static inline void t_fail_lasterr(const char *file, int line, const char *what,
                                  int code, const char *msg)
{
    t_fail(file, line, "%s  (last error: %s %d: %s)", what, err_name(code), code,
           msg ? msg : "(null)");
}

static inline bool t_check(bool ok, const char *expr, const char *file, int line)
{
    t_checks++;
    if (!ok) {
        int code = virDomainBackupGetLastErrorCode();
        t_fail_lasterr(file, line, expr, code, virDomainBackupGetLastErrorMessage());
    }
    return ok;
}

/* CHECK(cond): record a failure if cond is false; evaluates to cond. */
#define CHECK(cond) t_check(!!(cond), #cond, __FILE__, __LINE__)

/* CHECKF(cond, fmt, ...): as CHECK with an explanation. */
#define CHECKF(cond, ...)                                                   \
    ((t_checks++, (cond)) ? true                                            \
                          : (t_fail(__FILE__, __LINE__, __VA_ARGS__), false))

/* Check that the call that just returned its failure sentinel set the last
 * error to @code; @failed says whether it returned the sentinel. */
static inline bool t_check_err(bool failed, int code, const char *expr,
                               const char *file, int line)
{
    int got = virDomainBackupGetLastErrorCode();
    const char *msg = virDomainBackupGetLastErrorMessage();
    t_checks++;
    if (!failed) {
        t_fail(file, line, "%s: expected failure with %s (%d), but it succeeded",
               expr, err_name(code), code);
        return false;
    }
    if (got != code) {
        t_fail(file, line, "%s: expected %s (%d), got %s (%d): %s", expr,
               err_name(code), code, err_name(got), got, msg ? msg : "(null)");
        return false;
    }
    if (!msg || !*msg || strcmp(msg, "no error") == 0) {
        t_fail(file, line, "%s: failed with %s but without a message", expr,
               err_name(code));
        return false;
    }
    return true;
}

/* A call returning virDomainBackupPtr must fail with @code. */
#define EXPECT_BACKUP_FAIL(expr, code)                                      \
    do {                                                                    \
        virDomainBackupPtr t_b_ = (expr);                                   \
        t_check_err(t_b_ == NULL, (code), #expr, __FILE__, __LINE__);       \
        if (t_b_)                                                           \
            virDomainBackupFree(t_b_);                                      \
    } while (0)

/* A call returning int must return -1 with @code. */
#define EXPECT_INT_FAIL(expr, code)                                         \
    do {                                                                    \
        int t_r_ = (expr);                                                  \
        t_check_err(t_r_ == -1, (code), #expr, __FILE__, __LINE__);         \
    } while (0)

/* A call returning a malloc'd string must fail with @code. */
#define EXPECT_STR_FAIL(expr, code)                                         \
    do {                                                                    \
        char *t_s_ = (expr);                                                \
        t_check_err(t_s_ == NULL, (code), #expr, __FILE__, __LINE__);       \
        free(t_s_);                                                         \
    } while (0)

/* The last error's message contains @sub. */
#define EXPECT_MSG_CONTAINS(sub)                                            \
    do {                                                                    \
        const char *t_m_ = virDomainBackupGetLastErrorMessage();            \
        CHECKF(t_m_ && strstr(t_m_, (sub)),                                 \
               "last error message \"%s\" does not contain \"%s\"",         \
               t_m_ ? t_m_ : "(null)", (sub));                              \
    } while (0)

/* A call expected to succeed (non-NULL pointer / int >= 0). */
#define EXPECT_OK(cond) CHECK(cond)

/* End of main(): print the totals, return the exit status. */
static inline int t_done(const char *prog)
{
    printf("%s: %d checks, %d failed\n", prog, t_checks, t_failures);
    fflush(stdout);
    return t_failures ? 1 : 0;
}

/* Give up on the program (setup failure): nothing after makes sense. */
#define FATAL(...)                                                          \
    do {                                                                    \
        t_fail(__FILE__, __LINE__, __VA_ARGS__);                            \
        t_done(__FILE__);                                                   \
        exit(1);                                     \
    } while (0)

/* CHECK, and abort the program when it fails (the rest depends on it). */
#define REQUIRE(cond)                                                       \
    do {                                                                    \
        if (!CHECK(cond))                                                   \
            FATAL("required condition failed: %s", #cond);                 \
    } while (0)

/* ------------------------------------------------------------------ */
/* Environment, files, commands                                        */
/* ------------------------------------------------------------------ */

static inline const char *workdir(void)
{
    const char *w = getenv("TEST_WORKDIR");
    if (!w || !*w)
        FATAL("TEST_WORKDIR is not set (run through c-tests/run.sh)");
    return w;
}

static inline const char *catalog_dir(void)
{
    const char *c = getenv("LIBVIRT_BACKUP_DIR");
    if (!c || !*c)
        FATAL("LIBVIRT_BACKUP_DIR is not set (run through c-tests/run.sh)");
    return c;
}

/* snprintf into a static rotating buffer: values stay valid for the next
 * 64 calls (helpers below use it too: copy a value that must outlive a
 * few helper calls). */
static inline const char *fmt(const char *f, ...)
{
    static char bufs[64][1024];
    static int next;
    char *b = bufs[next++ % 64];
    va_list ap;
    va_start(ap, f);
    vsnprintf(b, sizeof(bufs[0]), f, ap);
    va_end(ap);
    return b;
}

/* A <domainbackup> described as @desc (NULL: no description), incremental
 * on top of backup @parent (NULL: a full backup), that backs vda up into
 * @target (NULL: the default location) in format @driver (NULL: the
 * default), and no other listed disk. */
static inline const char *vda_child_xml(const char *desc, const char *parent,
                                        const char *target, const char *driver)
{
    return fmt("<domainbackup>%s%s<disks><disk name='vda'>%s%s</disk></disks></domainbackup>",
               desc ? fmt("<description>%s</description>", desc) : "",
               parent ? fmt("<parent><uuid>%s</uuid></parent>", parent) : "",
               target ? fmt("<target file='%s'/>", target) : "",
               driver ? fmt("<driver type='%s'/>", driver) : "");
}

/* A full backup of vda into @target, in format @driver (NULL: the default). */
static inline const char *vda_backup_xml(const char *target, const char *driver)
{
    return vda_child_xml(NULL, NULL, target, driver);
}

/* A path under the work folder. */
#define WPATH(...) fmt("%s/%s", workdir(), fmt(__VA_ARGS__))

/* Run a shell command; true if it exited 0. Output goes to ours. */
static inline bool run(const char *cmd)
{
    int st;
    fflush(stdout);
    fflush(stderr);
    st = system(cmd);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static inline bool file_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Bytes the file occupies on disk; -1 if it cannot be stat'ed. */
static inline long long allocated_bytes(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -1;
    return (long long)st.st_blocks * 512;
}

static inline long long file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -1;
    return (long long)st.st_size;
}

static inline bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char buf[65536];
    size_t n;
    if (!f)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* Modification time with nanoseconds, to check a file was not touched. */
static inline bool same_stat(const struct stat *a, const struct stat *b)
{
    return a->st_size == b->st_size && a->st_ino == b->st_ino &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Create an empty sparse image (raw or qcow2) of @size bytes. */
static inline void make_image(const char *path, const char *format, long long size)
{
    if (!run(fmt("qemu-img create -q -f %s '%s' %lld", format, path, size)))
        FATAL("qemu-img create %s failed", path);
}

/* Write @len bytes of @pattern at @offset: pwrite for raw, qemu-io for
 * qcow2 (so the data lands in the image's clusters). */
static inline void write_data(const char *path, const char *format, long long offset,
                              long long len, int pattern)
{
    if (strcmp(format, "raw") == 0) {
        int fd = open(path, O_WRONLY);
        char *buf = malloc(1 << 20);
        long long done = 0;
        if (fd < 0 || !buf)
            FATAL("cannot open %s: %s", path, strerror(errno));
        memset(buf, pattern, 1 << 20);
        while (done < len) {
            size_t n = (size_t)((len - done) < (1 << 20) ? (len - done) : (1 << 20));
            if (pwrite(fd, buf, n, (off_t)(offset + done)) != (ssize_t)n)
                FATAL("pwrite %s: %s", path, strerror(errno));
            done += (long long)n;
        }
        free(buf);
        close(fd);
    } else {
        if (!run(fmt("qemu-io -f %s -c 'write -q -P 0x%x %lld %lld' '%s' >/dev/null",
                     format, pattern & 0xff, offset, len, path)))
            FATAL("qemu-io write to %s failed", path);
    }
}

/* An image with a few MiB of recognisable data in three places. */
static inline void make_disk(const char *path, const char *format, long long size, int pattern)
{
    make_image(path, format, size);
    write_data(path, format, 0, 1 * MiB, pattern);
    write_data(path, format, size / 2, 512 * 1024, pattern + 1);
    write_data(path, format, size - 1 * MiB, 1 * MiB, pattern + 2);
}

/* Everything a shell command prints on stdout (malloc'd, "" if it cannot
 * run). */
static inline char *cmd_output(const char *cmd)
{
    size_t len = 0, cap = 4096, n;
    char *out = malloc(cap);
    FILE *p;
    fflush(stdout);
    out[0] = '\0';
    if (!(p = popen(cmd, "r")))
        return out;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 1024)
            out = realloc(out, cap *= 2);
    }
    out[len] = '\0';
    pclose(p);
    return out;
}

/* The first line a shell command prints, without its newline (a
 * fmt() buffer). */
static inline const char *cmd_line(const char *cmd)
{
    char *out = cmd_output(cmd);
    const char *line;
    out[strcspn(out, "\n")] = '\0';
    line = fmt("%s", out);
    free(out);
    return line;
}

/* Two images hold the same guest data (qemu-img compare exits 0). */
static inline bool images_equal(const char *a, const char *fa, const char *b, const char *fb)
{
    return run(fmt("qemu-img compare -q -f %s -F %s '%s' '%s'", fa, fb, a, b));
}

/* The image format qemu-img detects, e.g. "qcow2" ("" if unknown). */
static inline const char *image_format(const char *path)
{
    return cmd_line(fmt("qemu-img info '%s' 2>/dev/null | sed -n 's/^file format: //p'", path));
}

/* The virtual size qemu-img reports for an image; -1 if unknown. */
static inline long long image_virtual_size(const char *path)
{
    const char *s = cmd_line(fmt("qemu-img info '%s' 2>/dev/null | "
                                 "sed -n 's/^virtual size: .*(\\([0-9]*\\) bytes).*/\\1/p'",
                                 path));
    return *s ? atoll(s) : -1;
}

/* Two files have the same bytes (cmp): raw images, byte for byte. */
static inline bool files_identical(const char *a, const char *b)
{
    return run(fmt("cmp -s '%s' '%s'", a, b));
}

/* Same guest data and same virtual size: the restored disk is the disk,
 * byte for byte over its whole size. */
static inline bool disks_identical(const char *a, const char *fa, const char *b, const char *fb)
{
    return image_virtual_size(a) == image_virtual_size(b) && images_equal(a, fa, b, fb);
}

/* How many images `qemu-img info --backing-chain` lists for @path (1: no
 * backing file; 0: not an image). */
static inline int chain_depth(const char *path)
{
    return atoi(cmd_line(fmt("qemu-img info --backing-chain '%s' 2>/dev/null | grep -c '^image:'",
                             path)));
}

/* The backing file qemu-img names for @path ("" if none). */
static inline const char *backing_file(const char *path)
{
    return cmd_line(fmt("qemu-img info '%s' 2>/dev/null | "
                        "sed -n 's/^backing file: \\([^ ]*\\).*/\\1/p'", path));
}

/* SHA-256 of a file's bytes (a fmt() buffer; "" if unreadable). */
static inline const char *file_sha256(const char *path)
{
    return cmd_line(fmt("sha256sum '%s' 2>/dev/null | cut -d' ' -f1", path));
}

/* Copy a file, keeping it sparse (a disk "as it was at backup time"). */
static inline void copy_file(const char *from, const char *to)
{
    if (!run(fmt("cp --sparse=always '%s' '%s'", from, to)))
        FATAL("cannot copy %s to %s", from, to);
}

/* ------------------------------------------------------------------ */
/* Listing a folder tree (to check that nothing was created)           */
/* ------------------------------------------------------------------ */

static inline int t_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static inline void t_walk(const char *dir, char ***names, size_t *n, size_t *cap)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d))) {
        char path[4096];
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        /* The catalog's writer lock is created by any catalog access; the
         * job history records every call that is a job, failed ones too;
         * a running job publishes its figures (<backup>.progress) twice a
         * second, whatever other calls do. */
        size_t len = strlen(e->d_name);
        if (strcmp(e->d_name, ".lock") == 0 || strcmp(e->d_name, ".history") == 0 ||
            (len > 9 && strcmp(e->d_name + len - 9, ".progress") == 0) ||
            (len > 13 && strcmp(e->d_name + len - 13, ".progress.tmp") == 0))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 32;
            *names = realloc(*names, *cap * sizeof(char *));
        }
        (*names)[(*n)++] = strdup(path);
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
            t_walk(path, names, n, cap);
    }
    closedir(d);
}

/* Sorted newline-separated list of every path under @dir (malloc'd). */
static inline char *tree_list(const char *dir)
{
    char **names = NULL;
    size_t n = 0, cap = 0, len = 1, i;
    char *out;
    t_walk(dir, &names, &n, &cap);
    if (n)
        qsort(names, n, sizeof(char *), t_cmp_str);
    for (i = 0; i < n; i++)
        len += strlen(names[i]) + 1;
    out = malloc(len);
    out[0] = '\0';
    for (i = 0; i < n; i++) {
        strcat(out, names[i]);
        strcat(out, "\n");
        free(names[i]);
    }
    free(names);
    return out;
}

/* Snapshot of the catalog and the work folder. */
static inline char *state_snapshot(void)
{
    char *a = tree_list(catalog_dir());
    char *b = tree_list(workdir());
    char *out = malloc(strlen(a) + strlen(b) + 8);
    sprintf(out, "%s--\n%s", a, b);
    free(a);
    free(b);
    return out;
}

/* Check that the catalog and work folder are as in @before; frees @before. */
#define EXPECT_UNCHANGED(before)                                            \
    do {                                                                    \
        char *t_after_ = state_snapshot();                                  \
        CHECKF(strcmp((before), t_after_) == 0,                             \
               "files were created or removed by a failed call:\n"          \
               "before:\n%s\nafter:\n%s", (before), t_after_);              \
        free(t_after_);                                                     \
        free(before);                                                       \
    } while (0)

/* Number of backup records (<uuid>.xml) in the catalog, all domains. */
static inline int catalog_records(void)
{
    char *l = tree_list(catalog_dir());
    int n = 0;
    char *line = l, *nl;
    while ((nl = strchr(line, '\n'))) {
        *nl = '\0';
        size_t len = strlen(line);
        const char *base = strrchr(line, '/');
        base = base ? base + 1 : line;
        /* <36-char uuid>.xml */
        if (len > 4 && strcmp(line + len - 4, ".xml") == 0 && strlen(base) == 40)
            n++;
        line = nl + 1;
    }
    free(l);
    return n;
}

/* "<sha256>  <path>" for every regular file under the catalog and the work
 * folder, sorted (malloc'd): what a refused call must leave as it was (the
 * job history, which notes it, aside). */
static inline char *content_snapshot(void)
{
    return cmd_output(fmt("find '%s' '%s' -name .history -prune -o -type f ! -name .lock "
                          "! -name '*.progress' ! -name '*.progress.tmp' "
                          "-print0 | sort -z | xargs -0r sha256sum", catalog_dir(), workdir()));
}

/* Check that every file has the content it had in @before; frees @before. */
#define EXPECT_CONTENT_UNCHANGED(before)                                    \
    do {                                                                    \
        char *t_after_ = content_snapshot();                                \
        CHECKF(strcmp((before), t_after_) == 0,                             \
               "file contents changed:\nbefore:\n%s\nafter:\n%s", (before), \
               t_after_);                                                   \
        free(t_after_);                                                     \
        free(before);                                                       \
    } while (0)

/* A call returning int must fail with @code and create, remove and change
 * no file (restore refusals). */
#define EXPECT_INT_FAIL_UNTOUCHED(expr, code)                               \
    do {                                                                    \
        char *t_names_ = state_snapshot();                                  \
        char *t_sums_ = content_snapshot();                                 \
        EXPECT_INT_FAIL((expr), (code));                                    \
        EXPECT_UNCHANGED(t_names_);                                         \
        EXPECT_CONTENT_UNCHANGED(t_sums_);                                  \
    } while (0)

/* virDomainBackupCreateXML must fail with @code and change no file. */
#define EXPECT_CREATE_FAIL(dom, xml, flags, code)                           \
    do {                                                                    \
        char *t_before_ = state_snapshot();                                 \
        int t_recs_ = catalog_records();                                    \
        EXPECT_BACKUP_FAIL(virDomainBackupCreateXML((dom), (xml), (flags)), (code)); \
        CHECKF(catalog_records() == t_recs_, "catalog records changed: %d -> %d", \
               t_recs_, catalog_records());                                 \
        EXPECT_UNCHANGED(t_before_);                                        \
    } while (0)

/* ------------------------------------------------------------------ */
/* libvirt test driver                                                 */
/* ------------------------------------------------------------------ */

typedef struct {
    const char *dev;      /* vda */
    const char *path;     /* absolute image path */
    const char *format;   /* raw | qcow2 */
    const char *device;   /* disk (default) | cdrom */
} test_disk;

/* The <domain> XML (malloc'd) of a domain of type @kind with @ndisks
 * disks: "test" (libvirt's test driver), or "qemu" (TCG, no guest OS,
 * virtio disks). */
static inline char *domain_xml_of(const char *kind, const char *name, const char *uuid,
                                  const test_disk *disks, int ndisks)
{
    size_t cap = 4096 + (size_t)ndisks * 1024;
    char *x = malloc(cap);
    bool qemu = strcmp(kind, "qemu") == 0;
    int i;
    snprintf(x, cap, "<domain type='%s'><name>%s</name>", kind, name);
    if (uuid)
        snprintf(x + strlen(x), cap - strlen(x), "<uuid>%s</uuid>", uuid);
    snprintf(x + strlen(x), cap - strlen(x), "<memory>65536</memory><os><type%s>hvm</type></os>"
             "<devices>", qemu ? " arch='x86_64' machine='pc'" : "");
    for (i = 0; i < ndisks; i++)
        snprintf(x + strlen(x), cap - strlen(x),
                 "<disk type='file' device='%s'><driver name='qemu' type='%s'/>"
                 "<source file='%s'/><target dev='%s'%s/>%s</disk>",
                 disks[i].device ? disks[i].device : "disk", disks[i].format,
                 disks[i].path, disks[i].dev, qemu ? " bus='virtio'" : "",
                 disks[i].device && strcmp(disks[i].device, "cdrom") == 0 ? "<readonly/>" : "");
    snprintf(x + strlen(x), cap - strlen(x), "</devices></domain>");
    return x;
}

/* The <domain> XML of a test-driver domain with @ndisks disks. */
static inline char *domain_xml(const char *name, const char *uuid, const test_disk *disks,
                               int ndisks)
{
    return domain_xml_of("test", name, uuid, disks, ndisks);
}

static inline virConnectPtr open_test_conn(void)
{
    virConnectPtr c = virConnectOpen("test:///default");
    if (!c)
        FATAL("virConnectOpen(test:///default) failed");
    return c;
}

/* Define an (inactive) domain of type @kind. */
static inline virDomainPtr define_domain_of(virConnectPtr conn, const char *kind,
                                            const char *name, const test_disk *disks,
                                            int ndisks)
{
    char *x = domain_xml_of(kind, name, NULL, disks, ndisks);
    virDomainPtr d = virDomainDefineXML(conn, x);
    free(x);
    if (!d) {
        virErrorPtr e = virGetLastError();
        FATAL("virDomainDefineXML(%s) failed: %s", name, e && e->message ? e->message : "?");
    }
    return d;
}

/* Define an (inactive) domain on the test driver. */
static inline virDomainPtr define_domain(virConnectPtr conn, const char *name,
                                         const test_disk *disks, int ndisks)
{
    return define_domain_of(conn, "test", name, disks, ndisks);
}

/* A domain with one raw disk @dev of @size bytes holding some data. */
static inline virDomainPtr simple_domain(virConnectPtr conn, const char *name,
                                         const char *format, long long size)
{
    test_disk d = { "vda", NULL, format, NULL };
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s-vda.%s", workdir(), name, format);
    make_disk(path, format, size, 0x41);
    d.path = path;
    return define_domain(conn, name, &d, 1);
}

/* Stop (if it runs), undefine and free a domain, quietly (it may be gone
 * already), with its backups' metadata and its libvirt checkpoints (the
 * test driver has none and refuses the flag). */
static inline void drop_domain(virDomainPtr dom)
{
    const char *driver;
    if (!dom)
        return;
    driver = virConnectGetType(virDomainGetConnect(dom));
    if (virDomainIsActive(dom) == 1)
        virDomainDestroy(dom);
    /* The header maps virDomainUndefineFlags to the library's version. */
    if (virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP |
                                        (driver && strcmp(driver, "QEMU") == 0
                                             ? VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                                             : 0)) < 0)
        virResetLastError();
    virDomainFree(dom);
}

static inline const char *dom_uuid(virDomainPtr dom)
{
    static char u[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(dom, u) < 0)
        FATAL("virDomainGetUUIDString failed");
    return u;
}

/* Free every entry of a list returned by virDomainBackupList*, then it. */
static inline void free_list(virDomainBackupPtr *list)
{
    virDomainBackupPtr *p;
    if (!list)
        return;
    for (p = list; *p; p++)
        CHECK(virDomainBackupFree(*p) == 0);
    free(list);
}

/* The text of <tag>...</tag> in @xml, in a static buffer ("" if absent). */
static inline const char *xml_text(const char *xml, const char *tag)
{
    static char out[1024];
    char open_[128], close_[128];
    const char *s, *e;
    out[0] = '\0';
    snprintf(open_, sizeof(open_), "<%s>", tag);
    snprintf(close_, sizeof(close_), "</%s>", tag);
    if (!xml || !(s = strstr(xml, open_)))
        return out;
    s += strlen(open_);
    if (!(e = strstr(s, close_)))
        return out;
    snprintf(out, sizeof(out), "%.*s", (int)(e - s), s);
    return out;
}

/* The backup's UUID, from its XML (static buffer). */
static inline const char *backup_uuid(virDomainBackupPtr b)
{
    static char u[64];
    char *x = virDomainBackupGetXMLDesc(b, 0);
    u[0] = '\0';
    if (!x) {
        CHECKF(false, "virDomainBackupGetXMLDesc failed: %s",
               virDomainBackupGetLastErrorMessage());
        return u;
    }
    snprintf(u, sizeof(u), "%s", xml_text(x, "uuid"));
    free(x);
    return u;
}

/* Create a backup with WAIT and check it succeeded. */
static inline virDomainBackupPtr backup_wait_at(virDomainPtr dom, const char *xml,
                                                const char *file, int line)
{
    virDomainBackupPtr b = virDomainBackupCreateXML(dom, xml, VIR_DOMAIN_BACKUP_CREATE_WAIT);
    t_checks++;
    if (!b)
        t_fail(file, line, "virDomainBackupCreateXML(WAIT) failed: %s (%d)\n  xml: %s",
               virDomainBackupGetLastErrorMessage(), virDomainBackupGetLastErrorCode(), xml);
    return b;
}
#define backup_wait(dom, xml) backup_wait_at((dom), (xml), __FILE__, __LINE__)

/* Number of backups of a domain (virDomainBackupList must succeed). */
static inline int count_backups(virDomainPtr dom)
{
    int n = virDomainBackupList(dom, NULL, 0);
    CHECKF(n >= 0, "virDomainBackupList failed: %s", virDomainBackupGetLastErrorMessage());
    return n;
}

/* ------------------------------------------------------------------ */
/* Reading backup and domain XML                                       */
/* ------------------------------------------------------------------ */

/* The value of attribute @attr of the first <@tag> element in @s[0..len)
 * (a fmt() buffer; "" if there is none). */
static inline const char *xml_attr_n(const char *s, size_t len, const char *tag,
                                     const char *attr)
{
    const char *end = s + len, *p = s, *gt, *a;
    char open_[64], key[64];
    size_t ol, kl;
    snprintf(open_, sizeof(open_), "<%s", tag);
    snprintf(key, sizeof(key), " %s=", attr);
    ol = strlen(open_);
    kl = strlen(key);
    while ((p = memmem(p, (size_t)(end - p), open_, ol))) {
        p += ol;
        if (*p == ' ' || *p == '>' || *p == '/')
            break;
    }
    if (!p || !(gt = memchr(p, '>', (size_t)(end - p))))
        return "";
    if (!(a = memmem(p, (size_t)(gt - p), key, kl)))
        return "";
    a += kl;
    {
        const char *close_ = memchr(a + 1, *a, (size_t)(gt - a - 1));
        return close_ ? fmt("%.*s", (int)(close_ - a - 1), a + 1) : "";
    }
}

/* The <disk> element of @xml for disk @dev: <disk name='@dev'> in backup
 * XML, <disk> with <target dev='@dev'/> in domain XML. Sets *len; NULL if
 * there is none. */
static inline const char *xml_disk(const char *xml, const char *dev, size_t *len)
{
    const char *p = xml;
    while (p && (p = strstr(p, "<disk "))) {
        const char *e = strstr(p, "</disk>");
        size_t n = e ? (size_t)(e - p) + 7 : strlen(p);
        if (strcmp(xml_attr_n(p, n, "disk", "name"), dev) == 0 ||
            strcmp(xml_attr_n(p, n, "target", "dev"), dev) == 0) {
            *len = n;
            return p;
        }
        p += n;
    }
    return NULL;
}

/* Attribute @attr of element <@tag> inside disk @dev's element of @xml
 * (@tag "disk": the disk element itself); "" if absent. */
static inline const char *xml_disk_attr(const char *xml, const char *dev, const char *tag,
                                        const char *attr)
{
    size_t n = 0;
    const char *d = xml ? xml_disk(xml, dev, &n) : NULL;
    return d ? xml_attr_n(d, n, tag, attr) : "";
}

/* As xml_disk_attr, in a backup's XML ("" if it cannot be read). */
static inline const char *backup_disk_attr(virDomainBackupPtr b, const char *dev,
                                           const char *tag, const char *attr)
{
    char *x = virDomainBackupGetXMLDesc(b, 0);
    const char *v = fmt("%s", xml_disk_attr(x, dev, tag, attr));
    free(x);
    return v;
}

/* 'full' or 'incremental': how the backup stored disk @dev. */
#define backup_mode(b, dev) backup_disk_attr((b), (dev), "disk", "backupmode")
/* The file the backup stored disk @dev in. */
#define backup_target(b, dev) backup_disk_attr((b), (dev), "target", "file")

/* As xml_disk_attr, in a domain's current XML. */
static inline const char *domain_disk_attr(virDomainPtr dom, const char *dev, const char *tag,
                                           const char *attr)
{
    char *x = virDomainGetXMLDesc(dom, 0);
    const char *v = fmt("%s", xml_disk_attr(x, dev, tag, attr));
    free(x);
    return v;
}

/* The UUID of the backup's parent ("" for a full backup). */
static inline const char *backup_parent(virDomainBackupPtr b)
{
    char *x = virDomainBackupGetXMLDesc(b, 0);
    const char *p = x ? strstr(x, "<parent>") : NULL;
    const char *u = fmt("%s", p ? xml_text(p, "uuid") : "");
    free(x);
    return u;
}

/* The descriptions of the backups in a list, in its order, each followed
 * by a space (a fmt() buffer); the list is freed. */
static inline const char *list_labels(virDomainBackupPtr *list)
{
    char out[1024] = "";
    virDomainBackupPtr *p;
    for (p = list; p && *p; p++) {
        char *x = virDomainBackupGetXMLDesc(*p, 0);
        snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s ",
                 x ? xml_text(x, "description") : "?");
        free(x);
    }
    free_list(list);
    return fmt("%s", out);
}

/* virDomainBackupList / ListChildren with @flags gives the backups
 * described @want ("a b c ", creation order), and counts them alike. */
#define EXPECT_LIST(dom, flags, want)                                       \
    t_expect_list(list_labels_of((dom), NULL, (flags)), virDomainBackupList((dom), NULL, (flags)), \
                  (want), #dom, (flags), __FILE__, __LINE__)
#define EXPECT_CHILDREN(b, flags, want)                                     \
    t_expect_list(list_labels_of(NULL, (b), (flags)),                       \
                  virDomainBackupListChildren((b), NULL, (flags)), (want), #b, (flags), \
                  __FILE__, __LINE__)

static inline const char *list_labels_of(virDomainPtr dom, virDomainBackupPtr b,
                                         unsigned int flags)
{
    virDomainBackupPtr *list = NULL;
    int n = dom ? virDomainBackupList(dom, &list, flags)
                : virDomainBackupListChildren(b, &list, flags);
    if (n < 0)
        return fmt("(failed: %s)", virDomainBackupGetLastErrorMessage());
    return list_labels(list);
}

static inline void t_expect_list(const char *got, int count, const char *want, const char *what,
                                 unsigned int flags, const char *file, int line)
{
    int words = 0;
    const char *c;
    for (c = want; *c; c++)
        words += *c == ' ';
    t_checks++;
    if (strcmp(got, want) != 0 || count != words)
        t_fail(file, line, "listing %s with flags 0x%x: got \"%s\" (count %d), want \"%s\"",
               what, flags, got, count, want);
}

/* ------------------------------------------------------------------ */
/* Typed parameters                                                    */
/* ------------------------------------------------------------------ */

typedef struct {
    virTypedParameterPtr p;
    int n;
} params;

static inline params get_params(virDomainBackupPtr b, const char *file, int line)
{
    params r = { NULL, 0 };
    int count = 0;
    if (virDomainBackupGetParameters(b, NULL, &count, 0) < 0) {
        t_fail(file, line, "GetParameters(count) failed: %s",
               virDomainBackupGetLastErrorMessage());
        return r;
    }
    r.p = calloc((size_t)count + 1, sizeof(virTypedParameter));
    r.n = count;
    if (virDomainBackupGetParameters(b, r.p, &r.n, 0) < 0) {
        t_fail(file, line, "GetParameters failed: %s", virDomainBackupGetLastErrorMessage());
        free(r.p);
        r.p = NULL;
        r.n = 0;
    } else if (r.n != count) {
        t_fail(file, line, "GetParameters filled %d of %d", r.n, count);
    }
    return r;
}
#define GET_PARAMS(b) get_params((b), __FILE__, __LINE__)

static inline void free_params(params *r)
{
    if (r->p) {
        virTypedParamsClear(r->p, r->n);
        free(r->p);
    }
    r->p = NULL;
    r->n = 0;
}

/* Parameter @name, which must exist with @type. */
static inline virTypedParameterPtr param(params *r, const char *name, int type)
{
    virTypedParameterPtr p = virTypedParamsGet(r->p, r->n, name);
    CHECKF(p != NULL, "parameter '%s' missing", name);
    if (p)
        CHECKF(p->type == type, "parameter '%s' has type %d, want %d", name, p->type, type);
    return p && p->type == type ? p : NULL;
}

static inline int p_state(params *r)
{
    virTypedParameterPtr p = param(r, "state", VIR_TYPED_PARAM_INT);
    return p ? p->value.i : -1;
}

static inline unsigned long long p_ull(params *r, const char *name)
{
    virTypedParameterPtr p = param(r, name, VIR_TYPED_PARAM_ULLONG);
    return p ? p->value.ul : 0;
}

/* A backup's ullong parameter @name (0 if it cannot be read). */
static inline unsigned long long backup_ull(virDomainBackupPtr b, const char *name)
{
    params r = GET_PARAMS(b);
    unsigned long long v = r.p ? p_ull(&r, name) : 0;
    free_params(&r);
    return v;
}

/* The bytes a backup stored (its "bytes.written"). */
#define backup_written(b) backup_ull((b), "bytes.written")
/* The bytes its job had to examine (its "bytes.total"). */
#define backup_total(b) backup_ull((b), "bytes.total")

/* The backup's "state" parameter, a virDomainBackupState (-1 if it cannot
 * be read). */
static inline int backup_param_state(virDomainBackupPtr b)
{
    params r = GET_PARAMS(b);
    int v = r.p ? p_state(&r) : -1;
    free_params(&r);
    return v;
}

/* The backup's "incremental" parameter (-1 if it cannot be read). */
static inline int backup_incremental(virDomainBackupPtr b)
{
    params r = GET_PARAMS(b);
    virTypedParameterPtr p = r.p ? param(&r, "incremental", VIR_TYPED_PARAM_BOOLEAN) : NULL;
    int v = p ? p->value.b : -1;
    free_params(&r);
    return v;
}

/* Run a program (e.g. this one again, for "fresh process" checks) with the
 * same environment; returns its exit status, or -1. */
static inline int run_argv(const char *const args[])
{
    pid_t pid;
    int st;
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execv(args[0], (char *const *)args);
        _exit(127);
    }
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------------ */
/* QEMU domains on qemu:///system                                      */
/* ------------------------------------------------------------------ */

/* QEMU domains a test made, dropped at exit if the test did not (FATAL);
 * run.sh removes any left by a crash (names start with
 * $TEST_DOMAIN_PREFIX). */
static virDomainPtr t_qemu_domains[16];

static inline void t_drop_qemu_domains(void)
{
    size_t i;
    for (i = 0; i < sizeof(t_qemu_domains) / sizeof(t_qemu_domains[0]); i++) {
        drop_domain(t_qemu_domains[i]);
        t_qemu_domains[i] = NULL;
    }
}

static inline virConnectPtr open_qemu_conn(void)
{
    virConnectPtr c = virConnectOpen("qemu:///system");
    if (!c)
        FATAL("virConnectOpen(qemu:///system) failed: start libvirtd "
              "(scripts/start-libvirtd.sh)");
    return c;
}

/* A QEMU domain (TCG, no guest OS) named <$TEST_DOMAIN_PREFIX>-@tag with
 * these disks, started if @start. Drop it with drop_qemu_domain(). */
static inline virDomainPtr qemu_domain(virConnectPtr conn, const char *tag,
                                       const test_disk *disks, int ndisks, bool start)
{
    static bool registered;
    const char *prefix = getenv("TEST_DOMAIN_PREFIX");
    virDomainPtr d = define_domain_of(conn, "qemu",
                                      prefix && *prefix
                                          ? fmt("%s-%s", prefix, tag)
                                          : fmt("lvb-ctest-%d-%s", (int)getpid(), tag),
                                      disks, ndisks);
    size_t i;
    if (!registered)
        atexit(t_drop_qemu_domains);
    registered = true;
    for (i = 0; i < sizeof(t_qemu_domains) / sizeof(t_qemu_domains[0]); i++) {
        if (!t_qemu_domains[i]) {
            t_qemu_domains[i] = d;
            break;
        }
    }
    if (start && virDomainCreate(d) < 0) {
        virErrorPtr e = virGetLastError();
        FATAL("cannot start %s: %s", virDomainGetName(d), e && e->message ? e->message : "?");
    }
    return d;
}

/* A QEMU domain with one qcow2 disk vda at @path. */
static inline virDomainPtr qemu_domain_on(virConnectPtr conn, const char *tag, const char *path,
                                          bool start)
{
    test_disk d = { "vda", path, "qcow2", NULL };
    return qemu_domain(conn, tag, &d, 1, start);
}

/* Stop, undefine (with checkpoints and backups) and free a QEMU domain. */
static inline void drop_qemu_domain(virDomainPtr dom)
{
    size_t i;
    for (i = 0; i < sizeof(t_qemu_domains) / sizeof(t_qemu_domains[0]); i++)
        if (t_qemu_domains[i] == dom)
            t_qemu_domains[i] = NULL;
    drop_domain(dom);
}

/* Run qemu-io command @cmd on the domain's virtio disk @device (e.g.
 * "virtio-disk0") through QEMU's monitor, as the guest would write, then
 * flush (so the image is consistent for qemu-img -U). */
static inline bool guest_io_on(virDomainPtr dom, const char *device, const char *cmd)
{
    const char *cmds[2] = { cmd, "flush" };
    int i;
    for (i = 0; i < 2; i++) {
        char *out = cmd_output(fmt(
            "virsh -c qemu:///system qemu-monitor-command '%s' --hmp "
            "'qemu-io -d /machine/peripheral/%s/virtio-backend \"%s\"' 2>&1; echo rc=$?",
            virDomainGetName(dom), device, cmds[i]));
        bool ok = strstr(out, "rc=0") && !strstr(out, "rror");
        if (!ok)
            t_fail(__FILE__, __LINE__, "guest io '%s': %s", cmds[i], out);
        free(out);
        if (!ok)
            return false;
    }
    return true;
}
#define guest_io(dom, cmd) guest_io_on((dom), "virtio-disk0", (cmd))

/* A raw copy of an image in use by QEMU, as it is now (after a guest
 * flush); with @base (the image's backing file), a qcow2 copy of only what
 * lies above it. */
static inline void live_snapshot(const char *image, const char *base, const char *out)
{
    if (!run(base ? fmt("qemu-img convert -U -f qcow2 -O qcow2 -B '%s' -F qcow2 '%s' '%s'",
                        base, image, out)
                  : fmt("qemu-img convert -U -f qcow2 -O raw '%s' '%s'", image, out)))
        FATAL("qemu-img convert of %s failed", image);
}

/* A 2 GiB qcow2 image with BIG_DATA bytes of data: a backup job of a
 * domain on it (or on an overlay of it) under a <bandwidth> of BIG_RATE
 * runs for about 4 s, however fast the machine (or slow valgrind) is. */
#define BIG_DATA (128 * MiB)
#define BIG_RATE (32 * MiB)
static inline void make_big_image(const char *path)
{
    make_image(path, "qcow2", 2 * GiB);
    write_data(path, "qcow2", 0, BIG_DATA, 0x31);
}

/* A full backup of vda into @target under a <bandwidth> of BIG_RATE. */
static inline const char *vda_slow_backup_xml(const char *target)
{
    return fmt("<domainbackup><bandwidth bytes='%lld'/><disks><disk name='vda'>"
               "<target file='%s'/></disk></disks></domainbackup>",
               (long long)BIG_RATE, target);
}

/* A qcow2 overlay @path backed by the qcow2 image @base. */
static inline void make_overlay(const char *base, const char *path)
{
    if (!run(fmt("qemu-img create -q -f qcow2 -b '%s' -F qcow2 '%s'", base, path)))
        FATAL("cannot create overlay %s", path);
}

/* How many libvirt checkpoints the domain has (-1 on error). */
static inline int checkpoint_count(virDomainPtr dom)
{
    return virDomainListAllCheckpoints(dom, NULL, 0);
}

/* The domain has the libvirt checkpoint of the backup whose UUID is @backup. */
static inline bool has_checkpoint(virDomainPtr dom, const char *backup)
{
    virDomainCheckpointPtr *list = NULL;
    int n = virDomainListAllCheckpoints(dom, &list, 0), i;
    bool found = false;
    char name[128];
    snprintf(name, sizeof(name), "libvirt-backup-%s", backup);
    for (i = 0; i < n; i++) {
        found = found || strcmp(virDomainCheckpointGetName(list[i]), name) == 0;
        virDomainCheckpointFree(list[i]);
    }
    free(list);
    return found;
}

/* libvirt runs a job (a backup) on the domain. */
static inline bool job_active(virDomainPtr dom)
{
    virDomainJobInfo info;
    return virDomainGetJobInfo(dom, &info) == 0 &&
           (info.type == VIR_DOMAIN_JOB_BOUNDED || info.type == VIR_DOMAIN_JOB_UNBOUNDED);
}

/* ------------------------------------------------------------------ */
/* NBD (libnbd's tools)                                                */
/* ------------------------------------------------------------------ */

/* A tcp port of 127.0.0.1 nobody listens on now. */
static inline int free_tcp_port(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0)
        FATAL("cannot find a free tcp port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* A RestoreUnmanaged <domainbackup> restoring vda from export @export of
 * the NBD server @host (a <host> element), with @extra in the disk element
 * (a fmt() buffer). */
static inline const char *nbd_restore_xml(const char *export, const char *host,
                                          const char *extra)
{
    return fmt("<domainbackup><disks><disk name='vda'><source protocol='nbd' name='%s'>%s"
               "</source>%s</disk></disks></domainbackup>", export, host, extra);
}

/* The URI of export @export on a unix socket or on 127.0.0.1:@port. */
static inline const char *nbd_unix_uri(const char *socket, const char *export)
{
    return fmt("nbd+unix:///%s?socket=%s", export, socket);
}
static inline const char *nbd_tcp_uri(int port, const char *export)
{
    return fmt("nbd://127.0.0.1:%d/%s", port, export);
}

/* Copy an NBD export into the raw file @out. */
static inline bool nbd_copy(const char *uri, const char *out)
{
    return run(fmt("nbdcopy '%s' '%s'", uri, out));
}

/* A server answers at @uri. */
static inline bool nbd_reachable(const char *uri)
{
    return run(fmt("nbdinfo --size '%s' >/dev/null 2>&1", uri));
}

/* The export at @uri is read-only. */
static inline bool nbd_read_only(const char *uri)
{
    return run(fmt("nbdinfo --is read-only '%s'", uri));
}

/* No export left a scratch folder (.scratch-<id>) in the catalog. */
static inline bool scratch_empty(void)
{
    return !run(fmt("ls -a '%s' 2>/dev/null | grep -q '^\\.scratch'", catalog_dir()));
}

#endif /* LIBVIRT_BACKUP_C_TESTS_COMMON_H */
