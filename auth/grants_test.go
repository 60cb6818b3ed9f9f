package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

const (
	grantClientID     = "11111111-2222-3333-4444-555555555555"
	grantClientSecret = "grant-secret-canary-9e1f"
	sharedMailbox     = "helpdesk@contoso.test"
	operator          = "operator@contoso.test"
	msIMAPScope       = "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access"
)

// tokenServer starts an authtest server serving grants, closed with the
// test.
func tokenServer(t *testing.T, opts authtest.Options) *authtest.Server {
	t.Helper()
	if opts.ClientID == "" {
		opts.ClientID = grantClientID
	}
	s := authtest.NewServer(opts)
	t.Cleanup(s.Close)
	return s
}

// account parses a mapping file with one provider "p" of type typ whose
// endpoints are s's, plus the provider lines in extra, and one account
// "collector" for mailbox with grant, and returns the account.
func account(t *testing.T, s *authtest.Server, typ, grant, mailbox, extra string) *config.Account {
	t.Helper()
	text := fmt.Sprintf(`[server]
state_dir = "state"

[providers.p]
type = %q
auth_url = %q
token_url = %q
device_auth_url = %q
client_id = %q
imap_address = "127.0.0.1:993"
%s
[accounts.collector]
provider = "p"
mailbox = %q
grant = %q
`, typ, s.AuthorizeURL(), s.TokenURL(), s.DeviceAuthURL(), grantClientID, extra, mailbox, grant)
	cfg, err := config.Parse([]byte(text), t.TempDir())
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	return cfg.Accounts["collector"]
}

// browser follows redirects like a browser and returns the last page.
func browser(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("browser GET: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// TestLoopbackCloseFinishesThePage closes the listener the moment the
// result is in, as authorize does, while the browser still waits for its
// page: the browser must get the page, not a dropped connection.
func TestLoopbackCloseFinishesThePage(t *testing.T) {
	s := tokenServer(t, authtest.Options{
		Flavor: authtest.Microsoft, ClientSecret: grantClientSecret, RedirectURI: "http://127.0.0.1",
		Grants: []string{authtest.GrantAuthorizationCode},
	})
	s.SignIn(operator)
	acct := account(t, s, "microsoft", "refresh_token", operator, fmt.Sprintf("client_secret = %q\n", grantClientSecret))
	for i := range 20 {
		l, err := ListenLoopback(t.Context(), acct)
		if err != nil {
			t.Fatal(err)
		}
		type page struct {
			body string
			err  error
		}
		got := make(chan page, 1)
		go func() {
			resp, err := http.Get(l.Flow.URL)
			if err != nil {
				got <- page{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			got <- page{string(body), err}
		}()
		if _, err := l.Wait(t.Context()); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		p := <-got
		if p.err != nil || !strings.Contains(p.body, "close this window") {
			// The URL in a *url.Error carries the authorization code.
			var ue *url.Error
			if errors.As(p.err, &ue) {
				p.err = ue.Err
			}
			t.Fatalf("round %d: browser got %q, %v; want the closing page", i, p.body, p.err)
		}
	}
}

// noFollow GETs u without following a redirect and returns Location.
func noFollow(t *testing.T, u string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("GET %s: %d, want a redirect", u, resp.StatusCode)
	}
	return resp.Header.Get("Location")
}

func TestLoopbackFlow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		flavor authtest.Flavor
		typ    string
		scope  string
		want   map[string]string // extra authorize parameters
	}{
		{"microsoft", authtest.Microsoft, "microsoft", msIMAPScope, map[string]string{"prompt": "select_account"}},
		{"google", authtest.Google, "google", "https://mail.google.com/", map[string]string{"access_type": "offline", "prompt": "consent"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tokenServer(t, authtest.Options{
				Flavor: tc.flavor, ClientSecret: grantClientSecret, RedirectURI: "http://127.0.0.1",
				Grants: []string{authtest.GrantAuthorizationCode},
			})
			s.SignIn(operator)
			acct := account(t, s, tc.typ, "refresh_token", sharedMailbox, fmt.Sprintf("client_secret = %q\n", grantClientSecret))
			ctx := t.Context()
			l, err := ListenLoopback(ctx, acct)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if !strings.HasPrefix(l.Flow.RedirectURL, "http://127.0.0.1:") || !strings.HasSuffix(l.Flow.RedirectURL, "/") {
				t.Errorf("redirect URL %q, want http://127.0.0.1:PORT/", l.Flow.RedirectURL)
			}

			// A request with another state is refused and does not end
			// the wait.
			if code, _ := browser(t, l.Flow.RedirectURL+"?code=forged&state=forged"); code != http.StatusBadRequest {
				t.Errorf("forged redirect: status %d, want 400", code)
			}

			status, page := browser(t, l.Flow.URL)
			if status != http.StatusOK || !strings.Contains(page, "close this window") {
				t.Errorf("browser ended on %d %q", status, page)
			}
			tok, err := l.Wait(ctx)
			if err != nil {
				t.Fatalf("Wait: %v", err)
			}
			if tok.RefreshToken == "" || tok.RefreshToken != s.CurrentRefreshToken(operator) {
				t.Errorf("refresh token %q is not the operator's current one", tok.RefreshToken)
			}
			// The operator's authorization opens a shared mailbox only
			// once the operator has access to it.
			if err := s.Validate(sharedMailbox, tok.AccessToken); err == nil {
				t.Error("the operator's token opened the shared mailbox without access")
			}
			s.Share(sharedMailbox, operator)
			if err := s.Validate(sharedMailbox, tok.AccessToken); err != nil {
				t.Errorf("the operator's token does not open the shared mailbox: %v", err)
			}

			// What went over the wire.
			auths := s.AuthorizeRequests()
			forms := s.TokenRequests(authtest.GrantAuthorizationCode)
			if len(auths) != 1 || len(forms) != 1 {
				t.Fatalf("%d authorize requests and %d code redemptions, want 1 each", len(auths), len(forms))
			}
			q, form := auths[0], forms[0]
			for k, v := range map[string]string{
				"response_type": "code", "client_id": grantClientID, "scope": tc.scope,
				"redirect_uri": l.Flow.RedirectURL, "code_challenge_method": "S256",
			} {
				if q.Get(k) != v {
					t.Errorf("authorize %s = %q, want %q", k, q.Get(k), v)
				}
			}
			for k, v := range tc.want {
				if q.Get(k) != v {
					t.Errorf("authorize %s = %q, want %q", k, q.Get(k), v)
				}
			}
			if len(q.Get("state")) < 32 {
				t.Errorf("state %q is too short to be unguessable", q.Get("state"))
			}
			verifier := form.Get("code_verifier")
			if len(verifier) < 43 || oauth2.S256ChallengeFromVerifier(verifier) != q.Get("code_challenge") {
				t.Errorf("code_verifier %q does not match code_challenge %q", verifier, q.Get("code_challenge"))
			}
			for k, v := range map[string]string{
				"grant_type": "authorization_code", "redirect_uri": l.Flow.RedirectURL,
				"client_id": grantClientID, "client_secret": grantClientSecret,
			} {
				if form.Get(k) != v {
					t.Errorf("token request %s = %q, want %q", k, form.Get(k), v)
				}
			}

			// The page of a second visit says it is over.
			if code, _ := browser(t, l.Flow.RedirectURL+"?"+url.Values{"code": {"again"}, "state": {q.Get("state")}}.Encode()); code != http.StatusGone {
				t.Errorf("second redirect: status %d, want 410", code)
			}
		})
	}
}

func TestLoopbackDenied(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true,
		Grants: []string{authtest.GrantAuthorizationCode}})
	s.DenyNext("access_denied", "AADSTS65004: User declined to consent to access the app.")
	acct := account(t, s, "microsoft", "refresh_token", sharedMailbox, "")
	l, err := ListenLoopback(t.Context(), acct)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, page := browser(t, l.Flow.URL)
	if !strings.Contains(page, "failed") {
		t.Errorf("page %q does not say the authorization failed", page)
	}
	_, err = l.Wait(t.Context())
	var ae *AuthorizeError
	if !errors.As(err, &ae) || ae.Code != "access_denied" || !strings.Contains(err.Error(), "declined") {
		t.Errorf("Wait = %v, want an access_denied AuthorizeError", err)
	}
	if n := len(s.TokenRequests(authtest.GrantAuthorizationCode)); n != 0 {
		t.Errorf("%d code redemptions after a denial", n)
	}
}

// TestExternalFlow is the -external variant: the browser runs elsewhere,
// and the operator pastes the URL it was redirected to.
func TestExternalFlow(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true,
		Grants: []string{authtest.GrantAuthorizationCode}})
	acct := account(t, s, "microsoft", "refresh_token", sharedMailbox, "")
	const redirect = "http://localhost:38291/"
	flow, err := NewCodeFlow(acct, redirect)
	if err != nil {
		t.Fatal(err)
	}
	location := noFollow(t, flow.URL)
	if !strings.HasPrefix(location, redirect+"?") {
		t.Fatalf("redirected to %q", location)
	}
	forged, _ := url.Parse(location)
	fq := forged.Query()
	fq.Set("state", "x"+fq.Get("state"))
	forged.RawQuery = fq.Encode()
	if _, err := flow.ParseRedirect(forged.String()); !errors.Is(err, ErrStateMismatch) {
		t.Errorf("ParseRedirect with another state: %v, want ErrStateMismatch", err)
	}
	// The pasted URL may come with blanks around it, or as just the query.
	code, err := flow.ParseRedirect("  " + location[strings.IndexByte(location, '?')+1:] + "\n")
	if err != nil {
		t.Fatalf("ParseRedirect: %v", err)
	}
	tok, err := flow.Exchange(t.Context(), code)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if tok.RefreshToken != s.CurrentRefreshToken(authtest.DefaultSignedIn) {
		t.Error("no valid refresh token")
	}
	form := s.TokenRequests(authtest.GrantAuthorizationCode)[0]
	if form.Has("client_secret") {
		t.Error("a public client sent a client secret")
	}
	// A code is redeemed once.
	if _, err := flow.Exchange(t.Context(), code); err == nil || !strings.Contains(err.Error(), "AADSTS54005") {
		t.Errorf("second redemption: %v, want AADSTS54005", err)
	}
}

// TestPKCEIsChecked redeems a code with another flow's verifier.
func TestPKCEIsChecked(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true,
		Grants: []string{authtest.GrantAuthorizationCode}})
	acct := account(t, s, "microsoft", "refresh_token", sharedMailbox, "")
	const redirect = "http://localhost:38292/"
	a, _ := NewCodeFlow(acct, redirect)
	b, _ := NewCodeFlow(acct, redirect)
	code, err := a.ParseRedirect(noFollow(t, a.URL))
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Exchange(t.Context(), code)
	if KindOf(err) != AuthorizationFailed || !strings.Contains(err.Error(), "AADSTS501481") {
		t.Errorf("redeeming with the wrong verifier: %v", err)
	}
}

func TestDeviceFlow(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true, DeviceInterval: 1,
		Grants: []string{authtest.GrantDeviceCode}})
	acct := account(t, s, "microsoft", "refresh_token", sharedMailbox, "")
	var shown *oauth2.DeviceAuthResponse
	tok, err := DeviceFlow(t.Context(), acct, func(da *oauth2.DeviceAuthResponse) {
		shown = da
		if err := s.ApproveDevice(da.UserCode, operator); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatalf("DeviceFlow: %v", err)
	}
	if shown == nil || shown.VerificationURI == "" || shown.UserCode == "" {
		t.Fatalf("shown %+v", shown)
	}
	if tok.RefreshToken != s.CurrentRefreshToken(operator) {
		t.Error("no valid refresh token")
	}
	forms := s.TokenRequests(authtest.GrantDeviceCode)
	if len(forms) == 0 {
		t.Fatal("no device code redemption")
	}
	f := forms[len(forms)-1]
	if f.Get("client_id") != grantClientID || f.Get("device_code") == "" || f.Has("client_secret") {
		t.Errorf("device code redemption form %v", f)
	}

	// Declined.
	_, err = DeviceFlow(t.Context(), acct, func(da *oauth2.DeviceAuthResponse) { s.DenyDevice(da.UserCode) })
	if err == nil || !strings.Contains(MessageOf(err, ""), "declined") {
		t.Errorf("declined device flow: %v", err)
	}
}

func TestDeviceFlowRefusedForGoogle(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Google, Grants: []string{authtest.GrantDeviceCode}})
	acct := account(t, s, "google", "refresh_token", "user@gmail.test", fmt.Sprintf("client_secret = %q\n", grantClientSecret))
	_, err := DeviceFlow(t.Context(), acct, func(*oauth2.DeviceAuthResponse) { t.Error("show called") })
	if !errors.Is(err, ErrGoogleDevice) {
		t.Errorf("DeviceFlow for google: %v", err)
	}
	if s.Requests() != 0 {
		t.Error("DeviceFlow for google reached the token endpoint")
	}
	// Why: Google's device endpoint refuses Gmail's scope, which
	// authtest's TestDeviceEndpointGoogleRefusesGmailScope holds its
	// double to.
}

func TestClientCredentials(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: grantClientSecret,
		Grants: []string{authtest.GrantClientCredentials}})
	acct := account(t, s, "microsoft", "client_credentials", sharedMailbox,
		fmt.Sprintf("tenant = \"contoso.onmicrosoft.com\"\nclient_secret = %q\n", grantClientSecret))
	tok, err := AppToken(t.Context(), acct)
	if err != nil {
		t.Fatalf("AppToken: %v", err)
	}
	if tok.RefreshToken != "" {
		t.Error("client credentials came with a refresh token")
	}
	form := s.TokenRequests(authtest.GrantClientCredentials)[0]
	for k, v := range map[string]string{
		"grant_type": "client_credentials", "client_id": grantClientID, "client_secret": grantClientSecret,
		"scope": "https://outlook.office365.com/.default",
	} {
		if form.Get(k) != v {
			t.Errorf("token request %s = %q, want %q", k, form.Get(k), v)
		}
	}
	// The app opens the mailbox once Exchange lets it (Add-MailboxPermission).
	if s.Validate(sharedMailbox, tok.AccessToken) == nil {
		t.Error("an app token opened a mailbox without permission")
	}
	s.AllowApp(sharedMailbox)
	if err := s.Validate(sharedMailbox, tok.AccessToken); err != nil {
		t.Errorf("app token: %v", err)
	}

	// A wrong secret names the fix.
	bad := account(t, s, "microsoft", "client_credentials", sharedMailbox,
		"tenant = \"contoso.onmicrosoft.com\"\nclient_secret = \"wrong\"\n")
	_, err = AppToken(t.Context(), bad)
	msg := MessageOf(err, "")
	if KindOf(err) != AuthorizationFailed || !strings.Contains(msg, "client secret is wrong") ||
		!strings.Contains(msg, "AADSTS7000215") || !strings.Contains(msg, "providers.p.client_secret") {
		t.Errorf("wrong secret: %q", msg)
	}
}

// serviceAccount registers a service account at s and writes its key file.
func serviceAccount(t *testing.T, s *authtest.Server, email string) (path, clientID string) {
	t.Helper()
	key, clientID, err := s.NewServiceAccount(email)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "sa.json")
	if err := os.WriteFile(path, key, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, clientID
}

func TestServiceAccount(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Google, Grants: []string{authtest.GrantJWTBearer}})
	const email = "collector@proj.iam.gserviceaccount.test"
	keyFile, clientID := serviceAccount(t, s, email)
	acct := account(t, s, "google", "service_account", sharedMailbox, fmt.Sprintf("service_account_file = %q\n", keyFile))

	// Without domain-wide delegation Google refuses, and the message says
	// where to add it.
	_, err := AppToken(t.Context(), acct)
	if msg := MessageOf(err, ""); KindOf(err) != AuthorizationFailed || !strings.Contains(msg, "domain-wide delegation") ||
		!strings.Contains(msg, "unauthorized_client") {
		t.Errorf("without delegation: %v", err)
	}

	s.DelegateDomainWide(clientID, "https://mail.google.com/")
	tok, err := AppToken(t.Context(), acct)
	if err != nil {
		t.Fatalf("AppToken: %v", err)
	}
	if err := s.Validate(sharedMailbox, tok.AccessToken); err != nil {
		t.Errorf("the token does not open the subject's mailbox: %v", err)
	}

	// The assertion, as Google reads it.
	forms := s.TokenRequests(authtest.GrantJWTBearer)
	form := forms[len(forms)-1]
	if form.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" || form.Has("client_id") || form.Has("client_secret") {
		t.Errorf("JWT bearer form %v", form)
	}
	parts := strings.Split(form.Get("assertion"), ".")
	if len(parts) != 3 {
		t.Fatalf("assertion has %d parts", len(parts))
	}
	var header, claims map[string]any
	for i, v := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil || json.Unmarshal(b, v) != nil {
			t.Fatalf("assertion part %d does not decode", i)
		}
	}
	if header["alg"] != "RS256" || header["kid"] == "" {
		t.Errorf("header %v", header)
	}
	for k, v := range map[string]any{"iss": email, "sub": sharedMailbox, "scope": "https://mail.google.com/", "aud": s.TokenURL()} {
		if claims[k] != v {
			t.Errorf("claim %s = %v, want %v", k, claims[k], v)
		}
	}
	if exp, iat := claims["exp"].(float64), claims["iat"].(float64); exp-iat > 3600 || exp <= iat {
		t.Errorf("exp %v iat %v", exp, iat)
	}

	// A key that was replaced (deleted in the console) is refused.
	serviceAccount(t, s, email) // a new key for the same account
	_, err = AppToken(t.Context(), acct)
	if msg := MessageOf(err, ""); !strings.Contains(msg, "service account key") || !strings.Contains(msg, "service_account_file") {
		t.Errorf("replaced key: %v", err)
	}
}

func TestServiceAccountKeyErrors(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Google, Grants: []string{authtest.GrantJWTBearer}})
	dir := t.TempDir()
	for name, content := range map[string]string{
		"not-json":   "private_key canary-4c1d",
		"wrong-type": `{"type":"authorized_user","client_email":"a@b","private_key":"canary-4c1d"}`,
		"bad-key":    `{"type":"service_account","client_email":"a@b","private_key":"canary-4c1d"}`,
	} {
		path := filepath.Join(dir, name+".json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		acct := account(t, s, "google", "service_account", sharedMailbox, fmt.Sprintf("service_account_file = %q\n", path))
		_, err := AppToken(t.Context(), acct)
		if KindOf(err) != AuthorizationFailed || !strings.Contains(err.Error(), "service_account_file") {
			t.Errorf("%s: %v", name, err)
		}
		if strings.Contains(err.Error(), "canary-4c1d") {
			t.Errorf("%s: the error quotes the key file: %v", name, err)
		}
	}
	if s.Requests() != 0 {
		t.Error("a broken key file reached the token endpoint")
	}
}

func newTestManager(t *testing.T) (*Manager, *tokenstore.Store) {
	t.Helper()
	store, err := tokenstore.New(t.TempDir(), &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(t.Context(), &ManagerOptions{Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return m, store
}

func TestManagerAppOnlyGrants(t *testing.T) {
	ms := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, ClientSecret: grantClientSecret,
		Grants: []string{authtest.GrantClientCredentials}})
	ms.AllowApp(sharedMailbox)
	msCert := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, Grants: []string{authtest.GrantClientCredentials}})
	msCert.AllowApp(sharedMailbox)
	certPEM, keyPEM, err := msCert.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	certLines, _, _ := writeCertificate(t, certPEM, keyPEM)
	google := tokenServer(t, authtest.Options{Flavor: authtest.Google, Grants: []string{authtest.GrantJWTBearer}})
	keyFile, clientID := serviceAccount(t, google, "sa@proj.iam.gserviceaccount.test")
	google.DelegateDomainWide(clientID, "https://mail.google.com/")

	for _, tc := range []struct {
		name   string
		acct   *config.Account
		tokens *authtest.Server
	}{
		{"client_credentials", account(t, ms, "microsoft", "client_credentials", sharedMailbox,
			fmt.Sprintf("tenant = \"contoso.onmicrosoft.com\"\nclient_secret = %q\n", grantClientSecret)), ms},
		{"client_credentials with a certificate", account(t, msCert, "microsoft", "client_credentials", sharedMailbox, certLines), msCert},
		{"service_account", account(t, google, "google", "service_account", sharedMailbox,
			fmt.Sprintf("service_account_file = %q\n", keyFile)), google},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, store := newTestManager(t)
			const password = "app-pw"
			// authorize stores a record without a refresh token: it
			// proves the local password only.
			if _, err := store.Create("collector", password, tokenstore.Secret{}); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Unlock(context.Background(), tc.acct, "wrong"); KindOf(err) != AuthenticationFailed {
				t.Errorf("wrong password: %v", err)
			}
			before := tc.tokens.Requests()
			a, err := m.Unlock(context.Background(), tc.acct, password)
			if err != nil {
				t.Fatalf("Unlock: %v", err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			tok, err := a.Token(ctx)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if err := tc.tokens.Validate(sharedMailbox, tok.AccessToken); err != nil {
				t.Errorf("token does not open the mailbox: %v", err)
			}
			// Cached until the margin, then fetched anew after a refusal.
			if again, err := a.Token(ctx); err != nil || again.AccessToken != tok.AccessToken {
				t.Errorf("second Token: %v, same token %v", err, again != nil && again.AccessToken == tok.AccessToken)
			}
			a.Refused(tok)
			if fresh, err := a.Token(ctx); err != nil || fresh.AccessToken == tok.AccessToken {
				t.Errorf("Token after Refused: %v", err)
			}
			if n := tc.tokens.Requests() - before; n != 2 || a.Refreshes() != 2 {
				t.Errorf("%d token requests, %d refreshes; want 2", n, a.Refreshes())
			}
		})
	}
}

func TestManagerRefreshTokenRecordWithoutToken(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, PublicClient: true})
	acct := account(t, s, "microsoft", "refresh_token", sharedMailbox, "")
	m, store := newTestManager(t)
	if _, err := store.Create("collector", "pw", tokenstore.Secret{}); err != nil {
		t.Fatal(err)
	}
	_, err := m.Unlock(context.Background(), acct, "pw")
	if KindOf(err) != AuthorizationFailed || !strings.Contains(MessageOf(err, ""), "imap-oauth-proxy authorize collector") {
		t.Errorf("Unlock of a record without a refresh token: %v", err)
	}
	if s.Requests() != 0 {
		t.Error("reached the token endpoint")
	}
}

// TestClassifyTokenError checks the operator-facing text for the
// provider errors the issue tracker lists, built as x/oauth2 returns them.
func TestClassifyTokenError(t *testing.T) {
	ms := &config.Provider{Name: "contoso", Type: "microsoft", Tenant: "contoso.onmicrosoft.com", ClientID: grantClientID}
	gg := &config.Provider{Name: "gmail", Type: "google", ClientID: "123.apps.googleusercontent.test"}
	msErr := func(status int, code string, aadsts int, desc string) error {
		full := fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: 0000\r\nCorrelation ID: 1111\r\nTimestamp: 2024-01-01 00:00:00Z", aadsts, desc)
		body, _ := json.Marshal(map[string]any{"error": code, "error_description": full, "error_codes": []int{aadsts}})
		return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, Body: body, ErrorCode: code, ErrorDescription: full}
	}
	// x/oauth2's JWT grant fills only Body.
	googleJWT := func(status int, code, desc string) error {
		body, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
		return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, Body: body}
	}
	googleErr := func(status int, code, desc string) error {
		return &oauth2.RetrieveError{Response: &http.Response{StatusCode: status}, ErrorCode: code, ErrorDescription: desc}
	}
	for _, tc := range []struct {
		name  string
		p     *config.Provider
		grant config.Grant
		err   error
		kind  Kind
		want  []string
	}{
		{"consent required", ms, "refresh_token", msErr(400, "invalid_grant", 65001, "The user or administrator has not consented to use the application with ID 'x'."),
			AuthorizationFailed, []string{"admin consent missing", "Grant admin consent", "AADSTS65001", "authorize collector"}},
		{"consent required app-only", ms, "client_credentials", msErr(400, "invalid_grant", 65001, "not consented"),
			AuthorizationFailed, []string{"admin consent missing", "check collector"}},
		{"invalid secret", ms, "refresh_token", msErr(401, "invalid_client", 7000215, "Invalid client secret provided."),
			AuthorizationFailed, []string{"client secret is wrong", "Value (not its Secret ID)", "providers.contoso.client_secret"}},
		{"expired secret", ms, "client_credentials", msErr(401, "invalid_client", 7000222, "The provided client secret keys for app 'x' are expired."),
			AuthorizationFailed, []string{"client secret has expired", "Certificates & secrets"}},
		{"revoked", ms, "refresh_token", msErr(400, "invalid_grant", 50173, "The provided grant has expired due to it being revoked."),
			AuthorizationFailed, []string{"authorization revoked", "AADSTS50173", "run: imap-oauth-proxy authorize collector"}},
		{"grant invalid", ms, "refresh_token", msErr(400, "invalid_grant", 70000, "The provided grant is invalid."),
			AuthorizationFailed, []string{"AADSTS70000", "authorize collector"}},
		{"inactive", ms, "refresh_token", msErr(400, "invalid_grant", 70008, "The refresh token has expired due to inactivity."),
			AuthorizationFailed, []string{"expired", "AADSTS70008", "authorize collector"}},
		{"app not found", ms, "client_credentials", msErr(400, "unauthorized_client", 700016, "Application with identifier 'x' was not found."),
			AuthorizationFailed, []string{"not found in the tenant", grantClientID, "contoso.onmicrosoft.com"}},
		{"mfa", ms, "refresh_token", msErr(400, "invalid_grant", 50076, "Due to a configuration change made by your administrator, you must use multi-factor authentication."),
			AuthorizationFailed, []string{"multi-factor", "authorize collector"}},
		{"conditional access", ms, "refresh_token", msErr(400, "invalid_grant", 53003, "Access has been blocked by Conditional Access policies."),
			AuthorizationFailed, []string{"Conditional Access", "AADSTS53003"}},
		{"app-only refused, no advice", ms, "client_credentials", msErr(400, "invalid_grant", 99998, "Something new."),
			AuthorizationFailed, []string{"refused the client_credentials grant", "provider contoso's credentials", "check collector"}},
		{"unknown aadsts", ms, "refresh_token", msErr(400, "invalid_request", 99999, "Something new."),
			AuthorizationFailed, []string{"AADSTS99999: Something new."}},
		{"transient", ms, "refresh_token", msErr(503, "temporarily_unavailable", 90033, "A transient error has occurred."),
			Unavailable, []string{"retry later", "AADSTS90033"}},
		{"google revoked", gg, "refresh_token", googleErr(400, "invalid_grant", "Token has been expired or revoked."),
			AuthorizationFailed, []string{"expired or revoked", "Testing", "authorize collector"}},
		{"google wrong client", gg, "refresh_token", googleErr(401, "unauthorized_client", "Unauthorized"),
			AuthorizationFailed, []string{"another OAuth client"}},
		{"google invalid client", gg, "refresh_token", googleErr(401, "invalid_client", "The OAuth client was not found."),
			AuthorizationFailed, []string{"client_secret", "Credentials"}},
		{"google no delegation", gg, "service_account", googleJWT(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method."),
			AuthorizationFailed, []string{"domain-wide delegation", "https://mail.google.com/", "Manage Domain Wide Delegation"}},
		{"google bad signature", gg, "service_account", googleJWT(400, "invalid_grant", "Invalid JWT Signature."),
			AuthorizationFailed, []string{"service account key", "providers.gmail.service_account_file"}},
		{"google unknown subject", gg, "service_account", googleJWT(400, "invalid_grant", "Invalid email or User ID"),
			AuthorizationFailed, []string{"not a user", "accounts.collector.mailbox"}},
		{"google clock", gg, "service_account", googleJWT(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."),
			AuthorizationFailed, []string{"clock"}},
		{"google admin policy", gg, "refresh_token", googleErr(400, "admin_policy_enforced", "blocked"),
			AuthorizationFailed, []string{"Trusted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := classifyTokenError("collector", tc.p, tc.grant, tc.err)
			if e.Kind != tc.kind {
				t.Errorf("kind %v, want %v (%q)", e.Kind, tc.kind, e.Message)
			}
			for _, w := range tc.want {
				if !strings.Contains(e.Message, w) {
					t.Errorf("message %q lacks %q", e.Message, w)
				}
			}
			if strings.ContainsAny(e.Message, "\r\n") || len(e.Message) > 420 {
				t.Errorf("message is not one short line: %q", e.Message)
			}
			if strings.Contains(e.Message, "Trace ID") {
				t.Errorf("message carries Entra's trace lines: %q", e.Message)
			}
		})
	}
}
