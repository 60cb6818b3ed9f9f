package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestParseProtocols: the protocols an account lists decide what it may
// use and which scopes it asks for, for each type of provider.
func TestParseProtocols(t *testing.T) {
	cfg, err := Parse([]byte(`[server]
listen_pop3 = "127.0.0.1:1110"
listen_smtp = "127.0.0.1:1587"
smtp_max_message_bytes = 1048576
`+oneOfEachType+`
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
[accounts.all]
provider = "ms"
mailbox = "d@example.com"
protocols = ["imap", "pop3", "smtp"]
[accounts.send-only]
provider = "ms"
mailbox = "e@example.com"
protocols = ["SMTP"]
[accounts.gmail]
provider = "g"
mailbox = "f@example.com"
protocols = ["pop3", "smtp"]
[accounts.lab]
provider = "lab"
mailbox = "g"
protocols = ["pop3", "smtp"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Server; s.ListenPOP3 != "127.0.0.1:1110" || s.ListenSMTP != "127.0.0.1:1587" || s.ListenSMTPS != "" ||
		s.SMTPMaxMessageBytes != 1<<20 {
		t.Errorf("Server = %+v", s)
	}
	if lab := cfg.Providers["lab"]; lab.POP3Address != "pop.example:995" || !lab.POP3InitialResponse {
		t.Errorf("lab provider = %+v", lab)
	}
	for name, want := range map[string]string{"ms": "smtp.office365.com:587", "g": "smtp.gmail.com:587", "lab": "smtp.example:587"} {
		if got := cfg.Providers[name].SMTPAddress; got != want {
			t.Errorf("providers.%s.smtp_address = %q, want %q", name, got, want)
		}
	}
	resource := "https://outlook.office365.com/"
	imapScope, popScope, smtpScope := resource+"IMAP.AccessAsUser.All", resource+"POP.AccessAsUser.All", resource+"SMTP.Send"
	tests := []struct {
		login     string
		protocols []Protocol
		scopes    []string
	}{
		{"both", []Protocol{POP3, IMAP}, []string{popScope, imapScope, "offline_access"}},
		{"default", []Protocol{IMAP}, []string{imapScope, "offline_access"}},
		{"pop-only", []Protocol{POP3}, []string{popScope, "offline_access"}},
		{"all", []Protocol{IMAP, POP3, SMTP}, []string{imapScope, popScope, smtpScope, "offline_access"}},
		{"send-only", []Protocol{SMTP}, []string{smtpScope, "offline_access"}},
		{"gmail", []Protocol{POP3, SMTP}, []string{"https://mail.google.com/"}},
		{"lab", []Protocol{POP3, SMTP}, []string{"imap"}},
	}
	for _, tt := range tests {
		a := cfg.Accounts[tt.login]
		if !slices.Equal(a.Protocols, tt.protocols) {
			t.Errorf("%s: Protocols = %v, want %v", tt.login, a.Protocols, tt.protocols)
		}
		if got := a.Scopes(); !slices.Equal(got, tt.scopes) {
			t.Errorf("%s: Scopes() = %v, want %v", tt.login, got, tt.scopes)
		}
		for _, p := range []Protocol{IMAP, POP3, SMTP} {
			if a.Allows(p) != slices.Contains(tt.protocols, p) {
				t.Errorf("%s: Allows(%s) = %v", tt.login, p, a.Allows(p))
			}
		}
	}
}

// TestParseProtocolsInvalid: problems with the protocols of accounts and
// with the POP3 and SMTP listeners.
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
		{"pop3 implicit TLS without a certificate", `[server]
listen_pop3_tls = "127.0.0.1:1995"
listen_pop3 = "127.0.0.1:1143"
`, []string{`server.listen_pop3_tls: needs server.tls_cert`, `server.listen_pop3: same address as server.listen`}},
		{"smtp without a server", labProvider + `[accounts.a]
provider = "lab"
mailbox = "a"
protocols = ["smtp"]
`, []string{`accounts.a.protocols: smtp needs providers.lab.smtp_address`}},
		{"smtp implicit TLS without a certificate", `[server]
listen_smtps = "127.0.0.1:1465"
listen_smtp = "127.0.0.1:1143"
smtp_max_message_bytes = 0
`, []string{`server.listen_smtps: needs server.tls_cert`, `server.smtp_max_message_bytes:`,
			`server.listen_smtp: same address as server.listen`}},
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

// TestProtocolKeys: the listener and upstream address keys each protocol
// names are keys the file has, and a provider's address for a protocol is
// the one its key sets.
func TestProtocolKeys(t *testing.T) {
	serverKeys := fieldNames(tableTypes()["server"])
	providerKeys := fieldNames(tableTypes()["providers"])
	cfg, err := Parse([]byte(`[providers.p]
type = "generic"
token_url = "https://login.example/token"
client_id = "id"
scopes = ["mail"]
imap_address = "imap.example:993"
pop3_address = "pop.example:995"
smtp_address = "smtp.example:465"
`), "")
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Providers["p"]
	want := map[Protocol]string{IMAP: "imap.example:993", POP3: "pop.example:995", SMTP: "smtp.example:465"}
	seen := map[string]bool{}
	for _, proto := range []Protocol{IMAP, POP3, SMTP} {
		for _, implicitTLS := range []bool{false, true} {
			key := ListenerKey(proto, implicitTLS)
			if !serverKeys[key] || seen[key] {
				t.Errorf("ListenerKey(%s, %v) = %q: not a [server] key, or given twice", proto, implicitTLS, key)
			}
			seen[key] = true
		}
		if key := AddressKey(proto); !providerKeys[key] {
			t.Errorf("AddressKey(%s) = %q: not a provider key", proto, key)
		}
		if got := p.Address(proto); got != want[proto] {
			t.Errorf("Address(%s) = %q, want %q", proto, got, want[proto])
		}
	}
	if got := ListenerKey("nntp", false); got != "" {
		t.Errorf("ListenerKey(nntp) = %q, want none", got)
	}
}
