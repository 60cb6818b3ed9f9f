package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestMicrosoftClouds checks each cloud's sign-in host, scopes and IMAP
// host, and that personal accounts get the consumers endpoints.
func TestMicrosoftClouds(t *testing.T) {
	for _, tc := range []struct {
		cloud, tenant         string
		login, exchange, smtp string
		wantTenantInTokenURL  string
	}{
		{"", "contoso.onmicrosoft.com", "login.microsoftonline.com", "outlook.office365.com", "smtp.office365.com", "contoso.onmicrosoft.com"},
		{"global", "consumers", "login.microsoftonline.com", "outlook.office365.com", "smtp.office365.com", "consumers"},
		{"usgov", "contoso.onmicrosoft.us", "login.microsoftonline.us", "outlook.office365.us", "smtp.office365.us", "contoso.onmicrosoft.us"},
		{"china", "contoso.partner.onmschina.cn", "login.chinacloudapi.cn", "partner.outlook.cn", "smtp.partner.outlook.cn", "contoso.partner.onmschina.cn"},
	} {
		t.Run(tc.cloud+" "+tc.tenant, func(t *testing.T) {
			cloudLine := ""
			if tc.cloud != "" {
				cloudLine = "cloud = \"" + tc.cloud + "\"\n"
			}
			cfg, err := Parse([]byte(`[providers.ms]
type = "microsoft"
tenant = "`+tc.tenant+`"
client_id = "id"
`+cloudLine+`
[accounts.a]
provider = "ms"
mailbox = "a@example.com"
`), "")
			if err != nil {
				t.Fatal(err)
			}
			p := cfg.Providers["ms"]
			base := "https://" + tc.login + "/" + tc.wantTenantInTokenURL + "/oauth2/v2.0/"
			want := &Provider{Name: "ms", Type: "microsoft", Tenant: tc.tenant, Cloud: cmpOr(tc.cloud, "global"),
				AuthURL: base + "authorize", TokenURL: base + "token", DeviceAuthURL: base + "devicecode",
				Scopes:      []string{"https://" + tc.exchange + "/IMAP.AccessAsUser.All", "offline_access"},
				AppScopes:   []string{"https://" + tc.exchange + "/.default"},
				ClientID:    "id",
				IMAPAddress: tc.exchange + ":993", POP3Address: tc.exchange + ":995",
				SMTPAddress: tc.smtp + ":587",
				IMAPTLS:     "implicit", Mechanism: "XOAUTH2", MaxSessions: 16}
			if !reflect.DeepEqual(p, want) {
				t.Errorf("got\n%+v\nwant\n%+v", p, want)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestMaxSessionsAndSessionTokenMin(t *testing.T) {
	cfg, err := Parse([]byte(`[server]
session_token_min = "50m"
`+oneOfEachType+`
[providers.ms-capped]
type = "microsoft"
client_id = "id"
max_sessions = 4

[accounts.ms]
provider = "ms"
mailbox = "ms@example.com"

[accounts.g]
provider = "g"
mailbox = "g@example.com"

[accounts.lab]
provider = "lab"
mailbox = "lab@example.com"

[accounts.capped]
provider = "ms-capped"
mailbox = "c@example.com"

[accounts.own]
provider = "ms-capped"
mailbox = "o@example.com"
max_sessions = 0
`), "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.SessionTokenMin != 50*time.Minute {
		t.Errorf("SessionTokenMin = %v", cfg.Server.SessionTokenMin)
	}
	for login, want := range map[string]int{"ms": 16, "g": 15, "lab": 0, "capped": 4, "own": 0} {
		if got := cfg.Accounts[login].MaxSessions; got != want {
			t.Errorf("accounts.%s max_sessions = %d, want %d", login, got, want)
		}
	}
}

func TestProviderKeyProblems(t *testing.T) {
	_, err := Parse([]byte(`[server]
session_token_min = "0s"

[providers.g]
type = "google"
client_id = "id"
cloud = "usgov"
max_sessions = -1

[providers.ms]
type = "microsoft"
client_id = "id"
cloud = "mars"

[accounts.a]
provider = "g"
mailbox = "a@example.com"
max_sessions = -2
`), "")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"server.session_token_min: must be positive",
		"providers.g.cloud: only for type microsoft",
		"providers.g.max_sessions: must be 0 (no limit) or a positive integer, got -1",
		`providers.ms.cloud: `,
		"accounts.a.max_sessions: must be 0 (no limit) or a positive integer, got -2",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// A value of the wrong type stops decoding at once, naming the key.
	_, err = Parse([]byte("[accounts.a]\nprovider = \"g\"\nmailbox = \"a@example.com\"\nmax_sessions = \"many\"\n"), "")
	if err == nil || !strings.Contains(err.Error(), "accounts.a.max_sessions") {
		t.Errorf("max_sessions = \"many\": %v", err)
	}
}
