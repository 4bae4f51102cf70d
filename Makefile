SHELL := /bin/bash
# genid: `make build`, `make run`, `make test` (everything, as root: the
# CRIU/runc and QEMU end-to-end tests build their test beds on first use and
# cache them under $(GENID_CACHE)).

GO          ?= go
BIN         := bin/genidctl
GENID_CACHE ?= /var/cache/genid
FUZZTIME    ?= 20s
export GENID_CACHE

.PHONY: all build run test unit fuzz e2e clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN) ./cli

run: build
	./$(BIN) daemon

test: build unit fuzz e2e

# Unit and in-process tests, with the race detector.
unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./genid/... ./cli/...

# A short run of the protocol decoder fuzzer on top of its seed corpus.
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME) ./genid/wire/

# The real binary: daemon and client processes.
e2e: build
	GENIDCTL=$(CURDIR)/$(BIN) $(GO) test -count=1 -v ./test/e2e/

clean:
	rm -rf bin
