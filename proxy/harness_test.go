package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// The account every harness configures.
const (
	testLogin    = "collector"
	testPassword = "correct horse battery"
	testMailbox  = "helpdesk@contoso.test"
	testClientID = "proxy-client"
	testSecret   = "client-secret-value-0123"
)

// testKDF keeps argon2id cheap in tests; records carry their own params.
var testKDF = tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// testDeadline bounds every network step of a test.
const testDeadline = 30 * time.Second

type harnessOptions struct {
	flavor      authtest.Flavor
	rotate      bool
	accessTTL   time.Duration
	gmailErrors bool
	// validate wraps the token server's validation in the upstream.
	validate func(user, token string, next func(string, string) error) error
	// imapAddress and tokenURL override the provider's endpoints.
	imapAddress, tokenURL string
	// serverTOML adds lines to the [server] table.
	serverTOML string
	// failureDelay is proxy.Options.FailureDelay; zero means 10 ms here.
	failureDelay time.Duration
	// peerUID is proxy.Options.PeerUID; nil: the kernel's answer.
	peerUID proxy.PeerUIDFunc
	// personality and upstreamMaxSessions are the upstream's
	// proxytest.UpstreamOptions Personality and MaxSessions.
	personality         proxytest.Personality
	upstreamMaxSessions int
	// providerType is the lab provider's type; "" means generic.
	providerType string
	// accountTOML adds lines to the test account's table.
	accountTOML string
	// tablesTOML adds tables after the accounts, such as [proxy_protocol].
	tablesTOML string
	// localTLS gives the proxy a certificate for localhost and 127.0.0.1
	// (STARTTLS, implicit TLS); its CA is in harness.localCA.
	localTLS bool
	// pop3 adds a POP3 upstream (see pop3Harness) and lets the test
	// account use it; pop3Personality is its wire behaviour.
	pop3            bool
	pop3Personality proxytest.POP3Personality
	// smtp adds a submission upstream (see smtpHarness) and lets the test
	// account use it, with these options (Validate is the harness's).
	smtp        bool
	smtpOptions proxytest.SMTPUpstreamOptions
}

// harness is a token endpoint, an XOAUTH2-only upstream, a token store and
// a proxy in front of them, all in process on loopback.
type harness struct {
	t        testing.TB
	tokens   *authtest.Server
	upstream *proxytest.Upstream
	// pop3Upstream is the POP3 upstream when harnessOptions.pop3 is set.
	pop3Upstream *proxytest.POP3Upstream
	// smtpUpstream is the submission upstream when harnessOptions.smtp is
	// set.
	smtpUpstream *proxytest.SMTPUpstream
	dir          string
	logs         *syncbuf.Buffer
	// testProxy is the running proxy, with its config and token store;
	// restart replaces it.
	*testProxy
	// grants holds every refresh token the harness minted, for leak checks.
	grants []string
	// localCA trusts the proxy's certificate when opts.localTLS is set.
	localCA *x509.CertPool
	// seen collects every access token the upstream was shown.
	seenMu sync.Mutex
	seen   []string
}

// accessTokens returns the access tokens the upstream has seen so far.
func (h *harness) accessTokens() []string {
	h.seenMu.Lock()
	defer h.seenMu.Unlock()
	return append([]string(nil), h.seen...)
}

// newHarness starts a token endpoint, an upstream with the test mailbox
// and a proxy with the test account, as opts asks.
func newHarness(t testing.TB, opts harnessOptions) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), logs: &syncbuf.Buffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy log:\n%s", h.logs.String())
		}
	})
	h.tokens = authtest.NewServer(authtest.Options{
		Flavor: opts.flavor, ClientID: testClientID, ClientSecret: testSecret,
		AccessTTL: opts.accessTTL, Rotate: opts.rotate,
	})
	t.Cleanup(h.tokens.Close)
	validate := func(user, token string) error {
		h.seenMu.Lock()
		h.seen = append(h.seen, token)
		h.seenMu.Unlock()
		if opts.validate != nil {
			return opts.validate(user, token, h.tokens.Validate)
		}
		return h.tokens.Validate(user, token)
	}
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: validate, GmailErrors: opts.gmailErrors,
		Personality: opts.personality, MaxSessions: opts.upstreamMaxSessions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser(testMailbox)
	h.upstream = up
	if err := up.WriteCAFile(filepath.Join(h.dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	var pop3Address string
	var protocols []string
	if opts.pop3 {
		pop3Address, protocols = h.startPOP3Upstream(validate, opts.pop3Personality), []string{"imap", "pop3"}
	}
	var smtpAddress string
	if opts.smtp {
		smtpAddress = h.startSMTPUpstream(validate, opts.smtpOptions)
		if protocols == nil {
			protocols = []string{"imap"}
		}
		protocols = append(protocols, "smtp")
	}
	imapAddress, tokenURL := up.Addr, h.tokens.TokenURL()
	if opts.imapAddress != "" {
		imapAddress = opts.imapAddress
	}
	if opts.tokenURL != "" {
		tokenURL = opts.tokenURL
	}
	serverTLS := ""
	if opts.localTLS {
		certPEM, keyPEM, err := proxytest.NewCertificatePEM("localhost", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM} {
			if err := os.WriteFile(filepath.Join(h.dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		h.localCA = x509.NewCertPool()
		h.localCA.AppendCertsFromPEM(certPEM)
		serverTLS = "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
	}
	text := proxytest.LabConfig(proxytest.LabConfigOptions{
		Server:   "login_timeout = \"10s\"\n" + serverTLS + opts.serverTOML,
		TokenURL: tokenURL, ClientID: testClientID, ClientSecret: testSecret,
		IMAPAddress: imapAddress, CAFile: "ca.pem",
		Accounts:    map[string]string{testLogin: testMailbox},
		Type:        opts.providerType,
		POP3Address: pop3Address, Protocols: protocols,
		POP3InitialResponse: opts.pop3Personality == proxytest.POP3Gmail,
		SMTPAddress:         smtpAddress,
	})
	text += opts.accountTOML // the test account's table is the last one
	text += "\n" + opts.tablesTOML
	rt := h.tokens.Grant(testMailbox)
	h.grants = append(h.grants, rt)
	failureDelay := opts.failureDelay
	if failureDelay == 0 {
		failureDelay = 10 * time.Millisecond
	}
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.testProxy = newTestProxy(t, testProxyOptions{dir: h.dir, config: text,
		records: []tokenRecord{{testLogin, testPassword, rt}}, logger: logger, failureDelay: failureDelay,
		peerUID: opts.peerUID})
	return h
}

// serveOn makes the running proxy also accept on listenAddr (implicit TLS
// if implicitTLS) and returns the loopback address to dial.
func (h *harness) serveOn(listenAddr string, implicitTLS bool) string {
	h.t.Helper()
	if implicitTLS {
		return h.serveWith(h.t, listenAddr, h.srv.ServeTLS)
	}
	return h.serveWith(h.t, listenAddr, h.srv.Serve)
}

// restart stops the proxy and starts a new one on the same state.
func (h *harness) restart() {
	h.t.Helper()
	h.testProxy = h.testProxy.restart(h.t)
}

// dial connects an imapclient collector to the proxy.
func (h *harness) dial() *imapclient.Client {
	h.t.Helper()
	return h.dialWith(nil)
}

// dialWith connects an imapclient collector with opts to the proxy.
func (h *harness) dialWith(opts *imapclient.Options) *imapclient.Client {
	h.t.Helper()
	conn, err := net.DialTimeout("tcp", h.addr, testDeadline)
	if err != nil {
		h.t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := imapclient.New(conn, opts)
	h.t.Cleanup(func() { c.Close() })
	return c
}

// login dials and logs in with the test account.
func (h *harness) login() *imapclient.Client {
	h.t.Helper()
	c := h.dial()
	if err := c.Login(testLogin, testPassword).Wait(); err != nil {
		h.t.Fatalf("LOGIN through the proxy: %v", err)
	}
	return c
}

// direct connects a client straight to the upstream with XOAUTH2, using
// an access token from its own authorization, for comparisons.
func (h *harness) direct(opts *imapclient.Options) *imapclient.Client {
	h.t.Helper()
	return h.directWith(h.directToken(), opts)
}

// directToken returns an access token from a separate authorization of the
// test mailbox, so direct clients never rotate the proxy's refresh token.
func (h *harness) directToken() string {
	h.t.Helper()
	rt := h.tokens.Grant(testMailbox)
	h.grants = append(h.grants, rt)
	cfg := &oauth2.Config{ClientID: testClientID, ClientSecret: testSecret,
		Endpoint: oauth2.Endpoint{TokenURL: h.tokens.TokenURL(), AuthStyle: oauth2.AuthStyleInParams}}
	tok, err := cfg.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		h.t.Fatal(err)
	}
	return tok.AccessToken
}

// directWith logs in to the upstream with XOAUTH2 and accessToken.
func (h *harness) directWith(accessToken string, opts *imapclient.Options) *imapclient.Client {
	h.t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.upstream.CAPEM)
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = &tls.Config{RootCAs: pool}
	c, err := imapclient.DialTLS(h.upstream.Addr, opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	if err := c.Authenticate(auth.NewXOAUTH2Client(testMailbox, accessToken)); err != nil {
		h.t.Fatalf("direct XOAUTH2: %v", err)
	}
	return c
}

// raw opens a plain connection to the proxy and reads the greeting.
func (h *harness) raw() *rawConn {
	h.t.Helper()
	return h.rawFrom("")
}

// rawFrom is raw from the local address localIP ("" for any), such as
// 127.0.0.2, to act as a collector on another host.
func (h *harness) rawFrom(localIP string) *rawConn {
	h.t.Helper()
	conn := h.connFrom(localIP)
	r := newRawConn(h.t, conn)
	if g := r.line(); !strings.HasPrefix(g, "* OK ") {
		h.t.Fatalf("greeting = %q", g)
	}
	return r
}

// connFrom dials the proxy from localIP ("" for any).
func (h *harness) connFrom(localIP string) net.Conn {
	h.t.Helper()
	d := &net.Dialer{Timeout: testDeadline}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	conn, err := d.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// lineConn speaks a line protocol (IMAP, POP3, SMTP) by hand to the
// proxy; its methods return errors, so it can be used from any goroutine.
type lineConn struct {
	nc net.Conn
	br *bufio.Reader
}

// dialLine connects to addr from localIP ("" for any) and reads the
// greeting, which must be "* OK ...".
func dialLine(addr, localIP string, deadline time.Duration) (*lineConn, error) {
	d := &net.Dialer{Timeout: deadline}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(deadline))
	c := &lineConn{nc: nc, br: bufio.NewReader(nc)}
	g, err := c.readLine()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("reading greeting: %w", err)
	}
	if !strings.HasPrefix(g, "* OK ") {
		nc.Close()
		return nil, fmt.Errorf("greeting %q", g)
	}
	return c, nil
}

func (c *lineConn) send(s string) error {
	_, err := io.WriteString(c.nc, s)
	return err
}

func (c *lineConn) readLine() (string, error) {
	l, err := c.br.ReadString('\n')
	if err != nil {
		return l, err
	}
	return strings.TrimRight(l, "\r\n"), nil
}

// command sends line (with CRLF) and reads up to its tagged answer, which
// it returns with the untagged lines before it.
func (c *lineConn) command(tag, line string) (string, []string, error) {
	if err := c.send(tag + " " + line + "\r\n"); err != nil {
		return "", nil, err
	}
	var untagged []string
	for {
		l, err := c.readLine()
		if err != nil {
			return "", untagged, fmt.Errorf("reading the answer to %s: %w", tag, err)
		}
		if strings.HasPrefix(l, tag+" ") {
			return l, untagged, nil
		}
		untagged = append(untagged, l)
	}
}

// rawConn is a lineConn for a test's own goroutine, whose methods fail the
// test instead of returning errors: for the forms clients never send.
type rawConn struct {
	t testing.TB
	*lineConn
}

// newRawConn speaks over conn.
func newRawConn(t testing.TB, conn net.Conn) *rawConn {
	return &rawConn{t: t, lineConn: &lineConn{nc: conn, br: bufio.NewReader(conn)}}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if err := r.lineConn.send(s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) line() string {
	r.t.Helper()
	l, err := r.readLine()
	if err != nil {
		r.t.Fatalf("read after %q: %v", l, err)
	}
	return l
}

// until reads lines up to and including the one starting with prefix and
// returns them all.
func (r *rawConn) until(prefix string) []string {
	r.t.Helper()
	var lines []string
	for {
		l := r.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, prefix) {
			return lines
		}
	}
}

// closed reports whether the server closed the connection (after reading
// whatever was left). A reset counts: closing with unread input sends one.
func (r *rawConn) closed() bool {
	_, err := io.ReadAll(r.br)
	return err == nil || errors.Is(err, syscall.ECONNRESET)
}

// freeAddr returns a loopback address nobody listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
