package proxy_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

// TestConnectionLimits: over max_connections_per_peer or max_connections
// a connection gets BYE [UNAVAILABLE] and is closed; others still work,
// and a freed slot is usable again. Without uids, all of loopback is one
// peer.
func TestConnectionLimits(t *testing.T) {
	t.Run("per peer", func(t *testing.T) {
		h := newHarness(t, harnessOptions{serverTOML: "max_connections_per_peer = 2\n", peerUID: noUIDs})
		first := h.raw()
		h.rawFrom("127.0.0.2")
		// Another loopback address is the same peer.
		over := h.connFrom("127.0.0.3")
		buf := make([]byte, 200)
		n, _ := over.Read(buf)
		if got := string(buf[:n]); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] ") {
			t.Fatalf("third connection got %q", got)
		}
		// Freeing a slot lets the peer in again.
		first.send("a1 LOGOUT\r\n")
		first.until("a1 ")
		if !first.closed() {
			t.Fatal("LOGOUT did not close")
		}
		r := h.raw()
		r.send(fmt.Sprintf("a1 LOGIN %s %q\r\n", testLogin, testPassword))
		if got := r.line(); !strings.HasPrefix(got, "a1 OK") {
			t.Fatalf("LOGIN in a freed slot: %q", got)
		}
		if !strings.Contains(h.logs.String(), `peer=loopback limit=server.max_connections_per_peer`) {
			t.Error("the refusal is not logged with the peer and the limit's key")
		}
	})
	t.Run("total", func(t *testing.T) {
		h := newHarness(t, harnessOptions{serverTOML: "max_connections = 2\n"})
		h.rawFrom("127.0.0.2")
		h.rawFrom("127.0.0.3")
		over := h.connFrom("127.0.0.4")
		buf := make([]byte, 200)
		n, _ := over.Read(buf)
		if got := string(buf[:n]); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] ") {
			t.Fatalf("connection over max_connections got %q", got)
		}
	})
}

// TestLoginThrottle: after failures, a peer's next password check waits
// (and is logged with its wait); checks beyond what the peer may have in
// progress are refused with NO [UNAVAILABLE] and never reach the KDF or
// the token endpoint; the right password the proxy has seen before is
// never throttled.
func TestLoginThrottle(t *testing.T) {
	h := newHarness(t, harnessOptions{failureDelay: 200 * time.Millisecond})
	h.login()
	r := h.raw()
	for i := range 3 {
		r.send(fmt.Sprintf("a%d LOGIN %s wrong-%d\r\n", i, testLogin, i))
		if got := r.line(); !strings.HasPrefix(got, fmt.Sprintf("a%d NO [AUTHENTICATIONFAILED]", i)) {
			t.Fatalf("failure %d: %q", i, got)
		}
	}
	// The third check waited for the penalty of two failures.
	if !regexp.MustCompile(`msg="login failed".*throttle_wait=[1-9]`).MatchString(h.logs.String()) {
		t.Error("no throttle wait logged after failures")
	}
	// Pipelined guesses: the peer may have MaxChecksInFlightPerPeer checks
	// in progress; the rest are refused without a check.
	requests := h.tokens.Requests()
	p := h.raw()
	var conns []*rawConn
	for i := range proxy.MaxChecksInFlightPerPeer + 3 {
		c := h.raw()
		c.send(fmt.Sprintf("p%d LOGIN %s wrong-p%d\r\n", i, testLogin, i))
		conns = append(conns, c)
	}
	refused := 0
	for i, c := range conns {
		got := c.line()
		switch {
		case strings.HasPrefix(got, fmt.Sprintf("p%d NO [UNAVAILABLE] Too many failed logins", i)):
			refused++
		case !strings.HasPrefix(got, fmt.Sprintf("p%d NO [AUTHENTICATIONFAILED]", i)):
			t.Errorf("parallel guess %d: %q", i, got)
		}
	}
	if refused < 3 {
		t.Errorf("%d of %d parallel guesses refused unchecked, want at least 3", refused, len(conns))
	}
	// The right password, cached since the first login, is not throttled.
	wantLoginUnthrottled(t, h, p, "c1")
	if h.tokens.Requests() != requests {
		t.Error("a guess reached the token endpoint")
	}
}

// TestPreauthMaxTime: a client that keeps busy without logging in is
// still dropped after preauth_max_time.
func TestPreauthMaxTime(t *testing.T) {
	h := newHarness(t, harnessOptions{serverTOML: "preauth_max_time = \"500ms\"\npreauth_timeout = \"20s\"\n"})
	r := h.raw()
	for i := 0; ; i++ {
		r.send(fmt.Sprintf("n%d NOOP\r\n", i))
		got := r.line()
		if strings.HasPrefix(got, "* BYE") {
			if !strings.Contains(got, "no login within") {
				t.Errorf("BYE = %q", got)
			}
			break
		}
		if !strings.HasPrefix(got, fmt.Sprintf("n%d OK", i)) {
			t.Fatalf("NOOP %d = %q", i, got)
		}
	}
	if !r.closed() {
		t.Error("not closed after BYE")
	}
	h.login()
}
