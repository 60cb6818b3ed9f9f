package auth

import (
	"net/url"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// authorize asks Microsoft for the permission of each protocol the account
// lists, and nothing else.
func TestCodeFlowScopesFollowProtocols(t *testing.T) {
	cfg, err := config.Parse([]byte(`[providers.ms]
type = "microsoft"
client_id = "c"
[accounts.imap]
provider = "ms"
mailbox = "a@example.com"
[accounts.pop]
provider = "ms"
mailbox = "a@example.com"
protocols = ["imap", "pop3"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	for login, want := range map[string]string{
		"imap": msIMAPScope,
		"pop":  "https://outlook.office365.com/IMAP.AccessAsUser.All https://outlook.office365.com/POP.AccessAsUser.All offline_access",
	} {
		f, err := NewCodeFlow(cfg.Accounts[login], "http://127.0.0.1:1/")
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(f.URL)
		if err != nil {
			t.Fatal(err)
		}
		if got := u.Query().Get("scope"); got != want {
			t.Errorf("%s: scope = %q, want %q", login, got, want)
		}
	}
}
