/*
 * clash-c11.c: API.md "Name clash with libvirt >= 6.0", points 1 and 2, in C11.
 *
 * libvirt (>= 6.0) declares char *virDomainBackupGetXMLDesc(virDomainPtr,
 * unsigned int); this library's header routes the same name by the type of
 * the first argument. Both headers are included here; run.sh builds this
 * file twice, linked with -lvirt -lvirt-backup and with -lvirt-backup -lvirt.
 *
 *  - virDomainBackupGetXMLDesc(backup, 0) gives our <domainbackup> XML;
 *  - virDomainBackupGetXMLDesc(dom, 0) reaches libvirt's function: NULL,
 *    and libvirt's own last error says the test driver does not support it;
 *    our library's last error is not set by it;
 *  - the plain symbol taken as a function pointer (bound by the linker to
 *    whichever library comes first) also reaches libvirt's function for a
 *    virDomainPtr.
 */
#define _GNU_SOURCE
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libvirt-backup/libvirt-backup.h>

#include "common.h"

typedef char *(*libvirt_get_xml_desc)(virDomainPtr, unsigned int);

static void check_libvirt_refusal(char *x, const char *how)
{
    virErrorPtr le = virGetLastError();
    CHECKF(x == NULL, "%s: libvirt's function returned XML for a test domain: %s", how,
           x ? x : "");
    free(x);
    CHECKF(le != NULL, "%s: libvirt's virGetLastError() is NULL", how);
    if (le) {
        CHECKF(le->code == VIR_ERR_NO_SUPPORT, "%s: libvirt error code %d (%s), want %d", how,
               le->code, le->message ? le->message : "", VIR_ERR_NO_SUPPORT);
        CHECKF(le->message && strstr(le->message, "virDomainBackupGetXMLDesc"),
               "%s: libvirt message '%s' does not name virDomainBackupGetXMLDesc", how,
               le->message ? le->message : "(null)");
    }
    CHECKF(virDomainBackupGetLastError() == NULL,
           "%s: our library's last error was set: %s", how, virDomainBackupGetLastErrorMessage());
}

int main(void)
{
    virConnectPtr conn = open_test_conn();
    virDomainPtr dom = simple_domain(conn, "clash-c", "raw", 16 * MiB);
    virDomainBackupPtr b = backup_wait(dom, "<domainbackup/>");
    char *x;

    REQUIRE(b != NULL);

    section("virDomainBackupGetXMLDesc(backup, 0): our XML");
    x = virDomainBackupGetXMLDesc(b, 0);
    CHECK(x != NULL);
    CHECKF(x && strstr(x, "<domainbackup>") && strstr(x, "<state>completed</state>"),
           "not our XML: %s", x ? x : "(null)");
    free(x);
    x = virDomainBackupGetXMLDesc(b, VIR_DOMAIN_XML_SECURE);
    CHECK(x && strstr(x, "<domainbackup>"));
    free(x);

    section("virDomainBackupGetXMLDesc(dom, 0): libvirt's function");
    virResetLastError();
    virDomainBackupResetLastError();
    x = virDomainBackupGetXMLDesc(dom, 0);
    check_libvirt_refusal(x, "by type");

    /* Our last error, set by an earlier failure, is left alone too. */
    CHECK(virDomainBackupLookupByUUID("not-a-uuid", 0) == NULL);
    virResetLastError();
    x = virDomainBackupGetXMLDesc(dom, 0);
    CHECKF(x == NULL, "libvirt's function returned XML");
    free(x);
    CHECKF(virDomainBackupGetLastErrorCode() == VIR_ERR_INVALID_ARG,
           "our last error changed to %d: %s", virDomainBackupGetLastErrorCode(),
           virDomainBackupGetLastErrorMessage());
    CHECK(virGetLastError() && virGetLastError()->code == VIR_ERR_NO_SUPPORT);

    section("the plain symbol as a function pointer, on a virDomainPtr");
    {
        /* Not a call: the function-like macro does not apply, so this is
         * the symbol as the linker bound it. */
        libvirt_get_xml_desc fp = virDomainBackupGetXMLDesc;
        virResetLastError();
        virDomainBackupResetLastError();
        x = fp(dom, 0);
        check_libvirt_refusal(x, "function pointer");
    }

    section("our header did not break other libvirt calls");
    {
        char *dx = virDomainGetXMLDesc(dom, 0);
        CHECK(dx && strstr(dx, "<name>clash-c</name>"));
        free(dx);
    }

    CHECK(virDomainBackupDelete(b, 0) == 0);
    CHECK(virDomainBackupFree(b) == 0);
    drop_domain(dom);
    virConnectClose(conn);
    return t_done("clash-c11");
}
