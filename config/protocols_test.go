package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseProtocols(t *testing.T) {
	cfg, err := Parse([]byte(`[server]
listen_pop3 = "127.0.0.1:1110"
[providers.ms]
type = "microsoft"
client_id = "c"
[providers.g]
type = "google"
client_id = "c"
[providers.lab]
type = "generic"
token_url = "https://idp.example/token"
scopes = ["mail"]
client_id = "c"
imap_address = "imap.example:993"
pop3_address = "pop.example:995"
pop3_initial_response = true
[accounts.both]
provider = "ms"
mailbox = "a@example.com"
protocols = ["pop3", "IMAP"]
[accounts.default]
provider = "ms"
mailbox = "b@example.com"
[accounts.pop-only]
provider = "ms"
mailbox = "c@example.com"
protocols = ["pop3"]
[accounts.gmail]
provider = "g"
mailbox = "d@example.com"
protocols = ["pop3"]
[accounts.lab]
provider = "lab"
mailbox = "e"
protocols = ["pop3"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Server.ListenPOP3; got != "127.0.0.1:1110" {
		t.Errorf("ListenPOP3 = %q", got)
	}
	if lab := cfg.Providers["lab"]; lab.POP3Address != "pop.example:995" || !lab.POP3InitialResponse {
		t.Errorf("lab provider = %+v", lab)
	}
	imapScope := "https://outlook.office365.com/IMAP.AccessAsUser.All"
	popScope := "https://outlook.office365.com/POP.AccessAsUser.All"
	tests := []struct {
		login      string
		protocols  []Protocol
		scopes     []string
		pop3, imap bool
	}{
		{"both", []Protocol{POP3, IMAP}, []string{popScope, imapScope, "offline_access"}, true, true},
		{"default", []Protocol{IMAP}, []string{imapScope, "offline_access"}, false, true},
		{"pop-only", []Protocol{POP3}, []string{popScope, "offline_access"}, true, false},
		{"gmail", []Protocol{POP3}, []string{"https://mail.google.com/"}, true, false},
		{"lab", []Protocol{POP3}, []string{"mail"}, true, false},
	}
	for _, tt := range tests {
		a := cfg.Accounts[tt.login]
		if !slices.Equal(a.Protocols, tt.protocols) {
			t.Errorf("%s: Protocols = %v, want %v", tt.login, a.Protocols, tt.protocols)
		}
		if got := a.Scopes(); !slices.Equal(got, tt.scopes) {
			t.Errorf("%s: Scopes() = %v, want %v", tt.login, got, tt.scopes)
		}
		if a.Allows(POP3) != tt.pop3 || a.Allows(IMAP) != tt.imap {
			t.Errorf("%s: Allows(POP3) = %v, Allows(IMAP) = %v", tt.login, a.Allows(POP3), a.Allows(IMAP))
		}
	}
}

func TestParseProtocolsInvalid(t *testing.T) {
	tests := []struct {
		name, data string
		want       []string // problems, each a prefix
	}{
		{"unknown protocol", labProvider + `[accounts.a]
provider = "lab"
mailbox = "a"
protocols = ["imap", "nntp"]
`, []string{`accounts.a.protocols: unknown protocol "nntp"`}},
		{"twice", labProvider + `[accounts.a]
provider = "lab"
mailbox = "a"
protocols = ["pop3", "pop3"]
`, []string{`accounts.a.protocols: pop3 listed twice`}},
		{"empty", labProvider + `[accounts.a]
provider = "lab"
mailbox = "a"
protocols = []
`, []string{`accounts.a.protocols: empty`}},
		{"pop3 without a server", labProvider + `[accounts.a]
provider = "lab"
mailbox = "a"
protocols = ["pop3"]
`, []string{`accounts.a.protocols: pop3 needs providers.lab.pop3_address`}},
		{"bad pop3 address", labProvider + `pop3_address = "pop.example"
`, []string{`providers.lab.pop3_address: bad address`}},
		{"implicit TLS without a certificate", `[server]
listen_pop3_tls = "127.0.0.1:1995"
listen_pop3 = "127.0.0.1:1143"
`, []string{`server.listen_pop3_tls: needs server.tls_cert`, `server.listen_pop3: same address as server.listen`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.data), "")
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("err = %v, want a *ValidationError", err)
			}
			if len(verr.Problems) != len(tt.want) {
				t.Fatalf("problems = %q, want %d", verr.Problems, len(tt.want))
			}
			for i, p := range verr.Problems {
				if !strings.HasPrefix(p, tt.want[i]) {
					t.Errorf("problem %d = %q, want it to start with %q", i, p, tt.want[i])
				}
			}
		})
	}
}

// A POP3 listener alone is something to listen on.
func TestParsePOP3Only(t *testing.T) {
	cfg, err := Parse([]byte("[server]\nlisten = \"\"\nlisten_pop3 = \"127.0.0.1:0\"\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.Listen != "" || cfg.Server.ListenPOP3 != "127.0.0.1:0" {
		t.Errorf("Server = %+v", cfg.Server)
	}
}

// TestScopesFollowCloud: a national cloud's delegated scopes name its own
// Exchange Online resource for every protocol the account lists.
func TestScopesFollowCloud(t *testing.T) {
	cfg, err := Parse([]byte(`[server]
[providers.gov]
type = "microsoft"
tenant = "contoso.onmicrosoft.us"
cloud = "usgov"
client_id = "id"

[accounts.a]
provider = "gov"
mailbox = "a@contoso.us"
protocols = ["imap", "pop3"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"https://outlook.office365.us/IMAP.AccessAsUser.All", "https://outlook.office365.us/POP.AccessAsUser.All", "offline_access"}
	if got := cfg.Accounts["a"].Scopes(); !slices.Equal(got, want) {
		t.Errorf("scopes %q, want %q", got, want)
	}
}
