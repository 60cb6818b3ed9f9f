package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// testDeadline bounds every wait of a test: a command's output, its exit,
// a network step.
const testDeadline = 30 * time.Second

// testKDF keeps argon2id cheap for records the tests create themselves;
// records carry their own parameters, so serve opens them as written.
var testKDF = tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// The upstream OAuth client every lab configures.
const (
	testClientID     = "proxy-client"
	testClientSecret = "client-secret-canary-5d1f07"
)

// output is one captured stream, named for failure messages.
type output struct {
	name string
	buf  *syncbuf.Buffer
}

// cli runs command lines in process for one test. When the test ends it
// checks that none of the output it captured contains a registered secret.
type cli struct {
	t       *testing.T
	mu      sync.Mutex
	secrets []string
	outputs []output
}

func newCLI(t *testing.T) *cli {
	c := &cli{t: t}
	// Registered first, so it runs last: after every command has stopped.
	t.Cleanup(c.checkLeaks)
	return c
}

// secret registers values that must never appear in any captured output.
func (c *cli) secret(values ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range values {
		if v == "" {
			c.t.Errorf("registering an empty secret")
			continue
		}
		c.secrets = append(c.secrets, v)
	}
}

// capture returns new stdout and stderr buffers for the command line args.
func (c *cli) capture(args []string) (stdout, stderr *syncbuf.Buffer) {
	stdout, stderr = new(syncbuf.Buffer), new(syncbuf.Buffer)
	line := strings.Join(args, " ")
	c.mu.Lock()
	c.outputs = append(c.outputs, output{line + " (stdout)", stdout}, output{line + " (stderr)", stderr})
	c.mu.Unlock()
	return stdout, stderr
}

func (c *cli) checkLeaks() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range c.outputs {
		text := o.buf.String()
		for _, s := range c.secrets {
			if strings.Contains(text, s) {
				c.t.Errorf("%s contains the secret %q:\n%s", o.name, s, text)
			}
		}
	}
}

// result is how a finished command ended.
type result struct {
	code           int
	stdout, stderr string
}

// run runs a command line that is expected to end by itself, with stdin,
// and fails the test if it does not end within testDeadline.
func (c *cli) run(stdin string, args ...string) result {
	c.t.Helper()
	b := c.start(stdin, args...)
	select {
	case <-b.done:
	case <-time.After(testDeadline):
		c.t.Fatalf("%q did not end within %v\nstdout:\n%s\nstderr:\n%s",
			args, testDeadline, b.stdout.String(), b.stderr.String())
	}
	return result{b.code, b.stdout.String(), b.stderr.String()}
}

// background is a command running in a goroutine until its ctx is
// cancelled.
type background struct {
	t              *testing.T
	args           []string
	cancel         context.CancelFunc
	stdout, stderr *syncbuf.Buffer
	done           chan struct{} // closed once code is set
	code           int
}

// start runs a command line in a goroutine. The test's cleanup cancels it
// and waits (boundedly) for it to end.
func (c *cli) start(stdin string, args ...string) *background {
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := c.capture(args)
	b := &background{t: c.t, args: args, cancel: cancel, stdout: stdout, stderr: stderr, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.code = run(ctx, args, strings.NewReader(stdin), stdout, stderr)
	}()
	c.t.Cleanup(func() {
		cancel()
		select {
		case <-b.done:
		case <-time.After(testDeadline):
			c.t.Errorf("%q still running %v after cancel", args, testDeadline)
		}
	})
	return b
}

// wait returns re's submatches once out matches it. It fails the test if
// the command ends first or nothing matches within testDeadline.
func (b *background) wait(out *syncbuf.Buffer, re *regexp.Regexp) []string {
	b.t.Helper()
	deadline := time.After(testDeadline)
	for {
		m, changed := out.Match(re)
		if m != nil {
			return m
		}
		select {
		case <-changed:
		case <-b.done:
			if m, _ := out.Match(re); m != nil {
				return m
			}
			b.t.Fatalf("%q exited with %d before its output matched %q\nstdout:\n%s\nstderr:\n%s",
				b.args, b.code, re, b.stdout.String(), b.stderr.String())
		case <-deadline:
			b.t.Fatalf("%q: no output matched %q within %v\nstdout:\n%s\nstderr:\n%s",
				b.args, re, testDeadline, b.stdout.String(), b.stderr.String())
		}
	}
}

// stop cancels the command's ctx and returns its exit status, failing the
// test if it does not end within testDeadline.
func (b *background) stop() int {
	b.t.Helper()
	b.cancel()
	select {
	case <-b.done:
		return b.code
	case <-time.After(testDeadline):
		b.t.Fatalf("%q did not stop within %v of cancel\nstderr:\n%s", b.args, testDeadline, b.stderr.String())
		return -1
	}
}

// servingRE finds the address in serve's "serving" log line, in the text
// or the JSON format.
var servingRE = regexp.MustCompile(`(?:msg=serving listen=|"msg":"serving","listen":")([0-9A-Za-z.:\[\]]+)`)

// writeFile writes text to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// labConfig is a mapping file with one generic provider "lab" and one
// refresh_token account per login, whose mailbox is mailboxOf(login).
// server holds extra [server] lines.
func labConfig(tokenURL, imapAddress, server string, logins ...string) string {
	accounts := make(map[string]string, len(logins))
	for _, login := range logins {
		accounts[login] = mailboxOf(login)
	}
	return proxytest.LabConfig(proxytest.LabConfigOptions{
		Server:   "login_timeout = \"10s\"\n" + server,
		TokenURL: tokenURL, ClientID: testClientID, ClientSecret: testClientSecret,
		IMAPAddress: imapAddress, CAFile: "ca.pem",
		Accounts: accounts,
	})
}

func mailboxOf(login string) string { return login + "@contoso.test" }

// dialIMAP connects an imapclient collector to addr.
func dialIMAP(t *testing.T, addr string) *imapclient.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := imapclient.New(conn, nil)
	t.Cleanup(func() { c.Close() })
	return c
}

// wantNO fails the test unless err is a tagged NO with code.
func wantNO(t *testing.T, what string, err error, code imap.ResponseCode) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Type != imap.StatusResponseTypeNo || ie.Code != code {
		t.Errorf("%s: got %v, want NO [%s]", what, err, code)
	}
}

// --- token import ---------------------------------------------------------

// importConfig writes a mapping file for token import into a new temporary
// directory and returns its path and the state directory.
func importConfig(t *testing.T) (path, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	text := labConfig("https://idp.example/token", "imap.example:993", "", "collector") + `
[accounts.app]
provider = "lab"
mailbox = "app@contoso.test"
grant = "client_credentials"
`
	return writeFile(t, dir, "config.toml", text), filepath.Join(dir, "state")
}

// openRecord opens login's record with a default store, as serve would.
func openRecord(t *testing.T, stateDir, login, password string) *tokenstore.Unlocked {
	t.Helper()
	store, err := tokenstore.New(stateDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := store.Open(login, password)
	if err != nil {
		t.Fatalf("opening the record of %s: %v", login, err)
	}
	return u
}

func TestTokenImport(t *testing.T) {
	c := newCLI(t)
	path, stateDir := importConfig(t)
	record := filepath.Join(stateDir, "collector.token")
	const (
		password    = "pw line"
		refresh     = "refresh-token-canary-1c9e"
		newPassword = "second pw line"
		newRefresh  = "refresh-token-canary-77b0"
	)
	c.secret(password, refresh, newPassword, newRefresh, testClientSecret)

	r := c.run(password+"\n"+refresh+"\n", "token", "import", "-config", path, "collector")
	if r.code != 0 {
		t.Fatalf("token import: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, record) {
		t.Errorf("stdout does not name the record %s:\n%s", record, r.stdout)
	}
	if got := openRecord(t, stateDir, "collector", password).Secret.RefreshToken; got != refresh {
		t.Errorf("record holds refresh token %q, want %q", got, refresh)
	}
	fi, err := os.Stat(record)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode = %v, want 0600", fi.Mode().Perm())
	}
	if di, err := os.Stat(stateDir); err != nil {
		t.Fatal(err)
	} else if di.Mode().Perm()&0o077 != 0 {
		t.Errorf("state directory mode = %v, want no group or other access", di.Mode().Perm())
	}
	before, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}

	// A second import without -force refuses and leaves the record alone.
	r = c.run(newPassword+"\n"+newRefresh+"\n", "token", "import", "-config", path, "collector")
	if r.code != 1 {
		t.Errorf("second import without -force: exit %d, want 1; stderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "-force") {
		t.Errorf("second import: stderr does not mention -force:\n%s", r.stderr)
	}
	if after, err := os.ReadFile(record); err != nil {
		t.Fatal(err)
	} else if !bytes.Equal(before, after) {
		t.Errorf("a refused import changed the record")
	}

	// With -force it replaces the record.
	r = c.run(newPassword+"\n"+newRefresh+"\n", "token", "import", "-config", path, "-force", "collector")
	if r.code != 0 {
		t.Fatalf("import -force: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stdout, record) {
		t.Errorf("import -force: stdout does not name the record %s:\n%s", record, r.stdout)
	}
	if got := openRecord(t, stateDir, "collector", newPassword).Secret.RefreshToken; got != newRefresh {
		t.Errorf("after -force the record holds %q, want %q", got, newRefresh)
	}
}

// TestTokenImportLineEndings checks the stdin forms that must be accepted:
// CRLF line ends (neither secret keeps the CR) and a last line without a
// newline.
func TestTokenImportLineEndings(t *testing.T) {
	for _, tc := range []struct {
		name, stdin, password, refresh string
	}{
		{"crlf", "crlf pw\r\ncrlf-refresh-canary-31d2\r\n", "crlf pw", "crlf-refresh-canary-31d2"},
		{"no final newline", "bare pw\nbare-refresh-canary-902a", "bare pw", "bare-refresh-canary-902a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.secret(tc.password, tc.refresh)
			path, stateDir := importConfig(t)
			r := c.run(tc.stdin, "token", "import", "-config", path, "collector")
			if r.code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
			}
			if got := openRecord(t, stateDir, "collector", tc.password).Secret.RefreshToken; got != tc.refresh {
				t.Errorf("record holds refresh token %q, want %q", got, tc.refresh)
			}
		})
	}
}

func TestTokenImportErrors(t *testing.T) {
	const (
		password = "errors-pw-canary-4be1"
		refresh  = "errors-refresh-canary-a0c3"
	)
	good := password + "\n" + refresh + "\n"
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string // after "token import -config PATH"
		code  int
		want  []string // in stderr
	}{
		{"empty stdin", "", []string{"collector"}, 1, []string{"local password"}},
		{"missing refresh token line", password + "\n", []string{"collector"}, 1, []string{"refresh token"}},
		{"empty password", "\n" + refresh + "\n", []string{"collector"}, 1, []string{"local password", "empty"}},
		{"blank password", "  \t\n" + refresh + "\n", []string{"collector"}, 1, []string{"local password", "empty"}},
		{"CR-only password", "\r\n" + refresh + "\r\n", []string{"collector"}, 1, []string{"local password", "empty"}},
		{"empty refresh token", password + "\n\n", []string{"collector"}, 1, []string{"refresh token", "empty"}},
		{"unknown login", good, []string{"nobody"}, 1, []string{"nobody"}},
		{"client_credentials account", good, []string{"app"}, 1, []string{"accounts.app", "client_credentials"}},
		{"no login", good, nil, 2, []string{"usage: imap-oauth-proxy"}},
		{"two logins", good, []string{"collector", "app"}, 2, []string{"usage: imap-oauth-proxy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.secret(password, refresh)
			path, stateDir := importConfig(t)
			args := append([]string{"token", "import", "-config", path}, tc.args...)
			r := c.run(tc.stdin, args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, tc.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			entries, err := os.ReadDir(stateDir)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				t.Fatal(err)
			}
			for _, e := range entries {
				t.Errorf("a failed import left %s in the state directory", e.Name())
			}
		})
	}
}

func TestTokenCommandErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.toml")
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"token without subcommand", []string{"token"}, 2, "usage: imap-oauth-proxy"},
		{"unknown token subcommand", []string{"token", "export", "collector"}, 2, "usage: imap-oauth-proxy"},
		{"missing config", []string{"token", "import", "-config", missing, "collector"}, 1, missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			r := c.run("pw\nrt\n", tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, tc.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr does not contain %q:\n%s", tc.want, r.stderr)
			}
		})
	}
}

// --- version, usage --------------------------------------------------------

func TestVersion(t *testing.T) {
	old := version
	version = "1.2.3-test"
	t.Cleanup(func() { version = old })
	r := newCLI(t).run("", "version")
	if r.code != 0 || r.stdout != "imap-oauth-proxy 1.2.3-test\n" || r.stderr != "" {
		t.Errorf("version: exit %d, stdout %q, stderr %q; want 0, %q, nothing",
			r.code, r.stdout, r.stderr, "imap-oauth-proxy 1.2.3-test\n")
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string   // exactly
		stderr []string // substrings
	}{
		{name: "no args", args: nil, code: 2, stderr: []string{usage}},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2,
			stderr: []string{`unknown command "frobnicate"`, usage}},
		{name: "help", args: []string{"help"}, code: 0, stdout: usage},
		{name: "-h", args: []string{"-h"}, code: 0, stdout: usage},
		{name: "serve with an argument", args: []string{"serve", "extra"}, code: 2, stderr: []string{usage}},
		{name: "serve -h", args: []string{"serve", "-h"}, code: 2, stderr: []string{"-config"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newCLI(t).run("", tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d", r.code, tc.code)
			}
			if r.stdout != tc.stdout {
				t.Errorf("stdout = %q, want %q", r.stdout, tc.stdout)
			}
			if len(tc.stderr) == 0 && r.stderr != "" {
				t.Errorf("stderr = %q, want nothing", r.stderr)
			}
			for _, w := range tc.stderr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, r.stderr)
				}
			}
		})
	}
}

// TestUnknownFlag checks that a flag no command knows exits 2, like every
// other command-line mistake, and names the flag.
func TestUnknownFlag(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "-no-such-flag"},
		{"token", "import", "-no-such-flag", "collector"},
	} {
		t.Run(args[0], func(t *testing.T) {
			r := newCLI(t).run("", args...)
			if r.code != 2 {
				t.Errorf("%q: exit %d, want 2", args, r.code)
			}
			if !strings.Contains(r.stderr, "no-such-flag") {
				t.Errorf("%q: stderr does not name the flag:\n%s", args, r.stderr)
			}
		})
	}
}

// --- serve ----------------------------------------------------------------

// lab is a token endpoint and an XOAUTH2-only upstream for serve, with a
// directory holding the upstream's CA file.
type lab struct {
	dir      string
	tokens   *authtest.Server
	upstream *proxytest.Upstream
}

// newLab starts a lab whose upstream has a mailbox for each login. Every
// access token the upstream sees, and the client secret, are registered
// as secrets with c.
func newLab(t *testing.T, c *cli, logins ...string) *lab {
	t.Helper()
	l := &lab{dir: t.TempDir()}
	c.secret(testClientSecret)
	l.tokens = authtest.NewServer(authtest.Options{
		Flavor: authtest.Microsoft, ClientID: testClientID, ClientSecret: testClientSecret, Rotate: true,
	})
	t.Cleanup(l.tokens.Close)
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: func(user, token string) error {
		ir := "user=" + user + "\x01auth=Bearer " + token + "\x01\x01"
		c.secret(token, base64.StdEncoding.EncodeToString([]byte(ir)))
		return l.tokens.Validate(user, token)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	l.upstream = up
	for _, login := range logins {
		up.AddUser(mailboxOf(login))
	}
	if err := up.WriteCAFile(filepath.Join(l.dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	return l
}

// config writes the lab's mapping file for logins and returns its path.
func (l *lab) config(t *testing.T, server string, logins ...string) string {
	t.Helper()
	return writeFile(t, l.dir, "config.toml", labConfig(l.tokens.TokenURL(), l.upstream.Addr, server, logins...))
}

func (l *lab) stateDir() string { return filepath.Join(l.dir, "state") }

// authorize creates login's record with cheap KDF parameters and a fresh
// grant, both registered as secrets with c.
func (l *lab) authorize(t *testing.T, c *cli, login, password string) {
	t.Helper()
	store, err := tokenstore.New(l.stateDir(), &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	rt := l.tokens.Grant(mailboxOf(login))
	c.secret(password, rt)
	if _, err := store.Create(login, password, tokenstore.Secret{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
}

// loginSelect logs in through addr as login and selects INBOX.
func loginSelect(t *testing.T, addr, login, password string) {
	t.Helper()
	cl := dialIMAP(t, addr)
	if err := cl.Login(login, password).Wait(); err != nil {
		t.Fatalf("LOGIN %s through the proxy: %v", login, err)
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX as %s: %v", login, err)
	}
	if err := cl.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT %s: %v", login, err)
	}
}

func TestServe(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c)
	const password = "serve-pw-canary-e5a4"
	l.authorize(t, c, "collector", password)
	user := l.upstream.AddUser(mailboxOf("collector"))
	msg := "From: a@contoso.test\r\nSubject: relayed through serve\r\n\r\nhello\r\n"
	if _, err := user.Append("INBOX", literal(msg), &imap.AppendOptions{}); err != nil {
		t.Fatal(err)
	}
	path := l.config(t, "", "collector")

	b := c.start("", "serve", "-config", path)
	addr := b.wait(b.stderr, servingRE)[1]
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		t.Fatalf("serving line address %q: want a bound port (err %v)", addr, err)
	}

	cl := dialIMAP(t, addr)
	wantNO(t, "LOGIN with a wrong password", cl.Login("collector", "wrong-"+password).Wait(),
		imap.ResponseCodeAuthenticationFailed)
	wantNO(t, "LOGIN with an unknown login", cl.Login("nobody", password).Wait(),
		imap.ResponseCodeAuthenticationFailed)
	if err := cl.Login("collector", password).Wait(); err != nil {
		t.Fatalf("LOGIN through serve: %v", err)
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	msgs, err := cl.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 1 || msgs[0].Envelope == nil || msgs[0].Envelope.Subject != "relayed through serve" {
		t.Errorf("FETCH through serve = %+v", msgs)
	}
	if err := cl.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}

	// The endpoint rotates refresh tokens: the record holds the new one.
	current := l.tokens.CurrentRefreshToken(mailboxOf("collector"))
	c.secret(current)
	if got := openRecord(t, l.stateDir(), "collector", password).Secret.RefreshToken; got != current {
		t.Errorf("record holds %q after a rotating refresh, want the current token %q", got, current)
	}

	if code := b.stop(); code != 0 {
		t.Errorf("serve exit %d after cancel, want 0; stderr:\n%s", code, b.stderr.String())
	}
	stderr := b.stderr.String()
	for _, want := range []string{"msg=stopping", "outcome=OK"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("serve log does not contain %q:\n%s", want, stderr)
		}
	}
	if conn, err := net.DialTimeout("tcp", addr, testDeadline); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after serve stopped", addr)
	}

	// Saved at exit for status: the login, its refresh and its outcome
	// (the wrong password came first, the OK last); nothing else.
	entries, err := health.ReadFile(filepath.Join(l.stateDir(), health.FileName))
	if err != nil {
		t.Fatal(err)
	}
	e := entries["collector"]
	if len(entries) != 1 || e.LastOutcome != "OK" || e.LastOK.IsZero() || e.LastRefresh.IsZero() ||
		e.AccessExpiry.IsZero() || e.RecordID == "" || e.NeedsAuthorization {
		t.Errorf("health saved at exit: %+v", entries)
	}
	r := c.run("", "status", "-config", path, "-json")
	if r.code != 0 || !strings.Contains(r.stdout, `"verdict": "ok"`) {
		t.Errorf("status after serve: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	c.checkLeaks()
}

// TestServeReload checks SIGHUP: a valid file is swapped in for new
// sessions, an invalid one is logged and the previous one kept. It also
// runs serve with log_format = "json".
func TestServeReload(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no SIGHUP on windows")
	}
	c := newCLI(t)
	l := newLab(t, c, "collector", "second")
	const pw1, pw2 = "reload-pw-canary-1", "reload-pw-canary-2"
	l.authorize(t, c, "collector", pw1)
	l.authorize(t, c, "second", pw2)
	const server = `log_format = "json"` + "\n"
	path := l.config(t, server, "collector")

	b := c.start("", "serve", "-config", path)
	addr := b.wait(b.stderr, servingRE)[1]
	loginSelect(t, addr, "collector", pw1)
	wantNO(t, "LOGIN second before reload", dialIMAP(t, addr).Login("second", pw2).Wait(),
		imap.ResponseCodeAuthenticationFailed)

	hup := func() {
		t.Helper()
		p, err := os.FindProcess(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	l.config(t, server, "collector", "second")
	hup()
	b.wait(b.stderr, regexp.MustCompile(`"msg":"reloaded"`))
	loginSelect(t, addr, "second", pw2)

	writeFile(t, l.dir, "config.toml", labConfig(l.tokens.TokenURL(), l.upstream.Addr, server+"no_such_key = 1\n", "collector"))
	hup()
	b.wait(b.stderr, regexp.MustCompile(`"msg":"reload failed; keeping the previous configuration".*server\.no_such_key`))
	// The previous configuration, with the second account, still serves.
	loginSelect(t, addr, "second", pw2)

	if code := b.stop(); code != 0 {
		t.Errorf("serve exit %d after cancel, want 0", code)
	}
	for _, line := range strings.Split(strings.TrimSpace(b.stderr.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("log line is not JSON: %s", line)
		}
	}
}

func TestServeConfigErrors(t *testing.T) {
	fixture := filepath.Join("..", "..", "testdata", "cmd", "invalid.toml")
	missing := filepath.Join(t.TempDir(), "missing.toml")

	tlsDir := t.TempDir()
	tlsConfig := writeFile(t, tlsDir, "config.toml",
		labConfig("https://idp.example/token", "imap.example:993", "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n", "collector"))

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyDir := t.TempDir()
	busyConfig := writeFile(t, busyDir, "config.toml",
		strings.Replace(labConfig("https://idp.example/token", "imap.example:993", "", "collector"),
			`listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", busy.Addr().String()), 1))

	for _, tc := range []struct {
		name string
		path string
		code int      // exit status: 78 (EX_CONFIG) stops systemd's restarts
		want []string // in stderr
	}{
		{"validation errors", fixture, exitConfig, []string{
			"invalid.toml", "server.listen:", "server.bogus_key: unknown key",
			"providers.lab.token_url: missing", `accounts.collector.provider: unknown provider "nosuch"`,
		}},
		{"missing file", missing, exitConfig, []string{missing}},
		{"local TLS certificate missing", tlsConfig, exitConfig, []string{"server.tls_cert", "cert.pem"}},
		// A busy port may free itself: systemd should retry.
		{"listen address in use", busyConfig, 1, []string{"listening on " + busy.Addr().String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.secret("fixture-client-secret-7f3a9c", testClientSecret)
			r := c.run("", "serve", "-config", tc.path)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, tc.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, r.stderr)
				}
			}
		})
	}
	// serve stops at the invalid file before creating anything.
	if _, err := os.Stat(filepath.Join("..", "..", "testdata", "cmd", "state")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("serve with an invalid config created testdata/cmd/state (stat: %v)", err)
	}
	for _, dir := range []string{tlsDir, busyDir} {
		if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("serve that failed to start created %s/state (stat: %v)", dir, err)
		}
	}
}

// --- secrets ----------------------------------------------------------------

// TestNoSecretsInOutput runs token import and serve (at debug level)
// through successes and failures and checks that no captured output, and
// no file in the state directory, holds a local password, a refresh token,
// an access token or the client secret. (Every other test in this file
// checks its own output the same way, through cli.)
func TestNoSecretsInOutput(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector", "stale")
	const password = "leak-pw-canary-0d6b"
	grant := l.tokens.Grant(mailboxOf("collector"))
	c.secret(password, grant)
	path := l.config(t, `log_level = "debug"`+"\n", "collector", "stale")

	// token import: success, refusal without -force, bad stdin.
	if r := c.run(password+"\n"+grant+"\n", "token", "import", "-config", path, "collector"); r.code != 0 {
		t.Fatalf("token import: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if r := c.run(password+"\n"+grant+"\n", "token", "import", "-config", path, "collector"); r.code != 1 {
		t.Errorf("second token import: exit %d, want 1", r.code)
	}
	if r := c.run(password+"\n", "token", "import", "-config", path, "stale"); r.code != 1 {
		t.Errorf("token import without a refresh token: exit %d, want 1", r.code)
	}

	// An account whose grant was revoked upstream.
	const stalePassword = "leak-stale-pw-canary-93ce"
	l.authorize(t, c, "stale", stalePassword)
	l.tokens.Revoke(mailboxOf("stale"))

	b := c.start("", "serve", "-config", path)
	addr := b.wait(b.stderr, servingRE)[1]
	cl := dialIMAP(t, addr)
	wantNO(t, "LOGIN with a wrong password", cl.Login("collector", stalePassword).Wait(),
		imap.ResponseCodeAuthenticationFailed)
	wantNO(t, "LOGIN with an unknown login", cl.Login("nobody", password).Wait(),
		imap.ResponseCodeAuthenticationFailed)
	wantNO(t, "LOGIN with a revoked grant", cl.Login("stale", stalePassword).Wait(),
		imap.ResponseCodeAuthorizationFailed)
	if err := cl.Login("collector", password).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if err := cl.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	c.secret(l.tokens.CurrentRefreshToken(mailboxOf("collector")))
	if code := b.stop(); code != 0 {
		t.Errorf("serve exit %d, want 0", code)
	}

	// Config errors around a client secret.
	syntax := filepath.Join("..", "..", "testdata", "cmd", "syntax-secret.toml")
	c.secret("fixture-client-secret-b81e2d")
	if r := c.run("", "serve", "-config", syntax); r.code != exitConfig || !strings.Contains(r.stderr, "line") {
		t.Errorf("serve with a TOML syntax error: exit %d, want 78 and a line number; stderr:\n%s", r.code, r.stderr)
	}
	conflict := writeFile(t, l.dir, "conflict.toml", labConfig(l.tokens.TokenURL(), l.upstream.Addr, "", "collector")+
		"\n[providers.other]\ntype = \"generic\"\ntoken_url = \"https://idp.example/token\"\nscopes = [\"imap\"]\n"+
		"client_id = \"x\"\nclient_secret = \""+testClientSecret+"\"\nclient_secret_file = \"nope\"\nimap_address = \"imap.example:993\"\n")
	if r := c.run("", "serve", "-config", conflict); r.code != exitConfig || !strings.Contains(r.stderr, "providers.other.client_secret_file") {
		t.Errorf("serve with a secret conflict: exit %d, want 78 naming the key; stderr:\n%s", r.code, r.stderr)
	}

	// The state directory holds the secrets only encrypted.
	c.mu.Lock()
	secrets := append([]string(nil), c.secrets...)
	c.mu.Unlock()
	err := filepath.WalkDir(l.stateDir(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s holds the secret %q in the clear", p, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// literalReader adapts a string to imap.LiteralReader.
type literalReader struct {
	*strings.Reader
}

func (l literalReader) Size() int64 { return int64(l.Reader.Len()) }

func literal(s string) imap.LiteralReader { return literalReader{strings.NewReader(s)} }
