package proxy_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// proxyHarness is a harness whose plain IMAP listener takes PROXY
// headers from 127.0.0.1 only, with the header timeout given.
func proxyHarness(t *testing.T, headerTimeout string, serverTOML string) *harness {
	t.Helper()
	return newHarness(t, harnessOptions{serverTOML: serverTOML,
		tablesTOML: "[proxy_protocol]\nlisteners = [\"listen\"]\nallowed = [\"127.0.0.1\"]\nheader_timeout = \"" + headerTimeout + "\"\n"})
}

// proxiedFrom connects to the IMAP listener from 127.0.0.1 (allowed) and
// sends a PROXY header of the version given that names client as the
// source.
func (h *harness) proxiedFrom(version byte, client string) *rawConn {
	h.t.Helper()
	conn := proxiedConn(h.t, h.addr, version, client)
	return newRawConn(h.t, conn)
}

// proxiedConn connects to addr from 127.0.0.1 and sends a PROXY header
// of the version given that names client as the source.
func proxiedConn(t testing.TB, addr string, version byte, client string) net.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: testDeadline, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	t.Cleanup(func() { conn.Close() })
	src, err := net.ResolveTCPAddr("tcp", client)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proxyproto.HeaderProxyFromAddrs(version, src, conn.RemoteAddr()).WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	return conn
}

// waitLog waits for a line of the proxy's log holding every one of
// parts, and returns it.
func (h *harness) waitLog(parts ...string) string {
	h.t.Helper()
	var found string
	waitFor(h.t, fmt.Sprintf("log line with %q", parts), func() bool {
		for _, line := range strings.Split(h.logs.String(), "\n") {
			if containsAll(line, parts) {
				found = line
				return true
			}
		}
		return false
	})
	return found
}

// containsAll reports whether s contains every one of parts.
func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// TestProxyProtocolClientAddress: a v1 or v2 header from an allowed
// source gives the session the client's address for its logs and its
// plain-text rule, and a LOCAL header (a health check) the direct one.
func TestProxyProtocolClientAddress(t *testing.T) {
	h := proxyHarness(t, "5s", "")
	for _, version := range []byte{1, 2} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			// A loopback client behind a loopback listener may log in in
			// plain text.
			client := fmt.Sprintf("127.0.0.%d:4000%d", 10+version, version)
			c := h.proxiedFrom(version, client)
			if g := c.line(); !strings.Contains(g, "AUTH=PLAIN") {
				t.Fatalf("greeting = %q; want AUTH=PLAIN", g)
			}
			c.send("a LOGIN " + testLogin + " \"" + testPassword + "\"\r\n")
			if l := c.until("a "); !strings.HasPrefix(l[len(l)-1], "a OK") {
				t.Fatalf("LOGIN: %q", l)
			}
			line := h.waitLog("session start", "remote="+client, "via=127.0.0.1:")
			if strings.Contains(line, "uid=") {
				t.Errorf("a proxied session has a uid: %s", line)
			}
			h.waitLog("msg=login", "outcome=OK", "remote="+client)

			// A remote client: plain text is not allowed, although the
			// listener and the load balancer are on loopback.
			remote := fmt.Sprintf("192.0.2.%d:5000", version)
			c = h.proxiedFrom(version, remote)
			if g := c.line(); !strings.Contains(g, "LOGINDISABLED") {
				t.Fatalf("greeting to %s = %q; want LOGINDISABLED", remote, g)
			}
			h.waitLog("session start", "remote="+remote)
		})
	}
	t.Run("LOCAL", func(t *testing.T) {
		conn := h.connFrom("127.0.0.1")
		if _, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}).WriteTo(conn); err != nil {
			t.Fatal(err)
		}
		c := newRawConn(t, conn)
		if g := c.line(); !strings.HasPrefix(g, "* OK") {
			t.Fatalf("greeting = %q", g)
		}
		h.waitLog("session start", "remote="+conn.LocalAddr().String(), "proxy_header=local")
	})
}

// TestProxyProtocolRefusals: from an allowed source the header is
// required and must parse; from any other source a header is refused and a
// plain client served. Every refusal is logged with its reason, and the
// proxy goes on serving.
func TestProxyProtocolRefusals(t *testing.T) {
	h := proxyHarness(t, "1s", "")
	refused := func(t *testing.T, conn net.Conn, reason string) {
		t.Helper()
		if got, _ := io.ReadAll(conn); len(got) != 0 {
			t.Errorf("a refused connection got %q", got)
		}
		h.waitLog("connection refused", "remote="+conn.LocalAddr().String(), reason)
	}
	t.Run("no header from an allowed source", func(t *testing.T) {
		conn := h.connFrom("127.0.0.1")
		refused(t, conn, "no PROXY header from an allowed source")
	})
	t.Run("a command instead of a header", func(t *testing.T) {
		conn := h.connFrom("127.0.0.1")
		io.WriteString(conn, "a CAPABILITY\r\n")
		refused(t, conn, "it started with other data")
	})
	for name, garbage := range map[string]string{
		"v1 garbage":    "PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n",
		"v1 no CRLF":    "PROXY TCP4 192.0.2.1 127.0.0.1 1 2 and on and on and on and on and on and on and on and on and on and on and on and on",
		"v2 bad family": string(proxyproto.SIGV2) + "\x21\x71\x00\x00",
		"v1 half":       "PROXY TCP4 192.0.2.1 ",
	} {
		t.Run(name, func(t *testing.T) {
			conn := h.connFrom("127.0.0.1")
			io.WriteString(conn, garbage)
			refused(t, conn, "bad PROXY header")
		})
	}
	for _, version := range []byte{1, 2} {
		t.Run(fmt.Sprintf("v%d header from a source not allowed", version), func(t *testing.T) {
			conn := h.connFrom("127.0.0.2")
			hdr := proxyproto.HeaderProxyFromAddrs(version, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 9), Port: 1}, conn.RemoteAddr())
			if _, err := hdr.WriteTo(conn); err != nil {
				t.Fatal(err)
			}
			c := newRawConn(t, conn)
			c.line() // the greeting, sent before the client's first bytes are read
			if !c.closed() {
				t.Fatal("connection not closed")
			}
			h.waitLog("session end", "remote="+conn.LocalAddr().String(),
				"reason=\"PROXY header from a source that proxy_protocol.allowed does not list\"")
		})
	}
	t.Run("plain client from a source not allowed", func(t *testing.T) {
		c := h.rawFrom("127.0.0.2")
		c.send("PROXY CAPABILITY\r\n") // a tag that is not a header
		if l := c.until("PROXY "); l[len(l)-1] != "PROXY OK CAPABILITY completed" {
			t.Fatalf("CAPABILITY: %q", l)
		}
		c.send("a LOGIN " + testLogin + " \"" + testPassword + "\"\r\n")
		if l := c.until("a "); !strings.HasPrefix(l[len(l)-1], "a OK") {
			t.Fatalf("LOGIN: %q", l)
		}
	})
	// Still serving.
	c := h.proxiedFrom(2, "127.0.0.20:1")
	if g := c.line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting = %q", g)
	}
	// Each refusal is counted once, by reason (the counters are updated
	// before the log lines waited for above).
	out, err := testutil.CollectAndFormat(h.srv, expfmt.TypeTextPlain, "imap_oauth_proxy_proxy_headers_refused_total")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`imap_oauth_proxy_proxy_headers_refused_total{reason="bad_header"} 6`,
		`imap_oauth_proxy_proxy_headers_refused_total{reason="source_not_allowed"} 2`,
	} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, out)
		}
	}
}

// TestProxyProtocolSlowHeaderDoesNotBlock: a connection that sends half a
// header holds up nobody: another is served meanwhile, and the slow one
// is refused at header_timeout.
func TestProxyProtocolSlowHeaderDoesNotBlock(t *testing.T) {
	h := proxyHarness(t, "3s", "")
	// Version 1 is read from one buffer without waiting for more (half a
	// line is refused at once); version 2 waits for its length.
	slow := h.connFrom("127.0.0.1")
	io.WriteString(slow, string(proxyproto.SIGV2)+"\x21\x11\x00\x0c\x01\x02")
	idle := h.connFrom("127.0.0.1") // sends nothing at all

	c := h.proxiedFrom(1, "127.0.0.30:1")
	if g := c.line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting = %q", g)
	}
	if strings.Contains(h.logs.String(), "connection refused") {
		t.Fatalf("a client was served only after the slow header's timeout:\n%s", h.logs.String())
	}
	for _, conn := range []net.Conn{slow, idle} {
		if got, _ := io.ReadAll(conn); len(got) != 0 {
			t.Errorf("a refused connection got %q", got)
		}
		h.waitLog("connection refused", "remote="+conn.LocalAddr().String(), "PROXY header")
	}
}

// TestProxyProtocolPeerLimit: max_connections_per_peer counts by the
// address in the header, not by the load balancer's.
func TestProxyProtocolPeerLimit(t *testing.T) {
	h := proxyHarness(t, "5s", "max_connections_per_peer = 1\n")
	first := h.proxiedFrom(2, "127.0.0.40:1")
	if g := first.line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("greeting = %q", g)
	}
	if g := h.proxiedFrom(2, "127.0.0.41:1").line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("another client's greeting = %q", g)
	}
	if g := h.proxiedFrom(2, "127.0.0.40:2").line(); !strings.Contains(g, "Too many connections") {
		t.Fatalf("the same client's second connection got %q", g)
	}
	h.waitLog("limit reached", "peer=127.0.0.40", "server.max_connections_per_peer")
}

// TestProxyProtocolEveryListener: implicit TLS, POP3 and SMTP listeners
// take PROXY headers as the plain IMAP one does: the header comes first,
// before any TLS; a header from a source not allowed is refused.
func TestProxyProtocolEveryListener(t *testing.T) {
	h := newHarness(t, harnessOptions{localTLS: true, pop3: true, smtp: true,
		serverTOML: "listen_tls = \"127.0.0.1:0\"\nlisten_pop3 = \"127.0.0.1:0\"\nlisten_smtp = \"127.0.0.1:0\"\n",
		tablesTOML: "[proxy_protocol]\nlisteners = [\"listen_tls\", \"listen_pop3\", \"listen_smtp\"]\nallowed = [\"127.0.0.1\"]\n"})
	for i, l := range []struct {
		name, addr, greeting string
		tls                  bool
	}{
		{"imaps", h.serveOn("127.0.0.1:0", true), "* OK", true},
		{"pop3", h.servePOP3("127.0.0.1:0", false), "+OK", false},
		{"smtp", h.serveSMTP("127.0.0.1:0", false), "220 ", false},
	} {
		t.Run(l.name, func(t *testing.T) {
			client := fmt.Sprintf("127.0.0.60:%d", 100+i)
			conn := proxiedConn(t, l.addr, 2, client)
			if l.tls {
				tc := tls.Client(conn, &tls.Config{RootCAs: h.localCA, ServerName: "127.0.0.1"})
				if err := tc.Handshake(); err != nil {
					t.Fatalf("TLS after the header: %v", err)
				}
				conn = tc
			}
			g, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || !strings.HasPrefix(g, l.greeting) {
				t.Fatalf("greeting = %q, %v", g, err)
			}
			h.waitLog("session start", "remote="+client, "via=127.0.0.1:")

			// The same header from 127.0.0.2 is refused.
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
			other, err := d.Dial("tcp", l.addr)
			if err != nil {
				t.Fatal(err)
			}
			other.SetDeadline(time.Now().Add(testDeadline))
			defer other.Close()
			src, _ := net.ResolveTCPAddr("tcp", client)
			if _, err := proxyproto.HeaderProxyFromAddrs(1, src, other.RemoteAddr()).WriteTo(other); err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, other)
			h.waitLog("session end", "remote="+other.LocalAddr().String(), "proxy_protocol.allowed does not list")
		})
	}
}

// TestProxyProtocolReload: a new configuration applies to the connections
// accepted from then on.
func TestProxyProtocolReload(t *testing.T) {
	h := proxyHarness(t, "1s", "")
	off := *h.cfg
	off.ProxyProtocol = config.ProxyProtocol{}
	if err := h.srv.SetConfig(&off); err != nil {
		t.Fatal(err)
	}
	c := h.rawFrom("127.0.0.1") // no header: served, as without the table
	c.send("a LOGOUT\r\n")
	c.until("a ")
	if err := h.srv.SetConfig(h.cfg); err != nil {
		t.Fatal(err)
	}
	conn := h.connFrom("127.0.0.1")
	if got, _ := io.ReadAll(conn); len(got) != 0 {
		t.Errorf("a connection without a header got %q", got)
	}
	h.waitLog("connection refused", "remote="+conn.LocalAddr().String(), "no PROXY header")
}
