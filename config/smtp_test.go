package config

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseSMTP(t *testing.T) {
	cfg, err := Parse([]byte(`[server]
listen = ""
listen_smtp = "127.0.0.1:1587"
smtp_max_message_bytes = 1048576
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
smtp_address = "smtp.example:587"
[accounts.all]
provider = "ms"
mailbox = "a@example.com"
protocols = ["imap", "pop3", "smtp"]
[accounts.send-only]
provider = "ms"
mailbox = "b@example.com"
protocols = ["SMTP"]
[accounts.gmail]
provider = "g"
mailbox = "c@example.com"
protocols = ["smtp"]
[accounts.lab]
provider = "lab"
mailbox = "d"
protocols = ["smtp"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Server; s.ListenSMTP != "127.0.0.1:1587" || s.ListenSMTPS != "" || s.SMTPMaxMessageBytes != 1<<20 {
		t.Errorf("Server = %+v", s)
	}
	for name, want := range map[string]string{"ms": "smtp.office365.com:587", "g": "smtp.gmail.com:587", "lab": "smtp.example:587"} {
		if got := cfg.Providers[name].SMTPAddress; got != want {
			t.Errorf("providers.%s.smtp_address = %q, want %q", name, got, want)
		}
	}
	resource := "https://outlook.office365.com/"
	for login, want := range map[string][]string{
		"all":       {resource + "IMAP.AccessAsUser.All", resource + "POP.AccessAsUser.All", resource + "SMTP.Send", "offline_access"},
		"send-only": {resource + "SMTP.Send", "offline_access"},
		"gmail":     {"https://mail.google.com/"},
		"lab":       {"mail"},
	} {
		a := cfg.Accounts[login]
		if got := a.Scopes(); !slices.Equal(got, want) {
			t.Errorf("%s: Scopes() = %q, want %q", login, got, want)
		}
		if !a.Allows(SMTP) {
			t.Errorf("%s: Allows(SMTP) = false", login)
		}
	}
	if cfg.Accounts["send-only"].Allows(IMAP) {
		t.Error("send-only: Allows(IMAP) = true")
	}
}

func TestParseSMTPProblems(t *testing.T) {
	for _, tt := range []struct {
		name, data string
		want       []string
	}{
		{"smtp without a server", `[providers.lab]
type = "generic"
token_url = "https://idp.example/token"
scopes = ["mail"]
client_id = "c"
imap_address = "imap.example:993"
[accounts.a]
provider = "lab"
mailbox = "a"
protocols = ["smtp"]
`, []string{`accounts.a.protocols: smtp needs providers.lab.smtp_address`}},
		{"implicit TLS without a certificate", `[server]
listen_smtps = "127.0.0.1:1465"
listen_smtp = "127.0.0.1:1143"
smtp_max_message_bytes = 0
`, []string{`server.listen_smtps: needs server.tls_cert`, `server.smtp_max_message_bytes:`,
			`server.listen_smtp: same address as server.listen`}},
	} {
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
