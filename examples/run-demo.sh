#!/bin/sh
# Run the demo program in a fresh work folder with its own catalog.
set -eu
demo=$1
work=$(mktemp -d /tmp/libvirt-backup-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
LIBVIRT_BACKUP_DIR="$work/catalog" "$demo" "$work"
