/*
 * test-unmanaged.c: unmanaged backups read with libnbd's tools, and
 * virDomainBackupRestoreUnmanaged from NBD exports.
 *
 * A running QEMU domain (qemu:///system) is exported over a unix socket by
 * libvirt's pull-mode job: nbdcopy reads the disk as it was at the start,
 * whatever the guest writes afterwards; the export is never listed, Delete
 * refuses it, FinishJob(0) ends it (socket and scratch files gone). From
 * that export a test-driver domain's disk is restored. That domain is then
 * exported over tcp (qemu-storage-daemon) and restored into a new file of
 * another domain; AbortJob ends that export.
 */
#include "common.h"

/* An export that runs: not listed, not deletable. */
static void check_running(virDomainPtr dom, virDomainBackupPtr e, int listed)
{
    CHECK(virDomainBackupFinishJob(e, VIR_DOMAIN_BACKUP_FINISH_JOB_CHECK) == 1);
    CHECK(backup_param_state(e) == VIR_DOMAIN_BACKUP_STATE_RUNNING);
    CHECK(count_backups(dom) == listed);
    EXPECT_INT_FAIL(virDomainBackupDelete(e, 0), VIR_ERR_OPERATION_INVALID);
}

int main(void)
{
    virConnectPtr qconn = open_qemu_conn(), conn = open_test_conn();
    char vda[1024], then[1024], sock[1024], dst[1024], xml[4096];
    virDomainPtr live, tdom, other;
    virDomainBackupPtr e;
    char uri[1024];
    int port;

    snprintf(vda, sizeof(vda), "%s", WPATH("live-vda.qcow2"));
    snprintf(then, sizeof(then), "%s", WPATH("then.raw"));
    snprintf(sock, sizeof(sock), "%s", WPATH("live.sock"));
    snprintf(dst, sizeof(dst), "%s", WPATH("dst-vda.raw"));
    make_disk(vda, "qcow2", 32 * MiB, 0x51);
    live = qemu_domain_on(qconn, "export", vda, true);

    /* ---------------------------------------------------------------- */
    section("a running QEMU domain exported over a unix socket (pull mode)");
    CHECK(guest_io(live, "write -P 0x52 8M 1M"));
    live_snapshot(vda, NULL, then);
    snprintf(xml, sizeof(xml),
             "<domainbackup><server transport='unix' socket='%s'/></domainbackup>", sock);
    e = virDomainBackupStartUnmanaged(live, xml, 0);
    REQUIRE(e != NULL);
    CHECK(strcmp(backup_disk_attr(e, "vda", "disk", "exportname"), "vda") == 0);
    CHECK(strcmp(backup_disk_attr(e, "vda", "disk", "exportbitmap"), "") == 0);
    {
        char *x = virDomainBackupGetXMLDesc(e, 0);
        CHECK(x && strstr(x, fmt("<server transport='unix' socket='%s'/>", sock)));
        free(x);
    }
    check_running(live, e, 0);
    CHECK(job_active(live));
    /* What the guest writes now is not in the export. */
    CHECK(guest_io(live, "write -P 0x53 0 4M"));
    snprintf(uri, sizeof(uri), "%s", nbd_unix_uri(sock, "vda"));
    CHECK(nbd_read_only(uri));
    CHECK(nbd_copy(uri, WPATH("got.raw")));
    CHECKF(files_identical(WPATH("got.raw"), then), "the export differs from the disk at its start");

    section("RestoreUnmanaged from that export");
    make_disk(dst, "raw", 32 * MiB, 0x61);
    tdom = define_domain(conn, "um-dst", &(test_disk){ "vda", dst, "raw", NULL }, 1);
    snprintf(xml, sizeof(xml), "%s",
             nbd_restore_xml("vda", fmt("<host transport='unix' socket='%s'/>", sock), ""));
    EXPECT_INT_FAIL_UNTOUCHED(virDomainBackupRestoreUnmanaged(tdom, xml, 0),
                              VIR_ERR_OPERATION_INVALID);
    EXPECT_MSG_CONTAINS("REWRITE_EXISTING_DISK");
    EXPECT_INT_FAIL_UNTOUCHED(
        virDomainBackupRestoreUnmanaged(
            tdom, nbd_restore_xml("nope", fmt("<host transport='unix' socket='%s'/>", sock), ""),
            VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK),
        VIR_ERR_OPERATION_FAILED);
    EXPECT_MSG_CONTAINS("nope");
    CHECK(virDomainBackupRestoreUnmanaged(tdom, xml,
                                          VIR_DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK) == 0);
    CHECKF(files_identical(dst, then), "the restored disk differs from the export");

    CHECK(virDomainBackupFinishJob(e, 0) == 0);
    CHECK(backup_param_state(e) == VIR_DOMAIN_BACKUP_STATE_COMPLETED);
    CHECK(!file_exists(sock));
    CHECK(!nbd_reachable(uri));
    CHECK(scratch_empty());
    CHECK(!job_active(live));
    EXPECT_INT_FAIL(virDomainBackupAbortJob(e, 0), VIR_ERR_OPERATION_INVALID);
    CHECK(virDomainBackupFree(e) == 0);

    /* ---------------------------------------------------------------- */
    section("a test-driver domain exported over tcp (qemu-storage-daemon)");
    port = free_tcp_port();
    snprintf(xml, sizeof(xml),
             "<domainbackup><server transport='tcp' name='127.0.0.1' port='%d'/>"
             "<disks><disk name='vda' exportname='restored'/></disks></domainbackup>", port);
    e = virDomainBackupStartUnmanaged(tdom, xml, 0);
    REQUIRE(e != NULL);
    CHECK(strcmp(backup_disk_attr(e, "vda", "disk", "exportname"), "restored") == 0);
    check_running(tdom, e, 0);
    snprintf(uri, sizeof(uri), "%s", nbd_tcp_uri(port, "restored"));
    CHECK(nbd_copy(uri, WPATH("got2.raw")));
    CHECK(files_identical(WPATH("got2.raw"), then));

    section("RestoreUnmanaged from it into a new file");
    make_disk(WPATH("other-vda.qcow2"), "qcow2", 32 * MiB, 0x71);
    other = define_domain(conn, "um-other",
                          &(test_disk){ "vda", WPATH("other-vda.qcow2"), "qcow2", NULL }, 1);
    CHECK(virDomainBackupRestoreUnmanaged(
              other,
              nbd_restore_xml("restored", fmt("<host name='127.0.0.1' port='%d'/>", port),
                              fmt("<target file='%s'/>", WPATH("other-new.qcow2"))),
              0) == 0);
    CHECK(disks_identical(WPATH("other-new.qcow2"), "qcow2", then, "raw"));
    CHECK(strcmp(domain_disk_attr(other, "vda", "source", "file"), WPATH("other-new.qcow2")) == 0);

    CHECK(virDomainBackupAbortJob(e, 0) == 0);
    CHECK(backup_param_state(e) == VIR_DOMAIN_BACKUP_STATE_CANCELLED);
    CHECK(!nbd_reachable(uri));
    CHECK(scratch_empty());
    CHECK(virDomainBackupFree(e) == 0);

    drop_domain(other);
    drop_domain(tdom);
    drop_qemu_domain(live);
    virConnectClose(conn);
    virConnectClose(qconn);
    return t_done("test-unmanaged");
}
