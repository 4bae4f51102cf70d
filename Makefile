SHELL := /bin/bash
# genid: `make build`, `make run`, `make test` (everything, as root: the
# CRIU/runc and QEMU end-to-end tests build their test beds on first use and
# cache them under $(GENID_CACHE)).

GO          ?= go
BIN         := bin/genidctl
GENID_CACHE ?= /var/cache/genid
# A count, not a duration: with a duration, Go's fuzz coordinator can report
# its own deadline as a failure ("context deadline exceeded", no failing
# input) when a worker is mid-call as time runs out (go.dev/issue/75804). That
# failed a clean CI run here with go1.26.8. `make test` runs each fuzzer
# a short while on its corpus; `make torture` runs them at depth (10 M
# inputs in all).
FUZZTIME    ?= 500000x
FUZZTIME_CONFIG ?= 100000x
export GENID_CACHE

PLUGIN        := bin/genid-criu.so
PLUGIN_SRC    := plugin/criu/genid-criu.c plugin/criu/genid.h
PLUGIN_CFLAGS := -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Werror -O2 -shared -fPIC
CRIU_HEADER   := /usr/include/criu/criu-plugin.h
CRIU_HEADERS  := $(CRIU_HEADER) /usr/include/criu/version.h
TESTBED       := hack/testbed.sh
# Bounds, so that a hang fails its step well within CI's 90 minutes: the test
# binary's own -test.timeout fails with every goroutine's stack; the test bed
# run's --timeout (seconds) then stops what the binary could not; `timeout`
# bounds the test beds' builds (downloads).
CRIU_TEST_TIMEOUT := 15m
CRIU_RUN_TIMEOUT  := 1200
VM_TEST_TIMEOUT   := 20m
BUILD_TIMEOUT     := 20m

# Installation (`make install`, `make deb`): DESTDIR and PREFIX as usual. CRIU
# loads plugins from its compiled-in /usr/lib/criu only, whatever PREFIX is;
# systemd reads units from /usr/lib and /usr/local/lib alike.
PREFIX          ?= /usr/local
BINDIR          ?= $(PREFIX)/bin
MANDIR          ?= $(PREFIX)/share/man
UNITDIR         ?= $(PREFIX)/lib/systemd/system
CRIU_PLUGIN_DIR ?= /usr/lib/criu
BASHCOMPDIR     ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR      ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR     ?= $(PREFIX)/share/fish/vendor_completions.d
DOCDIR          ?= $(PREFIX)/share/doc/genid
# The Debian package: a version that grows with each commit.
DEB_VERSION ?= $(shell git log -1 --format=0.0~git%cd.%h --date=format:%Y%m%d%H%M%S 2>/dev/null || echo 0.0~unknown)
DEB_ARCH    ?= $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB         := bin/genid_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_ROOT    := bin/deb
SYSTEMD_RUN_TIMEOUT := 600
SYSTEMD_TEST_TIMEOUT := 8m

.PHONY: all build run test unit fuzz e2e e2e-criu e2e-vm e2e-systemd plugin install-plugin install man deb bench clean
.PHONY: c-deps c-test fuzz-c install-dev torture torture-short mutants

all: build

# The version the daemon reports (status, metrics) and doctor compares.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w -X github.com/genid-project/genid/internal/version.version=$(VERSION)' -o $(BIN) ./cli

run: build
	./$(BIN) daemon

test: build unit fuzz e2e torture-short e2e-criu e2e-systemd e2e-vm

# Unit and in-process tests, with the race detector.
unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./genid/... ./cli/... ./checkpoint/... ./internal/... ./test/bench/ ./plugin/...

# Short runs of the fuzzers on top of their seed corpora: the protocol's
# decoder (the daemon's own), the checkpoint record's reader, and
# oci-config's edit of real configs (slower per input: a tenth as many).
fuzz: fuzz-c
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./internal/wire/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeRecord$$' -fuzztime=$(FUZZTIME) ./checkpoint/
	$(GO) test -run='^$$' -fuzz='^FuzzAddHooks$$' -fuzztime=$(FUZZTIME_CONFIG) ./cli/

# The C fuzzer: libFuzzer on the CRIU plugin's reader of the checkpoint
# record, under ASan and UBSan, seeded with the Go writer's records, for
# FUZZ_C_RUNS inputs (about 10 s on the 2-core test machine); then the C and
# Go readers must agree on every input of its corpus, and the round trip
# (record_roundtrip, under ASan and UBSan too) holds on it and on the
# largest record: what the C reader took, the C writer writes back as the Go
# writer encodes it (seeds -roundtrip). CRIU's plugin header
# comes from the test bed where this host lacks it. The corpus kept in the
# repository (plugin/criu/fuzz/corpus) is read, never written: new finds go
# to bin/fuzz/corpus, and FUZZ_C_KEEP=1 (make torture) merges those that
# add coverage into it, to be committed.
FUZZ_C_RUNS ?= 500000
FUZZ_C      := bin/record-fuzz
FUZZ_C_RT   := bin/record-roundtrip
FUZZ_C_KEPT := plugin/criu/fuzz/corpus
fuzz-c: c-deps
	@mkdir -p bin/fuzz/include/criu bin/fuzz/corpus
	@if [ -f $(CRIU_HEADER) ]; then cp $(CRIU_HEADERS) bin/fuzz/include/criu/; else \
		root=$$(timeout $(BUILD_TIMEOUT) $(TESTBED) build | tail -1) && \
		for h in $(CRIU_HEADERS); do cp "$$root$$h" bin/fuzz/include/criu/ || exit 1; done; fi
	clang -std=gnu11 -g -O1 -Wall -Wextra -Wno-unused-parameter -Werror -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all -Ibin/fuzz/include -o $(FUZZ_C) plugin/criu/fuzz/record_fuzz.c
	clang -std=gnu11 -g -O1 -Wall -Wextra -Wno-unused-parameter -Werror -fsanitize=address,undefined \
		-fno-sanitize-recover=all -Ibin/fuzz/include -o $(FUZZ_C_RT) plugin/criu/fuzz/record_roundtrip.c
	$(GO) run ./plugin/criu/fuzz/seeds bin/fuzz/seeds
	@echo "$(FUZZ_C) -runs=$(FUZZ_C_RUNS) bin/fuzz/corpus $(FUZZ_C_KEPT) bin/fuzz/seeds (log: bin/fuzz/record-fuzz.log)"
	@$(FUZZ_C) -runs=$(FUZZ_C_RUNS) -artifact_prefix=bin/fuzz/ bin/fuzz/corpus $(FUZZ_C_KEPT) bin/fuzz/seeds \
		>bin/fuzz/record-fuzz.log 2>&1 || { tail -40 bin/fuzz/record-fuzz.log; exit 1; }
	@tail -1 bin/fuzz/record-fuzz.log
	$(GO) run ./plugin/criu/fuzz/seeds -check $(FUZZ_C) bin/fuzz/corpus $(FUZZ_C_KEPT) bin/fuzz/seeds
	$(GO) run ./plugin/criu/fuzz/seeds -largest -roundtrip $(FUZZ_C_RT) bin/fuzz/corpus $(FUZZ_C_KEPT) bin/fuzz/seeds
	@if [ "$(FUZZ_C_KEEP)" = 1 ]; then timeout 10m $(FUZZ_C) -merge=1 $(FUZZ_C_KEPT) bin/fuzz/corpus 2>&1 | tail -1; fi

# The real binary: daemon and client processes (and the C client's tests,
# which need clang).
e2e: build c-deps
	GENIDCTL=$(CURDIR)/$(BIN) $(GO) test -count=1 -v ./test/e2e/

# The C client (plugin/criu/genid.h) and examples/c against the real daemon:
# built by gcc and clang with -Wall -Wextra -Werror, and under ASan+UBSan.
c-test: build c-deps
	GENIDCTL=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -run '^Test(CAPI|ExamplesC|InstallDev|CClient|CConnect|CTimeout)$$' ./test/e2e/

# clang with its sanitizer and libFuzzer runtimes (Debian's clang and
# libclang-rt-N-dev), installed where it cannot build a sanitized fuzzer.
C_PROBE := printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return !d && n; }\n' | \
	clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1
c-deps:
	@{ $(C_PROBE) && command -v pkg-config >/dev/null; } || { \
		inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$$@" || \
			{ DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$$@"; }; }; \
		command -v clang >/dev/null || inst clang; \
		command -v pkg-config >/dev/null || inst pkg-config; \
		inst libclang-rt-$$(clang -dumpversion | cut -d. -f1)-dev; \
		$(C_PROBE) || { echo "c-deps: clang still cannot build a fuzzer with ASan and UBSan" >&2; exit 1; }; }

# The CRIU plugin: built on the host when it has CRIU's plugin header
# (libcriu-dev), else inside the test bed, which has it.
plugin: $(PLUGIN)

$(PLUGIN): $(PLUGIN_SRC)
	@mkdir -p bin
	@if [ -f $(CRIU_HEADER) ]; then \
		echo "cc $(PLUGIN_SRC) -> $@"; \
		$(CC) $(PLUGIN_CFLAGS) -o $@ plugin/criu/genid-criu.c; \
	else \
		echo "no $(CRIU_HEADER) here: building $@ in the test bed"; \
		timeout $(BUILD_TIMEOUT) $(TESTBED) build >/dev/null && \
		$(TESTBED) run --timeout 300 --bind $(CURDIR):/src -w /src -- gcc $(PLUGIN_CFLAGS) -o $@ plugin/criu/genid-criu.c; \
	fi

# The C client for developers: genid.h in INCLUDEDIR/genid and genid.pc
# (`pkg-config --cflags genid`; Version: the protocol genid.h speaks).
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(PREFIX)/share/pkgconfig
install-dev:
	install -D -m 0644 plugin/criu/genid.h $(DESTDIR)$(INCLUDEDIR)/genid/genid.h
	install -d $(DESTDIR)$(PKGCONFIGDIR)
	sed -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
		-e "s|@VERSION@|$$(sed -n 's/^#define GENID_VERSION[[:space:]]*//p' plugin/criu/genid.h)|" \
		plugin/criu/genid.pc.in >$(DESTDIR)$(PKGCONFIGDIR)/genid.pc
	chmod 0644 $(DESTDIR)$(PKGCONFIGDIR)/genid.pc

# Installs the plugin where CRIU (and so runc) loads it without flags.
install-plugin: $(PLUGIN)
	install -D -m 0644 $(PLUGIN) $(DESTDIR)$(CRIU_PLUGIN_DIR)/genid-criu.so

# genidctl's man page and shell completions, made by genidctl from its own
# command definitions.
man: build
	./$(BIN) generate man | gzip -9n > bin/genidctl.8.gz
	./$(BIN) generate bash > bin/genidctl.bash
	./$(BIN) generate zsh > bin/_genidctl
	./$(BIN) generate fish > bin/genidctl.fish

# Everything genid installs: genidctl, the CRIU plugin where CRIU loads it
# without flags, the systemd units (socket activation), the man page and
# the completions.
install: build $(PLUGIN) man
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/genidctl
	install -D -m 0644 $(PLUGIN) $(DESTDIR)$(CRIU_PLUGIN_DIR)/genid-criu.so
	install -d $(DESTDIR)$(UNITDIR)
	install -m 0644 dist/systemd/genid.socket dist/systemd/genid-admin.socket $(DESTDIR)$(UNITDIR)/
	sed 's|@BINDIR@|$(BINDIR)|g' dist/systemd/genid.service.in > $(DESTDIR)$(UNITDIR)/genid.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/genid.service
	install -D -m 0644 bin/genidctl.8.gz $(DESTDIR)$(MANDIR)/man8/genidctl.8.gz
	install -D -m 0644 bin/genidctl.bash $(DESTDIR)$(BASHCOMPDIR)/genidctl
	install -D -m 0644 bin/_genidctl $(DESTDIR)$(ZSHCOMPDIR)/_genidctl
	install -D -m 0644 bin/genidctl.fish $(DESTDIR)$(FISHCOMPDIR)/genidctl.fish
	install -D -m 0644 LICENSE $(DESTDIR)$(DOCDIR)/copyright

# The same files as a Debian package (dpkg-deb), with maintainer scripts
# that enable the units and start the sockets (dist/debian/). It needs the
# C library version the plugin's symbols name, and recommends criu.
deb: build $(PLUGIN) man
	rm -rf $(DEB_ROOT) bin/genid_*.deb
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(DEB_ROOT) PREFIX=/usr
	install -d $(DEB_ROOT)/DEBIAN
	install -m 0755 dist/debian/postinst dist/debian/prerm dist/debian/postrm $(DEB_ROOT)/DEBIAN/
	cd $(DEB_ROOT) && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums
	glibc=$$(grep -ao 'GLIBC_2\.[0-9.]*' $(PLUGIN) | sed 's/GLIBC_//' | sort -Vu | tail -n 1) && \
	size=$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1) && \
	sed -e 's|@VERSION@|$(DEB_VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e "s|@SIZE@|$$size|" -e "s|@GLIBC@|$$glibc|" \
		dist/debian/control.in > $(DEB_ROOT)/DEBIAN/control
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(DEB)

# Real CRIU 4.x and runc, in the test bed, with the plugin installed in
# CRIU's default plugin dir. The test bed's selftest first: the bed itself
# (criu, runc, and that runs leave the shared cache as it was).
e2e-criu: build plugin
	timeout $(BUILD_TIMEOUT) $(TESTBED) build >/dev/null
	$(TESTBED) selftest
	CGO_ENABLED=0 $(GO) test -c -o bin/criu-e2e.test ./test/criu
	CGO_ENABLED=0 $(GO) build -o bin/examples/go/ ./examples/go/...
	$(TESTBED) run --timeout $(CRIU_RUN_TIMEOUT) \
		--bind $(CURDIR):/src --ro-bind $(CURDIR)/$(PLUGIN):/usr/lib/criu/genid-criu.so \
		--env GENIDCTL=/src/bin/genidctl -w /src/test/criu -- \
		/src/bin/criu-e2e.test -test.v -test.count=1 -test.timeout=$(CRIU_TEST_TIMEOUT)

# The Debian package under a real systemd 257 as pid 1, booted in the test
# bed: installed with dpkg, socket activation, restart, stop, hardening,
# purge (test/systemd).
e2e-systemd: deb
	timeout $(BUILD_TIMEOUT) $(TESTBED) build >/dev/null
	CGO_ENABLED=0 $(GO) test -c -o bin/systemd-e2e.test ./test/systemd
	$(TESTBED) run --rw --timeout $(SYSTEMD_RUN_TIMEOUT) --ro-bind /dev/kmsg \
		--ro-bind $(CURDIR)/bin:/src/bin --ro-bind $(CURDIR)/$(DEB):/tmp/genid.deb \
		--env GENID_DEB=/tmp/genid.deb -w /src/bin -- \
		/src/bin/systemd-e2e.test -test.v -test.count=1 -test.timeout=$(SYSTEMD_TEST_TIMEOUT)

# Real VM snapshots and restores under QEMU: the vmgenid backend, the look
# back of a daemon started after a restore, and QEMU's vmclock device (the
# backports bed: trixie-backports' QEMU and Linux).
e2e-vm: build
	timeout $(BUILD_TIMEOUT) hack/vm.sh build >/dev/null
	timeout $(BUILD_TIMEOUT) env VM_BED=backports hack/vm.sh build >/dev/null
	GENIDCTL=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout $(VM_TEST_TIMEOUT) ./test/vm/

# Faults, load and hostile peers (test/torture): each case at full size,
# not part of `make test` (at most 30 minutes on 2 cores, as root); prints
# a table of what was tried and what held, and writes it to bin/torture.json.
# The restore cycles run in the test bed first (about 4 minutes for 100 on
# 2 cores); their row joins the table, and their failure fails the target
# once the table is printed.
# It also runs every fuzzer at depth (10 M inputs in all, with $(GO) and
# `make fuzz-c`) and copies what the Go fuzzers found into their packages'
# testdata/fuzz, to be committed. docs/torture.md says how to read it.
# The mutants (hack/mutants.sh) run meanwhile, from the start: the test bed's
# build (here, or for the plugin on a host without CRIU's headers) is mostly
# downloading, and the restore cycles and several cases
# wait on processes and the clock. Their rows (one a package) join the
# table, and their failure (under 95%, stopped, a failed control run) fails
# the target once it is printed. In one shell: a failed step stops them.
# (The plugin's build is `make`, not $(MAKE): make -n would run this line.)
TORTURE_TIMEOUT := 30m
TORTURE_CYCLES  := 100
torture: build
	CGO_ENABLED=0 $(GO) test -c -o bin/torture.test ./test/torture
	CGO_ENABLED=0 $(GO) test -c -o bin/criu-e2e.test ./test/criu
	command -v gremlins >/dev/null || timeout 600 $(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
	rm -f bin/torture-*.json bin/torture-*.rc bin/torture-mutants.log
	set -m; PATH="$$PATH:$$($(GO) env GOPATH)/bin" MUTANTS_ROWS=bin/torture-mutants.json \
		hack/mutants.sh >bin/torture-mutants.log 2>&1 </dev/null & mutants=$$!; set +m; \
	trap 'kill -- -$$mutants 2>/dev/null' EXIT; \
	echo "torture: the mutants run meanwhile (pid $$mutants, log: bin/torture-mutants.log)"; \
	make --no-print-directory plugin || exit; \
	timeout $(BUILD_TIMEOUT) $(TESTBED) build >/dev/null || exit; \
	$(TESTBED) run --timeout 1200 --bind $(CURDIR):/src --ro-bind $(CURDIR)/$(PLUGIN):/usr/lib/criu/genid-criu.so \
		--env GENIDCTL=/src/bin/genidctl --env GENID_TORTURE_CYCLES=$(TORTURE_CYCLES) \
		--env GENID_TORTURE_ROW=/src/bin/torture-restore.json -w /src/test/criu -- \
		/src/bin/criu-e2e.test -test.v -test.count=1 -test.run '^TestRestoreCycles$$' -test.timeout=15m; \
	restore=$$?; \
	GENIDCTL=$(CURDIR)/$(BIN) GO=$(GO) bin/torture.test -test.v -test.count=1 -test.timeout=$(TORTURE_TIMEOUT) \
		-torture.full -torture.table=false -torture.json bin/torture-cases.json; \
	cases=$$?; \
	wait $$mutants; mutated=$$?; trap - EXIT; \
	cat bin/torture-mutants.log; \
	bin/torture.test -test.run '^$$' -torture.json bin/torture.json \
		-torture.include bin/torture-cases.json,bin/torture-restore.json,bin/torture-mutants.json; \
	table=$$?; \
	test $$cases = 0 || { echo "torture: a case failed (its log is above the table)" >&2; exit 1; }; \
	test $$restore = 0 || { echo "torture: the restore cycles failed in the test bed" >&2; exit 1; }; \
	test $$mutated = 0 || { echo "torture: the mutants failed (bin/torture-mutants.log, bin/mutants/)" >&2; exit 1; }; \
	test $$table = 0 || { echo "torture: a part left no result to include (above the table)" >&2; exit 1; }

# Mutation testing (gremlins, from the Go module proxy) of the packages that
# guard the semantics, the privilege check and the parsers, and
# (hack/mutants-c.sh) of the CRIU plugin's C reader and writer of the
# record: a line each, failing under 95% efficacy (docs/mutants.md). make
# torture runs it too.
mutants:
	command -v gremlins >/dev/null || timeout 600 $(GO) install github.com/go-gremlins/gremlins/cmd/gremlins@v0.6.0
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" hack/mutants.sh

# The short version of each torture case, in `make test`.
torture-short: build
	GENIDCTL=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 10m ./test/torture/

# Benchmarks, not part of `make test` (as root, about 35 minutes on 2 cores):
# genid against its physical limits and its peers, each ratio measured in
# one run. Prints a markdown table; the same data goes to
# test/bench/results.json. BENCHFLAGS: e.g. -quick, -only fanout,barrier.
# Every command is bounded: the bench bounds what it starts, and the whole
# run may take BENCH_TIMEOUT.
BENCH_TIMEOUT ?= 60m
bench: build plugin
	@command -v dbus-daemon >/dev/null || { DEBIAN_FRONTEND=noninteractive timeout 10m apt-get install -y --no-install-recommends dbus-daemon || \
		{ DEBIAN_FRONTEND=noninteractive timeout 10m apt-get update && DEBIAN_FRONTEND=noninteractive timeout 10m apt-get install -y --no-install-recommends dbus-daemon; }; }
	timeout 2m $(CC) -std=gnu11 -O2 -Wall -Wextra -Werror -pthread -o bin/bench-waiters test/bench/waiters/waiters.c
	CGO_ENABLED=0 timeout 10m $(GO) build -o bin/bench ./test/bench
	cd test/bench && timeout -k 30s $(BENCH_TIMEOUT) ../../bin/bench -readme ../../README.md $(BENCHFLAGS)

clean:
	rm -rf bin
