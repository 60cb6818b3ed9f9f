package authtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testCert is a certificate and its key, parsed.
type testCert struct {
	x5t, x5tS256 string
	key          *rsa.PrivateKey
}

func parseTestCert(t *testing.T, certPEM, keyPEM []byte) testCert {
	t.Helper()
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		t.Fatal("GenerateCertificate returned no PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	s1, s256 := sha1.Sum(cb.Bytes), sha256.Sum256(cb.Bytes)
	return testCert{
		x5t:     base64.RawURLEncoding.EncodeToString(s1[:]),
		x5tS256: base64.RawURLEncoding.EncodeToString(s256[:]),
		key:     key.(*rsa.PrivateKey),
	}
}

// signAssertion returns an RS256 JWS of header and claims signed by key.
func signAssertion(t *testing.T, key *rsa.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(header) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// certServer is a Microsoft token endpoint whose app has one certificate
// and no client secret.
func certServer(t *testing.T) (*Server, testCert) {
	t.Helper()
	s := NewServer(Options{Flavor: Microsoft, ClientID: testClientID, Grants: []string{GrantClientCredentials}})
	t.Cleanup(s.Close)
	certPEM, keyPEM, err := s.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return s, parseTestCert(t, certPEM, keyPEM)
}

func assertionForm(assertion string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {testClientID},
		"scope":                 {"https://outlook.office365.com/.default"},
		"client_assertion_type": {ClientAssertionType},
		"client_assertion":      {assertion},
	}
}

func TestClientAssertion(t *testing.T) {
	s, cert := certServer(t)
	otherCert, otherKey, err := GenerateCertificate("other")
	if err != nil {
		t.Fatal(err)
	}
	other := parseTestCert(t, otherCert, otherKey)
	now := time.Now()
	n := 0
	goodHeader := func() map[string]any {
		return map[string]any{"alg": "RS256", "typ": "JWT", "x5t": cert.x5t, "x5t#S256": cert.x5tS256}
	}
	goodClaims := func() map[string]any {
		n++
		return map[string]any{"aud": s.TokenURL(), "iss": testClientID, "sub": testClientID,
			"jti": "jti-" + strconv.Itoa(n),
			"nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}
	}

	for _, tc := range []struct {
		name    string
		key     *rsa.PrivateKey
		header  func(map[string]any)
		claims  func(map[string]any)
		status  int
		errCode string
		desc    string // prefix of error_description
	}{
		{"good", nil, nil, nil, 200, "", ""},
		{"x5t only", nil, func(h map[string]any) { delete(h, "x5t#S256") }, nil, 200, "", ""},
		{"x5t#S256 only", nil, func(h map[string]any) { delete(h, "x5t") }, nil, 200, "", ""},
		{"unknown certificate", other.key, func(h map[string]any) { h["x5t"], h["x5t#S256"] = other.x5t, other.x5tS256 }, nil,
			401, "invalid_client", "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered"},
		{"thumbprints of two certificates", nil, func(h map[string]any) { h["x5t#S256"] = other.x5tS256 }, nil,
			401, "invalid_client", "AADSTS700027: The certificate with identifier"},
		{"signed by another key", other.key, nil, nil, 401, "invalid_client", "AADSTS700027: Client assertion contains an invalid signature"},
		{"no thumbprint", nil, func(h map[string]any) { delete(h, "x5t"); delete(h, "x5t#S256") }, nil, 401, "invalid_client", "AADSTS50027"},
		{"alg PS256", nil, func(h map[string]any) { h["alg"] = "PS256" }, nil, 401, "invalid_client", "AADSTS50027"},
		{"iss", nil, nil, func(c map[string]any) { c["iss"] = "other-app" }, 401, "invalid_client", "AADSTS700021"},
		{"sub", nil, nil, func(c map[string]any) { c["sub"] = "other-app" }, 401, "invalid_client", "AADSTS700021"},
		{"aud", nil, nil, func(c map[string]any) { c["aud"] = "https://login.microsoftonline.com/common/oauth2/v2.0/token" },
			401, "invalid_client", "AADSTS700023"},
		{"expired", nil, nil, func(c map[string]any) { c["exp"] = now.Add(-time.Second).Unix() }, 401, "invalid_client", "AADSTS700024"},
		{"too long", nil, nil, func(c map[string]any) { c["exp"] = now.Add(11 * time.Minute).Unix() }, 401, "invalid_client", "AADSTS700024"},
		{"not yet valid", nil, nil, func(c map[string]any) { c["nbf"] = now.Add(time.Minute).Unix() }, 401, "invalid_client", "AADSTS700024"},
		{"no nbf", nil, nil, func(c map[string]any) { delete(c, "nbf") }, 401, "invalid_client", "AADSTS700024"},
		{"no jti", nil, nil, func(c map[string]any) { delete(c, "jti") }, 401, "invalid_client", "AADSTS50027"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, c := goodHeader(), goodClaims()
			if tc.header != nil {
				tc.header(h)
			}
			if tc.claims != nil {
				tc.claims(c)
			}
			key := cert.key
			if tc.key != nil {
				key = tc.key
			}
			status, body := postForm(t, s, http.MethodPost, assertionForm(signAssertion(t, key, h, c)))
			if status != tc.status || (tc.errCode != "" && body["error"] != tc.errCode) {
				t.Errorf("got %d %v, want %d %s", status, body, tc.status, tc.errCode)
			}
			if d, _ := body["error_description"].(string); !strings.HasPrefix(d, tc.desc) {
				t.Errorf("description %q, want prefix %q", d, tc.desc)
			}
			if codes, _ := body["error_codes"].([]any); tc.status != 200 && len(codes) != 1 {
				t.Errorf("error_codes %v", body["error_codes"])
			}
			if tc.status == 200 && body["access_token"] == nil {
				t.Errorf("no access token: %v", body)
			}
		})
	}

	t.Run("replayed jti", func(t *testing.T) {
		assertion := signAssertion(t, cert.key, goodHeader(), goodClaims())
		if status, body := postForm(t, s, http.MethodPost, assertionForm(assertion)); status != 200 {
			t.Fatalf("first use: %d %v", status, body)
		}
		status, body := postForm(t, s, http.MethodPost, assertionForm(assertion))
		if d, _ := body["error_description"].(string); status != 401 || body["error"] != "invalid_client" || !strings.HasPrefix(d, "AADSTS50013") {
			t.Errorf("replay: %d %v", status, body)
		}
	})

	t.Run("malformed requests", func(t *testing.T) {
		assertion := signAssertion(t, cert.key, goodHeader(), goodClaims())
		for _, tc := range []struct {
			name    string
			edit    func(url.Values)
			status  int
			errCode string
			aadsts  string
		}{
			{"not a JWS", func(v url.Values) { v.Set("client_assertion", "abc") }, 401, "invalid_client", "AADSTS50027"},
			{"wrong assertion type", func(v url.Values) { v.Set("client_assertion_type", "jwt") }, 400, "invalid_request", "AADSTS900144"},
			{"secret and assertion", func(v url.Values) { v.Set("client_secret", "x") }, 400, "invalid_request", "AADSTS9002313"},
			{"no assertion", func(v url.Values) { v.Del("client_assertion"); v.Del("client_assertion_type") }, 401, "invalid_client", "AADSTS7000218"},
			{"a secret instead", func(v url.Values) {
				v.Del("client_assertion")
				v.Del("client_assertion_type")
				v.Set("client_secret", "x")
			}, 401, "invalid_client", "AADSTS7000215"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				form := assertionForm(assertion)
				tc.edit(form)
				status, body := postForm(t, s, http.MethodPost, form)
				if d, _ := body["error_description"].(string); status != tc.status || body["error"] != tc.errCode || !strings.HasPrefix(d, tc.aadsts+": ") {
					t.Errorf("got %d %v, want %d %s %s", status, body, tc.status, tc.errCode, tc.aadsts)
				}
			})
		}
	})

	t.Run("expired certificate", func(t *testing.T) {
		later := now.AddDate(2, 0, 0)
		s.SetClock(func() time.Time { return later })
		defer s.SetClock(time.Now)
		c := goodClaims()
		c["nbf"], c["exp"] = later.Unix(), later.Add(5*time.Minute).Unix()
		status, body := postForm(t, s, http.MethodPost, assertionForm(signAssertion(t, cert.key, goodHeader(), c)))
		if d, _ := body["error_description"].(string); status != 401 || !strings.Contains(d, "The key used is expired") {
			t.Errorf("got %d %v", status, body)
		}
	})

	// Only accepted requests are recorded, each with its assertion.
	forms := s.TokenRequests(GrantClientCredentials)
	if len(forms) != 4 {
		t.Errorf("%d recorded requests, want the 4 accepted", len(forms))
	}
	for _, f := range forms {
		if f.Get("client_assertion") == "" || f.Has("client_secret") {
			t.Errorf("recorded form %v", f)
		}
	}
}

// TestClientAssertionWithoutCertificates checks that a server whose app
// has no certificate refuses assertions as unsigned by a known key, and
// still serves client secrets.
func TestClientAssertionWithoutCertificates(t *testing.T) {
	s := NewServer(Options{Flavor: Microsoft, ClientID: testClientID, Grants: []string{GrantClientCredentials}})
	t.Cleanup(s.Close)
	certPEM, keyPEM, err := GenerateCertificate("unregistered")
	if err != nil {
		t.Fatal(err)
	}
	cert := parseTestCert(t, certPEM, keyPEM)
	now := time.Now()
	assertion := signAssertion(t, cert.key, map[string]any{"alg": "RS256", "typ": "JWT", "x5t": cert.x5t},
		map[string]any{"aud": s.TokenURL(), "iss": testClientID, "sub": testClientID, "jti": "1", "nbf": now.Unix(), "exp": now.Add(time.Minute).Unix()})
	status, body := postForm(t, s, http.MethodPost, assertionForm(assertion))
	if d, _ := body["error_description"].(string); status != 401 || !strings.HasPrefix(d, "AADSTS700027") {
		t.Errorf("got %d %v", status, body)
	}
	form := assertionForm("")
	form.Del("client_assertion")
	form.Del("client_assertion_type")
	if status, body := postForm(t, s, http.MethodPost, form); status != 200 {
		t.Errorf("without a certificate or secret configured: %d %v", status, body)
	}
	if err := s.AddClientCertificate([]byte("not a certificate")); err == nil {
		t.Error("AddClientCertificate accepted garbage")
	}
}
