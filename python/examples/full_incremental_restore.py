#!/usr/bin/python3
"""Full backup, incremental backup, restore as a new domain, delete.
Usage: full_incremental_restore.py URI DOMAIN"""
import sys

import libvirt
import libvirt_backup as lb

conn = libvirt.open(sys.argv[1])
dom = conn.lookupByName(sys.argv[2])

full = lb.createXML(dom, "<domainbackup/>", lb.VIR_DOMAIN_BACKUP_CREATE_WAIT)
inc = lb.createXML(dom, f"<domainbackup><parent><uuid>{full.UUIDString()}</uuid></parent>"
                        "</domainbackup>", lb.VIR_DOMAIN_BACKUP_CREATE_WAIT)
print("incremental", inc.UUIDString(), inc.parameters()["bytes.written"], "bytes")

name = dom.name() + "-restored"
lb.restore(f"<domainbackup><uuid>{inc.UUIDString()}</uuid><domain name='{name}'/>"
           "</domainbackup>", lb.VIR_DOMAIN_BACKUP_RESTORE_NEW_DOMAIN)
print("restored", conn.lookupByName(name).name())

full.delete(lb.VIR_DOMAIN_BACKUP_DELETE_ALL_CHILDREN)
print("backups left", len(lb.listBackups(dom)))
