/*
 * bench.h: what bench.c (the table, the rows on test:///default) shares
 * with live.c (the rows on a running QEMU domain).
 */
#ifndef BENCH_H
#define BENCH_H

#include <libvirt-backup/libvirt-backup.h>

#define MiB (1024LL * 1024)
#define CHUNK (64 * 1024LL)   /* size and alignment of the scattered writes */
#define NA (-1.0)             /* a timing that could not be taken */
#define RSS_TARGET_MIB 64     /* memory rows: peak RSS over one disk's backup */
#define STR(x) #x
#define XSTR(x) STR(x)

/* One source image, its domain, and the backups made of it so far. */
struct disk {
    const char *name;            /* in row labels and file names: raw, qcow2, live */
    const char *fmt;             /* raw or qcow2 */
    long size_mb;                /* virtual size */
    /* Write @n blocks of CHUNK bytes of pattern d->pattern at @offsets. */
    void (*write)(struct disk *d, const long long *offsets, long long n);
    char *src;                   /* the domain's disk */
    char *saved;                 /* copy of src when the leaf backup was made */
    char *restored;              /* row 3: the restore's new file */
    virDomainPtr dom;
    virDomainBackupPtr full;     /* root of the chain */
    virDomainBackupPtr leaf;     /* newest backup of the chain */
    int depth;                   /* backups in the chain */
    int pattern;                 /* last qemu-io pattern byte used */
    double full_best;            /* best full backup time: the incremental row's reference */
    char note[256];              /* what the row prints in its notes */
};

/* One kind of row: how each side runs once, and how to check ours. */
struct row {
    const char *what;
    double target;                      /* ratio to stay under; 0: none */
    void (*setup)(struct disk *);       /* before the runs, untimed */
    double (*ours)(struct disk *);      /* seconds, or NA (d->note says why) */
    double (*peer)(struct disk *);      /* NULL: d->full_best */
    int (*verify)(struct disk *);       /* after each of ours' runs: 0 if right */
};

extern char *workdir;
extern long data_pct;

long env_long(const char *name, long dflt);
double now(void);
void die(const char *what) __attribute__((noreturn));
char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double timed_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
long long *spaced(long long n, long long stride, long long first);
void fsync_path(const char *path, int data_only);
void qemu_io_writes(const char *fmt, const char *path, int pattern,
                    const long long *offsets, long long n, long long len);
int compare(const char *fmt_a, const char *a, const char *fmt_b, const char *b);
int compare_leaf(struct disk *d, const char *fmt, const char *path);
char *fresh_file(const struct disk *d, const char *name);
char *backup_file(virDomainBackupPtr b);
void forget(virDomainBackupPtr *b);

/* Rows that run the same on every disk. */
double full_ours(struct disk *d);
double incr_ours(struct disk *d);
void bench_row(const struct row *r, struct disk *d);
void print_header(void);
void print_cells(const char *label, const char *ours, const char *peer,
                 const char *ratio, const char *target, const char *notes);
void rss_row(const char *uri, const char *domain, const char *fmt, const char *src,
             struct disk *d);

/* copy.c: the copy engine's rows (layouts x sizes); rows that gave a wrong result. */
int copy_rows(virConnectPtr conn);

/* live.c: rows on a running QEMU domain (qemu:///system). */
void live_open(void);
void live_rows(void);
const char *live_summary(void);

#endif
