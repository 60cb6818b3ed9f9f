package proxytest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// LabConfigOptions describe a mapping file for LabConfig.
type LabConfigOptions struct {
	// Listen is the proxy's [server] listen address; "" means "127.0.0.1:0".
	Listen string
	// Server holds extra lines for the [server] table, each ending in a
	// newline, besides listen and state_dir = "state".
	Server string
	// TokenURL, ClientID, ClientSecret, IMAPAddress and CAFile configure
	// the provider "lab"; CAFile is relative to the mapping file.
	TokenURL, ClientID, ClientSecret, IMAPAddress, CAFile string
	// Type is the provider's type; "" means "generic". A "microsoft" or
	// "google" provider keeps the same endpoint overrides.
	Type string
	// Accounts maps each login to its mailbox; all use provider "lab".
	Accounts map[string]string
	// POP3Address is the provider's pop3_address ("" for none), and
	// POP3InitialResponse its pop3_initial_response.
	POP3Address         string
	POP3InitialResponse bool
	// SMTPAddress is the provider's smtp_address ("" for none).
	SMTPAddress string
	// Protocols, if not empty, are every account's protocols.
	Protocols []string
}

// LabConfig returns the TOML text of a mapping file with one generic
// provider named "lab", for an in-process Upstream. Accounts are written
// sorted by login.
func LabConfig(opts LabConfigOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, `[server]
listen = %q
state_dir = "state"
%s
[providers.lab]
type = %q
token_url = %q
scopes = ["imap", "offline_access"]
client_id = %q
client_secret = %q
imap_address = %q
ca_file = %q
`, cmp.Or(opts.Listen, "127.0.0.1:0"), opts.Server, cmp.Or(opts.Type, "generic"), opts.TokenURL, opts.ClientID, opts.ClientSecret,
		opts.IMAPAddress, opts.CAFile)
	if opts.POP3Address != "" {
		fmt.Fprintf(&b, "pop3_address = %q\npop3_initial_response = %t\n", opts.POP3Address, opts.POP3InitialResponse)
	}
	if opts.SMTPAddress != "" {
		fmt.Fprintf(&b, "smtp_address = %q\n", opts.SMTPAddress)
	}
	for _, login := range slices.Sorted(maps.Keys(opts.Accounts)) {
		fmt.Fprintf(&b, "\n[accounts.%s]\nprovider = \"lab\"\nmailbox = %q\n", login, opts.Accounts[login])
		if len(opts.Protocols) > 0 {
			fmt.Fprintf(&b, "protocols = [\"%s\"]\n", strings.Join(opts.Protocols, `", "`))
		}
	}
	return b.String()
}
