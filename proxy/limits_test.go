package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestConnectionLimits: over max_connections_per_ip or max_connections a
// connection gets BYE [UNAVAILABLE] and is closed; others still work, and a
// freed slot is usable again.
func TestConnectionLimits(t *testing.T) {
	t.Run("per address", func(t *testing.T) {
		h := newHarness(t, harnessOptions{serverTOML: "max_connections_per_ip = 2\n"})
		first := h.raw()
		h.raw()
		over := h.connFrom("")
		buf := make([]byte, 200)
		n, _ := over.Read(buf)
		if got := string(buf[:n]); !strings.HasPrefix(got, "* BYE [UNAVAILABLE] ") {
			t.Fatalf("third connection got %q", got)
		}
		// Another address is not affected.
		h.rawFrom("127.0.0.2")
		// Freeing a slot lets the address in again.
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
		if !strings.Contains(h.logs.String(), "server.max_connections_per_ip") {
			t.Error("the refusal is not logged with the limit's key")
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

// TestLoginThrottle: failures of one login from one address are answered
// later and later, then that login is refused from that address without
// checking the password; the same login from another address still works.
func TestLoginThrottle(t *testing.T) {
	h := newHarness(t, harnessOptions{failureDelay: time.Millisecond})
	r := h.raw()
	for i := 0; i < 10; i++ {
		r.send(fmt.Sprintf("a%d LOGIN %s wrong-%d\r\n", i, testLogin, i))
		if got := r.line(); !strings.HasPrefix(got, fmt.Sprintf("a%d NO [AUTHENTICATIONFAILED]", i)) {
			t.Fatalf("failure %d: %q", i, got)
		}
	}
	requests := h.tokens.Requests()
	r.send(fmt.Sprintf("b1 LOGIN %s %q\r\n", testLogin, testPassword))
	if got := r.line(); !strings.HasPrefix(got, "b1 NO [UNAVAILABLE] Too many failed logins") {
		t.Fatalf("right password after 10 failures from this address: %q", got)
	}
	if h.tokens.Requests() != requests {
		t.Error("a locked login reached the token endpoint")
	}
	// The collector on another address is not locked out.
	other := h.rawFrom("127.0.0.2")
	other.send(fmt.Sprintf("a1 LOGIN %s %q\r\n", testLogin, testPassword))
	if got := other.line(); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("LOGIN from another address: %q", got)
	}
	// Nor is another login from the guesser's address: it is answered on
	// its merits (no such login), not refused as locked.
	r.send("b2 LOGIN someone-else whatever\r\n")
	if got := r.line(); !strings.HasPrefix(got, "b2 NO [AUTHENTICATIONFAILED]") {
		t.Fatalf("another login from the locked address: %q", got)
	}
	if !strings.Contains(h.logs.String(), "too many failures from this address") {
		t.Error("the lockout is not logged")
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
