package authtest

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"html"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Grant types for Options.Grants.
const (
	// GrantAuthorizationCode is the authorization code grant (RFC 6749
	// section 4.1) with PKCE (RFC 7636), behind GET /authorize.
	GrantAuthorizationCode = "authorization_code"
	// GrantDeviceCode is the device authorization grant (RFC 8628),
	// behind POST /devicecode.
	GrantDeviceCode = "urn:ietf:params:oauth:grant-type:device_code"
	// GrantClientCredentials is Microsoft's app-only grant (RFC 6749
	// section 4.4).
	GrantClientCredentials = "client_credentials"
	// GrantJWTBearer is Google's service account grant (RFC 7523): a JWT
	// signed with the service account's key, sub naming the user.
	GrantJWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"
)

// DefaultSignedIn is who approves authorizations at the authorization
// endpoint until SignIn names someone else.
const DefaultSignedIn = "operator@contoso.test"

// Lifetimes of the things the authorization grants hand out.
const (
	codeTTL   = 10 * time.Minute // Entra ID: about 10 minutes
	deviceTTL = 15 * time.Minute // Entra ID: expires_in 900
)

// googleDeviceScopes are the scopes Google's device flow grants; Gmail's
// is not among them.
var googleDeviceScopes = []string{
	"openid", "email", "profile",
	"https://www.googleapis.com/auth/userinfo.email",
	"https://www.googleapis.com/auth/userinfo.profile",
	"https://www.googleapis.com/auth/drive.file",
	"https://www.googleapis.com/auth/youtube",
	"https://www.googleapis.com/auth/youtube.readonly",
}

// flows is the state of the authorization grants. Every field is guarded
// by Server.mu.
type flows struct {
	signedIn   string
	denyCode   string // error the next authorization ends with; "" approves
	denyDesc   string
	codes      map[string]*authCode
	devices    map[string]*deviceAuth // by device code
	shares     map[string]map[string]bool
	appBoxes   map[string]bool
	accounts   map[string]*serviceAccount // by client_email
	authorizes []url.Values               // queries of GET /authorize
	forms      map[string][]url.Values    // token request forms by grant type

	clientCerts []*clientCert        // AddClientCertificate, in flows_certificate.go
	assertions  map[string]time.Time // jti of accepted client assertions: their exp
}

func (f *flows) init() {
	f.signedIn = DefaultSignedIn
	f.codes = make(map[string]*authCode)
	f.devices = make(map[string]*deviceAuth)
	f.shares = make(map[string]map[string]bool)
	f.appBoxes = make(map[string]bool)
	f.accounts = make(map[string]*serviceAccount)
	f.forms = make(map[string][]url.Values)
	f.assertions = make(map[string]time.Time)
}

type authCode struct {
	clientID, redirectURI, challenge, scope, user string
	offline                                       bool
	expiry                                        time.Time
	used                                          bool
}

type deviceAuth struct {
	clientID, userCode, scope, user string
	offline                         bool
	expiry                          time.Time
	approved, denied                bool
}

type serviceAccount struct {
	email, clientID, keyID string
	key                    *rsa.PublicKey
	delegated              map[string]bool // domain-wide delegation scopes
}

func (s *Server) serves(grant string) bool { return slices.Contains(s.opts.Grants, grant) }

// AuthorizeURL returns URL + "/authorize", the authorization endpoint.
func (s *Server) AuthorizeURL() string { return s.URL + "/authorize" }

// DeviceAuthURL returns URL + "/devicecode", the device authorization
// endpoint.
func (s *Server) DeviceAuthURL() string { return s.URL + "/devicecode" }

// SignIn sets the identity that approves at the authorization endpoint
// (DefaultSignedIn until then): the account the operator signs in with.
func (s *Server) SignIn(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signedIn = user
}

// DenyNext makes the next authorization at the authorization endpoint end
// with error code (such as "access_denied" or "consent_required") and
// description instead of a code, as when the user declines or an admin
// must consent.
func (s *Server) DenyNext(code, description string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denyCode, s.denyDesc = code, description
}

// Share gives user Full Access to mailbox (a shared mailbox): user's
// delegated access tokens then open it.
func (s *Server) Share(mailbox, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shares[mailbox] == nil {
		s.shares[mailbox] = make(map[string]bool)
	}
	s.shares[mailbox][user] = true
}

// AllowApp lets the app's client_credentials tokens open mailbox, as
// Exchange's Add-MailboxPermission for the app's service principal does.
func (s *Server) AllowApp(mailbox string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appBoxes[mailbox] = true
}

// AuthorizeRequests returns the queries the authorization endpoint
// received, oldest first.
func (s *Server) AuthorizeRequests() []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]url.Values, len(s.authorizes))
	for i, q := range s.authorizes {
		out[i] = cloneValues(q)
	}
	return out
}

// TokenRequests returns the forms of the token requests of grant type
// grant that passed client authentication, oldest first (for
// GrantClientCredentials with a certificate, the client assertion
// included). For GrantJWTBearer every request is kept.
func (s *Server) TokenRequests(grant string) []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []url.Values
	for _, f := range s.forms[grant] {
		out = append(out, cloneValues(f))
	}
	return out
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}

// mayOpenLocked reports whether at opens mailbox user.
func (s *Server) mayOpenLocked(at *accessToken, user string) bool {
	if at.app {
		return s.appBoxes[user]
	}
	return at.user == user || s.shares[user][at.user]
}

// --- authorization endpoint ---------------------------------------------

// serveAuthorize is GET /authorize. The signed-in user (SignIn) approves
// at once, and the browser is redirected to redirect_uri with a code.
// Besides what the providers check, it requires state and PKCE with S256,
// which the proxy always sends.
func (s *Server) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	if !s.serves(GrantAuthorizationCode) {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	s.mu.Lock()
	s.authorizes = append(s.authorizes, cloneValues(q))
	s.mu.Unlock()

	// Errors about the client or the redirect URI are shown to the user:
	// the redirect URI cannot be trusted yet (RFC 6749 section 4.1.2.1).
	clientID, redirectURI := q.Get("client_id"), q.Get("redirect_uri")
	if clientID == "" || (s.opts.ClientID != "" && clientID != s.opts.ClientID) {
		s.errorPage(w, 700016, fmt.Sprintf("Application with identifier '%s' was not found in the directory 'contoso'.", clientID),
			"Error 401: invalid_client. The OAuth client was not found.")
		return
	}
	if !redirectMatches(s.opts.RedirectURI, redirectURI) {
		s.errorPage(w, 50011, fmt.Sprintf("The redirect URI '%s' specified in the request does not match the redirect URIs configured for the application '%s'.", redirectURI, clientID),
			"Error 400: redirect_uri_mismatch. You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy.")
		return
	}

	state := q.Get("state")
	fail := func(code, desc string) {
		redirectWith(w, r, redirectURI, url.Values{"error": {code}, "error_description": {desc}, "state": {state}})
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", fmt.Sprintf("response_type %q is not supported", q.Get("response_type")))
		return
	case strings.TrimSpace(q.Get("scope")) == "":
		fail("invalid_request", "The request must contain the parameter 'scope'.")
		return
	case state == "":
		fail("invalid_request", "authtest requires state")
		return
	case q.Get("code_challenge_method") != "S256" || !validChallenge(q.Get("code_challenge")):
		fail("invalid_request", "authtest requires PKCE: code_challenge with code_challenge_method S256")
		return
	}

	s.mu.Lock()
	if s.denyCode != "" {
		code, desc := s.denyCode, s.denyDesc
		s.denyCode, s.denyDesc = "", ""
		s.mu.Unlock()
		fail(code, desc)
		return
	}
	scope := q.Get("scope")
	offline := slices.Contains(strings.Fields(scope), "offline_access")
	if s.opts.Flavor == Google {
		offline = q.Get("access_type") == "offline"
	}
	code := newToken()
	s.codes[code] = &authCode{
		clientID: clientID, redirectURI: redirectURI, challenge: q.Get("code_challenge"),
		scope: scope, user: s.signedIn, offline: offline, expiry: s.now().Add(codeTTL),
	}
	s.mu.Unlock()

	answer := url.Values{"code": {code}, "state": {state}}
	if s.opts.Flavor == Google {
		answer.Set("scope", scope)
	} else {
		answer.Set("session_state", newUUID())
	}
	redirectWith(w, r, redirectURI, answer)
}

// redirectMatches reports whether got may be used as redirect URI when
// registered is the registered one ("" accepts any http loopback URI).
func redirectMatches(registered, got string) bool {
	g, err := url.Parse(got)
	if err != nil || g.Scheme != "http" || g.Fragment != "" || !isLoopback(g.Hostname()) {
		return false
	}
	if registered == "" {
		return true
	}
	reg, err := url.Parse(registered)
	if err != nil {
		return false
	}
	path := func(u *url.URL) string {
		if u.Path == "" {
			return "/"
		}
		return u.Path
	}
	return reg.Scheme == g.Scheme && strings.EqualFold(reg.Hostname(), g.Hostname()) && path(reg) == path(g)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validChallenge reports whether c is an S256 challenge: 43 base64url
// characters (RFC 7636 section 4.2).
func validChallenge(c string) bool {
	b, err := base64.RawURLEncoding.DecodeString(c)
	return err == nil && len(b) == sha256.Size
}

func redirectWith(w http.ResponseWriter, r *http.Request, redirectURI string, params url.Values) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
}

func (s *Server) errorPage(w http.ResponseWriter, msCode int, msText, googleText string) {
	text := googleText
	if s.opts.Flavor == Microsoft {
		text = fmt.Sprintf("AADSTS%d: %s", msCode, msText)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, "<!DOCTYPE html><title>Sign in</title><p>%s</p>\n", html.EscapeString(text))
}

// --- token endpoint: the grants that create an authorization --------------

// fail writes an error answer in the server's flavor: msCode and msText
// for Microsoft, googleText for Google.
func (s *Server) fail(w http.ResponseWriter, status int, code string, msCode int, msText, googleText string) {
	if s.opts.Flavor == Google {
		s.writeError(w, status, code, errorText{desc: googleText})
		return
	}
	s.writeError(w, status, code, errorText{code: msCode, desc: msText})
}

// serveGrant serves a grant other than refresh_token after the client
// authenticated as clientID (for client_credentials: after its client
// assertion is checked, when it sends one or the app has a certificate).
func (s *Server) serveGrant(w http.ResponseWriter, grant string, form url.Values, clientID string) {
	if grant == GrantClientCredentials && s.opts.Flavor == Microsoft {
		if no := s.checkClientAssertion(form, clientID); no != nil {
			s.writeError(w, no.status, no.code, no.text)
			return
		}
	}
	s.mu.Lock()
	s.forms[grant] = append(s.forms[grant], cloneValues(form))
	s.mu.Unlock()
	switch grant {
	case GrantAuthorizationCode:
		s.grantAuthCode(w, form, clientID)
	case GrantDeviceCode:
		s.grantDevice(w, form, clientID)
	case GrantClientCredentials:
		s.grantClientCredentials(w, form)
	}
}

func (s *Server) grantAuthCode(w http.ResponseWriter, form url.Values, clientID string) {
	for _, p := range []string{"code", "redirect_uri"} {
		if form.Get(p) == "" {
			s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, p))
			return
		}
	}
	type refusal struct {
		msCode             int
		msText, googleText string
	}
	var no *refusal
	var resp tokenResponse
	s.mu.Lock()
	c := s.codes[form.Get("code")]
	switch {
	case c == nil:
		no = &refusal{9002313, "Invalid request. Request is malformed or invalid: the code is not valid.", "Malformed auth code."}
	case c.used:
		no = &refusal{54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.", "Bad Request"}
	case !s.now().Before(c.expiry):
		no = &refusal{70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.", "Bad Request"}
	case c.clientID != clientID:
		no = &refusal{70000, "The provided authorization code was issued to another client.", "Bad Request"}
	case form.Get("redirect_uri") != c.redirectURI:
		no = &refusal{50011, fmt.Sprintf("The redirect URI '%s' specified in the request does not match the redirect URI used to request the authorization code.",
			form.Get("redirect_uri")), "Bad Request"}
	case form.Get("code_verifier") == "":
		no = &refusal{50148, "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.", "Missing code verifier."}
	case s256(form.Get("code_verifier")) != c.challenge:
		no = &refusal{501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.", "Invalid code verifier."}
	default:
		c.used = true
		resp = s.issueLocked(c.user, c.scope, c.offline)
	}
	s.mu.Unlock()
	if no != nil {
		s.fail(w, http.StatusBadRequest, "invalid_grant", no.msCode, no.msText, no.googleText)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// issueLocked issues an access token for user, with a new refresh token
// if offline. s.mu is held.
func (s *Server) issueLocked(user, scope string, offline bool) tokenResponse {
	if s.opts.Scope != "" {
		scope = s.opts.Scope
	}
	resp := tokenResponse{
		AccessToken: newToken(),
		TokenType:   "Bearer",
		ExpiresIn:   int64(s.opts.AccessTTL / time.Second),
		Scope:       scope,
	}
	now := s.now()
	s.access[resp.AccessToken] = &accessToken{user: user, scope: scope, issued: now, expiry: now.Add(s.opts.AccessTTL)}
	if offline {
		resp.RefreshToken = s.grantLocked(user)
	}
	if s.opts.Flavor == Microsoft {
		resp.ExtExpiresIn = resp.ExpiresIn
	}
	return resp
}

// --- device authorization ---------------------------------------------

// serveDeviceCode is POST /devicecode (RFC 8628 section 3.1).
func (s *Server) serveDeviceCode(w http.ResponseWriter, r *http.Request) {
	if !s.serves(GrantDeviceCode) {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeError(w, http.StatusMethodNotAllowed, "invalid_request", s.describe(errMethod, r.Method))
		return
	}
	if err := r.ParseForm(); err != nil {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMalformed, ""))
		return
	}
	clientID, scope := r.PostForm.Get("client_id"), r.PostForm.Get("scope")
	switch {
	case clientID == "":
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "client_id"))
		return
	case s.opts.ClientID != "" && clientID != s.opts.ClientID:
		s.writeError(w, http.StatusBadRequest, "invalid_client", s.describe(errClientID, clientID))
		return
	case strings.TrimSpace(scope) == "":
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "scope"))
		return
	}
	if s.opts.Flavor == Google {
		for _, sc := range strings.Fields(scope) {
			if !slices.Contains(googleDeviceScopes, sc) {
				s.fail(w, http.StatusBadRequest, "invalid_scope", 0, "", "Invalid device flow scope: "+sc)
				return
			}
		}
	}
	interval := s.opts.DeviceInterval
	if interval <= 0 {
		interval = 5
	}
	deviceCode, userCode := newToken(), newUserCode()
	s.mu.Lock()
	s.devices[deviceCode] = &deviceAuth{
		clientID: clientID, userCode: userCode, scope: scope,
		offline: s.opts.Flavor == Google || slices.Contains(strings.Fields(scope), "offline_access"),
		expiry:  s.now().Add(deviceTTL),
	}
	s.mu.Unlock()
	verify := s.URL + "/device"
	body := map[string]any{
		"device_code": deviceCode,
		"user_code":   userCode,
		"expires_in":  int(deviceTTL / time.Second),
		"interval":    interval,
	}
	if s.opts.Flavor == Google {
		body["verification_url"] = verify
	} else {
		body["verification_uri"] = verify
		body["message"] = fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.", verify, userCode)
	}
	writeJSON(w, http.StatusOK, body)
}

// newUserCode returns 9 characters, as Entra ID's user codes have.
func newUserCode() string {
	const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 9)
	for i := range b {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b[i] = alphabet[n.Int64()]
	}
	return string(b)
}

// ApproveDevice approves the pending device authorization with userCode,
// signed in as user, as the operator does on the verification page.
func (s *Server) ApproveDevice(userCode, user string) error {
	return s.decideDevice(userCode, user, true)
}

// DenyDevice declines the pending device authorization with userCode.
func (s *Server) DenyDevice(userCode string) error {
	return s.decideDevice(userCode, "", false)
}

func (s *Server) decideDevice(userCode, user string, approve bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.devices {
		if d.userCode == userCode && !d.approved && !d.denied {
			d.approved, d.denied, d.user = approve, !approve, user
			return nil
		}
	}
	return fmt.Errorf("authtest: no pending device authorization with user code %q", userCode)
}

func (s *Server) grantDevice(w http.ResponseWriter, form url.Values, clientID string) {
	code := form.Get("device_code")
	if code == "" {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "device_code"))
		return
	}
	s.mu.Lock()
	d := s.devices[code]
	switch {
	case d == nil || d.clientID != clientID:
		s.mu.Unlock()
		s.fail(w, http.StatusBadRequest, "invalid_grant", 70000, "The provided value for the input parameter 'device_code' is not valid.", "Malformed auth code.")
	case !s.now().Before(d.expiry):
		delete(s.devices, code)
		s.mu.Unlock()
		s.fail(w, http.StatusBadRequest, "expired_token", 70019, "Verification code expired.", "Expired")
	case d.denied:
		delete(s.devices, code)
		s.mu.Unlock()
		if s.opts.Flavor == Google {
			s.fail(w, http.StatusForbidden, "access_denied", 0, "", "Forbidden")
		} else {
			s.fail(w, http.StatusBadRequest, "authorization_declined", 70000, "The user declined the authorization request.", "")
		}
	case !d.approved:
		s.mu.Unlock()
		s.fail(w, http.StatusBadRequest, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling.", "Precondition Required")
	default:
		delete(s.devices, code)
		resp := s.issueLocked(d.user, d.scope, d.offline)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, resp)
	}
}

// --- client credentials (Microsoft app-only) ------------------------------

func (s *Server) grantClientCredentials(w http.ResponseWriter, form url.Values) {
	if s.opts.Flavor == Google {
		s.writeError(w, http.StatusBadRequest, "unsupported_grant_type", s.describe(errGrantType, GrantClientCredentials))
		return
	}
	scope := form.Get("scope")
	if scope == "" {
		s.writeError(w, http.StatusBadRequest, "invalid_request", s.describe(errMissing, "scope"))
		return
	}
	if f := strings.Fields(scope); len(f) != 1 || !strings.HasSuffix(f[0], "/.default") {
		s.fail(w, http.StatusBadRequest, "invalid_scope", 1002012, fmt.Sprintf(
			"The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
			scope), "")
		return
	}
	s.mu.Lock()
	resp := tokenResponse{
		AccessToken:  newToken(),
		TokenType:    "Bearer",
		ExpiresIn:    int64(s.opts.AccessTTL / time.Second),
		ExtExpiresIn: int64(s.opts.AccessTTL / time.Second),
	}
	now := s.now()
	s.access[resp.AccessToken] = &accessToken{app: true, scope: scope, issued: now, expiry: now.Add(s.opts.AccessTTL)}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

// --- JWT bearer (Google service accounts) ---------------------------------

// NewServiceAccount creates a service account email with a new RSA key and
// returns its JSON key file, as the Google Cloud console downloads it (its
// token_uri is this server's TokenURL), and its numeric client ID, which
// DelegateDomainWide takes.
func (s *Server) NewServiceAccount(email string) (keyJSON []byte, clientID string, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, "", fmt.Errorf("authtest: generating service account key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, "", fmt.Errorf("authtest: encoding service account key: %w", err)
	}
	idBytes := make([]byte, 20)
	rand.Read(idBytes)
	keyID := hex.EncodeToString(idBytes)
	n, _ := rand.Int(rand.Reader, new(big.Int).Exp(big.NewInt(10), big.NewInt(20), nil))
	clientID = fmt.Sprintf("1%020d", n)
	keyJSON, err = json.MarshalIndent(map[string]string{
		"type":                        "service_account",
		"project_id":                  "authtest-project",
		"private_key_id":              keyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                email,
		"client_id":                   clientID,
		"auth_uri":                    s.AuthorizeURL(),
		"token_uri":                   s.TokenURL(),
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
	}, "", "  ")
	if err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	s.accounts[email] = &serviceAccount{email: email, clientID: clientID, keyID: keyID, key: &key.PublicKey,
		delegated: make(map[string]bool)}
	s.mu.Unlock()
	return keyJSON, clientID, nil
}

// DelegateDomainWide grants the service account with clientID the scopes
// for every user of the domain, as the Workspace Admin console's
// domain-wide delegation does.
func (s *Server) DelegateDomainWide(clientID string, scopes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.accounts {
		if a.clientID == clientID {
			for _, sc := range scopes {
				a.delegated[sc] = true
			}
		}
	}
}

// jwtClaims are the claims Google reads from a service account assertion.
type jwtClaims struct {
	Iss   string `json:"iss"`
	Scope string `json:"scope"`
	Aud   string `json:"aud"`
	Exp   int64  `json:"exp"`
	Iat   int64  `json:"iat"`
	Sub   string `json:"sub"`
}

var errBadJWT = errors.New("bad JWT")

func (s *Server) grantJWTBearer(w http.ResponseWriter, form url.Values) {
	s.mu.Lock()
	s.forms[GrantJWTBearer] = append(s.forms[GrantJWTBearer], cloneValues(form))
	s.mu.Unlock()
	if s.opts.Flavor != Google {
		s.writeError(w, http.StatusBadRequest, "unsupported_grant_type", s.describe(errGrantType, GrantJWTBearer))
		return
	}
	invalid := func(status int, code, desc string) { s.fail(w, status, code, 0, "", desc) }
	assertion := form.Get("assertion")
	if assertion == "" {
		invalid(http.StatusBadRequest, "invalid_request", "Missing required parameter: assertion")
		return
	}
	header, claims, signed, sig, err := splitJWT(assertion)
	if err != nil || header.Alg != "RS256" {
		invalid(http.StatusBadRequest, "invalid_grant", "Invalid JWT Signature.")
		return
	}
	s.mu.Lock()
	acct := s.accounts[claims.Iss]
	var delegated map[string]bool
	if acct != nil {
		delegated = copyBools(acct.delegated)
	}
	now := s.now()
	s.mu.Unlock()
	if acct == nil {
		invalid(http.StatusBadRequest, "invalid_grant", "Invalid grant: account not found")
		return
	}
	digest := sha256.Sum256([]byte(signed))
	if (header.Kid != "" && header.Kid != acct.keyID) || rsa.VerifyPKCS1v15(acct.key, crypto.SHA256, digest[:], sig) != nil {
		invalid(http.StatusBadRequest, "invalid_grant", "Invalid JWT Signature.")
		return
	}
	if claims.Aud != s.TokenURL() {
		invalid(http.StatusBadRequest, "invalid_grant", "Invalid JWT: Failed audience check. The expected value is "+s.TokenURL())
		return
	}
	if claims.Iat > now.Add(5*time.Minute).Unix() || claims.Exp <= now.Unix() || claims.Exp-claims.Iat > 3600 || claims.Exp <= claims.Iat {
		invalid(http.StatusBadRequest, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
		return
	}
	scopes := strings.Fields(claims.Scope)
	if len(scopes) == 0 {
		invalid(http.StatusBadRequest, "invalid_scope", "Empty or missing scope not allowed.")
		return
	}
	user := claims.Iss
	if claims.Sub != "" {
		for _, sc := range scopes {
			if !delegated[sc] {
				invalid(http.StatusUnauthorized, "unauthorized_client",
					"Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.")
				return
			}
		}
		if !strings.Contains(claims.Sub, "@") {
			invalid(http.StatusBadRequest, "invalid_grant", "Invalid email or User ID")
			return
		}
		user = claims.Sub
	}
	s.mu.Lock()
	resp := tokenResponse{
		AccessToken: newToken(),
		TokenType:   "Bearer",
		ExpiresIn:   int64(s.opts.AccessTTL / time.Second),
	}
	s.access[resp.AccessToken] = &accessToken{user: user, scope: claims.Scope, issued: now, expiry: now.Add(s.opts.AccessTTL)}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

func copyBools(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

type jwtHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ"`
	Kid string `json:"kid"`
}

// splitJWT decodes a compact JWS: its header, claims, signed part and
// signature.
func splitJWT(token string) (h jwtHeader, c jwtClaims, signed string, sig []byte, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return h, c, "", nil, errBadJWT
	}
	dec := func(part string, v any) error {
		b, err := base64.RawURLEncoding.DecodeString(part)
		if err != nil {
			return errBadJWT
		}
		if v == nil {
			return nil
		}
		if json.Unmarshal(b, v) != nil {
			return errBadJWT
		}
		return nil
	}
	if err := dec(parts[0], &h); err != nil {
		return h, c, "", nil, err
	}
	if err := dec(parts[1], &c); err != nil {
		return h, c, "", nil, err
	}
	sig, err = base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return h, c, "", nil, errBadJWT
	}
	return h, c, parts[0] + "." + parts[1], sig, nil
}
