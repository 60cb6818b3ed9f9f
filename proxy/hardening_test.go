package proxy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// TestTraceRedactsLoginishCommands: the debug trace shows no argument of
// LOGIN, whatever their number, nor of a command the proxy does not know
// (a mistyped LOGIN), while ID's arguments and AUTHENTICATE's mechanism
// are kept.
func TestTraceRedactsLoginishCommands(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	r := h.raw()
	r.send("a0 ID (\"name\" \"fetchmail\")\r\n")
	r.until("a0 ")
	r.send("a1 LOGIN alice Tr0ub4dor&3 horse\r\n")
	r.line()
	r.send("a2 XLOGIN alice S3cret-xlogin\r\n")
	r.line()
	r.send("a3 LOGIN Forgot-the-user-S3cret\r\n")
	r.line()
	logs := h.logs.String()
	for _, secret := range []string{"Tr0ub4dor", "horse", "S3cret-xlogin", "Forgot-the-user"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the trace shows %q", secret)
		}
	}
	for _, want := range []string{
		`a1 LOGIN [redacted] [redacted] [redacted]`, `a2 XLOGIN [redacted] [redacted]`,
		`a3 LOGIN [redacted]`, `a0 ID (\"name\" \"fetchmail\")`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the trace lacks %q", want)
		}
	}
}

// TestAuthenticatePlainEmpty: an empty PLAIN response ("=") is malformed
// (BAD), not a login with an empty user and password: it is not counted
// as a failure.
func TestAuthenticatePlainEmpty(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	r := h.raw()
	r.send("a1 AUTHENTICATE PLAIN =\r\n")
	if got := r.line(); !strings.HasPrefix(got, "a1 BAD ") {
		t.Errorf("AUTHENTICATE PLAIN = got %q", got)
	}
	r.send("a2 AUTHENTICATE PLAIN\r\n")
	expectLine(t, r, "+")
	r.send("=\r\n")
	if got := r.line(); !strings.HasPrefix(got, "a2 BAD ") {
		t.Errorf("an empty response after the continuation got %q", got)
	}
	if strings.Contains(h.logs.String(), "login failed") {
		t.Error("an empty PLAIN response was checked as a login")
	}
	loginStillWorks(t, h)
}

// TestTracedUpstreamLinesCapped: an upstream that streams untagged lines
// during AUTHENTICATE has at most MaxTracedUpstreamLines of them traced
// per login.
func TestTracedUpstreamLinesCapped(t *testing.T) {
	const streamed = 5000
	flood := func(c *proxytest.FaultConn) {
		var sb strings.Builder
		for i := range streamed {
			fmt.Fprintf(&sb, "* OK untagged line %d\r\n", i)
		}
		sb.WriteString(c.Tag + " NO AUTHENTICATE failed.\r\n")
		c.WriteString(sb.String())
	}
	cases := []faultCase{{name: "flood", upstream: faultAt(proxytest.AtAuthenticate, flood)}}
	rg, _ := newFaultRig(t, cases)
	c, err := dialLine(rg.addr, "", testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.nc.Close()
	got, _, err := c.command("a1", fmt.Sprintf("LOGIN %s %q", faultName("flood"), goodPassword+" flood"))
	if err != nil || !strings.HasPrefix(got, "a1 NO ") {
		t.Fatalf("LOGIN = %q, %v", got, err)
	}
	traced := len(rg.logs.lines("dir=U<", "untagged line"))
	if traced == 0 || traced > proxy.MaxTracedUpstreamLines {
		t.Errorf("%d of %d untagged upstream lines traced, want 1..%d", traced, streamed, proxy.MaxTracedUpstreamLines)
	}
	if len(rg.logs.lines("dir=U<", "only the first")) != 1 {
		t.Error("the trace does not say that it left lines out")
	}
}
