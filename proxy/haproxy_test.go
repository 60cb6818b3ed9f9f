package proxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/haproxytest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
)

// The HAProxy tests run the haproxy.cfg files of docs/operations.md
// (Debian's haproxy, in the foreground) in front of two in-process proxies
// that share one token store and take PROXY headers from 127.0.0.1, where
// HAProxy connects from. Collectors connect to HAProxy from other
// loopback addresses (Linux routes all of 127.0.0.0/8), as from other
// hosts.

// haproxyInstance is one of the two proxies behind HAProxy.
type haproxyInstance struct {
	name       string // as in the docs' haproxy.cfg: proxy1, proxy2
	plain, tls string // the addresses of its IMAP listeners
	logs       *syncbuf.Buffer
	stop       func() error
}

// haproxyPair is the two proxies, and the harness that holds the first.
type haproxyPair struct {
	h         *harness
	instances [2]*haproxyInstance
}

// newHAProxyPair starts two proxies over one token store, each with a
// plain and an implicit-TLS IMAP listener behind the PROXY protocol.
func newHAProxyPair(t *testing.T, failureDelay time.Duration) *haproxyPair {
	t.Helper()
	h := newHarness(t, harnessOptions{localTLS: true, failureDelay: failureDelay,
		serverTOML: "listen_tls = \"127.0.0.1:0\"\n",
		tablesTOML: "[proxy_protocol]\nlisteners = [\"listen\", \"listen_tls\"]\nallowed = [\"127.0.0.1\"]\n"})
	pair := &haproxyPair{h: h}
	pair.instances[0] = &haproxyInstance{name: "proxy1", plain: h.addr, tls: h.serveOn("127.0.0.1:0", true),
		logs: h.logs, stop: h.testProxy.stop}
	second := &haproxyInstance{name: "proxy2", logs: &syncbuf.Buffer{}}
	opts := h.testProxy.options
	opts.logger = slog.New(slog.NewTextHandler(second.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p2 := startTestProxy(t, h.cfg, h.store, opts)
	second.plain, second.stop = p2.addr, p2.stop
	second.tls = p2.serveWith(t, "127.0.0.1:0", p2.srv.ServeTLS)
	pair.instances[1] = second
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy2 log:\n%s", second.logs.String())
		}
	})
	return pair
}

// docsHAProxyConfig returns the haproxy.cfg block of docs/operations.md
// that contains marker, made to run here: the frontends on loopback
// ports (returned by frontend name), the servers at pair's listeners,
// and, if v1Second, send-proxy (version 1) on proxy2's lines instead of
// send-proxy-v2.
func docsHAProxyConfig(t *testing.T, pair *haproxyPair, marker string, v1Second bool) (cfg string, frontends map[string]string) {
	t.Helper()
	frontends = map[string]string{"imap": haproxytest.FreeAddr(t), "imaps": haproxytest.FreeAddr(t)}
	p1, p2 := pair.instances[0], pair.instances[1]
	cfg = haproxytest.DocsConfig(t, filepath.Join("..", "docs", "operations.md"), marker,
		append([]haproxytest.Replacement{
			{Old: "bind :143\n", New: "bind " + frontends["imap"] + "\n"},
			{Old: "bind :993\n", New: "bind " + frontends["imaps"] + "\n"},
			{Old: "10.0.0.11:1143 ", New: p1.plain + " "},
			{Old: "10.0.0.12:1143 ", New: p2.plain + " "},
			{Old: "10.0.0.11:1993 ", New: p1.tls + " "},
			{Old: "10.0.0.12:1993 ", New: p2.tls + " "},
		}, haproxytest.RunnableHere...)...)
	if v1Second {
		lines := strings.Split(cfg, "\n")
		replaced := 0
		for i, l := range lines {
			if strings.Contains(l, "server proxy2 ") && strings.Contains(l, " send-proxy-v2") {
				lines[i] = strings.Replace(l, " send-proxy-v2", " send-proxy", 1)
				replaced++
			}
		}
		if replaced == 0 {
			t.Fatal("the docs' haproxy.cfg has no proxy2 server with send-proxy-v2 any more: update this test")
		}
		cfg = strings.Join(lines, "\n")
	}
	return cfg, frontends
}

// dialFrom connects to addr from localIP and reads the greeting.
func dialFrom(t *testing.T, addr, localIP string) (*rawConn, error) {
	t.Helper()
	lc, err := dialLine(addr, localIP, testDeadline)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { lc.nc.Close() })
	return &rawConn{t: t, lineConn: lc}, nil
}

// login sends LOGIN with password and returns the tagged answer.
func (r *rawConn) login(password string) string {
	r.t.Helper()
	r.send("a LOGIN " + testLogin + " \"" + password + "\"\r\n")
	l := r.until("a ")
	return l[len(l)-1]
}

// instanceOf returns the instance whose log has a session from client
// (an IP address), or nil.
func (pair *haproxyPair) instanceOf(client string) *haproxyInstance {
	for _, in := range pair.instances {
		if strings.Contains(in.logs.String(), "remote="+client+":") {
			return in
		}
	}
	return nil
}

// TestHAProxyTwoInstances runs the docs' two-instance haproxy.cfg, with
// send-proxy-v2 to proxy1 and send-proxy (version 1) to proxy2.
func TestHAProxyTwoInstances(t *testing.T) {
	const failureDelay = 2 * time.Second
	pair := newHAProxyPair(t, failureDelay)
	cfg, front := docsHAProxyConfig(t, pair, "balance source", true)
	haproxy := haproxytest.Start(t, cfg, front["imap"], front["imaps"])

	// Which instance serves which client: balance source sends each
	// address to one. The sessions' logs name the client, not HAProxy.
	byInstance := map[*haproxyInstance][]string{}
	for i := 2; i < 40 && (len(byInstance) < 2 || len(byInstance[pair.instances[0]]) < 2 && len(byInstance[pair.instances[1]]) < 2); i++ {
		client := fmt.Sprintf("127.0.0.%d", i)
		c, err := dialFrom(t, front["imap"], client)
		if err != nil {
			t.Fatalf("from %s: %v", client, err)
		}
		in := pair.instanceOf(client)
		if in == nil {
			t.Fatalf("no proxy logged a session from %s", client)
		}
		c.send("a LOGOUT\r\n")
		c.closed()
		byInstance[in] = append(byInstance[in], client)
	}
	if len(byInstance) < 2 {
		t.Fatalf("balance source sent every client to one proxy: %v", byInstance)
	}

	// The throttle keys by the client: after a wrong password from one,
	// its next check waits; another client's does not, on the same
	// instance. (No login has succeeded yet, so no key is cached.)
	var same *haproxyInstance
	for in, clients := range byInstance {
		if len(clients) >= 2 {
			same = in
		}
	}
	if same == nil {
		t.Fatalf("no two clients on one proxy: %v", byInstance)
	}
	guesser, owner := byInstance[same][0], byInstance[same][1]
	for i := range 2 {
		c, err := dialFrom(t, front["imap"], guesser)
		if err != nil {
			t.Fatal(err)
		}
		if a := c.login("wrong password"); !strings.HasPrefix(a, "a NO") {
			t.Fatalf("wrong password %d from %s: %q", i+1, guesser, a)
		}
	}
	c, err := dialFrom(t, front["imap"], owner)
	if err != nil {
		t.Fatal(err)
	}
	if a := c.login(testPassword); !strings.HasPrefix(a, "a OK") {
		t.Fatalf("LOGIN from %s: %q", owner, a)
	}
	logs := same.logs.String()
	if !regexp.MustCompile(`msg="login failed".*remote=` + regexp.QuoteMeta(guesser) + `:.*throttle_wait=[1-9]`).MatchString(logs) {
		t.Errorf("%s: the second wrong password from %s was not throttled:\n%s", same.name, guesser, logs)
	}
	if !regexp.MustCompile(`msg=login .*remote=` + regexp.QuoteMeta(owner) + `:\d+ via=127\.0\.0\.1:\d+ .*outcome=OK .*throttle_wait=0s`).MatchString(logs) {
		t.Errorf("%s: the login from %s waited for %s's failures, or its log does not name it:\n%s", same.name, owner, guesser, logs)
	}

	// A login through each proxy, end to end to the upstream: one reads
	// version 2 headers, the other version 1.
	for _, in := range pair.instances {
		client := byInstance[in][0]
		c, err := dialFrom(t, front["imap"], client)
		if err != nil {
			t.Fatal(err)
		}
		if a := c.login(testPassword); !strings.HasPrefix(a, "a OK") {
			t.Fatalf("LOGIN from %s through %s: %q", client, in.name, a)
		}
		c.send("b SELECT INBOX\r\n")
		if l := c.until("b "); !strings.HasPrefix(l[len(l)-1], "b OK") {
			t.Fatalf("SELECT from %s through %s: %q", client, in.name, l)
		}
		if !regexp.MustCompile(`msg=login .*remote=` + regexp.QuoteMeta(client) + `:\d+ via=127\.0\.0\.1:\d+ .*outcome=OK`).MatchString(in.logs.String()) {
			t.Errorf("%s logged no login from %s", in.name, client)
		}
	}

	// HAProxy's health checks send a LOCAL header, which is accepted.
	waitFor(t, "a health check logged by both proxies", func() bool {
		return strings.Contains(pair.instances[0].logs.String(), "proxy_header=local") &&
			strings.Contains(pair.instances[1].logs.String(), "proxy_header=local")
	})

	// A header straight from an address not allowed is refused.
	for _, in := range pair.instances {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 99)}}
		conn, err := d.Dial("tcp", in.plain)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(testDeadline))
		t.Cleanup(func() { conn.Close() })
		hdr := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}, conn.RemoteAddr())
		if _, err := hdr.WriteTo(conn); err != nil {
			t.Fatal(err)
		}
		if !newRawConn(t, conn).closed() {
			t.Fatalf("%s: a header from 127.0.0.99 was not refused", in.name)
		}
		waitFor(t, in.name+" logging the refusal", func() bool {
			return containsAll(in.logs.String(), []string{"remote=" + conn.LocalAddr().String(), "proxy_protocol.allowed does not list"})
		})
	}
	// The documented configuration brought no refused connection, and
	// no failed health check.
	for _, in := range pair.instances {
		if strings.Contains(in.logs.String(), "connection refused") {
			t.Errorf("%s refused a connection from HAProxy:\n%s", in.name, in.logs.String())
		}
	}
	if strings.Contains(haproxy.Output(), " is DOWN") {
		t.Error("HAProxy marked a proxy down")
	}
}

// TestHAProxyActiveStandby runs the docs' active/standby haproxy.cfg:
// everything goes to proxy1; once it stops, to proxy2.
func TestHAProxyActiveStandby(t *testing.T) {
	pair := newHAProxyPair(t, 0)
	cfg, front := docsHAProxyConfig(t, pair, " backup\n", false)
	h := haproxytest.Start(t, cfg, front["imap"], front["imaps"])
	active, standby := pair.instances[0], pair.instances[1]
	for i := 2; i < 6; i++ {
		client := fmt.Sprintf("127.0.0.%d", i)
		c, err := dialFrom(t, front["imap"], client)
		if err != nil {
			t.Fatal(err)
		}
		if a := c.login(testPassword); !strings.HasPrefix(a, "a OK") {
			t.Fatalf("LOGIN from %s: %q", client, a)
		}
		if in := pair.instanceOf(client); in != active {
			t.Fatalf("the login from %s went to %v, not the active proxy", client, in)
		}
		c.send("b LOGOUT\r\n")
		c.closed()
	}
	if err := active.stop(); err != nil {
		t.Fatalf("stopping proxy1: %v", err)
	}
	// HAProxy marks the active proxy down after two failed checks a
	// second apart, and says so; from then on it sends connections to
	// the backup.
	h.WaitOutput(t, regexp.MustCompile(`Server imap_proxies/proxy1 is DOWN`), testDeadline)
	const client = "127.0.0.10"
	c, err := dialFrom(t, front["imap"], client)
	if err != nil {
		t.Fatalf("the standby took no connection: %v", err)
	}
	if a := c.login(testPassword); !strings.HasPrefix(a, "a OK") {
		t.Fatalf("LOGIN through the standby: %q", a)
	}
	if !regexp.MustCompile(`msg=login .*remote=` + regexp.QuoteMeta(client) + `:\d+ via=127\.0\.0\.1:\d+ .*outcome=OK`).MatchString(standby.logs.String()) {
		t.Errorf("the standby logged no login from %s", client)
	}
}

// waitFor polls cond until it holds, for at most testDeadline. Polling
// is bounded; the logs have no other signal.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("no %s within %v", what, testDeadline)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
