package health

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// fakeRecords are record metadata by login; a login not there has none.
type fakeRecords map[string]tokenstore.RecordInfo

func (f fakeRecords) Info(login string) (tokenstore.RecordInfo, error) {
	if r, ok := f[login]; ok {
		return r, nil
	}
	return tokenstore.RecordInfo{}, fmt.Errorf("reading token record of %q: %w", login, tokenstore.ErrNoRecord)
}

func account(login, typ string, grant config.Grant) *config.Account {
	return &config.Account{Login: login, Grant: grant, Provider: &config.Provider{Name: typ + "-app", Type: typ}}
}

func TestEvaluate(t *testing.T) {
	day := 24 * time.Hour
	rec := &tokenstore.RecordInfo{ID: "r1", Updated: now.Add(-10 * day)}
	used := Entry{RecordID: "r1", LastRefresh: now.Add(-time.Hour), AccessExpiry: now.Add(time.Hour),
		LastLogin: now.Add(-time.Hour), LastOutcome: "OK", LastOK: now.Add(-time.Hour)}
	for _, tc := range []struct {
		name   string
		acct   *config.Account
		rec    *tokenstore.RecordInfo
		entry  Entry
		cert   time.Time
		want   Verdict
		reason string
	}{
		{"used", account("a", "microsoft", ""), rec, used, time.Time{}, OK, ""},
		{"no record", account("a", "microsoft", ""), nil, Entry{}, time.Time{}, NeedsAuthorization, "no token record"},
		{"refused", account("a", "google", ""), rec, Entry{RecordID: "r1", NeedsAuthorization: true, LastOK: now}, time.Time{},
			NeedsAuthorization, "refused the grant"},
		{"refused an older record", account("a", "google", ""), rec, Entry{RecordID: "r0", NeedsAuthorization: true, LastOK: now},
			time.Time{}, OK, ""},
		{"never used", account("a", "microsoft", ""), rec, Entry{}, time.Time{}, NeverUsed, ""},
		{"microsoft idle 70 days", account("a", "microsoft", ""), rec,
			Entry{RecordID: "r1", LastRefresh: now.Add(-70 * day), LastOK: now.Add(-70 * day)}, time.Time{}, Expiring, "lapses about 2026-06-21"},
		{"microsoft idle 91 days", account("a", "microsoft", ""), rec,
			Entry{RecordID: "r1", LastRefresh: now.Add(-91 * day), LastOK: now.Add(-91 * day)}, time.Time{}, NeedsAuthorization, "after 90 days unused"},
		{"google idle 70 days", account("a", "google", ""), rec,
			Entry{RecordID: "r1", LastRefresh: now.Add(-70 * day), LastOK: now.Add(-70 * day)}, time.Time{}, OK, ""},
		{"generic idle a year", account("a", "generic", ""), rec,
			Entry{RecordID: "r1", LastRefresh: now.Add(-365 * day), LastOK: now.Add(-365 * day)}, time.Time{}, OK, ""},
		{"google testing app", account("a", "google", ""), rec,
			Entry{RecordID: "r1", LastRefresh: now, RefreshExpiry: now.Add(6 * day), LastOK: now}, time.Time{}, Expiring, "expires on 2026-06-07"},
		{"certificate near", account("a", "microsoft", config.GrantClientCredentials), rec, used, now.Add(20 * day), Expiring,
			"client certificate expires on 2026-06-21"},
		{"certificate far", account("a", "microsoft", config.GrantClientCredentials), rec, used, now.Add(200 * day), OK, ""},
		{"app-only idle", account("a", "microsoft", config.GrantClientCredentials), rec,
			Entry{RecordID: "r1", LastOK: now.Add(-300 * day)}, time.Time{}, OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Evaluate(tc.acct, tc.rec, tc.entry, tc.cert, now)
			if s.Verdict != tc.want {
				t.Errorf("verdict %q, want %q (reasons %q)", s.Verdict, tc.want, s.Reasons)
			}
			if got := strings.Join(s.Reasons, "; "); !strings.Contains(got, tc.reason) || (tc.reason == "") != (got == "") {
				t.Errorf("reasons %q, want one with %q", got, tc.reason)
			}
		})
	}
}

func TestTrackerFlush(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	clock := now
	tr, err := NewTracker(path, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	tr.Refreshed("a", "r1", now.Add(time.Hour), time.Time{})
	tr.Login("a", "OK")
	clock = clock.Add(time.Minute)
	tr.Login("a", "UNAVAILABLE")
	tr.RefreshFailed("b", "r2")
	if err := tr.Flush(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v", fi.Mode().Perm())
	}
	again, err := NewTracker(path, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	a := again.Entry("a")
	want := Entry{RecordID: "r1", AccessExpiry: now.Add(time.Hour), LastRefresh: now,
		LastLogin: now.Add(time.Minute), LastOutcome: "UNAVAILABLE", LastOK: now}
	if !a.AccessExpiry.Equal(want.AccessExpiry) || !a.LastRefresh.Equal(want.LastRefresh) || !a.LastOK.Equal(want.LastOK) ||
		!a.LastLogin.Equal(want.LastLogin) || a.LastOutcome != want.LastOutcome || a.RecordID != want.RecordID {
		t.Errorf("read back %+v, want %+v", a, want)
	}
	if b := again.Entry("b"); !b.NeedsAuthorization || b.RecordID != "r2" {
		t.Errorf("read back %+v", b)
	}
	// A refresh of the same record clears the refusal.
	again.Refreshed("b", "r2", now, time.Time{})
	if again.Entry("b").NeedsAuthorization {
		t.Error("refresh did not clear needs_authorization")
	}
}

func TestWarnerOncePerDay(t *testing.T) {
	var buf bytes.Buffer
	w := NewWarner(slog.New(slog.NewTextHandler(&buf, nil)))
	bad := []Status{{Login: "a", Verdict: Expiring, Reasons: []string{"refresh token unused since 2026-03-01"}},
		{Login: "b", Verdict: OK}}
	if n := w.Check(bad, now); n != 1 {
		t.Fatalf("first check warned %d times, want 1", n)
	}
	if n := w.Check(bad, now.Add(23*time.Hour)); n != 0 {
		t.Errorf("check 23 h later warned %d times, want 0", n)
	}
	if n := w.Check(bad, now.Add(24*time.Hour)); n != 1 {
		t.Errorf("check a day later warned %d times, want 1", n)
	}
	// Fixed, then broken again: warned at once.
	w.Check([]Status{{Login: "a", Verdict: OK}}, now.Add(25*time.Hour))
	if n := w.Check(bad, now.Add(26*time.Hour)); n != 1 {
		t.Errorf("check after a recovery warned %d times, want 1", n)
	}
	if !strings.Contains(buf.String(), `level=WARN msg="account expiring" login=a`) {
		t.Errorf("log lacks the warning:\n%s", buf.String())
	}
}

func writeCert(t *testing.T, notAfter time.Time) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"},
		NotBefore: now.Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMetrics(t *testing.T) {
	tr, err := NewTracker("", func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	certApp := account("app", "microsoft", config.GrantClientCredentials)
	certApp.Provider.ClientCertificateFile = writeCert(t, time.Unix(1900000000, 0))
	cfg := &config.Config{Accounts: map[string]*config.Account{
		"used":    account("used", "microsoft", ""),
		"revoked": account("revoked", "google", ""),
		"new":     account("new", "microsoft", ""),
		"app":     certApp,
	}}
	records := fakeRecords{"used": {ID: "r1"}, "revoked": {ID: "r2"}, "app": {ID: "r3"}}
	tr.Refreshed("used", "r1", time.Unix(1800000000, 0), time.Time{})
	tr.Login("used", "OK")
	tr.RefreshFailed("revoked", "r2")
	tr.Login("revoked", "AUTHORIZATIONFAILED")
	m := NewMetrics(tr, records, func() *config.Config { return cfg })
	out, err := testutil.CollectAndFormat(m, expfmt.TypeTextPlain,
		"imap_oauth_proxy_account_access_token_expiry_timestamp_seconds",
		"imap_oauth_proxy_account_last_refresh_timestamp_seconds",
		"imap_oauth_proxy_account_last_login_timestamp_seconds",
		"imap_oauth_proxy_account_last_login_ok",
		"imap_oauth_proxy_account_needs_authorization",
		"imap_oauth_proxy_account_certificate_not_after_timestamp_seconds")
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{
		`imap_oauth_proxy_account_access_token_expiry_timestamp_seconds{login="used"} 1.8e+09`,
		fmt.Sprintf(`imap_oauth_proxy_account_last_refresh_timestamp_seconds{login="used"} %g`, float64(now.Unix())),
		fmt.Sprintf(`imap_oauth_proxy_account_last_login_timestamp_seconds{login="revoked"} %g`, float64(now.Unix())),
		`imap_oauth_proxy_account_last_login_ok{login="used"} 1`,
		`imap_oauth_proxy_account_last_login_ok{login="revoked"} 0`,
		`imap_oauth_proxy_account_needs_authorization{login="used"} 0`,
		`imap_oauth_proxy_account_needs_authorization{login="revoked"} 1`,
		`imap_oauth_proxy_account_needs_authorization{login="new"} 1`,
		`imap_oauth_proxy_account_needs_authorization{login="app"} 0`,
		`imap_oauth_proxy_account_certificate_not_after_timestamp_seconds{login="app"} 1.9e+09`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	for _, absent := range []string{`last_login_ok{login="new"}`, `access_token_expiry_timestamp_seconds{login="revoked"}`,
		`certificate_not_after_timestamp_seconds{login="used"}`} {
		if strings.Contains(text, absent) {
			t.Errorf("metrics have %q:\n%s", absent, text)
		}
	}
}

// TestMonitorTick: the first tick saves the state and warns; the next
// ones save only what changed and warn again only a day later.
func TestMonitorTick(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	tr, err := NewTracker(path, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Accounts: map[string]*config.Account{
		"gone": account("gone", "microsoft", ""),
		"used": account("used", "microsoft", ""),
	}}
	records := fakeRecords{"used": {ID: "r1", Updated: now}}
	tr.Refreshed("used", "r1", now.Add(time.Hour), time.Time{})
	tr.Login("used", "OK")
	var buf bytes.Buffer
	m := NewMonitor(tr, records, func() *config.Config { return cfg }, slog.New(slog.NewTextHandler(&buf, nil)))
	warnings := func() int { return strings.Count(buf.String(), `msg="account needs authorization" login=gone`) }

	m.Tick(now)
	if got, err := ReadFile(path); err != nil || got["used"].LastOK.IsZero() {
		t.Fatalf("state file after the first tick: %+v, %v", got, err)
	}
	if warnings() != 1 || strings.Contains(buf.String(), "login=used") {
		t.Fatalf("first tick logged:\n%s", buf.String())
	}
	m.Tick(now.Add(2 * time.Hour))
	if warnings() != 1 {
		t.Errorf("warned again within the day:\n%s", buf.String())
	}
	m.Tick(now.Add(25 * time.Hour))
	if warnings() != 2 {
		t.Errorf("not warned again a day later:\n%s", buf.String())
	}
}
