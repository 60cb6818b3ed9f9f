package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// pop3Messages are the test mailbox's messages on the POP3 upstream: one
// with a line that needs byte-stuffing, one without a final CRLF.
var pop3Messages = [][]byte{
	[]byte("From: a@example.com\r\nSubject: one\r\n\r\nfirst\r\n.hidden dot\r\n..two dots\r\n"),
	[]byte("From: b@example.com\r\nSubject: two\r\n\r\nsecond body\r\n"),
}

// startPOP3Upstream starts the POP3 upstream with the test mailbox, adds
// its CA to ca.pem, and returns its address.
func (h *harness) startPOP3Upstream(validate func(user, token string) error, personality proxytest.POP3Personality) string {
	h.t.Helper()
	up, err := proxytest.NewPOP3Upstream(proxytest.POP3UpstreamOptions{Validate: validate, Personality: personality})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { up.Close() })
	for _, m := range pop3Messages {
		up.AddMessage(testMailbox, m)
	}
	h.appendCA(up.CAPEM)
	h.pop3Upstream = up
	return up.Addr
}

// appendCA adds a CA certificate to ca.pem, the provider's ca_file.
func (h *harness) appendCA(caPEM []byte) {
	h.t.Helper()
	f, err := os.OpenFile(filepath.Join(h.dir, "ca.pem"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(caPEM); err != nil {
		h.t.Fatal(err)
	}
}

// servePOP3 makes the running proxy accept POP3 on listenAddr (implicit
// TLS if implicitTLS) and returns the loopback address to dial.
func (h *harness) servePOP3(listenAddr string, implicitTLS bool) string {
	h.t.Helper()
	if implicitTLS {
		return h.serveWith(h.t, listenAddr, h.srv.ServePOP3TLS)
	}
	return h.serveWith(h.t, listenAddr, h.srv.ServePOP3)
}

// pop3Client speaks POP3 by hand.
type pop3Client struct {
	*rawConn // send and line, as for IMAP
}

// dialPOP3 connects to addr and checks the greeting.
func dialPOP3(t testing.TB, addr string) *pop3Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return newPOP3Client(t, conn)
}

func newPOP3Client(t testing.TB, conn net.Conn) *pop3Client {
	t.Helper()
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := &pop3Client{newRawConn(t, conn)}
	if g := c.line(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting = %q", g)
	}
	return c
}

// cmd sends one command line and returns the answer's first line.
func (c *pop3Client) cmd(line string) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.line()
}

// multi reads the body of a multi-line answer, un-byte-stuffed, with
// CRLF line endings.
func (c *pop3Client) multi() []byte {
	c.t.Helper()
	var b bytes.Buffer
	for {
		l := c.line()
		if l == "." {
			return b.Bytes()
		}
		b.WriteString(strings.TrimPrefix(l, "."))
		b.WriteString("\r\n")
	}
}

// closed reports whether the proxy closed the connection.
func (c *pop3Client) closed() bool {
	_, err := c.br.ReadByte()
	return err != nil
}

func plainIR(authzid, user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + user + "\x00" + password))
}

// wantPrefix fails unless got starts with want.
func wantPrefix(t testing.TB, what, got, want string) {
	t.Helper()
	if !strings.HasPrefix(got, want) {
		t.Errorf("%s: got %q, want %q...", what, got, want)
	}
}

// TestPOP3LoginForms logs in with every form a collector may use, against
// both providers' upstream behaviour, and reads the mailbox through the
// relay.
func TestPOP3LoginForms(t *testing.T) {
	forms := []struct {
		name  string
		login func(c *pop3Client) string
	}{
		{"USER/PASS", func(c *pop3Client) string {
			wantPrefix(t, "USER", c.cmd("USER "+testLogin), "+OK")
			return c.cmd("PASS " + testPassword) // spaces and all
		}},
		{"AUTH PLAIN initial response", func(c *pop3Client) string {
			return c.cmd("AUTH PLAIN " + plainIR("", testLogin, testPassword))
		}},
		{"AUTH PLAIN continuation", func(c *pop3Client) string {
			wantPrefix(t, "AUTH PLAIN", c.cmd("auth plain"), "+ ")
			return c.cmd(plainIR(testLogin, testLogin, testPassword))
		}},
	}
	for _, p := range []struct {
		name        string
		personality proxytest.POP3Personality
	}{{"microsoft", proxytest.POP3Microsoft}, {"gmail", proxytest.POP3Gmail}} {
		t.Run(p.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{pop3: true, pop3Personality: p.personality})
			addr := h.servePOP3("127.0.0.1:0", false)
			for i, f := range forms {
				t.Run(f.name, func(t *testing.T) {
					c := dialPOP3(t, addr)
					wantPrefix(t, "login", f.login(c), "+OK")
					wantPrefix(t, "STAT", c.cmd("STAT"), fmt.Sprintf("+OK %d ", len(pop3Messages)))
					for n, want := range pop3Messages {
						wantPrefix(t, "RETR", c.cmd(fmt.Sprintf("RETR %d", n+1)), "+OK")
						got := c.multi()
						if !bytes.Equal(got, bytes.TrimSuffix(want, []byte("\r\n"))) && !bytes.Equal(got, want) {
							t.Errorf("RETR %d = %q, want %q", n+1, got, want)
						}
					}
					wantPrefix(t, "QUIT", c.cmd("QUIT"), "+OK")
					if got := h.pop3Upstream.Logins(); got != int64(i+1) {
						t.Errorf("upstream logins = %d, want %d", got, i+1)
					}
				})
			}
			if h.pop3Upstream.Refusals() != 0 {
				t.Errorf("upstream refused %d tokens", h.pop3Upstream.Refusals())
			}
		})
	}
}

// TestPOP3Preauth: every command before login gets a clear answer, and
// bad input ends the session where it should, without reaching the
// upstream.
func TestPOP3Preauth(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true, serverTOML: "max_line_bytes = 512\n"})
	addr := h.servePOP3("127.0.0.1:0", false)
	tests := []struct {
		name string
		// lines are sent one by one; want holds the prefix of each answer's
		// first line.
		lines, want []string
		closed      bool // the proxy ends the session after the last
	}{
		{"CAPA on loopback", []string{"CAPA"}, []string{"+OK Capability list follows"}, false},
		{"PASS before USER", []string{"CAPA", "PASS x"}, []string{"+OK", "-ERR Send USER before PASS"}, false},
		{"USER without a name", []string{"CAPA", "USER"}, []string{"+OK", "-ERR USER takes one argument"}, false},
		{"AUTH lists mechanisms", []string{"AUTH"}, []string{"+OK Mechanism list follows"}, false},
		{"other mechanism", []string{"AUTH LOGIN"}, []string{"-ERR Unsupported mechanism; use PLAIN"}, false},
		{"cancelled", []string{"AUTH PLAIN", "*"}, []string{"+ ", "-ERR AUTH cancelled"}, false},
		{"malformed base64", []string{"AUTH PLAIN !!!"}, []string{"-ERR Malformed SASL response"}, false},
		{"empty response", []string{"AUTH PLAIN ="}, []string{"-ERR Malformed SASL response"}, false},
		{"authzid differs", []string{"AUTH PLAIN " + plainIR("boss", testLogin, testPassword)},
			[]string{"-ERR [AUTH] Authorization identity must be empty"}, false},
		{"wrong password", []string{"USER " + testLogin, "PASS wrong"}, []string{"+OK", "-ERR [AUTH] authentication failed"}, false},
		{"unknown login", []string{"USER nobody", "PASS " + testPassword}, []string{"+OK", "-ERR [AUTH] authentication failed"}, false},
		{"STLS without a certificate", []string{"STLS"}, []string{"-ERR STLS is not available"}, false},
		{"bare LF", []string{"CAPA\n"}, []string{"+OK Capability list follows"}, false},
		{"transaction command before login", []string{"CAPA", "STAT"}, []string{"+OK", "-ERR Command unknown or not allowed before login"}, false},
		{"QUIT", []string{"QUIT"}, []string{"+OK"}, true},
		{"unknown first command", []string{"HELO example.com"}, []string{"-ERR Not a POP3 command"}, true},
		{"IMAP on the POP3 port", []string{"a1 LOGIN collector pw"}, []string{"-ERR Not a POP3 command"}, true},
		{"HTTP on the POP3 port", []string{"GET / HTTP/1.1"}, []string{"-ERR Not a POP3 command"}, true},
		{"TLS on a plain port", []string{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"}, []string{"-ERR Not a POP3 command"}, true},
		{"three bad commands", []string{"CAPA", "STAT", "LIST", "RETR 1"},
			[]string{"+OK", "-ERR Command unknown", "-ERR Command unknown", "-ERR Too many invalid commands"}, true},
		{"overlong line", []string{"USER " + strings.Repeat("x", 600)}, []string{"-ERR Command line longer than 512 bytes"}, true},
	}
	conns, requests := h.pop3Upstream.Logins()+h.pop3Upstream.Refusals(), h.tokens.Requests()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialPOP3(t, addr)
			for i, l := range tt.lines {
				if !strings.HasSuffix(l, "\n") {
					l += "\r\n"
				}
				c.send(l)
				got := c.line()
				wantPrefix(t, fmt.Sprintf("answer to %q", auth1Line(tt.lines[i])), got, tt.want[i])
				if strings.HasPrefix(got, "+OK ") && strings.HasSuffix(got, " follows") {
					if list := string(c.multi()); !strings.Contains(list, "PLAIN") {
						t.Errorf("list %q lacks PLAIN", list)
					}
				}
			}
			if tt.closed && !c.closed() {
				t.Error("session still open")
			}
			if !tt.closed && c.cmd("QUIT") != "+OK imap-oauth-proxy signing off" {
				t.Error("session did not go on")
			}
		})
	}
	if h.pop3Upstream.Logins()+h.pop3Upstream.Refusals() != conns || h.tokens.Requests() != requests {
		t.Error("a refused login reached the upstream or the token endpoint")
	}
	if strings.Contains(h.logs.String(), testPassword) {
		t.Error("the password is in the log")
	}
}

// auth1Line shortens a command line for a test message.
func auth1Line(l string) string {
	if len(l) > 40 {
		return l[:40] + "..."
	}
	return l
}

// TestPOP3Capabilities: USER and SASL PLAIN are offered only where they may
// be used; off loopback without allow_plaintext they need STLS first, and a
// refused attempt reaches nobody. After STLS, login works.
func TestPOP3Capabilities(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true, localTLS: true})
	addr := h.servePOP3("0.0.0.0:0", false) // dialled on 127.0.0.1 only
	c := dialPOP3(t, addr)
	wantPrefix(t, "CAPA", c.cmd("CAPA"), "+OK")
	caps := string(c.multi())
	for _, want := range []string{"STLS", "RESP-CODES", "AUTH-RESP-CODE"} {
		if !strings.Contains(caps, want+"\r\n") {
			t.Errorf("CAPA before STLS = %q, want %s", caps, want)
		}
	}
	if strings.Contains(caps, "USER") || strings.Contains(caps, "SASL") {
		t.Errorf("CAPA before STLS off loopback offers plaintext login: %q", caps)
	}
	wantPrefix(t, "USER before STLS", c.cmd("USER "+testLogin), "-ERR [AUTH] Use STLS")
	wantPrefix(t, "AUTH before STLS", c.cmd("AUTH PLAIN "+plainIR("", testLogin, testPassword)), "-ERR [AUTH] Use STLS")
	if h.pop3Upstream.Logins()+h.pop3Upstream.Refusals() != 0 || h.tokens.Requests() != 0 {
		t.Error("a refused plaintext login reached the upstream or the token endpoint")
	}
	wantPrefix(t, "STLS", c.cmd("STLS"), "+OK")
	tc := tls.Client(c.nc, &tls.Config{RootCAs: h.localCA, ServerName: "localhost", NextProtos: []string{"pop3"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().NegotiatedProtocol; got != "pop3" {
		t.Errorf("ALPN = %q, want pop3", got)
	}
	c.nc, c.br = tc, bufio.NewReader(tc)
	wantPrefix(t, "CAPA after STLS", c.cmd("CAPA"), "+OK")
	caps = string(c.multi())
	if !strings.Contains(caps, "USER\r\nSASL PLAIN\r\n") || strings.Contains(caps, "STLS") {
		t.Errorf("CAPA after STLS = %q", caps)
	}
	wantPrefix(t, "STLS again", c.cmd("STLS"), "-ERR STLS is not available")
	wantPrefix(t, "USER", c.cmd("USER "+testLogin), "+OK")
	wantPrefix(t, "PASS", c.cmd("PASS "+testPassword), "+OK")
	wantPrefix(t, "STAT", c.cmd("STAT"), "+OK 2 ")
}

// TestPOP3PipelinedAfterSTLS: plaintext sent after STLS, before the
// handshake, would be taken as protected; the proxy ends the session.
func TestPOP3PipelinedAfterSTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true, localTLS: true})
	c := dialPOP3(t, h.servePOP3("127.0.0.1:0", false))
	c.send("STLS\r\nUSER " + testLogin + "\r\n")
	wantPrefix(t, "STLS", c.line(), "-ERR Commands pipelined after STLS")
	if !c.closed() {
		t.Error("session still open")
	}
}

// TestPOP3ImplicitTLS logs in on the POP3S listener, with pipelined
// commands after PASS, which the relay must forward.
func TestPOP3ImplicitTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true, localTLS: true})
	addr := h.servePOP3("127.0.0.1:0", true)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testDeadline}, "tcp", addr,
		&tls.Config{RootCAs: h.localCA, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := newPOP3Client(t, conn)
	c.send("USER " + testLogin + "\r\nPASS " + testPassword + "\r\nSTAT\r\nQUIT\r\n")
	for _, want := range []string{"+OK", "+OK Logged in", "+OK 2 ", "+OK"} {
		wantPrefix(t, "pipelined", c.line(), want)
	}
}

// TestPOP3UpstreamRefusesToken: a refused token is refreshed once and
// tried again; a second refusal reaches the collector as [SYS/PERM] with
// what to do. Microsoft refuses at once; Gmail with an error challenge
// first, which must never reach the collector.
func TestPOP3UpstreamRefusesToken(t *testing.T) {
	for _, p := range []struct {
		name        string
		personality proxytest.POP3Personality
	}{{"microsoft", proxytest.POP3Microsoft}, {"gmail", proxytest.POP3Gmail}} {
		t.Run(p.name, func(t *testing.T) {
			refuse := true
			var refusedOnce bool
			h := newHarness(t, harnessOptions{pop3: true, pop3Personality: p.personality,
				validate: func(user, token string, next func(string, string) error) error {
					if refuse {
						return errors.New("refused")
					}
					if !refusedOnce {
						refusedOnce = true
						return errors.New("stale")
					}
					return next(user, token)
				}})
			addr := h.servePOP3("127.0.0.1:0", false)
			c := dialPOP3(t, addr)
			c.cmd("USER " + testLogin)
			got := c.cmd("PASS " + testPassword)
			wantPrefix(t, "PASS with refused tokens", got, "-ERR [SYS/PERM] upstream refused the token for "+testMailbox)
			if !strings.Contains(got, "imap-oauth-proxy check "+testLogin) {
				t.Errorf("refusal %q does not say what to run", got)
			}
			if tokens := h.accessTokens(); len(tokens) != 2 || tokens[0] == tokens[1] {
				t.Errorf("upstream saw %d tokens, want a token and a refreshed one", len(tokens))
			}
			refuse = false
			c.cmd("USER " + testLogin)
			wantPrefix(t, "PASS after one stale token", c.cmd("PASS "+testPassword), "+OK Logged in")
			wantPrefix(t, "STAT", c.cmd("STAT"), "+OK 2 ")
		})
	}
}

// TestPOP3UpstreamBusy: [IN-USE] and [SYS/TEMP] from the upstream are not
// the token's fault: no refresh, and the collector gets [SYS/TEMP].
func TestPOP3UpstreamBusy(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true})
	addr := h.servePOP3("127.0.0.1:0", false)
	for _, line := range []string{"-ERR [IN-USE] Mailbox locked by another session", "-ERR [SYS/TEMP] Try later"} {
		h.pop3Upstream.AnswerAuthWith(line)
		before := len(h.accessTokens())
		c := dialPOP3(t, addr)
		c.cmd("USER " + testLogin)
		wantPrefix(t, line, c.cmd("PASS "+testPassword), "-ERR [SYS/TEMP] upstream")
		if n := len(h.accessTokens()) - before; n != 0 {
			t.Errorf("%s: the token was refreshed (%d new tokens seen by the validator)", line, n)
		}
	}
}

// TestPOP3NotEnabled: an account that does not list pop3 is refused over
// POP3, and says so only to a collector that knows the password.
func TestPOP3NotEnabled(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	addr := h.servePOP3("127.0.0.1:0", false)
	c := dialPOP3(t, addr)
	c.cmd("USER " + testLogin)
	wantPrefix(t, "wrong password", c.cmd("PASS wrong"), "-ERR [AUTH] authentication failed")
	c.cmd("USER " + testLogin)
	got := c.cmd("PASS " + testPassword)
	wantPrefix(t, "right password", got, "-ERR [SYS/PERM] "+testLogin+" is not enabled for POP3")
	if !strings.Contains(got, `"pop3" to accounts.`+testLogin+".protocols") {
		t.Errorf("refusal %q does not name the key", got)
	}
}

// TestPOP3SharesLimits: IMAP and POP3 sessions of one peer count against
// the same max_connections_per_peer.
func TestPOP3SharesLimits(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true, serverTOML: "max_connections_per_peer = 2\n"})
	addr := h.servePOP3("127.0.0.1:0", false)
	h.raw()
	dialPOP3(t, addr)
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testDeadline))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	wantPrefix(t, "third connection", line, "-ERR [SYS/TEMP] Too many connections")
}

// TestPOP3ThrottleShared: wrong passwords over POP3 spend the login's
// failure budget, which then holds over IMAP too.
func TestPOP3ThrottleShared(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true, failureDelay: -1})
	addr := h.servePOP3("127.0.0.1:0", false)
	c := dialPOP3(t, addr)
	refused := false
	for i := 0; i < 64 && !refused; i++ {
		c.cmd("USER " + testLogin)
		got := c.cmd("PASS wrong")
		refused = strings.HasPrefix(got, "-ERR [SYS/TEMP] Too many failed logins")
		if !refused {
			wantPrefix(t, "wrong password", got, "-ERR [AUTH]")
		}
		if i%2 == 1 && !refused { // stay under the bad-command limit: reconnect
			c = dialPOP3(t, addr)
		}
	}
	if !refused {
		t.Fatal("the failure budget never ran out")
	}
	r := h.raw()
	r.send("a1 LOGIN " + testLogin + " wrong\r\n")
	wantPrefix(t, "IMAP after POP3 failures", r.line(), "a1 NO [UNAVAILABLE] Too many failed logins")
}
