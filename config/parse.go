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

// rawFile is the top level of the file. Each table is decoded on its own from
// a toml.Primitive so that a table of the wrong type is one problem among many
// rather than the end of decoding.
type rawFile struct {
	Server    toml.Primitive `toml:"server"`
	Providers toml.Primitive `toml:"providers"`
	Accounts  toml.Primitive `toml:"accounts"`
}

// rawServer is the [server] table before its values are checked.
type rawServer struct {
	Listen                rawValue `toml:"listen"`
	ListenTLS             rawValue `toml:"listen_tls"`
	ListenPOP3            rawValue `toml:"listen_pop3"`
	ListenPOP3TLS         rawValue `toml:"listen_pop3_tls"`
	TLSCert               rawValue `toml:"tls_cert"`
	TLSKey                rawValue `toml:"tls_key"`
	AllowPlaintext        rawValue `toml:"allow_plaintext"`
	StateDir              rawValue `toml:"state_dir"`
	LogLevel              rawValue `toml:"log_level"`
	LogFormat             rawValue `toml:"log_format"`
	PreauthTimeout        rawValue `toml:"preauth_timeout"`
	LoginTimeout          rawValue `toml:"login_timeout"`
	DialTimeout           rawValue `toml:"dial_timeout"`
	TokenTimeout          rawValue `toml:"token_timeout"`
	RefreshMargin         rawValue `toml:"refresh_margin"`
	MaxConnections        rawValue `toml:"max_connections"`
	MaxConnectionsPerIP   rawValue `toml:"max_connections_per_ip"`
	MaxConnectionsPerPeer rawValue `toml:"max_connections_per_peer"`
	FirstCommandTimeout   rawValue `toml:"first_command_timeout"`
	MaxLineBytes          rawValue `toml:"max_line_bytes"`
	MaxLiteralBytes       rawValue `toml:"max_literal_bytes"`
	ShutdownTimeout       rawValue `toml:"shutdown_timeout"`
	PreauthMaxTime        rawValue `toml:"preauth_max_time"`
	MetricsListen         rawValue `toml:"metrics_listen"`
}

// rawProvider is a [providers.NAME] table before its values are checked.
type rawProvider struct {
	Type                rawValue `toml:"type"`
	Tenant              rawValue `toml:"tenant"`
	AuthURL             rawValue `toml:"auth_url"`
	TokenURL            rawValue `toml:"token_url"`
	DeviceAuthURL       rawValue `toml:"device_auth_url"`
	Scopes              rawValue `toml:"scopes"`
	AppScopes           rawValue `toml:"app_scopes"`
	ClientID            rawValue `toml:"client_id"`
	ClientSecret        rawValue `toml:"client_secret"`
	ClientSecretFile    rawValue `toml:"client_secret_file"`
	IMAPAddress         rawValue `toml:"imap_address"`
	IMAPTLS             rawValue `toml:"imap_tls"`
	POP3Address         rawValue `toml:"pop3_address"`
	POP3InitialResponse rawValue `toml:"pop3_initial_response"`
	CAFile              rawValue `toml:"ca_file"`
	Mechanism           rawValue `toml:"mechanism"`
	ServiceAccountFile  rawValue `toml:"service_account_file"`
	ClientCertFile      rawValue `toml:"client_certificate_file"`
	ClientKeyFile       rawValue `toml:"client_key_file"`
}

// rawAccount is an [accounts.LOGIN] table before its values are checked.
type rawAccount struct {
	Provider  rawValue `toml:"provider"`
	Mailbox   rawValue `toml:"mailbox"`
	Grant     rawValue `toml:"grant"`
	Protocols rawValue `toml:"protocols"`
}

// rawValue holds one TOML value as the decoder found it. Its type is checked
// afterwards, so that every value of the wrong type is reported.
type rawValue struct {
	v   any
	set bool
}

// UnmarshalTOML implements toml.Unmarshaler.
func (r *rawValue) UnmarshalTOML(v any) error {
	r.v, r.set = v, true
	return nil
}

// parser collects the problems found while building a Config.
type parser struct {
	md       toml.MetaData
	dir      string
	problems []string
	// badTables are tables already reported as being of the wrong type;
	// the keys inside them are not reported again.
	badTables []toml.Key
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
	p := &parser{md: md, dir: dir}

	var rs rawServer
	p.table(raw.Server, &rs, "server")
	rps := tables[rawProvider](p, raw.Providers, "providers")
	ras := tables[rawAccount](p, raw.Accounts, "accounts")
	p.unknownKeys()

	cfg := &Config{
		Server:    p.server(&rs, opts),
		Providers: make(map[string]*Provider, len(rps)),
		Accounts:  make(map[string]*Account, len(ras)),
	}
	for _, name := range sortedKeys(rps) {
		r := rps[name]
		cfg.Providers[name] = p.provider(name, &r)
	}
	for _, login := range sortedKeys(ras) {
		r := ras[login]
		cfg.Accounts[login] = p.account(login, &r, cfg.Providers)
	}
	if len(p.problems) > 0 {
		return nil, &ValidationError{Problems: p.problems}
	}
	return cfg, nil
}

// redactParseError keeps a secret out of a TOML syntax error. The toml
// package quotes the text around an error ("expected value but found ..."),
// so the message is replaced when the error is about a key whose name
// contains "secret", or on or just after a line that mentions one. The
// returned ParseError also drops the input, so that its ErrorWithPosition
// cannot print the file's lines.
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
	secret := strings.Contains(strings.ToLower(perr.LastKey), "secret")
	lines := strings.Split(string(data), "\n")
	for _, n := range []int{perr.Position.Line - 1, perr.Position.Line} {
		if n >= 1 && n <= len(lines) && strings.Contains(strings.ToLower(lines[n-1]), "secret") {
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

// table decodes the table prim, found at key, into dst, a pointer to a raw
// struct. A missing table leaves dst alone.
func (p *parser) table(prim toml.Primitive, dst any, key ...string) bool {
	if !p.md.IsDefined(key...) {
		return false
	}
	// A table created implicitly by a header such as [providers.lab] has
	// no type of its own.
	if t := p.md.Type(key...); t != "Hash" && t != "" {
		p.addf(keyPath(key...), "want a table, got %s", tomlTypeName(t))
		p.badTables = append(p.badTables, key)
		return false
	}
	if err := p.md.PrimitiveDecode(prim, dst); err != nil {
		p.addf(keyPath(key...), "decoding: %v", err)
		return false
	}
	return true
}

// tables decodes the table prim at top-level key name, whose values must all
// be tables, into a map from the sub-table name to a raw struct T.
func tables[T any](p *parser, prim toml.Primitive, name string) map[string]T {
	var subs map[string]toml.Primitive
	if !p.table(prim, &subs, name) {
		return nil
	}
	m := make(map[string]T, len(subs))
	for _, sub := range sortedKeys(subs) {
		var t T
		if p.table(subs[sub], &t, name, sub) {
			m[sub] = t
		}
	}
	return m
}

// unknownKeys reports the keys that no raw struct field took: those
// MetaData.Undecoded lists, and those the decoder matched to a field only by
// ignoring case. A key inside an unknown table is not reported again.
func (p *parser) unknownKeys() {
	undecoded := make(map[string]bool)
	for _, k := range p.md.Undecoded() {
		undecoded[k.String()] = true
	}
	known := map[string]map[string]bool{
		"":          fieldNames(reflect.TypeFor[rawFile]()),
		"server":    fieldNames(reflect.TypeFor[rawServer]()),
		"providers": fieldNames(reflect.TypeFor[rawProvider]()),
		"accounts":  fieldNames(reflect.TypeFor[rawAccount]()),
	}
	reported := p.badTables
outer:
	for _, k := range p.md.Keys() {
		for _, r := range reported {
			if len(r) <= len(k) && slices.Equal(r, k[:len(r)]) {
				continue outer
			}
		}
		var names map[string]bool
		switch {
		case len(k) == 1:
			names = known[""]
		case len(k) == 2 && k[0] == "server":
			names = known["server"]
		case len(k) == 3 && (k[0] == "providers" || k[0] == "accounts"):
			names = known[k[0]]
		}
		if undecoded[k.String()] || (names != nil && !names[k[len(k)-1]]) {
			p.addf(k.String(), "unknown key")
			reported = append(reported, k)
		}
	}
}

func (p *parser) server(r *rawServer, opts *LoadOptions) Server {
	s := Defaults()
	p.str(r.Listen, &s.Listen, "server", "listen")
	p.str(r.ListenTLS, &s.ListenTLS, "server", "listen_tls")
	p.str(r.TLSCert, &s.TLSCert, "server", "tls_cert")
	p.str(r.TLSKey, &s.TLSKey, "server", "tls_key")
	p.pop3Listeners(r, &s)
	p.boolean(r.AllowPlaintext, &s.AllowPlaintext, "server", "allow_plaintext")
	p.str(r.StateDir, &s.StateDir, "server", "state_dir")
	p.enum(r.LogLevel, &s.LogLevel, []string{"debug", "info", "warn", "error"}, "server", "log_level")
	p.enum(r.LogFormat, &s.LogFormat, []string{"text", "json"}, "server", "log_format")
	p.duration(r.PreauthTimeout, &s.PreauthTimeout, "server", "preauth_timeout")
	p.duration(r.LoginTimeout, &s.LoginTimeout, "server", "login_timeout")
	p.duration(r.DialTimeout, &s.DialTimeout, "server", "dial_timeout")
	p.duration(r.TokenTimeout, &s.TokenTimeout, "server", "token_timeout")
	p.duration(r.RefreshMargin, &s.RefreshMargin, "server", "refresh_margin")
	p.limit(r.MaxConnections, &s.MaxConnections, "server", "max_connections")
	if r.MaxConnectionsPerIP.set && r.MaxConnectionsPerPeer.set {
		p.addf("server.max_connections_per_ip", "old name of server.max_connections_per_peer, which is set too: keep one")
	}
	p.limit(r.MaxConnectionsPerIP, &s.MaxConnectionsPerPeer, "server", "max_connections_per_ip")
	p.limit(r.MaxConnectionsPerPeer, &s.MaxConnectionsPerPeer, "server", "max_connections_per_peer")
	p.duration(r.FirstCommandTimeout, &s.FirstCommandTimeout, "server", "first_command_timeout")
	p.limit(r.MaxLineBytes, &s.MaxLineBytes, "server", "max_line_bytes")
	p.limit(r.MaxLiteralBytes, &s.MaxLiteralBytes, "server", "max_literal_bytes")
	if s.MaxLiteralBytes > MaxLiteralBytesLimit {
		p.addf("server.max_literal_bytes", "at most %d, got %d", MaxLiteralBytesLimit, s.MaxLiteralBytes)
	}
	p.duration(r.ShutdownTimeout, &s.ShutdownTimeout, "server", "shutdown_timeout")
	p.duration(r.PreauthMaxTime, &s.PreauthMaxTime, "server", "preauth_max_time")
	p.str(r.MetricsListen, &s.MetricsListen, "server", "metrics_listen")
	if s.MetricsListen != "" {
		p.address(s.MetricsListen, true, "server", "metrics_listen")
	}

	inherited := opts.InheritedListen || opts.InheritedListenTLS
	pop3 := s.ListenPOP3 != "" || s.ListenPOP3TLS != ""
	switch {
	case s.Listen == "" && s.ListenTLS == "" && !inherited && !pop3:
		p.addf("server.listen", "empty, and server.listen_tls is not set: nothing to listen on")
	case s.Listen != "" && s.Listen == s.ListenTLS && !strings.HasSuffix(s.Listen, ":0"):
		p.addf("server.listen_tls", "same address as server.listen")
	}
	if s.Listen != "" {
		p.address(s.Listen, true, "server", "listen")
	}
	if s.ListenTLS != "" {
		p.address(s.ListenTLS, true, "server", "listen_tls")
	}
	if s.TLSCert == "" && s.TLSKey == "" {
		switch {
		case opts.InheritedListenTLS:
			p.addf("server.tls_cert", "missing: the implicit-TLS socket from systemd (FileDescriptorName=imaps) needs server.tls_cert and server.tls_key")
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
	at := func(k string) []string { return []string{"providers", name, k} }
	if name == "" {
		p.addf(keyPath("providers", name), "empty provider name")
	}

	var typ string
	if p.str(r.Type, &typ, at("type")...) {
		if !isOneOf(typ, "microsoft", "google", "generic") {
			p.addf(keyPath(at("type")...), "unknown type %q (want microsoft, google or generic)", typ)
			typ = ""
		}
	} else if !r.Type.set {
		p.addf(keyPath(at("type")...), "missing (want microsoft, google or generic)")
	}

	var tenant string
	if p.str(r.Tenant, &tenant, at("tenant")...) {
		switch {
		case typ != "microsoft" && typ != "":
			p.addf(keyPath(at("tenant")...), "only for type microsoft")
		case !validTenant(tenant):
			p.addf(keyPath(at("tenant")...), "bad tenant %q (want a tenant ID, a domain or organizations)", tenant)
			tenant = ""
		}
	}
	if typ == "microsoft" && tenant == "" {
		tenant = "organizations"
	}

	pr := preset(typ, tenant)
	pr.Name = name
	pr.Type = typ
	pr.Tenant = tenant

	p.str(r.AuthURL, &pr.AuthURL, at("auth_url")...)
	tokenURLOK := p.str(r.TokenURL, &pr.TokenURL, at("token_url")...) || !r.TokenURL.set
	p.str(r.DeviceAuthURL, &pr.DeviceAuthURL, at("device_auth_url")...)
	scopesOK := p.strs(r.Scopes, &pr.Scopes, at("scopes")...) || !r.Scopes.set
	p.strs(r.AppScopes, &pr.AppScopes, at("app_scopes")...)
	clientIDOK := p.str(r.ClientID, &pr.ClientID, at("client_id")...) || !r.ClientID.set
	p.str(r.ClientSecret, &pr.ClientSecret, at("client_secret")...)
	var secretFile string
	p.str(r.ClientSecretFile, &secretFile, at("client_secret_file")...)
	imapAddressOK := p.str(r.IMAPAddress, &pr.IMAPAddress, at("imap_address")...) || !r.IMAPAddress.set
	p.enum(r.IMAPTLS, &pr.IMAPTLS, []string{"implicit", "starttls"}, at("imap_tls")...)
	p.pop3Server(r, &pr, at)
	p.str(r.CAFile, &pr.CAFile, at("ca_file")...)
	if p.str(r.Mechanism, &pr.Mechanism, at("mechanism")...) {
		pr.Mechanism = strings.ToUpper(pr.Mechanism)
		if !isOneOf(pr.Mechanism, "XOAUTH2", "OAUTHBEARER") {
			p.addf(keyPath(at("mechanism")...), "unknown mechanism %q (want XOAUTH2 or OAUTHBEARER)", pr.Mechanism)
		}
	}
	p.str(r.ServiceAccountFile, &pr.ServiceAccountFile, at("service_account_file")...)
	certTypeOK := p.str(r.ClientCertFile, &pr.ClientCertificateFile, at("client_certificate_file")...) || !r.ClientCertFile.set
	keyTypeOK := p.str(r.ClientKeyFile, &pr.ClientKeyFile, at("client_key_file")...) || !r.ClientKeyFile.set

	// Required keys are checked only for a known type, so that a typo in
	// type yields one problem rather than one for every key it implies, and
	// only if not already reported as being of the wrong type.
	if typ != "" {
		if pr.TokenURL == "" && tokenURLOK {
			p.addf(keyPath(at("token_url")...), "missing")
		}
		if len(pr.Scopes) == 0 && scopesOK {
			p.addf(keyPath(at("scopes")...), "missing")
		}
		if pr.IMAPAddress == "" && imapAddressOK {
			p.addf(keyPath(at("imap_address")...), "missing")
		}
	}
	if pr.ClientID == "" && clientIDOK {
		p.addf(keyPath(at("client_id")...), "missing")
	}
	p.url(pr.AuthURL, at("auth_url")...)
	p.url(pr.TokenURL, at("token_url")...)
	p.url(pr.DeviceAuthURL, at("device_auth_url")...)
	p.scopeList(pr.Scopes, at("scopes")...)
	p.scopeList(pr.AppScopes, at("app_scopes")...)
	if pr.IMAPAddress != "" {
		p.address(pr.IMAPAddress, false, at("imap_address")...)
	}
	if pr.ServiceAccountFile != "" && typ != "google" && typ != "" {
		p.addf(keyPath(at("service_account_file")...), "only for type google")
	}

	// The secret's value never goes into a problem.
	switch {
	case pr.ClientSecret != "" && secretFile != "":
		p.addf(keyPath(at("client_secret_file")...), "conflicts with client_secret: set only one")
	case secretFile != "":
		b, err := os.ReadFile(p.resolve(secretFile))
		if err != nil {
			p.addf(keyPath(at("client_secret_file")...), "reading secret: %v", err)
			break
		}
		pr.ClientSecret = strings.TrimSpace(string(b))
		if pr.ClientSecret == "" {
			p.addf(keyPath(at("client_secret_file")...), "file %s is empty", p.resolve(secretFile))
		}
	}

	pr.CAFile = p.resolve(pr.CAFile)
	pr.ServiceAccountFile = p.resolve(pr.ServiceAccountFile)
	pr.ClientCertificateFile = p.resolve(pr.ClientCertificateFile)
	pr.ClientKeyFile = p.resolve(pr.ClientKeyFile)
	if certTypeOK && keyTypeOK {
		p.clientCertificate(&pr, typ, secretFile != "", at)
	}
	return &pr
}

// clientCertificate checks a provider's certificate credential
// (client_certificate_file and client_key_file, already resolved): both or
// neither, not together with a client secret, not for Google, and
// readable files holding an RSA key and its certificate. hasSecretFile
// reports whether client_secret_file was given.
func (p *parser) clientCertificate(pr *Provider, typ string, hasSecretFile bool, at func(string) []string) {
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
		p.addf(keyPath(at(key)...), "only for type microsoft or generic (Google takes no client certificates)")
		ok = false
	}
	switch {
	case certFile == "":
		p.addf(keyPath(at("client_certificate_file")...), "missing (client_key_file is set)")
		ok = false
	case keyFile == "":
		p.addf(keyPath(at("client_key_file")...), "missing (client_certificate_file is set)")
		ok = false
	}
	if certFile != "" && (pr.ClientSecret != "" || hasSecretFile) {
		// The secret's value never goes into a problem.
		p.addf(keyPath(at("client_certificate_file")...),
			"client_secret and client_certificate_file are exclusive: the app authenticates with one of them (remove client_secret or client_secret_file)")
		ok = false
	}
	if !ok {
		return
	}
	cert, err := loadCertificate(certFile)
	if err != nil {
		p.addf(keyPath(at("client_certificate_file")...), "%v", err)
	}
	key, keyErr := loadRSAKey(keyFile)
	if keyErr != nil {
		p.addf(keyPath(at("client_key_file")...), "%v", keyErr)
	}
	if err != nil || keyErr != nil {
		return
	}
	if err := keyMatches(cert, key, certFile, keyFile); err != nil {
		p.addf(keyPath(at("client_key_file")...), "%v", err)
	}
}

func (p *parser) account(login string, r *rawAccount, providers map[string]*Provider) *Account {
	at := func(k string) []string { return []string{"accounts", login, k} }
	switch {
	case login == "":
		p.addf(keyPath("accounts", login), "empty login")
	case len(login) > maxLoginBytes:
		p.addf(keyPath("accounts", login), "login longer than %d bytes", maxLoginBytes)
	case strings.ContainsFunc(login, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		p.addf(keyPath("accounts", login), "login contains white space or control characters")
	}

	a := &Account{Login: login, Grant: "refresh_token"}
	var provName string
	if p.str(r.Provider, &provName, at("provider")...) {
		a.Provider = providers[provName]
		if a.Provider == nil {
			p.addf(keyPath(at("provider")...), "unknown provider %q", provName)
		}
	} else if !r.Provider.set {
		p.addf(keyPath(at("provider")...), "missing")
	}
	if p.str(r.Mailbox, &a.Mailbox, at("mailbox")...) || !r.Mailbox.set {
		switch {
		case a.Mailbox == "":
			p.addf(keyPath(at("mailbox")...), "missing")
		case strings.ContainsFunc(a.Mailbox, unicode.IsControl):
			p.addf(keyPath(at("mailbox")...), "contains control characters")
		}
	}
	grantOK := p.enum(r.Grant, &a.Grant, []string{"refresh_token", "client_credentials", "service_account"}, at("grant")...)
	p.protocols(r.Protocols, a, at)
	if !grantOK || a.Provider == nil {
		return a
	}

	pr := a.Provider
	switch a.Grant {
	case "client_credentials":
		if pr.ClientSecret == "" && pr.ClientCertificateFile == "" && pr.ClientKeyFile == "" {
			p.addf(keyPath(at("grant")...), "client_credentials needs providers.%s.client_secret, client_secret_file, "+
				"or client_certificate_file and client_key_file", keyPath(pr.Name))
		}
		if pr.Type == "microsoft" && pr.TokenURL == preset(pr.Type, pr.Tenant).TokenURL && isOneOf(pr.Tenant, "organizations", "common", "consumers") {
			p.addf(keyPath(at("grant")...), "client_credentials needs providers.%s.tenant set to the tenant's ID or domain, not %q", keyPath(pr.Name), pr.Tenant)
		}
	case "service_account":
		if pr.Type != "google" {
			p.addf(keyPath(at("grant")...), "service_account needs a provider of type google, and %q is %s", pr.Name, pr.Type)
		} else if pr.ServiceAccountFile == "" {
			p.addf(keyPath(at("grant")...), "service_account needs providers.%s.service_account_file", keyPath(pr.Name))
		}
	}
	return a
}

// str stores r in *dst if it is a string and reports whether it did. A
// missing key is not a problem here.
func (p *parser) str(r rawValue, dst *string, key ...string) bool {
	if !r.set {
		return false
	}
	s, ok := r.v.(string)
	if !ok {
		p.addf(keyPath(key...), "want a string, got %s", goTypeName(r.v))
		return false
	}
	*dst = s
	return true
}

// strs stores r in *dst if it is an array of strings and reports whether it
// did.
func (p *parser) strs(r rawValue, dst *[]string, key ...string) bool {
	if !r.set {
		return false
	}
	vs, ok := r.v.([]any)
	if !ok {
		p.addf(keyPath(key...), "want an array of strings, got %s", goTypeName(r.v))
		return false
	}
	ss := make([]string, 0, len(vs))
	for i, v := range vs {
		s, ok := v.(string)
		if !ok {
			p.addf(keyPath(key...), "element %d: want a string, got %s", i, goTypeName(v))
			return false
		}
		ss = append(ss, s)
	}
	*dst = ss
	return true
}

// enum stores r in *dst if it is one of the strings in allowed and reports
// whether *dst now holds an allowed value (the default if r is not set).
func (p *parser) enum(r rawValue, dst *string, allowed []string, key ...string) bool {
	if !r.set {
		return true
	}
	var s string
	if !p.str(r, &s, key...) {
		return false
	}
	if !isOneOf(s, allowed...) {
		p.addf(keyPath(key...), "unknown value %q (want %s)", s, strings.Join(allowed, ", "))
		return false
	}
	*dst = s
	return true
}

func (p *parser) boolean(r rawValue, dst *bool, key ...string) {
	if !r.set {
		return
	}
	b, ok := r.v.(bool)
	if !ok {
		p.addf(keyPath(key...), "want a boolean, got %s", goTypeName(r.v))
		return
	}
	*dst = b
}

// duration stores r in *dst if it is a string such as "30s" holding a
// positive duration.
func (p *parser) duration(r rawValue, dst *time.Duration, key ...string) {
	if !r.set {
		return
	}
	s, ok := r.v.(string)
	if !ok {
		p.addf(keyPath(key...), "want a duration string such as \"30s\", got %s", goTypeName(r.v))
		return
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.addf(keyPath(key...), "bad duration %q: %v", s, err)
		return
	}
	if d <= 0 {
		p.addf(keyPath(key...), "must be positive, got %q", s)
		return
	}
	*dst = d
}

// limit stores r in *dst if it is a positive integer.
func (p *parser) limit(r rawValue, dst *int, key ...string) {
	if !r.set {
		return
	}
	n, ok := r.v.(int64)
	if !ok {
		p.addf(keyPath(key...), "want an integer, got %s", goTypeName(r.v))
		return
	}
	if n <= 0 || int64(int(n)) != n {
		p.addf(keyPath(key...), "must be a positive integer, got %d", n)
		return
	}
	*dst = int(n)
}

// address reports a problem unless s is host:port with a numeric port; port
// 0 only if allowZero, and an empty host only if allowZero (listeners).
func (p *parser) address(s string, allowZero bool, key ...string) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		p.addf(keyPath(key...), "bad address %q: %v", s, err)
		return
	}
	n, err := strconv.ParseUint(port, 10, 16)
	switch {
	case err != nil:
		p.addf(keyPath(key...), "bad address %q: port %q is not a number from 1 to 65535", s, port)
	case n == 0 && !allowZero:
		p.addf(keyPath(key...), "bad address %q: port 0", s)
	}
	if host == "" && !allowZero {
		p.addf(keyPath(key...), "bad address %q: missing host", s)
	}
}

// url reports a problem unless s is "" or an absolute http or https URL.
func (p *parser) url(s string, key ...string) {
	if s == "" {
		return
	}
	u, err := url.Parse(s)
	if err != nil {
		p.addf(keyPath(key...), "bad URL: %v", err)
		return
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		p.addf(keyPath(key...), "bad URL %q: want an absolute http or https URL", u.Redacted())
	}
}

// scopeList reports empty scopes.
func (p *parser) scopeList(scopes []string, key ...string) {
	for i, s := range scopes {
		if strings.TrimSpace(s) == "" {
			p.addf(keyPath(key...), "element %d is empty", i)
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

// goTypeName names the TOML type of a decoded value.
func goTypeName(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case []any:
		return "array"
	case []map[string]any:
		return "array of tables"
	case map[string]any:
		return "table"
	case time.Time:
		return "datetime"
	}
	return fmt.Sprintf("%T", v)
}

func isOneOf(s string, allowed ...string) bool {
	return slices.Contains(allowed, s)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
