// Package authtest is an in-process OAuth 2.0 token endpoint for tests and
// the demo. It serves the refresh_token grant (RFC 6749 section 6) the way
// Microsoft Entra ID or Google do, including their error bodies, and lets a
// test mint, rotate and revoke refresh tokens, check the access tokens it
// issued, and make the endpoint fail or stall. An introspection endpoint
// (RFC 7662) lets a real IMAP server, such as Dovecot's oauth2 passdb,
// validate the access tokens it issued.
package authtest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Flavor selects whose token endpoint the Server imitates.
type Flavor int

const (
	// Microsoft answers like Entra ID (login.microsoftonline.com v2.0):
	// AADSTS error descriptions with error_codes, trace and correlation
	// ids, and the refresh token in every successful answer.
	Microsoft Flavor = iota
	// Google answers like oauth2.googleapis.com: short error descriptions,
	// and no refresh token in a refresh answer unless it rotates.
	Google
)

// String returns "microsoft" or "google".
func (f Flavor) String() string {
	switch f {
	case Microsoft:
		return "microsoft"
	case Google:
		return "google"
	}
	return fmt.Sprintf("Flavor(%d)", int(f))
}

// Options configure a Server.
type Options struct {
	// Flavor selects the error format and refresh-token echo.
	Flavor Flavor
	// ClientID is the required client_id. If empty, any is accepted.
	ClientID string
	// ClientSecret is the required client_secret, sent as a form field
	// (oauth2.AuthStyleInParams) or with HTTP Basic authentication. If
	// empty, none is required.
	ClientSecret string
	// AccessTTL is the lifetime (expires_in) of issued access tokens. If
	// zero, one hour.
	AccessTTL time.Duration
	// Rotate issues a new refresh token on every refresh and invalidates
	// the one used, as Microsoft does.
	Rotate bool
	// Scope is the scope returned with access tokens. If empty, the
	// requested scope is echoed.
	Scope string
	// Grants lists the grant types served besides refresh_token, which is
	// always served: GrantAuthorizationCode (and the authorization
	// endpoint), GrantDeviceCode (and the device authorization endpoint),
	// GrantClientCredentials (Microsoft only) and GrantJWTBearer (Google
	// only). Nil serves refresh_token only.
	Grants []string
	// PublicClient marks the client as public (Microsoft: "Allow public
	// client flows"; a native app): the authorization_code, device_code and
	// refresh_token grants then need no client secret. A secret that is
	// sent must still be right.
	PublicClient bool
	// RedirectURI is the registered redirect URI. For an http URI on
	// localhost, 127.0.0.1 or [::1] the port is ignored and an empty path
	// equals "/", as Entra ID and Google treat loopback URIs. If empty, any
	// http loopback URI is accepted.
	RedirectURI string
	// DeviceInterval is the polling interval the device endpoint asks for,
	// in seconds. If zero, 5.
	DeviceInterval int
}

// ErrTokenInvalid is returned by Validate for an access token this server
// did not issue to the user, or issued before a Revoke.
var ErrTokenInvalid = errors.New("authtest: access token not valid for user")

// ErrTokenExpired is returned by Validate for an expired access token.
var ErrTokenExpired = errors.New("authtest: access token expired")

// Server is a fake token endpoint. It is safe for concurrent use.
type Server struct {
	// URL is the base URL of the started server, such as
	// "http://127.0.0.1:12345". The token endpoint is URL + "/token".
	// When the Handler is mounted elsewhere, set URL before calling
	// TokenURL.
	URL string

	opts Options
	ts   *httptest.Server
	done chan struct{} // closed by Close: ends delays
	once sync.Once

	mu       sync.Mutex
	now      func() time.Time
	refresh  map[string]*refreshToken // by token
	access   map[string]*accessToken  // by token
	users    map[string]*user
	requests int
	intros   int
	failN    int
	failCode int
	delay    time.Duration

	flows // state of the authorization grants, in flows.go
}

type refreshToken struct {
	user  string
	valid bool
	why   string // "revoked" or "rotated" once invalid
}

type accessToken struct {
	user   string // "" for an app-only token
	app    bool   // issued by client_credentials: opens the AllowApp mailboxes
	scope  string
	issued time.Time
	expiry time.Time
}

type user struct {
	current   string // newest valid refresh token
	refreshes int
}

// New returns a Server that is not listening: mount its Handler and set
// URL, or call Start.
func New(opts Options) *Server {
	if opts.AccessTTL == 0 {
		opts.AccessTTL = time.Hour
	}
	s := &Server{
		opts:    opts,
		done:    make(chan struct{}),
		now:     time.Now,
		refresh: make(map[string]*refreshToken),
		access:  make(map[string]*accessToken),
		users:   make(map[string]*user),
	}
	s.flows.init()
	return s
}

// NewServer returns a started Server listening on 127.0.0.1 at a random
// port. Close it when done.
func NewServer(opts Options) *Server {
	s := New(opts)
	s.Start()
	return s
}

// Start starts serving on 127.0.0.1 at a random port (httptest.NewServer)
// and sets URL. It must be called at most once.
func (s *Server) Start() {
	s.ts = httptest.NewServer(s.Handler())
	s.URL = s.ts.URL
}

// Close stops the server, ending any delayed request. It is safe to call
// more than once, and on a Server that was never started.
func (s *Server) Close() {
	s.once.Do(func() { close(s.done) })
	if s.ts != nil {
		s.ts.Close()
	}
}

// TokenURL returns URL + "/token".
func (s *Server) TokenURL() string { return s.URL + "/token" }

// IntrospectionURL returns URL + "/introspect", the token introspection
// endpoint (RFC 7662).
func (s *Server) IntrospectionURL() string { return s.URL + "/introspect" }

// SetClock replaces the clock used for access token expiry (time.Now by
// default), so tests can move time forward without sleeping.
func (s *Server) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// Grant mints a new refresh token for user, the outcome of an
// authorization. Earlier refresh tokens of user stay valid.
func (s *Server) Grant(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grantLocked(user)
}

func (s *Server) grantLocked(name string) string {
	rt := newToken()
	s.refresh[rt] = &refreshToken{user: name, valid: true}
	s.userLocked(name).current = rt
	return rt
}

func (s *Server) userLocked(name string) *user {
	u := s.users[name]
	if u == nil {
		u = &user{}
		s.users[name] = u
	}
	return u
}

// Revoke invalidates every refresh token and access token of user.
func (s *Server) Revoke(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rt := range s.refresh {
		if rt.user == user && rt.valid {
			rt.valid, rt.why = false, "revoked"
		}
	}
	for tok, at := range s.access {
		if at.user == user {
			delete(s.access, tok)
		}
	}
	if u := s.users[user]; u != nil {
		u.current = ""
	}
}

// CurrentRefreshToken returns the newest valid refresh token of user, or
// "" if there is none.
func (s *Server) CurrentRefreshToken(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.users[user]; u != nil {
		return u.current
	}
	return ""
}

// Validate returns nil if accessToken was issued for user (or for
// someone Share gave user's mailbox to, or by client_credentials for a
// mailbox AllowApp lists), was not revoked, and has not expired; otherwise
// ErrTokenInvalid or ErrTokenExpired.
func (s *Server) Validate(user, accessToken string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.access[accessToken]
	switch {
	case at == nil || !s.mayOpenLocked(at, user):
		return ErrTokenInvalid
	case !s.now().Before(at.expiry):
		return ErrTokenExpired
	}
	return nil
}

// Introspections returns how many requests the introspection endpoint has
// received. They are not counted by Requests.
func (s *Server) Introspections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.intros
}

// Requests returns how many requests the token endpoint has received.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// RefreshCount returns how many successful refreshes user has made.
func (s *Server) RefreshCount(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.users[user]; u != nil {
		return u.refreshes
	}
	return 0
}

// FailNext makes the next n requests fail with HTTP status (such as 503 or
// 429) and a temporarily_unavailable error body. A 429 carries
// "Retry-After: 1".
func (s *Server) FailNext(n int, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failN, s.failCode = n, status
}

// SetDelay delays every later answer by d. A delayed request ends early
// when its client gives up or the Server is closed.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Handler returns the handler of the token endpoint (POST /token) and the
// introspection endpoint (/introspect).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/token", s.serveToken)
	mux.HandleFunc("/introspect", s.serveIntrospect)
	mux.HandleFunc("/authorize", s.serveAuthorize)   // flows.go
	mux.HandleFunc("/devicecode", s.serveDeviceCode) // flows.go
	return mux
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	delay := s.delay
	fail := 0
	if s.failN > 0 {
		s.failN--
		fail = s.failCode
	}
	s.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-s.done:
			t.Stop()
			return
		}
	}
	if fail != 0 {
		if fail == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		s.writeError(w, fail, "temporarily_unavailable", s.describe(errUnavailable, ""))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeError(w, http.StatusMethodNotAllowed, "invalid_request", s.describe(errMethod, r.Method))
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errContentType, ct))
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMalformed, ""))
		return
	}
	form := r.PostForm
	if form.Get("grant_type") == GrantJWTBearer && s.serves(GrantJWTBearer) {
		s.grantJWTBearer(w, form) // authenticated by the assertion itself
		return
	}

	clientID, clientSecret := form.Get("client_id"), form.Get("client_secret")
	if id, secret, ok := r.BasicAuth(); ok {
		// RFC 6749 section 2.3.1: both are form-urlencoded first.
		id, err1 := url.QueryUnescape(id)
		secret, err2 := url.QueryUnescape(secret)
		if err1 != nil || err2 != nil {
			s.writeError(w, http.StatusUnauthorized, "invalid_client", s.describe(errClientSecret, ""))
			return
		}
		if form.Has("client_secret") {
			// RFC 6749 section 2.3: one authentication method per request.
			s.fail(w, http.StatusBadRequest, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid.", "Bad Request")
			return
		}
		clientID, clientSecret = id, secret
	}
	if clientID == "" {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "client_id"))
		return
	}
	if s.opts.ClientID != "" && clientID != s.opts.ClientID {
		s.writeError(w, http.StatusUnauthorized, "invalid_client", s.describe(errClientID, clientID))
		return
	}
	gt := form.Get("grant_type")
	// A public client may leave the secret out, except for
	// client_credentials; a secret that is sent must be right.
	public := s.opts.PublicClient && gt != GrantClientCredentials
	if s.opts.ClientSecret != "" && (clientSecret != "" || !public) {
		if clientSecret == "" {
			s.writeError(w, http.StatusUnauthorized, "invalid_client", s.describe(errNoSecret, ""))
			return
		}
		if clientSecret != s.opts.ClientSecret {
			s.writeError(w, http.StatusUnauthorized, "invalid_client", s.describe(errClientSecret, clientID))
			return
		}
	}

	switch gt {
	case "refresh_token":
	case GrantAuthorizationCode, GrantDeviceCode, GrantClientCredentials:
		if !s.serves(gt) {
			s.writeError(w, http.StatusBadRequest, "unsupported_grant_type", s.describe(errGrantType, gt))
			return
		}
		s.serveGrant(w, gt, form, clientID)
		return
	case "":
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "grant_type"))
		return
	default:
		s.writeError(w, http.StatusBadRequest, "unsupported_grant_type", s.describe(errGrantType, gt))
		return
	}
	rt := form.Get("refresh_token")
	if rt == "" {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "refresh_token"))
		return
	}
	scope := s.opts.Scope
	if scope == "" {
		scope = form.Get("scope")
	}

	s.mu.Lock()
	rec := s.refresh[rt]
	if rec == nil || !rec.valid {
		kind := errGrantUnknown
		if rec != nil && rec.why == "revoked" {
			kind = errGrantRevoked
		}
		s.mu.Unlock()
		s.writeError(w, http.StatusBadRequest, "invalid_grant", s.describe(kind, ""))
		return
	}
	resp := tokenResponse{
		AccessToken: newToken(),
		TokenType:   "Bearer",
		ExpiresIn:   int64(s.opts.AccessTTL / time.Second),
		Scope:       scope,
	}
	now := s.now()
	s.access[resp.AccessToken] = &accessToken{user: rec.user, scope: scope, issued: now,
		expiry: now.Add(s.opts.AccessTTL)}
	u := s.userLocked(rec.user)
	u.refreshes++
	switch {
	case s.opts.Rotate:
		rec.valid, rec.why = false, "rotated"
		resp.RefreshToken = s.grantLocked(rec.user)
	case s.opts.Flavor == Microsoft:
		resp.RefreshToken = rt
	}
	if s.opts.Flavor == Microsoft {
		resp.ExtExpiresIn = resp.ExpiresIn
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

// serveIntrospect answers a token introspection request (RFC 7662
// section 2). The token comes as the "token" parameter of a POST form
// (section 2.1, Dovecot's introspection_mode = post) or of a GET query
// (introspection_mode = get), or as an "Authorization: Bearer" header
// (RFC 6750, introspection_mode = auth). The caller is not authenticated,
// and FailNext and SetDelay do not apply.
//
// An access token this server issued, not revoked and not expired, is
// active: the answer names its user as "username", "email" and "sub".
// Any other token gets {"active":false} with status 200 (section 2.2).
func (s *Server) serveIntrospect(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.intros++
	s.mu.Unlock()
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET, POST")
		writeJSON(w, http.StatusMethodNotAllowed, introspectError{"invalid_request", "use GET or POST"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, introspectError{"invalid_request", "malformed request"})
		return
	}
	token := r.Form.Get("token")
	if token == "" {
		if scheme, value, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			token = strings.TrimSpace(value)
		}
	}
	if token == "" {
		writeJSON(w, http.StatusBadRequest, introspectError{"invalid_request", "missing parameter: token"})
		return
	}
	s.mu.Lock()
	at := s.access[token]
	active := at != nil && s.now().Before(at.expiry)
	var resp introspectResponse
	if active {
		resp = introspectResponse{
			Active: true, Username: at.user, Email: at.user, Sub: at.user,
			Scope: at.scope, ClientID: s.opts.ClientID, TokenType: "Bearer",
			IssuedAt: at.issued.Unix(), Expiry: at.expiry.Unix(),
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

// introspectResponse is an RFC 7662 section 2.2 answer. An inactive token
// gets only "active": false.
type introspectResponse struct {
	Active    bool   `json:"active"`
	Username  string `json:"username,omitempty"`
	Email     string `json:"email,omitempty"`
	Sub       string `json:"sub,omitempty"`
	Scope     string `json:"scope,omitempty"`
	ClientID  string `json:"client_id,omitempty"`
	TokenType string `json:"token_type,omitempty"`
	IssuedAt  int64  `json:"iat,omitempty"`
	Expiry    int64  `json:"exp,omitempty"`
}

type introspectError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

type tokenResponse struct {
	TokenType    string `json:"token_type"`
	Scope        string `json:"scope,omitempty"`
	ExpiresIn    int64  `json:"expires_in"`
	ExtExpiresIn int64  `json:"ext_expires_in,omitempty"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// errKind is a failure that each flavor words its own way.
type errKind int

const (
	errUnavailable errKind = iota
	errMethod
	errContentType
	errMalformed
	errMissing
	errClientID
	errNoSecret
	errClientSecret
	errGrantType
	errGrantUnknown
	errGrantRevoked
)

// errorText is one failure as a flavor words it: an AADSTS code (Microsoft
// only) and a description.
type errorText struct {
	code int
	desc string
}

// describe words a failure for the server's flavor; arg fills the %s of
// the description.
func (s *Server) describe(kind errKind, arg string) errorText {
	if s.opts.Flavor == Google {
		return errorText{desc: googleText(kind, arg)}
	}
	return microsoftText(kind, arg)
}

func googleText(kind errKind, arg string) string {
	switch kind {
	case errUnavailable:
		return "The service is currently unavailable."
	case errMethod:
		return "Invalid HTTP method " + arg + "."
	case errContentType, errMalformed:
		return "Bad Request"
	case errMissing:
		return "Missing required parameter: " + arg
	case errClientID:
		return "The OAuth client was not found."
	case errNoSecret:
		return "client_secret is missing."
	case errClientSecret:
		return "Unauthorized"
	case errGrantType:
		return "Invalid grant_type: " + arg
	case errGrantUnknown, errGrantRevoked:
		return "Token has been expired or revoked."
	}
	return "Bad Request"
}

func microsoftText(kind errKind, arg string) errorText {
	switch kind {
	case errUnavailable:
		return errorText{90033, "A transient error has occurred. Please try again."}
	case errMethod:
		return errorText{900561, fmt.Sprintf("The endpoint only accepts POST requests. Received a %s request.", arg)}
	case errContentType, errMalformed:
		return errorText{900144, "The request body must contain the following parameter: 'grant_type'."}
	case errMissing:
		return errorText{900144, fmt.Sprintf("The request body must contain the following parameter: '%s'.", arg)}
	case errClientID:
		return errorText{700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory 'contoso'. "+
			"This can happen if the application has not been installed by the administrator of the tenant "+
			"or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", arg)}
	case errNoSecret:
		return errorText{7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
	case errClientSecret:
		return errorText{7000215, "Invalid client secret provided. Ensure the secret being sent in the request " +
			"is the client secret value, not the client secret ID, for a secret added to app '" + arg + "'."}
	case errGrantType:
		return errorText{70003, fmt.Sprintf("The app requested an unsupported grant type '%s'.", arg)}
	case errGrantUnknown:
		return errorText{70000, "The provided grant has expired due to it being revoked, a fresh auth token is needed. " +
			"The user might have changed or reset their password."}
	case errGrantRevoked:
		return errorText{50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. " +
			"The user might have changed or reset their password. The grant was issued on '2024-01-01T00:00:00Z' " +
			"and the TokensValidFrom date (before which tokens are not valid) for this user is '2024-06-01T00:00:00Z'."}
	}
	return errorText{90014, "The request body must contain the following parameter: 'grant_type'."}
}

// microsoftError is Entra ID's error body.
type microsoftError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
	ErrorURI         string `json:"error_uri"`
}

// googleError is Google's error body.
type googleError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

func (s *Server) writeError(w http.ResponseWriter, status int, code string, text errorText) {
	if s.opts.Flavor == Google {
		writeJSON(w, status, googleError{Error: code, ErrorDescription: text.desc})
		return
	}
	s.mu.Lock()
	now := s.now().UTC()
	s.mu.Unlock()
	ts := now.Format("2006-01-02 15:04:05Z")
	trace, corr := newUUID(), newUUID()
	writeJSON(w, status, microsoftError{
		Error: code,
		ErrorDescription: fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s",
			text.code, text.desc, trace, corr, ts),
		ErrorCodes:    []int{text.code},
		Timestamp:     ts,
		TraceID:       trace,
		CorrelationID: corr,
		ErrorURI:      fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", text.code),
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	w.Write(body)
}

// newToken returns 32 random bytes, base64url-encoded.
func newToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
