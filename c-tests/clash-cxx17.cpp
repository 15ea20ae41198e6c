/*
 * clash-cxx17.cpp: API.md "Name clash with libvirt >= 6.0", point 1, in C++17.
 *
 * Both headers are included; virDomainBackupGetXMLDesc is overloaded: a
 * virDomainBackupPtr gives our XML, a virDomainPtr still reaches libvirt's
 * function (which the test driver does not support).
 */
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libvirt-backup/libvirt-backup.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

static int checks, failures;

#define CHECK(cond)                                                              \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond)) {                                                           \
            failures++;                                                          \
            std::fprintf(stderr, "FAIL %s:%d: %s (last error: %d %s)\n", __FILE__, \
                         __LINE__, #cond, virDomainBackupGetLastErrorCode(),     \
                         virDomainBackupGetLastErrorMessage());                  \
        }                                                                        \
    } while (0)

static bool run(const std::string &cmd)
{
    std::fflush(stdout);
    return std::system(cmd.c_str()) == 0;
}

int main()
{
    const char *w = std::getenv("TEST_WORKDIR");
    if (!w) {
        std::fprintf(stderr, "TEST_WORKDIR is not set\n");
        return 1;
    }
    std::string disk = std::string(w) + "/cxx-vda.raw";
    if (!run("qemu-img create -q -f raw '" + disk + "' 16M") ||
        !run("qemu-io -f raw -c 'write -q -P 0x5c 0 1M' '" + disk + "' >/dev/null")) {
        std::fprintf(stderr, "cannot prepare %s\n", disk.c_str());
        return 1;
    }

    virConnectPtr conn = virConnectOpen("test:///default");
    CHECK(conn != nullptr);
    if (!conn)
        return 1;
    std::string xml = "<domain type='test'><name>clash-cxx</name><memory>65536</memory>"
                      "<os><type>hvm</type></os><devices>"
                      "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                      "<source file='" + disk + "'/><target dev='vda'/></disk>"
                      "</devices></domain>";
    virDomainPtr dom = virDomainDefineXML(conn, xml.c_str());
    CHECK(dom != nullptr);
    if (!dom)
        return 1;

    virDomainBackupPtr b =
        virDomainBackupCreateXML(dom, "<domainbackup/>", VIR_DOMAIN_BACKUP_CREATE_WAIT);
    CHECK(b != nullptr);
    if (b) {
        char *x = virDomainBackupGetXMLDesc(b, 0);
        CHECK(x != nullptr);
        CHECK(x && std::strstr(x, "<domainbackup>") != nullptr);
        std::free(x);
        x = virDomainBackupGetXMLDesc(b, VIR_DOMAIN_XML_SECURE);
        CHECK(x && std::strstr(x, "<domainbackup>") != nullptr);
        std::free(x);
        /* The unambiguous name works too. */
        x = virDomainBackupObjGetXMLDesc(b, 0u);
        CHECK(x && std::strstr(x, "<domainbackup>") != nullptr);
        std::free(x);
    }

    /* libvirt's function, by overload. */
    virResetLastError();
    virDomainBackupResetLastError();
    char *lx = virDomainBackupGetXMLDesc(dom, 0);
    CHECK(lx == nullptr);
    std::free(lx);
    virErrorPtr le = virGetLastError();
    CHECK(le != nullptr);
    CHECK(le && le->code == VIR_ERR_NO_SUPPORT);
    CHECK(le && le->message && std::strstr(le->message, "virDomainBackupGetXMLDesc"));
    CHECK(virDomainBackupGetLastError() == nullptr);

    /* The header maps virDomainUndefineFlags: refused while backups exist. */
    CHECK(virDomainUndefineFlags(dom, 0) == -1);
    CHECK(virDomainBackupGetLastErrorCode() == VIR_ERR_OPERATION_INVALID);

    if (b) {
        CHECK(virDomainBackupDelete(b, 0) == 0);
        CHECK(virDomainBackupFree(b) == 0);
    }
    CHECK(virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_BACKUP) == 0);
    virDomainFree(dom);
    virConnectClose(conn);
    std::printf("clash-cxx17: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
