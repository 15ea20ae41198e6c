package libvirtbackup

/*
#define _GNU_SOURCE
#include <dlfcn.h>

static int lvb_verify_exported(void)
{
    return dlsym(RTLD_DEFAULT, "virDomainBackupVerify") != NULL;
}
*/
import "C"

// verifyExported tells whether the library in this process exports
// virDomainBackupVerify (Backup.Verify needs it).
func verifyExported() bool {
	return C.lvb_verify_exported() != 0
}
