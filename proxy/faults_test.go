package proxy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// The fault tests put a proxy in front of misbehaving upstreams: each
// fault is a provider of its own with an account of its own, next to a
// provider and account served by a good proxytest upstream, so one proxy
// shows both the clear answer to a fault and that it still serves good
// logins afterwards.

// faultLoginTimeout is the proxy's login_timeout in the fault tests: an
// upstream that stalls is given up after it.
const faultLoginTimeout = 2 * time.Second

// The good account every fault rig has.
const (
	goodLogin    = "good-collector"
	goodPassword = "good local password"
	goodMailbox  = "good@contoso.test"
)

// rigProvider is one [providers.NAME] table of a rig.
type rigProvider struct {
	name, address, tokenURL string
	// caPEM is written to the provider's ca_file; nil: no ca_file.
	caPEM []byte
}

// rigAccount is one [accounts.LOGIN] table of a rig and its token record.
type rigAccount struct {
	login, provider, mailbox, password, refreshToken string
}

type rigOptions struct {
	serverTOML string // extra lines for the [server] table
	providers  []rigProvider
	accounts   []rigAccount
	logLevel   slog.Level
	kdf        tokenstore.KDFParams // zero: testKDF
	// peerUID is proxy.Options.PeerUID; nil: the kernel's answer.
	peerUID proxy.PeerUIDFunc
}

// rig is a proxy configured from a mapping file with several providers,
// with its token store and logs, serving on loopback.
type rig struct {
	t    testing.TB
	dir  string
	logs *logSink
	*testProxy
}

// newRig starts a proxy for opts. It is stopped (see testProxy.stop) when
// the test ends, failing the test if sessions had to be cut.
func newRig(t testing.TB, opts rigOptions) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), logs: &logSink{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log (tail):\n%s", r.logs.tail(200))
		}
	})
	var sb strings.Builder
	fmt.Fprintf(&sb, "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n%s\n", opts.serverTOML)
	for _, p := range opts.providers {
		fmt.Fprintf(&sb, "[providers.%s]\ntype = \"generic\"\ntoken_url = %q\nscopes = [\"imap\", \"offline_access\"]\n"+
			"client_id = %q\nclient_secret = %q\nimap_address = %q\n", p.name, p.tokenURL, testClientID, testSecret, p.address)
		if p.caPEM != nil {
			name := "ca-" + p.name + ".pem"
			if err := os.WriteFile(filepath.Join(r.dir, name), p.caPEM, 0o600); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&sb, "ca_file = %q\n", name)
		}
		sb.WriteString("\n")
	}
	var records []tokenRecord
	for _, a := range opts.accounts {
		fmt.Fprintf(&sb, "[accounts.%s]\nprovider = %q\nmailbox = %q\n\n", a.login, a.provider, a.mailbox)
		records = append(records, tokenRecord{a.login, a.password, a.refreshToken})
	}
	logger := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: opts.logLevel}))
	r.testProxy = newTestProxy(t, testProxyOptions{dir: r.dir, config: sb.String(), records: records, logger: logger,
		kdf: opts.kdf, peerUID: opts.peerUID})
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("stopping the proxy: %v", err)
		}
	})
	return r
}

// waitIdle waits until the proxy has no open session, or fails.
func (r *rig) waitIdle(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for r.srv.ActiveSessions() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open %v after the last client finished", r.srv.ActiveSessions(), within)
		}
		r.logs.wait(deadline)
	}
}

// goodSession logs in to the good account with imapclient, appends a
// message and reads it back byte for byte.
func (r *rig) goodSession(t testing.TB) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", r.addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(goodLogin, goodPassword).Wait(); err != nil {
		t.Fatalf("good LOGIN through the proxy: %v", err)
	}
	body := []byte("From: a@example.test\r\nSubject: still healthy\r\n\r\n" + rand.Text() + "\r\n")
	if err := roundTrip(c, body); err != nil {
		t.Fatal(err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// roundTrip appends body to INBOX through c and fetches it back, checking
// it byte for byte.
func roundTrip(c *imapclient.Client, body []byte) error {
	cmd := c.Append("INBOX", int64(len(body)), nil)
	if _, err := cmd.Write(body); err != nil {
		return fmt.Errorf("APPEND write: %w", err)
	}
	if err := cmd.Close(); err != nil {
		return fmt.Errorf("APPEND close: %w", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		return fmt.Errorf("APPEND: %w", err)
	}
	if data.UID == 0 {
		return errors.New("APPEND returned no UID")
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		return fmt.Errorf("SELECT: %w", err)
	}
	msgs, err := c.Fetch(imap.UIDSetNum(data.UID), &imap.FetchOptions{
		UID: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		return fmt.Errorf("UID FETCH %d: %w", data.UID, err)
	}
	if len(msgs) != 1 || len(msgs[0].BodySection) != 1 {
		return fmt.Errorf("UID FETCH %d returned %d messages", data.UID, len(msgs))
	}
	if got := msgs[0].BodySection[0].Bytes; !bytes.Equal(got, body) {
		return fmt.Errorf("UID FETCH %d: got %d bytes, want the %d appended (equal prefix %d)",
			data.UID, len(got), len(body), commonPrefix(got, body))
	}
	return nil
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// logSink collects the proxy's log and wakes waiters on every line. It is
// safe for concurrent use.
type logSink struct {
	syncbuf.Buffer
}

// tail returns the last n lines.
func (l *logSink) tail(n int) string {
	lines := strings.SplitAfter(l.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "")
}

// wait returns after the next write or at deadline; the deadline keeps
// pollers of state other than the log bounded.
func (l *logSink) wait(deadline time.Time) {
	ch := l.Changed()
	d := time.Until(deadline)
	if d <= 0 {
		return
	}
	t := time.NewTimer(min(d, 50*time.Millisecond))
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

// lines returns the log lines that contain every one of parts.
func (l *logSink) lines(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// waitLine waits until a log line contains every one of parts and returns
// it, or "" at the deadline.
func (l *logSink) waitLine(within time.Duration, parts ...string) string {
	deadline := time.Now().Add(within)
	for {
		if got := l.lines(parts...); len(got) > 0 {
			return got[0]
		}
		if time.Now().After(deadline) {
			return ""
		}
		l.wait(deadline)
	}
}

// faultCase is one misbehaving upstream and what the collector and the
// log must show for it.
type faultCase struct {
	name string
	// upstream are the options of the case's proxytest upstream, which
	// has the case's mailbox. Personality: Microsoft if not set; Validate:
	// the token endpoint's if not set.
	upstream proxytest.UpstreamOptions
	// otherCA gives the provider a ca_file with a CA other than the
	// upstream's.
	otherCA bool
	// host replaces 127.0.0.1 in the provider's imap_address, if set.
	host     string
	wantCode string // response code of the NO the collector gets
	wantText string // if set, in the text of that NO
	// wantLog must each be in the "login failed" log line; "a|b" means
	// either a or b.
	wantLog []string
	// check runs extra checks after the failed login; elapsed is how long
	// the LOGIN took.
	check func(t *testing.T, u *proxytest.Upstream, elapsed time.Duration)
}

// faultAt returns upstream options that run script at phase.
func faultAt(phase proxytest.Phase, script func(c *proxytest.FaultConn)) proxytest.UpstreamOptions {
	return proxytest.UpstreamOptions{Fault: &proxytest.Fault{Phase: phase, Run: script}}
}

// refuseEveryToken is a Validate that refuses every token.
func refuseEveryToken(string, string) error { return errors.New("token refused") }

// wantTimeout checks that a LOGIN was given up at the login timeout.
func wantTimeout(t *testing.T, _ *proxytest.Upstream, elapsed time.Duration) {
	if elapsed < faultLoginTimeout-200*time.Millisecond || elapsed > faultLoginTimeout+5*time.Second {
		t.Errorf("LOGIN answered after %v, want about the login timeout %v", elapsed, faultLoginTimeout)
	}
}

// wantRefusals checks how many tokens the upstream refused.
func wantRefusals(n int64) func(t *testing.T, u *proxytest.Upstream, _ time.Duration) {
	return func(t *testing.T, u *proxytest.Upstream, _ time.Duration) {
		if got := u.Refusals(); got != n {
			t.Errorf("upstream refused %d tokens, want %d (one refresh, one retry)", got, n)
		}
	}
}

// wantNoToken checks that the upstream was never shown a token.
func wantNoToken(t *testing.T, u *proxytest.Upstream, _ time.Duration) {
	if n := u.Logins() + u.Refusals(); n != 0 {
		t.Errorf("the token was sent %d times to a server the proxy must not trust", n)
	}
}

var faultCases = []faultCase{
	{
		name: "plaintext-server",
		// An IMAP server without TLS on the port configured for implicit TLS.
		upstream: faultAt(proxytest.BeforeTLS, func(c *proxytest.FaultConn) {
			c.WriteString("* OK [CAPABILITY IMAP4rev1 STARTTLS] plain IMAP here\r\n")
			c.Drain()
		}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"TLS with upstream", "tls: "},
	},
	{
		name: "close-during-handshake",
		upstream: faultAt(proxytest.BeforeTLS, func(c *proxytest.FaultConn) {
			c.Read(make([]byte, 1)) // the ClientHello has started
		}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"TLS with upstream", "EOF|reset by peer"},
	},
	{
		name: "silent-tcp",
		// Accepts TCP, never answers the ClientHello.
		upstream: faultAt(proxytest.BeforeTLS, (*proxytest.FaultConn).Drain),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"TLS with upstream"},
		check:    wantTimeout,
	},
	{
		name:     "old-tls-only",
		upstream: proxytest.UpstreamOptions{MaxTLSVersion: tls.VersionTLS11},
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"TLS with upstream", "version"},
	},
	{
		name: "wrong-certificate-name",
		// Signed by a CA in ca_file, but for another host name.
		host:     "localhost",
		upstream: proxytest.UpstreamOptions{Hosts: []string{"other.example"}},
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"x509", "certificate", "other.example"},
		check:    wantNoToken,
	},
	{
		name: "untrusted-certificate",
		// A valid name, but a CA that is not in ca_file.
		otherCA:  true,
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"x509", "certificate", "unknown authority"},
		check:    wantNoToken,
	},
	{
		name: "greeting-bye",
		upstream: faultAt(proxytest.BeforeGreeting, func(c *proxytest.FaultConn) {
			c.WriteString("* BYE [UNAVAILABLE] Server too busy, try later\r\n")
		}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"BYE", "Server too busy"},
	},
	{
		name:     "no-greeting",
		upstream: faultAt(proxytest.BeforeGreeting, (*proxytest.FaultConn).Drain),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"no greeting", "timeout"},
		check:    wantTimeout,
	},
	{
		name:     "close-before-greeting",
		upstream: faultAt(proxytest.BeforeGreeting, func(*proxytest.FaultConn) {}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"no greeting", "EOF|reset by peer"},
	},
	{
		name: "garbage-greeting",
		upstream: faultAt(proxytest.BeforeGreeting, func(c *proxytest.FaultConn) {
			c.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			c.Drain()
		}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"bad greeting", "HTTP/1.1 400"},
	},
	{
		name: "endless-greeting",
		// Binary noise without a line end, beyond any sane line length.
		upstream: faultAt(proxytest.BeforeGreeting, func(c *proxytest.FaultConn) {
			noise := make([]byte, 1<<20)
			rand.Read(noise)
			c.WriteString(strings.Map(func(r rune) rune {
				if r == '\n' {
					return 'x'
				}
				return r
			}, string(noise)))
			c.Drain()
		}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"greeting"},
	},
	{
		name: "greeting-preauth",
		upstream: faultAt(proxytest.BeforeGreeting, func(c *proxytest.FaultConn) {
			c.WriteString("* PREAUTH [CAPABILITY IMAP4rev1] already logged in\r\n")
			c.Drain()
		}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"PREAUTH"},
	},
	{
		name:     "close-during-authenticate",
		upstream: faultAt(proxytest.AtAuthenticate, func(*proxytest.FaultConn) {}),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"AUTHENTICATE", "EOF|reset by peer"},
	},
	{
		name:     "silent-after-authenticate",
		upstream: faultAt(proxytest.AtAuthenticate, (*proxytest.FaultConn).Drain),
		wantCode: "UNAVAILABLE",
		wantLog:  []string{"AUTHENTICATE", "timeout"},
		check:    wantTimeout,
	},
	{
		name:     "refused-microsoft",
		upstream: proxytest.UpstreamOptions{Validate: refuseEveryToken},
		wantCode: "AUTHORIZATIONFAILED",
		wantLog:  []string{"upstream refused the token", "AUTHENTICATE failed.", "likely causes: check accounts.fault-refused-microsoft.mailbox"},
		wantText: "for the likely causes run: imap-oauth-proxy check fault-refused-microsoft",
		check:    wantRefusals(2),
	},
	{
		// How the error challenge is answered is checked with the upstream
		// login (upstream_test.go).
		name:     "refused-gmail",
		upstream: proxytest.UpstreamOptions{Personality: proxytest.Gmail, Validate: refuseEveryToken},
		wantCode: "AUTHORIZATIONFAILED",
		wantLog:  []string{"upstream refused the token", "Invalid credentials"},
		check:    wantRefusals(2),
	},
}

// containsAny reports whether s contains one of the "|"-separated
// alternatives.
func containsAny(s, alternatives string) bool {
	for _, a := range strings.Split(alternatives, "|") {
		if strings.Contains(s, a) {
			return true
		}
	}
	return false
}

// faultName turns a case name into a login and provider name.
func faultName(c string) string { return "fault-" + c }

// newFaultRig starts a good upstream, a token endpoint, the upstream of
// each case and a proxy with one provider and account for each, plus the
// good one. The cases' upstreams are returned by case name.
func newFaultRig(t *testing.T, cases []faultCase) (*rig, map[string]*proxytest.Upstream) {
	t.Helper()
	tokens := authtest.NewServer(authtest.Options{ClientID: testClientID, ClientSecret: testSecret})
	t.Cleanup(tokens.Close)
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: tokens.Validate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser(goodMailbox)
	opts := rigOptions{
		serverTOML: fmt.Sprintf("login_timeout = %q\n", faultLoginTimeout.String()),
		logLevel:   slog.LevelDebug,
		providers:  []rigProvider{{name: "good", address: up.Addr, tokenURL: tokens.TokenURL(), caPEM: up.CAPEM}},
		accounts: []rigAccount{{login: goodLogin, provider: "good", mailbox: goodMailbox, password: goodPassword,
			refreshToken: tokens.Grant(goodMailbox)}},
	}
	upstreams := make(map[string]*proxytest.Upstream)
	for _, tc := range cases {
		uopts := tc.upstream
		if uopts.Personality == proxytest.Plain {
			uopts.Personality = proxytest.Microsoft
		}
		if uopts.Validate == nil {
			uopts.Validate = tokens.Validate
		}
		u, err := proxytest.NewUpstream(uopts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		upstreams[tc.name] = u
		name := faultName(tc.name)
		mailbox := tc.name + "@contoso.test"
		u.AddUser(mailbox)
		ca := u.CAPEM
		if tc.otherCA {
			if _, ca, err = proxytest.NewCertificate("127.0.0.1"); err != nil {
				t.Fatal(err)
			}
		}
		addr := u.Addr
		if tc.host != "" {
			_, port, _ := net.SplitHostPort(addr)
			addr = net.JoinHostPort(tc.host, port)
		}
		opts.providers = append(opts.providers, rigProvider{name: name, address: addr, tokenURL: tokens.TokenURL(), caPEM: ca})
		opts.accounts = append(opts.accounts, rigAccount{login: name, provider: name, mailbox: mailbox,
			password: goodPassword + " " + tc.name, refreshToken: tokens.Grant(mailbox)})
	}
	return newRig(t, opts), upstreams
}

// TestFaultUpstreamLogin: for each way an upstream can fail a login, the
// collector gets NO with the right RFC 5530 code, the log names the cause,
// the session stays usable for a good login, and the proxy goes on serving
// good sessions.
func TestFaultUpstreamLogin(t *testing.T) {
	rg, upstreams := newFaultRig(t, faultCases)
	t.Run("cases", func(t *testing.T) {
		for _, tc := range faultCases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				login := faultName(tc.name)
				c, err := dialLine(rg.addr, "", testDeadline)
				if err != nil {
					t.Fatal(err)
				}
				defer c.nc.Close()
				start := time.Now()
				got, untagged, err := c.command("a1", fmt.Sprintf("LOGIN %s %q", login, goodPassword+" "+tc.name))
				elapsed := time.Since(start)
				if err != nil {
					t.Fatal(err)
				}
				if len(untagged) > 0 {
					t.Errorf("the collector got %q before its answer", untagged)
				}
				if want := "a1 NO [" + tc.wantCode + "] "; !strings.HasPrefix(got, want) {
					t.Errorf("LOGIN = %q, want %q...", got, want)
				}
				if !strings.Contains(got, tc.wantText) {
					t.Errorf("LOGIN = %q, want it to say %q", got, tc.wantText)
				}
				// Logged before the answer is written.
				lines := rg.logs.lines(`msg="login failed"`, " login="+login+" ")
				if len(lines) != 1 {
					t.Fatalf("%d \"login failed\" log lines for %s, want 1: %q", len(lines), login, lines)
				}
				for _, want := range tc.wantLog {
					if !containsAny(lines[0], want) {
						t.Errorf("log line does not name the cause %q: %s", want, lines[0])
					}
				}
				if !strings.Contains(lines[0], "outcome="+tc.wantCode) {
					t.Errorf("log line without outcome=%s: %s", tc.wantCode, lines[0])
				}
				if tc.check != nil {
					tc.check(t, upstreams[tc.name], elapsed)
				}
				// The same session goes on: a good login is relayed.
				if got, _, err := c.command("a2", "NOOP"); err != nil || !strings.HasPrefix(got, "a2 OK") {
					t.Fatalf("NOOP after the failure = %q, %v", got, err)
				}
				if got, _, err := c.command("a3", fmt.Sprintf("LOGIN %s %q", goodLogin, goodPassword)); err != nil || !strings.HasPrefix(got, "a3 OK") {
					t.Fatalf("good LOGIN after the failure = %q, %v", got, err)
				}
				if got, _, err := c.command("a4", "SELECT INBOX"); err != nil || !strings.HasPrefix(got, "a4 OK") {
					t.Fatalf("SELECT through the relay = %q, %v", got, err)
				}
				if got, _, err := c.command("a5", "LOGOUT"); err != nil || !strings.HasPrefix(got, "a5 OK") {
					t.Fatalf("LOGOUT = %q, %v", got, err)
				}
			})
		}
	})
	// After all of them, at once, the daemon is healthy.
	rg.goodSession(t)
	rg.waitIdle(t, 10*time.Second)
	if panics := rg.logs.lines("panic"); len(panics) > 0 {
		t.Errorf("panics logged: %q", panics)
	}
}

// TestFaultRelayUpstreamGone: the upstream drops the connection in the
// middle of a FETCH, with a RST or a clean close: the collector sees its
// connection closed, not a hang; the proxy logs the session's end with a
// reason, and serves the next login.
func TestFaultRelayUpstreamGone(t *testing.T) {
	const literal = 100000
	fetchThenDrop := func(rst bool) proxytest.UpstreamOptions {
		return faultAt(proxytest.AfterLogin, func(c *proxytest.FaultConn) {
			for {
				line, err := c.ReadLine()
				if err != nil {
					return
				}
				tag, command, _ := strings.Cut(line, " ")
				command = strings.ToUpper(command)
				switch {
				case strings.HasPrefix(command, "CAPABILITY"):
					err = c.WriteString("* CAPABILITY IMAP4rev1\r\n" + tag + " OK done\r\n")
				case !strings.Contains(command, "FETCH"):
					err = c.WriteString(tag + " OK done\r\n")
				default:
					partial := bytes.Repeat([]byte("x"), 4096)
					c.WriteString(fmt.Sprintf("* 1 FETCH (UID 1 BODY[] {%d}\r\n%s", literal, partial))
					if rst {
						c.Reset()
					} else {
						c.Close() // TLS close_notify, then FIN
					}
					return
				}
				if err != nil {
					return
				}
			}
		})
	}
	cases := []faultCase{
		{name: "reset", upstream: fetchThenDrop(true), wantLog: []string{`reason="relay error: `, "reset by peer"}},
		{name: "close", upstream: fetchThenDrop(false), wantLog: []string{"reason=closed"}},
	}
	rg, _ := newFaultRig(t, cases)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			login := faultName(tc.name)
			c, err := dialLine(rg.addr, "", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.nc.Close()
			got, _, err := c.command("a1", fmt.Sprintf("LOGIN %s %q", login, goodPassword+" "+tc.name))
			if err != nil || !strings.HasPrefix(got, "a1 OK ") {
				t.Fatalf("LOGIN = %q, %v", got, err)
			}
			if err := c.send("a2 UID FETCH 1 BODY[]\r\n"); err != nil {
				t.Fatal(err)
			}
			first, err := c.readLine()
			if err != nil || !strings.HasPrefix(first, "* 1 FETCH ") {
				t.Fatalf("FETCH = %q, %v", first, err)
			}
			// The rest is cut short, and the collector learns it by a
			// closed connection, long before its own deadline.
			n, err := io.Copy(io.Discard, c.br)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the collector's connection hung after the upstream went away (%d bytes read)", n)
			}
			if n >= literal {
				t.Errorf("read %d bytes of a literal the upstream cut at 4096", n)
			}
			line := rg.logs.waitLine(10*time.Second, `msg="relay end"`, " login="+login+" ")
			if line == "" {
				t.Fatalf("no \"relay end\" log line for %s", login)
			}
			for _, want := range tc.wantLog {
				if !strings.Contains(line, want) {
					t.Errorf("relay end log line without %q: %s", want, line)
				}
			}
			if !strings.Contains(line, "bytes_to_client=") || strings.Contains(line, "bytes_to_client=0 ") {
				t.Errorf("relay end log line without the bytes relayed: %s", line)
			}
		})
	}
	rg.goodSession(t)
	rg.waitIdle(t, 10*time.Second)
}
