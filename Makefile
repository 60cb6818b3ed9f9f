# imap-oauth-proxy. `make demo` shows it working; `make test` runs everything.

GO       ?= go
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULE   := github.com/imap-oauth-proxy/imap-oauth-proxy
LDFLAGS  := -X main.version=$(VERSION) -X $(MODULE)/config.DefaultPath=$(SYSCONFDIR)/imap-oauth-proxy/config.toml
# Short fuzz runs inside `make test`; run longer ones with `make fuzz FUZZTIME=5m`.
FUZZTIME ?= 10s

.PHONY: build demo test check unit fuzz bench clean

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

# Proxy against direct access to the same upstream, in the same run.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s -count 3 ./proxy/

clean:
	rm -f imap-oauth-proxy
