package proxy_test

// Interop: real legacy collectors (fetchmail, Python's imaplib, curl, PHP's
// imap extension) log in with their local password (LOGIN, or AUTHENTICATE
// PLAIN where they prefer it) through the proxy to a real Dovecot that
// accepts only XOAUTH2/OAUTHBEARER and checks every token with the test
// token endpoint's introspection URL. Each must see what a direct XOAUTH2
// client sees. The programs come from Debian packages (.ci/run installs
// them); see requireProgram for what happens when one is missing.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

// interopClientTimeout bounds one run of a legacy client.
const interopClientTimeout = 30 * time.Second

// interopAccount is a collector's login at the proxy and the Dovecot
// mailbox behind it.
type interopAccount struct {
	Login    string
	Mailbox  string
	Password string // random, set by newInteropEnv
	// Bearer makes the proxy log in upstream with OAUTHBEARER instead of
	// XOAUTH2.
	Bearer bool
}

// interopEnv is a token endpoint, a Dovecot that checks tokens against it,
// and a proxy in front of Dovecot with one account per collector.
type interopEnv struct {
	t        testing.TB
	tokens   *authtest.Server
	dovecot  *dovecot
	addr     string // the proxy's
	pop3Addr string // the proxy's POP3 listener, "" without interopOptions.pop3
	postfix  *postfix
	smtpAddr string // the proxy's SMTP listener, "" without interopOptions.smtp
	port     int
	srv      *proxy.Server
	logs     *syncbuf.Buffer
	accounts map[string]*interopAccount

	mu      sync.Mutex
	secrets []string // passwords and tokens that must appear in no log
}

// newInteropEnv starts the token endpoint, Dovecot and the proxy, with an
// account for each login in logins (mailbox LOGIN@contoso.test). A login
// ending in "-bearer" logs in upstream with OAUTHBEARER.
func newInteropEnv(t testing.TB, logins ...string) *interopEnv {
	t.Helper()
	return newInteropEnvLogging(t, slog.LevelDebug, logins...)
}

// newInteropEnvLogging is newInteropEnv with the proxy logging at level:
// benchmarks use slog.LevelWarn, as a production daemon's log is not the
// debug trace.
func newInteropEnvLogging(t testing.TB, level slog.Level, logins ...string) *interopEnv {
	t.Helper()
	return newInteropEnvWith(t, interopOptions{level: level}, logins...)
}

// interopOptions is what differs between interop environments.
type interopOptions struct {
	// level is the proxy's log level.
	level slog.Level
	// pop3 adds Dovecot's pop3 service as the providers' POP3 upstream,
	// lets every account use POP3 and serves the proxy's POP3 listener
	// (pop3Addr) as well.
	pop3 bool
	// smtp starts a private Postfix whose submission takes XOAUTH2
	// through Dovecot's SASL as the providers' SMTP upstream, lets every
	// account use SMTP and serves the proxy's SMTP listener (smtpAddr).
	smtp bool
}

// newInteropEnvWith is newInteropEnv with opts.
func newInteropEnvWith(t testing.TB, opts interopOptions, logins ...string) *interopEnv {
	t.Helper()
	level := opts.level
	e := &interopEnv{t: t, logs: &syncbuf.Buffer{}, accounts: make(map[string]*interopAccount)}
	e.tokens = authtest.NewServer(authtest.Options{
		Flavor: authtest.Microsoft, ClientID: testClientID, ClientSecret: testSecret, Rotate: true,
	})
	t.Cleanup(e.tokens.Close)
	e.dovecot = startDovecot(t, e.tokens.IntrospectionURL(), dovecotOptions{POP3: opts.pop3, SMTPAuth: opts.smtp})
	if opts.smtp {
		e.postfix = startPostfix(t, e.dovecot)
	}
	t.Cleanup(e.checkLogs)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dovecot-ca.pem"), e.dovecot.CAPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	fmt.Fprintf(&text, `
[server]
listen = "127.0.0.1:0"
state_dir = "state"
login_timeout = "20s"
`)
	for _, p := range []struct{ name, mech string }{{"dovecot", "XOAUTH2"}, {"dovecot-bearer", "OAUTHBEARER"}} {
		fmt.Fprintf(&text, `
[providers.%s]
type = "generic"
token_url = %q
scopes = ["imap", "offline_access"]
client_id = %q
client_secret = %q
imap_address = %q
imap_tls = "implicit"
ca_file = "dovecot-ca.pem"
mechanism = %q
`, p.name, e.tokens.TokenURL(), testClientID, testSecret, e.dovecot.Addr, p.mech)
		if opts.pop3 {
			fmt.Fprintf(&text, "pop3_address = %q\n", e.dovecot.POP3Addr)
		}
		if opts.smtp {
			fmt.Fprintf(&text, "smtp_address = %q\n", e.postfix.Addr)
		}
	}
	for _, login := range logins {
		a := &interopAccount{Login: login, Mailbox: login + "@contoso.test",
			Password: "pw-" + randomHex(12), Bearer: strings.HasSuffix(login, "-bearer")}
		e.accounts[login] = a
		e.addSecret(a.Password)
		provider := "dovecot"
		if a.Bearer {
			provider = "dovecot-bearer"
		}
		fmt.Fprintf(&text, "\n[accounts.%s]\nprovider = %q\nmailbox = %q\n", login, provider, a.Mailbox)
		protocols := []string{`"imap"`}
		if opts.pop3 {
			protocols = append(protocols, `"pop3"`)
		}
		if opts.smtp {
			protocols = append(protocols, `"smtp"`)
		}
		fmt.Fprintf(&text, "protocols = [%s]\n", strings.Join(protocols, ", "))
	}
	var records []tokenRecord
	for _, login := range logins {
		a := e.accounts[login]
		rt := e.tokens.Grant(a.Mailbox)
		e.addSecret(rt)
		records = append(records, tokenRecord{a.Login, a.Password, rt})
	}
	logger := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: level}))
	p := newTestProxy(t, testProxyOptions{dir: dir, config: text.String(), records: records, logger: logger})
	e.addr, e.port, e.srv = p.addr, p.port, p.srv
	if opts.pop3 {
		e.pop3Addr = p.serveWith(t, "127.0.0.1:0", p.srv.ServePOP3)
	}
	if opts.smtp {
		e.smtpAddr = p.serveWith(t, "127.0.0.1:0", p.srv.ServeSMTP)
	}
	return e
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (e *interopEnv) addSecret(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.secrets = append(e.secrets, s)
}

// redact replaces every known secret in s.
func (e *interopEnv) redact(s string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, secret := range e.secrets {
		s = strings.ReplaceAll(s, secret, "[redacted]")
	}
	return s
}

// checkLogs fails the test if a password or token shows in the proxy's or
// Dovecot's log, and shows the proxy's log (redacted) when the test failed.
func (e *interopEnv) checkLogs() {
	for _, a := range e.accounts {
		if rt := e.tokens.CurrentRefreshToken(a.Mailbox); rt != "" {
			e.addSecret(rt) // rotated by the proxy's refreshes
		}
	}
	proxyLog, dovecotLog := e.logs.String(), e.dovecot.Log()
	if r := e.redact(proxyLog); r != proxyLog {
		e.t.Errorf("the proxy's log shows a password or token")
	}
	if r := e.redact(dovecotLog); r != dovecotLog {
		e.t.Errorf("dovecot's log shows a password or token")
	}
	if e.postfix != nil {
		if l := e.postfix.Log(); e.redact(l) != l {
			e.t.Errorf("postfix's log shows a password or token")
		}
	}
	for _, line := range strings.Split(dovecotLog, "\n") {
		if strings.Contains(line, " Error: ") || strings.Contains(line, " Fatal: ") || strings.Contains(line, " Panic: ") {
			e.t.Errorf("dovecot logged: %s", e.redact(line))
		}
	}
	if e.t.Failed() {
		e.t.Logf("proxy log:\n%s", e.redact(proxyLog))
	}
}

// account returns the account of login.
func (e *interopEnv) account(t testing.TB, login string) *interopAccount {
	t.Helper()
	a := e.accounts[login]
	if a == nil {
		t.Fatalf("no interop account %q", login)
	}
	return a
}

// direct logs in to Dovecot with XOAUTH2 and an access token from its own
// authorization of a's mailbox, so it never rotates the proxy's refresh
// token.
func (e *interopEnv) direct(t testing.TB, a *interopAccount) *imapclient.Client {
	t.Helper()
	token := e.accessToken(t, a.Mailbox)
	c := e.dialDovecot(t)
	if err := c.Authenticate(auth.NewXOAUTH2Client(a.Mailbox, token)); err != nil {
		t.Fatalf("direct XOAUTH2 login to dovecot as %s: %v", a.Mailbox, err)
	}
	return c
}

// accessToken returns a fresh access token for user from a grant of its
// own.
func (e *interopEnv) accessToken(t testing.TB, user string) string {
	t.Helper()
	rt := e.tokens.Grant(user)
	e.addSecret(rt)
	cfg := &oauth2.Config{ClientID: testClientID, ClientSecret: testSecret,
		Endpoint: oauth2.Endpoint{TokenURL: e.tokens.TokenURL(), AuthStyle: oauth2.AuthStyleInParams}}
	tok, err := cfg.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		t.Fatal(err)
	}
	e.addSecret(tok.AccessToken)
	if tok.RefreshToken != "" {
		e.addSecret(tok.RefreshToken) // rotated
	}
	return tok.AccessToken
}

// dialDovecot connects an imapclient to Dovecot, trusting the test CA.
func (e *interopEnv) dialDovecot(t testing.TB) *imapclient.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.dovecot.CAPEM)
	c, err := imapclient.DialTLS(e.dovecot.Addr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatalf("dialing dovecot: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// login logs in to the proxy with imapclient (LOGIN) as a.
func (e *interopEnv) login(t testing.TB, a *interopAccount) *imapclient.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := imapclient.New(conn, nil)
	t.Cleanup(func() { c.Close() })
	if err := c.Login(a.Login, a.Password).Wait(); err != nil {
		t.Fatalf("LOGIN %s through the proxy: %v", a.Login, err)
	}
	return c
}

// interopMessage is one message as a client saw it.
type interopMessage struct {
	UID     uint32
	Subject string
	Flags   []string // sorted, without \Recent
	SHA256  string   // of the whole message (BODY[])
	body    []byte
}

func (m interopMessage) String() string {
	return fmt.Sprintf("uid %d %q %v %.12s", m.UID, m.Subject, m.Flags, m.SHA256)
}

func sortedFlags[T ~string](flags []T) []string {
	out := []string{}
	for _, f := range flags {
		if !strings.EqualFold(string(f), `\Recent`) {
			out = append(out, string(f))
		}
	}
	slices.Sort(out)
	return out
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// view returns INBOX as c sees it, in sequence order, without setting
// \Seen.
func view(t testing.TB, c *imapclient.Client) []interopMessage {
	t.Helper()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	var all imap.SeqSet
	all.AddRange(1, 0)
	msgs, err := c.Fetch(all, &imap.FetchOptions{
		UID: true, Flags: true, Envelope: true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	var out []interopMessage
	for _, m := range msgs {
		var body []byte
		for _, b := range m.BodySection {
			body = b.Bytes
		}
		msg := interopMessage{UID: uint32(m.UID), Flags: sortedFlags(m.Flags), SHA256: sha256Hex(body), body: body}
		if m.Envelope != nil {
			msg.Subject = m.Envelope.Subject
		}
		out = append(out, msg)
	}
	return out
}

// directView returns a's INBOX as a direct XOAUTH2 client sees it.
func (e *interopEnv) directView(t testing.TB, a *interopAccount) []interopMessage {
	t.Helper()
	c := e.direct(t, a)
	defer func() { c.Logout().Wait() }()
	return view(t, c)
}

// seed appends msgs to a's INBOX directly and returns the direct view.
func (e *interopEnv) seed(t testing.TB, a *interopAccount, msgs ...[]byte) []interopMessage {
	t.Helper()
	return appendAndView(t, e.direct(t, a), msgs)
}

// appendAndView appends msgs to INBOX over the direct client c, returns
// what c then sees, and logs it out.
func appendAndView(t testing.TB, c *imapclient.Client, msgs [][]byte) []interopMessage {
	t.Helper()
	for _, msg := range msgs {
		cmd := c.Append("INBOX", int64(len(msg)), nil)
		if _, err := cmd.Write(msg); err != nil {
			t.Fatalf("APPEND: %v", err)
		}
		if err := cmd.Close(); err != nil {
			t.Fatalf("APPEND: %v", err)
		}
		if _, err := cmd.Wait(); err != nil {
			t.Fatalf("APPEND: %v", err)
		}
	}
	v := view(t, c)
	c.Logout().Wait()
	return v
}

// interopMessages returns n test messages for a: short ones, a multi-line
// one and, as the third, one of 256 KiB, so a FETCH spans many reads.
func interopMessages(a *interopAccount, n int) [][]byte {
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		var body strings.Builder
		switch i % 3 {
		case 1:
			body.WriteString("Short ticket body.\r\n")
		case 2:
			for j := 0; j < 20; j++ {
				fmt.Fprintf(&body, "line %d of ticket %d for %s\r\n", j, i, a.Login)
			}
		case 0:
			line := "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
			body.WriteString(strings.Repeat(line, 256<<10/len(line)))
		}
		msgs = append(msgs, []byte(fmt.Sprintf("From: reporter%d@example.test\r\nTo: %s\r\n"+
			"Subject: interop %s ticket %d\r\nMessage-ID: <%s.%d@example.test>\r\n"+
			"Date: Mon, 2 Mar 2026 10:%02d:00 +0000\r\n\r\n%s",
			i, a.Mailbox, a.Login, i, a.Login, i, i, body.String())))
	}
	return msgs
}

// sameMessages fails t unless got and want list the same messages.
func sameMessages(t testing.TB, who string, got, want []interopMessage) {
	t.Helper()
	if len(got) == len(want) {
		same := true
		for i := range got {
			g, w := got[i], want[i]
			if g.UID != w.UID || g.Subject != w.Subject || g.SHA256 != w.SHA256 || !slices.Equal(g.Flags, w.Flags) {
				same = false
			}
		}
		if same {
			return
		}
	}
	t.Errorf("%s saw:\n%s\na direct XOAUTH2 client sees:\n%s", who, listMessages(got), listMessages(want))
}

func listMessages(msgs []interopMessage) string {
	if len(msgs) == 0 {
		return "  (no messages)"
	}
	var sb strings.Builder
	for _, m := range msgs {
		fmt.Fprintf(&sb, "  %v\n", m)
	}
	return sb.String()
}

// run runs a legacy client with stdin, in dir with env added, and returns
// its stdout. Output shown on failure is redacted.
func (e *interopEnv) run(t testing.TB, stdin string, env []string, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), interopClientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timeout %v)", err, interopClientTimeout)
	}
	if err != nil {
		err = fmt.Errorf("%s: %w\nstderr:\n%s\nstdout:\n%s", e.redact(strings.Join(cmd.Args, " ")), err,
			e.redact(stderr.String()), e.redact(stdout.String()))
	} else if stderr.Len() > 0 {
		t.Logf("%s stderr:\n%s", filepath.Base(name), e.redact(stderr.String()))
	}
	return stdout.Bytes(), err
}

// TestDovecotUpstream checks the Dovecot upstream itself, then the proxy
// against it with imapclient: Dovecot takes only bearer tokens it can
// introspect, for their own user; the proxy logs in with XOAUTH2 and with
// OAUTHBEARER; a revoked authorization reaches the collector as
// AUTHORIZATIONFAILED after Dovecot refuses the cached token.
func TestDovecotUpstream(t *testing.T) {
	e := newInteropEnv(t, "baseline", "baseline-bearer", "revoked")
	base := e.account(t, "baseline")

	c := e.dialDovecot(t)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []imap.Cap{"AUTH=XOAUTH2", "AUTH=OAUTHBEARER", imap.CapLoginDisabled} {
		if !caps.Has(want) {
			t.Errorf("dovecot lacks %s: %v", want, caps)
		}
	}
	if caps.Has("AUTH=PLAIN") || caps.Has("AUTH=LOGIN") {
		t.Errorf("dovecot offers password mechanisms: %v", caps)
	}

	intros := e.tokens.Introspections()
	if err := c.Authenticate(auth.NewXOAUTH2Client(base.Mailbox, "not-a-token")); err == nil {
		t.Error("dovecot accepted a token the endpoint never issued")
	}
	other := e.dialDovecot(t)
	otherToken := e.accessToken(t, "someone-else@contoso.test")
	if err := other.Authenticate(auth.NewXOAUTH2Client(base.Mailbox, otherToken)); err == nil {
		t.Error("dovecot accepted another user's token")
	}
	if got := e.tokens.Introspections() - intros; got != 2 {
		t.Errorf("dovecot made %d introspection requests for 2 logins, want 2", got)
	}

	for _, login := range []string{"baseline", "baseline-bearer"} {
		t.Run(login, func(t *testing.T) {
			a := e.account(t, login)
			want := e.seed(t, a, interopMessages(a, 3)...)
			intros := e.tokens.Introspections()
			sameMessages(t, "imapclient through the proxy", view(t, e.login(t, a)), want)
			if e.tokens.Introspections() == intros {
				t.Error("the proxy's login did not reach dovecot's introspection")
			}
		})
	}

	t.Run("revoked", func(t *testing.T) {
		a := e.account(t, "revoked")
		e.login(t, a).Logout().Wait() // caches an access token
		e.tokens.Revoke(a.Mailbox)
		c, err := net.DialTimeout("tcp", e.addr, testDeadline)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(testDeadline))
		r := newRawConn(t, c)
		r.line() // greeting
		r.send(fmt.Sprintf("a1 LOGIN %s %s\r\n", a.Login, a.Password))
		got := r.line()
		if !strings.HasPrefix(got, "a1 NO [AUTHORIZATIONFAILED]") || !strings.Contains(got, "authorize "+a.Login) {
			t.Errorf("LOGIN after revocation = %q, want NO [AUTHORIZATIONFAILED] naming authorize %s", got, a.Login)
		}
	})
}

// TestInteropLegacyClients runs each legacy collector through the proxy to
// Dovecot, in parallel, each on its own mailbox.
func TestInteropLegacyClients(t *testing.T) {
	e := newInteropEnv(t, "fetchmail", "imaplib", "curl", "php")
	t.Run("fetchmail", func(t *testing.T) { t.Parallel(); e.testFetchmail(t) })
	t.Run("imaplib", func(t *testing.T) { t.Parallel(); e.testImaplib(t) })
	t.Run("curl", func(t *testing.T) { t.Parallel(); e.testCurl(t) })
	t.Run("php", func(t *testing.T) { t.Parallel(); e.testPHP(t) })
}

// fetchmailRC fills testdata/interop/fetchmailrc.
type fetchmailRC struct {
	Port                  int
	User, Password        string
	Keep, FetchAll, Flush bool
	MDA                   string
}

// testFetchmail: "fetchall keep" delivers every message and leaves them;
// then "flush" (no keep) delivers the one new message and deletes it and
// the old, seen ones.
func (e *interopEnv) testFetchmail(t *testing.T) {
	bin := requireProgram(t, "fetchmail", "fetchmail")
	a := e.account(t, "fetchmail")
	want := e.seed(t, a, interopMessages(a, 3)...)
	dir := t.TempDir()

	// fetch runs fetchmail once and returns the delivered messages.
	fetch := func(name string, rc fetchmailRC) [][]byte {
		t.Helper()
		out := filepath.Join(dir, name)
		if err := os.Mkdir(out, 0o700); err != nil {
			t.Fatal(err)
		}
		rc.Port, rc.User, rc.Password = e.port, a.Login, a.Password
		rc.MDA = fmt.Sprintf("/bin/sh -c 'cat > $(mktemp %s/msg.XXXXXX)'", out)
		rcPath := filepath.Join(dir, name+".rc")
		renderFixture(t, "fetchmailrc", rcPath, rc)
		_, err := e.run(t, "", []string{"HOME=" + dir, "FETCHMAILHOME=" + dir}, bin,
			"--fetchmailrc", rcPath, "--idfile", filepath.Join(dir, "fetchids"), "--nodetach", "--nosyslog")
		if err != nil {
			t.Fatalf("fetchmail (%s): %v", name, err)
		}
		files, err := filepath.Glob(filepath.Join(out, "msg.*"))
		if err != nil {
			t.Fatal(err)
		}
		var msgs [][]byte
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, b)
		}
		return msgs
	}

	got := fetch("keep", fetchmailRC{Keep: true, FetchAll: true})
	sameDelivered(t, "fetchmail fetchall keep", got, want)
	after := e.directView(t, a)
	if len(after) != len(want) {
		t.Fatalf("after fetchmail keep, dovecot holds:\n%s\nwant the %d messages kept", listMessages(after), len(want))
	}
	for i, m := range after {
		if m.UID != want[i].UID || !slices.Contains(m.Flags, `\Seen`) {
			t.Errorf("after fetchmail keep: %v, want uid %d seen", m, want[i].UID)
		}
	}

	fresh := e.seed(t, a, interopMessages(a, 4)[3])
	got = fetch("flush", fetchmailRC{Flush: true})
	sameDelivered(t, "fetchmail flush", got, fresh[len(fresh)-1:])
	if after := e.directView(t, a); len(after) != 0 {
		t.Errorf("after fetchmail flush, dovecot still holds:\n%s", listMessages(after))
	}
}

// sameDelivered compares the messages an MDA got (in any order) with the
// direct view. fetchmail prepends a Received: header and delivers with
// LF line ends; both are undone before comparing.
func sameDelivered(t testing.TB, who string, delivered [][]byte, want []interopMessage) {
	t.Helper()
	var got, exp []string
	for _, d := range delivered {
		got = append(got, sha256Hex(withoutReceived(d)))
	}
	for _, w := range want {
		exp = append(exp, sha256Hex(bytes.ReplaceAll(w.body, []byte("\r\n"), []byte("\n"))))
	}
	slices.Sort(got)
	slices.Sort(exp)
	if !slices.Equal(got, exp) {
		var heads []string
		for _, d := range delivered {
			heads = append(heads, fmt.Sprintf("%q", firstLines(d, 8)))
		}
		t.Errorf("%s delivered %d messages (sha256 %v), want %d (sha256 %v); starts of delivered:\n%s",
			who, len(got), got, len(exp), exp, strings.Join(heads, "\n"))
	}
}

// withoutReceived returns msg with LF line ends and without the Received:
// header fields at its top.
func withoutReceived(msg []byte) []byte {
	msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	for {
		line, rest, _ := bytes.Cut(msg, []byte("\n"))
		isReceived := bytes.HasPrefix(bytes.ToLower(line), []byte("received:"))
		if !isReceived {
			return msg
		}
		msg = rest
		for len(msg) > 0 && (msg[0] == ' ' || msg[0] == '\t') { // folded
			_, msg, _ = bytes.Cut(msg, []byte("\n"))
		}
	}
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitAfterN(string(b), "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "")
}

// imaplibResult is what testdata/interop/imaplib_client.py prints.
type imaplibResult struct {
	Greeting     string   `json:"greeting"`
	Capabilities []string `json:"capabilities"`
	Exists       int      `json:"exists"`
	Before       []struct {
		UID     uint32   `json:"uid"`
		Flags   []string `json:"flags"`
		SHA256  string   `json:"sha256"`
		Subject string   `json:"subject"`
	} `json:"before"`
	Expunged []int `json:"expunged"`
	After    []struct {
		UID   uint32   `json:"uid"`
		Flags []string `json:"flags"`
	} `json:"after"`
}

// testImaplib: LOGIN, SELECT, FETCH, STORE \Seen and \Deleted, EXPUNGE
// with Python's imaplib; dovecot then holds what the script saw last.
func (e *interopEnv) testImaplib(t *testing.T) {
	python := requireProgram(t, "python3", "python3")
	a := e.account(t, "imaplib")
	want := e.seed(t, a, interopMessages(a, 3)...)
	out, err := e.run(t, a.Password+"\n", nil, python,
		filepath.Join(interopFixtures, "imaplib_client.py"), "127.0.0.1", strconv.Itoa(e.port), a.Login)
	if err != nil {
		t.Fatal(err)
	}
	var res imaplibResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("imaplib_client.py printed %q: %v", e.redact(string(out)), err)
	}
	if !slices.ContainsFunc(res.Capabilities, func(c string) bool { return strings.EqualFold(c, "IMAP4REV1") }) {
		t.Errorf("capabilities after LOGIN = %v", res.Capabilities)
	}
	var before []interopMessage
	for _, m := range res.Before {
		before = append(before, interopMessage{UID: m.UID, Subject: m.Subject, Flags: sortedFlags(m.Flags), SHA256: m.SHA256})
	}
	if res.Exists != len(want) {
		t.Errorf("SELECT: %d EXISTS, want %d", res.Exists, len(want))
	}
	sameMessages(t, "imaplib", before, want)
	if !slices.Equal(res.Expunged, []int{2}) {
		t.Errorf("EXPUNGE reported %v, want [2]", res.Expunged)
	}
	var afterScript []interopMessage
	for _, m := range res.After {
		afterScript = append(afterScript, interopMessage{UID: m.UID, Flags: sortedFlags(m.Flags)})
	}
	after := e.directView(t, a)
	for i := range after {
		after[i].Subject, after[i].SHA256 = "", "" // the script's last FETCH has neither
	}
	sameMessages(t, "imaplib after STORE and EXPUNGE", afterScript, after)
	if len(after) != 2 || after[0].UID != want[0].UID || !slices.Equal(after[0].Flags, []string{`\Seen`}) ||
		after[1].UID != want[2].UID || len(after[1].Flags) != 0 {
		t.Errorf("dovecot after imaplib's changes:\n%s\nwant uid %d \\Seen and uid %d unflagged",
			listMessages(after), want[0].UID, want[2].UID)
	}
}

// testCurl: LIST, EXAMINE and UID fetches with curl's IMAP. curl logs in
// with AUTHENTICATE PLAIN where the server offers it, as the proxy does
// (curl 7.88 cannot be made to prefer LOGIN: "AUTH=+LOGIN" came later).
func (e *interopEnv) testCurl(t *testing.T) {
	curl := requireProgram(t, "curl", "curl")
	a := e.account(t, "curl")
	want := e.seed(t, a, interopMessages(a, 3)...)
	dir := t.TempDir()
	// The credentials go in a config file, never on the command line.
	cfg := filepath.Join(dir, "curlrc")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("user = \"%s:%s\"\n", a.Login, a.Password)), 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("imap://127.0.0.1:%d/", e.port)
	curlRun := func(args ...string) string {
		t.Helper()
		out, err := e.run(t, "", nil, curl, append([]string{"--silent", "--show-error", "--max-time", "20", "-K", cfg}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	if list := curlRun(base); !strings.Contains(list, "* LIST ") || !strings.Contains(list, "INBOX") {
		t.Errorf("curl LIST = %q, want INBOX listed", list)
	}
	examine := curlRun(base+"INBOX", "-X", "EXAMINE INBOX")
	if wantExists := fmt.Sprintf("* %d EXISTS", len(want)); !strings.Contains(examine, wantExists) {
		t.Errorf("curl EXAMINE INBOX = %q, want %q", examine, wantExists)
	}

	// One curl, one connection, every message by UID.
	var args, files []string
	for _, m := range want {
		f := filepath.Join(dir, fmt.Sprintf("%d.eml", m.UID))
		files = append(files, f)
		args = append(args, fmt.Sprintf("%sINBOX;UID=%d", base, m.UID), "-o", f)
	}
	curlRun(args...)
	var got []interopMessage
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, interopMessage{UID: want[i].UID, Subject: want[i].Subject, Flags: want[i].Flags, SHA256: sha256Hex(b)})
	}
	sameMessages(t, "curl", got, want)
	// curl fetched BODY[]: the messages are now seen, for everyone.
	for _, m := range e.directView(t, a) {
		if !slices.Contains(m.Flags, `\Seen`) {
			t.Errorf("after curl's fetches, direct view: %v, want \\Seen", m)
		}
	}
}

// phpResult is what testdata/interop/php_client.php prints.
type phpResult struct {
	NumMsg   int `json:"num_msg"`
	Messages []struct {
		UID     uint32 `json:"uid"`
		Subject string `json:"subject"`
		SHA256  string `json:"sha256"`
	} `json:"messages"`
	NumMsgAfter int      `json:"num_msg_after"`
	Errors      []string `json:"errors"`
}

// testPHP: imap_open with /imap/notls (c-client, as older GLPI versions),
// imap_num_msg, imap_headerinfo, imap_fetchheader and imap_body, then
// imap_delete and imap_expunge of the first message.
func (e *interopEnv) testPHP(t *testing.T) {
	php := requireProgram(t, "php", "php-cli php-imap")
	if out, err := exec.Command(php, "-r", "echo function_exists('imap_open') ? 'yes' : 'no';").Output(); err != nil || string(out) != "yes" {
		missingPackage(t, "PHP's imap extension not installed", "php-imap")
	}
	a := e.account(t, "php")
	want := e.seed(t, a, interopMessages(a, 3)...)
	out, err := e.run(t, a.Password+"\n", nil, php,
		filepath.Join(interopFixtures, "php_client.php"), "127.0.0.1", strconv.Itoa(e.port), a.Login)
	if err != nil {
		t.Fatal(err)
	}
	var res phpResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("php_client.php printed %q: %v", e.redact(string(out)), err)
	}
	if len(res.Errors) > 0 {
		t.Logf("c-client errors: %s", e.redact(strings.Join(res.Errors, "; ")))
	}
	if res.NumMsg != len(want) {
		t.Errorf("imap_num_msg = %d, want %d", res.NumMsg, len(want))
	}
	var got []interopMessage
	for i, m := range res.Messages {
		msg := interopMessage{UID: m.UID, Subject: m.Subject, SHA256: m.SHA256}
		if i < len(want) {
			msg.Flags = want[i].Flags // c-client's view of flags is not compared
		}
		got = append(got, msg)
	}
	sameMessages(t, "PHP imap", got, want)
	after := e.directView(t, a)
	if res.NumMsgAfter != len(want)-1 || len(after) != len(want)-1 || (len(after) > 0 && after[0].UID != want[1].UID) {
		t.Errorf("after imap_delete(1) and imap_expunge: PHP counts %d, dovecot holds:\n%s\nwant uids %d and %d",
			res.NumMsgAfter, listMessages(after), want[1].UID, want[2].UID)
	}
}
