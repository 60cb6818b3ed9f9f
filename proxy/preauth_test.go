package proxy_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// preauthCapsWanted are the capabilities a plain loopback listener must
// offer before login (DESIGN.md, "Pre-auth").
var preauthCapsWanted = []string{"IMAP4rev1", "AUTH=PLAIN", "SASL-IR", "LITERAL+", "ID"}

// dialPreauth connects to the proxy without reading the greeting.
func dialPreauth(t *testing.T, h *harness) *rawConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", h.addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	t.Cleanup(func() { conn.Close() })
	return newRawConn(t, conn)
}

// expectLine reads one line and fails unless it starts with prefix.
func expectLine(t *testing.T, r *rawConn, prefix string) string {
	t.Helper()
	l := r.line()
	if !strings.HasPrefix(l, prefix) {
		t.Fatalf("got %q, want a line starting with %q", l, prefix)
	}
	return l
}

// expectClosed fails unless the proxy closed the connection cleanly after
// what was already read.
func expectClosed(t *testing.T, r *rawConn) {
	t.Helper()
	if !r.closed() {
		t.Fatal("connection still open (or reset), want a clean close")
	}
}

// checkCaps fails unless the space-separated list has every preauth
// capability and no LOGINDISABLED.
func checkCaps(t *testing.T, where, list string) {
	t.Helper()
	have := map[string]bool{}
	for _, c := range strings.Fields(list) {
		have[strings.ToUpper(c)] = true
	}
	for _, c := range preauthCapsWanted {
		if !have[strings.ToUpper(c)] {
			t.Errorf("%s: capabilities %q lack %s", where, list, c)
		}
	}
	if have["LOGINDISABLED"] {
		t.Errorf("%s: capabilities %q say LOGINDISABLED on a loopback listener", where, list)
	}
}

// loginStillWorks checks that a fresh collector can log in and use the
// mailbox, after an abusive session.
func loginStillWorks(t *testing.T, h *harness) {
	t.Helper()
	c := h.login()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT after login: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// TestPreauthGreeting: the greeting and CAPABILITY advertise the proxy's
// pre-auth capabilities.
func TestPreauthGreeting(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	r := dialPreauth(t, h)
	g := expectLine(t, r, "* OK [CAPABILITY ")
	code, _, ok := strings.Cut(strings.TrimPrefix(g, "* OK [CAPABILITY "), "]")
	if !ok {
		t.Fatalf("greeting %q: unterminated response code", g)
	}
	checkCaps(t, "greeting", code)

	r.send("a1 CAPABILITY\r\n")
	lines := r.until("a1 ")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "* CAPABILITY ") || !strings.HasPrefix(lines[1], "a1 OK") {
		t.Fatalf("CAPABILITY = %q, want one * CAPABILITY and a1 OK", lines)
	}
	list := strings.TrimPrefix(lines[0], "* CAPABILITY ")
	checkCaps(t, "CAPABILITY", list)
	if strings.Join(strings.Fields(list), " ") != strings.Join(strings.Fields(code), " ") {
		t.Errorf("CAPABILITY %q differs from the greeting's %q", list, code)
	}
}

// TestPreauthCommands: NOOP, ID, a command that needs login, and LOGOUT.
func TestPreauthCommands(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	r := h.raw()

	r.send("a1 NOOP\r\n")
	expectLine(t, r, "a1 OK")

	// Not the proxy's name: the collector is to learn the provider's after
	// login (the upstream gets the collector's ID then).
	r.send(`a2 ID ("name" "x")` + "\r\n")
	if id := expectLine(t, r, "* ID "); id != "* ID NIL" {
		t.Errorf("ID response %q, want * ID NIL", id)
	}
	expectLine(t, r, "a2 OK")

	r.send("a3 ID NIL\r\n")
	expectLine(t, r, "* ID NIL")
	expectLine(t, r, "a3 OK")

	// Not available before login: BAD, and the session goes on.
	r.send("a4 SELECT INBOX\r\n")
	expectLine(t, r, "a4 BAD")
	r.send("a5 noop\r\n")
	expectLine(t, r, "a5 OK")

	// STARTTLS without a local certificate is refused, not fatal.
	r.send("a6 STARTTLS\r\n")
	expectLine(t, r, "a6 BAD")
	r.send("a7 NOOP\r\n")
	expectLine(t, r, "a7 OK")

	r.send("a8 LOGOUT\r\n")
	expectLine(t, r, "* BYE")
	expectLine(t, r, "a8 OK")
	expectClosed(t, r)
}

// TestPreauthAbuse: clients that misbehave before login are answered
// (BAD, or BYE and close) and do not disturb the next collector.
func TestPreauthAbuse(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	maxLine := h.cfg.Server.MaxLineBytes
	maxLiteral := h.cfg.Server.MaxLiteralBytes
	if maxLine != 8192 || maxLiteral != 8192 {
		t.Fatalf("harness limits %d/%d, want the defaults 8192/8192", maxLine, maxLiteral)
	}
	// lineOf returns "TAG NOOP xxx…" of exactly n bytes.
	lineOf := func(tag string, n int) string {
		prefix := tag + " NOOP "
		return prefix + strings.Repeat("x", n-len(prefix))
	}

	for _, tc := range []struct {
		name string
		run  func(t *testing.T, r *rawConn)
	}{
		{"three unknown commands", func(t *testing.T, r *rawConn) {
			r.send("a0 NOOP\r\n") // an unknown first command alone gets BYE
			expectLine(t, r, "a0 OK")
			r.send("a1 FOO\r\n")
			expectLine(t, r, "a1 BAD")
			r.send("a2 BAR baz\r\n")
			expectLine(t, r, "a2 BAD")
			r.send("a3 XYZZY\r\n")
			expectLine(t, r, "* BYE")
			expectClosed(t, r)
		}},
		{"unknown first command", func(t *testing.T, r *rawConn) {
			r.send("a1 SELECT INBOX\r\n")
			expectLine(t, r, "* BYE")
			expectClosed(t, r)
		}},
		{"HTTP request", func(t *testing.T, r *rawConn) {
			r.send("GET / HTTP/1.1\r\n")
			expectLine(t, r, "* BYE")
			expectClosed(t, r)
		}},
		{"syntax error on the first command", func(t *testing.T, r *rawConn) {
			r.send(`a1 LOGIN "unterminated` + "\r\n")
			expectLine(t, r, "* BYE")
			expectClosed(t, r)
		}},
		{"syntax errors after the first command", func(t *testing.T, r *rawConn) {
			r.send("a1 NOOP\r\n")
			expectLine(t, r, "a1 OK")
			r.send(`a2 LOGIN "unterminated` + "\r\n")
			expectLine(t, r, "a2 BAD")
			r.send("a3 NOOP\r\n")
			expectLine(t, r, "a3 OK")
			r.send("a4 LOGIN x (\r\n")
			expectLine(t, r, "a4 BAD")
			r.send("a5 LOGIN x )\r\n")
			expectLine(t, r, "* BYE")
			expectClosed(t, r)
		}},
		{"line at the limit", func(t *testing.T, r *rawConn) {
			r.send(lineOf("a1", maxLine) + "\r\n")
			expectLine(t, r, "a1 OK")
		}},
		{"line one byte over the limit", func(t *testing.T, r *rawConn) {
			// The proxy reads all of it before answering, so the close
			// is clean (no unread data, no reset).
			r.send(lineOf("a1", maxLine+1) + "\r\n")
			expectLine(t, r, "* BYE [TOOBIG]")
			expectClosed(t, r)
		}},
		{"sync literal too large", func(t *testing.T, r *rawConn) {
			r.send("a1 NOOP\r\n")
			expectLine(t, r, "a1 OK")
			r.send("a2 LOGIN collector {" + strconv.Itoa(maxLiteral+1) + "}\r\n")
			// BAD at once, with no "+" first: the client never sends it.
			expectLine(t, r, "a2 BAD [TOOBIG]")
			r.send("a3 NOOP\r\n")
			expectLine(t, r, "a3 OK")
		}},
		{"sync literal at the limit", func(t *testing.T, r *rawConn) {
			r.send("a1 NOOP\r\n")
			expectLine(t, r, "a1 OK")
			r.send("a2 ID ({" + strconv.Itoa(maxLiteral) + "}\r\n")
			expectLine(t, r, "+ ")
			r.send(strings.Repeat("v", maxLiteral) + ")\r\n")
			expectLine(t, r, "* ID NIL")
			expectLine(t, r, "a2 OK")
		}},
		{"LITERAL+ too large", func(t *testing.T, r *rawConn) {
			r.send("a1 NOOP\r\n")
			expectLine(t, r, "a1 OK")
			// The data is on its way and cannot be skipped: BYE. Only
			// the header is sent, so the close is clean.
			r.send("a2 LOGIN collector {" + strconv.Itoa(maxLiteral+1) + "+}\r\n")
			expectLine(t, r, "* BYE")
			expectClosed(t, r)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, h.raw())
			loginStillWorks(t, h)
		})
	}
}

// TestPreauthTimeout: a client that says nothing is dropped with BYE after
// the pre-auth timeout.
func TestPreauthTimeout(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	cfg := *h.cfg
	cfg.Server.PreauthTimeout = 200 * time.Millisecond
	if err := h.srv.SetConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	r := h.raw()
	start := time.Now()
	expectLine(t, r, "* BYE")
	expectClosed(t, r)
	if d := time.Since(start); d > testDeadline/2 {
		t.Errorf("dropped after %v, want about %v", d, cfg.Server.PreauthTimeout)
	}
	if err := h.srv.SetConfig(h.cfg); err != nil {
		t.Fatal(err)
	}
	loginStillWorks(t, h)
}
