package proxy

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/tlsconfig"
)

// protocol is what one kind of listener speaks: its dialogue with
// collectors before login and its login to the upstream. Everything else
// (limits, peer keys, throttle, KDF queue, token manager, relay) is shared.
// The values below are never modified.
type protocol struct {
	name config.Protocol
	// label names the protocol in messages, as in "not enabled for POP3".
	label string
	// preauth greets the collector, runs the commands before login and,
	// after a login, the relay; it returns why the session ended.
	preauth func(*conn) string
	// loginUpstream dials the account's server for this protocol and
	// authenticates with the token.
	loginUpstream func(context.Context, *UpstreamLogin) (*UpstreamConn, error)
	// upstreamAddress is the provider's server for this protocol.
	upstreamAddress func(*config.Provider) string
	// tooManyConnections is the line a connection refused at a limit gets.
	tooManyConnections string
}

var (
	imapProtocol = &protocol{
		name:               config.IMAP,
		label:              "IMAP",
		preauth:            (*conn).preauth,
		loginUpstream:      DialUpstream,
		upstreamAddress:    func(p *config.Provider) string { return p.IMAPAddress },
		tooManyConnections: "* BYE [UNAVAILABLE] Too many connections; try again later",
	}
	pop3Protocol = &protocol{
		name:               config.POP3,
		label:              "POP3",
		preauth:            (*conn).pop3Preauth,
		loginUpstream:      loginPOP3Upstream,
		upstreamAddress:    func(p *config.Provider) string { return p.POP3Address },
		tooManyConnections: "-ERR [SYS/TEMP] Too many connections; try again later",
	}
)

// protocolTLS is the TLS configuration of one protocol, derived from a
// config once.
type protocolTLS struct {
	local    *tls.Config            // nil without tls_cert
	upstream map[string]*tls.Config // by provider name
}

// pop3TLS derives the POP3 TLS settings from the IMAP ones and cfg: the
// local certificate with the ALPN id "pop3" (RFC 7301's registry), and a
// client configuration for each provider's POP3 server, whose host name
// may differ from the IMAP server's (pop.gmail.com).
func pop3TLS(cfg *config.Config, imapLocal *tls.Config) (protocolTLS, error) {
	pt := protocolTLS{upstream: make(map[string]*tls.Config)}
	if imapLocal != nil {
		pt.local = imapLocal.Clone()
		pt.local.NextProtos = []string{"pop3"}
	}
	for name, p := range cfg.Providers {
		if p.POP3Address == "" {
			continue
		}
		tc, err := tlsconfig.Upstream(p.POP3Address, p.CAFile)
		if err != nil {
			return protocolTLS{}, fmt.Errorf("providers.%s.pop3_address: %w", name, err)
		}
		tc.NextProtos = []string{"pop3"}
		pt.upstream[name] = tc
	}
	return pt, nil
}

// localTLS is the server TLS configuration for c's protocol; nil without
// a local certificate.
func (c *conn) localTLS() *tls.Config {
	if c.proto.name == config.POP3 {
		return c.cfg.pop3.local
	}
	return c.cfg.localTLS
}

// upstreamTLS is the client TLS configuration for p's server of c's
// protocol.
func (c *conn) upstreamTLS(p *config.Provider) *tls.Config {
	if c.proto.name == config.POP3 {
		return c.cfg.pop3.upstream[p.Name]
	}
	return c.cfg.upstreamTLS[p.Name]
}
