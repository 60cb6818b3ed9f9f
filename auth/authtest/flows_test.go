package authtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// claims is a JWT claim set for TestJWTBearerRefuses.
type claims struct {
	Iss   string `json:"iss"`
	Scope string `json:"scope,omitempty"`
	Aud   string `json:"aud"`
	Sub   string `json:"sub,omitempty"`
	Iat   int64  `json:"iat"`
	Exp   int64  `json:"exp"`
}

// signJWT returns an RS256 JWT of c with key ID kid.
func signJWT(t *testing.T, c *claims, kid string, key *rsa.PrivateKey) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]string{"alg": "RS256", "typ": "JWT", "kid": kid}) + "." + enc(c)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// get GETs u without following redirects.
func get(t *testing.T, u string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestAuthorizeEndpointRefuses checks the requests the authorization
// endpoint refuses: errors about the client or redirect URI on a page,
// the others as a redirect carrying error.
func TestAuthorizeEndpointRefuses(t *testing.T) {
	s := newServer(t, Options{Flavor: Microsoft, RedirectURI: "http://localhost", Grants: []string{GrantAuthorizationCode}})
	good := func() url.Values {
		return url.Values{
			"client_id": {testClientID}, "response_type": {"code"}, "redirect_uri": {"http://localhost:4711/"},
			"scope": {testScope}, "state": {"st"}, "code_challenge_method": {"S256"},
			"code_challenge": {"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"},
		}
	}
	if resp, _ := get(t, s.AuthorizeURL()+"?"+good().Encode()); resp.StatusCode != http.StatusFound ||
		!strings.HasPrefix(resp.Header.Get("Location"), "http://localhost:4711/?code=") {
		t.Fatalf("good request: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, tc := range []struct {
		name  string
		edit  func(url.Values)
		page  string // an error page with this text, or
		error string // a redirect with this error
	}{
		{"unknown client", func(v url.Values) { v.Set("client_id", "nobody") }, "AADSTS700016", ""},
		{"https redirect", func(v url.Values) { v.Set("redirect_uri", "https://localhost:4711/") }, "AADSTS50011", ""},
		{"other host", func(v url.Values) { v.Set("redirect_uri", "http://evil.example/") }, "AADSTS50011", ""},
		{"other path", func(v url.Values) { v.Set("redirect_uri", "http://localhost:4711/cb") }, "AADSTS50011", ""},
		{"token response", func(v url.Values) { v.Set("response_type", "token") }, "", "unsupported_response_type"},
		{"no state", func(v url.Values) { v.Del("state") }, "", "invalid_request"},
		{"plain PKCE", func(v url.Values) { v.Set("code_challenge_method", "plain") }, "", "invalid_request"},
		{"no PKCE", func(v url.Values) { v.Del("code_challenge") }, "", "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := good()
			tc.edit(q)
			resp, body := get(t, s.AuthorizeURL()+"?"+q.Encode())
			if tc.page != "" {
				if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, tc.page) {
					t.Errorf("got %d %q, want a 400 page with %s", resp.StatusCode, body, tc.page)
				}
				return
			}
			loc, err := url.Parse(resp.Header.Get("Location"))
			if resp.StatusCode != http.StatusFound || err != nil || loc.Query().Get("error") != tc.error || loc.Query().Get("state") != q.Get("state") {
				t.Errorf("got %d %s, want a redirect with error=%s", resp.StatusCode, resp.Header.Get("Location"), tc.error)
			}
		})
	}
	// Not served unless asked for.
	plain := newServer(t, Options{})
	if resp, _ := get(t, plain.AuthorizeURL()+"?"+good().Encode()); resp.StatusCode != http.StatusNotFound {
		t.Errorf("authorize without GrantAuthorizationCode: %d", resp.StatusCode)
	}
}

func TestClientCredentialsRefuses(t *testing.T) {
	s := newServer(t, Options{Flavor: Microsoft, PublicClient: true, Grants: []string{GrantClientCredentials}})
	good := func() url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_id": {testClientID},
			"client_secret": {testClientSecret}, "scope": {"https://outlook.office365.com/.default"}}
	}
	if status, body := postForm(t, s, http.MethodPost, good()); status != 200 || body["access_token"] == nil || body["refresh_token"] != nil {
		t.Fatalf("good request: %d %v", status, body)
	}
	for _, tc := range []struct {
		name    string
		edit    func(url.Values)
		errCode string
		aadsts  string
	}{
		{"delegated scope", func(v url.Values) { v.Set("scope", "https://outlook.office365.com/IMAP.AccessAsApp") }, "invalid_scope", "AADSTS1002012"},
		{"two scopes", func(v url.Values) { v.Set("scope", "https://outlook.office365.com/.default offline_access") }, "invalid_scope", "AADSTS1002012"},
		{"no secret, even for a public client", func(v url.Values) { v.Del("client_secret") }, "invalid_client", "AADSTS7000218"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := good()
			tc.edit(form)
			_, body := postForm(t, s, http.MethodPost, form)
			if body["error"] != tc.errCode || !strings.HasPrefix(body["error_description"].(string), tc.aadsts) {
				t.Errorf("got %v, want %s %s", body, tc.errCode, tc.aadsts)
			}
		})
	}
	// Two client authentication methods at once.
	req, _ := http.NewRequest(http.MethodPost, s.TokenURL(), strings.NewReader(good().Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(testClientID, testClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("Basic and client_secret together: %d, want 400", resp.StatusCode)
	}
}

func TestJWTBearerRefuses(t *testing.T) {
	s := newServer(t, Options{Flavor: Google, Grants: []string{GrantJWTBearer}})
	const email = "sa@proj.iam.gserviceaccount.test"
	keyJSON, clientID, err := s.NewServiceAccount(email)
	if err != nil {
		t.Fatal(err)
	}
	s.DelegateDomainWide(clientID, "https://mail.google.com/")
	var key struct {
		PrivateKey   string `json:"private_key"`
		PrivateKeyID string `json:"private_key_id"`
	}
	if err := json.Unmarshal(keyJSON, &key); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(key.PrivateKey))
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := parsed.(*rsa.PrivateKey)
	now := time.Now()
	good := func() *claims {
		return &claims{Iss: email, Scope: "https://mail.google.com/", Aud: s.TokenURL(), Sub: "user@contoso.test",
			Iat: now.Unix(), Exp: now.Add(time.Hour).Unix()}
	}
	for _, tc := range []struct {
		name    string
		edit    func(*claims)
		status  int
		errCode string
		desc    string
	}{
		{"good", func(*claims) {}, 200, "", ""},
		{"wrong audience", func(c *claims) { c.Aud = "https://oauth2.googleapis.com/token" }, 400, "invalid_grant", "Failed audience check"},
		{"too long", func(c *claims) { c.Exp = now.Add(2 * time.Hour).Unix() }, 400, "invalid_grant", "short-lived"},
		{"expired", func(c *claims) { c.Iat, c.Exp = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix() }, 400, "invalid_grant", "short-lived"},
		{"undelegated scope", func(c *claims) { c.Scope = "https://www.googleapis.com/auth/drive" }, 401, "unauthorized_client", "not authorized"},
		{"unknown issuer", func(c *claims) { c.Iss = "other@proj.iam.gserviceaccount.test" }, 400, "invalid_grant", ""},
		{"no scope", func(c *claims) { c.Scope = "" }, 400, "invalid_scope", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := good()
			tc.edit(cs)
			assertion := signJWT(t, cs, key.PrivateKeyID, rsaKey)
			status, body := postForm(t, s, http.MethodPost, url.Values{"grant_type": {GrantJWTBearer}, "assertion": {assertion}})
			if status != tc.status || (tc.errCode != "" && body["error"] != tc.errCode) {
				t.Errorf("got %d %v, want %d %s", status, body, tc.status, tc.errCode)
			}
			if d, _ := body["error_description"].(string); !strings.Contains(d, tc.desc) {
				t.Errorf("description %q lacks %q", d, tc.desc)
			}
			if tc.status == 200 {
				if err := s.Validate("user@contoso.test", body["access_token"].(string)); err != nil {
					t.Errorf("the token does not open the subject's mailbox: %v", err)
				}
			}
		})
	}
}

func TestDeviceEndpointGoogleRefusesGmailScope(t *testing.T) {
	s := newServer(t, Options{Flavor: Google, Grants: []string{GrantDeviceCode}})
	resp, err := http.PostForm(s.DeviceAuthURL(), url.Values{"client_id": {testClientID}, "scope": {"https://mail.google.com/"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != http.StatusBadRequest || body["error"] != "invalid_scope" {
		t.Errorf("got %d %v", resp.StatusCode, body)
	}
}
