# imap-oauth-proxy. `make demo` shows it working; `make test` runs everything.

GO       ?= go
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
DOCDIR   ?= $(PREFIX)/share/doc/imap-oauth-proxy
MANDIR   ?= $(PREFIX)/share/man
UNITDIR  ?= /etc/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DESTDIR  ?=
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULE   := github.com/imap-oauth-proxy/imap-oauth-proxy
LDFLAGS  := -X main.version=$(VERSION) -X $(MODULE)/config.DefaultPath=$(SYSCONFDIR)/imap-oauth-proxy/config.toml
# Short fuzz runs inside `make test`, counted in executions (about 5 s each
# here): a duration budget hits Go's fuzz coordinator race at the deadline
# (golang/go#75804, fixed in Go 1.27), which fails a run with "context
# deadline exceeded" and no crasher. Longer: `make fuzz FUZZTIME=5000000x`.
FUZZTIME ?= 60000x

.PHONY: all build man demo test check unit fuzz bench load install uninstall deb clean

# `make`: the binary and the man pages, what `make install` installs.
all: build man

# The binary is a file target, so that `make install` on a host without Go
# (the tests' container) installs what was built, as long as it is newer
# than every source.
GO_SOURCES := $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum
imap-oauth-proxy: $(GO_SOURCES)
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cmd/imap-oauth-proxy

build: imap-oauth-proxy

# Man pages from their scdoc sources in docs/ (Debian: apt-get install
# scdoc). The date in them is the last commit's, so that a rebuild gives
# the same page.
SCDOC    ?= scdoc
MAN_SOURCES := $(wildcard docs/*.scd)
MAN_PAGES := $(MAN_SOURCES:docs/%.scd=build/man/%)
man: $(MAN_PAGES)
build/man/%: docs/%.scd
	@mkdir -p $(@D)
	SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || date +%s)}; \
	export SOURCE_DATE_EPOCH; $(SCDOC) < $< > $@.tmp && mv $@.tmp $@

# The proxy on 127.0.0.1:1143 against a built-in XOAUTH2-only upstream and
# token endpoint; prints the login to try. Ctrl-C stops it.
demo:
	$(GO) run ./cmd/imap-oauth-proxy-demo

test: check unit fuzz

check:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

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
# collectors, the relay's allocations, the coalescing relay against the
# plain copy loop (Dovecot), POP3 RETR throughput against direct POP3
# (Dovecot), then the real daemon's memory per idle session
# (1,000 at a time), and a collector's cold login while another local user
# floods the proxy with 60 parallel wrong logins (as root). Throughput runs
# five times or more, as its ratios vary most from run to run. About
# fourteen minutes.
bench:
	$(GO) test -run '^$$' -bench 'Fetch' -benchtime 2s -count 5 ./proxy/
	$(GO) test -run '^$$' -bench 'Login|ProxyCopy' -benchmem -benchtime 2s -count 3 ./proxy/
	$(GO) test -run '^$$' -bench 'RelayDovecot' -benchtime 40x -count 8 ./proxy/
	$(GO) test -run '^$$' -bench 'POP3RetrDovecot' -benchtime 20x -count 5 ./proxy/
	$(GO) test -run '^$$' -bench 'IdleSessions' -benchtime 1x -count 3 ./proxy/
	$(GO) test -run '^$$' -bench 'KDFFlood' -benchtime 3x -count 3 ./proxy/
	$(GO) test -run '^$$' -bench 'SMTPSubmit' -benchtime 2s -count 3 ./proxy/

# Concurrent collectors for a bounded time against an in-process proxy and
# directly against the same upstream: logins/s, login p50/p99, throughput
# and CPU per session, and the proxy's ratios to direct. Five runs, each
# alternating the modes in 1-second slices, then the median and range of
# the ratios. About two minutes.
LOAD_FLAGS ?= -collectors 50 -duration 10s -slices 10 -runs 5
load:
	$(GO) run ./cmd/imap-oauth-proxy-load $(LOAD_FLAGS)

# Binary, systemd units (the service, and the socket units for ports 143
# and 993, installed but not enabled), the sysusers.d file, man pages, the
# docs and an example config (never overwriting a config). Without DESTDIR it then
# does what the package's postinst does: creates the system user
# imap-oauth-proxy, gives /etc/imap-oauth-proxy its group and creates
# /var/lib/imap-oauth-proxy for it.
UNITS := $(wildcard dist/*.service dist/*.socket)
fill_units = for unit in $(UNITS); do \
		sed -e 's|@BINDIR@|$(1)|g' -e 's|@DOCDIR@|$(2)|g' $$unit > $(3)/$${unit\#dist/} && \
		chmod 0644 $(3)/$${unit\#dist/} || exit 1; \
	done
install: imap-oauth-proxy $(MAN_PAGES)
	install -D -m 0755 imap-oauth-proxy $(DESTDIR)$(BINDIR)/imap-oauth-proxy
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	$(call fill_units,$(BINDIR),$(DOCDIR),$(DESTDIR)$(UNITDIR))
	install -D -m 0644 dist/imap-oauth-proxy.sysusers $(DESTDIR)$(SYSUSERSDIR)/imap-oauth-proxy.conf
	for page in $(MAN_PAGES); do \
		install -D -m 0644 $$page $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/} || exit 1; \
	done
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -d -m 0755 $(DESTDIR)$(DOCDIR)/docs
	install -m 0644 docs/*.md $(DESTDIR)$(DOCDIR)/docs/
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)/imap-oauth-proxy
	test -e $(DESTDIR)$(SYSCONFDIR)/imap-oauth-proxy/config.toml || \
		install -m 0640 dist/config.toml $(DESTDIR)$(SYSCONFDIR)/imap-oauth-proxy/config.toml
	@if [ -z "$(DESTDIR)" ]; then sh dist/deb/postinst configure; \
	else echo "DESTDIR set: not creating the user imap-oauth-proxy or setting ownership (see dist/deb/postinst)"; fi

# What `make install` put in place, after disabling the units. The config,
# the records and the user stay.
uninstall:
	-systemctl disable --now imap-oauth-proxy.service $(notdir $(filter %.socket,$(UNITS)))
	rm -f $(DESTDIR)$(BINDIR)/imap-oauth-proxy $(DESTDIR)$(SYSUSERSDIR)/imap-oauth-proxy.conf
	for unit in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$${unit#dist/}; done
	for page in $(MAN_PAGES); do rm -f $(DESTDIR)$(MANDIR)/man$${page##*.}/$${page##*/}; done
	rm -rf $(DESTDIR)$(DOCDIR)
	-systemctl daemon-reload
	@echo "kept: $(SYSCONFDIR)/imap-oauth-proxy, /var/lib/imap-oauth-proxy (the token records) and the user imap-oauth-proxy"

# A Debian package for `apt install ./imap-oauth-proxy_*.deb`, built with
# nfpm (a Go tool in go.mod) from dist/nfpm.yaml, into DEB_DIR.
DEB_VERSION ?= 0.1.0+git$(shell git rev-list --count HEAD 2>/dev/null || echo 0)
DEB_DIR ?= .
deb: $(MAN_PAGES)
	rm -rf build/deb
	mkdir -p build/deb/man
	$(GO) build -trimpath -ldflags "-X main.version=$(DEB_VERSION) -X $(MODULE)/config.DefaultPath=/etc/imap-oauth-proxy/config.toml" \
		-o build/deb/imap-oauth-proxy ./cmd/imap-oauth-proxy
	$(call fill_units,/usr/bin,/usr/share/doc/imap-oauth-proxy,build/deb)
	for page in $(MAN_PAGES); do \
		mkdir -p build/deb/man/man$${page##*.} && \
		gzip -9n < $$page > build/deb/man/man$${page##*.}/$${page##*/}.gz || exit 1; \
	done
	DEB_VERSION=$(DEB_VERSION) GOARCH=$$($(GO) env GOARCH) $(GO) tool nfpm package -f dist/nfpm.yaml -p deb -t $(DEB_DIR)/

clean:
	rm -rf imap-oauth-proxy build imap-oauth-proxy_*.deb
