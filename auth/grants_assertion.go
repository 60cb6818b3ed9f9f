package auth

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// The client_credentials grant with a certificate instead of a client
// secret: each token request carries a new JWT signed with the app's key
// (RFC 7523 section 2.2; Entra ID calls it a certificate credential,
// https://learn.microsoft.com/entra/identity-platform/certificate-credentials).

// clientAssertionType is the client_assertion_type of a JWT client
// assertion (RFC 7523 section 2.2).
const clientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionLifetime is how long a client assertion is valid. Each one is
// used for a single request right away.
const assertionLifetime = 10 * time.Minute

// assertionHeader is the JOSE header of a client assertion. Entra ID finds
// the app's certificate by its thumbprint: x5t (SHA-1) and x5t#S256
// (SHA-256) of its DER encoding, base64url.
type assertionHeader struct {
	Alg     string `json:"alg"`
	Typ     string `json:"typ"`
	X5t     string `json:"x5t"`
	X5tS256 string `json:"x5t#S256"`
}

// assertionClaims are the claims Entra ID requires: aud is the token
// endpoint, iss and sub the client ID, jti unique per assertion.
type assertionClaims struct {
	Aud string `json:"aud"`
	Iss string `json:"iss"`
	Sub string `json:"sub"`
	Jti string `json:"jti"`
	Nbf int64  `json:"nbf"`
	Iat int64  `json:"iat"`
	Exp int64  `json:"exp"`
}

// clientAssertion returns a compact JWS, signed RS256 with cc's key, that
// authenticates clientID at the token endpoint audience from now until
// assertionLifetime later.
func clientAssertion(cc *config.ClientCertificate, clientID, audience string, now time.Time) (string, error) {
	der := cc.Certificate.Raw
	sum1 := sha1.Sum(der)
	sum256 := sha256.Sum256(der)
	header := assertionHeader{
		Alg:     "RS256",
		Typ:     "JWT",
		X5t:     base64.RawURLEncoding.EncodeToString(sum1[:]),
		X5tS256: base64.RawURLEncoding.EncodeToString(sum256[:]),
	}
	claims := assertionClaims{
		Aud: audience,
		Iss: clientID,
		Sub: clientID,
		Jti: newUUID(),
		Nbf: now.Unix(),
		Iat: now.Unix(),
		Exp: now.Add(assertionLifetime).Unix(),
	}
	h, err := json.Marshal(header)
	if err != nil {
		return "", fmt.Errorf("encoding the client assertion header: %w", err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding the client assertion claims: %w", err)
	}
	signed := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, cc.Key, crypto.SHA256, digest[:])
	if err != nil {
		return "", fmt.Errorf("signing the client assertion: %w", err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// certificateCredential signs the client assertions of one provider. It
// reads the certificate and key again before every token request, so that
// files replaced in place (a renewed certificate) take effect without a
// restart; when they no longer load (half replaced, say), it keeps the
// last pair that did, and config validation at the next reload reports
// the files. It is safe for concurrent use.
type certificateCredential struct {
	certFile, keyFile string

	mu   sync.Mutex
	last *config.ClientCertificate
}

// loadCertificateCredential loads p's certificate and key once, so that a
// broken pair fails at once with an explanation.
func loadCertificateCredential(p *config.Provider) (*certificateCredential, error) {
	cc, err := config.LoadClientCertificate(p.ClientCertificateFile, p.ClientKeyFile)
	if err != nil {
		return nil, &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
			"cannot use the client certificate of provider %s (%v); check providers.%s.client_certificate_file and client_key_file",
			p.Name, err, p.Name), 400)}
	}
	return &certificateCredential{certFile: p.ClientCertificateFile, keyFile: p.ClientKeyFile, last: cc}, nil
}

// current returns the certificate and key on disk now, or the last ones
// that loaded.
func (c *certificateCredential) current() *config.ClientCertificate {
	cc, err := config.LoadClientCertificate(c.certFile, c.keyFile)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		c.last = cc
	}
	return c.last
}

// assertionFetcher returns the client_credentials fetcher of a provider
// with a certificate: grant_type, client_id and scope as with a secret,
// plus client_assertion_type and a new client_assertion for each request,
// and no client_secret (x/oauth2 sends none when it is empty and the
// style is AuthStyleInParams).
func assertionFetcher(p *config.Provider) (func(context.Context) (*oauth2.Token, error), error) {
	cred, err := loadCertificateCredential(p)
	if err != nil {
		return nil, err
	}
	clientID, tokenURL := p.ClientID, p.TokenURL
	scopes := append([]string(nil), p.AppScopes...)
	return func(ctx context.Context) (*oauth2.Token, error) {
		assertion, err := clientAssertion(cred.current(), clientID, tokenURL, time.Now())
		if err != nil {
			return nil, err
		}
		cc := &clientcredentials.Config{
			ClientID: clientID,
			TokenURL: tokenURL,
			Scopes:   scopes,
			EndpointParams: url.Values{
				"client_assertion_type": {clientAssertionType},
				"client_assertion":      {assertion},
			},
			AuthStyle: oauth2.AuthStyleInParams,
		}
		// A new Config for every request: the assertion is single use, and
		// Config.Token starts from nothing, with no reuse layer of its own.
		return cc.Token(ctx)
	}, nil
}
