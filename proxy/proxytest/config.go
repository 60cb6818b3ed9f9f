package proxytest

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// LabConfigOptions describe a mapping file for LabConfig.
type LabConfigOptions struct {
	// Listen is the proxy's [server] listen address; "" means "127.0.0.1:0".
	Listen string
	// Server holds extra lines for the [server] table, besides listen and
	// state_dir = "state".
	Server string
	// TokenURL, ClientID, ClientSecret and IMAPAddress configure the
	// provider "lab".
	TokenURL, ClientID, ClientSecret, IMAPAddress string
	// CAFile names the file, relative to the mapping file, holding the
	// certificate that the upstream's is checked against.
	CAFile string
	// Accounts maps each login to its mailbox; all use provider "lab".
	Accounts map[string]string
}

// LabConfig returns the TOML text of a mapping file with one generic
// provider named "lab", for an in-process Upstream. Accounts are written
// sorted by login.
func LabConfig(opts LabConfigOptions) string {
	listen := opts.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	server := opts.Server
	if server != "" && !strings.HasSuffix(server, "\n") {
		server += "\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `[server]
listen = %q
state_dir = "state"
%s
[providers.lab]
type = "generic"
token_url = %q
scopes = ["imap", "offline_access"]
client_id = %q
client_secret = %q
imap_address = %q
ca_file = %q
`, listen, server, opts.TokenURL, opts.ClientID, opts.ClientSecret, opts.IMAPAddress, opts.CAFile)
	for _, login := range slices.Sorted(maps.Keys(opts.Accounts)) {
		fmt.Fprintf(&b, "\n[accounts.%s]\nprovider = \"lab\"\nmailbox = %q\n", login, opts.Accounts[login])
	}
	return b.String()
}
