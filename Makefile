# libvirt-backup: build, install, test.
#
#   make demo     install what is missing, build, run the demo (test:///default)
#   make check    install what is missing, build, run every test
#   make install PREFIX=DIR [DESTDIR=...]
#   make header   regenerate include/libvirt-backup/libvirt-backup.h

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
VERSION := 0.1.0
SONAME := libvirt-backup.so.0

CARGO ?= cargo
CBINDGEN ?= $(or $(CARGO_HOME),$(HOME)/.cargo)/bin/cbindgen
CC ?= cc
PYTHON ?= /usr/bin/python3
# The libvirt_backup Python package: Debian's system site-packages for a
# system prefix, else a tree of its own under PREFIX (put it on PYTHONPATH).
ifneq ($(filter /usr /usr/local,$(PREFIX)),)
PYTHONDIR ?= /usr/lib/python3/dist-packages
else
PYTHONDIR ?= $(PREFIX)/lib/python3/dist-packages
endif
PYPKG := python/libvirt_backup
# What the installed Python package loads: the installed library by path,
# or (Debian's package, Architecture: all) its soname through the loader.
PYLIBRARY ?= $(LIBDIR)/$(SONAME)

BUILD := build
STAGE := $(abspath $(BUILD)/stage)
LIB := $(BUILD)/$(SONAME)
HEADER := include/libvirt-backup/libvirt-backup.h
STATICLIB := target/release/liblibvirt_backup.a
# The test build: the same library with the crash-test stop points
# (feature test-hooks, src/testhook.rs), in its own cargo target folder so
# that it never replaces the release objects. Only python-tests use it.
TESTLIB := $(BUILD)/test/$(SONAME)
TESTSTATICLIB := target/test-hooks/release/liblibvirt_backup.a

export PATH := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)

.PHONY: check-side-lane all bench bench-scale bench-ceph deps header check-header check-functions install uninstall demo check test-rust \
        test-rust-build test-rust-run libvirtd ceph ceph-stop stage \
        c-tests python-tests clean FORCE install-python python-pkg-tests go-tests fuzz

all: $(LIB)

deps:
	@sh scripts/install-deps.sh

$(STATICLIB): FORCE
	$(CARGO) build --release --locked --lib

# The shared object is linked here rather than by rustc so that our version
# script (symbol version LIBVIRT_BACKUP_0.1, only the public API exported)
# and -Bsymbolic apply; rustc's cdylib script would replace ours. zstd is
# Debian's libzstd (zstd-sys's pkg-config feature), linked here as rustc
# would have; -z defs makes a library missing from this line fail the link
# rather than a user's program.
define link_so
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@.tmp -Wl,-soname,$(SONAME) -Wl,-Bsymbolic -Wl,-z,defs \
	    -Wl,--version-script=libvirt-backup.map -Wl,--gc-sections \
	    -Wl,--whole-archive $< -Wl,--no-whole-archive \
	    $$(pkg-config --libs libvirt libzstd) -lpthread -ldl -lm -lgcc_s -lc
	mv $@.tmp $@
	ln -sf $(SONAME) $(dir $@)libvirt-backup.so
endef

$(LIB): $(STATICLIB) libvirt-backup.map
	$(link_so)

$(TESTSTATICLIB): FORCE
	$(CARGO) build --release --locked --lib --features test-hooks --target-dir target/test-hooks

$(TESTLIB): $(TESTSTATICLIB) libvirt-backup.map
	$(link_so)

header:
	$(CBINDGEN) --quiet --config cbindgen.toml --crate libvirt_backup --output $(HEADER)

# Fails when the committed header differs from what the sources generate.
check-header:
	@$(CBINDGEN) --quiet --config cbindgen.toml --crate libvirt_backup --output $(BUILD)/header-check.h
	@if ! cmp -s $(BUILD)/header-check.h $(HEADER); then \
	    diff -u $(HEADER) $(BUILD)/header-check.h | head -40; \
	    echo "error: $(HEADER) is stale: run 'make header' and commit it" >&2; exit 1; fi
	@echo "header: $(HEADER) is up to date"

$(BUILD)/libvirt-backup.pc: pkgconfig/libvirt-backup.pc.in FORCE
	@mkdir -p $(BUILD)
	@sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCLUDEDIR@|$(INCLUDEDIR)|; s|@VERSION@|$(VERSION)|' \
	    $< > $(BUILD)/libvirt-backup.pc
	@if [ "$(LIBDIR)" != /usr/lib ] && [ "$(LIBDIR)" != /usr/lib/x86_64-linux-gnu ]; then \
	    sed -i 's|^Libs: .*|& -Wl,-rpath,$${libdir}|' $(BUILD)/libvirt-backup.pc; fi

install: $(LIB) $(BUILD)/libvirt-backup.pc
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)/libvirt-backup
	install -m 0755 $(LIB) $(DESTDIR)$(LIBDIR)/libvirt-backup.so.$(VERSION)
	ln -sf libvirt-backup.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libvirt-backup.so
	install -m 0644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/libvirt-backup/
	install -m 0644 $(BUILD)/libvirt-backup.pc $(DESTDIR)$(LIBDIR)/pkgconfig/
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then ldconfig 2>/dev/null || true; fi
	@$(MAKE) --no-print-directory install-python

# The Python package, with _paths.py naming the library installed above.
install-python:
	install -d $(DESTDIR)$(PYTHONDIR)/libvirt_backup
	install -m 0644 $(PYPKG)/__init__.py $(PYPKG)/_capi.py $(PYPKG)/py.typed $(DESTDIR)$(PYTHONDIR)/libvirt_backup/
	printf '# Written by make install.\nLIBRARY = "%s"\n' '$(PYLIBRARY)' \
	    > $(DESTDIR)$(PYTHONDIR)/libvirt_backup/_paths.py

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libvirt-backup.so* $(DESTDIR)$(LIBDIR)/pkgconfig/libvirt-backup.pc
	rm -rf $(DESTDIR)$(INCLUDEDIR)/libvirt-backup
	rm -rf $(DESTDIR)$(PYTHONDIR)/libvirt_backup

# A private install used by the demo and the C tests, which build only
# through the installed pkg-config file.
stage: $(LIB)
	@$(MAKE) --no-print-directory install PREFIX=$(STAGE) >/dev/null

STAGE_ENV := PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig

demo:
	@sh scripts/install-deps.sh demo
	@$(MAKE) --no-print-directory stage
	$(STAGE_ENV) $(CC) -Wall -Wextra -Werror -o $(BUILD)/demo examples/demo.c \
	    $$($(STAGE_ENV) pkg-config --cflags --libs libvirt-backup)
	./examples/run-demo.sh $(BUILD)/demo

# Side-by-side timings against qemu-img, libvirt and virtnbdbackup (sizes:
# see bench/bench.c); the live rows need libvirtd (BENCH_LIVE=0 skips them).
bench:
	@sh scripts/install-deps.sh bench
	@if [ "$${BENCH_LIVE:-1}" != 0 ]; then sh scripts/start-libvirtd.sh; fi
	@$(MAKE) --no-print-directory stage
	$(STAGE_ENV) $(CC) -O2 -Wall -Wextra -Werror -o $(BUILD)/bench bench/bench.c bench/copy.c bench/live.c \
	    $$($(STAGE_ENV) pkg-config --cflags --libs libvirt-backup libvirt-qemu)
	@rm -rf $(BUILD)/bench-catalog
	LIBVIRT_BACKUP_DIR=$(abspath $(BUILD))/bench-catalog $(BUILD)/bench; \
	    rc=$$?; rm -rf $(BUILD)/bench-catalog; exit $$rc
	@# The digest index at write time vs the same copy without it, then the
	@# digest index rows (delta chains), from Rust bench tests.
	$(CARGO) test --release --locked --test copy_bench -- --ignored --nocapture 2>/dev/null | grep '^|'
	$(CARGO) test --release --locked --test index_bench -- --ignored --nocapture 2>/dev/null | grep '^|'
	@# The rate limit in wall time: the rate a copy ran at next to the rate
	@# asked (tests/rate_bench.rs; the tests check its schedule instead).
	$(CARGO) test --release --locked --test rate_bench -- --ignored --nocapture 2>/dev/null | grep '^|'
	@# Compressed full backups vs qemu-img convert -c (bench/compression.py).
	LIBVIRT_BACKUP_LIB=$(STAGE)/lib/$(SONAME) LIBVIRT_BACKUP_DIR=$(abspath $(BUILD))/bench-catalog \
	    $(PYTHON) bench/compression.py; rc=$$?; rm -rf $(BUILD)/bench-catalog; exit $$rc
	@# Encrypted full backup vs a plain one (QEMU domain on qemu:///system,
	@# whose libvirt keeps the secret: bench/encryption.py).
	@if [ "$${BENCH_LIVE:-1}" != 0 ]; then \
	    LIBVIRT_BACKUP_LIB=$(STAGE)/lib/$(SONAME) LIBVIRT_BACKUP_DIR=$(abspath $(BUILD))/bench-catalog \
	    $(PYTHON) bench/encryption.py; rc=$$?; rm -rf $(BUILD)/bench-catalog; exit $$rc; fi
	@# Instant restore next to a full one (QEMU domain on qemu:///system).
	@if [ "$${BENCH_LIVE:-1}" != 0 ]; then \
	    LIBVIRT_BACKUP_LIB=$(STAGE)/lib/$(SONAME) LIBVIRT_BACKUP_DIR=$(abspath $(BUILD))/bench-catalog \
	    $(PYTHON) bench/instant_restore.py; rc=$$?; rm -rf $(BUILD)/bench-catalog; exit $$rc; fi

# A year of backups on one domain (SCALE_N, default 10000): List, ListChildren,
# LookupByUUID, Delete, and another domain's CreateXML during a merge; memory
# of a backup vs chain depth; the digest index rows.
bench-scale: $(LIB)
	LIBVIRT_BACKUP_LIB=$(abspath $(LIB)) CARGO=$(CARGO) $(PYTHON) bench/scale.py

# The catalog on CephFS (ceph-fuse, the single-node cluster above): a full
# backup against qemu-img convert + sync into the same mount, and List of
# BENCH_CEPH_N (default 10000) backups, cold and warm.
bench-ceph: $(LIB) ceph
	LIBVIRT_BACKUP_LIB=$(abspath $(LIB)) $(PYTHON) bench/ceph.py

# The suites one after another, with what can share the two cores side by
# side (make -j2, each part's output shown when it ends):
# - the Rust tests run (mostly waiting on libvirt, QEMU and rate limits)
#   beside the build of the test-hooks library python-tests need, then the
#   start of the single-node Ceph they also need, once the Rust tests were
#   built (two compilers at once would only take turns);
# - the C tests, alone: their two lanes under valgrind keep both cores busy
#   (beside the step above they made it longer than the two one after the
#   other: 290 s against 269 s);
# - python-tests (on two pytest workers, mostly waiting on libvirt and
#   QEMU) beside check-side-lane: the command's build and tests, the Debian
#   packages, the Python and Go packages' tests, one after another.
# Every suite names its own domains, catalogs and sockets, and none
# restarts libvirtd, so they share nothing but the daemons. A step fails
# when any of its parts does (make -j2 starts nothing more, waits for what
# runs, then fails). About 15 minutes from a clean clone on 2 cores.
CHECK_STEPS := all check-header test-rust-build "test-rust-run $(TESTLIB) ceph" c-tests \
    "python-tests check-side-lane"

# $(call timed_steps,STEP...): each step made in turn and timed, stopping
# at the first that fails; a quoted step of several targets is made with
# -j2, each target's output shown when it ends.
define timed_steps
for t in $(1); do \
    case "$$t" in *" "*) j="-j2 --output-sync=target" ;; *) j= ;; esac; \
    s=$$(date +%s); $(MAKE) --no-print-directory $$j $$t || exit 1; \
    echo "make check: $$t passed in $$(( $$(date +%s) - s )) s"; done
endef

check: deps
	@$(call timed_steps,$(CHECK_STEPS))
	@echo "make check: all suites passed"

# One suite after another, each timed (cli-tests and deb-check both build
# and install the command into build/: never at once).
check-side-lane:
	@$(call timed_steps,cli-tests deb-check python-pkg-tests go-tests)

# libvirtd with the QEMU driver, for tests on qemu:///system domains.
libvirtd:
	@sh scripts/start-libvirtd.sh

# A single-node Ceph whose CephFS is mounted twice with ceph-fuse, two
# "hosts" sharing a catalog (python-tests/test_cephfs.py, `make bench-ceph`):
# ~15 s the first time, ~0.1 s once up. Left running afterwards, like
# libvirtd (`make ceph-stop` stops it, keeping its data in
# /var/tmp/libvirt-backup-ceph). Where it cannot start (no /dev/fuse, no
# Ceph packages, not root: the script's exit 77) test_cephfs.py is skipped
# with the reason; where it failed to start, test_cephfs.py tries once more
# and fails if it fails again.
ceph:
	@sh scripts/ceph-single-node.sh start; rc=$$?; \
	    if [ $$rc = 77 ]; then echo "make ceph: Ceph cannot run here: python-tests/test_cephfs.py will be skipped" >&2; \
	    elif [ $$rc != 0 ]; then echo "make ceph: the single-node Ceph did not start: python-tests/test_cephfs.py tries again" >&2; fi

ceph-stop:
	@sh scripts/ceph-single-node.sh stop

# No function of the library (src/) or of the command (cli/src/) is longer
# than this many lines; test code is exempt (scripts/long-functions.py).
MAX_FUNCTION_LINES := 80

check-functions:
	$(PYTHON) scripts/long-functions.py --max $(MAX_FUNCTION_LINES) src cli/src

# The Rust tests: check-functions and clippy, the test binaries built
# (test-rust-build), then run (test-rust-run; `make check` runs the two
# steps apart, building the test-hooks library beside the run).
test-rust:
	@$(MAKE) --no-print-directory test-rust-build
	@$(MAKE) --no-print-directory test-rust-run

test-rust-build:
	@$(MAKE) --no-print-directory check-functions
	$(CARGO) clippy --release --locked --all-targets -- -D warnings
	$(CARGO) test --release --locked --no-run

test-rust-run: libvirtd
	$(CARGO) test --release --locked

c-tests: stage libvirtd
	STAGE=$(STAGE) BUILD=$(abspath $(BUILD)) CC=$(CC) sh c-tests/run.sh

# On the test build (crash tests stop it at named points); the release
# library is named too, to check that it has no stop points. Two pytest
# workers (pytest-xdist), each taking whole files (a file's module
# fixtures, e.g. the Ceph mounts, are made once): the tests mostly wait on
# libvirt and QEMU, and every test has its own domains, catalog and
# sockets (so too cli-tests). PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
python-tests: $(LIB) $(TESTLIB) libvirtd ceph
	LIBVIRT_BACKUP_LIB=$(abspath $(TESTLIB)) LIBVIRT_BACKUP_RELEASE_LIB=$(abspath $(LIB)) \
	    $(PYTHON) -m pytest -q $(PYTEST_PARALLEL) python-tests

# The libvirt_backup package (python/), through libvirt-python objects.
python-pkg-tests: $(LIB) libvirtd
	LIBVIRT_BACKUP_LIB=$(abspath $(LIB)) $(PYTHON) -m pytest -q python/tests

# The Go package (go/), built through the staged .pc file: vet, then its
# tests under the race detector (test:///default and qemu:///system).
# Module mode with no network and no third-party module; Go's caches live
# under build/ so nothing depends on $$HOME.
GO ?= go
GO_ENV := $(STAGE_ENV) GOFLAGS=-mod=mod GOPROXY=off GOENV=off GOTOOLCHAIN=local \
    GOCACHE=$(abspath $(BUILD))/go-cache GOPATH=$(abspath $(BUILD))/go-path CGO_ENABLED=1

go-tests: stage libvirtd
	cd go && $(GO_ENV) $(GO) vet ./...
	cd go && $(GO_ENV) $(GO) test -race -count=1 -v ./...
# The XML fuzz test for FUZZ_SECONDS (default 600) instead of a fixed count;
# FUZZ_SEED picks another random sequence.
fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-600} $(CARGO) test --release --locked --test xml_fuzz -- --nocapture

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

FORCE:

# virt-backup, the command (cli/, its own Cargo.lock): linked against the
# shared object above like any C program, installed with the library.
CLI := target/release/virt-backup
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
# virt-backup.service/.timer and the per-domain virt-backup@.service/.timer
# (systemd/), with ExecStart naming $(BINDIR)/virt-backup.
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
UNITS := virt-backup.service virt-backup.timer virt-backup@.service virt-backup@.timer
CLI_STAGE := $(abspath $(BUILD)/cli-stage)

.PHONY: cli install-cli uninstall-cli cli-tests units deb deb-check

all: cli

cli: $(LIB)
	$(CARGO) build --release --locked --manifest-path cli/Cargo.toml --target-dir target
	@for sh in bash zsh fish; do \
	    LD_LIBRARY_PATH=$(BUILD) $(CLI) completions $$sh > $(BUILD)/virt-backup.$$sh.tmp && \
	    mv $(BUILD)/virt-backup.$$sh.tmp $(BUILD)/virt-backup.$$sh || exit 1; done

install: install-cli

# The units with the binary's installed path (a .in file has @BINDIR@).
units:
	@mkdir -p $(BUILD)/systemd
	@for u in $(UNITS); do \
	    if [ -f systemd/$$u.in ]; then src=systemd/$$u.in; else src=systemd/$$u; fi; \
	    sed -e 's|@BINDIR@|$(BINDIR)|g' $$src > $(BUILD)/systemd/$$u; done

install-cli: cli units
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(BASHCOMPDIR) \
	    $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) $(DESTDIR)$(SYSTEMDUNITDIR)
	install -m 0755 $(CLI) $(DESTDIR)$(BINDIR)/virt-backup
	install -m 0644 man/virt-backup.1 $(DESTDIR)$(MANDIR)/man1/virt-backup.1
	install -m 0644 man/virt-backup.toml.5 $(DESTDIR)$(MANDIR)/man5/virt-backup.toml.5
	install -m 0644 $(BUILD)/virt-backup.bash $(DESTDIR)$(BASHCOMPDIR)/virt-backup
	install -m 0644 $(BUILD)/virt-backup.zsh $(DESTDIR)$(ZSHCOMPDIR)/_virt-backup
	install -m 0644 $(BUILD)/virt-backup.fish $(DESTDIR)$(FISHCOMPDIR)/virt-backup.fish
	install -m 0644 $(addprefix $(BUILD)/systemd/,$(UNITS)) $(DESTDIR)$(SYSTEMDUNITDIR)/

uninstall: uninstall-cli

uninstall-cli:
	rm -f $(DESTDIR)$(BINDIR)/virt-backup $(DESTDIR)$(MANDIR)/man1/virt-backup.1 \
	    $(DESTDIR)$(MANDIR)/man5/virt-backup.toml.5 \
	    $(DESTDIR)$(BASHCOMPDIR)/virt-backup $(DESTDIR)$(ZSHCOMPDIR)/_virt-backup \
	    $(DESTDIR)$(FISHCOMPDIR)/virt-backup.fish $(addprefix $(DESTDIR)$(SYSTEMDUNITDIR)/,$(UNITS))

# Unit tests (prune selection, tree drawing), then the installed command run
# as a user runs it, on test:///default and qemu:///system domains.
cli-tests: cli libvirtd
	$(CARGO) clippy --release --locked --manifest-path cli/Cargo.toml --target-dir target -- -D warnings
	$(CARGO) test --release --locked --manifest-path cli/Cargo.toml --target-dir target
	@rm -rf $(CLI_STAGE)
	@$(MAKE) --no-print-directory install PREFIX=$(CLI_STAGE) >/dev/null
	VIRT_BACKUP=$(CLI_STAGE)/bin/virt-backup LIBVIRT_BACKUP_LIB=$(abspath $(LIB)) \
	    $(PYTHON) -m pytest -q $(PYTEST_PARALLEL) cli/tests; rc=$$?; rm -rf $(CLI_STAGE); exit $$rc

# The Debian packages (debian/: libvirt-backup0, libvirt-backup-dev,
# virt-backup, python3-libvirt-backup), built with dpkg-buildpackage in the
# tree, the results in build/deb; deb-check adds lintian (no error) and
# uses them from a clean root (scripts/deb-check.sh).
deb: $(LIB)
	DEB_BUILD_ONLY=1 sh scripts/deb-check.sh $(BUILD)/deb

deb-check: $(LIB)
	sh scripts/deb-check.sh $(BUILD)/deb
