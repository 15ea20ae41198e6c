module libvirt.org/go/libvirtbackup

go 1.19
