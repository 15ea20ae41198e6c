#!/bin/sh
# Build the Debian packages (dpkg-buildpackage -us -uc -b), check them with
# lintian (no error allowed), then unpack them into a clean root and use
# them from there only: `virt-backup --help`, a C program built through
# the packaged pkg-config file, and a backup on test:///default through the
# packaged Python module.
#
#   sh scripts/deb-check.sh [OUT]      (make deb-check; OUT: build/deb)
#   DEB_BUILD_ONLY=1 sh scripts/deb-check.sh [OUT]   (make deb: only build)
set -eu
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-build/deb}" && cd "${1:-build/deb}" && pwd)
rm -rf "$OUT"/*

# Built in the tree (cargo's target/ is reused: a build from nothing takes
# minutes); dh_builddeb and dpkg-genchanges put the results in OUT, not in
# the tree's parent folder.
rm -f debian/files
DEB_OUT="$OUT" dpkg-buildpackage -us -uc -b \
    --changes-option=-u"$OUT" --buildinfo-option=-u"$OUT" --buildinfo-option=-O"$OUT/libvirt-backup.buildinfo" \
    >"$OUT/build.log" 2>&1 || {
    tail -40 "$OUT/build.log"; echo "deb-check: dpkg-buildpackage failed (log: $OUT/build.log)" >&2; exit 1; }
mv ../libvirt-backup_*_*.changes "$OUT/" 2>/dev/null || true
# What debhelper left in debian/ goes (the tree is as it was).
debian/rules clean >/dev/null 2>&1
ls "$OUT"/*.deb
if [ "${DEB_BUILD_ONLY:-}" = 1 ]; then exit 0; fi

lintian --fail-on error --suppress-tags-from-file /dev/null "$OUT"/*.changes | tee "$OUT/lintian.txt"
echo "deb-check: lintian: $(grep -c '^E:' "$OUT/lintian.txt" || true) errors, $(grep -c '^W:' "$OUT/lintian.txt" || true) warnings"

# Their dependencies are Debian's own packages, installable here.
dpkg --dry-run -i "$OUT"/libvirt-backup0_*.deb "$OUT"/libvirt-backup-dev_*.deb \
    "$OUT"/virt-backup_*.deb "$OUT"/python3-libvirt-backup_*.deb >/dev/null

ROOT=$OUT/root
for d in "$OUT"/*.deb; do dpkg-deb -x "$d" "$ROOT"; done
ARCHLIB=$ROOT/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
export LD_LIBRARY_PATH="$ARCHLIB"
"$ROOT/usr/bin/virt-backup" --help | grep -q "Managed backups of libvirt domains"
"$ROOT/usr/bin/virt-backup" run --help | grep -q -- "--config"
for u in virt-backup.service virt-backup.timer; do
    [ -f "$ROOT/lib/systemd/system/$u" ] || { echo "deb-check: $u not packaged" >&2; exit 1; }
done
[ -f "$ROOT/usr/share/man/man5/virt-backup.toml.5.gz" ]

cat > "$OUT/prog.c" <<'C'
#include <stdio.h>
#include <libvirt/libvirt.h>
#include <libvirt-backup/libvirt-backup.h>
int main(void)
{
    virConnectPtr conn = virConnectOpen("test:///default");
    virDomainPtr dom = conn ? virDomainLookupByName(conn, "test") : NULL;
    virDomainBackupPtr *list = NULL;
    int n = dom ? virDomainBackupList(dom, &list, 0) : -1;
    printf("backups: %d\n", n);
    for (int i = 0; i < n; i++)
        virDomainBackupFree(list[i]);
    free(list);
    if (dom)
        virDomainFree(dom);
    if (conn)
        virConnectClose(conn);
    return n < 0;
}
C
PKG_CONFIG_SYSROOT_DIR=$ROOT PKG_CONFIG_PATH=$ARCHLIB/pkgconfig \
    sh -c 'cc -std=c11 -Wall -Werror -include stdlib.h -o "$1/prog" "$1/prog.c" $(pkg-config --cflags --libs libvirt-backup)' _ "$OUT"
LIBVIRT_BACKUP_DIR=$OUT/catalog "$OUT/prog" | grep -q "backups: 0"

truncate -s 8M "$OUT/disk.raw"
printf 'deb-check' | dd of="$OUT/disk.raw" conv=notrunc 2>/dev/null
PYTHONPATH=$ROOT/usr/lib/python3/dist-packages LIBVIRT_BACKUP_DIR=$OUT/catalog DISK=$OUT/disk.raw /usr/bin/python3 - <<'PY'
import os, libvirt, libvirt_backup
conn = libvirt.open("test:///default")
dom = conn.defineXML(
    "<domain type='test'><name>deb-check</name><memory>65536</memory><os><type>hvm</type></os>"
    "<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>"
    f"<source file='{os.environ['DISK']}'/><target dev='vda'/></disk></devices></domain>")
b = libvirt_backup.createXML(dom, "")
b.finishJob()
assert [x.UUIDString() for x in libvirt_backup.listBackups(dom)] == [b.UUIDString()]
assert b.kind == "full" and b.state == "completed", (b.kind, b.state)
print("python3-libvirt-backup: backup", b.UUIDString(), "of", dom.name())
PY
echo "deb-check: OK ($(ls "$OUT"/*.deb | wc -l) packages built, lintian clean of errors, used from a clean root)"
