// Package config loads and validates the imap-oauth-proxy mapping file.
//
// The file is TOML with one [server] table, one [providers.NAME] table per
// OAuth provider and one [accounts.LOGIN] table per local login:
//
//	[server]
//	listen = "127.0.0.1:1143"
//
//	[providers.contoso]
//	type = "microsoft"
//	tenant = "contoso.onmicrosoft.com"
//	client_id = "11111111-2222-3333-4444-555555555555"
//	client_secret_file = "contoso.secret"
//
//	[accounts.glpi-collector]
//	provider = "contoso"
//	mailbox = "helpdesk@contoso.com"
//
// The whole file is checked before a Config is returned: unknown keys,
// missing fields, bad values, addresses and URLs and dangling provider names
// are all reported together in one *ValidationError, each problem starting
// with its key path. A value of the wrong TOML type (a number where a string
// belongs, say), or a duration string that does not parse, ends decoding:
// the error names that one's key (and line, mostly), and no other problem.
// A Config is never returned together with an error.
//
// A returned Config is not modified by this package; it is safe for concurrent
// reads as long as no caller writes to it.
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultPath is the config path used when -config is not given. It is set
// at build time with
//
//	-ldflags "-X github.com/imap-oauth-proxy/imap-oauth-proxy/config.DefaultPath=/path"
var DefaultPath = "/etc/imap-oauth-proxy/config.toml"

// Config is a loaded and validated mapping file.
type Config struct {
	// Path is the file the Config was loaded from; "" when it came from Parse.
	Path string
	// Server holds the [server] table, with defaults for the keys not given.
	Server Server
	// Providers holds the resolved [providers.NAME] tables by NAME. It is
	// never nil.
	Providers map[string]*Provider
	// Accounts holds the [accounts.LOGIN] tables by LOGIN, the login the
	// collector sends. It is never nil.
	Accounts map[string]*Account
	// Store holds the [store] table: where token records live.
	Store Store
	// ProxyProtocol holds the [proxy_protocol] table: the listeners behind
	// a load balancer that sends PROXY headers; off by default.
	ProxyProtocol ProxyProtocol
}

// Server is the [server] table: listeners, local TLS, state, logging, timeouts
// and limits. Every field has a default (see Defaults); a loaded Server has
// passed validation, so durations and limits are positive.
type Server struct {
	// Listen is the plain IMAP listener address (key listen), on which
	// STARTTLS is offered when TLSCert is set. "" disables the plain listener
	// and is allowed only when ListenTLS is set or a listener is inherited
	// (see LoadOptions). Port 0 picks a free port.
	Listen string `toml:"listen"`
	// ListenTLS is the implicit-TLS listener address (key listen_tls); ""
	// disables it. Setting it requires TLSCert and TLSKey.
	ListenTLS string `toml:"listen_tls"`
	// ListenPOP3 is the plain POP3 listener address (key listen_pop3), on
	// which STLS is offered when TLSCert is set; "" (the default) disables
	// it.
	ListenPOP3 string `toml:"listen_pop3"`
	// ListenPOP3TLS is the implicit-TLS POP3 listener address (key
	// listen_pop3_tls); "" disables it. Setting it requires TLSCert and
	// TLSKey.
	ListenPOP3TLS string `toml:"listen_pop3_tls"`
	// ListenSMTP is the SMTP submission listener address (key
	// listen_smtp), port 587 style: STARTTLS is offered when TLSCert is
	// set; "" (the default) disables it.
	ListenSMTP string `toml:"listen_smtp"`
	// ListenSMTPS is the implicit-TLS submission listener address (key
	// listen_smtps, port 465 style); "" disables it. Setting it requires
	// TLSCert and TLSKey.
	ListenSMTPS string `toml:"listen_smtps"`
	// SMTPMaxMessageBytes bounds one message a sender submits (key
	// smtp_max_message_bytes), announced in EHLO's SIZE; the upstream's own
	// limit applies too.
	SMTPMaxMessageBytes int `toml:"smtp_max_message_bytes"`
	// TLSCert and TLSKey are the PEM certificate chain and key for local TLS
	// (keys tls_cert and tls_key), both set or both "". Relative paths are
	// resolved against the config file's directory.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// AllowPlaintext allows LOGIN and AUTHENTICATE PLAIN on a connection that
	// is not protected by TLS (key allow_plaintext).
	AllowPlaintext bool `toml:"allow_plaintext"`
	// StateDir is the directory of the encrypted token records (key
	// state_dir), resolved against the config file's directory if relative.
	StateDir string `toml:"state_dir"`
	// LogLevel is debug, info, warn or error (key log_level).
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json (key log_format).
	LogFormat string `toml:"log_format"`
	// PreauthTimeout bounds the wait for each command before login (key
	// preauth_timeout).
	PreauthTimeout time.Duration `toml:"preauth_timeout"`
	// LoginTimeout bounds getting a token and logging in upstream (key
	// login_timeout).
	LoginTimeout time.Duration `toml:"login_timeout"`
	// DialTimeout bounds connecting to the upstream IMAP server (key
	// dial_timeout).
	DialTimeout time.Duration `toml:"dial_timeout"`
	// TokenTimeout bounds one HTTP request to a token endpoint (key
	// token_timeout).
	TokenTimeout time.Duration `toml:"token_timeout"`
	// RefreshMargin is how long a cached access token must still be valid
	// to be used for a new session (key refresh_margin).
	RefreshMargin time.Duration `toml:"refresh_margin"`
	// SessionTokenMin is the least time an access token must have left
	// for a new upstream session to start on it (key session_token_min);
	// with less, the token is refreshed first. Microsoft 365 ends a
	// session when its token expires, so this is how long a session is
	// sure to last.
	SessionTokenMin time.Duration `toml:"session_token_min"`
	// MaxConnections bounds concurrent connections in total (key
	// max_connections).
	MaxConnections int `toml:"max_connections"`
	// MaxConnectionsPerPeer bounds concurrent connections per peer (key
	// max_connections_per_peer; max_connections_per_ip is its old name):
	// per local user ("uid N") for a loopback peer whose uid the kernel
	// tells, per remote address otherwise, and for all of 127.0.0.0/8 and
	// ::1 together when the uid is unknown.
	MaxConnectionsPerPeer int `toml:"max_connections_per_peer"`
	// MaxLineBytes bounds a command line before login (key max_line_bytes).
	MaxLineBytes int `toml:"max_line_bytes"`
	// MaxLiteralBytes bounds a literal before login (key
	// max_literal_bytes), at most MaxLiteralBytesLimit.
	MaxLiteralBytes int `toml:"max_literal_bytes"`
	// FirstCommandTimeout bounds the wait for a new connection's first
	// command (key first_command_timeout), so that idle connections do
	// not hold the slots of a peer or the server for long.
	FirstCommandTimeout time.Duration `toml:"first_command_timeout"`
	// PreauthMaxTime bounds the whole time from connect to login (key
	// preauth_max_time), however busy the client keeps the session.
	PreauthMaxTime time.Duration `toml:"preauth_max_time"`
	// ShutdownTimeout is how long relayed sessions may go on after SIGTERM
	// before they are cut (key shutdown_timeout).
	ShutdownTimeout time.Duration `toml:"shutdown_timeout"`
	// MetricsListen is the address of the HTTP listener that serves
	// Prometheus metrics at /metrics (key metrics_listen); "" disables it.
	// Keep it on loopback: the metrics name logins.
	MetricsListen string `toml:"metrics_listen"`
}

// MaxLiteralBytesLimit is the largest max_literal_bytes accepted: a
// pre-auth literal only carries a user name or a password.
const MaxLiteralBytesLimit = 64 << 10

// Defaults returns the Server values used for keys the file does not set.
func Defaults() Server {
	return Server{
		Listen:                "127.0.0.1:1143",
		StateDir:              "/var/lib/imap-oauth-proxy",
		LogLevel:              "info",
		LogFormat:             "text",
		PreauthTimeout:        60 * time.Second,
		LoginTimeout:          30 * time.Second,
		DialTimeout:           15 * time.Second,
		TokenTimeout:          20 * time.Second,
		RefreshMargin:         15 * time.Minute,
		SessionTokenMin:       45 * time.Minute,
		MaxConnections:        1000,
		MaxConnectionsPerPeer: 20,
		FirstCommandTimeout:   10 * time.Second,
		MaxLineBytes:          8192,
		MaxLiteralBytes:       8192,
		ShutdownTimeout:       10 * time.Second,
		PreauthMaxTime:        3 * time.Minute,
		SMTPMaxMessageBytes:   DefaultSMTPMaxMessageBytes,
	}
}

// Provider is a resolved [providers.NAME] table: the values of the preset for
// its type, then the keys given in the file on top.
type Provider struct {
	// Name is the NAME of the [providers.NAME] table.
	Name string `toml:"-"`
	// Type is "microsoft", "google" or "generic".
	Type string `toml:"type"`
	// Tenant is the Microsoft Entra tenant (ID, domain, "organizations" or
	// "common"), substituted into the preset URLs; "organizations" when not
	// set. It is "" for other types.
	Tenant string `toml:"tenant"`
	// AuthURL is the authorization endpoint (key auth_url); "" if the
	// provider has none.
	AuthURL string `toml:"auth_url"`
	// TokenURL is the token endpoint (key token_url); never "".
	TokenURL string `toml:"token_url"`
	// DeviceAuthURL is the device authorization endpoint (key
	// device_auth_url); "" if the provider has none.
	DeviceAuthURL string `toml:"device_auth_url"`
	// Scopes are requested for delegated grants (key scopes); never empty.
	Scopes []string `toml:"scopes"`
	// AppScopes are requested for the client_credentials grant (key
	// app_scopes); may be empty.
	AppScopes []string `toml:"app_scopes"`
	// ClientID is the OAuth client ID (key client_id); never "".
	ClientID string `toml:"client_id"`
	// ClientSecret is the OAuth client secret: the key client_secret, or the
	// content of the file named by client_secret_file with surrounding white
	// space trimmed. "" for a public client, and for a client that
	// authenticates with a certificate. Never log it.
	ClientSecret string `toml:"client_secret"`
	// ClientCertificateFile and ClientKeyFile are the app's certificate
	// credential (keys client_certificate_file and client_key_file),
	// resolved against the config file's directory: a certificate (PEM or
	// DER) and its unencrypted PEM RSA private key, both set or both "".
	// The client_credentials grant then authenticates with a client
	// assertion signed by the key (RFC 7523 section 2.2, Entra ID's
	// certificate credentials) instead of a client secret; ClientSecret is
	// "" then. Validation has checked that the files were readable and
	// belong together; LoadClientCertificate reads them.
	ClientCertificateFile string `toml:"client_certificate_file"`
	ClientKeyFile         string `toml:"client_key_file"`
	// IMAPAddress is the upstream IMAP server's host:port (key
	// imap_address).
	IMAPAddress string `toml:"imap_address"`
	// IMAPTLS is "implicit" (TLS from the first byte) or "starttls" (key
	// imap_tls).
	IMAPTLS string `toml:"imap_tls"`
	// POP3Address is the upstream POP3 server's host:port (key
	// pop3_address), spoken to with implicit TLS; "" when the provider has
	// none, and then no account of it may list pop3.
	POP3Address string `toml:"pop3_address"`
	// POP3InitialResponse sends the SASL initial response on the POP3 AUTH
	// line (key pop3_initial_response), as Gmail expects; false waits for
	// the server's "+" first, as Microsoft 365 requires (RFC 5034 section
	// 4 allows both).
	POP3InitialResponse bool `toml:"pop3_initial_response"`
	// SMTPAddress is the upstream submission server's host:port (key
	// smtp_address), spoken to with STARTTLS; "" when the provider has
	// none, and then no account of it may list smtp.
	SMTPAddress string `toml:"smtp_address"`
	// CAFile is a PEM file of extra root certificates for the upstream (key
	// ca_file), resolved against the config file's directory; "" for the
	// system roots only.
	CAFile string `toml:"ca_file"`
	// Mechanism is the upstream SASL mechanism, "XOAUTH2" or "OAUTHBEARER"
	// (key mechanism, any case in the file).
	Mechanism string `toml:"mechanism"`
	// Cloud is the Microsoft cloud (key cloud): "global", "usgov" (GCC
	// High and DoD) or "china" (21Vianet); it picks the sign-in host, the
	// scopes and the IMAP host of the preset. "" for other types.
	Cloud string `toml:"cloud"`
	// MaxSessions bounds the simultaneous upstream sessions of each
	// account of this provider (key max_sessions); 0 means no limit. The
	// default is 15 for google, 16 for microsoft and 0 for generic.
	MaxSessions int `toml:"max_sessions"`
	// ServiceAccountFile is a Google service account JSON key (key
	// service_account_file), resolved against the config file's directory;
	// used by the service_account grant.
	ServiceAccountFile string `toml:"service_account_file"`
}

// Account is an [accounts.LOGIN] table: a local login mapped to an upstream
// mailbox.
type Account struct {
	// Login is the LOGIN of the [accounts.LOGIN] table, the user name the
	// collector sends.
	Login string `toml:"-"`
	// Provider is the provider named by the key provider; never nil.
	Provider *Provider `toml:"-"`
	// Mailbox is the upstream user name sent in XOAUTH2 or OAUTHBEARER (key
	// mailbox).
	Mailbox string `toml:"mailbox"`
	// Grant is how the account gets its tokens (key grant):
	// GrantRefreshToken, the default, GrantClientCredentials or
	// GrantServiceAccount.
	Grant Grant `toml:"grant"`
	// MaxSessions bounds the account's simultaneous upstream sessions (key
	// max_sessions, else the provider's); 0 means no limit. Past it, a
	// login gets NO [UNAVAILABLE] without the upstream being asked.
	MaxSessions int `toml:"max_sessions"`
	// Protocols are the collector protocols the account may be used with
	// (key protocols): IMAP and POP3, in the file's order without
	// duplicates; [IMAP] when the key is not set. Never empty.
	Protocols []Protocol `toml:"protocols"`
}

// Grant is how an account gets its access tokens (key grant). The zero
// Grant, which only an Account built by hand has, is GrantRefreshToken.
type Grant string

// The grants an account may name.
const (
	// GrantRefreshToken is delegated access: a user authorized the app
	// once (authorize), and the token record keeps the refresh token.
	GrantRefreshToken Grant = "refresh_token"
	// GrantClientCredentials is Microsoft's app-only access, with the
	// app's client secret or certificate.
	GrantClientCredentials Grant = "client_credentials"
	// GrantServiceAccount is Google's app-only access: a service account
	// with domain-wide delegation.
	GrantServiceAccount Grant = "service_account"
)

// Delegated reports whether g uses a user's authorization, whose refresh
// token the token record keeps: GrantRefreshToken or the zero Grant.
func (g Grant) Delegated() bool { return g == "" || g == GrantRefreshToken }

// AppOnly reports whether g gets tokens without any user's authorization:
// GrantClientCredentials or GrantServiceAccount. Its token record holds
// no refresh token.
func (g Grant) AppOnly() bool { return g == GrantClientCredentials || g == GrantServiceAccount }

// ValidationError is returned by Load and Parse when the file is valid TOML,
// with values of the right types, but not a valid mapping file. It lists
// every problem found.
type ValidationError struct {
	// Problems each start with the key path they are about, as in
	// "providers.lab.token_url: missing". They never contain a client
	// secret.
	Problems []string
}

// Error returns "config: N problem(s): " followed by the problems separated
// by "; ".
func (e *ValidationError) Error() string {
	return fmt.Sprintf("config: %d problem(s): %s", len(e.Problems), strings.Join(e.Problems, "; "))
}

// Load reads the mapping file at path and parses it like Parse, resolving
// relative paths in it against the file's directory. The returned Config has
// Path set to path. Errors are wrapped with the path; a TOML syntax error
// carries a toml.ParseError with its line, a value of the wrong type or a
// duration that does not parse an error naming its key (the first one
// decoding meets), an invalid file a *ValidationError.
func Load(path string) (*Config, error) {
	return LoadWithOptions(path, nil)
}

// LoadOptions adjust validation to listeners a process already holds, for
// systemd socket activation. The zero value, like a nil *LoadOptions,
// validates as Load does.
type LoadOptions struct {
	// InheritedListen reports that the plain IMAP listener is a socket the
	// process was given, which replaces server.listen.
	InheritedListen bool
	// InheritedListenTLS reports that the implicit-TLS IMAP listener is a
	// socket the process was given, which replaces server.listen_tls. It
	// needs tls_cert and tls_key, as listen_tls does.
	//
	InheritedListenTLS bool
	// InheritedPOP3 and InheritedPOP3TLS report the same of the POP3
	// listeners (listen_pop3, listen_pop3_tls); the TLS one needs
	// tls_cert and tls_key too.
	InheritedPOP3, InheritedPOP3TLS bool
	// InheritedSMTP and InheritedSMTPS report the same of the SMTP
	// listeners (listen_smtp, listen_smtps); the implicit-TLS one needs
	// tls_cert and tls_key too.
	InheritedSMTP, InheritedSMTPS bool
	//
	// With any of these set, listen and listen_tls may both be empty:
	// there is something to listen on all the same.
}

// LoadWithOptions is Load with validation adjusted by opts (nil: none).
func LoadWithOptions(path string, opts *LoadOptions) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading config: %w", err)
	}
	cfg, err := parse(data, filepath.Dir(path), opts)
	if err != nil {
		return nil, fmt.Errorf("loading config %s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// Parse parses and validates a mapping file. Relative paths in it (tls_cert,
// tls_key, state_dir, client_secret_file, ca_file, service_account_file,
// client_certificate_file, client_key_file) are resolved against dir; with
// dir "" they stay relative to the working directory. client_secret_file
// is read; client_certificate_file and client_key_file are read and
// checked (an RSA key and its certificate) but not kept. Parse returns a
// TOML syntax error or the first value of the wrong type (or duration
// that does not parse) it meets, wrapped, or a *ValidationError listing
// every problem.
func Parse(data []byte, dir string) (*Config, error) {
	return parse(data, dir, nil)
}
