/*
 * header-c99.c: the header in strict C99 (-std=c99 -pedantic -Werror), where
 * there is no _Generic: the backup's XML comes from
 * virDomainBackupObjGetXMLDesc(), and virDomainBackupGetXMLDesc() stays
 * libvirt's function.
 */
#include <stdio.h>
#include <string.h>
#include <libvirt-backup/libvirt-backup.h>

int main(void)
{
    char *(*libvirt_fn)(virDomainPtr, unsigned int) = virDomainBackupGetXMLDesc;
    char *x = virDomainBackupObjGetXMLDesc(NULL, 0);

    (void)libvirt_fn;
    if (x != NULL) {
        fprintf(stderr, "virDomainBackupObjGetXMLDesc(NULL) returned XML\n");
        return 1;
    }
    if (virDomainBackupGetLastErrorCode() != VIR_ERR_INVALID_ARG) {
        fprintf(stderr, "expected VIR_ERR_INVALID_ARG, got %d: %s\n",
                virDomainBackupGetLastErrorCode(), virDomainBackupGetLastErrorMessage());
        return 1;
    }
    printf("C99: %s\n", virDomainBackupGetLastErrorMessage());
    return 0;
}
