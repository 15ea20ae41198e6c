module libvirtbackup

go 1.19
