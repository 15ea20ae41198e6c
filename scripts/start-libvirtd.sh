#!/bin/sh
# Start virtlogd and libvirtd (QEMU driver, qemu:///system) for the tests, as
# root, on a machine without systemd. Idempotent: running daemons are kept.
set -eu

getent group kvm >/dev/null || groupadd -r kvm
# libvirtd parses its built-in default user and group before qemu.conf.
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt/qemu /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu /etc/libvirt

# Tests run QEMU as root on files anywhere under /tmp: no relabelling, no
# ownership changes.
conf=/etc/libvirt/qemu.conf
want='user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"'
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    printf '%s\n' "$want" > "$conf"
    # A libvirtd already running must re-read it.
    pkill -x libvirtd 2>/dev/null && sleep 1 || true
fi

# TLS exports (python-tests/test_export_tls.py): libvirt's backup jobs read
# their certificates from its default folder, /etc/pki/qemu (the qemu.conf
# above names none); a throw-away test CA is put there once, its client side
# in /etc/pki/libvirt-backup-test. Nothing to restart: QEMU reads the folder
# when a job starts. A folder holding another CA's certificates is left
# alone (the tests that need it are then skipped).
sh "$(dirname "$0")/tls-test-certs.sh" /etc/pki/qemu /etc/pki/libvirt-backup-test/client \
    /etc/pki/libvirt-backup-test/ca || true

pgrep -x virtlogd >/dev/null || virtlogd -d
if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d
fi
# Wait until the daemon answers.
i=0
until virsh -c qemu:///system uri >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "start-libvirtd: libvirtd does not answer on qemu:///system" >&2
        exit 1
    fi
    sleep 0.1
done
echo "libvirtd: qemu:///system is up"
