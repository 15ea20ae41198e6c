#!/bin/sh
# Build the Debian packages (dpkg-buildpackage -us -uc -b), check them with
# lintian (no error allowed), then unpack them into a clean root and use
# them from there only: `virt-backup --help`, a C program built through
# the packaged pkg-config file, `import libvirt_backup`, and a backup on
# test:///default through the packaged Python module.
#
#   sh scripts/deb-check.sh [OUT]      (make deb-check; OUT: build/deb)
#   DEB_BUILD_ONLY=1 sh scripts/deb-check.sh [OUT]   (make deb: only build)
set -eu
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-build/deb}" && cd "${1:-build/deb}" && pwd)
rm -rf "$OUT"/*

# dpkg-buildpackage writes its results next to the source tree: build from
# a copy of the tree under OUT so nothing lands outside it. cargo's target/
# is shared through CARGO_TARGET_DIR-free symlinks to keep the build quick.
SRC=$OUT/src/libvirt-backup
mkdir -p "$SRC"
git ls-files -z | xargs -0 cp --parents -t "$SRC"
[ -d target ] && ln -s "$(pwd)/target" "$SRC/target"
[ -d build ] && mkdir -p "$SRC/build" && for f in build/libvirt-backup.so.0 build/libvirt-backup.so; do
    [ -e "$f" ] && cp -a "$f" "$SRC/build/"; done
(cd "$SRC" && dpkg-buildpackage -us -uc -b >"$OUT/build.log" 2>&1) || {
    tail -40 "$OUT/build.log"; echo "deb-check: dpkg-buildpackage failed (log: $OUT/build.log)" >&2; exit 1; }
mv "$OUT"/src/*.deb "$OUT"/src/*.changes "$OUT"/src/*.buildinfo "$OUT"/
rm -rf "$OUT/src"
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

PYTHONPATH=$ROOT/usr/lib/python3/dist-packages LIBVIRT_BACKUP_DIR=$OUT/catalog /usr/bin/python3 - <<'PY'
import libvirt, libvirt_backup
conn = libvirt.open("test:///default")
b = libvirt_backup.createXML(conn.lookupByName("test"), "<domainbackup/>")
b.finishJob()
assert [x.UUIDString() for x in libvirt_backup.listBackups(conn.lookupByName("test"))] == [b.UUIDString()]
print("python3-libvirt-backup: backup", b.UUIDString())
PY
echo "deb-check: OK ($(ls "$OUT"/*.deb | wc -l) packages built, lintian clean of errors, used from a clean root)"
