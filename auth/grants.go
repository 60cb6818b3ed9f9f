package auth

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/jwt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// This file holds the grants that create an authorization (the operator
// runs them once, from the authorize command) and the token sources of the
// app-only grants. Every function that talks to a token endpoint takes the
// HTTP client from its ctx (oauth2.HTTPClient), or http.DefaultClient.

// ErrGoogleDevice is returned by DeviceFlow for a Google provider: Google's
// device flow does not grant Gmail's scope.
var ErrGoogleDevice = errors.New("device flow: Google does not grant Gmail's scope https://mail.google.com/ through it; " +
	"authorize in a browser (the default) or with -external")

// ErrStateMismatch is returned by CodeFlow.ParseRedirect for a redirect
// that does not carry the flow's state: it answers another authorization
// (or a forged one).
var ErrStateMismatch = errors.New("the redirect does not carry this authorization's state")

// ErrNoRefreshToken is returned when a delegated grant succeeds without a
// refresh token, so the proxy could not log in later.
var ErrNoRefreshToken = errors.New("the token endpoint returned no refresh token: the scopes must allow offline access " +
	"(Microsoft: offline_access; Google: access_type=offline)")

// --- authorization code with PKCE -----------------------------------------

// CodeFlow is one authorization code grant with PKCE S256 (RFC 7636) for an
// account: the URL to open in a browser, and the exchange of the code the
// browser brings back. It is not safe for concurrent use.
type CodeFlow struct {
	// URL is the authorization URL to open in a browser.
	URL string
	// RedirectURL is the redirect URI the flow announces, such as
	// "http://127.0.0.1:PORT/".
	RedirectURL string

	acct     *config.Account
	config   *oauth2.Config
	state    string
	verifier string
}

// NewCodeFlow starts an authorization code grant for acct whose redirect
// URI is redirectURL. Google providers ask for offline access and the
// consent screen (so that a refresh token is always issued), Microsoft
// providers for the account picker (so that the operator can choose the
// identity to authorize).
func NewCodeFlow(acct *config.Account, redirectURL string) (*CodeFlow, error) {
	p := acct.Provider
	if p.AuthURL == "" {
		return nil, fmt.Errorf("provider %s has no auth_url, so it cannot authorize in a browser", p.Name)
	}
	cfg := oauth2Config(p)
	cfg.Scopes = acct.Scopes() // the permissions of the protocols it lists
	cfg.RedirectURL = redirectURL
	f := &CodeFlow{
		RedirectURL: redirectURL,
		acct:        acct,
		config:      cfg,
		state:       oauth2.GenerateVerifier(), // 32 random bytes, base64url
		verifier:    oauth2.GenerateVerifier(),
	}
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(f.verifier)}
	switch p.Type {
	case "google":
		opts = append(opts, oauth2.AccessTypeOffline, oauth2.ApprovalForce)
	case "microsoft":
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "select_account"))
	}
	f.URL = cfg.AuthCodeURL(f.state, opts...)
	return f, nil
}

// ParseRedirect returns the authorization code from the URL the provider
// redirected the browser to: a whole URL, a path with a query, or just the
// query. It fails with ErrStateMismatch if the state is not the flow's,
// and with an *AuthorizeError if the provider answered with an error.
func (f *CodeFlow) ParseRedirect(redirected string) (string, error) {
	s := strings.TrimSpace(redirected)
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, '#'); i >= 0 {
		s = s[:i]
	}
	q, err := url.ParseQuery(s)
	if err != nil {
		return "", fmt.Errorf("the redirected URL's query does not parse: %w", err)
	}
	if q.Get("state") != f.state {
		return "", ErrStateMismatch
	}
	if e := q.Get("error"); e != "" {
		return "", &AuthorizeError{Code: e, Description: q.Get("error_description")}
	}
	code := q.Get("code")
	if code == "" {
		return "", errors.New("the redirected URL carries no code")
	}
	return code, nil
}

// Exchange redeems code, with the PKCE verifier, at the token endpoint and
// returns the tokens. It fails with an *Error explaining a refusal, or with
// ErrNoRefreshToken.
func (f *CodeFlow) Exchange(ctx context.Context, code string) (*oauth2.Token, error) {
	tok, err := f.config.Exchange(ctx, code, oauth2.VerifierOption(f.verifier))
	if err != nil {
		return nil, classifyTokenError(f.acct.Login, f.acct.Provider, config.GrantRefreshToken, err)
	}
	if tok.RefreshToken == "" {
		return nil, ErrNoRefreshToken
	}
	return tok, nil
}

// Loopback receives a CodeFlow's redirect on the loopback interface (RFC
// 8252 section 7.3): it listens on 127.0.0.1, announces
// http://127.0.0.1:PORT/ (the literal address, as section 8.3 recommends:
// "localhost" may resolve to ::1, where another local user can hold the
// same port and would receive the code and the state), redeems the code
// the browser brings and shows the browser a page saying how it went. It
// is safe for concurrent use.
type Loopback struct {
	// Flow is the authorization being waited for; open Flow.URL in a
	// browser.
	Flow *CodeFlow

	ctx     context.Context // for the exchange
	servers []*http.Server
	result  chan loopbackResult

	mu   sync.Mutex
	done bool
}

type loopbackResult struct {
	tok *oauth2.Token
	err error
}

// LoopbackRedirectURL is the redirect URI announced for a browser that
// comes back to port on this machine: the literal IPv4 loopback address
// (RFC 8252 section 8.3), never "localhost".
func LoopbackRedirectURL(port int) string { return fmt.Sprintf("http://127.0.0.1:%d/", port) }

// ListenLoopback starts listening for acct's authorization. ctx carries
// the HTTP client for the token endpoint. Close the Loopback when done.
func ListenLoopback(ctx context.Context, acct *config.Account) (*Loopback, error) {
	ln4, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening on the loopback interface: %w", err)
	}
	lns := []net.Listener{ln4}
	flow, err := NewCodeFlow(acct, LoopbackRedirectURL(ln4.Addr().(*net.TCPAddr).Port))
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, err
	}
	l := &Loopback{Flow: flow, ctx: ctx, result: make(chan loopbackResult, 1)}
	for _, ln := range lns {
		srv := &http.Server{Handler: l, ReadHeaderTimeout: 30 * time.Second}
		l.servers = append(l.servers, srv)
		go srv.Serve(ln)
	}
	return l, nil
}

// Wait waits until the browser has come back and the code is redeemed, or
// until ctx ends.
func (l *Loopback) Wait(ctx context.Context) (*oauth2.Token, error) {
	select {
	case r := <-l.result:
		return r.tok, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the browser to come back: %w", ctx.Err())
	}
}

// loopbackDrain bounds how long Close waits for the browser's page to be
// written after the result is in.
const loopbackDrain = 5 * time.Second

// Close stops listening. It lets a page being written finish first (for
// at most a few seconds), so the browser does not see a dropped connection
// in place of "you can close this window".
func (l *Loopback) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), loopbackDrain)
	defer cancel()
	var first error
	for _, srv := range l.servers {
		if err := srv.Shutdown(ctx); err != nil {
			err = errors.Join(err, srv.Close())
			if first == nil {
				first = fmt.Errorf("closing the loopback redirect listener: %w", err)
			}
		}
	}
	return first
}

// ServeHTTP handles the browser's request to the redirect URI.
func (l *Loopback) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	code, err := l.Flow.ParseRedirect(r.URL.RawQuery)
	if errors.Is(err, ErrStateMismatch) {
		// Not ours: keep waiting for the real answer.
		writePage(w, http.StatusBadRequest, "This is not the answer to the authorization imap-oauth-proxy is waiting for.")
		return
	}
	l.mu.Lock()
	if l.done {
		l.mu.Unlock()
		writePage(w, http.StatusGone, "This authorization is already complete. You can close this window.")
		return
	}
	l.done = true
	l.mu.Unlock()

	var tok *oauth2.Token
	if err == nil {
		tok, err = l.Flow.Exchange(l.ctx, code)
	}
	l.result <- loopbackResult{tok, err}
	if err != nil {
		writePage(w, http.StatusOK, "The authorization failed: "+MessageOf(err, err.Error())+
			". The terminal where imap-oauth-proxy authorize runs says more. You can close this window.")
		return
	}
	writePage(w, http.StatusOK, "imap-oauth-proxy received the authorization for "+l.Flow.acct.Login+
		". You can close this window and go back to the terminal.")
}

func writePage(w http.ResponseWriter, status int, text string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>imap-oauth-proxy</title></head>"+
		"<body><p>%s</p></body></html>\n", html.EscapeString(text))
}

// --- device authorization ---------------------------------------------------

// DeviceFlow runs the device authorization grant (RFC 8628) for acct: show
// is called once with the verification URI and the user code to enter
// there, then the token endpoint is polled until someone signs in,
// declines, or the code expires (or ctx ends). Google providers get
// ErrGoogleDevice.
func DeviceFlow(ctx context.Context, acct *config.Account, show func(*oauth2.DeviceAuthResponse)) (*oauth2.Token, error) {
	p := acct.Provider
	if p.Type == "google" {
		return nil, ErrGoogleDevice
	}
	if p.DeviceAuthURL == "" {
		return nil, fmt.Errorf("provider %s has no device_auth_url, so it cannot authorize with a device code", p.Name)
	}
	cfg := oauth2Config(p)
	cfg.Scopes = acct.Scopes()
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		return nil, classifyTokenError(acct.Login, p, config.GrantRefreshToken, err)
	}
	show(da)
	tok, err := cfg.DeviceAccessToken(ctx, da)
	if err != nil {
		var re *oauth2.RetrieveError
		switch {
		case errors.As(err, &re) && (re.ErrorCode == "authorization_declined" || re.ErrorCode == "access_denied"):
			return nil, &Error{Kind: AuthorizationFailed, Err: err, Message: "the sign-in was declined"}
		case errors.As(err, &re) && re.ErrorCode == "expired_token",
			errors.Is(err, context.DeadlineExceeded) && !da.Expiry.IsZero() && !time.Now().Before(da.Expiry):
			return nil, &Error{Kind: AuthorizationFailed, Err: err, Message: "the code expired before anyone signed in; run authorize -device again"}
		case ctx.Err() != nil:
			return nil, fmt.Errorf("waiting for the sign-in: %w", ctx.Err())
		}
		return nil, classifyTokenError(acct.Login, p, config.GrantRefreshToken, err)
	}
	if tok.RefreshToken == "" {
		return nil, ErrNoRefreshToken
	}
	return tok, nil
}

// --- app-only grants --------------------------------------------------------

// AppToken gets an access token for acct, whose grant is
// client_credentials or service_account, the way the proxy will at login.
// It proves that the grant works; a failure is an *Error explaining it.
func AppToken(ctx context.Context, acct *config.Account) (*oauth2.Token, error) {
	if acct.Grant.Delegated() {
		return nil, fmt.Errorf("accounts.%s uses grant %s, which is not app-only", acct.Login, acct.Grant)
	}
	fetch, err := appFetcher(acct)
	if err != nil {
		return nil, err
	}
	tok, err := fetch(ctx)
	if err != nil {
		return nil, classifyTokenError(acct.Login, acct.Provider, acct.Grant, err)
	}
	return tok, nil
}

// appFetcher returns a function that gets a new access token for an
// app-only account at every call: client credentials with the provider's
// client secret or, when the provider has a certificate, a client assertion
// signed with its key (Microsoft: the app_scopes,
// https://outlook.office365.com/.default), or a JWT signed with the Google
// service account key whose subject is the mailbox (domain-wide
// delegation).
func appFetcher(acct *config.Account) (func(context.Context) (*oauth2.Token, error), error) {
	p := acct.Provider
	switch acct.Grant {
	case config.GrantClientCredentials:
		if p.ClientCertificateFile != "" {
			return assertionFetcher(p)
		}
		cc := &clientcredentials.Config{
			ClientID:     p.ClientID,
			ClientSecret: p.ClientSecret,
			TokenURL:     p.TokenURL,
			Scopes:       p.AppScopes,
			AuthStyle:    oauth2.AuthStyleInParams,
		}
		// Config.Token starts from nothing every time: its own reuse
		// layer (10 s expiry delta) must not hide the refresh margin.
		return cc.Token, nil
	case config.GrantServiceAccount:
		key, err := loadServiceAccountKey(p.ServiceAccountFile)
		if err != nil {
			return nil, &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
				"cannot use the service account key of provider %s (%v); check providers.%s.service_account_file", p.Name, err, p.Name), 400)}
		}
		jc := &jwt.Config{
			Email:        key.ClientEmail,
			PrivateKey:   []byte(key.PrivateKey),
			PrivateKeyID: key.PrivateKeyID,
			Subject:      acct.Mailbox,
			Scopes:       p.Scopes,
			TokenURL:     p.TokenURL,
		}
		return func(ctx context.Context) (*oauth2.Token, error) { return jc.TokenSource(ctx).Token() }, nil
	}
	return nil, &Error{Kind: AuthorizationFailed, Message: fmt.Sprintf("grant %q is not app-only", acct.Grant)}
}

// serviceAccountKey is the part of a Google service account JSON key file
// the JWT grant needs.
type serviceAccountKey struct {
	Type         string `json:"type"`
	ClientEmail  string `json:"client_email"`
	PrivateKey   string `json:"private_key"`
	PrivateKeyID string `json:"private_key_id"`
}

// loadServiceAccountKey reads and checks a JSON key file. Errors never
// quote the file.
func loadServiceAccountKey(path string) (*serviceAccountKey, error) {
	if path == "" {
		return nil, errors.New("no service_account_file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var key serviceAccountKey
	if json.Unmarshal(data, &key) != nil {
		return nil, fmt.Errorf("%s is not a JSON key file", path)
	}
	switch {
	case key.Type != "service_account":
		return nil, fmt.Errorf("%s is not a service account key (type %q)", path, OneLine(key.Type, 40))
	case key.ClientEmail == "":
		return nil, fmt.Errorf("%s has no client_email", path)
	case key.PrivateKey == "":
		return nil, fmt.Errorf("%s has no private_key", path)
	}
	block, _ := pem.Decode([]byte(key.PrivateKey))
	if block == nil {
		return nil, fmt.Errorf("the private_key of %s is not PEM", path)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	if _, ok := parsed.(*rsa.PrivateKey); err != nil || !ok {
		return nil, fmt.Errorf("the private_key of %s is not an RSA key", path)
	}
	return &key, nil
}

// appSource gets the access tokens of an app-only account. Like
// persistingSource it runs only under ReuseTokenSource's mutex; there is
// no refresh token to persist.
type appSource struct {
	account *Account
	fetch   func(context.Context) (*oauth2.Token, error)
}

func (s *appSource) Token() (*oauth2.Token, error) {
	a := s.account
	a.mu.Lock()
	a.refreshN++
	a.mu.Unlock()

	start := time.Now()
	tok, err := a.retrying(func() (*oauth2.Token, error) { return s.fetch(a.m.ctx) })
	elapsed := time.Since(start)
	if err != nil {
		authErr := classifyTokenError(a.login, &a.provider, a.grant, err)
		a.m.countRefresh(authErr.Kind.String())
		a.m.logger.Warn("token request failed", "login", a.login, "provider", a.provider.Name, "grant", a.grant,
			"outcome", authErr.Kind.String(), "duration", elapsed, "err", err)
		a.failed(authErr)
		return nil, authErr
	}
	a.mu.Lock()
	a.lastAccess = tok.AccessToken
	a.mu.Unlock()
	a.m.countRefresh("OK")
	a.m.health.Refreshed(a.login, a.recordID, tok.Expiry, time.Time{})
	a.m.logger.Info("token fetched", "login", a.login, "provider", a.provider.Name, "grant", a.grant,
		"duration", elapsed.Round(time.Millisecond), "expires_in", time.Until(tok.Expiry).Round(time.Second))
	return tok, nil
}
