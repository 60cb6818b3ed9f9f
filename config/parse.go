package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"
)

// maxLoginBytes bounds the length of a local login.
const maxLoginBytes = 255

// rawFile is the file as the toml package decodes it. Each key's field is
// a pointer, nil when the file does not set the key. The toml package
// checks the types: a value of the wrong type ends decoding there, with an
// error that names its key.
type rawFile struct {
	Server    rawServer              `toml:"server"`
	Providers map[string]rawProvider `toml:"providers"`
	Accounts  map[string]rawAccount  `toml:"accounts"`
	Store     rawStore               `toml:"store"`
	Proxy     rawProxyProtocol       `toml:"proxy_protocol"`
}

// rawServer is the [server] table before its values are checked.
type rawServer struct {
	// Listeners and local TLS.
	Listen         *string `toml:"listen"`
	ListenTLS      *string `toml:"listen_tls"`
	ListenPOP3     *string `toml:"listen_pop3"`
	ListenPOP3TLS  *string `toml:"listen_pop3_tls"`
	ListenSMTP     *string `toml:"listen_smtp"`
	ListenSMTPS    *string `toml:"listen_smtps"`
	TLSCert        *string `toml:"tls_cert"`
	TLSKey         *string `toml:"tls_key"`
	AllowPlaintext *bool   `toml:"allow_plaintext"`
	MetricsListen  *string `toml:"metrics_listen"`

	// State and logs.
	StateDir  *string `toml:"state_dir"`
	LogLevel  *string `toml:"log_level"`
	LogFormat *string `toml:"log_format"`

	// Timeouts.
	PreauthTimeout      *duration `toml:"preauth_timeout"`
	LoginTimeout        *duration `toml:"login_timeout"`
	DialTimeout         *duration `toml:"dial_timeout"`
	TokenTimeout        *duration `toml:"token_timeout"`
	RefreshMargin       *duration `toml:"refresh_margin"`
	SessionTokenMin     *duration `toml:"session_token_min"`
	FirstCommandTimeout *duration `toml:"first_command_timeout"`
	ShutdownTimeout     *duration `toml:"shutdown_timeout"`
	PreauthMaxTime      *duration `toml:"preauth_max_time"`

	// Limits.
	MaxConnections        *int `toml:"max_connections"`
	MaxConnectionsPerIP   *int `toml:"max_connections_per_ip"`
	MaxConnectionsPerPeer *int `toml:"max_connections_per_peer"`
	MaxLineBytes          *int `toml:"max_line_bytes"`
	SMTPMaxMessageBytes   *int `toml:"smtp_max_message_bytes"`
	MaxLiteralBytes       *int `toml:"max_literal_bytes"`
}

// rawProvider is a [providers.NAME] table before its values are checked.
type rawProvider struct {
	Type   *string `toml:"type"`
	Tenant *string `toml:"tenant"`

	// The token endpoint and what to ask it for.
	AuthURL       *string   `toml:"auth_url"`
	TokenURL      *string   `toml:"token_url"`
	DeviceAuthURL *string   `toml:"device_auth_url"`
	Scopes        *[]string `toml:"scopes"`
	AppScopes     *[]string `toml:"app_scopes"`

	// The app's credentials.
	ClientID           *string `toml:"client_id"`
	ClientSecret       *string `toml:"client_secret"`
	ClientSecretFile   *string `toml:"client_secret_file"`
	ClientCertFile     *string `toml:"client_certificate_file"`
	ClientKeyFile      *string `toml:"client_key_file"`
	ServiceAccountFile *string `toml:"service_account_file"`

	// The upstream IMAP server.
	IMAPAddress *string `toml:"imap_address"`
	IMAPTLS     *string `toml:"imap_tls"`

	// The upstream POP3 server.
	POP3Address         *string `toml:"pop3_address"`
	POP3InitialResponse *bool   `toml:"pop3_initial_response"`
	// The upstream submission server.
	SMTPAddress *string `toml:"smtp_address"`
	CAFile      *string `toml:"ca_file"`
	Mechanism   *string `toml:"mechanism"`

	// Microsoft's cloud, and the sessions one mailbox may hold.
	Cloud       *string `toml:"cloud"`
	MaxSessions *int    `toml:"max_sessions"`
}

// rawAccount is an [accounts.LOGIN] table before its values are checked.
type rawAccount struct {
	Provider    *string   `toml:"provider"`
	Mailbox     *string   `toml:"mailbox"`
	Grant       *string   `toml:"grant"`
	MaxSessions *int      `toml:"max_sessions"`
	Protocols   *[]string `toml:"protocols"`
}

// duration is a duration key's value: a string such as "30s"
// (time.ParseDuration). A value that does not parse is kept with its
// error, and the parser reports it with the key, so that a bad duration
// is one problem among many rather than the end of decoding.
type duration struct {
	value time.Duration
	text  string
	err   error
}

// UnmarshalText implements encoding.TextUnmarshaler. It never fails: see
// duration.
func (d *duration) UnmarshalText(text []byte) error {
	d.text = string(text)
	d.value, d.err = time.ParseDuration(d.text)
	return nil
}

// parser collects the problems found while building a Config.
type parser struct {
	dir      string
	problems []string
}

func parse(data []byte, dir string, opts *LoadOptions) (*Config, error) {
	if opts == nil {
		opts = &LoadOptions{}
	}
	var raw rawFile
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, fmt.Errorf("parsing TOML: %w", redactParseError(err, data))
	}
	// The toml package leaves a map field alone, without an error, when
	// the file gives another type of value: that is a type error too.
	for _, key := range []string{"providers", "accounts"} {
		if t := md.Type(key); t != "" && t != "Hash" {
			return nil, fmt.Errorf("parsing TOML: %q: want a table, got %s", key, tomlTypeName(t))
		}
	}
	p := &parser{dir: dir}
	p.unknownKeys(md)

	cfg := &Config{
		Server:    p.server(&raw.Server, opts),
		Providers: make(map[string]*Provider, len(raw.Providers)),
		Accounts:  make(map[string]*Account, len(raw.Accounts)),
		Store:     p.store(&raw.Store),
	}
	cfg.ProxyProtocol = p.proxyProtocol(&raw.Proxy, &cfg.Server, opts)
	for _, name := range sortedKeys(raw.Providers) {
		r := raw.Providers[name]
		cfg.Providers[name] = p.provider(name, &r)
	}
	for _, login := range sortedKeys(raw.Accounts) {
		r := raw.Accounts[login]
		cfg.Accounts[login] = p.account(login, &r, cfg.Providers)
	}
	if len(p.problems) > 0 {
		return nil, &ValidationError{Problems: p.problems}
	}
	return cfg, nil
}

// redactParseError keeps a secret out of a TOML error. The toml package
// quotes the text around a syntax error ("expected value but found ..."),
// so the message is replaced when the error is about a key whose name
// contains "secret", or on or just after a line that mentions one. The
// returned ParseError also drops the input, so that its ErrorWithPosition
// cannot print the file's lines. Other errors (a value of the wrong type)
// name the types, never the value, and are returned as they are.
func redactParseError(err error, data []byte) error {
	var perr toml.ParseError
	if !errors.As(err, &perr) {
		return err
	}
	clean := toml.ParseError{
		Message:  perr.Message,
		Usage:    perr.Usage,
		Position: perr.Position,
		LastKey:  perr.LastKey,
	}
	// A store DSN may hold a password too.
	mentions := func(s string) bool {
		s = strings.ToLower(s)
		return strings.Contains(s, "secret") || strings.Contains(s, "dsn")
	}
	secret := mentions(perr.LastKey)
	lines := strings.Split(string(data), "\n")
	for _, n := range []int{perr.Position.Line - 1, perr.Position.Line} {
		if n >= 1 && n <= len(lines) && mentions(lines[n-1]) {
			secret = true
		}
	}
	if secret {
		clean.Message = "syntax error (details not shown: the text may hold a secret)"
		clean.Usage = ""
	}
	return clean
}

// addf records a problem about the key at path.
func (p *parser) addf(path, format string, args ...any) {
	p.problems = append(p.problems, path+": "+fmt.Sprintf(format, args...))
}

// unknownKeys reports the keys that no raw struct field took: those
// MetaData.Undecoded lists, and those the decoder matched to a field only
// by ignoring case. A key inside an unknown table is not reported again.
func (p *parser) unknownKeys(md toml.MetaData) {
	undecoded := make(map[string]bool)
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	known := map[string]map[string]bool{
		"":               fieldNames(reflect.TypeFor[rawFile]()),
		"server":         fieldNames(reflect.TypeFor[rawServer]()),
		"providers":      fieldNames(reflect.TypeFor[rawProvider]()),
		"accounts":       fieldNames(reflect.TypeFor[rawAccount]()),
		"store":          fieldNames(reflect.TypeFor[rawStore]()),
		"proxy_protocol": fieldNames(reflect.TypeFor[rawProxyProtocol]()),
	}
	var reported []toml.Key
outer:
	for _, k := range md.Keys() {
		for _, r := range reported {
			if len(r) <= len(k) && slices.Equal(r, k[:len(r)]) {
				continue outer
			}
		}
		var names map[string]bool
		switch {
		case len(k) == 1:
			names = known[""]
		case len(k) == 2 && (k[0] == "server" || k[0] == "store" || k[0] == "proxy_protocol"):
			names = known[k[0]]
		case len(k) == 3 && (k[0] == "providers" || k[0] == "accounts"):
			names = known[k[0]]
		}
		if undecoded[k.String()] || matchedByCase(names, k[len(k)-1]) {
			p.addf(k.String(), "unknown key")
			reported = append(reported, k)
		}
	}
}

func (p *parser) server(r *rawServer, opts *LoadOptions) Server {
	s := Defaults()
	setIf(&s.Listen, r.Listen)
	setIf(&s.ListenTLS, r.ListenTLS)
	setIf(&s.TLSCert, r.TLSCert)
	setIf(&s.TLSKey, r.TLSKey)
	p.listenerPair(r.ListenSMTP, r.ListenSMTPS, &s.ListenSMTP, &s.ListenSMTPS, SMTP, &s)
	p.limit(r.SMTPMaxMessageBytes, &s.SMTPMaxMessageBytes, "server.smtp_max_message_bytes")
	p.listenerPair(r.ListenPOP3, r.ListenPOP3TLS, &s.ListenPOP3, &s.ListenPOP3TLS, POP3, &s)
	p.distinctListeners(&s)
	setIf(&s.AllowPlaintext, r.AllowPlaintext)
	setIf(&s.StateDir, r.StateDir)
	p.enum(r.LogLevel, &s.LogLevel, []string{"debug", "info", "warn", "error"}, "server.log_level")
	p.enum(r.LogFormat, &s.LogFormat, []string{"text", "json"}, "server.log_format")
	p.duration(r.PreauthTimeout, &s.PreauthTimeout, "server.preauth_timeout")
	p.duration(r.LoginTimeout, &s.LoginTimeout, "server.login_timeout")
	p.duration(r.DialTimeout, &s.DialTimeout, "server.dial_timeout")
	p.duration(r.TokenTimeout, &s.TokenTimeout, "server.token_timeout")
	p.duration(r.RefreshMargin, &s.RefreshMargin, "server.refresh_margin")
	p.duration(r.SessionTokenMin, &s.SessionTokenMin, "server.session_token_min")
	p.limit(r.MaxConnections, &s.MaxConnections, "server.max_connections")
	if r.MaxConnectionsPerIP != nil && r.MaxConnectionsPerPeer != nil {
		p.addf("server.max_connections_per_ip", "old name of server.max_connections_per_peer, which is set too: keep one")
	}
	p.limit(r.MaxConnectionsPerIP, &s.MaxConnectionsPerPeer, "server.max_connections_per_ip")
	p.limit(r.MaxConnectionsPerPeer, &s.MaxConnectionsPerPeer, "server.max_connections_per_peer")
	p.duration(r.FirstCommandTimeout, &s.FirstCommandTimeout, "server.first_command_timeout")
	p.limit(r.MaxLineBytes, &s.MaxLineBytes, "server.max_line_bytes")
	p.limit(r.MaxLiteralBytes, &s.MaxLiteralBytes, "server.max_literal_bytes")
	if s.MaxLiteralBytes > MaxLiteralBytesLimit {
		p.addf("server.max_literal_bytes", "at most %d, got %d", MaxLiteralBytesLimit, s.MaxLiteralBytes)
	}
	p.duration(r.ShutdownTimeout, &s.ShutdownTimeout, "server.shutdown_timeout")
	p.duration(r.PreauthMaxTime, &s.PreauthMaxTime, "server.preauth_max_time")
	setIf(&s.MetricsListen, r.MetricsListen)
	if s.MetricsListen != "" {
		p.address(s.MetricsListen, true, "server.metrics_listen")
	}

	inherited := opts.InheritedListen || opts.InheritedListenTLS || opts.InheritedPOP3 || opts.InheritedPOP3TLS ||
		opts.InheritedSMTP || opts.InheritedSMTPS
	pop3 := s.ListenPOP3 != "" || s.ListenPOP3TLS != "" || s.ListenSMTP != "" || s.ListenSMTPS != ""
	switch {
	case s.Listen == "" && s.ListenTLS == "" && !inherited && !pop3:
		p.addf("server.listen", "empty, and server.listen_tls is not set: nothing to listen on")
	case s.Listen != "" && s.Listen == s.ListenTLS && !strings.HasSuffix(s.Listen, ":0"):
		p.addf("server.listen_tls", "same address as server.listen")
	}
	if s.Listen != "" {
		p.address(s.Listen, true, "server.listen")
	}
	if s.ListenTLS != "" {
		p.address(s.ListenTLS, true, "server.listen_tls")
	}
	if s.TLSCert == "" && s.TLSKey == "" {
		switch {
		case opts.InheritedListenTLS:
			p.addf("server.tls_cert", "missing: the implicit-TLS socket from systemd (FileDescriptorName=imaps) needs server.tls_cert and server.tls_key")
		case opts.InheritedPOP3TLS:
			p.addf("server.tls_cert", "missing: the implicit-TLS POP3 socket from systemd (FileDescriptorName=pop3s) needs server.tls_cert and server.tls_key")
		case opts.InheritedSMTPS:
			p.addf("server.tls_cert", "missing: the implicit-TLS SMTP socket from systemd (FileDescriptorName=smtps) needs server.tls_cert and server.tls_key")
		case s.ListenTLS != "":
			p.addf("server.listen_tls", "needs server.tls_cert and server.tls_key")
		}
	}
	if s.TLSCert != "" && s.TLSKey == "" {
		p.addf("server.tls_key", "missing (server.tls_cert is set)")
	}
	if s.TLSKey != "" && s.TLSCert == "" {
		p.addf("server.tls_cert", "missing (server.tls_key is set)")
	}
	if s.StateDir == "" {
		p.addf("server.state_dir", "empty")
	}
	s.TLSCert = p.resolve(s.TLSCert)
	s.TLSKey = p.resolve(s.TLSKey)
	s.StateDir = p.resolve(s.StateDir)
	return s
}

func (p *parser) provider(name string, r *rawProvider) *Provider {
	at := func(k string) string { return keyPath("providers", name, k) }
	if name == "" {
		p.addf(keyPath("providers", name), "empty provider name")
	}

	var typ string
	switch {
	case r.Type == nil:
		p.addf(at("type"), "missing (want microsoft, google or generic)")
	case !isOneOf(*r.Type, "microsoft", "google", "generic"):
		p.addf(at("type"), "unknown type %q (want microsoft, google or generic)", *r.Type)
	default:
		typ = *r.Type
	}

	var tenant string
	if r.Tenant != nil {
		switch {
		case typ != "microsoft" && typ != "":
			p.addf(at("tenant"), "only for type microsoft")
		case !validTenant(*r.Tenant):
			p.addf(at("tenant"), "bad tenant %q (want a tenant ID, a domain or organizations)", *r.Tenant)
		default:
			tenant = *r.Tenant
		}
	}
	if typ == "microsoft" && tenant == "" {
		tenant = "organizations"
	}
	cloud := ""
	if typ == "microsoft" {
		cloud = "global"
	}
	if r.Cloud != nil && typ != "microsoft" && typ != "" {
		p.addf(at("cloud"), "only for type microsoft")
	} else {
		p.enum(r.Cloud, &cloud, []string{"global", "usgov", "china"}, at("cloud"))
	}

	pr := preset(typ, tenant, cloud)
	pr.Name = name
	pr.Type = typ
	pr.Tenant = tenant
	pr.Cloud = cloud
	p.count(r.MaxSessions, &pr.MaxSessions, at("max_sessions"))

	setIf(&pr.AuthURL, r.AuthURL)
	setIf(&pr.TokenURL, r.TokenURL)
	setIf(&pr.DeviceAuthURL, r.DeviceAuthURL)
	setIf(&pr.Scopes, r.Scopes)
	setIf(&pr.AppScopes, r.AppScopes)
	setIf(&pr.ClientID, r.ClientID)
	setIf(&pr.ClientSecret, r.ClientSecret)
	var secretFile string
	setIf(&secretFile, r.ClientSecretFile)
	setIf(&pr.IMAPAddress, r.IMAPAddress)
	p.enum(r.IMAPTLS, &pr.IMAPTLS, []string{"implicit", "starttls"}, at("imap_tls"))
	p.pop3Server(r, &pr, at)
	p.smtpServer(r, &pr, at)
	setIf(&pr.CAFile, r.CAFile)
	if setIf(&pr.Mechanism, r.Mechanism) {
		pr.Mechanism = strings.ToUpper(pr.Mechanism)
		if !isOneOf(pr.Mechanism, "XOAUTH2", "OAUTHBEARER") {
			p.addf(at("mechanism"), "unknown mechanism %q (want XOAUTH2 or OAUTHBEARER)", pr.Mechanism)
		}
	}
	setIf(&pr.ServiceAccountFile, r.ServiceAccountFile)
	setIf(&pr.ClientCertificateFile, r.ClientCertFile)
	setIf(&pr.ClientKeyFile, r.ClientKeyFile)

	// Required keys are checked only for a known type, so that a typo in
	// type yields one problem rather than one for every key it implies.
	if typ != "" {
		if pr.TokenURL == "" {
			p.addf(at("token_url"), "missing")
		}
		if len(pr.Scopes) == 0 {
			p.addf(at("scopes"), "missing")
		}
		if pr.IMAPAddress == "" {
			p.addf(at("imap_address"), "missing")
		}
	}
	if pr.ClientID == "" {
		p.addf(at("client_id"), "missing")
	}
	p.url(pr.AuthURL, at("auth_url"))
	p.url(pr.TokenURL, at("token_url"))
	p.url(pr.DeviceAuthURL, at("device_auth_url"))
	p.scopeList(pr.Scopes, at("scopes"))
	p.scopeList(pr.AppScopes, at("app_scopes"))
	if pr.IMAPAddress != "" {
		p.address(pr.IMAPAddress, false, at("imap_address"))
	}
	if pr.ServiceAccountFile != "" && typ != "google" && typ != "" {
		p.addf(at("service_account_file"), "only for type google")
	}

	// The secret's value never goes into a problem.
	switch {
	case pr.ClientSecret != "" && secretFile != "":
		p.addf(at("client_secret_file"), "conflicts with client_secret: set only one")
	case secretFile != "":
		b, err := os.ReadFile(p.resolve(secretFile))
		if err != nil {
			p.addf(at("client_secret_file"), "reading secret: %v", err)
			break
		}
		pr.ClientSecret = strings.TrimSpace(string(b))
		if pr.ClientSecret == "" {
			p.addf(at("client_secret_file"), "file %s is empty", p.resolve(secretFile))
		}
	}

	pr.CAFile = p.resolve(pr.CAFile)
	pr.ServiceAccountFile = p.resolve(pr.ServiceAccountFile)
	pr.ClientCertificateFile = p.resolve(pr.ClientCertificateFile)
	pr.ClientKeyFile = p.resolve(pr.ClientKeyFile)
	p.clientCertificate(&pr, typ, secretFile != "", at)
	return &pr
}

// clientCertificate checks a provider's certificate credential
// (client_certificate_file and client_key_file, already resolved): both or
// neither, not together with a client secret, not for Google, and
// readable files holding an RSA key and its certificate. hasSecretFile
// reports whether client_secret_file was given.
func (p *parser) clientCertificate(pr *Provider, typ string, hasSecretFile bool, at func(string) string) {
	certFile, keyFile := pr.ClientCertificateFile, pr.ClientKeyFile
	if certFile == "" && keyFile == "" {
		return
	}
	ok := true
	if typ == "google" {
		key := "client_certificate_file"
		if certFile == "" {
			key = "client_key_file"
		}
		p.addf(at(key), "only for type microsoft or generic (Google takes no client certificates)")
		ok = false
	}
	switch {
	case certFile == "":
		p.addf(at("client_certificate_file"), "missing (client_key_file is set)")
		ok = false
	case keyFile == "":
		p.addf(at("client_key_file"), "missing (client_certificate_file is set)")
		ok = false
	}
	if certFile != "" && (pr.ClientSecret != "" || hasSecretFile) {
		// The secret's value never goes into a problem.
		p.addf(at("client_certificate_file"),
			"client_secret and client_certificate_file are exclusive: the app authenticates with one of them (remove client_secret or client_secret_file)")
		ok = false
	}
	if !ok {
		return
	}
	cert, err := loadCertificate(certFile)
	if err != nil {
		p.addf(at("client_certificate_file"), "%v", err)
	}
	key, keyErr := loadRSAKey(keyFile)
	if keyErr != nil {
		p.addf(at("client_key_file"), "%v", keyErr)
	}
	if err != nil || keyErr != nil {
		return
	}
	if err := keyMatches(cert, key, certFile, keyFile); err != nil {
		p.addf(at("client_key_file"), "%v", err)
	}
}

func (p *parser) account(login string, r *rawAccount, providers map[string]*Provider) *Account {
	at := func(k string) string { return keyPath("accounts", login, k) }
	switch {
	case login == "":
		p.addf(keyPath("accounts", login), "empty login")
	case len(login) > maxLoginBytes:
		p.addf(keyPath("accounts", login), "login longer than %d bytes", maxLoginBytes)
	case strings.ContainsFunc(login, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		p.addf(keyPath("accounts", login), "login contains white space or control characters")
	}

	a := &Account{Login: login, Grant: GrantRefreshToken}
	if r.Provider == nil {
		p.addf(at("provider"), "missing")
	} else if a.Provider = providers[*r.Provider]; a.Provider == nil {
		p.addf(at("provider"), "unknown provider %q", *r.Provider)
	}
	setIf(&a.Mailbox, r.Mailbox)
	switch {
	case a.Mailbox == "":
		p.addf(at("mailbox"), "missing")
	case strings.ContainsFunc(a.Mailbox, unicode.IsControl):
		p.addf(at("mailbox"), "contains control characters")
	}
	if a.Provider != nil {
		a.MaxSessions = a.Provider.MaxSessions
	}
	p.count(r.MaxSessions, &a.MaxSessions, at("max_sessions"))
	if r.Grant != nil {
		g := Grant(*r.Grant)
		if g != GrantRefreshToken && !g.AppOnly() {
			p.addf(at("grant"), "unknown value %q (want %s, %s or %s)", g,
				GrantRefreshToken, GrantClientCredentials, GrantServiceAccount)
			return a
		}
		a.Grant = g
	}
	p.protocols(r.Protocols, a, at)
	if a.Provider == nil {
		return a
	}

	pr := a.Provider
	switch a.Grant {
	case GrantClientCredentials:
		if pr.ClientSecret == "" && pr.ClientCertificateFile == "" && pr.ClientKeyFile == "" {
			p.addf(at("grant"), "client_credentials needs providers.%s.client_secret, client_secret_file, "+
				"or client_certificate_file and client_key_file", keyPath(pr.Name))
		}
		if pr.Type == "microsoft" && pr.TokenURL == preset(pr.Type, pr.Tenant, pr.Cloud).TokenURL && isOneOf(pr.Tenant, "organizations", "common", "consumers") {
			p.addf(at("grant"), "client_credentials needs providers.%s.tenant set to the tenant's ID or domain, not %q", keyPath(pr.Name), pr.Tenant)
		}
	case GrantServiceAccount:
		if pr.Type != "google" {
			p.addf(at("grant"), "service_account needs a provider of type google, and %q is %s", pr.Name, pr.Type)
		} else if pr.ServiceAccountFile == "" {
			p.addf(at("grant"), "service_account needs providers.%s.service_account_file", keyPath(pr.Name))
		}
	}
	return a
}

// setIf stores *v in *dst if the key was set (v is not nil), and reports
// whether it was.
func setIf[T any](dst *T, v *T) bool {
	if v == nil {
		return false
	}
	*dst = *v
	return true
}

// enum stores *v in *dst if it is one of the strings in allowed. A nil v
// (the key is not set) leaves the default in *dst.
func (p *parser) enum(v *string, dst *string, allowed []string, key string) {
	switch {
	case v == nil:
	case !isOneOf(*v, allowed...):
		p.addf(key, "unknown value %q (want %s)", *v, strings.Join(allowed, ", "))
	default:
		*dst = *v
	}
}

// duration stores d in *dst if it holds a positive duration.
func (p *parser) duration(d *duration, dst *time.Duration, key string) {
	switch {
	case d == nil:
	case d.err != nil:
		p.addf(key, "bad duration %q (want a string such as \"30s\"): %v", d.text, d.err)
	case d.value <= 0:
		p.addf(key, "must be positive, got %q", d.text)
	default:
		*dst = d.value
	}
}

// limit stores *n in *dst if it is positive.
func (p *parser) limit(n *int, dst *int, key string) {
	switch {
	case n == nil:
	case *n <= 0:
		p.addf(key, "must be a positive integer, got %d", *n)
	default:
		*dst = *n
	}
}

// count stores *n in *dst if it is 0 (no limit) or a positive integer.
func (p *parser) count(n *int, dst *int, key string) {
	switch {
	case n == nil:
	case *n < 0:
		p.addf(key, "must be 0 (no limit) or a positive integer, got %d", *n)
	default:
		*dst = *n
	}
}

// address reports a problem unless s is host:port with a numeric port; port
// 0 only if allowZero, and an empty host only if allowZero (listeners).
func (p *parser) address(s string, allowZero bool, key string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		p.addf(key, "bad address %q: %v", s, err)
		return
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		p.addf(key, "bad address %q: port %q is not a number from 1 to 65535", s, port)
	case n == 0 && !allowZero:
		p.addf(key, "bad address %q: port 0", s)
	}
	if host == "" && !allowZero {
		p.addf(key, "bad address %q: missing host", s)
	}
}

// url reports a problem unless s is "" or an absolute http or https URL.
func (p *parser) url(s string, key string) {
	if s == "" {
		return
	}
	u, err := url.Parse(s)
	if err != nil {
		p.addf(key, "bad URL: %v", err)
		return
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		p.addf(key, "bad URL %q: want an absolute http or https URL", u.Redacted())
	}
}

// scopeList reports empty scopes.
func (p *parser) scopeList(scopes []string, key string) {
	for i, s := range scopes {
		if strings.TrimSpace(s) == "" {
			p.addf(key, "element %d is empty", i)
		}
	}
}

// resolve makes a relative path relative to the config file's directory.
func (p *parser) resolve(path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(p.dir, path)
}

// validTenant reports whether s can be put into a login.microsoftonline.com
// path: a GUID, a domain name, or organizations, common or consumers.
func validTenant(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// keyPath formats a key path the way TOML writes it, quoting parts that are
// not bare keys.
func keyPath(parts ...string) string {
	return toml.Key(parts).String()
}

// matchedByCase reports whether the toml package, which matches keys to
// fields ignoring case, took key for a field whose name in names differs
// from it in case only ("Grant" for grant).
func matchedByCase(names map[string]bool, key string) bool {
	if names[key] {
		return false
	}
	for name := range names {
		if strings.EqualFold(name, key) {
			return true
		}
	}
	return false
}

// fieldNames returns the toml tag names of struct type t.
func fieldNames(t reflect.Type) map[string]bool {
	names := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		names[name] = true
	}
	return names
}

// tomlTypeName names a type as returned by toml.MetaData.Type.
func tomlTypeName(t string) string {
	switch t {
	case "Hash":
		return "table"
	case "ArrayHash":
		return "array of tables"
	case "Bool":
		return "boolean"
	}
	return strings.ToLower(t)
}

func isOneOf(s string, allowed ...string) bool {
	return slices.Contains(allowed, s)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
