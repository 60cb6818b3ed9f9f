package proxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

func TestUpstreamBusy(t *testing.T) {
	for _, tc := range []struct {
		status, code, text string
		busy               bool
	}{
		{"NO", "ALERT", "Too many simultaneous connections. (Failure)", true}, // Gmail
		{"BAD", "", "Request is throttled. Suggested Backoff Time: 299961 milliseconds", true},
		{"NO", "UNAVAILABLE", "Maximum number of connections from user+IP exceeded", true}, // Dovecot
		{"NO", "LIMIT", "too many", true},
		{"NO", "INUSE", "mailbox in use", true},
		{"NO", "OVERQUOTA", "quota", true},
		{"NO", "unavailable", "lower case code", true},
		{"NO", "AUTHENTICATIONFAILED", "Invalid credentials (Failure)", false},
		{"NO", "", "AUTHENTICATE failed.", false},
		{"NO", "ALERT", "Please log in via your web browser", false},
		{"BAD", "", "Command Error. 12", false},
	} {
		a := &UpstreamAnswer{Command: "AUTHENTICATE", Status: tc.status, Code: tc.code, Text: tc.text}
		if got := upstreamBusy(a); got != tc.busy {
			t.Errorf("upstreamBusy(%s) = %v, want %v", a, got, tc.busy)
		}
	}
}

func TestAuthenticateBusyIsNotARefusedToken(t *testing.T) {
	up, f := startFakeUpstream(t, []string{
		"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
		"S: P2 NO [ALERT] Too many simultaneous connections. (Failure)",
	}, false)
	err := up.authenticate(testUpstreamLogin(auth.XOAUTH2), true)
	f.wait(t, up)
	checkAuthError(t, err, &authWant{kind: auth.Unavailable})
	if !errors.Is(err, errUpstreamBusy) {
		t.Errorf("error %v does not match errUpstreamBusy", err)
	}
	want := "upstream " + testUpstreamAddr + " is busy for M: NO [ALERT] Too many simultaneous connections. (Failure); retry later"
	if msg := auth.MessageOf(err, ""); msg != want {
		t.Errorf("message %q, want %q", msg, want)
	}
}

func TestProbeMailbox(t *testing.T) {
	login := testUpstreamLogin(auth.XOAUTH2)
	login.Account.Provider.Type = "microsoft"
	for _, tc := range []struct {
		name   string
		answer []string
		kind   auth.Kind // of the error; -1 for none
	}{
		{"namespace answered", []string{`S: * NAMESPACE (("" "/")) NIL NIL`, "S: P3 OK NAMESPACE completed."}, -1},
		{"namespace not supported", []string{"S: P3 BAD unknown command"}, -1},
		{"not connected", []string{"S: P3 BAD User is authenticated but not connected."}, auth.AuthorizationFailed},
		{"throttled", []string{"S: P3 BAD Request is throttled. Suggested Backoff Time: 1000 milliseconds"}, auth.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, f := startFakeUpstream(t, append([]string{"C: P3 NAMESPACE"}, tc.answer...), false)
			err := up.probeMailbox(login)
			f.wait(t, up)
			if tc.kind < 0 {
				if err != nil {
					t.Errorf("probe: %v", err)
				}
				return
			}
			if auth.KindOf(err) != tc.kind {
				t.Errorf("probe error %v, want kind %v", err, tc.kind)
			}
			if errors.Is(err, errTokenRefused) {
				t.Errorf("probe error %v matches errTokenRefused: no refresh is due", err)
			}
		})
	}
	if got := NotConnectedAdvice(&config.Account{Mailbox: "m@x", Grant: "client_credentials",
		Provider: &config.Provider{Name: "p"}}); !contains(got, "the app's service principal", "providers.p.tenant") {
		t.Errorf("advice for app-only: %q", got)
	}
}

func contains(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
