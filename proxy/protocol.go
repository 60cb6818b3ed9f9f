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
	// upstreamALPN is the ALPN id offered to that server; "" for none.
	upstreamALPN string
	// tooManyConnections is the line a connection refused at a limit gets.
	tooManyConnections string
}

// listenerKey is the [server] key of the protocol's listener, implicit
// TLS or not.
func (p *protocol) listenerKey(implicitTLS bool) string {
	return config.ListenerKey(p.name, implicitTLS)
}

var (
	imapProtocol = &protocol{
		name:               config.IMAP,
		label:              "IMAP",
		preauth:            (*conn).preauth,
		loginUpstream:      DialUpstream,
		tooManyConnections: "* BYE [UNAVAILABLE] Too many connections; try again later",
	}
	pop3Protocol = &protocol{
		name:               config.POP3,
		label:              "POP3",
		preauth:            (*conn).pop3Preauth,
		loginUpstream:      loginPOP3Upstream,
		upstreamALPN:       "pop3",
		tooManyConnections: "-ERR [SYS/TEMP] Too many connections; try again later",
	}
	smtpProtocol = &protocol{
		name:               config.SMTP,
		label:              "SMTP",
		preauth:            (*conn).smtpServe,
		loginUpstream:      loginSMTPUpstream,
		tooManyConnections: "421 4.7.0 Too many connections; try again later",
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
	return deriveTLS(cfg, imapLocal, pop3Protocol)
}

// deriveTLS derives proto's TLS settings from the IMAP ones and cfg: the
// local certificate with the protocol's ALPN id, and a client
// configuration for each provider's server of proto.
func deriveTLS(cfg *config.Config, imapLocal *tls.Config, proto *protocol) (protocolTLS, error) {
	pt := protocolTLS{upstream: make(map[string]*tls.Config)}
	if imapLocal != nil {
		pt.local = imapLocal.Clone()
		pt.local.NextProtos = []string{string(proto.name)}
	}
	for name, p := range cfg.Providers {
		if p.Address(proto.name) == "" {
			continue
		}
		tc, err := proto.upstreamTLS(p)
		if err != nil {
			return protocolTLS{}, fmt.Errorf("providers.%s.%s: %w", name, config.AddressKey(proto.name), err)
		}
		pt.upstream[name] = tc
	}
	return pt, nil
}

// upstreamTLS is the client TLS configuration for p's server of proto.
func (proto *protocol) upstreamTLS(p *config.Provider) (*tls.Config, error) {
	tc, err := tlsconfig.Upstream(p.Address(proto.name), p.CAFile)
	if err != nil {
		return nil, err
	}
	if proto.upstreamALPN != "" {
		tc.NextProtos = []string{proto.upstreamALPN}
	}
	return tc, nil
}

// protocolNamed returns the protocol called name, or nil.
func protocolNamed(name config.Protocol) *protocol {
	for _, p := range []*protocol{imapProtocol, pop3Protocol, smtpProtocol} {
		if p.name == name {
			return p
		}
	}
	return nil
}

// LoginUpstream logs in to the server of the account in l for proto with
// the token in l, as the daemon does for a collector of that protocol:
// DialUpstream for IMAP, the POP3 and SMTP logins otherwise. When
// l.TLSConfig is nil, it is the daemon's for that server, as
// UpstreamTLSConfig gives it. The caller closes the connection.
func LoginUpstream(ctx context.Context, proto config.Protocol, l *UpstreamLogin) (*UpstreamConn, error) {
	p := protocolNamed(proto)
	if p == nil {
		return nil, fmt.Errorf("no upstream login for protocol %q", proto)
	}
	if l.TLSConfig == nil {
		tc, err := UpstreamTLSConfig(l.Account.Provider, proto)
		if err != nil {
			return nil, err
		}
		copied := *l
		copied.TLSConfig = tc
		l = &copied
	}
	return p.loginUpstream(ctx, l)
}

// UpstreamTLSConfig returns the client TLS settings the daemon uses for
// provider p's server of proto: certificate and host name verified (see
// tlsconfig.Upstream), and the protocol's ALPN id.
func UpstreamTLSConfig(p *config.Provider, proto config.Protocol) (*tls.Config, error) {
	pr := protocolNamed(proto)
	if pr == nil {
		return nil, fmt.Errorf("no upstream for protocol %q", proto)
	}
	if p.Address(pr.name) == "" {
		return nil, fmt.Errorf("provider %s has no %s server", p.Name, pr.label)
	}
	return pr.upstreamTLS(p)
}

// localTLS is the server TLS configuration for c's protocol; nil without
// a local certificate.
func (c *conn) localTLS() *tls.Config {
	switch c.proto.name {
	case config.POP3:
		return c.cfg.pop3.local
	case config.SMTP:
		return c.cfg.smtp.local
	}
	return c.cfg.localTLS
}

// upstreamTLS is the client TLS configuration for p's server of c's
// protocol.
func (c *conn) upstreamTLS(p *config.Provider) *tls.Config {
	switch c.proto.name {
	case config.POP3:
		return c.cfg.pop3.upstream[p.Name]
	case config.SMTP:
		return c.cfg.smtp.upstream[p.Name]
	}
	return c.cfg.upstreamTLS[p.Name]
}
