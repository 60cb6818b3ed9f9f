package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const testdataDir = "../testdata/config"

func TestLoadFull(t *testing.T) {
	path := filepath.Join(testdataDir, "full.toml")
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Path != path {
		t.Errorf("Path = %q, want %q", cfg.Path, path)
	}
	dir := testdataDir

	// full.toml gives every [server] key it sets a value other than its
	// default.
	wantServer := Defaults()
	wantServer.Listen = "127.0.0.1:0"
	wantServer.ListenTLS = "127.0.0.1:1993"
	wantServer.TLSCert = filepath.Join(dir, "cert.pem")
	wantServer.TLSKey = "/etc/imap-oauth-proxy/key.pem"
	wantServer.AllowPlaintext = true
	wantServer.StateDir = filepath.Join(dir, "state")
	wantServer.LogLevel = "debug"
	wantServer.LogFormat = "json"
	wantServer.PreauthTimeout = 45 * time.Second
	wantServer.LoginTimeout = time.Minute
	wantServer.DialTimeout = 5 * time.Second
	wantServer.TokenTimeout = 10 * time.Second
	wantServer.RefreshMargin = 20 * time.Minute
	wantServer.MaxConnections = 50
	wantServer.MaxConnectionsPerPeer = 5
	wantServer.FirstCommandTimeout = 5 * time.Second
	wantServer.MaxLineBytes = 4096
	wantServer.MaxLiteralBytes = 2048
	wantServer.ShutdownTimeout = 3 * time.Second
	wantServer.PreauthMaxTime = 2 * time.Minute
	wantServer.MetricsListen = "127.0.0.1:9143"
	if cfg.Server != wantServer {
		t.Errorf("Server =\n%+v\nwant\n%+v", cfg.Server, wantServer)
	}

	ms := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
	wantProviders := map[string]*Provider{
		"contoso": {
			Name:          "contoso",
			Type:          "microsoft",
			Tenant:        "contoso.onmicrosoft.com",
			AuthURL:       ms + "authorize",
			TokenURL:      ms + "token",
			DeviceAuthURL: ms + "devicecode",
			Scopes:        []string{"https://outlook.office365.com/IMAP.AccessAsUser.All", "offline_access"},
			Cloud:         "global",
			MaxSessions:   16,
			AppScopes:     []string{"https://outlook.office365.com/.default"},
			ClientID:      "11111111-2222-3333-4444-555555555555",
			ClientSecret:  "contoso-inline-secret",
			IMAPAddress:   "outlook.office365.us:993", // override
			IMAPTLS:       "implicit",
			POP3Address:   "outlook.office365.com:995",
			SMTPAddress:   "smtp.office365.com:587",
			Mechanism:     "OAUTHBEARER", // "oauthbearer" in the file
		},
		"contoso-app": {
			Name:                  "contoso-app",
			Type:                  "microsoft",
			Tenant:                "contoso.onmicrosoft.com",
			AuthURL:               ms + "authorize",
			TokenURL:              ms + "token",
			DeviceAuthURL:         ms + "devicecode",
			Scopes:                []string{"https://outlook.office365.com/IMAP.AccessAsUser.All", "offline_access"},
			AppScopes:             []string{"https://outlook.office365.com/.default"},
			ClientID:              "66666666-7777-8888-9999-000000000000",
			IMAPAddress:           "outlook.office365.com:993",
			IMAPTLS:               "implicit",
			POP3Address:           "outlook.office365.com:995",
			SMTPAddress:           "smtp.office365.com:587",
			Mechanism:             "XOAUTH2",
			ClientCertificateFile: filepath.Join(dir, "contoso-app.pem"),
			ClientKeyFile:         filepath.Join(dir, "contoso-app.key"),
			Cloud:                 "global",
			MaxSessions:           16,
		},
		"gmail": {
			Name:                "gmail",
			Type:                "google",
			AuthURL:             "https://accounts.google.com/o/oauth2/auth",
			TokenURL:            "https://oauth2.googleapis.com/token",
			DeviceAuthURL:       "https://oauth2.googleapis.com/device/code",
			Scopes:              []string{"https://mail.google.com/"},
			ClientID:            "1234.apps.googleusercontent.com",
			IMAPAddress:         "imap.gmail.com:993",
			IMAPTLS:             "implicit",
			POP3Address:         "pop.gmail.com:995",
			SMTPAddress:         "smtp.gmail.com:587",
			POP3InitialResponse: true,
			Mechanism:           "XOAUTH2",
			ServiceAccountFile:  filepath.Join(dir, "gmail-sa.json"),
			MaxSessions:         15,
		},
		"lab": {
			Name:          "lab",
			Type:          "generic",
			AuthURL:       "https://idp.example/authorize",
			TokenURL:      "https://idp.example/token",
			DeviceAuthURL: "https://idp.example/devicecode",
			Scopes:        []string{"imap", "offline_access"},
			AppScopes:     []string{"imap.app"},
			ClientID:      "proxy",
			ClientSecret:  "lab-secret-value", // from lab.secret, trimmed
			IMAPAddress:   "imap.example:143",
			IMAPTLS:       "starttls",
			CAFile:        filepath.Join(dir, "lab-ca.pem"),
			Mechanism:     "XOAUTH2",
		},
	}
	if len(cfg.Providers) != len(wantProviders) {
		t.Errorf("got %d providers, want %d", len(cfg.Providers), len(wantProviders))
	}
	for name, want := range wantProviders {
		t.Run("provider "+name, func(t *testing.T) {
			got := cfg.Providers[name]
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, want)
			}
		})
	}

	wantAccounts := []struct {
		login, provider, mailbox string
		grant                    Grant
	}{
		{"glpi-collector", "contoso", "helpdesk@contoso.com", "refresh_token"},
		{"shared@contoso", "contoso", "shared@contoso.com", "client_credentials"},
		{"app-collector", "contoso-app", "app@contoso.com", "client_credentials"},
		{"gmail-robot", "gmail", "robot@example.com", "service_account"},
		{"lab", "lab", "tester", "refresh_token"},
	}
	if len(cfg.Accounts) != len(wantAccounts) {
		t.Errorf("got %d accounts, want %d", len(cfg.Accounts), len(wantAccounts))
	}
	for _, want := range wantAccounts {
		t.Run("account "+want.login, func(t *testing.T) {
			a := cfg.Accounts[want.login]
			if a == nil {
				t.Fatalf("account missing")
			}
			if a.Login != want.login || a.Mailbox != want.mailbox || a.Grant != want.grant {
				t.Errorf("got %+v, want %+v", *a, want)
			}
			if a.Provider != cfg.Providers[want.provider] {
				t.Errorf("Provider = %p, want providers[%q] = %p", a.Provider, want.provider, cfg.Providers[want.provider])
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, data := range []string{"", "# nothing\n", "[server]\n"} {
		cfg, err := Parse([]byte(data), "/etc/x")
		if err != nil {
			t.Fatalf("Parse(%q): %v", data, err)
		}
		if cfg.Server != Defaults() {
			t.Errorf("Parse(%q).Server = %+v, want Defaults()", data, cfg.Server)
		}
		if cfg.Providers == nil || cfg.Accounts == nil || len(cfg.Providers)+len(cfg.Accounts) != 0 {
			t.Errorf("Parse(%q): want empty non-nil maps, got %v %v", data, cfg.Providers, cfg.Accounts)
		}
		if cfg.Path != "" {
			t.Errorf("Parse(%q).Path = %q", data, cfg.Path)
		}
	}
}

// TestParseValid covers presets, defaults and resolution in files that are
// valid but differ from full.toml.
func TestParseValid(t *testing.T) {
	tests := []struct {
		name  string
		data  string
		check func(t *testing.T, cfg *Config)
	}{
		{
			name: "microsoft default tenant",
			data: `[providers.m]
type = "microsoft"
client_id = "id"`,
			check: func(t *testing.T, cfg *Config) {
				p := cfg.Providers["m"]
				if p.Tenant != "organizations" {
					t.Errorf("Tenant = %q", p.Tenant)
				}
				if want := "https://login.microsoftonline.com/organizations/oauth2/v2.0/token"; p.TokenURL != want {
					t.Errorf("TokenURL = %q, want %q", p.TokenURL, want)
				}
				if p.IMAPAddress != "outlook.office365.com:993" || p.IMAPTLS != "implicit" || p.Mechanism != "XOAUTH2" {
					t.Errorf("got %+v", p)
				}
			},
		},
		{
			name: "old name of the per-peer connection limit",
			data: "[server]\nmax_connections_per_ip = 7\nmax_literal_bytes = 65536\n",
			check: func(t *testing.T, cfg *Config) {
				if cfg.Server.MaxConnectionsPerPeer != 7 || cfg.Server.MaxLiteralBytes != MaxLiteralBytesLimit {
					t.Errorf("got %+v", cfg.Server)
				}
			},
		},
		{
			name: "google overrides",
			data: `[providers.g]
type = "google"
client_id = "id"
scopes = ["https://mail.google.com/", "email"]
token_url = "http://127.0.0.1:8080/token"`,
			check: func(t *testing.T, cfg *Config) {
				p := cfg.Providers["g"]
				if !reflect.DeepEqual(p.Scopes, []string{"https://mail.google.com/", "email"}) {
					t.Errorf("Scopes = %q", p.Scopes)
				}
				if p.TokenURL != "http://127.0.0.1:8080/token" {
					t.Errorf("TokenURL = %q", p.TokenURL)
				}
				if p.AuthURL != "https://accounts.google.com/o/oauth2/auth" || p.Tenant != "" {
					t.Errorf("got %+v", p)
				}
			},
		},
		{
			name: "tls only",
			data: `[server]
listen = ""
listen_tls = "[::1]:0"
tls_cert = "c.pem"
tls_key = "k.pem"`,
			check: func(t *testing.T, cfg *Config) {
				s := cfg.Server
				if s.Listen != "" || s.ListenTLS != "[::1]:0" {
					t.Errorf("got listen %q, listen_tls %q", s.Listen, s.ListenTLS)
				}
				if s.TLSCert != "/etc/x/c.pem" || s.TLSKey != "/etc/x/k.pem" {
					t.Errorf("got tls_cert %q, tls_key %q", s.TLSCert, s.TLSKey)
				}
			},
		},
		{
			name: "unused provider, mechanism case, quoted login",
			data: `[providers.unused]
type = "google"
client_id = "id"
mechanism = "OAuthBearer"

[providers.lab]
type = "generic"
token_url = "https://idp.example/token"
scopes = ["imap"]
client_id = "proxy"
imap_address = "imap.example:993"

[accounts."user@example.com"]
provider = "lab"
mailbox = "user@example.com"`,
			check: func(t *testing.T, cfg *Config) {
				if m := cfg.Providers["unused"].Mechanism; m != "OAUTHBEARER" {
					t.Errorf("Mechanism = %q", m)
				}
				a := cfg.Accounts["user@example.com"]
				if a == nil || a.Grant != "refresh_token" || a.Provider != cfg.Providers["lab"] {
					t.Errorf("account = %+v", a)
				}
				p := cfg.Providers["lab"]
				if p.AuthURL != "" || p.DeviceAuthURL != "" || p.AppScopes != nil || p.ClientSecret != "" {
					t.Errorf("generic provider has preset values: %+v", p)
				}
			},
		},
		{
			name: "inline tables",
			data: `providers = { lab = { type = "generic", token_url = "https://idp.example/token", scopes = ["imap"], client_id = "proxy", imap_address = "imap.example:993" } }
[accounts]
a = { provider = "lab", mailbox = "a@example.com", grant = "refresh_token" }`,
			check: func(t *testing.T, cfg *Config) {
				if a := cfg.Accounts["a"]; a == nil || a.Provider != cfg.Providers["lab"] || a.Mailbox != "a@example.com" {
					t.Errorf("account = %+v", a)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.data), "/etc/x")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, cfg)
		})
	}
}

// labProvider is a valid generic provider for the tables below.
const labProvider = `
[providers.lab]
type = "generic"
token_url = "https://idp.example/token"
scopes = ["imap"]
client_id = "proxy"
imap_address = "imap.example:993"
`

// oneOfEachType is a provider of each type, for files that set their
// presets side by side: ms (microsoft), g (google) and lab (generic, with
// a server for every protocol).
const oneOfEachType = `
[providers.ms]
type = "microsoft"
client_id = "c"
[providers.g]
type = "google"
client_id = "c"
` + labProvider + `pop3_address = "pop.example:995"
pop3_initial_response = true
smtp_address = "smtp.example:587"
`

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		data string
		// want lists the key path of every problem, in order.
		want []string
	}{
		{
			name: "unknown keys",
			data: `[server]
listn = "x"
[sever]
listen = "x"
[sever.deeper]
a = 1
[providers.lab]
tokenurl = "https://idp.example/token"
` + strings.TrimPrefix(labProvider, "\n[providers.lab]\n") + `
[providers.lab.extra]
x = 1
y = 2

[accounts.a]
provider = "lab"
mailbox = "a"
Grant = "refresh_token"
`,
			want: []string{"server.listn", "sever", "providers.lab.tokenurl", "providers.lab.extra", "accounts.a.Grant"},
		},
		{
			name: "literal bound and both names of the per-peer limit",
			data: `[server]
max_literal_bytes = 65537
max_connections_per_ip = 5
max_connections_per_peer = 6
`,
			want: []string{"server.max_connections_per_ip", "server.max_literal_bytes"},
		},
		{
			name: "three problems",
			data: labProvider + `
[providers.lab2]
type = "generic"
scopes = ["imap"]
client_id = "proxy"
imap_address = "imap.example:993"

[accounts.glpi]
provider = "contso"
mailbox = "a"

[server]
listen = "x"
`,
			want: []string{"server.listen", "providers.lab2.token_url", "accounts.glpi.provider"},
		},
		{
			name: "server values",
			data: `[server]
listen = "1143"
log_level = "verbose"
log_format = "xml"
preauth_timeout = 60
dial_timeout = "0s"
token_timeout = "-1s"
max_connections = 0
max_connections_per_ip = -10
max_line_bytes = -1
`,
			want: []string{
				"server.log_level", "server.log_format",
				"server.preauth_timeout", "server.dial_timeout", "server.token_timeout",
				"server.max_connections", "server.max_connections_per_ip", "server.max_line_bytes", "server.listen",
			},
		},
		{
			name: "server addresses and tls",
			data: `[server]
listen = "localhost:imap"
listen_tls = "127.0.0.1:70000"
tls_cert = "c.pem"
state_dir = ""
`,
			want: []string{"server.listen", "server.listen_tls", "server.tls_key", "server.state_dir"},
		},
		{
			name: "nothing to listen on",
			data: `[server]
listen = ""
`,
			want: []string{"server.listen"},
		},
		{
			name: "tls key without cert",
			data: `[server]
tls_key = "k.pem"
`,
			want: []string{"server.tls_cert"},
		},
		{
			name: "listen twice on one address",
			data: `[server]
listen = "127.0.0.1:993"
listen_tls = "127.0.0.1:993"
tls_cert = "c"
tls_key = "k"
`,
			want: []string{"server.listen_tls"},
		},
		{
			name: "provider type missing or unknown",
			data: `[providers.a]
client_id = "x"
[providers.b]
type = "yahoo"
client_id = "x"
[providers.c]
type = ""
client_id = "x"
`,
			want: []string{"providers.a.type", "providers.b.type", "providers.c.type"},
		},
		{
			name: "generic provider missing everything",
			data: `[providers.lab]
type = "generic"
`,
			want: []string{"providers.lab.token_url", "providers.lab.scopes", "providers.lab.imap_address", "providers.lab.client_id"},
		},
		{
			name: "provider values",
			data: `[providers.lab]
type = "generic"
auth_url = "idp.example/authorize"
token_url = "ftp://idp.example/token"
device_auth_url = "https://idp.example/%zz"
scopes = []
app_scopes = ["ok", ""]
client_id = "proxy"
imap_address = ":993"
imap_tls = "ssl"
mechanism = "PLAIN"
tenant = "contoso"
service_account_file = "sa.json"
`,
			want: []string{
				"providers.lab.tenant", "providers.lab.imap_tls", "providers.lab.mechanism", "providers.lab.scopes",
				"providers.lab.auth_url", "providers.lab.token_url", "providers.lab.device_auth_url",
				"providers.lab.app_scopes", "providers.lab.imap_address", "providers.lab.service_account_file",
			},
		},
		{
			name: "imap address",
			data: `[providers.a]
type = "google"
client_id = "x"
imap_address = "imap.gmail.com"
[providers.b]
type = "google"
client_id = "x"
imap_address = "imap.gmail.com:0"
[providers.c]
type = "microsoft"
client_id = "x"
imap_address = ""
tenant = "contoso/evil"
`,
			want: []string{"providers.a.imap_address", "providers.b.imap_address", "providers.c.tenant", "providers.c.imap_address"},
		},
		{
			name: "secret conflicts and files",
			data: `[providers.a]
type = "google"
client_id = "x"
client_secret = "s"
client_secret_file = "lab.secret"
[providers.b]
type = "google"
client_id = "x"
client_secret_file = "does-not-exist.secret"
`,
			want: []string{"providers.a.client_secret_file", "providers.b.client_secret_file"},
		},
		{
			name: "accounts",
			data: labProvider + `
[providers.ms]
type = "microsoft"
client_id = "x"

[accounts.nomailbox]
provider = "lab"

[accounts.noprovider]
mailbox = "a"

[accounts.badgrant]
provider = "lab"
mailbox = "a"
grant = "password"

[accounts.cc-nosecret]
provider = "lab"
mailbox = "a"
grant = "client_credentials"

[accounts.cc-common-tenant]
provider = "ms"
mailbox = "a"
grant = "client_credentials"

[accounts.sa-generic]
provider = "lab"
mailbox = "a"
grant = "service_account"

[accounts.ctl]
provider = "lab"
mailbox = "a\u0001b"
`,
			want: []string{
				"accounts.badgrant.grant",
				"accounts.cc-common-tenant.grant", "accounts.cc-common-tenant.grant",
				"accounts.cc-nosecret.grant",
				"accounts.ctl.mailbox",
				"accounts.nomailbox.mailbox",
				"accounts.noprovider.provider",
				"accounts.sa-generic.grant",
			},
		},
		{
			name: "service account on google without file",
			data: `[providers.g]
type = "google"
client_id = "x"
[accounts.robot]
provider = "g"
mailbox = "robot@example.com"
grant = "service_account"
`,
			want: []string{"accounts.robot.grant"},
		},
		{
			name: "logins",
			data: labProvider + `
[accounts."has space"]
provider = "lab"
mailbox = "a"
[accounts."tab\tin"]
provider = "lab"
mailbox = "a"
[accounts.""]
provider = "lab"
mailbox = "a"
[accounts.` + strings.Repeat("x", 256) + `]
provider = "lab"
mailbox = "a"
[accounts.` + strings.Repeat("y", 255) + `]
provider = "lab"
mailbox = "a"
`,
			want: []string{`accounts.""`, `accounts."has space"`, `accounts."tab\tin"`, "accounts." + strings.Repeat("x", 256)},
		},
		{
			name: "empty provider table",
			data: labProvider + `
[providers.bad]
`,
			want: []string{"providers.bad.type", "providers.bad.client_id"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.data), testdataDir)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a Config with an error")
			}
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("error %v is a %T, want *ValidationError", err, err)
			}
			for i, prob := range verr.Problems {
				t.Logf("problem %d: %s", i, prob)
			}
			if len(verr.Problems) != len(tt.want) {
				t.Fatalf("got %d problems, want %d: %v", len(verr.Problems), len(tt.want), tt.want)
			}
			for i, want := range tt.want {
				if !strings.HasPrefix(verr.Problems[i], want+": ") {
					t.Errorf("problem %d = %q, want key path %q", i, verr.Problems[i], want)
				}
			}
		})
	}
}

// TestParseTypeError: a value of the wrong TOML type ends decoding with
// an error that names its key, and no other problem of the file is
// reported with it.
func TestParseTypeError(t *testing.T) {
	tests := []struct {
		name string
		data string
		key  string // the key path the error must name
	}{
		{"string", "[server]\nlisten = 1143\n", "server.listen"},
		{"boolean", "[server]\nallow_plaintext = \"yes\"\n", "server.allow_plaintext"},
		{"integer from a string", "[server]\nmax_connections_per_ip = \"10\"\n", "server.max_connections_per_ip"},
		{"integer from a float", "[server]\nmax_literal_bytes = 1.5\n", "server.max_literal_bytes"},
		{"duration from an array", "[server]\npreauth_timeout = [\"60s\"]\n", "server.preauth_timeout"},
		{"duration that does not parse", "[server]\nlogin_timeout = \"soon\"\n", "server.login_timeout"},
		{"array from a string", "[providers.lab]\nscopes = \"imap offline_access\"\n", "providers.lab.scopes"},
		{"string from an array", "[providers.lab]\nca_file = [\"a\", \"b\"]\n", "providers.lab.ca_file"},
		{"provider type", "[providers.c]\ntype = 1\n", "providers.c.type"},
		{"server not a table", "server = \"x\"\n", "server"},
		{"providers not a table", "providers = 1\n", "providers"},
		{"accounts an array of tables", "[[accounts]]\nprovider = \"lab\"\n", "accounts"},
		{"account not a table", "[accounts]\na = \"lab\"\n", "accounts.a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The [server] table below is invalid too, and must not be
			// reported: decoding stopped before it was checked.
			data := tt.data
			if !strings.HasPrefix(data, "[server]") && !strings.HasPrefix(data, "server") {
				data += "\n[server]\nlog_level = \"verbose\"\n"
			}
			cfg, err := Parse([]byte(data), testdataDir)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", cfg)
			}
			t.Logf("error: %v", err)
			if cfg != nil {
				t.Errorf("Parse returned a Config with an error")
			}
			var verr *ValidationError
			if errors.As(err, &verr) {
				t.Errorf("got a *ValidationError, want the type error alone")
			}
			if !strings.Contains(err.Error(), `"`+tt.key+`"`) {
				t.Errorf("error does not name the key %s", tt.key)
			}
			if strings.Contains(err.Error(), "log_level") {
				t.Errorf("error reports a problem after the type error")
			}
		})
	}
}

func TestValidationErrorMessage(t *testing.T) {
	_, err := Parse([]byte(`[accounts.glpi]
provider = "contso"
mailbox = "x"
[server]
listen = "x"
`), "")
	want := `config: 2 problem(s): server.listen: bad address "x": address x: missing port in address; ` +
		`accounts.glpi.provider: unknown provider "contso"`
	if err == nil || err.Error() != want {
		t.Errorf("got error\n%v\nwant\n%s", err, want)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("got %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("syntax error", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bad.toml")
		if err := os.WriteFile(path, []byte("[server]\nlisten = \"127.0.0.1:1143\"\nlog_level = \n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		var perr toml.ParseError
		if !errors.As(err, &perr) {
			t.Fatalf("got %v (%T), want a toml.ParseError", err, err)
		}
		if perr.Position.Line != 3 {
			t.Errorf("line = %d, want 3", perr.Position.Line)
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "line 3") {
			t.Errorf("error %q does not name the file and line", msg)
		}
	})
	t.Run("invalid file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "invalid.toml")
		if err := os.WriteFile(path, []byte("[server]\nlisten = \"x\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		var verr *ValidationError
		if !errors.As(err, &verr) || len(verr.Problems) != 1 {
			t.Fatalf("got %v, want a *ValidationError with one problem", err)
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name the file", err)
		}
	})
}

// TestSecretNotInErrors checks that no error, whatever is wrong with the
// file, contains a client secret.
func TestSecretNotInErrors(t *testing.T) {
	const secret = "Qz9Kp4Wv7Lm2"
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "s.secret"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "toml.secret"), []byte("x = \""+secret+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, data string }{
		{"both set", `[providers.p]
type = "google"
client_id = "x"
client_secret = "` + secret + `"
client_secret_file = "s.secret"`},
		{"secret is not a string", `[providers.p]
type = "google"
client_id = "x"
client_secret = ["` + secret + `"]`},
		{"invalid elsewhere", `[providers.p]
type = "generic"
client_id = "x"
client_secret = "` + secret + `"
[accounts.a]
provider = "p"
grant = "client_credentials"
[server]
listen = "bad"`},
		{"file is a directory", `[providers.p]
type = "google"
client_id = "x"
client_secret_file = "."`},
		{"file is the config itself", `[providers.p]
type = "google"
client_id = "x"
client_secret_file = "toml.secret"
unknown = 1`},
		{"unknown key next to secret", `[providers.p]
type = "google"
client_id = "x"
client_secret = "` + secret + `"
client_secrte = "` + secret + `"`},
		{"syntax: unterminated", `[providers.p]
client_secret = "` + secret},
		{"syntax: bare value", `[providers.p]
client_secret = ` + secret},
		{"syntax: duplicate key", `[providers.p]
client_secret = "` + secret + `"
client_secret = "` + secret + `"`},
		{"syntax: bad escape", `[providers.p]
client_secret = "` + secret + `\q"`},
		{"syntax: newline in string", "[providers.p]\nclient_secret = \"" + secret + "\n\""},
		{"syntax: bad hex escape", `[providers.p]
client_secret = "` + secret + `\xZZ"`},
		{"syntax: bad hex escape in multi-line string", `[providers.p]
client_secret = """
` + secret + `\xZZ"""`},
		{"syntax: bad escape lines into a multi-line string", `[providers.p]
client_secret = """
first line
second line
` + secret + `\xZZ"""`},
		{"syntax: yaml style", `[providers.p]
client_secret: ` + secret},
		{"syntax: no separator", `[providers.p]
client_secret ` + secret},
		{"syntax: garbage after value", `[providers.p]
client_secret = "x" ` + secret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			t.Logf("error: %v", err)
			// The toml package quotes as little as one character of the
			// text it stumbles on: look for any part of the secret.
			for i := 0; i+2 <= len(secret); i++ {
				if part := secret[i : i+2]; strings.Contains(err.Error(), part) {
					t.Errorf("error contains %q from the secret: %v", part, err)
				}
			}
			var perr toml.ParseError
			if errors.As(err, &perr) && strings.Contains(perr.ErrorWithPosition(), secret[:2]) {
				t.Errorf("ErrorWithPosition shows the secret: %s", perr.ErrorWithPosition())
			}
		})
	}
}

// TestLoadWithOptions checks validation with sockets inherited from systemd:
// listen and listen_tls may then both be empty, an inherited implicit-TLS
// socket needs the local certificate, and without inherited sockets
// validation is what Load does.
func TestLoadWithOptions(t *testing.T) {
	const noListen = "[server]\nlisten = \"\"\nstate_dir = \"state\"\n"
	tests := []struct {
		name string
		data string
		opts *LoadOptions
		want []string // key paths of the problems; nil: valid
	}{
		{"nil options", noListen, nil, []string{"server.listen"}},
		{"zero options", noListen, &LoadOptions{}, []string{"server.listen"}},
		{"inherited plain", noListen, &LoadOptions{InheritedListen: true}, nil},
		{"inherited tls without cert", noListen, &LoadOptions{InheritedListenTLS: true}, []string{"server.tls_cert"}},
		{"inherited tls and listen_tls without cert",
			"[server]\nlisten_tls = \"127.0.0.1:993\"\n", &LoadOptions{InheritedListenTLS: true}, []string{"server.tls_cert"}},
		{"inherited tls with cert", noListen + "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n", &LoadOptions{InheritedListenTLS: true}, nil},
		{"inherited plain, listen_tls without cert",
			"[server]\nlisten_tls = \"127.0.0.1:993\"\n", &LoadOptions{InheritedListen: true}, []string{"server.listen_tls"}},
		{"inherited plain, bad listen address still reported",
			"[server]\nlisten = \"x\"\n", &LoadOptions{InheritedListen: true}, []string{"server.listen"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadWithOptions(path, tt.opts)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("LoadWithOptions: %v", err)
				}
				if cfg.Path != path {
					t.Errorf("Path = %q, want %q", cfg.Path, path)
				}
				return
			}
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("got %v, want a *ValidationError", err)
			}
			if len(verr.Problems) != len(tt.want) {
				t.Fatalf("problems %q, want key paths %q", verr.Problems, tt.want)
			}
			for i, want := range tt.want {
				if !strings.HasPrefix(verr.Problems[i], want+": ") {
					t.Errorf("problem %d = %q, want key path %q", i, verr.Problems[i], want)
				}
			}
			if tt.opts != nil && tt.opts.InheritedListenTLS && !strings.Contains(err.Error(), "imaps") {
				t.Errorf("error %q does not name the imaps socket", err)
			}
		})
	}
}
