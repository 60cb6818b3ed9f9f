package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// The tests in this file run the proxy against proxytest's Microsoft and
// Gmail personalities, one test for each behaviour in issue #13's table:
// the collector's exact answer, the log line, the metric, and whether a
// refresh happened.

// collectorLogin sends LOGIN on a new raw connection and returns the
// tagged answer, with the connection for what follows.
func collectorLogin(h *harness) (string, *rawConn) {
	h.t.Helper()
	r := h.raw()
	r.send("a1 LOGIN " + testLogin + " \"" + testPassword + "\"\r\n")
	lines := r.until("a1 ")
	return lines[len(lines)-1], r
}

// metrics returns the proxy's login metrics as Prometheus text.
func metrics(h *harness) string {
	h.t.Helper()
	out, err := testutil.CollectAndFormat(h.srv, expfmt.TypeTextPlain, "imap_oauth_proxy_logins_total")
	if err != nil {
		h.t.Fatal(err)
	}
	return string(out)
}

// wantLoginMetric checks imap_oauth_proxy_logins_total for outcome.
func wantLoginMetric(t *testing.T, h *harness, outcome string, n int) {
	t.Helper()
	want := fmt.Sprintf(`imap_oauth_proxy_logins_total{outcome=%q,protocol="imap"} %d`+"\n", outcome, n)
	if text := metrics(h); !strings.Contains(text, want) {
		t.Errorf("metrics lack %q", want)
	}
}

// wantLogLine checks that one log line holds every part.
func wantLogLine(t *testing.T, h *harness, parts ...string) {
	t.Helper()
	for _, line := range strings.Split(h.logs.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return
		}
	}
	t.Errorf("no log line holds all of %q", parts)
}

// wantNoSecrets checks that the logs show no token.
func wantNoSecrets(t *testing.T, h *harness) {
	t.Helper()
	logs := h.logs.String()
	for _, s := range append(h.accessTokens(), h.grants...) {
		if strings.Contains(logs, s) {
			t.Errorf("the log shows a token")
		}
	}
}

// logins fills n upstream sessions through the proxy and keeps them open.
func logins(t *testing.T, h *harness, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if got, _ := collectorLogin(h); !strings.HasPrefix(got, "a1 OK ") {
			t.Fatalf("login %d: %q", i+1, got)
		}
	}
}

func TestGmailTooManySimultaneousConnections(t *testing.T) {
	h := newHarness(t, harnessOptions{flavor: authtest.Google, personality: proxytest.Gmail, upstreamMaxSessions: 2})
	logins(t, h, 2)
	refreshes, conns := h.tokens.RefreshCount(testMailbox), h.upstream.Connections()

	got, _ := collectorLogin(h)
	want := "a1 NO [UNAVAILABLE] upstream " + h.upstream.Addr + " is busy for " + testMailbox +
		": NO [ALERT] Too many simultaneous connections. (Failure); retry later"
	if got != want {
		t.Errorf("collector got\n%q, want\n%q", got, want)
	}
	if n := h.tokens.RefreshCount(testMailbox); n != refreshes {
		t.Errorf("%d refreshes, want none", n-refreshes)
	}
	if n := h.upstream.Connections() - conns; n != 1 {
		t.Errorf("%d upstream connections for the refused login, want 1 (no retry)", n)
	}
	if h.upstream.Limited() != 1 || h.upstream.Refusals() != 0 {
		t.Errorf("upstream limited %d, refused %d logins; want 1, 0", h.upstream.Limited(), h.upstream.Refusals())
	}
	wantLogLine(t, h, `msg="login failed"`, "outcome=UNAVAILABLE", "upstream busy", "Too many simultaneous connections")
	wantLoginMetric(t, h, "UNAVAILABLE", 1)
	wantLoginMetric(t, h, "AUTHORIZATIONFAILED", 0)
	wantNoSecrets(t, h)
}

func TestMicrosoftThrottled(t *testing.T) {
	h := newHarness(t, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft})
	h.upstream.Throttle(1, 299961*time.Millisecond)
	refreshes := h.tokens.RefreshCount(testMailbox)

	got, _ := collectorLogin(h)
	want := "a1 NO [UNAVAILABLE] upstream " + h.upstream.Addr + " is busy for " + testMailbox +
		": BAD Request is throttled. Suggested Backoff Time: 299961 milliseconds; retry later"
	if got != want {
		t.Errorf("collector got\n%q, want\n%q", got, want)
	}
	if n := h.tokens.RefreshCount(testMailbox) - refreshes; n != 1 {
		t.Errorf("%d refreshes, want 1: the first access token, none after the throttling", n)
	}
	if n := h.upstream.Connections(); n != 1 {
		t.Errorf("%d upstream connections, want 1 (no retry)", n)
	}
	wantLogLine(t, h, `msg="login failed"`, "outcome=UNAVAILABLE", "Request is throttled")
	wantLoginMetric(t, h, "UNAVAILABLE", 1)

	// The throttling is over: the next login goes through.
	if got, _ := collectorLogin(h); !strings.HasPrefix(got, "a1 OK ") {
		t.Errorf("login after the throttling: %q", got)
	}
	wantNoSecrets(t, h)
}

func TestMicrosoftAuthenticatedButNotConnected(t *testing.T) {
	h := newHarness(t, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft, providerType: "microsoft"})
	h.upstream.SetNotConnected(testMailbox, true)
	refreshes := h.tokens.RefreshCount(testMailbox)

	got, _ := collectorLogin(h)
	want := "a1 NO [AUTHORIZATIONFAILED] upstream accepted the token for " + testMailbox +
		" but cannot open the mailbox (User is authenticated but not connected.); for the likely causes run: imap-oauth-proxy check " + testLogin
	if got != want {
		t.Errorf("collector got\n%q, want\n%q", got, want)
	}
	if n := h.tokens.RefreshCount(testMailbox) - refreshes; n != 1 {
		t.Errorf("%d refreshes, want 1, the first access token: a new token does not open the mailbox", n)
	}
	if n := h.upstream.Connections(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
	wantLogLine(t, h, `msg="login failed"`, "outcome=AUTHORIZATIONFAILED", "cannot open the mailbox",
		"Add-MailboxPermission -Identity "+testMailbox, "providers.lab.tenant", "max_sessions")
	wantLoginMetric(t, h, "AUTHORIZATIONFAILED", 1)

	// Once the mailbox opens, the probe passes and the session relays.
	h.upstream.SetNotConnected(testMailbox, false)
	got, r := collectorLogin(h)
	if !okWithCapabilities(got) {
		t.Errorf("login: %q, want an OK with the capabilities asked for after login", got)
	}
	r.send("a2 SELECT INBOX\r\n")
	if l := r.until("a2 "); !strings.HasPrefix(l[len(l)-1], "a2 OK") {
		t.Errorf("SELECT after login: %q", l)
	}
	wantNoSecrets(t, h)
}

func TestMicrosoftRefusedTokenRefreshesOnce(t *testing.T) {
	refused := 0
	h := newHarness(t, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft, providerType: "microsoft",
		validate: func(user, token string, next func(string, string) error) error {
			if refused == 0 {
				refused++
				return fmt.Errorf("first token refused")
			}
			return next(user, token)
		}})
	refreshes := h.tokens.RefreshCount(testMailbox)
	got, _ := collectorLogin(h)
	if !okWithCapabilities(got) {
		t.Errorf("collector got %q, want OK after one refresh", got)
	}
	if n := h.tokens.RefreshCount(testMailbox) - refreshes; n != 2 {
		t.Errorf("%d refreshes, want 2: the first access token and one after the refusal", n)
	}
	if h.upstream.Refusals() != 1 || h.upstream.Logins() != 1 {
		t.Errorf("upstream refused %d and accepted %d logins, want 1 and 1", h.upstream.Refusals(), h.upstream.Logins())
	}
	wantLogLine(t, h, "upstream refused the access token; refreshing once")
	wantLoginMetric(t, h, "OK", 1)
	wantNoSecrets(t, h)
}

func TestGmailRefusedTokenTwice(t *testing.T) {
	h := newHarness(t, harnessOptions{flavor: authtest.Google, personality: proxytest.Gmail, providerType: "google",
		validate: func(string, string, func(string, string) error) error { return fmt.Errorf("refused") }})
	refreshes := h.tokens.RefreshCount(testMailbox)
	got, _ := collectorLogin(h)
	want := "a1 NO [AUTHORIZATIONFAILED] upstream refused the token for " + testMailbox +
		": Invalid credentials (Failure); for the likely causes run: imap-oauth-proxy check " + testLogin
	if got != want {
		t.Errorf("collector got\n%q, want\n%q", got, want)
	}
	if n := h.tokens.RefreshCount(testMailbox) - refreshes; n != 2 {
		t.Errorf("%d refreshes, want 2: the first access token and one after the refusal", n)
	}
	if h.upstream.Refusals() != 2 {
		t.Errorf("upstream refused %d logins, want 2 (one retry)", h.upstream.Refusals())
	}
	wantLogLine(t, h, `msg="login failed"`, "outcome=AUTHORIZATIONFAILED", "XOAUTH2 refused (status 400)")
	wantLoginMetric(t, h, "AUTHORIZATIONFAILED", 1)
	wantNoSecrets(t, h)
}

func TestMicrosoftAccessTokenExpiredBye(t *testing.T) {
	h := newHarness(t, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft, providerType: "microsoft"})
	got, r := collectorLogin(h)
	if !okWithCapabilities(got) {
		t.Fatalf("login: %q", got)
	}
	r.send("a2 SELECT INBOX\r\n")
	r.until("a2 OK")
	if n := h.upstream.ExpireSessions(testMailbox); n != 1 {
		t.Fatalf("ExpireSessions ended %d sessions, want 1", n)
	}
	if l := r.line(); l != "* BYE Session invalidated - AccessTokenExpired" {
		t.Errorf("collector got %q, want Microsoft's BYE passed through", l)
	}
	if !r.closed() {
		t.Error("the proxy did not close the collector's connection")
	}
	if err := h.stop(); err != nil { // waits for the session's last log line
		t.Fatal(err)
	}
	wantLogLine(t, h, "level=INFO", `msg="relay end"`,
		`reason="upstream BYE: Session invalidated - AccessTokenExpired (expected: the access token expired`)
	if strings.Contains(h.logs.String(), "level=ERROR") || strings.Contains(h.logs.String(), "level=WARN") {
		t.Errorf("the expected BYE was logged as a warning or an error")
	}
	wantLoginMetric(t, h, "OK", 1)
}

func TestSessionTokenMin(t *testing.T) {
	for _, tc := range []struct {
		name      string
		accessTTL time.Duration
		// refreshes after two logins: a token shorter than
		// session_token_min is refreshed before each session, and a
		// fresh one is used whatever its lifetime.
		refreshes int
		logged    bool
	}{
		{"tokens longer than the minimum", 60 * time.Minute, 1, false},
		{"tokens shorter than the minimum", 40 * time.Minute, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft,
				accessTTL: tc.accessTTL, serverTOML: "session_token_min = \"45m\"\n"})
			logins(t, h, 2)
			if n := h.tokens.RefreshCount(testMailbox); n != tc.refreshes {
				t.Errorf("%d refreshes, want %d", n, tc.refreshes)
			}
			if got := strings.Contains(h.logs.String(), "access token too close to expiry for a new session; refreshing"); got != tc.logged {
				t.Errorf("refresh before the session logged: %v, want %v", got, tc.logged)
			}
			wantLoginMetric(t, h, "OK", 2)
		})
	}
}

func TestMaxSessions(t *testing.T) {
	h := newHarness(t, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft,
		accountTOML: "max_sessions = 2\n"})
	logins(t, h, 1)
	_, second := collectorLogin(h)
	conns := h.upstream.Connections()

	got, _ := collectorLogin(h)
	if want := "a1 NO [UNAVAILABLE] too many sessions open for " + testLogin + " (max_sessions 2); retry later"; got != want {
		t.Errorf("collector got\n%q, want\n%q", got, want)
	}
	if n := h.upstream.Connections(); n != conns {
		t.Errorf("the upstream got %d connections for a login past max_sessions, want none", n-conns)
	}
	wantLogLine(t, h, `msg="login failed"`, "outcome=UNAVAILABLE", "max_sessions reached: 2 sessions open to "+testMailbox)
	wantLoginMetric(t, h, "UNAVAILABLE", 1)

	// A session that ends frees its slot before the collector sees the end.
	second.send("a2 LOGOUT\r\n")
	if !second.closed() {
		t.Fatal("LOGOUT did not end the session")
	}
	if got, _ := collectorLogin(h); !strings.HasPrefix(got, "a1 OK ") {
		t.Errorf("login after a session ended: %q", got)
	}
	wantNoSecrets(t, h)
}

// okWithCapabilities reports whether a collector's answer to LOGIN is OK
// with a capability list: Microsoft's OK to AUTHENTICATE carries none, so
// the proxy asks for them after login.
func okWithCapabilities(got string) bool {
	return strings.HasPrefix(got, "a1 OK [CAPABILITY IMAP4") && strings.HasSuffix(got, "] LOGIN completed")
}

// TestClientIDForwarded: the collector's pre-login ID gets * ID NIL, and
// its parameters reach the upstream after AUTHENTICATE, so that the
// provider's logs name the real client. Microsoft's OK to AUTHENTICATE
// carries no capabilities, so the proxy asks for them (pipelined with the
// mailbox probe); Gmail's carries them, so it does not.
func TestClientIDForwarded(t *testing.T) {
	for _, tc := range []struct {
		name        string
		opts        harnessOptions
		askCaps     bool
		upstreamCap string
	}{
		{"microsoft", harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft, providerType: "microsoft"},
			true, "IMAP4rev1"},
		{"gmail", harnessOptions{flavor: authtest.Google, personality: proxytest.Gmail, gmailErrors: true},
			false, "X-GM-EXT-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			r := h.raw()
			r.send(`a0 ID ("name" "fetchmail" "version" "6.4.38")` + "\r\n")
			if got := r.until("a0 "); len(got) != 2 || got[0] != "* ID NIL" || !strings.HasPrefix(got[1], "a0 OK") {
				t.Fatalf("ID: %q, want * ID NIL and OK", got)
			}
			r.send("a1 LOGIN " + testLogin + " \"" + testPassword + "\"\r\n")
			lines := r.until("a1 ")
			got := lines[len(lines)-1]
			if !strings.HasPrefix(got, "a1 OK [CAPABILITY ") || !strings.Contains(got, tc.upstreamCap) {
				t.Errorf("login: %q, want OK with the upstream's capabilities", got)
			}
			wantLogLine(t, h, `dir=U>`, `line="P5 ID (\"name\" \"fetchmail\" \"version\" \"6.4.38\")"`)
			asked := strings.Contains(h.logs.String(), `line="P4 CAPABILITY"`)
			if asked != tc.askCaps {
				t.Errorf("asked for the capabilities after login: %v, want %v", asked, tc.askCaps)
			}
			// The session relays after the ID's answer was consumed.
			r.send("a2 NOOP\r\n")
			if l := r.until("a2 "); !strings.HasPrefix(l[len(l)-1], "a2 OK") {
				t.Errorf("NOOP after login: %q", l)
			}
			wantNoSecrets(t, h)
		})
	}
}
