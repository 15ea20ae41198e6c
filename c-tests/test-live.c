/*
 * test-live.c: managed backups of a running QEMU domain on qemu:///system,
 * which libvirt serves in pull mode and the library copies (one checkpoint
 * per backup, named libvirt-backup-<uuid>). A full backup started without WAIT while the guest writes
 * holds the disk as it was when CreateXML returned; an incremental one
 * holds only what changed since (a qcow2 backed by the full one) and
 * reads back as the disk; a cancelled job leaves no target, checkpoint or
 * catalog entry; a second job of the domain is refused while one runs;
 * Delete removes the backup's checkpoint.
 *
 * The domain (TCG, no guest OS) runs on an overlay of a 2 GiB image with
 * 128 MiB of data; the full and the cancelled jobs copy it under a
 * <bandwidth> limit, so that they run for about 4 s. Guest writes go
 * through QEMU's monitor (qemu-io).
 */
#include "common.h"

/* The backup's XML names its checkpoint @name. */
static bool names_checkpoint(virDomainBackupPtr b, const char *name)
{
    char *x = virDomainBackupGetXMLDesc(b, 0);
    bool ok = x && strstr(x, fmt("<checkpoint name='libvirt-backup-%s'/>", name));
    free(x);
    return ok;
}

int main(void)
{
    virConnectPtr conn = open_qemu_conn();
    char big[1024], vda[1024], full_t[1024], inc_t[1024], now[1024], full_u[64], inc_u[64];
    virDomainPtr dom;
    virDomainBackupPtr full, inc, c;

    snprintf(big, sizeof(big), "%s", WPATH("big.qcow2"));
    snprintf(vda, sizeof(vda), "%s", WPATH("live-vda.qcow2"));
    snprintf(full_t, sizeof(full_t), "%s", WPATH("full.qcow2"));
    snprintf(inc_t, sizeof(inc_t), "%s", WPATH("inc.qcow2"));
    snprintf(now, sizeof(now), "%s", WPATH("now.qcow2"));
    make_big_image(big);
    make_overlay(big, vda);
    dom = qemu_domain_on(conn, "live", vda, true);

    /* ---------------------------------------------------------------- */
    section("full backup of a running domain, the guest writing during the job");
    full = virDomainBackupCreateXML(dom, vda_slow_backup_xml(full_t), 0);
    REQUIRE(full != NULL);
    snprintf(full_u, sizeof(full_u), "%s", backup_uuid(full));
    CHECK(virDomainBackupFinishJob(full, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1);
    CHECK(count_backups(dom) == 1);
    CHECK(job_active(dom));
    CHECK(guest_io(dom, "write -P 0xcd 32M 4M"));
    CHECKF(virDomainBackupFinishJob(full, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1,
           "the job ended before the guest wrote");
    CHECK(virDomainBackupFinishJob(full, 0) == 0);
    CHECK(backup_param_state(full) == VIR_DOMAIN_BACKUP_STATE_COMPLETED);
    CHECK(!job_active(dom));
    /* The disk as CreateXML saw it: the base image, without the write. */
    CHECKF(disks_identical(full_t, "qcow2", big, "qcow2"), "the full backup differs from the disk");
    CHECK(strcmp(backup_mode(full, "vda"), "full") == 0);
    CHECK(names_checkpoint(full, full_u));
    CHECK(has_checkpoint(dom, full_u));
    CHECK(checkpoint_count(dom) == 1);
    CHECK(backup_total(full) == 2ULL * GiB);
    CHECK(backup_incremental(full) == 0);

    /* ---------------------------------------------------------------- */
    section("incremental backup: the guest's write since the full one");
    live_snapshot(vda, big, now);
    inc = backup_wait(dom, vda_child_xml(NULL, full_u, inc_t, NULL));
    REQUIRE(inc != NULL);
    snprintf(inc_u, sizeof(inc_u), "%s", backup_uuid(inc));
    CHECK(strcmp(backup_mode(inc, "vda"), "incremental") == 0);
    CHECK(strcmp(backup_parent(inc), full_u) == 0);
    CHECK(strcmp(backing_file(inc_t), full_t) == 0);
    CHECKF(disks_identical(inc_t, "qcow2", now, "qcow2"), "the incremental backup differs");
    /* Read through libvirt's export: the disk's size to go through, only
     * the 4 MiB the checkpoint's bitmap marks read and stored. */
    CHECK(backup_total(inc) == 2ULL * GiB);
    CHECK(backup_written(inc) == 4ULL * MiB);
    CHECK(backup_incremental(inc) == 1);
    CHECK(names_checkpoint(inc, inc_u));
    CHECK(has_checkpoint(dom, inc_u) && checkpoint_count(dom) == 2);

    /* ---------------------------------------------------------------- */
    section("cancel, and one job at a time");
    c = virDomainBackupCreateXML(dom, vda_slow_backup_xml(WPATH("cancel.qcow2")), 0);
    REQUIRE(c != NULL);
    {
        char u[64];
        snprintf(u, sizeof(u), "%s", backup_uuid(c));
        CHECK(virDomainBackupFinishJob(c, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1);
        /* The job's thread makes its index file as it starts copying: wait
         * for that, so that the refused call is the only one that could
         * change the catalog while it is looked at. */
        for (int i = 0; i < 500 && backup_ull(c, "bytes.processed") == 0; i++)
            usleep(10000);
        EXPECT_CREATE_FAIL(dom, vda_backup_xml(WPATH("second.qcow2"), NULL), 0,
                           VIR_ERR_OPERATION_INVALID);
        CHECKF(virDomainBackupFinishJob(c, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1,
               "the job ended before it could be cancelled");
        CHECK(virDomainBackupAbortJob(c, 0) == 0);
        CHECK(backup_param_state(c) == VIR_DOMAIN_BACKUP_STATE_CANCELLED);
        CHECK(!job_active(dom));
        CHECK(!file_exists(WPATH("cancel.qcow2")));
        CHECK(!has_checkpoint(dom, u));
        CHECK(checkpoint_count(dom) == 2);
        CHECK(count_backups(dom) == 2);
        CHECK(catalog_records() == 2);
        EXPECT_BACKUP_FAIL(virDomainBackupLookupByUUID(u, 0), VIR_ERR_NO_DOMAIN_BACKUP);
        EXPECT_INT_FAIL(virDomainBackupFinishJob(c, 0), VIR_ERR_OPERATION_ABORTED);
        EXPECT_INT_FAIL(virDomainBackupAbortJob(c, 0), VIR_ERR_OPERATION_INVALID);
    }
    CHECK(virDomainBackupFree(c) == 0);

    /* ---------------------------------------------------------------- */
    section("Delete removes the backup's checkpoint");
    CHECK(virDomainBackupDelete(inc, 0) == 0);
    CHECK(!has_checkpoint(dom, inc_u) && has_checkpoint(dom, full_u));
    CHECK(virDomainBackupDelete(full, 0) == 0);
    CHECK(checkpoint_count(dom) == 0);
    CHECK(count_backups(dom) == 0);

    CHECK(virDomainBackupFree(inc) == 0);
    CHECK(virDomainBackupFree(full) == 0);
    drop_qemu_domain(dom);
    virConnectClose(conn);
    return t_done("test-live");
}
