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

// file is the file as the toml package decodes it, into the types of
// Config. The tables whose defaults are known before decoding are decoded
// over them, so a key the file does not set keeps its default; a provider's
// defaults depend on its type, and an account's on its provider, so those
// tables are kept undecoded until then. The toml package checks the types:
// a value of the wrong type ends decoding there, with an error that names
// its key.
type file struct {
	Server    serverTable               `toml:"server"`
	Providers map[string]toml.Primitive `toml:"providers"`
	Accounts  map[string]toml.Primitive `toml:"accounts"`
	Store     Store                     `toml:"store"`
	Proxy     proxyTable                `toml:"proxy_protocol"`
}

// serverTable is the [server] table as decoded: Server and the old name
// of one of its keys.
type serverTable struct {
	Server
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
}

// providerTable is a [providers.NAME] table as decoded: Provider and
// client_secret_file, whose content becomes Provider.ClientSecret.
type providerTable struct {
	Provider
	ClientSecretFile string `toml:"client_secret_file"`
}

// accountTable is an [accounts.LOGIN] table as decoded: Account and the
// name of its provider.
type accountTable struct {
	Account
	ProviderName string `toml:"provider"`
}

// tableTypes returns the type each table of the file is decoded into, by
// the name of the table, or of the tables below it for providers and
// accounts.
func tableTypes() map[string]reflect.Type {
	return map[string]reflect.Type{
		"server":         reflect.TypeFor[serverTable](),
		"providers":      reflect.TypeFor[providerTable](),
		"accounts":       reflect.TypeFor[accountTable](),
		"store":          reflect.TypeFor[Store](),
		"proxy_protocol": reflect.TypeFor[proxyTable](),
	}
}

// parser collects the problems found while building a Config.
type parser struct {
	dir      string
	md       toml.MetaData
	problems []string
}

func parse(data []byte, dir string, opts *LoadOptions) (*Config, error) {
	if opts == nil {
		opts = &LoadOptions{}
	}
	defaults := Defaults()
	f := file{
		Server: serverTable{Server: defaults, MaxConnectionsPerIP: defaults.MaxConnectionsPerPeer},
		Store:  Store{Type: StoreFiles, Timeout: DefaultStoreTimeout},
		Proxy:  proxyTable{ProxyProtocol: ProxyProtocol{HeaderTimeout: DefaultProxyHeaderTimeout}},
	}
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		// A syntax error comes with no keys, a decoding error with them.
		syntax := len(md.Keys()) == 0
		return nil, fmt.Errorf("parsing TOML: %w", redactParseError(err, data, syntax))
	}
	// The toml package leaves a map field alone, without an error, when
	// the file gives another type of value: that is a type error too.
	for _, key := range []string{"providers", "accounts"} {
		if t := md.Type(key); t != "" && t != "Hash" {
			return nil, fmt.Errorf("parsing TOML: %q: want a table, got %s", key, tomlTypeName(t))
		}
	}
	p := &parser{dir: dir, md: md}
	p.unknownKeys()

	cfg := &Config{
		Server:    p.server(&f.Server, opts),
		Providers: make(map[string]*Provider, len(f.Providers)),
		Accounts:  make(map[string]*Account, len(f.Accounts)),
		Store:     p.store(f.Store),
	}
	cfg.ProxyProtocol = p.proxyProtocol(&f.Proxy, &cfg.Server, opts)
	for _, name := range sortedKeys(f.Providers) {
		if cfg.Providers[name], err = p.provider(name, f.Providers[name]); err != nil {
			return nil, fmt.Errorf("parsing TOML: %w", redactParseError(err, data, false))
		}
	}
	for _, login := range sortedKeys(f.Accounts) {
		if cfg.Accounts[login], err = p.account(login, f.Accounts[login], cfg.Providers); err != nil {
			return nil, fmt.Errorf("parsing TOML: %w", redactParseError(err, data, false))
		}
	}
	if len(p.problems) > 0 {
		return nil, &ValidationError{Problems: p.problems}
	}
	return cfg, nil
}

// redactParseError keeps a secret out of a TOML error. The toml package
// quotes the text around a syntax error ("expected value but found ..."),
// so the message is replaced when the error is about a key whose name
// contains "secret", or, for a syntax error (syntax), whose last key may
// be the one before, on or just after a line that mentions one. A
// decoding error quotes a value only for a duration that does not parse.
// The returned ParseError also drops the input, so that its
// ErrorWithPosition cannot print the file's lines. Other errors (a value
// of the wrong type) name the types, never the value, and are returned as
// they are.
func redactParseError(err error, data []byte, syntax bool) error {
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
		if syntax && n >= 1 && n <= len(lines) && mentions(lines[n-1]) {
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

// unknownKeys reports the keys that no field of the table types takes.
// A key is looked up by its exact name, not as the toml package matches
// keys to fields, ignoring case: "Grant" is unknown, though it set grant.
// A key inside an unknown table is not reported again.
func (p *parser) unknownKeys() {
	known := map[string]map[string]bool{"": fieldNames(reflect.TypeFor[file]())}
	for table, t := range tableTypes() {
		known[table] = fieldNames(t)
	}
	var reported []toml.Key
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
		case len(k) == 2 && (k[0] == "server" || k[0] == "store" || k[0] == "proxy_protocol"):
			names = known[k[0]]
		case len(k) == 3 && (k[0] == "providers" || k[0] == "accounts"):
			names = known[k[0]]
		default:
			continue
		}
		if !names[k[len(k)-1]] {
			p.addf(k.String(), "unknown key")
			reported = append(reported, k)
		}
	}
}

// server checks the [server] table, decoded over Defaults().
func (p *parser) server(t *serverTable, opts *LoadOptions) Server {
	s := t.Server
	p.listenerPair(s.ListenSMTP, s.ListenSMTPS, SMTP, &s)
	p.limit(s.SMTPMaxMessageBytes, "server.smtp_max_message_bytes")
	p.listenerPair(s.ListenPOP3, s.ListenPOP3TLS, POP3, &s)
	p.distinctListeners(&s)
	p.enum(s.LogLevel, []string{"debug", "info", "warn", "error"}, "server.log_level")
	p.enum(s.LogFormat, []string{"text", "json"}, "server.log_format")
	p.duration(s.PreauthTimeout, "server", "preauth_timeout")
	p.duration(s.LoginTimeout, "server", "login_timeout")
	p.duration(s.DialTimeout, "server", "dial_timeout")
	p.duration(s.TokenTimeout, "server", "token_timeout")
	p.duration(s.RefreshMargin, "server", "refresh_margin")
	p.duration(s.SessionTokenMin, "server", "session_token_min")
	p.limit(s.MaxConnections, "server.max_connections")
	perIP, perPeer := p.md.IsDefined("server", "max_connections_per_ip"), p.md.IsDefined("server", "max_connections_per_peer")
	if perIP && perPeer {
		p.addf("server.max_connections_per_ip", "old name of server.max_connections_per_peer, which is set too: keep one")
	}
	p.limit(t.MaxConnectionsPerIP, "server.max_connections_per_ip")
	if perIP && !perPeer {
		s.MaxConnectionsPerPeer = t.MaxConnectionsPerIP
	} else {
		p.limit(s.MaxConnectionsPerPeer, "server.max_connections_per_peer")
	}
	p.duration(s.FirstCommandTimeout, "server", "first_command_timeout")
	p.limit(s.MaxLineBytes, "server.max_line_bytes")
	p.limit(s.MaxLiteralBytes, "server.max_literal_bytes")
	if s.MaxLiteralBytes > MaxLiteralBytesLimit {
		p.addf("server.max_literal_bytes", "at most %d, got %d", MaxLiteralBytesLimit, s.MaxLiteralBytes)
	}
	p.duration(s.ShutdownTimeout, "server", "shutdown_timeout")
	p.duration(s.PreauthMaxTime, "server", "preauth_max_time")
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

// provider decodes and checks a [providers.NAME] table. Its type, tenant
// and cloud pick the preset it is decoded over, so it is decoded twice:
// once for those, then over the preset. The error is the toml package's,
// for a value of the wrong type.
func (p *parser) provider(name string, table toml.Primitive) (*Provider, error) {
	at := func(k string) string { return keyPath("providers", name, k) }
	given := func(k string) bool { return p.md.IsDefined("providers", name, k) }
	if name == "" {
		p.addf(keyPath("providers", name), "empty provider name")
	}
	var first providerTable
	if err := p.md.PrimitiveDecode(table, &first); err != nil {
		return nil, err
	}

	var typ string
	switch {
	case !given("type"):
		p.addf(at("type"), "missing (want microsoft, google or generic)")
	case !isOneOf(first.Type, "microsoft", "google", "generic"):
		p.addf(at("type"), "unknown type %q (want microsoft, google or generic)", first.Type)
	default:
		typ = first.Type
	}
	var tenant, cloud string
	if typ == "microsoft" {
		tenant, cloud = "organizations", "global"
	}
	switch {
	case !given("tenant"):
	case typ != "microsoft" && typ != "":
		p.addf(at("tenant"), "only for type microsoft")
	case !validTenant(first.Tenant):
		p.addf(at("tenant"), "bad tenant %q (want a tenant ID, a domain or organizations)", first.Tenant)
	default:
		tenant = first.Tenant
	}
	switch {
	case !given("cloud"):
	case typ != "microsoft" && typ != "":
		p.addf(at("cloud"), "only for type microsoft")
	case p.enum(first.Cloud, []string{"global", "usgov", "china"}, at("cloud")):
		cloud = first.Cloud
	}

	t := providerTable{Provider: preset(typ, tenant, cloud)}
	if err := p.md.PrimitiveDecode(table, &t); err != nil {
		return nil, err
	}
	pr := &t.Provider
	pr.Name, pr.Type, pr.Tenant, pr.Cloud = name, typ, tenant, cloud
	p.count(pr.MaxSessions, at("max_sessions"))
	p.enum(pr.IMAPTLS, []string{"implicit", "starttls"}, at("imap_tls"))
	for _, proto := range []Protocol{POP3, SMTP} {
		if addr := pr.Address(proto); addr != "" {
			p.address(addr, false, at(AddressKey(proto)))
		}
	}
	pr.Mechanism = strings.ToUpper(pr.Mechanism)
	if !isOneOf(pr.Mechanism, "XOAUTH2", "OAUTHBEARER") {
		p.addf(at("mechanism"), "unknown mechanism %q (want XOAUTH2 or OAUTHBEARER)", pr.Mechanism)
	}

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
	switch secretFile := t.ClientSecretFile; {
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
	p.clientCertificate(pr, typ, t.ClientSecretFile != "", at)
	return pr, nil
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

// account decodes and checks an [accounts.LOGIN] table. The error is the
// toml package's, for a value of the wrong type.
func (p *parser) account(login string, table toml.Primitive, providers map[string]*Provider) (*Account, error) {
	at := func(k string) string { return keyPath("accounts", login, k) }
	given := func(k string) bool { return p.md.IsDefined("accounts", login, k) }
	switch {
	case login == "":
		p.addf(keyPath("accounts", login), "empty login")
	case len(login) > maxLoginBytes:
		p.addf(keyPath("accounts", login), "login longer than %d bytes", maxLoginBytes)
	case strings.ContainsFunc(login, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		p.addf(keyPath("accounts", login), "login contains white space or control characters")
	}

	t := accountTable{Account: Account{Login: login, Grant: GrantRefreshToken}}
	if err := p.md.PrimitiveDecode(table, &t); err != nil {
		return nil, err
	}
	a := &t.Account
	if !given("provider") {
		p.addf(at("provider"), "missing")
	} else if a.Provider = providers[t.ProviderName]; a.Provider == nil {
		p.addf(at("provider"), "unknown provider %q", t.ProviderName)
	}
	switch {
	case a.Mailbox == "":
		p.addf(at("mailbox"), "missing")
	case strings.ContainsFunc(a.Mailbox, unicode.IsControl):
		p.addf(at("mailbox"), "contains control characters")
	}
	if a.Provider != nil && !given("max_sessions") {
		a.MaxSessions = a.Provider.MaxSessions
	}
	p.count(a.MaxSessions, at("max_sessions"))
	if a.Grant != GrantRefreshToken && !a.Grant.AppOnly() {
		p.addf(at("grant"), "unknown value %q (want %s, %s or %s)", a.Grant,
			GrantRefreshToken, GrantClientCredentials, GrantServiceAccount)
		return a, nil
	}
	p.protocols(given("protocols"), a, at)
	if a.Provider == nil {
		return a, nil
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
	return a, nil
}

// enum reports whether v is one of the strings in allowed, and a problem
// if not.
func (p *parser) enum(v string, allowed []string, key string) bool {
	if isOneOf(v, allowed...) {
		return true
	}
	p.addf(key, "unknown value %q (want %s)", v, strings.Join(allowed, ", "))
	return false
}

// duration reports a problem unless the key table.key, decoded into d,
// holds a positive duration. The toml package parses a string such as
// "30s", and takes an integer as nanoseconds: that is refused here.
func (p *parser) duration(d time.Duration, table, key string) {
	switch typ := p.md.Type(table, key); {
	case typ != "" && typ != "String":
		p.addf(keyPath(table, key), "bad duration: want a string such as \"30s\", got %s", tomlTypeName(typ))
	case d <= 0:
		p.addf(keyPath(table, key), "must be positive, got %q", d)
	}
}

// limit reports a problem unless n is positive.
func (p *parser) limit(n int, key string) {
	if n <= 0 {
		p.addf(key, "must be a positive integer, got %d", n)
	}
}

// count reports a problem unless n is 0 (no limit) or a positive integer.
func (p *parser) count(n int, key string) {
	if n < 0 {
		p.addf(key, "must be 0 (no limit) or a positive integer, got %d", n)
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

// fieldNames returns the toml tag names of struct type t, those of its
// embedded structs included and the fields tagged "-" left out.
func fieldNames(t reflect.Type) map[string]bool {
	names := make(map[string]bool, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		switch {
		case f.Anonymous && name == "":
			maps.Copy(names, fieldNames(f.Type))
		case name != "-":
			names[name] = true
		}
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
