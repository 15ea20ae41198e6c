#!/bin/sh
# A single-node Ceph with a CephFS, mounted twice with ceph-fuse as two
# "hosts", for the shared-catalog tests (python-tests/test_cephfs.py) and
# `make bench-ceph`. As root, on a machine without systemd: the script runs
# the daemons itself.
#
#   ceph-single-node.sh start    start (or finish starting) it; idempotent
#   ceph-single-node.sh stop     unmount, stop the daemons it started; data kept
#   ceph-single-node.sh status   exit 0 when the cluster answers and both mounts work
#   ceph-single-node.sh destroy  stop, then remove the whole folder
#   ceph-single-node.sh env      the variables the tests read (KEY=VALUE lines)
#
# Everything lives in one folder, $LIBVIRT_BACKUP_CEPH_DIR (default
# /var/tmp/libvirt-backup-ceph), with its own cluster config (ceph.conf
# there; nothing in /etc/ceph): one mon (msgr2 on 127.0.0.1:$PORT, default
# 46789), one mgr, one OSD on BlueStore in a 4 GiB sparse file, one MDS,
# pools of size 1, cephx on, a CephFS named "cephfs". Daemons bind to
# loopback only, ports $PORT+11.. $PORT+211. Pid files are in run/: `stop`
# ends only the processes named there (checked by name), so another Ceph
# on the machine is left alone.
#
# The two "hosts" are two ceph-fuse clients, client.host-a and
# client.host-b, with keys of their own, mounted at mnt/host-a and
# mnt/host-b. The MDS is told to mark a silent client stale after 10 s and
# evict it (releasing its flocks) 10 s later (session_timeout,
# session_autoclose; defaults 60 and 300), so a test of a host that died
# waits ~20 s instead of minutes.
#
# Start: ~16 s from nothing, ~12 s from data kept by `stop`; ~400 MiB of
# memory when idle.
set -eu

DIR=${LIBVIRT_BACKUP_CEPH_DIR:-/var/tmp/libvirt-backup-ceph}
PORT=${LIBVIRT_BACKUP_CEPH_PORT:-46789}
SESSION_TIMEOUT=30
SESSION_AUTOCLOSE=30
CONF=$DIR/ceph.conf
RUN=$DIR/run
HOSTS="host-a host-b"

log() { echo "ceph-single-node: $*" >&2; }
die() { log "$*"; exit 1; }
# What this machine lacks (not root, no Ceph packages, no FUSE): exit 77,
# the tests' "skipped", where any other failure fails them.
unavailable() { log "$*"; exit 77; }

ceph_cli() { timeout 30 ceph -c "$CONF" -n client.admin "$@"; }

# The pid in run/$1.pid, if that process is alive and is $2.
alive_pid() {
    f=$RUN/$1.pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    echo "$pid"
}

write_conf() {
    fsid=$1
    mkdir -p "$DIR/keys" "$RUN" "$DIR/log" "$DIR/mnt/host-a" "$DIR/mnt/host-b"
    cat > "$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$PORT]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = $((PORT + 11))
ms bind port max = $((PORT + 211))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $DIR/keys/\$name.keyring
run dir = $RUN
pid file = $RUN/\$name.pid
admin socket = $RUN/\$name.asok
log file = $DIR/log/\$name.log
crash dir = $DIR/crash
mon data = $DIR/\$name
osd data = $DIR/\$name
mds data = $DIR/\$name
mgr data = $DIR/\$name
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 4294967296
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mount = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
mgr initial modules =
mds cache memory limit = 268435456
[mon]
keyring = $DIR/\$name/keyring
[client]
log file = $DIR/log/\$name.log
client mount timeout = 20
client oc size = 67108864
EOF
}

# The cluster's first start. Every key is made here and given to the mon
# with its first keyring (no `auth` call afterwards); one `ceph` run (its
# commands on standard input) creates the OSD's id, the pools and the file
# system while the OSD's --mkfs (which needs its key in the mon: that is
# why the keys come first) runs and the mgr and the MDS start. Marked done
# by $DIR/ready.
bootstrap() {
    log "creating a cluster in $DIR"
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    write_conf "$fsid"
    k=$DIR/keys
    ceph-authtool --create-keyring "$k/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    key client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *'
    key mgr.x --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
    key mds.a --cap mon 'allow profile mds' --cap osd 'allow rwx' --cap mds 'allow' \
        --cap mgr 'allow profile mds'
    key osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
    for h in $HOSTS; do
        # What `ceph fs authorize cephfs client.$h / rw` gives.
        key "client.$h" --cap mon 'allow r fsname=cephfs' --cap mds 'allow rw fsname=cephfs' \
            --cap osd 'allow rw tag cephfs data=cephfs'
    done
    monmaptool --create --addv a "[v2:127.0.0.1:$PORT]" --fsid "$fsid" "$DIR/monmap" >/dev/null
    mkdir -p "$DIR/mon.a" "$DIR/mgr.x" "$DIR/mds.a" "$DIR/osd.0"
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$k/mon.keyring"
    start_mon
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/osd-mkfs.log" 2>&1 &
    mkfs=$!
    start_mgr
    start_mds
    ceph_cli >"$DIR/log/bootstrap.out" 2>&1 <<EOF || die "bootstrap commands failed (see $DIR/log/bootstrap.out)"
osd new $osd_uuid 0
osd pool create cephfs_metadata 16 16
osd pool create cephfs_data 16 16
fs new cephfs cephfs_metadata cephfs_data
fs set cephfs session_timeout $SESSION_TIMEOUT
fs set cephfs session_autoclose $SESSION_AUTOCLOSE
EOF
    wait $mkfs || die "ceph-osd --mkfs failed (see $DIR/log/osd-mkfs.log)"
    start_osd
    touch "$DIR/ready"
}

# A key of its own for $1 with the caps that follow, also put in the mon's
# first keyring.
key() {
    n=$1
    shift
    ceph-authtool --create-keyring "$DIR/keys/$n.keyring" --gen-key -n "$n" "$@" >/dev/null
    ceph-authtool "$DIR/keys/mon.keyring" --import-keyring "$DIR/keys/$n.keyring" >/dev/null
}

start_mon() {
    alive_pid mon.a ceph-mon >/dev/null || ceph-mon -c "$CONF" -i a
}
start_mgr() {
    alive_pid mgr.x ceph-mgr >/dev/null || ceph-mgr -c "$CONF" -i x
}
start_osd() {
    alive_pid osd.0 ceph-osd >/dev/null || ceph-osd -c "$CONF" -i 0 2>>"$DIR/log/osd.0.stderr"
}
start_mds() {
    alive_pid mds.a ceph-mds >/dev/null || ceph-mds -c "$CONF" -i a >/dev/null
}

# Whether the file system at $1 answers (a dead ceph-fuse leaves a mount
# that fails with ENOTCONN).
mount_works() {
    mountpoint -q "$1" && timeout 10 stat -f -c %T "$1" 2>/dev/null | grep -q fuse
}

mount_host() {
    h=$1 m=$DIR/mnt/$1
    if mount_works "$m" && alive_pid "client.$h" ceph-fuse >/dev/null; then
        return 0
    fi
    # A dead client's mount, or one that outlived its pid file.
    if mountpoint -q "$m" 2>/dev/null || ! stat "$m" >/dev/null 2>&1; then
        umount -l "$m" 2>/dev/null || true
    fi
    mkdir -p "$m"
    # A client started while the MDS is still settling (a cluster just
    # started, a loaded machine) can fail its first session: try again.
    try=1
    until ceph-fuse -c "$CONF" -n "client.$h" "$m" >>"$DIR/log/client.$h.stderr" 2>&1 &&
        mount_works "$m"; do
        [ $try -lt 3 ] || die "ceph-fuse for client.$h failed 3 times (see $DIR/log/client.$h.stderr and .log)"
        echo "ceph-single-node: ceph-fuse for client.$h failed; trying again" >&2
        umount -l "$m" 2>/dev/null || true
        try=$((try + 1))
        sleep 3
    done
}

wait_healthy() {
    # Asked of the MDS itself: after a restart the mon's map still shows
    # the previous instance up:active until its beacons are missed (~15 s),
    # and a client mounting then fails ("probably no MDS server is up?").
    i=0
    until timeout 10 ceph --admin-daemon "$RUN/mds.a.asok" status 2>/dev/null |
        grep -q '"state": "up:active"'; do
        i=$((i + 1))
        [ $i -le 180 ] || die "the MDS is not active after 90 s (see $DIR/log)"
        sleep 0.5
    done
    # The OSD must be up for the data pool.
    i=0
    until ceph_cli osd stat 2>/dev/null | grep -q '1 up'; do
        i=$((i + 1))
        [ $i -le 120 ] || die "the OSD is not up after 60 s (see $DIR/log)"
        sleep 0.5
    done
}

cmd_start() {
    [ "$(id -u)" = 0 ] || unavailable "run as root"
    for tool in ceph-mon ceph-mgr ceph-osd ceph-mds ceph-fuse; do
        command -v "$tool" >/dev/null || unavailable "$tool is not installed (scripts/install-deps.sh)"
    done
    modprobe fuse 2>/dev/null || true
    [ -c /dev/fuse ] || unavailable "/dev/fuse is missing: FUSE is not available"
    if cmd_status >/dev/null 2>&1; then
        log "already up: CephFS at $DIR/mnt/host-a and $DIR/mnt/host-b"
        return 0
    fi
    t0=$(date +%s.%N)
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if [ ! -f "$DIR/ready" ]; then
        # A first start that did not finish: begin again from nothing.
        cmd_stop quiet
        find "$DIR" -mindepth 1 -maxdepth 1 ! -name mnt -exec rm -rf {} +
        bootstrap
    else
        start_mon
        start_mgr
        start_osd
        start_mds
    fi
    wait_healthy
    for h in $HOSTS; do
        mount_host "$h"
    done
    log "up in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }") s: CephFS at $DIR/mnt/host-a and $DIR/mnt/host-b"
}

# Stop daemons and clients by their pid files ("name:command" each): TERM
# to all at once (an MDS takes ~9 s to go), then KILL what is left after 15 s.
stop_all() {
    pids=""
    for d in "$@"; do
        if pid=$(alive_pid "${d%%:*}" "${d#*:}"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids="$pids $pid"
        fi
        rm -f "$RUN/${d%%:*}.pid"
    done
    for pid in $pids; do
        i=0
        while [ -d "/proc/$pid" ] && [ $i -lt 150 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        if [ -d "/proc/$pid" ]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

cmd_stop() {
    for h in $HOSTS; do
        m=$DIR/mnt/$h
        if mountpoint -q "$m" 2>/dev/null || ! stat "$m" >/dev/null 2>&1; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        fi
    done
    stop_all client.host-a:ceph-fuse client.host-b:ceph-fuse
    stop_all mds.a:ceph-mds mgr.x:ceph-mgr osd.0:ceph-osd
    stop_all mon.a:ceph-mon
    [ "${1:-}" = quiet ] || log "stopped (data kept in $DIR)"
}

cmd_status() {
    [ -f "$DIR/ready" ] || { echo "not created ($DIR)"; return 1; }
    rc=0
    for d in mon.a:ceph-mon mgr.x:ceph-mgr osd.0:ceph-osd mds.a:ceph-mds \
        client.host-a:ceph-fuse client.host-b:ceph-fuse; do
        if pid=$(alive_pid "${d%%:*}" "${d#*:}"); then
            echo "${d%%:*}: running (pid $pid)"
        else
            echo "${d%%:*}: not running"
            rc=1
        fi
    done
    for h in $HOSTS; do
        if mount_works "$DIR/mnt/$h"; then
            echo "$DIR/mnt/$h: mounted"
        else
            echo "$DIR/mnt/$h: not mounted"
            rc=1
        fi
    done
    return $rc
}

cmd_env() {
    echo "CEPH_CONF=$CONF"
    echo "CEPH_MNT_A=$DIR/mnt/host-a"
    echo "CEPH_MNT_B=$DIR/mnt/host-b"
    echo "CEPH_SESSION_TIMEOUT=$SESSION_TIMEOUT"
    echo "CEPH_SESSION_AUTOCLOSE=$SESSION_AUTOCLOSE"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
destroy)
    cmd_stop quiet
    for h in $HOSTS; do
        mountpoint -q "$DIR/mnt/$h" 2>/dev/null && die "$DIR/mnt/$h is still mounted"
    done
    rm -rf "$DIR"
    log "removed $DIR"
    ;;
*)
    echo "usage: $0 start|stop|status|destroy|env" >&2
    exit 2
    ;;
esac
