# imap-oauth-proxy. `make demo` shows it working; `make test` runs everything.

GO       ?= go
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
DOCDIR   ?= $(PREFIX)/share/doc/imap-oauth-proxy
UNITDIR  ?= /etc/systemd/system
DESTDIR  ?=
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULE   := github.com/imap-oauth-proxy/imap-oauth-proxy
LDFLAGS  := -X main.version=$(VERSION) -X $(MODULE)/config.DefaultPath=$(SYSCONFDIR)/imap-oauth-proxy/config.toml
# Short fuzz runs inside `make test`, counted in executions (about 5 s each
# here): a duration budget hits Go's fuzz coordinator race at the deadline
# (golang/go#75804, fixed in Go 1.27), which fails a run with "context
# deadline exceeded" and no crasher. Longer: `make fuzz FUZZTIME=5000000x`.
FUZZTIME ?= 60000x

.PHONY: build demo test check unit fuzz bench load install clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o imap-oauth-proxy ./cmd/imap-oauth-proxy

# The proxy on 127.0.0.1:1143 against a built-in XOAUTH2-only upstream and
# token endpoint; prints the login to try. Ctrl-C stops it.
demo:
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/imap-oauth-proxy demo

test: check unit fuzz

check:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 15m ./...

fuzz:
	@for target in $$($(GO) test -list '^Fuzz' ./proxy/ | grep '^Fuzz'); do \
		echo "fuzz $$target ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) ./proxy/ || exit 1; \
	done

# Proxy against direct access to the same upstream, in the same run: relay
# throughput (in-process upstream, and Dovecot when installed), login
# latency (warm and cold token cache) and login rate under parallel
# collectors, the relay's allocations, then the real daemon's memory per
# idle session (1,000 at a time), and a collector's cold login while
# another local user floods the proxy with 60 parallel wrong logins (as
# root). Throughput runs five times, as its ratios vary most from run to
# run. About ten minutes.
bench:
	$(GO) test -run '^$$' -bench 'Fetch' -benchtime 2s -count 5 ./proxy/
	$(GO) test -run '^$$' -bench 'Login|ProxyCopy' -benchmem -benchtime 2s -count 3 ./proxy/
	$(GO) test -run '^$$' -bench 'IdleSessions' -benchtime 1x -count 3 ./proxy/
	$(GO) test -run '^$$' -bench 'KDFFlood' -benchtime 3x -count 3 ./proxy/

# Concurrent collectors for a bounded time against an in-process proxy and
# directly against the same upstream: logins/s, login p50/p99, throughput.
LOAD_FLAGS ?= -collectors 50 -duration 10s
load:
	$(GO) run ./cmd/imap-oauth-proxy-load $(LOAD_FLAGS)

# Binary, systemd units (the service, and the socket units for ports 143
# and 993, installed but not enabled) and an example config (never
# overwriting a config).
UNITS := $(wildcard dist/*.service dist/*.socket)
install: build
	install -D -m 0755 imap-oauth-proxy $(DESTDIR)$(BINDIR)/imap-oauth-proxy
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	for unit in $(UNITS); do \
		sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' $$unit \
			> $(DESTDIR)$(UNITDIR)/$${unit#dist/} && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$${unit#dist/} || exit 1; \
	done
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)/imap-oauth-proxy
	test -e $(DESTDIR)$(SYSCONFDIR)/imap-oauth-proxy/config.toml || \
		install -m 0640 dist/config.toml $(DESTDIR)$(SYSCONFDIR)/imap-oauth-proxy/config.toml

clean:
	rm -f imap-oauth-proxy
