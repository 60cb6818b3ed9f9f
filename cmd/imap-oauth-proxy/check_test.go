package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// checkSteps are check's steps for an implicit-TLS XOAUTH2 upstream, in
// order.
var checkSteps = []string{"record", "token", "connect", "tls", "greeting", "xoauth2", "list"}

// stepLineRE matches one step line: name, outcome, duration, detail.
var stepLineRE = regexp.MustCompile(`(?m)^(\S+) +(ok|FAIL|skip) +(\S+)  (.*)$`)

// steps returns check's step lines by name: outcome and detail.
func steps(t *testing.T, stdout string) map[string][2]string {
	t.Helper()
	got := make(map[string][2]string)
	var order []string
	for _, m := range stepLineRE.FindAllStringSubmatch(stdout, -1) {
		got[m[1]] = [2]string{m[2], m[4]}
		order = append(order, m[1])
	}
	if strings.Join(order, " ") != strings.Join(checkSteps, " ") {
		t.Errorf("steps %v, want %v:\n%s", order, checkSteps, stdout)
	}
	return got
}

// checkLab stores a refresh-token authorization for the shared mailbox,
// signed in as the operator, and returns the cloud.
func checkLab(t *testing.T, c *cli, flavor authtest.Flavor, password string) *cloud {
	t.Helper()
	cl := newCloud(t, c, authtest.Options{Flavor: flavor, ClientSecret: tenantSecret}, flavor == authtest.Google)
	store, err := tokenstore.New(cl.stateDir(), &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	rt := cl.tokens.Grant(tenantOperator)
	cl.tokens.Share(tenantShared, tenantOperator)
	c.secret(password, rt)
	if _, err := store.Create("helpdesk", password, tokenstore.Secret{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestCheck(t *testing.T) {
	c := newCLI(t)
	const password = "check-pw-canary-8d2a"
	cl := checkLab(t, c, authtest.Microsoft, password)
	path := cl.config(t, "microsoft", "refresh_token", fmt.Sprintf("client_secret = %q\n", tenantSecret))

	r := c.run(password+"\n", "check", "-config", path, "-v", "helpdesk")
	c.secret(cl.tokens.CurrentRefreshToken(tenantOperator))
	if r.code != 0 {
		t.Fatalf("check: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	t.Logf("check -v output:\n%s", r.stdout)
	got := steps(t, r.stdout)
	for _, s := range checkSteps {
		if got[s][0] != "ok" {
			t.Errorf("step %s: %v", s, got[s])
		}
	}
	for step, want := range map[string]string{
		"token":    "valid for",
		"tls":      "certificate for 127.0.0.1 verified",
		"greeting": "* OK",
		"xoauth2":  "logged in as " + tenantShared,
		"list":     "INBOX",
	} {
		if !strings.Contains(got[step][1], want) {
			t.Errorf("step %s detail %q lacks %q", step, got[step][1], want)
		}
	}
	// The trace shows both sides, with the AUTHENTICATE payload redacted
	// (the cli checks every captured output for the tokens themselves).
	for _, want := range []string{"HTTP POST " + cl.tokens.TokenURL() + " -> 200 OK", "S: * OK", "AUTHENTICATE XOAUTH2 [redacted]", "C: T", "S: T"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("trace lacks %q", want)
		}
	}
	if !strings.Contains(r.stdout, "check passed") {
		t.Errorf("no closing line:\n%s", r.stdout)
	}
}

// TestCheckFailingSteps breaks one thing at a time and checks that check
// fails at the step that owns it, with a detail that says what to do.
func TestCheckFailingSteps(t *testing.T) {
	const password = "steps-pw-canary-19fe"
	for _, tc := range []struct {
		name     string
		flavor   authtest.Flavor
		typ      string
		provider func(cl *cloud) string // extra provider lines
		break_   func(t *testing.T, cl *cloud)
		password string
		step     string
		want     []string
	}{
		{
			name: "wrong local password", flavor: authtest.Microsoft, typ: "microsoft",
			password: "not-the-" + password, step: "record",
			want: []string{"local password does not open"},
		},
		{
			name: "wrong client secret", flavor: authtest.Microsoft, typ: "microsoft",
			provider: func(*cloud) string { return "client_secret = \"wrong-secret-canary-d3\"\n" },
			step:     "token", want: []string{"[AUTHORIZATIONFAILED]", "client secret is wrong", "AADSTS7000215", "providers.tenant.client_secret"},
		},
		{
			name: "revoked token", flavor: authtest.Microsoft, typ: "microsoft",
			break_: func(t *testing.T, cl *cloud) { cl.tokens.Revoke(tenantOperator) },
			step:   "token", want: []string{"AADSTS50173", "run: imap-oauth-proxy authorize helpdesk"},
		},
		{
			name: "google revoked token", flavor: authtest.Google, typ: "google",
			break_: func(t *testing.T, cl *cloud) { cl.tokens.Revoke(tenantOperator) },
			step:   "token", want: []string{"invalid_grant", "Testing", "run: imap-oauth-proxy authorize helpdesk"},
		},
		{
			name: "token endpoint down", flavor: authtest.Microsoft, typ: "microsoft",
			break_: func(t *testing.T, cl *cloud) { cl.tokens.FailNext(10, 503) },
			step:   "token", want: []string{"[UNAVAILABLE]", "retry later"},
		},
		{
			name: "upstream down", flavor: authtest.Microsoft, typ: "microsoft",
			break_: func(t *testing.T, cl *cloud) { cl.upstream.Close() },
			step:   "connect", want: []string{"cannot connect to", "connection refused", "imap_address"},
		},
		{
			name: "certificate not trusted", flavor: authtest.Microsoft, typ: "microsoft",
			break_: func(t *testing.T, cl *cloud) {
				// ca_file names another CA than the upstream's.
				_, other, err := proxytest.NewCertificate("localhost", "127.0.0.1")
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, cl.dir, "ca.pem", string(other))
			},
			step: "tls", want: []string{"not trusted", "providers.tenant.ca_file"},
		},
		{
			name: "XOAUTH2 refused (Microsoft)", flavor: authtest.Microsoft, typ: "microsoft",
			break_: func(t *testing.T, cl *cloud) { cl.tokens.Share(tenantShared, "nobody@contoso.test") },
			step:   "xoauth2", want: []string{"AUTHENTICATE failed.", "Set-CASMailbox -Identity " + tenantShared, "Add-MailboxPermission"},
		},
		{
			name: "XOAUTH2 refused (Gmail)", flavor: authtest.Google, typ: "google",
			step: "xoauth2", want: []string{"XOAUTH2 status 400", "End User Access"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			cl := checkLab(t, c, tc.flavor, password)
			if tc.name == "XOAUTH2 refused (Microsoft)" || tc.name == "XOAUTH2 refused (Gmail)" {
				// The operator never got access to the shared mailbox.
				cl = newCloud(t, c, authtest.Options{Flavor: tc.flavor, ClientSecret: tenantSecret}, tc.flavor == authtest.Google)
				store, err := tokenstore.New(cl.stateDir(), &tokenstore.Options{KDF: testKDF})
				if err != nil {
					t.Fatal(err)
				}
				rt := cl.tokens.Grant(tenantOperator)
				c.secret(rt)
				if _, err := store.Create("helpdesk", password, tokenstore.Secret{RefreshToken: rt}); err != nil {
					t.Fatal(err)
				}
			}
			extra := fmt.Sprintf("client_secret = %q\n", tenantSecret)
			if tc.provider != nil {
				if e := tc.provider(cl); e != "" {
					extra = e
					c.secret(strings.TrimSuffix(strings.TrimPrefix(e, "client_secret = \""), "\"\n"))
				}
			}
			path := cl.config(t, tc.typ, "refresh_token", extra)
			if tc.break_ != nil {
				tc.break_(t, cl)
			}
			pw := password
			if tc.password != "" {
				pw = tc.password
			}
			r := c.run(pw+"\n", "check", "-config", path, "-v", "helpdesk")
			if rt := cl.tokens.CurrentRefreshToken(tenantOperator); rt != "" {
				c.secret(rt)
			}
			t.Logf("check output:\n%s%s", r.stdout, r.stderr)
			if r.code != 1 {
				t.Errorf("exit %d, want 1", r.code)
			}
			if !strings.Contains(r.stderr, "failed at step "+tc.step) {
				t.Errorf("stderr does not name step %s:\n%s", tc.step, r.stderr)
			}
			got := steps(t, r.stdout)
			passed := true
			for _, s := range checkSteps {
				want := "ok"
				switch {
				case s == tc.step:
					want, passed = "FAIL", false
				case !passed:
					want = "skip"
				}
				if got[s][0] != want {
					t.Errorf("step %s: %s, want %s", s, got[s][0], want)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(got[tc.step][1], w) {
					t.Errorf("step %s detail lacks %q:\n%s", tc.step, w, r.stdout)
				}
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	c := newCLI(t)
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft}, false)
	path := cl.config(t, "microsoft", "refresh_token", "")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"no login", "pw\n", []string{"check", "-config", path}, 2, "exactly one LOGIN"},
		{"unknown login", "pw\n", []string{"check", "-config", path, "nobody"}, 1, "no [accounts.nobody]"},
		{"no password", "", []string{"check", "-config", path, "helpdesk"}, 1, "local password"},
		{"no record", "pw\n", []string{"check", "-config", path, "helpdesk"}, 1, "failed at step record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := c.run(tc.stdin, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d (want %d), stderr:\n%s", r.code, tc.code, r.stderr)
			}
		})
	}
}

func TestCheckStartTLS(t *testing.T) {
	c := newCLI(t)
	const password = "starttls-pw-canary-71b3"
	cl := checkLab(t, c, authtest.Microsoft, password)
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{StartTLS: true, Validate: cl.tokens.Validate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	up.AddUser(tenantShared)
	addr := up.Addr
	writeFile(t, cl.dir, "starttls-ca.pem", string(up.CAPEM))
	path := cl.config(t, "generic", "refresh_token", fmt.Sprintf("client_secret = %q\nscopes = [\"imap\", \"offline_access\"]\n", tenantSecret))
	text := strings.Replace(mustRead(t, path), cl.upstream.Addr, addr, 1)
	text = strings.Replace(text, `ca_file = "ca.pem"`, "ca_file = \"starttls-ca.pem\"\nimap_tls = \"starttls\"", 1)
	writeFile(t, cl.dir, "starttls.toml", text)

	r := c.run(password+"\n", "check", "-config", cl.dir+"/starttls.toml", "-v", "helpdesk")
	if rt := cl.tokens.CurrentRefreshToken(tenantOperator); rt != "" {
		c.secret(rt)
	}
	t.Logf("check output:\n%s%s", r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("check over STARTTLS: exit %d", r.code)
	}
	var order []string
	for _, m := range stepLineRE.FindAllStringSubmatch(r.stdout, -1) {
		if m[2] != "ok" {
			t.Errorf("step %s: %s", m[1], m[2])
		}
		order = append(order, m[1])
	}
	if got := strings.Join(order, " "); got != "record token connect greeting tls capability xoauth2 list" {
		t.Errorf("steps %s", got)
	}
	if !strings.Contains(r.stdout, "STARTTLS") || !strings.Contains(r.stdout, "AUTHENTICATE XOAUTH2 [redacted]") {
		t.Errorf("trace lacks STARTTLS or the redacted AUTHENTICATE")
	}
}

// TestRedactor feeds the trace what a server without SASL-IR would see:
// the initial response on a line of its own, and the token elsewhere.
func TestRedactor(t *testing.T) {
	var out strings.Builder
	r := &redactor{w: &out, prefix: "> "}
	const token = "access-token-canary-5e5e"
	ir := base64.StdEncoding.EncodeToString([]byte("user=a@b\x01auth=Bearer " + token + "\x01\x01"))
	r.addSecret(token)
	r.addSecret(ir)
	cw, sw := r.stream("C"), r.stream("S")
	io.WriteString(cw, "T1 AUTHENTICATE XOAUTH2\r\n")
	io.WriteString(sw, "+ \r\n")
	io.WriteString(cw, ir[:10]) // split writes
	io.WriteString(cw, ir[10:]+"\r\n")
	io.WriteString(sw, "T1 OK done\r\n")
	io.WriteString(r, "T2 AUTHENTICATE XOAUTH2 "+ir+"\r\n")
	io.WriteString(r, "* OK echo "+token+" and "+base64.StdEncoding.EncodeToString([]byte("x"))+"\r\n")
	io.WriteString(cw, "unterminated "+token)
	r.stop()
	io.WriteString(cw, "after stop\r\n")
	got := out.String()
	for _, secret := range []string{token, ir, "after stop"} {
		if strings.Contains(got, secret) {
			t.Errorf("trace contains %q:\n%s", secret, got)
		}
	}
	for _, want := range []string{
		"> C: T1 AUTHENTICATE XOAUTH2\n", "> S: + \n", "> C: [redacted]\n", "> S: T1 OK done\n",
		"> C: T2 AUTHENTICATE XOAUTH2 [redacted]\n", "> S: * OK echo [redacted] and", "> C: unterminated [redacted]\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("trace lacks %q:\n%s", want, got)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCheckProviderAnswers runs check against the Microsoft personality:
// the login step names the upstream's answer, its causes and fixes.
func TestCheckProviderAnswers(t *testing.T) {
	const password = "answers-pw-canary-4c1d"
	for _, tc := range []struct {
		name   string
		break_ func(up *proxytest.Upstream)
		want   []string
	}{
		{
			name:   "authenticated but not connected",
			break_: func(up *proxytest.Upstream) { up.SetNotConnected(tenantShared, true) },
			want: []string{"OK to AUTHENTICATE, then BAD User is authenticated but not connected. to NAMESPACE",
				"Add-MailboxPermission -Identity " + tenantShared, "providers.tenant.tenant", "max_sessions"},
		},
		{
			name:   "throttled",
			break_: func(up *proxytest.Upstream) { up.Throttle(1, 89117*time.Millisecond) },
			want: []string{"BAD Request is throttled. Suggested Backoff Time: 89117 milliseconds",
				"whatever the token", "max_sessions"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			cl := newCloudUpstream(t, c, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: tenantSecret},
				proxytest.UpstreamOptions{Personality: proxytest.Microsoft})
			store, err := tokenstore.New(cl.stateDir(), &tokenstore.Options{KDF: testKDF})
			if err != nil {
				t.Fatal(err)
			}
			rt := cl.tokens.Grant(tenantShared)
			c.secret(password, rt)
			if _, err := store.Create("helpdesk", password, tokenstore.Secret{RefreshToken: rt}); err != nil {
				t.Fatal(err)
			}
			path := cl.config(t, "microsoft", "refresh_token", fmt.Sprintf("client_secret = %q\n", tenantSecret))
			tc.break_(cl.upstream)
			r := c.run(password+"\n", "check", "-config", path, "helpdesk")
			t.Logf("check output:\n%s%s", r.stdout, r.stderr)
			if r.code != 1 || !strings.Contains(r.stderr, "failed at step xoauth2") {
				t.Errorf("exit %d, want 1 at step xoauth2", r.code)
			}
			var detail string
			for _, m := range stepLineRE.FindAllStringSubmatch(r.stdout, -1) {
				if m[1] == "xoauth2" {
					detail = m[4]
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(detail, w) {
					t.Errorf("xoauth2 detail lacks %q:\n%s", w, detail)
				}
			}
			if cl.tokens.RefreshCount(tenantShared) != 1 {
				t.Errorf("%d refreshes, want 1 (check's token step)", cl.tokens.RefreshCount(tenantShared))
			}
		})
	}
}

// TestCheckOtherProtocols: an account that lists pop3 gets a pop3 step
// after the IMAP ones, which logs in with the daemon's POP3 login; a
// refused token fails that step and check.
func TestCheckOtherProtocols(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refuse  bool
		code    int
		outcome string
	}{
		{"pop3 logs in", false, 0, "ok"},
		{"pop3 refuses the token", true, 1, "FAIL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			const password = "check-pop3-pw-canary-5e1c"
			cl := checkLab(t, c, authtest.Microsoft, password)
			validate := cl.tokens.Validate
			if tc.refuse {
				validate = func(string, string) error { return errors.New("refused") }
			}
			pop3, err := proxytest.NewPOP3Upstream(proxytest.POP3UpstreamOptions{Validate: validate})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pop3.Close() })
			pop3.AddUser(tenantShared)
			// One ca_file for the provider: the IMAP and POP3 servers' CAs.
			ca := mustRead(t, cl.dir+"/ca.pem") + string(pop3.CAPEM)
			writeFile(t, cl.dir, "ca.pem", ca)
			path := cl.config(t, "microsoft", "refresh_token",
				fmt.Sprintf("client_secret = %q\npop3_address = %q\n", tenantSecret, pop3.Addr))
			writeFile(t, cl.dir, "pop3.toml", mustRead(t, path)+"protocols = [\"imap\", \"pop3\"]\n")

			r := c.run(password+"\n", "check", "-config", cl.dir+"/pop3.toml", "helpdesk")
			c.secret(cl.tokens.CurrentRefreshToken(tenantOperator))
			if r.code != tc.code {
				t.Errorf("check: exit %d, want %d\n%s%s", r.code, tc.code, r.stdout, r.stderr)
			}
			m := regexp.MustCompile(`(?m)^pop3 +(ok|FAIL|skip) .*$`).FindStringSubmatch(r.stdout)
			if m == nil || m[1] != tc.outcome {
				t.Errorf("pop3 step %q, want %s:\n%s", m, tc.outcome, r.stdout)
			}
			if !tc.refuse && !strings.Contains(r.stdout, "logged in to "+pop3.Addr) {
				t.Errorf("pop3 step does not name the server:\n%s", r.stdout)
			}
		})
	}
}

// TestCheckNamesMissingScope: an authorization granted before pop3 was
// added lacks POP.AccessAsUser.All; when the token endpoint says what it
// granted, check's failed pop3 step names the scope and the fix.
func TestCheckNamesMissingScope(t *testing.T) {
	c := newCLI(t)
	const password = "check-scope-pw-canary-2a7d"
	cl := newCloud(t, c, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: tenantSecret,
		Scope: "https://outlook.office365.com/IMAP.AccessAsUser.All"}, false)
	store, err := tokenstore.New(cl.stateDir(), &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	rt := cl.tokens.Grant(tenantOperator)
	cl.tokens.Share(tenantShared, tenantOperator)
	c.secret(password, rt)
	if _, err := store.Create("helpdesk", password, tokenstore.Secret{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
	pop3, err := proxytest.NewPOP3Upstream(proxytest.POP3UpstreamOptions{
		Validate: func(string, string) error { return errors.New("no POP permission") }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pop3.Close() })
	pop3.AddUser(tenantShared)
	writeFile(t, cl.dir, "ca.pem", mustRead(t, cl.dir+"/ca.pem")+string(pop3.CAPEM))
	path := cl.config(t, "microsoft", "refresh_token",
		fmt.Sprintf("client_secret = %q\npop3_address = %q\n", tenantSecret, pop3.Addr))
	writeFile(t, cl.dir, "pop3.toml", mustRead(t, path)+"protocols = [\"imap\", \"pop3\"]\n")

	r := c.run(password+"\n", "check", "-config", cl.dir+"/pop3.toml", "helpdesk")
	c.secret(cl.tokens.CurrentRefreshToken(tenantOperator))
	if r.code != 1 || !strings.Contains(r.stdout, "lacks https://outlook.office365.com/POP.AccessAsUser.All") ||
		!strings.Contains(r.stdout, "authorize -force helpdesk") {
		t.Errorf("check: exit %d, want 1 naming the missing scope and the fix:\n%s%s", r.code, r.stdout, r.stderr)
	}
}
