#!/bin/sh
# C test suite of libvirt-backup.
#
#   STAGE=<abs install prefix> BUILD=<abs build folder> CC=cc sh c-tests/run.sh [NAME...]
#
# (`make c-tests` does this.) Every program is built only through the
# installed pkg-config file, put under $BUILD/c-tests/, and run under
# valgrind with its own catalog (LIBVIRT_BACKUP_DIR) and work folder
# (TEST_WORKDIR), both fresh `mktemp -d` folders under /tmp removed
# afterwards. NAME arguments (e.g. test-create) run only those tests.
# The last line is "N passed, M failed"; the exit status is non-zero if any
# test failed.
set -u

: "${STAGE:?STAGE must be the absolute install prefix (make c-tests sets it)}"
: "${BUILD:?BUILD must be the absolute build folder (make c-tests sets it)}"
CC=${CC:-cc}
CXX=${CXX:-c++}
SRC=$(cd "$(dirname "$0")" && pwd)
OUT=$BUILD/c-tests
PKG_CONFIG_PATH=$STAGE/lib/pkgconfig
export PKG_CONFIG_PATH
mkdir -p "$OUT"

CWARN="-std=c11 -Wall -Wextra -Werror"
CXXWARN="-std=c++17 -Wall -Wextra -Werror"
VALGRIND="valgrind --error-exitcode=99 --suppressions=$SRC/valgrind.supp --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite --quiet"
# A hung test must not hang the suite.
TIMEOUT="timeout -k 10 150"

passed=0
failed=0
failed_names=""
tmpdirs=""

cleanup() {
    for d in $tmpdirs; do rm -rf "$d"; done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

pass() { passed=$((passed + 1)); echo "PASS $1${2:+ ($2)}"; }
fail() {
    failed=$((failed + 1)); failed_names="$failed_names $1"
    echo "FAIL $1${2:+ ($2)}"
}

# Only the tests named on the command line, if any.
SELECT="$*"
selected() {
    [ -z "$SELECT" ] && return 0
    for s in $SELECT; do [ "$s" = "$1" ] && return 0; done
    return 1
}

now() { date +%s; }

# build NAME OUTPUT-LOG COMMAND...: run a build command, log its output.
build() {
    name=$1; log=$2; shift 2
    if "$@" >"$log" 2>&1; then
        return 0
    fi
    cat "$log"
    fail "$name" "build failed: $*"
    return 1
}

# drop_qemu_domains PREFIX: destroy and undefine (with their checkpoints)
# the QEMU domains whose name starts with PREFIX- that a test left behind
# (it crashed or timed out).
drop_qemu_domains() {
    virsh -c qemu:///system list --all --name 2>/dev/null | grep "^$1-" |
        while read -r dom; do
            virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1
            virsh -c qemu:///system undefine --checkpoints-metadata "$dom" >/dev/null 2>&1
            echo "removed QEMU domain $dom left by the test"
        done
}

# run_test NAME BINARY [ARGS...]: run under valgrind with a private catalog
# and work folder; its QEMU domains are named lvb-ctest-<pid>-NAME-*.
run_test() {
    name=$1; bin=$2; shift 2
    work=$(mktemp -d /tmp/libvirt-backup-ctest-work.XXXXXX)
    cat=$(mktemp -d /tmp/libvirt-backup-ctest-catalog.XXXXXX)
    tmpdirs="$tmpdirs $work $cat"
    log=$OUT/$name.log
    prefix=lvb-ctest-$$-$name
    t0=$(now)
    LIBVIRT_BACKUP_DIR=$cat TEST_WORKDIR=$work TEST_DOMAIN_PREFIX=$prefix \
        $TIMEOUT $VALGRIND "$bin" "$@" >"$log" 2>&1
    rc=$?
    t1=$(now)
    drop_qemu_domains "$prefix" >>"$log"
    rm -rf "$work" "$cat"
    if [ $rc -eq 0 ]; then
        pass "$name" "$((t1 - t0))s"
    else
        cat "$log"
        case $rc in
            99) why="valgrind reported errors" ;;
            124|137) why="timed out" ;;
            *) why="exit status $rc" ;;
        esac
        fail "$name" "$why, $((t1 - t0))s; log: $log"
    fi
}

start=$(now)
CFLAGS_LIBS=$(pkg-config --cflags --libs libvirt-backup) || {
    echo "pkg-config cannot find libvirt-backup under $PKG_CONFIG_PATH" >&2
    echo "0 passed, 1 failed"
    exit 1
}

# run_programs NAME...: build and run these test programs, one after another.
run_programs() {
    for name in "$@"; do
        selected "$name" || continue
        # shellcheck disable=SC2086
        build "$name" "$OUT/$name.build.log" \
            $CC $CWARN "$SRC/$name.c" -o "$OUT/$name" $CFLAGS_LIBS || continue
        run_test "$name" "$OUT/$name"
    done
}

# One program per API area, on two lanes that take the next program not
# yet taken (a folder made under $OUT/claims: mkdir is atomic), the
# longest ones first, so that the two cores stay busy to the end. Every
# test has its own catalog, work folder and domain names, so the lanes
# share nothing.
FIRST="test-restore test-hostile test-job test-live test-restore-unmanaged test-verify"
ORDER=$FIRST
for src in "$SRC"/test-*.c; do
    name=$(basename "$src" .c)
    case " $FIRST " in *" $name "*) ;; *) ORDER="$ORDER $name" ;; esac
done
rm -rf "$OUT/claims"
mkdir -p "$OUT/claims"
run_lane() {
    for name in $ORDER; do
        mkdir "$OUT/claims/$name" 2>/dev/null || continue
        run_programs "$name"
    done
}
(run_lane >"$OUT/lane.out" 2>&1) &
lane=$!
run_lane
wait $lane
cat "$OUT/lane.out"
passed=$((passed + $(grep -c '^PASS ' "$OUT/lane.out")))
lane_failed=$(sed -n 's/^FAIL \([^ ]*\).*/\1/p' "$OUT/lane.out")
for n in $lane_failed; do failed=$((failed + 1)); failed_names="$failed_names $n"; done

# Name clash with libvirt >= 6.0 (API.md, points 1 and 2): a C11 program
# linked in both orders, and a C++17 program.
CFLAGS_ONLY=$(pkg-config --cflags libvirt-backup)
LIBDIR_FLAGS="-L$STAGE/lib -Wl,-rpath,$STAGE/lib"
if selected clash-c11; then
    # shellcheck disable=SC2086
    if build clash-c11-virt-first "$OUT/clash-c11-virt-first.build.log" \
        $CC $CWARN "$SRC/clash-c11.c" -o "$OUT/clash-c11-virt-first" \
        $CFLAGS_ONLY $LIBDIR_FLAGS -lvirt -lvirt-backup; then
        run_test clash-c11-virt-first "$OUT/clash-c11-virt-first"
    fi
    # shellcheck disable=SC2086
    if build clash-c11-backup-first "$OUT/clash-c11-backup-first.build.log" \
        $CC $CWARN "$SRC/clash-c11.c" -o "$OUT/clash-c11-backup-first" \
        $CFLAGS_ONLY $LIBDIR_FLAGS -lvirt-backup -lvirt; then
        run_test clash-c11-backup-first "$OUT/clash-c11-backup-first"
    fi
fi
if selected clash-cxx17; then
    # shellcheck disable=SC2086
    if build clash-cxx17 "$OUT/clash-cxx17.build.log" \
        $CXX $CXXWARN "$SRC/clash-cxx17.cpp" -o "$OUT/clash-cxx17" $CFLAGS_LIBS; then
        run_test clash-cxx17 "$OUT/clash-cxx17"
    fi
fi

# Strict C99 users: the header compiles without _Generic, and it defines no
# macro outside the vir/VIR_/LIBVIRT_BACKUP_ prefixes.
if selected header-c99; then
    # shellcheck disable=SC2086
    if build header-c99 "$OUT/header-c99.build.log" \
        $CC -std=c99 -pedantic -Wall -Wextra -Werror "$SRC/header-c99.c" \
        -o "$OUT/header-c99" $CFLAGS_LIBS; then
        stray=$(sed -n 's/^[[:space:]]*#[[:space:]]*define[[:space:]]\{1,\}\([A-Za-z_][A-Za-z0-9_]*\).*/\1/p' \
            "$STAGE/include/libvirt-backup/libvirt-backup.h" |
            grep -v -e '^vir' -e '^VIR_' -e '^LIBVIRT_BACKUP_')
        if [ -n "$stray" ]; then
            fail header-c99 "unprefixed macros in the header: $stray"
        else
            run_test header-c99 "$OUT/header-c99"
        fi
    fi
fi

# The README's short example, built from the README text as written and run
# on a test-driver node file whose domain has a real qcow2 disk: the backup
# it makes must equal the disk.
if selected readme-example; then
    ex=$OUT/readme-example
    mkdir -p "$ex"
    awk '/^## A short example/ { on = 1 } on && /^```c$/ { grab = 1; next }
         grab && /^```$/ { exit } grab { print }' "$SRC/../README.md" >"$ex/backup-vm.c"
    # shellcheck disable=SC2086
    if [ ! -s "$ex/backup-vm.c" ]; then
        fail readme-example "no C example found in README.md"
    elif build readme-example "$ex/build.log" \
        $CC $CWARN "$ex/backup-vm.c" -o "$ex/backup-vm" $CFLAGS_LIBS; then
        work=$(mktemp -d /tmp/libvirt-backup-ctest-work.XXXXXX)
        cat=$(mktemp -d /tmp/libvirt-backup-ctest-catalog.XXXXXX)
        tmpdirs="$tmpdirs $work $cat"
        mkdir "$work/backups"
        qemu-img create -q -f qcow2 "$work/vm1.qcow2" 64M
        qemu-io -f qcow2 -c "write -P 0x5a 1M 3M" -c "write -P 0xa5 40M 1M" \
            "$work/vm1.qcow2" >/dev/null
        sed "s|@DISK@|$work/vm1.qcow2|" >"$work/node.xml" <<'EOF'
<node>
  <domain type='test'>
    <name>vm1</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='@DISK@'/>
        <target dev='vda' bus='virtio'/>
      </disk>
    </devices>
  </domain>
</node>
EOF
        log=$OUT/readme-example.log
        LIBVIRT_BACKUP_DIR=$cat $TIMEOUT $VALGRIND "$ex/backup-vm" \
            "test://$work/node.xml" vm1 vda "$work/backups" >"$log" 2>&1
        rc=$?
        if [ $rc -ne 0 ]; then
            cat "$log"
            fail readme-example "exit status $rc; log: $log"
        elif ! grep -q "<state>completed</state>" "$log"; then
            cat "$log"
            fail readme-example "the printed XML does not say completed"
        elif ! qemu-img compare -q -f qcow2 -F qcow2 "$work/vm1.qcow2" \
            "$work/backups/vm1-vda.qcow2" >>"$log" 2>&1; then
            cat "$log"
            fail readme-example "the backup differs from the disk"
        else
            pass readme-example "backup equals the disk"
        fi
        rm -rf "$work" "$cat"
    fi
fi

# Point 4: loading the library into virsh changes nothing it prints.
if selected clash-virsh-preload; then
    lib=$STAGE/lib/libvirt-backup.so.0
    plain=$OUT/virsh-plain.out
    preloaded=$OUT/virsh-preload.out
    cat=$(mktemp -d /tmp/libvirt-backup-ctest-catalog.XXXXXX)
    tmpdirs="$tmpdirs $cat"
    LIBVIRT_BACKUP_DIR=$cat virsh -c test:///default backup-dumpxml test >"$plain" 2>&1
    rc_plain=$?
    LIBVIRT_BACKUP_DIR=$cat LD_PRELOAD=$lib virsh -c test:///default backup-dumpxml test \
        >"$preloaded" 2>&1
    rc_pre=$?
    rm -rf "$cat"
    if [ ! -e "$lib" ]; then
        fail clash-virsh-preload "$lib does not exist"
    elif [ $rc_plain -ne $rc_pre ]; then
        fail clash-virsh-preload "exit status $rc_plain without LD_PRELOAD, $rc_pre with it"
    elif ! cmp -s "$plain" "$preloaded"; then
        diff -u "$plain" "$preloaded"
        fail clash-virsh-preload "output differs under LD_PRELOAD"
    else
        pass clash-virsh-preload "exit status $rc_plain both ways"
    fi
fi

end=$(now)
echo "c-tests took $((end - start))s${failed_names:+; failed:$failed_names}"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
