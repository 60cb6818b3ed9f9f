package proxy_test

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// TestInteropPersonalities runs Python's imaplib (a real legacy
// collector: ID, LOGIN, SELECT, FETCH, STORE, EXPUNGE) through the proxy
// to the Microsoft and Gmail personalities. It gets * ID NIL before
// login, the upstream's capabilities in the OK to LOGIN (asked for after
// login from Microsoft, whose OK has none), and the mailbox as a direct
// XOAUTH2 client sees it; the upstream gets its ID after login.
func TestInteropPersonalities(t *testing.T) {
	python := requireProgram(t, "python3", "python3")
	for _, tc := range []struct {
		name string
		opts harnessOptions
	}{
		{"microsoft", harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft, providerType: "microsoft"}},
		{"gmail", harnessOptions{flavor: authtest.Google, personality: proxytest.Gmail, gmailErrors: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.opts)
			e := &interopEnv{t: t, logs: h.logs}
			e.addSecret(testPassword)
			a := &interopAccount{Login: testLogin, Mailbox: testMailbox, Password: testPassword}
			want := seedDirect(t, h, interopMessages(a, 3))

			out, err := e.run(t, testPassword+"\n", nil, python,
				filepath.Join(interopFixtures, "imaplib_client.py"), "127.0.0.1", strconv.Itoa(h.port), testLogin)
			if err != nil {
				t.Fatal(err)
			}
			var res struct {
				imaplibResult
				ID                []string `json:"id"`
				LoginCapabilities []string `json:"login_capabilities"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("imaplib_client.py printed %q: %v", e.redact(string(out)), err)
			}
			if !slices.Equal(res.ID, []string{"NIL"}) {
				t.Errorf("ID before login: %q, want NIL", res.ID)
			}
			if !slices.ContainsFunc(res.LoginCapabilities, func(c string) bool { return strings.EqualFold(c, "IMAP4REV1") }) {
				t.Errorf("capabilities in the OK to LOGIN: %q", res.LoginCapabilities)
			}
			if res.Exists != len(want) || len(res.Before) != len(want) {
				t.Fatalf("SELECT: %d EXISTS, %d fetched; want %d", res.Exists, len(res.Before), len(want))
			}
			for i, m := range res.Before {
				if m.UID != want[i].UID || m.SHA256 != want[i].SHA256 || m.Subject != want[i].Subject {
					t.Errorf("message %d: uid %d %q %s, want uid %d %q %s", i, m.UID, m.Subject, m.SHA256,
						want[i].UID, want[i].Subject, want[i].SHA256)
				}
			}
			if !slices.Equal(res.Expunged, []int{2}) {
				t.Errorf("EXPUNGE reported %v, want [2]", res.Expunged)
			}
			// go-imap's server keeps flags as it was sent them: compare without case.
			if len(res.After) != 2 || res.After[0].UID != want[0].UID || res.After[1].UID != want[2].UID ||
				len(res.After[0].Flags) != 1 || !strings.EqualFold(res.After[0].Flags[0], `\Seen`) {
				t.Errorf("after STORE and EXPUNGE: %+v", res.After)
			}
			wantLogLine(t, h, `dir=U>`, `line="P5 ID (\"name\" \"imaplib-interop\")"`)
			wantLogLine(t, h, `msg=login`, "outcome=OK")
			wantNoSecrets(t, h)
		})
	}
}

// seedDirect appends msgs to the test mailbox with a direct XOAUTH2
// client and returns what that client sees.
func seedDirect(t *testing.T, h *harness, msgs [][]byte) []interopMessage {
	t.Helper()
	return appendAndView(t, h.direct(nil), msgs)
}
