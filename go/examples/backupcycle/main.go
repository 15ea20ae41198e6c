// Command backupcycle: full and incremental backup of a shut-off domain, restore, delete.
package main

import (
	"context"
	"log"
	"os"

	lvb "libvirt.org/go/libvirtbackup"
)

func must[T any](v T, err error) T { check(err); return v }
func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func main() { // usage: backupcycle URI DOMAIN
	dom := must(lvb.LookupDomain(os.Args[1], os.Args[2]))
	defer dom.Close()
	full := must(dom.CreateXML("", lvb.DOMAIN_BACKUP_CREATE_WAIT)) // every disk, default targets
	defer full.Free()
	inc := must(dom.CreateXML("<domainbackup><parent><uuid>"+must(full.UUIDString())+"</uuid></parent></domainbackup>", 0))
	defer inc.Free()
	check(inc.FinishJob(context.Background())) // waits; a cancelled ctx would abort the job
	check(lvb.Restore("<domainbackup><uuid>"+must(inc.UUIDString())+"</uuid></domainbackup>", lvb.DOMAIN_BACKUP_RESTORE_REWRITE_EXISTING_DISK))
	check(full.Delete(lvb.DOMAIN_BACKUP_DELETE_ALL_CHILDREN))
}
