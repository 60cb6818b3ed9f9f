package authtest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

const (
	testClientID     = "11111111-2222-3333-4444-555555555555"
	testClientSecret = "s3cr3t"
	testScope        = "https://outlook.office365.com/IMAP.AccessAsUser.All offline_access"
	testUser         = "helpdesk@contoso.com"
)

func newServer(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.ClientID == "" {
		opts.ClientID = testClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = testClientSecret
	}
	s := NewServer(opts)
	t.Cleanup(s.Close)
	return s
}

func config(s *Server, style oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     testClientID,
		ClientSecret: testClientSecret,
		Scopes:       strings.Fields(testScope),
		Endpoint:     oauth2.Endpoint{TokenURL: s.TokenURL(), AuthStyle: style},
	}
}

func refresh(ctx context.Context, cfg *oauth2.Config, rt string) (*oauth2.Token, error) {
	return cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
}

func retrieveError(t *testing.T, err error) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a *oauth2.RetrieveError", err, err)
	}
	return re
}

func TestAuthtestRefresh(t *testing.T) {
	for _, tt := range []struct {
		flavor Flavor
		style  oauth2.AuthStyle
	}{
		{Microsoft, oauth2.AuthStyleInParams},
		{Microsoft, oauth2.AuthStyleInHeader},
		{Google, oauth2.AuthStyleInParams},
		{Google, oauth2.AuthStyleInHeader},
	} {
		t.Run(tt.flavor.String(), func(t *testing.T) {
			// x/oauth2 sends no scope when refreshing, so fix the answer's.
			s := newServer(t, Options{Flavor: tt.flavor, Scope: testScope})
			rt := s.Grant(testUser)
			if len(rt) < 43 || s.CurrentRefreshToken(testUser) != rt {
				t.Fatalf("Grant = %q, current %q", rt, s.CurrentRefreshToken(testUser))
			}
			tok, err := refresh(t.Context(), config(s, tt.style), rt)
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			if tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.ExpiresIn != 3600 {
				t.Errorf("token = %+v", tok)
			}
			if got := tok.Extra("scope"); got != testScope {
				t.Errorf("scope = %v; want %q", got, testScope)
			}
			// Microsoft sends the refresh token back; Google does not, and
			// x/oauth2 keeps the old one.
			if tok.RefreshToken != rt {
				t.Errorf("refresh token = %q; want %q", tok.RefreshToken, rt)
			}
			if got, want := tok.Extra("refresh_token") != nil, tt.flavor == Microsoft; got != want {
				t.Errorf("refresh_token in the answer: %v; want %v", got, want)
			}
			if err := s.Validate(testUser, tok.AccessToken); err != nil {
				t.Errorf("Validate: %v", err)
			}
			if err := s.Validate("other@contoso.com", tok.AccessToken); !errors.Is(err, ErrTokenInvalid) {
				t.Errorf("Validate for another user: %v; want ErrTokenInvalid", err)
			}
			if err := s.Validate(testUser, "made-up"); !errors.Is(err, ErrTokenInvalid) {
				t.Errorf("Validate of a made-up token: %v; want ErrTokenInvalid", err)
			}
			// Without rotation the refresh token keeps working, and every
			// access token is new.
			tok2, err := refresh(t.Context(), config(s, tt.style), rt)
			if err != nil {
				t.Fatalf("second refresh: %v", err)
			}
			if tok2.AccessToken == tok.AccessToken {
				t.Error("the same access token was issued twice")
			}
			if s.Requests() != 2 || s.RefreshCount(testUser) != 2 || s.RefreshCount("other") != 0 {
				t.Errorf("Requests = %d, RefreshCount = %d", s.Requests(), s.RefreshCount(testUser))
			}
		})
	}
}

func TestAuthtestRotate(t *testing.T) {
	s := newServer(t, Options{Flavor: Microsoft, Rotate: true})
	cfg := config(s, oauth2.AuthStyleInParams)
	rt1 := s.Grant(testUser)
	tok, err := refresh(t.Context(), cfg, rt1)
	if err != nil {
		t.Fatal(err)
	}
	rt2 := tok.RefreshToken
	if rt2 == "" || rt2 == rt1 || s.CurrentRefreshToken(testUser) != rt2 {
		t.Fatalf("rotated refresh token %q (old %q, current %q)", rt2, rt1, s.CurrentRefreshToken(testUser))
	}

	_, err = refresh(t.Context(), cfg, rt1)
	re := retrieveError(t, err)
	if re.ErrorCode != "invalid_grant" || re.Response.StatusCode != http.StatusBadRequest {
		t.Errorf("reused refresh token: %d %q; want 400 invalid_grant", re.Response.StatusCode, re.ErrorCode)
	}
	if !strings.HasPrefix(re.ErrorDescription, "AADSTS70000: The provided grant has expired") {
		t.Errorf("description = %q; want AADSTS70000", re.ErrorDescription)
	}
	var body struct {
		ErrorCodes    []int  `json:"error_codes"`
		Timestamp     string `json:"timestamp"`
		TraceID       string `json:"trace_id"`
		CorrelationID string `json:"correlation_id"`
	}
	if err := json.Unmarshal(re.Body, &body); err != nil {
		t.Fatal(err)
	}
	if len(body.ErrorCodes) != 1 || body.ErrorCodes[0] != 70000 || body.Timestamp == "" ||
		len(body.TraceID) != 36 || len(body.CorrelationID) != 36 {
		t.Errorf("error body = %s", re.Body)
	}

	if _, err := refresh(t.Context(), cfg, rt2); err != nil {
		t.Errorf("rotated refresh token: %v", err)
	}
	if s.RefreshCount(testUser) != 2 {
		t.Errorf("RefreshCount = %d; want 2", s.RefreshCount(testUser))
	}

	// Google can rotate too when asked, and then sends the new token.
	g := newServer(t, Options{Flavor: Google, Rotate: true})
	grt := g.Grant(testUser)
	gtok, err := refresh(t.Context(), config(g, oauth2.AuthStyleInParams), grt)
	if err != nil || gtok.RefreshToken == grt || gtok.RefreshToken != g.CurrentRefreshToken(testUser) {
		t.Errorf("Google rotation: %v, %v", gtok, err)
	}
}

func TestAuthtestRevoke(t *testing.T) {
	for _, tt := range []struct {
		flavor   Flavor
		wantDesc string
	}{
		{Microsoft, "AADSTS50173: The provided grant has expired due to it being revoked"},
		{Google, "Token has been expired or revoked."},
	} {
		t.Run(tt.flavor.String(), func(t *testing.T) {
			s := newServer(t, Options{Flavor: tt.flavor})
			cfg := config(s, oauth2.AuthStyleInParams)
			rt := s.Grant(testUser)
			other := s.Grant("other@contoso.com")
			tok, err := refresh(t.Context(), cfg, rt)
			if err != nil {
				t.Fatal(err)
			}
			s.Revoke(testUser)
			if got := s.CurrentRefreshToken(testUser); got != "" {
				t.Errorf("CurrentRefreshToken after Revoke = %q", got)
			}
			if err := s.Validate(testUser, tok.AccessToken); !errors.Is(err, ErrTokenInvalid) {
				t.Errorf("Validate after Revoke: %v; want ErrTokenInvalid", err)
			}
			_, err = refresh(t.Context(), cfg, rt)
			re := retrieveError(t, err)
			if re.ErrorCode != "invalid_grant" || !strings.HasPrefix(re.ErrorDescription, tt.wantDesc) {
				t.Errorf("revoked refresh: %q %q; want invalid_grant %q", re.ErrorCode, re.ErrorDescription, tt.wantDesc)
			}
			if _, err := refresh(t.Context(), cfg, other); err != nil {
				t.Errorf("another user's token after Revoke: %v", err)
			}
			// A new authorization works again.
			if _, err := refresh(t.Context(), cfg, s.Grant(testUser)); err != nil {
				t.Errorf("refresh after a new Grant: %v", err)
			}
		})
	}
}

func TestAuthtestClientAuth(t *testing.T) {
	for _, tt := range []struct {
		name     string
		flavor   Flavor
		style    oauth2.AuthStyle
		id, sec  string
		wantDesc string
	}{
		{"microsoft wrong secret", Microsoft, oauth2.AuthStyleInParams, testClientID, "wrong", "AADSTS7000215: Invalid client secret provided."},
		{"microsoft wrong secret basic", Microsoft, oauth2.AuthStyleInHeader, testClientID, "wrong", "AADSTS7000215: "},
		{"microsoft no secret", Microsoft, oauth2.AuthStyleInParams, testClientID, "", "AADSTS7000218: "},
		{"microsoft wrong id", Microsoft, oauth2.AuthStyleInParams, "nobody", testClientSecret, "AADSTS700016: "},
		{"google wrong secret", Google, oauth2.AuthStyleInParams, testClientID, "wrong", "Unauthorized"},
		{"google wrong id", Google, oauth2.AuthStyleInHeader, "nobody", testClientSecret, "The OAuth client was not found."},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, Options{Flavor: tt.flavor})
			cfg := config(s, tt.style)
			cfg.ClientID, cfg.ClientSecret = tt.id, tt.sec
			_, err := refresh(t.Context(), cfg, s.Grant(testUser))
			re := retrieveError(t, err)
			if re.Response.StatusCode != http.StatusUnauthorized || re.ErrorCode != "invalid_client" ||
				!strings.HasPrefix(re.ErrorDescription, tt.wantDesc) {
				t.Errorf("got %d %q %q; want 401 invalid_client %q",
					re.Response.StatusCode, re.ErrorCode, re.ErrorDescription, tt.wantDesc)
			}
			if s.RefreshCount(testUser) != 0 {
				t.Error("a rejected client refreshed")
			}
		})
	}

	// Empty Options accept any client.
	open := NewServer(Options{})
	t.Cleanup(open.Close)
	cfg := config(open, oauth2.AuthStyleInParams)
	cfg.ClientSecret = ""
	if _, err := refresh(t.Context(), cfg, open.Grant(testUser)); err != nil {
		t.Errorf("open server: %v", err)
	}
}

func postForm(t *testing.T, s *Server, method string, form url.Values) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(data, &body); err != nil {
		t.Fatalf("%s %s: body %q is not JSON: %v", method, s.TokenURL(), data, err)
	}
	return resp.StatusCode, body
}

func TestAuthtestBadRequests(t *testing.T) {
	s := newServer(t, Options{Flavor: Microsoft, Scope: "fixed"})
	rt := s.Grant(testUser)
	good := func() url.Values {
		return url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {rt},
			"client_id":     {testClientID},
			"client_secret": {testClientSecret},
		}
	}
	status, body := postForm(t, s, http.MethodPost, good())
	if status != 200 || body["scope"] != "fixed" || body["ext_expires_in"] != 3600.0 {
		t.Errorf("good request: %d %v", status, body)
	}
	// Without Options.Scope the requested scope is echoed.
	echo := newServer(t, Options{})
	form := good()
	form.Set("refresh_token", echo.Grant(testUser))
	form.Set("scope", "imap offline_access")
	if status, body := postForm(t, echo, http.MethodPost, form); status != 200 || body["scope"] != "imap offline_access" {
		t.Errorf("scope echo: %d %v", status, body)
	}
	for _, tt := range []struct {
		name    string
		method  string
		edit    func(url.Values)
		status  int
		errCode string
	}{
		{"GET", http.MethodGet, func(url.Values) {}, 405, "invalid_request"},
		{"authorization_code", http.MethodPost, func(v url.Values) { v.Set("grant_type", "authorization_code") }, 400, "unsupported_grant_type"},
		{"no grant_type", http.MethodPost, func(v url.Values) { v.Del("grant_type") }, 400, "invalid_request"},
		{"no refresh_token", http.MethodPost, func(v url.Values) { v.Del("refresh_token") }, 400, "invalid_request"},
		{"unknown refresh_token", http.MethodPost, func(v url.Values) { v.Set("refresh_token", "nope") }, 400, "invalid_grant"},
		{"no client_id", http.MethodPost, func(v url.Values) { v.Del("client_id") }, 400, "invalid_request"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			form := good()
			tt.edit(form)
			status, body := postForm(t, s, tt.method, form)
			if status != tt.status || body["error"] != tt.errCode {
				t.Errorf("got %d %v; want %d %s", status, body["error"], tt.status, tt.errCode)
			}
			if desc, _ := body["error_description"].(string); !strings.HasPrefix(desc, "AADSTS") {
				t.Errorf("description %q lacks an AADSTS code", desc)
			}
		})
	}
}

func TestAuthtestFailNext(t *testing.T) {
	for _, flavor := range []Flavor{Microsoft, Google} {
		t.Run(flavor.String(), func(t *testing.T) {
			s := newServer(t, Options{Flavor: flavor})
			cfg := config(s, oauth2.AuthStyleInParams)
			rt := s.Grant(testUser)
			s.FailNext(2, http.StatusServiceUnavailable)
			for i := range 2 {
				_, err := refresh(t.Context(), cfg, rt)
				re := retrieveError(t, err)
				if re.Response.StatusCode != 503 || re.ErrorCode != "temporarily_unavailable" {
					t.Errorf("request %d: %d %q; want 503 temporarily_unavailable", i, re.Response.StatusCode, re.ErrorCode)
				}
			}
			if _, err := refresh(t.Context(), cfg, rt); err != nil {
				t.Errorf("third request: %v", err)
			}
			if s.Requests() != 3 || s.RefreshCount(testUser) != 1 {
				t.Errorf("Requests = %d, RefreshCount = %d; want 3, 1", s.Requests(), s.RefreshCount(testUser))
			}

			s.FailNext(1, http.StatusTooManyRequests)
			_, err := refresh(t.Context(), cfg, rt)
			re := retrieveError(t, err)
			if re.Response.StatusCode != 429 || re.Response.Header.Get("Retry-After") != "1" {
				t.Errorf("throttled: %d, Retry-After %q", re.Response.StatusCode, re.Response.Header.Get("Retry-After"))
			}
		})
	}
}

func TestAuthtestDelay(t *testing.T) {
	s := newServer(t, Options{})
	cfg := config(s, oauth2.AuthStyleInParams)
	rt := s.Grant(testUser)
	s.SetDelay(time.Hour)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := refresh(ctx, cfg, rt)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delayed refresh: %v; want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("delayed refresh took %v", d)
	}
	if s.RefreshCount(testUser) != 0 {
		t.Error("an abandoned request refreshed")
	}

	// A request still waiting when the server closes does not hold up
	// Close. Mount the handler behind one that reports the arrival.
	s2 := New(Options{})
	s2.SetDelay(time.Hour)
	arrived := make(chan struct{})
	var once sync.Once
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(arrived) })
		s2.Handler().ServeHTTP(w, r)
	}))
	s2.URL = hs.URL
	rt2 := s2.Grant(testUser)
	var wg sync.WaitGroup
	wg.Go(func() {
		// The client gets an error, whatever it is.
		refresh(t.Context(), config(s2, oauth2.AuthStyleInParams), rt2)
	})
	<-arrived
	s2.Close() // ends the delay
	hs.Close() // waits for the handler
	wg.Wait()

	s.SetDelay(0)
	if _, err := refresh(t.Context(), cfg, rt); err != nil {
		t.Errorf("refresh without delay: %v", err)
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestAuthtestExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	s := newServer(t, Options{Flavor: Microsoft, AccessTTL: 30 * time.Minute})
	s.SetClock(clock.Now)
	tok, err := refresh(t.Context(), config(s, oauth2.AuthStyleInParams), s.Grant(testUser))
	if err != nil {
		t.Fatal(err)
	}
	if tok.ExpiresIn != 1800 {
		t.Errorf("expires_in = %d; want 1800", tok.ExpiresIn)
	}
	clock.Advance(29*time.Minute + 59*time.Second)
	if err := s.Validate(testUser, tok.AccessToken); err != nil {
		t.Errorf("Validate just before expiry: %v", err)
	}
	clock.Advance(time.Second)
	if err := s.Validate(testUser, tok.AccessToken); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("Validate at expiry: %v; want ErrTokenExpired", err)
	}
}

func TestAuthtestConcurrent(t *testing.T) {
	s := newServer(t, Options{Flavor: Microsoft})
	cfg := config(s, oauth2.AuthStyleInParams)
	var wg sync.WaitGroup
	for i := range 4 {
		user := string(rune('a'+i)) + "@contoso.com"
		rt := s.Grant(user)
		for range 5 {
			wg.Go(func() {
				tok, err := refresh(t.Context(), cfg, rt)
				if err != nil {
					t.Errorf("refresh: %v", err)
					return
				}
				if err := s.Validate(user, tok.AccessToken); err != nil {
					t.Errorf("Validate: %v", err)
				}
			})
		}
	}
	wg.Wait()
	if s.Requests() != 20 || s.RefreshCount("a@contoso.com") != 5 {
		t.Errorf("Requests = %d, RefreshCount(a) = %d", s.Requests(), s.RefreshCount("a@contoso.com"))
	}
}

func TestAuthtestHandlerMounted(t *testing.T) {
	s := New(Options{Flavor: Google})
	defer s.Close()
	mux := http.NewServeMux()
	mux.Handle("/token", s.Handler())
	hs := httptest.NewServer(mux)
	defer hs.Close()
	s.URL = hs.URL
	if _, err := refresh(t.Context(), config(s, oauth2.AuthStyleInParams), s.Grant(testUser)); err != nil {
		t.Errorf("refresh through a mounted handler: %v", err)
	}
	if s.Requests() != 1 {
		t.Errorf("Requests = %d; want 1", s.Requests())
	}
}

// introspect sends one introspection request the way Dovecot's oauth2
// passdb does in mode ("post", "get" or "auth") and returns the status and
// JSON answer.
func introspect(t *testing.T, s *Server, mode, token string) (int, map[string]any) {
	t.Helper()
	var req *http.Request
	var err error
	switch mode {
	case "post":
		form := url.Values{"token": {token}, "client_id": {""}, "client_secret": {""}}
		req, err = http.NewRequestWithContext(t.Context(), http.MethodPost, s.IntrospectionURL(), strings.NewReader(form.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	case "get":
		req, err = http.NewRequestWithContext(t.Context(), http.MethodGet, s.IntrospectionURL()+"?token="+url.QueryEscape(token), nil)
	case "auth":
		req, err = http.NewRequestWithContext(t.Context(), http.MethodGet, s.IntrospectionURL(), nil)
		if err == nil {
			req.Header.Set("Authorization", "Bearer "+token)
		}
	default:
		t.Fatalf("unknown mode %q", mode)
	}
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(data, &body); err != nil {
		t.Fatalf("introspection (%s): body %q is not JSON: %v", mode, data, err)
	}
	return resp.StatusCode, body
}

func TestAuthtestIntrospect(t *testing.T) {
	s := newServer(t, Options{Flavor: Microsoft, Scope: testScope, AccessTTL: time.Hour})
	now := time.Now()
	s.SetClock(func() time.Time { return now })
	tok, err := refresh(t.Context(), config(s, oauth2.AuthStyleInParams), s.Grant(testUser))
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	requests := s.Requests()
	for _, mode := range []string{"post", "get", "auth"} {
		status, body := introspect(t, s, mode, tok.AccessToken)
		if status != http.StatusOK || body["active"] != true || body["username"] != testUser ||
			body["email"] != testUser || body["sub"] != testUser || body["scope"] != testScope ||
			body["client_id"] != testClientID || body["token_type"] != "Bearer" ||
			body["exp"] != float64(now.Add(time.Hour).Unix()) {
			t.Errorf("%s, valid token: %d %v", mode, status, body)
		}
		status, body = introspect(t, s, mode, "not-a-token")
		if status != http.StatusOK || len(body) != 1 || body["active"] != false {
			t.Errorf("%s, unknown token: %d %v, want 200 {active: false}", mode, status, body)
		}
	}
	if got := s.Introspections(); got != 6 {
		t.Errorf("Introspections = %d, want 6", got)
	}
	if got := s.Requests(); got != requests {
		t.Errorf("introspection counted as token requests: %d, want %d", got, requests)
	}

	// An introspected token is no more valid than Validate says.
	now = now.Add(time.Hour)
	if _, body := introspect(t, s, "post", tok.AccessToken); body["active"] != false {
		t.Errorf("expired token: %v, want inactive", body)
	}
	now = now.Add(-time.Minute)
	if _, body := introspect(t, s, "post", tok.AccessToken); body["active"] != true {
		t.Errorf("token with a minute left: %v, want active", body)
	}
	s.Revoke(testUser)
	if _, body := introspect(t, s, "post", tok.AccessToken); body["active"] != false {
		t.Errorf("revoked token: %v, want inactive", body)
	}

	// FailNext and SetDelay belong to the token endpoint.
	s.FailNext(1, http.StatusServiceUnavailable)
	if status, _ := introspect(t, s, "get", "x"); status != http.StatusOK {
		t.Errorf("introspection under FailNext: %d", status)
	}

	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.IntrospectionURL(), strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("introspection without a token: %d, want 400", resp.StatusCode)
	}
	req, err = http.NewRequestWithContext(t.Context(), http.MethodDelete, s.IntrospectionURL()+"?token=x", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d, want 405", resp.StatusCode)
	}
}
