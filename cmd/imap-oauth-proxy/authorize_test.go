package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// A tenant for authorize and check: the operator who signs in, and a
// shared mailbox the operator has Full Access to.
const (
	tenantOperator = "operator@contoso.test"
	tenantShared   = "helpdesk@contoso.test"
	tenantSecret   = "tenant-client-secret-canary-61a2"
)

// cloud is a provider for authorize and check: a token endpoint serving
// every grant, and an XOAUTH2-only upstream that records the XOAUTH2 users
// it sees. Every access token the upstream sees is registered as a secret.
type cloud struct {
	dir      string
	tokens   *authtest.Server
	upstream *proxytest.Upstream

	mu    sync.Mutex
	users []string // XOAUTH2 user= of every AUTHENTICATE
	files int      // mapping files written
}

func newCloud(t *testing.T, c *cli, opts authtest.Options, gmailErrors bool) *cloud {
	t.Helper()
	return newCloudUpstream(t, c, opts, proxytest.UpstreamOptions{GmailErrors: gmailErrors})
}

// newCloudUpstream is newCloud with an upstream configured by upOpts
// (its Validate is the cloud's).
func newCloudUpstream(t *testing.T, c *cli, opts authtest.Options, upOpts proxytest.UpstreamOptions) *cloud {
	t.Helper()
	cl := &cloud{dir: t.TempDir()}
	if opts.ClientID == "" {
		opts.ClientID = testClientID
	}
	opts.Grants = []string{authtest.GrantAuthorizationCode, authtest.GrantDeviceCode,
		authtest.GrantClientCredentials, authtest.GrantJWTBearer}
	if opts.DeviceInterval == 0 {
		opts.DeviceInterval = 1
	}
	c.secret(tenantSecret)
	cl.tokens = authtest.NewServer(opts)
	t.Cleanup(cl.tokens.Close)
	upOpts.Validate = func(user, token string) error {
		ir := "user=" + user + "\x01auth=Bearer " + token + "\x01\x01"
		c.secret(token, base64.StdEncoding.EncodeToString([]byte(ir)))
		cl.mu.Lock()
		cl.users = append(cl.users, user)
		cl.mu.Unlock()
		return cl.tokens.Validate(user, token)
	}
	up, err := proxytest.NewUpstream(upOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	cl.upstream = up
	up.AddUser(tenantShared)
	if err := up.WriteCAFile(filepath.Join(cl.dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	return cl
}

// seenUsers returns the XOAUTH2 users the upstream saw.
func (cl *cloud) seenUsers() []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return slices.Clone(cl.users)
}

// config writes a mapping file with one provider "tenant" of type typ
// (microsoft or google) whose endpoints and upstream are the cloud's, with
// the extra provider lines, and one account "helpdesk" for the shared
// mailbox with grant. It returns the file's path; each call writes a new
// file in the same directory, so they share the state directory.
func (cl *cloud) config(t *testing.T, typ, grant, provider string) string {
	t.Helper()
	cl.files++
	name := fmt.Sprintf("config-%d.toml", cl.files)
	tenant := ""
	if typ == "microsoft" {
		tenant = "tenant = \"contoso.onmicrosoft.com\"\n"
	}
	text := fmt.Sprintf(`[server]
listen = "127.0.0.1:0"
state_dir = "state"
login_timeout = "10s"

[providers.tenant]
type = %q
%sauth_url = %q
token_url = %q
device_auth_url = %q
client_id = %q
imap_address = %q
ca_file = "ca.pem"
%s
[accounts.helpdesk]
provider = "tenant"
mailbox = %q
grant = %q
`, typ, tenant, cl.tokens.AuthorizeURL(), cl.tokens.TokenURL(), cl.tokens.DeviceAuthURL(), testClientID,
		cl.upstream.Addr, provider, tenantShared, grant)
	return writeFile(t, cl.dir, name, text)
}

func (cl *cloud) stateDir() string { return filepath.Join(cl.dir, "state") }

// authURLRE finds the authorization URL authorize prints on its own line.
var authURLRE = regexp.MustCompile(`(?m)^  (http://127\.0\.0\.1:\d+/authorize\?\S+)$`)

// follow GETs u like a browser, following redirects, and returns the
// final page.
func follow(t *testing.T, u string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: testDeadline}).Get(u)
	if err != nil {
		// Not the *url.Error itself: its URL carries the authorization code.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		t.Fatalf("browser: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("browser ended on %d: %s", resp.StatusCode, body)
	}
	return string(body)
}

// waitExit waits for b to end by itself and returns its exit status.
func (b *background) waitExit() int {
	b.t.Helper()
	select {
	case <-b.done:
		return b.code
	case <-time.After(testDeadline):
		b.t.Fatalf("%q did not end within %v\nstdout:\n%s\nstderr:\n%s", b.args, testDeadline, b.stdout.String(), b.stderr.String())
		return -1
	}
}

// feed writes text to a command's stdin without blocking the test: a
// command that ended without reading it fails the test elsewhere.
func feed(w io.Writer, text string) {
	go io.WriteString(w, text)
}

// startPiped runs a command line whose stdin the test writes as it goes.
func (c *cli) startPiped(args ...string) (*background, *io.PipeWriter) {
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := c.capture(args)
	pr, pw := io.Pipe()
	b := &background{t: c.t, args: args, cancel: cancel, stdout: stdout, stderr: stderr, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		b.code = run(ctx, args, pr, stdout, stderr)
	}()
	c.t.Cleanup(func() {
		cancel()
		pw.Close()
		select {
		case <-b.done:
		case <-time.After(testDeadline):
			c.t.Errorf("%q still running %v after cancel", args, testDeadline)
		}
	})
	return b, pw
}

// TestAuthorizeLoopbackSharedMailbox authorizes a Microsoft shared mailbox
// in a browser (followed by the test), signed in as an operator with Full
// Access to it, then serves a collector's LOGIN and checks the account:
// XOAUTH2's user is the mailbox, not the operator.
func TestAuthorizeLoopbackSharedMailbox(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: tenantSecret,
		RedirectURI: "http://127.0.0.1", Rotate: true}, false)
	cl.tokens.SignIn(tenantOperator)
	cl.tokens.Share(tenantShared, tenantOperator)
	path := cl.config(t, "microsoft", "refresh_token", fmt.Sprintf("client_secret = %q\n", tenantSecret))
	const password = "loopback-pw-canary-3e7d"
	c.secret(password)

	b := c.start(password+"\n", "authorize", "-config", path, "-no-browser", "helpdesk") // the browser is the test's
	authURL := b.wait(b.stdout, authURLRE)[1]
	if page := follow(t, authURL); !strings.Contains(page, "close this window") {
		t.Errorf("final page: %s", page)
	}
	if code := b.waitExit(); code != 0 {
		t.Fatalf("authorize: exit %d\nstdout:\n%s\nstderr:\n%s", code, b.stdout.String(), b.stderr.String())
	}
	rt := cl.tokens.CurrentRefreshToken(tenantOperator)
	c.secret(rt)
	out := b.stdout.String()
	for _, want := range []string{"sign in as " + tenantShared, "http://127.0.0.1:", "Stored the authorization", "imap-oauth-proxy check"} {
		if !strings.Contains(out, want) {
			t.Errorf("authorize output lacks %q:\n%s", want, out)
		}
	}
	// The record is written with the default KDF parameters, as the
	// daemon opens it.
	if got := openRecord(t, cl.stateDir(), "helpdesk", password).Secret.RefreshToken; got != rt {
		t.Errorf("record holds %q, want the operator's refresh token", got)
	}
	q := cl.tokens.AuthorizeRequests()[0]
	if q.Get("prompt") != "select_account" || q.Get("code_challenge_method") != "S256" ||
		q.Get("scope") != "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access" {
		t.Errorf("authorize request %v", q)
	}

	// The collector logs in through serve.
	s := c.start("", "serve", "-config", path)
	addr := s.wait(s.stderr, servingRE)[1]
	loginSelect(t, addr, "helpdesk", password)
	c.secret(cl.tokens.CurrentRefreshToken(tenantOperator))
	if code := s.stop(); code != 0 {
		t.Errorf("serve exit %d", code)
	}

	// And check passes, with the protocol trace.
	r := c.run(password+"\n", "check", "-config", path, "-v", "helpdesk")
	if r.code != 0 {
		t.Fatalf("check: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	c.secret(cl.tokens.CurrentRefreshToken(tenantOperator))
	users := cl.seenUsers()
	if len(users) != 2 {
		t.Fatalf("upstream saw %d logins, want 2 (serve, check)", len(users))
	}
	for _, u := range users {
		if u != tenantShared {
			t.Errorf("XOAUTH2 user=%q, want the shared mailbox %q", u, tenantShared)
		}
	}
}

// TestAuthorizeExternal authorizes a Google account with -external: the
// test plays the operator who opens the URL elsewhere and pastes the URL
// the browser was redirected to. -force replaces an existing record.
func TestAuthorizeExternal(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Google, ClientSecret: tenantSecret}, true)
	const user = "helpdesk@contoso.test"
	cl.tokens.SignIn(user)
	path := cl.config(t, "google", "refresh_token", fmt.Sprintf("client_secret = %q\n", tenantSecret))
	const old, password = "old-pw-canary-a11c", "external-pw-canary-5b0e"
	c.secret(old, password)
	store, err := tokenstore.New(cl.stateDir(), &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create("helpdesk", old, tokenstore.Secret{RefreshToken: "stale-refresh-canary-d4"}); err != nil {
		t.Fatal(err)
	}
	c.secret("stale-refresh-canary-d4")

	// Without -force nothing happens.
	r := c.run(password+"\n", "authorize", "-config", path, "-external", "helpdesk")
	if r.code != 1 || !strings.Contains(r.stderr, "-force") {
		t.Errorf("authorize over a record without -force: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if cl.tokens.Requests() != 0 || len(cl.tokens.AuthorizeRequests()) != 0 {
		t.Error("a refused authorize reached the provider")
	}

	// Flags after LOGIN work too.
	b, stdin := c.startPiped("authorize", "-config", path, "helpdesk", "-external", "-force")
	feed(stdin, password+"\n")
	authURL := b.wait(b.stdout, authURLRE)[1]
	client := &http.Client{Timeout: testDeadline,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	location := resp.Header.Get("Location")
	if !strings.HasPrefix(location, "http://127.0.0.1:") {
		t.Fatalf("provider redirected to %q", location)
	}
	feed(stdin, location+"\r\n")
	if code := b.waitExit(); code != 0 {
		t.Fatalf("authorize -external: exit %d\nstdout:\n%s\nstderr:\n%s", code, b.stdout.String(), b.stderr.String())
	}
	rt := cl.tokens.CurrentRefreshToken(user)
	c.secret(rt)
	if got := openRecord(t, cl.stateDir(), "helpdesk", password).Secret.RefreshToken; got != rt {
		t.Errorf("record holds %q, want the new refresh token", got)
	}
	q := cl.tokens.AuthorizeRequests()[0]
	if q.Get("access_type") != "offline" || q.Get("prompt") != "consent" || q.Get("scope") != "https://mail.google.com/" {
		t.Errorf("Google authorize request %v", q)
	}
	if r := c.run(password+"\n", "check", "-config", path, "helpdesk"); r.code != 0 {
		t.Errorf("check after -external: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestAuthorizeExternalWrongState pastes a URL from another authorization.
func TestAuthorizeExternalWrongState(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true}, false)
	path := cl.config(t, "microsoft", "refresh_token", "")
	b, stdin := c.startPiped("authorize", "-config", path, "-external", "helpdesk")
	feed(stdin, "pw\n")
	b.wait(b.stdout, authURLRE)
	feed(stdin, "http://localhost:1234/?code=forged&state=forged\n")
	if code := b.waitExit(); code != 1 || !strings.Contains(b.stderr.String(), "state") {
		t.Errorf("exit %d, stderr:\n%s", code, b.stderr.String())
	}
	if _, err := os.Stat(filepath.Join(cl.stateDir(), "helpdesk.token")); err == nil {
		t.Error("a forged redirect stored a record")
	}
	if len(cl.tokens.TokenRequests(authtest.GrantAuthorizationCode)) != 0 {
		t.Error("a forged code reached the token endpoint")
	}
}

var userCodeRE = regexp.MustCompile(`enter the code (\S+) `)

func TestAuthorizeDevice(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true}, false)
	path := cl.config(t, "microsoft", "refresh_token", "")
	const password = "device-pw-canary-0f3b"
	c.secret(password)
	b := c.start(password+"\n", "authorize", "-config", path, "--device", "helpdesk")
	code := b.wait(b.stdout, userCodeRE)[1]
	if err := cl.tokens.ApproveDevice(code, tenantShared); err != nil {
		t.Fatal(err)
	}
	if exit := b.waitExit(); exit != 0 {
		t.Fatalf("authorize -device: exit %d\nstdout:\n%s\nstderr:\n%s", exit, b.stdout.String(), b.stderr.String())
	}
	rt := cl.tokens.CurrentRefreshToken(tenantShared)
	c.secret(rt)
	if got := openRecord(t, cl.stateDir(), "helpdesk", password).Secret.RefreshToken; got != rt {
		t.Errorf("record holds %q", got)
	}
	if !strings.Contains(b.stdout.String(), cl.tokens.URL+"/device") {
		t.Errorf("output does not name the verification URI:\n%s", b.stdout.String())
	}
}

// authorizeClientCredentials runs `authorize helpdesk` for a
// client_credentials provider twice: with badLines, which must fail with
// each of wantErr in stderr and store nothing, then with goodLines and
// password, which must store an app-only record (no refresh token). It
// returns the good mapping file.
func authorizeClientCredentials(t *testing.T, c *cli, cl *cloud, badLines string, wantErr []string, goodLines, password string) string {
	t.Helper()
	bad := cl.config(t, "microsoft", "client_credentials", badLines)
	r := c.run("pw\n", "authorize", "-config", bad, "helpdesk")
	if r.code != 1 || !containsAll(r.stderr, wantErr) {
		t.Errorf("bad credential: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(cl.stateDir(), "helpdesk.token")); err == nil {
		t.Error("a failed authorize stored a record")
	}

	path := cl.config(t, "microsoft", "client_credentials", goodLines)
	c.secret(password)
	r = c.run(password+"\n", "authorize", "-config", path, "helpdesk")
	if r.code != 0 || !strings.Contains(r.stdout, "Stored the local password") {
		t.Fatalf("authorize: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if rec := openRecord(t, cl.stateDir(), "helpdesk", password); rec.Secret.RefreshToken != "" {
		t.Error("an app-only record holds a refresh token")
	}
	return path
}

// checkAppMailboxPermission runs `check helpdesk` with the mapping file
// at path before the app may open the shared mailbox, which must fail with
// each of wantAdvice in its report, and after, which must pass and reach
// the mailbox upstream.
func checkAppMailboxPermission(t *testing.T, c *cli, cl *cloud, path, password string, wantAdvice ...string) {
	t.Helper()
	r := c.run(password+"\n", "check", "-config", path, "helpdesk")
	if r.code != 1 || !containsAll(r.stdout, wantAdvice) {
		t.Errorf("check without mailbox permission: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	cl.tokens.AllowApp(tenantShared)
	if r := c.run(password+"\n", "check", "-config", path, "-v", "helpdesk"); r.code != 0 {
		t.Errorf("check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if users := cl.seenUsers(); len(users) != 2 || users[1] != tenantShared {
		t.Errorf("upstream users %v", users)
	}
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

// TestAuthorizeAppOnly sets the local password of app-only accounts after
// proving a token can be had, then checks them end to end.
func TestAuthorizeAppOnly(t *testing.T) {
	t.Run("client_credentials", func(t *testing.T) {
		c := newCLI(t)
		cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: tenantSecret}, false)
		secretLine := fmt.Sprintf("client_secret = %q\n", tenantSecret)

		// A wrong secret stores nothing and says what to fix.
		c.secret("wrong-secret-canary-77")
		const password = "app-pw-canary-2d90"
		path := authorizeClientCredentials(t, c, cl, "client_secret = \"wrong-secret-canary-77\"\n",
			[]string{"client secret is wrong", "AADSTS7000215"}, secretLine, password)
		form := cl.tokens.TokenRequests(authtest.GrantClientCredentials)
		if len(form) == 0 || form[len(form)-1].Get("scope") != "https://outlook.office365.com/.default" {
			t.Errorf("client_credentials requests %v", form)
		}

		// Until Exchange gives the app's service principal access, the
		// upstream refuses, and check names the PowerShell commands.
		checkAppMailboxPermission(t, c, cl, path, password, "Add-MailboxPermission", "New-ServicePrincipal")
	})

	t.Run("service_account", func(t *testing.T) {
		c := newCLI(t)
		cl := newCloud(t, c, authtest.Options{Flavor: authtest.Google}, true)
		key, clientID, err := cl.tokens.NewServiceAccount("collector@proj.iam.gserviceaccount.test")
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, cl.dir, "sa.json", string(key))
		path := cl.config(t, "google", "service_account", "service_account_file = \"sa.json\"\n")
		const password = "sa-pw-canary-6c11"
		c.secret(password)

		r := c.run(password+"\n", "authorize", "-config", path, "helpdesk")
		if r.code != 1 || !strings.Contains(r.stderr, "Domain Wide Delegation") {
			t.Errorf("without delegation: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		cl.tokens.DelegateDomainWide(clientID, "https://mail.google.com/")
		r = c.run(password+"\n", "authorize", "-config", path, "helpdesk")
		if r.code != 0 {
			t.Fatalf("authorize: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r = c.run(password+"\n", "check", "-config", path, "-v", "helpdesk")
		if r.code != 0 {
			t.Errorf("check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if users := cl.seenUsers(); len(users) != 1 || users[0] != tenantShared {
			t.Errorf("upstream users %v", users)
		}
	})
}

func TestAuthorizeUsage(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: tenantSecret}, false)
	refresh := cl.config(t, "microsoft", "refresh_token", "")
	app := cl.config(t, "microsoft", "client_credentials", fmt.Sprintf("client_secret = %q\n", tenantSecret))
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no login", []string{"authorize", "-config", refresh}, 2, "exactly one LOGIN"},
		{"two logins", []string{"authorize", "-config", refresh, "a", "b"}, 2, "exactly one LOGIN"},
		{"external and device", []string{"authorize", "-config", refresh, "-external", "-device", "helpdesk"}, 2, "not both"},
		{"app-only with -device", []string{"authorize", "-config", app, "-device", "helpdesk"}, 2, "needs no browser"},
		{"unknown login", []string{"authorize", "-config", refresh, "nobody"}, 1, "no [accounts.nobody]"},
		{"empty password", []string{"authorize", "-config", refresh, "-external", "helpdesk"}, 1, "empty"},
		{"unknown flag", []string{"authorize", "-bogus", "helpdesk"}, 2, "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.run("\n", tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, want %d; stderr does not contain %q?\n%s", r.code, tc.code, tc.want, r.stderr)
			}
		})
	}
	if cl.tokens.Requests() != 0 {
		t.Error("a usage error reached the token endpoint")
	}
}
