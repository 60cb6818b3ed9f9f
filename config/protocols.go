package config

import (
	"slices"
	"strings"
)

// Protocol is a collector protocol the proxy speaks, as named in the
// file's protocols key.
type Protocol string

// The protocols an account can list.
const (
	IMAP Protocol = "imap"
	POP3 Protocol = "pop3"
	SMTP Protocol = "smtp"
)

// knownProtocols are the values of accounts.LOGIN.protocols.
var knownProtocols = []string{string(IMAP), string(POP3), string(SMTP)}

// Microsoft's delegated permissions per protocol, on the Exchange Online
// resource of the provider's cloud: https://learn.microsoft.com/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth
var microsoftDelegatedPermissions = map[Protocol]string{
	IMAP: "IMAP.AccessAsUser.All",
	POP3: "POP.AccessAsUser.All",
	SMTP: "SMTP.Send",
}

// listenerKeys are the [server] keys of each protocol's listeners: the
// plain one, then the implicit-TLS one.
var listenerKeys = map[Protocol][2]string{
	IMAP: {"listen", "listen_tls"},
	POP3: {"listen_pop3", "listen_pop3_tls"},
	SMTP: {"listen_smtp", "listen_smtps"},
}

// ListenerKey returns the [server] key of proto's plain listener or, with
// implicitTLS, of its implicit-TLS listener; "" for an unknown protocol.
func ListenerKey(proto Protocol, implicitTLS bool) string {
	keys, ok := listenerKeys[proto]
	switch {
	case !ok:
		return ""
	case implicitTLS:
		return keys[1]
	}
	return keys[0]
}

// addressKeys are the [providers.NAME] keys of each protocol's upstream
// server.
var addressKeys = map[Protocol]string{IMAP: "imap_address", POP3: "pop3_address", SMTP: "smtp_address"}

// AddressKey returns the [providers.NAME] key of the upstream server for
// proto, such as pop3_address.
func AddressKey(proto Protocol) string { return addressKeys[proto] }

// Address returns p's upstream server for proto (host:port), "" when it
// has none.
func (p *Provider) Address(proto Protocol) string {
	switch proto {
	case IMAP:
		return p.IMAPAddress
	case POP3:
		return p.POP3Address
	case SMTP:
		return p.SMTPAddress
	}
	return ""
}

// Allows reports whether the account may be used over proto.
func (a *Account) Allows(proto Protocol) bool {
	return slices.Contains(a.Protocols, proto)
}

// Scopes returns the scopes a delegated authorization of the account
// requests. For a Microsoft provider whose scopes are the preset's, they
// are the Exchange Online permission of each protocol the account lists
// (IMAP.AccessAsUser.All, POP.AccessAsUser.All, SMTP.Send) and
// offline_access;
// otherwise the provider's scopes (Google's https://mail.google.com/
// covers IMAP, POP3 and SMTP). App-only grants use the provider's
// AppScopes instead: Microsoft's .default names whatever application
// permissions (IMAP.AccessAsApp, POP.AccessAsApp, SMTP.SendAsApp) the
// admin granted.
func (a *Account) Scopes() []string {
	p := a.Provider
	if p == nil {
		return nil
	}
	presetScopes := preset(p.Type, p.Tenant, p.Cloud).Scopes
	if p.Type != "microsoft" || !slices.Equal(p.Scopes, presetScopes) {
		return p.Scopes
	}
	// The preset's first scope is the cloud's IMAP permission, such as
	// https://outlook.office365.us/IMAP.AccessAsUser.All.
	resource := strings.TrimSuffix(presetScopes[0], microsoftDelegatedPermissions[IMAP])
	var scopes []string
	for _, proto := range a.Protocols {
		scopes = append(scopes, resource+microsoftDelegatedPermissions[proto])
	}
	return append(scopes, "offline_access")
}

// protocols checks an account's protocols key, decoded into a.Protocols
// (given reports whether the file sets it): a non-empty array of known
// protocol names, in any case, without duplicates; [imap] when not set,
// and when not valid. A protocol the provider has no server for is a
// problem.
func (p *parser) protocols(given bool, a *Account, at func(string) string) {
	names := a.Protocols
	a.Protocols = []Protocol{IMAP}
	if !given {
		return
	}
	if len(names) == 0 {
		p.addf(at("protocols"), "empty (want some of %s)", strings.Join(knownProtocols, ", "))
		return
	}
	var protos []Protocol
	for _, name := range names {
		name = Protocol(strings.ToLower(string(name)))
		switch {
		case !isOneOf(string(name), knownProtocols...):
			p.addf(at("protocols"), "unknown protocol %q (want %s)", name, strings.Join(knownProtocols, ", "))
			return
		case slices.Contains(protos, name):
			p.addf(at("protocols"), "%s listed twice", name)
			return
		}
		protos = append(protos, name)
	}
	a.Protocols = protos
	if a.Provider != nil && a.Allows(POP3) && a.Provider.POP3Address == "" {
		p.addf(at("protocols"), "pop3 needs providers.%s.pop3_address", keyPath(a.Provider.Name))
	}
	if a.Provider != nil && a.Allows(SMTP) && a.Provider.SMTPAddress == "" {
		p.addf(at("protocols"), "smtp needs providers.%s.smtp_address", keyPath(a.Provider.Name))
	}
}

// listenerPair checks proto's plain and implicit-TLS listener addresses
// of s; the implicit-TLS one needs the local certificate.
func (p *parser) listenerPair(plain, implicitTLS string, proto Protocol, s *Server) {
	plainKey, tlsKey := ListenerKey(proto, false), ListenerKey(proto, true)
	if plain != "" {
		p.address(plain, true, "server."+plainKey)
	}
	if implicitTLS != "" {
		p.address(implicitTLS, true, "server."+tlsKey)
		if s.TLSCert == "" && s.TLSKey == "" {
			p.addf("server."+tlsKey, "needs server.tls_cert and server.tls_key")
		}
	}
}

// distinctListeners reports every listener of s whose address another one
// already has (listen_tls against listen is reported with the IMAP keys).
func (p *parser) distinctListeners(s *Server) {
	seen := map[string]string{}
	for _, l := range []struct{ key, addr string }{
		{ListenerKey(IMAP, false), s.Listen}, {ListenerKey(IMAP, true), s.ListenTLS},
		{ListenerKey(POP3, false), s.ListenPOP3}, {ListenerKey(POP3, true), s.ListenPOP3TLS},
		{ListenerKey(SMTP, false), s.ListenSMTP}, {ListenerKey(SMTP, true), s.ListenSMTPS},
	} {
		if l.addr == "" || strings.HasSuffix(l.addr, ":0") {
			continue
		}
		if other, ok := seen[l.addr]; ok && l.key != "listen_tls" { // listen_tls vs listen: reported already
			p.addf("server."+l.key, "same address as server.%s", other)
		}
		seen[l.addr] = l.key
	}
}
