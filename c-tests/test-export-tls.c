/*
 * test-export-tls.c: a TLS export (<server tls='yes'>) of a test-driver
 * domain, served by qemu-storage-daemon with the certificates of
 * $LIBVIRT_BACKUP_TLS_X509_DIR (a throw-away CA made by
 * scripts/tls-test-certs.sh), listening on 0.0.0.0: nbdcopy with the client
 * certificate reads the disk byte for byte; a plain client and a TLS
 * client without a certificate are refused. A missing certificate folder
 * is VIR_ERR_CONFIG_UNSUPPORTED and starts nothing.
 */
#include "common.h"

#ifndef VIR_ERR_CONFIG_UNSUPPORTED
#define VIR_ERR_CONFIG_UNSUPPORTED 67
#endif

int main(void)
{
    virConnectPtr conn = open_test_conn();
    char disk[1024], xml[4096], script[1024], server[1024], client[1024], bare[1024];
    char *desc, *slash;
    virDomainPtr dom;
    virDomainBackupPtr e;
    int port;

    /* The script sits beside this source's folder. */
    snprintf(script, sizeof(script), "%s", __FILE__);
    slash = strrchr(script, '/');
    REQUIRE(slash != NULL);
    snprintf(slash, sizeof(script) - (size_t)(slash - script), "/../scripts/tls-test-certs.sh");
    snprintf(server, sizeof(server), "%s", WPATH("server"));
    snprintf(client, sizeof(client), "%s", WPATH("client"));
    snprintf(bare, sizeof(bare), "%s", WPATH("ca-only"));
    REQUIRE(run(fmt("sh '%s' '%s' '%s' '%s' >/dev/null", script, server, client, WPATH("ca"))));
    REQUIRE(run(fmt("mkdir -m 700 '%s' && cp '%s/ca-cert.pem' '%s/'", bare, client, bare)));

    snprintf(disk, sizeof(disk), "%s", WPATH("tls-vda.raw"));
    make_disk(disk, "raw", 8 * MiB, 0x5c);
    dom = define_domain(conn, "tls", &(test_disk){ "vda", disk, "raw", NULL }, 1);

    section("a missing certificate folder starts nothing");
    setenv("LIBVIRT_BACKUP_TLS_X509_DIR", WPATH("nonexistent"), 1);
    port = free_tcp_port();
    snprintf(xml, sizeof(xml),
             "<domainbackup><server transport='tcp' name='0.0.0.0' port='%d' tls='yes'/>"
             "</domainbackup>", port);
    EXPECT_BACKUP_FAIL(virDomainBackupStartUnmanaged(dom, xml, 0), VIR_ERR_CONFIG_UNSUPPORTED);
    EXPECT_MSG_CONTAINS("does not exist");
    CHECK(!nbd_reachable(fmt("nbds://127.0.0.1:%d/vda?tls-certificates=%s", port, client)));
    CHECK(scratch_empty());

    section("a TLS export on 0.0.0.0, read with the client certificate");
    setenv("LIBVIRT_BACKUP_TLS_X509_DIR", server, 1);
    e = virDomainBackupStartUnmanaged(dom, xml, 0);
    REQUIRE(e != NULL);
    desc = virDomainBackupGetXMLDesc(e, 0);
    CHECK(desc && strstr(desc, fmt("<server transport='tcp' name='0.0.0.0' port='%d' tls='yes'/>",
                                   port)));
    free(desc);
    CHECK(nbd_copy(fmt("nbds://127.0.0.1:%d/vda?tls-certificates=%s", port, client),
                   WPATH("got.raw")));
    CHECKF(files_identical(WPATH("got.raw"), disk), "the TLS export differs from the disk");

    section("clients without a certificate are refused");
    CHECK(!nbd_reachable(nbd_tcp_uri(port, "vda")));
    CHECK(!nbd_reachable(fmt("nbds://127.0.0.1:%d/vda?tls-certificates=%s", port, bare)));

    CHECK(virDomainBackupFinishJob(e, 0) == 0);
    CHECK(!nbd_reachable(fmt("nbds://127.0.0.1:%d/vda?tls-certificates=%s", port, client)));
    CHECK(scratch_empty());
    CHECK(virDomainBackupFree(e) == 0);

    drop_domain(dom);
    virConnectClose(conn);
    return t_done("test-export-tls");
}
