package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
)

// statusConfig has one account per verdict: "app" (ok, an app-only grant
// with a certificate), "fresh" (never used), "revoked" and "missing"
// (needs authorization: the token endpoint refused it, no record) and
// "idle" (expiring: unused for 80 of Microsoft's 90 days).
const statusConfig = `[server]
listen = "127.0.0.1:0"
state_dir = "state"

[providers.m365]
type = "microsoft"
client_id = "11111111-2222-3333-4444-555555555555"

[providers.m365app]
type = "microsoft"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-666666666666"
client_certificate_file = "app.pem"
client_key_file = "app.key"

[accounts.app]
provider = "m365app"
mailbox = "app@contoso.test"
grant = "client_credentials"

[accounts.fresh]
provider = "m365"
mailbox = "fresh@contoso.test"

[accounts.revoked]
provider = "m365"
mailbox = "revoked@contoso.test"

[accounts.missing]
provider = "m365"
mailbox = "missing@contoso.test"

[accounts.idle]
provider = "m365"
mailbox = "idle@contoso.test"
`

// TestStatus runs status on a state directory holding each verdict, as a
// table and as JSON, without any password.
func TestStatus(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	certPEM, keyPEM, err := authtest.GenerateCertificate("status app")
	if err != nil {
		t.Fatal(err)
	}
	c.secret(keyLines(keyPEM)...)
	writeFile(t, dir, "app.pem", string(certPEM))
	writeFile(t, dir, "app.key", string(keyPEM))
	path := writeFile(t, dir, "config.toml", statusConfig)
	stateDir := filepath.Join(dir, "state")

	store, err := tokenstore.New(stateDir, &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	const password, refreshToken = "status-pw-canary-51c2", "status-rt-canary-9d0e"
	c.secret(password, refreshToken)
	ids := map[string]string{}
	for _, login := range []string{"app", "fresh", "revoked", "idle"} {
		secret := tokenstore.Secret{RefreshToken: refreshToken}
		if login == "app" {
			secret = tokenstore.Secret{}
		}
		u, err := store.Create(login, password, secret)
		if err != nil {
			t.Fatal(err)
		}
		ids[login] = u.Info.ID
	}
	now := time.Now()
	clock := now.Add(-80 * 24 * time.Hour)
	tracker, err := health.NewTracker(filepath.Join(stateDir, health.FileName), func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	tracker.Refreshed("idle", ids["idle"], clock.Add(time.Hour), time.Time{})
	tracker.Login("idle", "OK")
	clock = now.Add(-time.Hour)
	tracker.Refreshed("app", ids["app"], now.Add(time.Hour), time.Time{})
	tracker.Login("app", "OK")
	tracker.Login("revoked", "OK")
	tracker.RefreshFailed("revoked", ids["revoked"])
	tracker.Login("revoked", "AUTHORIZATIONFAILED")
	if err := tracker.Flush(); err != nil {
		t.Fatal(err)
	}

	r := c.run("", "status", "-config", path, "-json")
	if r.code != 0 {
		t.Fatalf("status -json: exit %d\n%s", r.code, r.stderr)
	}
	var report []health.Status
	if err := json.Unmarshal([]byte(r.stdout), &report); err != nil {
		t.Fatalf("%v:\n%s", err, r.stdout)
	}
	got := map[string]health.Status{}
	for _, s := range report {
		got[s.Login] = s
	}
	for login, want := range map[string]health.Verdict{"app": health.OK, "fresh": health.NeverUsed,
		"revoked": health.NeedsAuthorization, "missing": health.NeedsAuthorization, "idle": health.Expiring} {
		if got[login].Verdict != want {
			t.Errorf("%s: verdict %q, want %q (reasons %q)", login, got[login].Verdict, want, got[login].Reasons)
		}
	}
	if len(report) != 5 || report[0].Login != "app" || report[4].Login != "revoked" {
		t.Errorf("report not of the 5 accounts by login:\n%s", r.stdout)
	}
	if app := got["app"]; app.CertificateNotAfter.Before(now.AddDate(0, 11, 0)) || app.AccessTokenExpiry.IsZero() ||
		app.LastLoginOutcome != "OK" {
		t.Errorf("app: %+v", app)
	}
	if rev := got["revoked"]; !rev.NeedsAuthorization || rev.LastLoginOutcome != "AUTHORIZATIONFAILED" {
		t.Errorf("revoked: %+v", rev)
	}
	if idle := got["idle"]; idle.RefreshTokenLapse.Sub(now) > 11*24*time.Hour || idle.RefreshTokenLapse.Before(now) {
		t.Errorf("idle: refresh token lapses %v, want in about 10 days", idle.RefreshTokenLapse)
	}

	r = c.run("", "status", "-config", path)
	if r.code != 0 {
		t.Fatalf("status: exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"LOGIN", "VERDICT", "never used", "needs authorization", "expiring",
		"missing: needs authorization\n  no token record; run: imap-oauth-proxy authorize missing",
		"idle: expiring\n  refresh token unused since"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, r.stdout)
		}
	}
	c.checkLeaks()

	if r := c.run("", "status", "-config", path, "extra"); r.code != 2 {
		t.Errorf("status with an argument: exit %d, want 2", r.code)
	}
}

// TestWarnPendingSaves: status names the accounts whose rotated token
// waits in serve's spill directory, and says nothing when none does.
func TestWarnPendingSaves(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pending")
	var out strings.Builder
	warnPendingSaves(&out, dir)
	if out.Len() != 0 {
		t.Fatalf("warning without a spill directory: %q", out.String())
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "alice.token", "{}")
	writeFile(t, dir, ".alice.token.tmp123", "{}")
	warnPendingSaves(&out, dir)
	if got := out.String(); !strings.Contains(got, "rotated token pending save to the database: alice (") {
		t.Fatalf("status warning = %q; want one naming alice alone", got)
	}
}
