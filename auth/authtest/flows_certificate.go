package authtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// ClientAssertionType is the client_assertion_type of a JWT client
// assertion (RFC 7523 section 2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// MaxAssertionLifetime is the longest validity (exp minus the current
// time) the token endpoint accepts in a client assertion.
const MaxAssertionLifetime = 10 * time.Minute

// certificateDocs is where Entra ID's errors about client assertions point.
const certificateDocs = "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."

// clientCert is a certificate registered with AddClientCertificate.
type clientCert struct {
	cert         *x509.Certificate
	key          *rsa.PublicKey
	x5t, x5tS256 string // base64url SHA-1 and SHA-256 of the DER
	thumbprint   string // hex SHA-1, as the Entra admin center shows it
}

// GenerateCertificate returns a new self-signed certificate for
// commonName, valid from an hour ago for a year, and its RSA 2048 key
// (PKCS #8), both PEM: what
//
//	openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=NAME -keyout KEY -out CERT
//
// makes. It does not register the certificate with any Server.
func GenerateCertificate(commonName string) (certPEM, keyPEM []byte, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("authtest: generating a certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("authtest: generating a serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("authtest: creating a certificate: %w", err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("authtest: encoding a certificate key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), nil
}

// NewClientCertificate generates a certificate and key with
// GenerateCertificate, registers the certificate with AddClientCertificate,
// and returns both, PEM.
func (s *Server) NewClientCertificate() (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, err = GenerateCertificate("imap-oauth-proxy")
	if err != nil {
		return nil, nil, err
	}
	if err := s.AddClientCertificate(certPEM); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// AddClientCertificate registers a certificate (PEM or DER) with an RSA
// key as a credential of the app, as uploading it under Entra ID > App
// registrations > Certificates & secrets > Certificates does (Microsoft
// flavor only). From then on the client_credentials grant wants a client
// assertion (RFC 7523 section 2.2) instead of a client secret:
// client_assertion_type ClientAssertionType and a client_assertion that is
// an RS256 JWT whose header names a registered certificate by x5t (SHA-1
// thumbprint) or x5t#S256 (SHA-256), signed by its key, valid now (cert
// dates included), with aud the TokenURL, iss and sub the client_id, nbf
// not in the future, exp in the future but at most MaxAssertionLifetime
// ahead, and a jti not used before. Refusals carry Entra ID's codes:
// AADSTS700027 (unknown certificate, bad signature, expired key),
// AADSTS700021 (iss or sub), AADSTS700023 (aud), AADSTS700024 (times),
// AADSTS50027 (malformed) and AADSTS50013 (jti replayed).
//
// Use it on a Server without Options.ClientSecret: the token endpoint
// checks a configured secret before it looks at an assertion, and refuses
// a request without the secret.
func (s *Server) AddClientCertificate(certPEM []byte) error {
	der := certPEM
	if block, _ := pem.Decode(certPEM); block != nil {
		der = block.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("authtest: parsing a client certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return errors.New("authtest: the client certificate's key is not RSA")
	}
	sum1, sum256 := sha1.Sum(cert.Raw), sha256.Sum256(cert.Raw)
	c := &clientCert{
		cert:       cert,
		key:        pub,
		x5t:        base64.RawURLEncoding.EncodeToString(sum1[:]),
		x5tS256:    base64.RawURLEncoding.EncodeToString(sum256[:]),
		thumbprint: strings.ToUpper(hex.EncodeToString(sum1[:])),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clientCerts = append(s.clientCerts, c)
	return nil
}

// refusal is a token endpoint error answer.
type refusal struct {
	status int
	code   string
	text   errorText
}

func invalidClient(aadsts int, desc string) *refusal {
	return &refusal{http.StatusUnauthorized, "invalid_client", errorText{aadsts, desc}}
}

// jwtFields is a JWT header or claims set as the token endpoint reads it:
// by the wire names, with no types shared with the client that wrote it.
type jwtFields map[string]any

// str is the string field name, "" when missing or not a string.
func (f jwtFields) str(name string) string {
	v, _ := f[name].(string)
	return v
}

// unix is the NumericDate field name in seconds, 0 when missing or not a
// number.
func (f jwtFields) unix(name string) int64 {
	v, _ := f[name].(float64)
	return int64(v)
}

// checkClientAssertion authenticates a client_credentials request of
// clientID by its client assertion, when it carries one or the app has a
// certificate. A client secret, if configured, was checked already. A nil
// result lets the request through; an accepted assertion's jti is
// remembered until its exp.
func (s *Server) checkClientAssertion(form url.Values, clientID string) *refusal {
	s.mu.Lock()
	certs := slices.Clone(s.clientCerts)
	s.mu.Unlock()

	if !form.Has("client_assertion") && !form.Has("client_assertion_type") {
		switch {
		case len(certs) == 0 || s.opts.ClientSecret != "":
			return nil // no certificate, or a secret checked by serveToken
		case form.Get("client_secret") != "":
			// The app has certificates and no secrets.
			return &refusal{http.StatusUnauthorized, "invalid_client", s.describe(errClientSecret, clientID)}
		}
		return &refusal{http.StatusUnauthorized, "invalid_client", s.describe(errNoSecret, "")}
	}
	if form.Has("client_secret") {
		// RFC 6749 section 2.3: one authentication method per request.
		return &refusal{http.StatusBadRequest, "invalid_request", errorText{9002313,
			"Invalid request. Request is malformed or invalid: client_secret and client_assertion were both sent."}}
	}
	if form.Get("client_assertion_type") != ClientAssertionType {
		return &refusal{http.StatusBadRequest, "invalid_request", errorText{900144,
			"The request body must contain the following parameter: 'client_assertion_type' with the value " + ClientAssertionType + "."}}
	}
	malformed := func(why string) *refusal {
		return invalidClient(50027, "JWT token is invalid or malformed: "+why+".")
	}
	header, claims := jwtFields{}, jwtFields{}
	signed, sig, err := decodeJWS(form.Get("client_assertion"), &header, &claims)
	switch {
	case err != nil:
		return malformed("the client assertion is not a compact JWS")
	case header.str("alg") != "RS256":
		return malformed(fmt.Sprintf("alg %q is not supported, use RS256", header.str("alg")))
	case header.str("x5t") == "" && header.str("x5t#S256") == "":
		return malformed("the header has neither x5t nor x5t#S256")
	}

	// The certificate every thumbprint the header gives names.
	var cert *clientCert
	shown := header.str("x5t")
	if shown == "" {
		shown = header.str("x5t#S256")
	}
	for _, c := range certs {
		if (header.str("x5t") == "" || header.str("x5t") == c.x5t) && (header.str("x5t#S256") == "" || header.str("x5t#S256") == c.x5tS256) {
			cert = c
			break
		}
	}
	if cert == nil {
		return invalidClient(700027, fmt.Sprintf("The certificate with identifier used to sign the client assertion is not registered on application. "+
			"[Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, Graph Explorer or directly "+
			"use MS Graph to see configured keys for app Id '%s'.]", thumbprintHex(shown), clientID))
	}
	found := fmt.Sprintf("Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s'", cert.thumbprint,
		cert.cert.NotBefore.UTC().Format("01/02/2006 15:04:05"), cert.cert.NotAfter.UTC().Format("01/02/2006 15:04:05"))
	digest := sha256.Sum256([]byte(signed))
	if rsa.VerifyPKCS1v15(cert.key, crypto.SHA256, digest[:], sig) != nil {
		return invalidClient(700027, "Client assertion contains an invalid signature. "+
			"[Reason - The provided signature value did not match the expected signature value., "+found+"]")
	}
	s.mu.Lock()
	now := s.now()
	s.mu.Unlock()
	if now.Before(cert.cert.NotBefore) || now.After(cert.cert.NotAfter) {
		return invalidClient(700027, "Client assertion contains an invalid signature. [Reason - The key used is expired., "+found+"]")
	}
	if claims.str("iss") != clientID || claims.str("sub") != clientID {
		return invalidClient(700021, "Client assertion application identifier doesn't match 'client_id' parameter. "+certificateDocs)
	}
	if claims.str("aud") != s.TokenURL() {
		return invalidClient(700023, "Client assertion audience claim does not match Realm issuer. "+certificateDocs)
	}
	if claims.unix("nbf") == 0 || claims.unix("exp") == 0 || claims.unix("nbf") > now.Unix() || claims.unix("exp") <= now.Unix() ||
		claims.unix("exp") > now.Add(MaxAssertionLifetime).Unix() {
		return invalidClient(700024, fmt.Sprintf("Client assertion is not within its valid time range. Current time: %s, "+
			"assertion valid from %s, expiry time of assertion %s. %s", now.UTC().Format(time.RFC3339),
			time.Unix(claims.unix("nbf"), 0).UTC().Format(time.RFC3339), time.Unix(claims.unix("exp"), 0).UTC().Format(time.RFC3339), certificateDocs))
	}
	if claims.str("jti") == "" {
		return malformed("the client assertion has no jti")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for jti, exp := range s.assertions {
		if !now.Before(exp) {
			delete(s.assertions, jti)
		}
	}
	if _, used := s.assertions[claims.str("jti")]; used {
		return invalidClient(50013, "Assertion is invalid: the client assertion with this jti was already used. "+
			"Each request needs a new client assertion. "+certificateDocs)
	}
	s.assertions[claims.str("jti")] = time.Unix(claims.unix("exp"), 0)
	return nil
}

// thumbprintHex shows a base64url thumbprint as Entra ID does: upper-case
// hex.
func thumbprintHex(b64 string) string {
	b, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil {
		return "(not base64url)"
	}
	return strings.ToUpper(hex.EncodeToString(b))
}

// decodeJWS decodes a compact JWS into header and claims and returns its
// signed part and signature.
func decodeJWS(token string, header, claims any) (signed string, sig []byte, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", nil, errBadJWT
	}
	for i, v := range []any{header, claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil || json.Unmarshal(b, v) != nil {
			return "", nil, errBadJWT
		}
	}
	sig, err = base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", nil, errBadJWT
	}
	return parts[0] + "." + parts[1], sig, nil
}
