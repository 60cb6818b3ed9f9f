package auth

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// writeCertificate writes a certificate and key into a new directory and
// returns the provider lines naming them.
func writeCertificate(t *testing.T, certPEM, keyPEM []byte) (lines, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "app.pem"), filepath.Join(dir, "app.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("tenant = \"contoso.onmicrosoft.com\"\nclient_certificate_file = %q\nclient_key_file = %q\n", certFile, keyFile),
		certFile, keyFile
}

// decodedAssertion is a client assertion taken apart.
type decodedAssertion struct {
	header map[string]any
	claims map[string]any
	signed string
	sig    []byte
}

func decodeAssertion(t *testing.T, jws string) decodedAssertion {
	t.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		t.Fatalf("the client assertion has %d parts, want 3", len(parts))
	}
	var d decodedAssertion
	for i, v := range []*map[string]any{&d.header, &d.claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil || json.Unmarshal(b, v) != nil {
			t.Fatalf("client assertion part %d does not decode", i)
		}
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal("the signature is not base64url")
	}
	d.signed, d.sig = parts[0]+"."+parts[1], sig
	return d
}

// thumbprints returns the base64url SHA-1 and SHA-256 of a certificate.
func thumbprints(cc *config.ClientCertificate) (x5t, x5tS256 string) {
	s1, s256 := sha1.Sum(cc.Certificate.Raw), sha256.Sum256(cc.Certificate.Raw)
	return base64.RawURLEncoding.EncodeToString(s1[:]), base64.RawURLEncoding.EncodeToString(s256[:])
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestClientAssertionShape(t *testing.T) {
	certPEM, keyPEM, err := authtest.GenerateCertificate("shape")
	if err != nil {
		t.Fatal(err)
	}
	_, certFile, keyFile := writeCertificate(t, certPEM, keyPEM)
	cc, err := config.LoadClientCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	const aud = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
	now := time.Unix(1_750_000_000, 0)
	jws, err := clientAssertion(cc, grantClientID, aud, now)
	if err != nil {
		t.Fatal(err)
	}
	d := decodeAssertion(t, jws)
	x5t, x5tS256 := thumbprints(cc)
	wantHeader := map[string]any{"alg": "RS256", "typ": "JWT", "x5t": x5t, "x5t#S256": x5tS256}
	if len(d.header) != len(wantHeader) {
		t.Errorf("header %v, want %v", d.header, wantHeader)
	}
	for k, v := range wantHeader {
		if d.header[k] != v {
			t.Errorf("header %s = %v, want %v", k, d.header[k], v)
		}
	}
	wantClaims := map[string]any{"aud": aud, "iss": grantClientID, "sub": grantClientID,
		"nbf": float64(now.Unix()), "iat": float64(now.Unix()), "exp": float64(now.Add(10 * time.Minute).Unix())}
	for k, v := range wantClaims {
		if d.claims[k] != v {
			t.Errorf("claim %s = %v, want %v", k, d.claims[k], v)
		}
	}
	if jti, _ := d.claims["jti"].(string); !uuidRE.MatchString(jti) {
		t.Errorf("jti %q is not a random UUID", jti)
	}
	if len(d.claims) != len(wantClaims)+1 {
		t.Errorf("claims %v: want exactly aud, iss, sub, jti, nbf, iat, exp", d.claims)
	}
	digest := sha256.Sum256([]byte(d.signed))
	if err := rsa.VerifyPKCS1v15(&cc.Key.PublicKey, crypto.SHA256, digest[:], d.sig); err != nil {
		t.Errorf("signature: %v", err)
	}
	again, err := clientAssertion(cc, grantClientID, aud, now)
	if err != nil {
		t.Fatal(err)
	}
	if decodeAssertion(t, again).claims["jti"] == d.claims["jti"] {
		t.Error("two assertions share a jti")
	}
}

func TestClientCredentialsCertificate(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, Grants: []string{authtest.GrantClientCredentials}})
	certPEM, keyPEM, err := s.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	lines, certFile, keyFile := writeCertificate(t, certPEM, keyPEM)
	acct := account(t, s, "microsoft", "client_credentials", sharedMailbox, lines)
	tok, err := AppToken(t.Context(), acct)
	if err != nil {
		t.Fatalf("AppToken: %v", err)
	}
	s.AllowApp(sharedMailbox)
	if err := s.Validate(sharedMailbox, tok.AccessToken); err != nil {
		t.Errorf("app token: %v", err)
	}

	// The request as the token endpoint received it.
	forms := s.TokenRequests(authtest.GrantClientCredentials)
	if len(forms) != 1 {
		t.Fatalf("%d recorded requests, want 1", len(forms))
	}
	form := forms[0]
	for k, v := range map[string]string{
		"grant_type": "client_credentials", "client_id": grantClientID, "scope": "https://outlook.office365.com/.default",
		"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
	} {
		if form.Get(k) != v {
			t.Errorf("token request %s = %q, want %q", k, form.Get(k), v)
		}
	}
	if form.Has("client_secret") {
		t.Error("the token request carries a client_secret")
	}
	cc, err := config.LoadClientCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	x5t, _ := thumbprints(cc)
	d := decodeAssertion(t, form.Get("client_assertion"))
	if d.header["x5t"] != x5t || d.claims["aud"] != s.TokenURL() {
		t.Errorf("assertion header %v, claims %v", d.header, d.claims)
	}

	// Every request gets a new assertion; the endpoint refuses replays.
	if _, err := AppToken(t.Context(), acct); err != nil {
		t.Fatalf("second AppToken: %v", err)
	}

	t.Run("replayed assertion", func(t *testing.T) {
		cc := &clientcredentials.Config{ClientID: grantClientID, TokenURL: s.TokenURL(), Scopes: acct.Provider.AppScopes,
			AuthStyle: oauth2.AuthStyleInParams, EndpointParams: url.Values{
				"client_assertion_type": {form.Get("client_assertion_type")}, "client_assertion": {form.Get("client_assertion")}}}
		_, err := cc.Token(t.Context())
		if err == nil {
			t.Fatal("a replayed assertion was accepted")
		}
		e := classifyTokenError(acct.Login, acct.Provider, acct.Grant, err)
		if e.Kind != AuthorizationFailed || !strings.Contains(e.Message, "AADSTS50013") || !strings.Contains(e.Message, "replayed") {
			t.Errorf("replay: %v", e)
		}
	})

	t.Run("clock", func(t *testing.T) {
		s.SetClock(func() time.Time { return time.Now().Add(11 * time.Minute) })
		defer s.SetClock(time.Now)
		_, err := AppToken(t.Context(), acct)
		if msg := MessageOf(err, ""); KindOf(err) != AuthorizationFailed || !strings.Contains(msg, "AADSTS700024") ||
			!strings.Contains(msg, "synchronize this host's clock") {
			t.Errorf("expired assertion: %v", err)
		}
	})
}

// TestClientCredentialsCertificateNotRegistered uses a certificate and
// key that belong together but were never uploaded to the app.
func TestClientCredentialsCertificateNotRegistered(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, Grants: []string{authtest.GrantClientCredentials}})
	if _, _, err := s.NewClientCertificate(); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := authtest.GenerateCertificate("not uploaded")
	if err != nil {
		t.Fatal(err)
	}
	lines, _, _ := writeCertificate(t, certPEM, keyPEM)
	acct := account(t, s, "microsoft", "client_credentials", sharedMailbox, lines)
	_, err = AppToken(t.Context(), acct)
	msg := MessageOf(err, "")
	for _, want := range []string{"AADSTS700027", "invalid_client", "Certificates & secrets", "providers.p.client_certificate_file",
		"imap-oauth-proxy check collector"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if KindOf(err) != AuthorizationFailed {
		t.Errorf("kind %v, want AuthorizationFailed", KindOf(err))
	}
	if len(s.TokenRequests(authtest.GrantClientCredentials)) != 0 {
		t.Error("a refused assertion was recorded as authenticated")
	}
}

// TestClientCertificateFiles checks that replaced files take effect at the
// next request, that files broken later keep the last good pair, and that
// a pair broken before the first request is explained without quoting it.
func TestClientCertificateFiles(t *testing.T) {
	s := tokenServer(t, authtest.Options{Flavor: authtest.Microsoft, Grants: []string{authtest.GrantClientCredentials}})
	certPEM, keyPEM, err := s.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	lines, certFile, keyFile := writeCertificate(t, certPEM, keyPEM)
	acct := account(t, s, "microsoft", "client_credentials", sharedMailbox, lines)
	fetch, err := appFetcher(acct)
	if err != nil {
		t.Fatal(err)
	}
	lastX5t := func() any {
		forms := s.TokenRequests(authtest.GrantClientCredentials)
		return decodeAssertion(t, forms[len(forms)-1].Get("client_assertion")).header["x5t"]
	}
	if _, err := fetch(t.Context()); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	first := lastX5t()

	// A renewed certificate, uploaded and put in place of the files.
	newCert, newKey, err := s.NewClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, newCert, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, newKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(t.Context()); err != nil {
		t.Fatalf("fetch after renewal: %v", err)
	}
	renewed := lastX5t()
	if renewed == first {
		t.Error("the replaced certificate was not used")
	}

	// A half-written key: the last good pair goes on.
	const canary = "key-canary-5e2c"
	if err := os.WriteFile(keyFile, []byte("-----BEGIN PRIVATE KEY-----\n"+canary+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fetch(t.Context()); err != nil {
		t.Fatalf("fetch with a broken key file: %v", err)
	}
	if lastX5t() != renewed {
		t.Error("a broken key file changed the certificate used")
	}

	// Broken before the first request: explained, never quoted.
	_, err = AppToken(t.Context(), acct)
	if KindOf(err) != AuthorizationFailed || !strings.Contains(MessageOf(err, ""), "client_key_file") {
		t.Errorf("broken key file: %v", err)
	}
	if strings.Contains(err.Error(), canary) {
		t.Errorf("the error quotes the key file: %v", err)
	}
}
