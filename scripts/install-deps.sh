#!/bin/sh
# Install what building and testing libvirt-backup needs on Debian 12, as root.
# Idempotent and quick: it only calls apt-get or cargo for what is missing.
#   install-deps.sh        everything `make check` needs (Ceph's daemons and
#                          ceph-fuse: scripts/ceph-single-node.sh)
#   install-deps.sh demo   only what building and `make demo` need
#   install-deps.sh bench  what `make check` needs, plus virtnbdbackup and mkfs.ext4 (for `make bench`)
set -eu

# Debian packages, by name.
# libzstd-dev: the zstd library the crate links (not built from its sources).
PACKAGES="build-essential pkg-config libvirt-dev libvirt0 libzstd-dev qemu-utils"
if [ "${1:-}" != demo ]; then
    PACKAGES="$PACKAGES g++ libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu
qemu-system-x86 qemu-system-common libnbd-bin valgrind python3 python3-pytest python3-pytest-xdist python3-libvirt
python3-venv python3-pip python3-setuptools strace golang-go openssl rsync
ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse faketime
chrpath debhelper dh-python lintian zsh fish"
fi
if [ "${1:-}" = bench ]; then
    PACKAGES="$PACKAGES virtnbdbackup e2fsprogs"
fi

# cbindgen from crates.io: Debian's 0.24 cannot parse Rust 2024 sources.
CBINDGEN_VERSION=0.29.4

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing packages:$missing (run as root, or install them)" >&2
        exit 1
    fi
    echo "install-deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
# Installing qemu-system-x86 removes a newer qemu-utils from backports where
# one was preinstalled: put Debian's own back.
if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
    echo "install-deps: reinstalling qemu-utils"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-utils
fi

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$CARGO_BIN/cargo" ]; then
    echo "install-deps: cargo (Rust toolchain) not found; install rustup's stable toolchain" >&2
    exit 1
fi
# Only `make check` and `make header` regenerate the header.
if [ "${1:-}" != demo ] && ! "$CARGO_BIN/cbindgen" --version 2>/dev/null | grep -q " $CBINDGEN_VERSION\$"; then
    echo "install-deps: installing cbindgen $CBINDGEN_VERSION"
    PATH="$CARGO_BIN:$PATH" cargo install --quiet --locked cbindgen --version "$CBINDGEN_VERSION"
fi
