package proxy_test

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

func (h *harness) localTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: h.localCA, ServerName: "localhost"}
}

// TestLocalTLS: STARTTLS on the plain listener and implicit TLS on its own
// listener both carry a collector's session.
func TestLocalTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{localTLS: true})
	t.Run("STARTTLS", func(t *testing.T) {
		r := h.raw()
		r.send("a1 CAPABILITY\r\n")
		if caps := r.until("a1 ")[0]; !strings.Contains(caps, " STARTTLS") || !strings.Contains(caps, "AUTH=PLAIN") {
			t.Errorf("loopback listener with a certificate: %q", caps)
		}
		c, err := imapclient.DialStartTLS(h.addr, &imapclient.Options{TLSConfig: h.localTLSConfig()})
		if err != nil {
			t.Fatalf("STARTTLS: %v", err)
		}
		defer c.Close()
		if err := c.Login(testLogin, testPassword).Wait(); err != nil {
			t.Fatalf("LOGIN after STARTTLS: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("implicit", func(t *testing.T) {
		addr := h.serveOn("127.0.0.1:0", true)
		c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: h.localTLSConfig()})
		if err != nil {
			t.Fatalf("implicit TLS: %v", err)
		}
		defer c.Close()
		if c.Caps().Has("STARTTLS") {
			t.Error("STARTTLS offered inside TLS")
		}
		if err := c.Login(testLogin, testPassword).Wait(); err != nil {
			t.Fatalf("LOGIN over implicit TLS: %v", err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("plaintext after STARTTLS", func(t *testing.T) {
		r := h.raw()
		// Pipelined plaintext would be taken as protected (injection).
		r.send("a1 STARTTLS\r\na2 LOGIN collector x\r\n")
		if got := r.line(); !strings.HasPrefix(got, "* BYE") {
			t.Fatalf("got %q, want * BYE", got)
		}
		if !r.closed() {
			t.Error("session not closed")
		}
	})
}

// TestPlaintextRefusedOffLoopback: on a listener that is not loopback,
// LOGIN and AUTHENTICATE PLAIN need STARTTLS first, and a refused attempt
// contacts nobody.
func TestPlaintextRefusedOffLoopback(t *testing.T) {
	h := newHarness(t, harnessOptions{localTLS: true})
	addr := h.serveOn("0.0.0.0:0", false) // dialled on 127.0.0.1 only
	requests, conns := h.tokens.Requests(), h.upstream.Connections()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	caps := c.Caps()
	if !caps.Has("LOGINDISABLED") || !caps.Has("STARTTLS") || caps.Has("AUTH=PLAIN") {
		t.Errorf("capabilities off loopback = %v", caps)
	}
	wantNO(t, "LOGIN before STARTTLS", c.Login(testLogin, testPassword).Wait(), "PRIVACYREQUIRED")
	wantNO(t, "AUTHENTICATE before STARTTLS", c.Authenticate(sasl.NewPlainClient("", testLogin, testPassword)), "PRIVACYREQUIRED")
	if h.tokens.Requests() != requests || h.upstream.Connections() != conns {
		t.Error("a refused plaintext login reached the token endpoint or the upstream")
	}
	tc, err := imapclient.DialStartTLS(addr, &imapclient.Options{TLSConfig: h.localTLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if err := tc.Login(testLogin, testPassword).Wait(); err != nil {
		t.Fatalf("LOGIN after STARTTLS off loopback: %v", err)
	}
}

// TestMetrics reads the Prometheus text after a good and a bad login.
func TestMetrics(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	c := h.login()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	wantNO(t, "wrong password", h.dial().Login(testLogin, "wrong").Wait(), "AUTHENTICATIONFAILED")
	// A pedantic registry also checks Describe against Collect.
	out, err := testutil.CollectAndFormat(h.srv, expfmt.TypeTextPlain, "imap_oauth_proxy_logins_total",
		"imap_oauth_proxy_sessions_total", "imap_oauth_proxy_sessions_active", "imap_oauth_proxy_upstream_dial_seconds",
		"imap_oauth_proxy_token_refreshes_total", "imap_oauth_proxy_relayed_bytes_total",
		"imap_oauth_proxy_account_last_login_ok", "imap_oauth_proxy_account_needs_authorization")
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{
		// The wrong password was the account's last login.
		`imap_oauth_proxy_account_last_login_ok{login="` + testLogin + `"} 0` + "\n",
		`imap_oauth_proxy_account_needs_authorization{login="` + testLogin + `"} 0` + "\n",
		`imap_oauth_proxy_logins_total{outcome="OK",protocol="imap"} 1` + "\n",
		`imap_oauth_proxy_logins_total{outcome="AUTHENTICATIONFAILED",protocol="imap"} 1` + "\n",
		`imap_oauth_proxy_logins_total{outcome="UNAVAILABLE",protocol="imap"} 0` + "\n",
		`imap_oauth_proxy_sessions_total{protocol="imap"} 2` + "\n",
		`imap_oauth_proxy_sessions_active 2` + "\n",
		`imap_oauth_proxy_upstream_dial_seconds_count 1` + "\n",
		`imap_oauth_proxy_upstream_dial_seconds_bucket{le="+Inf"} 1` + "\n",
		`imap_oauth_proxy_token_refreshes_total{outcome="OK"} 1` + "\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	// The relay counts bytes once written, so the collector may read an
	// answer before its bytes are counted: end the sessions (Close waits
	// for them) before reading the byte counts.
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	h.srv.Close()
	out, err = testutil.CollectAndFormat(h.srv, expfmt.TypeTextPlain, "imap_oauth_proxy_relayed_bytes_total")
	if err != nil {
		t.Fatal(err)
	}
	text = string(out)
	for _, dir := range []string{"to_upstream", "to_client"} {
		re := regexp.MustCompile(`imap_oauth_proxy_relayed_bytes_total\{direction="` + dir + `"\} ([1-9][0-9]*)\n`)
		if !re.MatchString(text) {
			t.Errorf("no relayed bytes %s:\n%s", dir, text)
		}
	}
	// The per-account times, in a registry of their own.
	out, err = testutil.CollectAndFormat(h.srv, expfmt.TypeTextPlain,
		"imap_oauth_proxy_account_access_token_expiry_timestamp_seconds",
		"imap_oauth_proxy_account_last_refresh_timestamp_seconds", "imap_oauth_proxy_account_last_login_timestamp_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"access_token_expiry", "last_refresh", "last_login"} {
		re := regexp.MustCompile(`imap_oauth_proxy_account_` + name + `_timestamp_seconds\{login="` + testLogin + `"\} (\S+)\n`)
		m := re.FindStringSubmatch(string(out))
		if m == nil {
			t.Errorf("no %s of %s:\n%s", name, testLogin, out)
			continue
		}
		if v, err := strconv.ParseFloat(m[1], 64); err != nil || math.Abs(v-float64(time.Now().Unix())) > 2*3600 {
			t.Errorf("%s of %s = %s, not within 2 h of now", name, testLogin, m[1])
		}
	}
}

// TestTraceHasNoSecrets: with the debug protocol trace on, a whole set of
// sessions (LOGIN, AUTHENTICATE PLAIN both ways, a wrong password, token
// rotation) logs every line but none of the secrets.
func TestTraceHasNoSecrets(t *testing.T) {
	h := newHarness(t, harnessOptions{rotate: true, accessTTL: time.Minute})
	h.login()
	if err := h.dial().Authenticate(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
		t.Fatal(err)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testLogin + "\x00" + testPassword))
	r := h.raw()
	r.send("a1 AUTHENTICATE PLAIN\r\n")
	r.line()
	r.send(plain + "\r\n")
	if got := r.line(); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("AUTHENTICATE = %q", got)
	}
	r = h.raw()
	r.send(fmt.Sprintf("a1 LOGIN %s {%d}\r\n", testLogin, len("wrong-"+testPassword)))
	r.line()
	r.send("wrong-" + testPassword + "\r\n")
	r.line()

	logs := h.logs.String()
	for _, want := range []string{"dir=C", "dir=S", "dir=U>", "dir=U<", "LOGIN [redacted] [redacted]", "AUTHENTICATE XOAUTH2 [redacted]"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the trace lacks %q", want)
		}
	}
	secrets := append([]string{testPassword, testSecret, plain, h.tokens.CurrentRefreshToken(testMailbox)}, h.grants...)
	for _, tok := range h.accessTokens() {
		ir := "user=" + testMailbox + "\x01auth=Bearer " + tok + "\x01\x01"
		secrets = append(secrets, tok, base64.StdEncoding.EncodeToString([]byte(ir)))
	}
	if len(secrets) < 8 {
		t.Fatalf("only %d secrets to look for", len(secrets))
	}
	for i, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("secret #%d appears in the log", i)
		}
	}
}

// wantNO fails the test unless err is a tagged NO with code.
func wantNO(t testing.TB, what string, err error, code imap.ResponseCode) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Type != imap.StatusResponseTypeNo || ie.Code != code {
		t.Errorf("%s: got %v, want NO [%s]", what, err, code)
	}
}
