package proxy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// appendMessage appends body to INBOX through c and returns its UID.
func appendMessage(t testing.TB, c *imapclient.Client, body []byte, flags ...imap.Flag) imap.UID {
	t.Helper()
	cmd := c.Append("INBOX", int64(len(body)), &imap.AppendOptions{Flags: flags})
	if _, err := cmd.Write(body); err != nil {
		t.Fatalf("APPEND write: %v", err)
	}
	if err := cmd.Close(); err != nil {
		t.Fatalf("APPEND close: %v", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	return data.UID
}

// mailboxView is what a client sees of INBOX: UID, flags and body hash of
// every message, in order.
func mailboxView(t *testing.T, c *imapclient.Client) string {
	t.Helper()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	msgs, err := c.Fetch(allMessages(), &imap.FetchOptions{
		UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil && !strings.Contains(err.Error(), "empty") {
		t.Fatalf("FETCH: %v", err)
	}
	var sb strings.Builder
	for _, m := range msgs {
		var body []byte
		for _, b := range m.BodySection {
			body = b.Bytes
		}
		fmt.Fprintf(&sb, "%d %v %x\n", m.UID, m.Flags, sha256.Sum256(body))
	}
	return sb.String()
}

func message(subject, text string) []byte {
	return []byte("From: a@example.test\r\nTo: " + testMailbox + "\r\nSubject: " + subject + "\r\n\r\n" + text + "\r\n")
}

// TestCollectorSession: a collector logging in with LOGIN through the proxy
// reads and changes the mailbox and sees exactly what a direct XOAUTH2
// client sees.
func TestCollectorSession(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	c := h.login()
	if !c.Caps().Has(imap.CapIMAP4rev2) {
		t.Errorf("capabilities after login = %v, want the upstream's (with IMAP4rev2)", c.Caps())
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if sel.NumMessages != 0 {
		t.Fatalf("new INBOX has %d messages", sel.NumMessages)
	}
	var uids []imap.UID
	for i := 0; i < 3; i++ {
		uids = append(uids, appendMessage(t, c, message(fmt.Sprintf("ticket %d", i), "body")))
	}
	if err := c.Store(imap.UIDSetNum(uids[0]), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatalf("STORE: %v", err)
	}
	if err := c.Store(imap.UIDSetNum(uids[1]), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatalf("STORE: %v", err)
	}
	expunged, err := c.Expunge().Collect()
	if err != nil {
		t.Fatalf("EXPUNGE: %v", err)
	}
	if len(expunged) != 1 || expunged[0] != 2 {
		t.Errorf("EXPUNGE removed seq %v, want [2]", expunged)
	}
	envs, err := c.Fetch(imap.UIDSetNum(uids[2]), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil || len(envs) != 1 || envs[0].Envelope.Subject != "ticket 2" {
		t.Fatalf("FETCH ENVELOPE = %v, %v", envs, err)
	}

	viaProxy := mailboxView(t, c)
	direct := mailboxView(t, h.direct(nil))
	if viaProxy != direct {
		t.Errorf("proxy view:\n%s\ndirect view:\n%s", viaProxy, direct)
	}
	if want := fmt.Sprintf("%d [\\Seen]", uids[0]); !strings.HasPrefix(direct, want) {
		t.Errorf("direct view %q does not start with %q", direct, want)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// TestLoginForms covers the LOGIN argument forms imapclient does not send:
// atoms, synchronizing literals and LITERAL+.
func TestLoginForms(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	t.Run("quoted", func(t *testing.T) {
		r := h.raw()
		r.send(`a1 LOGIN "collector" "correct horse battery"` + "\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a1 OK [CAPABILITY ") {
			t.Fatalf("LOGIN = %q", got)
		}
	})
	t.Run("atom and synchronizing literal", func(t *testing.T) {
		r := h.raw()
		r.send(fmt.Sprintf("a1 LOGIN collector {%d}\r\n", len(testPassword)))
		if got := r.line(); !strings.HasPrefix(got, "+ ") {
			t.Fatalf("want a continuation, got %q", got)
		}
		r.send(testPassword + "\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a1 OK ") {
			t.Fatalf("LOGIN = %q", got)
		}
		// The session is relayed: the upstream answers SELECT.
		r.send("a2 SELECT INBOX\r\n")
		if got := r.until("a2 "); !strings.HasPrefix(got[len(got)-1], "a2 OK") {
			t.Fatalf("SELECT = %q", got)
		}
	})
	t.Run("non-synchronizing literals, pipelined", func(t *testing.T) {
		r := h.raw()
		// LOGIN and the next command in one write: the proxy must forward
		// the SELECT it already buffered.
		r.send(fmt.Sprintf("a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\na2 SELECT INBOX\r\n",
			len(testLogin), testLogin, len(testPassword), testPassword))
		if got := r.line(); !strings.HasPrefix(got, "a1 OK ") {
			t.Fatalf("LOGIN = %q", got)
		}
		if got := r.until("a2 "); !strings.HasPrefix(got[len(got)-1], "a2 OK") {
			t.Fatalf("SELECT = %q", got)
		}
	})
}

// TestAuthenticatePlain covers AUTHENTICATE PLAIN with SASL-IR (imapclient),
// with a continuation, cancelled, and with a foreign authorization identity.
func TestAuthenticatePlain(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	plain := func(authzid string) string {
		return base64.StdEncoding.EncodeToString([]byte(authzid + "\x00" + testLogin + "\x00" + testPassword))
	}
	t.Run("imapclient SASL-IR", func(t *testing.T) {
		c := h.dial()
		if err := c.Authenticate(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
			t.Fatalf("AUTHENTICATE PLAIN: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("SELECT: %v", err)
		}
	})
	t.Run("continuation", func(t *testing.T) {
		r := h.raw()
		r.send("a1 AUTHENTICATE PLAIN\r\n")
		if got := r.line(); got != "+ " && got != "+" {
			t.Fatalf("want an empty continuation, got %q", got)
		}
		r.send(plain("") + "\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a1 OK ") {
			t.Fatalf("AUTHENTICATE = %q", got)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		r := h.raw()
		r.send("a1 AUTHENTICATE PLAIN\r\n")
		r.line()
		r.send("*\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a1 BAD ") {
			t.Fatalf("cancelled AUTHENTICATE = %q", got)
		}
		r.send("a2 NOOP\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a2 OK") {
			t.Fatalf("NOOP after cancel = %q", got)
		}
	})
	t.Run("foreign authzid", func(t *testing.T) {
		r := h.raw()
		r.send("a1 AUTHENTICATE PLAIN " + plain("someone-else") + "\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a1 NO [AUTHORIZATIONFAILED]") {
			t.Fatalf("AUTHENTICATE = %q", got)
		}
	})
	t.Run("other mechanism", func(t *testing.T) {
		r := h.raw()
		r.send("a1 AUTHENTICATE XOAUTH2 dXNlcj0=\r\n")
		if got := r.line(); !strings.HasPrefix(got, "a1 NO ") {
			t.Fatalf("AUTHENTICATE XOAUTH2 = %q", got)
		}
	})
}

// TestIdle: a collector in IDLE through the proxy hears about a message
// that a direct client appends.
func TestIdle(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	exists := make(chan uint32, 16)
	c := h.dialWith(&imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(data *imapclient.UnilateralDataMailbox) {
			if data.NumMessages != nil {
				exists <- *data.NumMessages
			}
		},
	}})
	if err := c.Login(testLogin, testPassword).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	// go-imap's memserver registers an idler only after it has sent
	// "+ idling" and does not poll first (imapserver.SessionTracker.Idle),
	// so an append in that window is announced with the next one: keep
	// appending, a bounded number of times, until the collector hears.
	d := h.direct(nil)
	var appended, got uint32
	for got != appended || appended == 0 {
		if appended == 5 {
			t.Fatalf("after %d appends the idling collector heard EXISTS %d", appended, got)
		}
		appendMessage(t, d, message("new ticket", "arrived during IDLE"))
		appended++
	wait:
		for got < appended {
			select {
			case got = <-exists:
			case <-time.After(2 * time.Second):
				break wait
			}
		}
	}
	if err := idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE end: %v", err)
	}
}

// TestBadCredentialsLookAlike: a wrong password and an unknown login get
// the same NO [AUTHENTICATIONFAILED], and neither reaches the token endpoint
// or the upstream.
func TestBadCredentialsLookAlike(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	requests, conns := h.tokens.Requests(), h.upstream.Connections()
	answer := func(login, password string) string {
		r := h.raw()
		r.send(fmt.Sprintf("a1 LOGIN %q %q\r\n", login, password))
		return r.line()
	}
	wrong := answer(testLogin, "not the password")
	unknown := answer("nobody", testPassword)
	if !strings.HasPrefix(wrong, "a1 NO [AUTHENTICATIONFAILED] ") {
		t.Errorf("wrong password: %q", wrong)
	}
	if wrong != unknown {
		t.Errorf("wrong password %q and unknown login %q differ", wrong, unknown)
	}
	if got := h.tokens.Requests(); got != requests {
		t.Errorf("token endpoint saw %d requests, want %d", got, requests)
	}
	if got := h.upstream.Connections(); got != conns {
		t.Errorf("upstream saw %d connections, want %d", got, conns)
	}
	// And the right password still works afterwards.
	h.login()
}

// TestRotatedRefreshTokenSurvivesRestart: the token endpoint rotates the
// refresh token on every refresh; after many logins (some concurrent) and a
// restart, the newest one is on disk and logins still work.
func TestRotatedRefreshTokenSurvivesRestart(t *testing.T) {
	// Access tokens shorter than the refresh margin: every login refreshes.
	h := newHarness(t, harnessOptions{rotate: true, accessTTL: time.Minute})
	for i := 0; i < 10; i++ {
		c := h.login()
		if err := c.Logout().Wait(); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.dial()
			errs <- c.Login(testLogin, testPassword).Wait()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent LOGIN: %v", err)
		}
	}
	// Every login needs a fresh token, and concurrent ones take turns.
	if n := h.tokens.RefreshCount(testMailbox); n != 18 {
		t.Fatalf("%d refreshes for 18 logins, want one each", n)
	}
	h.restart()
	rec, err := h.store.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if cur := h.tokens.CurrentRefreshToken(testMailbox); rec.Secret.RefreshToken != cur {
		t.Fatal("the record does not hold the newest refresh token")
	}
	c := h.login()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestRevokedAuthorization: invalid_grant gives NO [AUTHORIZATIONFAILED]
// naming the command that fixes it, and later logins do not hammer the
// token endpoint.
func TestRevokedAuthorization(t *testing.T) {
	for _, flavor := range []authtest.Flavor{authtest.Microsoft, authtest.Google} {
		t.Run(flavor.String(), func(t *testing.T) {
			h := newHarness(t, harnessOptions{flavor: flavor, accessTTL: time.Minute})
			h.tokens.Revoke(testMailbox)
			r := h.raw()
			r.send(fmt.Sprintf("a1 LOGIN %s %q\r\n", testLogin, testPassword))
			got := r.line()
			if !strings.HasPrefix(got, "a1 NO [AUTHORIZATIONFAILED] ") {
				t.Fatalf("LOGIN = %q", got)
			}
			if !strings.Contains(got, "imap-oauth-proxy authorize "+testLogin) {
				t.Errorf("answer %q does not name the fix", got)
			}
			if flavor == authtest.Microsoft && !strings.Contains(got, "AADSTS") {
				t.Errorf("answer %q lacks the provider's reason", got)
			}
			requests := h.tokens.Requests()
			r.send(fmt.Sprintf("a2 LOGIN %s %q\r\n", testLogin, testPassword))
			if got := r.line(); !strings.HasPrefix(got, "a2 NO [AUTHORIZATIONFAILED] ") {
				t.Fatalf("second LOGIN = %q", got)
			}
			if n := h.tokens.Requests(); n != requests {
				t.Errorf("a revoked account still reached the token endpoint (%d requests)", n-requests)
			}
			needsAuth := func(want string) {
				t.Helper()
				out, err := testutil.CollectAndFormat(h.srv, expfmt.TypeTextPlain, "imap_oauth_proxy_account_needs_authorization")
				if err != nil {
					t.Fatal(err)
				}
				if line := `imap_oauth_proxy_account_needs_authorization{login="` + testLogin + `"} ` + want + "\n"; !strings.Contains(string(out), line) {
					t.Errorf("metrics lack %q:\n%s", line, out)
				}
			}
			needsAuth("1")
			// A new authorization (a new record) clears the state.
			if _, err := h.store.Create(testLogin, testPassword, tokenstore.Secret{RefreshToken: h.tokens.Grant(testMailbox)}); err != nil {
				t.Fatal(err)
			}
			needsAuth("0")
			h.login()
		})
	}
}

// TestUnavailable: a dead upstream or token endpoint gives NO [UNAVAILABLE].
func TestUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts harnessOptions
	}{
		{"upstream down", harnessOptions{imapAddress: freeAddr(t)}},
		{"token endpoint down", harnessOptions{tokenURL: "http://" + freeAddr(t) + "/token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.opts)
			r := h.raw()
			r.send(fmt.Sprintf("a1 LOGIN %s %q\r\n", testLogin, testPassword))
			if got := r.line(); !strings.HasPrefix(got, "a1 NO [UNAVAILABLE] ") {
				t.Fatalf("LOGIN = %q", got)
			}
			r.send("a2 NOOP\r\n")
			if got := r.line(); !strings.HasPrefix(got, "a2 OK") {
				t.Fatalf("session not usable after the failure: %q", got)
			}
		})
	}
}

// TestRefusedTokenIsRefreshedOnce: when the upstream refuses a cached
// access token, the proxy refreshes once and retries once; the Gmail-style
// "+" error challenge never reaches the collector.
func TestRefusedTokenIsRefreshedOnce(t *testing.T) {
	for _, gmail := range []bool{false, true} {
		t.Run(fmt.Sprintf("gmail=%v", gmail), func(t *testing.T) {
			var mu sync.Mutex
			refuse := 0
			h := newHarness(t, harnessOptions{gmailErrors: gmail, validate: func(user, token string, next func(string, string) error) error {
				mu.Lock()
				defer mu.Unlock()
				if refuse > 0 {
					refuse--
					return errors.New("refused by test")
				}
				return next(user, token)
			}})
			h.login()
			refreshes := h.tokens.RefreshCount(testMailbox)
			mu.Lock()
			refuse = 1
			mu.Unlock()
			r := h.raw()
			r.send(fmt.Sprintf("a1 LOGIN %s %q\r\n", testLogin, testPassword))
			if got := r.line(); !strings.HasPrefix(got, "a1 OK ") {
				t.Fatalf("LOGIN = %q", got)
			}
			if n := h.tokens.RefreshCount(testMailbox) - refreshes; n != 1 {
				t.Errorf("%d refreshes after a refusal, want 1", n)
			}
			// Refused twice: the collector gets a NO, not a challenge.
			mu.Lock()
			refuse = 2
			mu.Unlock()
			r = h.raw()
			r.send(fmt.Sprintf("a1 LOGIN %s %q\r\n", testLogin, testPassword))
			if got := r.line(); !strings.HasPrefix(got, "a1 NO [AUTHORIZATIONFAILED] ") {
				t.Fatalf("LOGIN = %q", got)
			}
		})
	}
}

// TestStateHasNoClearTokens reads every file of the state directory after
// rotations and checks no refresh token, access token or password is there.
func TestStateHasNoClearTokens(t *testing.T) {
	h := newHarness(t, harnessOptions{rotate: true, accessTTL: time.Minute})
	for i := 0; i < 3; i++ {
		h.login()
	}
	secrets := append([]string{testPassword, h.tokens.CurrentRefreshToken(testMailbox)}, h.grants...)
	var files int
	err := filepath.WalkDir(h.cfg.Server.StateDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		info, _ := d.Info()
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", path, info.Mode().Perm())
		}
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString([]byte(s)))) {
				t.Errorf("%s holds a secret in clear", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files != 1 {
		t.Errorf("state directory holds %d files, want the one record", files)
	}
	// Nor do the logs.
	logs := h.logs.String()
	for _, s := range append(secrets, testSecret) {
		if strings.Contains(logs, s) {
			t.Error("the log contains a secret")
		}
	}
}

// TestLargeMessage: a 20 MB message round-trips byte for byte.
func TestLargeMessage(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	body := make([]byte, 20<<20)
	header := message("large", "")
	copy(body, header)
	payload := body[len(header):]
	rand.Read(payload)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range payload {
		payload[i] = alphabet[payload[i]%64]
		if i%78 == 76 {
			payload[i] = '\r'
		} else if i%78 == 77 {
			payload[i] = '\n'
		}
	}
	c := h.login()
	uid := appendMessage(t, c, body)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	fetch := func(c *imapclient.Client) []byte {
		msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		if err != nil || len(msgs) != 1 {
			t.Fatalf("FETCH = %d messages, %v", len(msgs), err)
		}
		for _, b := range msgs[0].BodySection {
			return b.Bytes
		}
		return nil
	}
	if got := fetch(c); !bytes.Equal(got, body) {
		t.Fatalf("through the proxy: got %d bytes (sha256 %x), want %d (sha256 %x)",
			len(got), sha256.Sum256(got), len(body), sha256.Sum256(body))
	}
	d := h.direct(nil)
	if _, err := d.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if got := fetch(d); !bytes.Equal(got, body) {
		t.Fatal("directly: the upstream holds different bytes")
	}
}

// allMessages is the sequence set 1:*.
func allMessages() imap.SeqSet {
	var s imap.SeqSet
	s.AddRange(1, 0)
	return s
}
