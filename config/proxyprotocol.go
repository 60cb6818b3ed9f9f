package config

import (
	"net/netip"
	"slices"
	"strings"
	"time"
)

// ProxyListeners are the [server] listener keys that proxy_protocol.listeners
// may name, in the order the man page gives them.
var ProxyListeners = []string{
	ListenerKey(IMAP, false), ListenerKey(IMAP, true),
	ListenerKey(POP3, false), ListenerKey(POP3, true),
	ListenerKey(SMTP, false), ListenerKey(SMTP, true),
}

// DefaultProxyHeaderTimeout is the default of proxy_protocol.header_timeout.
// A load balancer sends its header at once, with the connection.
const DefaultProxyHeaderTimeout = 5 * time.Second

// ProxyProtocol is the [proxy_protocol] table: the listeners behind a load
// balancer that announces each client's address with a PROXY protocol
// header (v1 or v2), and the addresses such headers are taken from. The
// zero value, the default, turns the PROXY protocol off everywhere.
//
// The table is one for every listener rather than a key per listener: the
// listeners are keys of [server], and the load balancers in front of them
// are, in practice, the same hosts for all of them.
type ProxyProtocol struct {
	// Listeners are the [server] listener keys (key listeners, values from
	// ProxyListeners) whose connections from Allowed sources must start
	// with a PROXY header. Empty: the PROXY protocol is off.
	Listeners []string `toml:"listeners"`
	// Allowed are the sources (key allowed: addresses, or CIDR prefixes)
	// that may send a PROXY header, and on Listeners must. An address is
	// kept as a single-address prefix. Never empty when Listeners is not.
	Allowed []netip.Prefix `toml:"-"`
	// HeaderTimeout bounds the wait for the header of a connection from
	// an Allowed source (key header_timeout).
	HeaderTimeout time.Duration `toml:"header_timeout"`
}

// On reports whether the listener of the [server] key listenerKey takes
// PROXY headers.
func (pp *ProxyProtocol) On(listenerKey string) bool {
	return slices.Contains(pp.Listeners, listenerKey)
}

// AllowedFrom reports whether addr may send a PROXY header. An IPv4
// address written as IPv6 (::ffff:a.b.c.d) counts as its IPv4 address.
func (pp *ProxyProtocol) AllowedFrom(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range pp.Allowed {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// proxyTable is the [proxy_protocol] table as decoded: the sources in
// allowed are checked before they become ProxyProtocol.Allowed.
type proxyTable struct {
	ProxyProtocol
	Sources []string `toml:"allowed"`
}

// proxyProtocol checks the [proxy_protocol] table, decoded over its
// defaults, against the listeners of s, the [server] table already read;
// opts names the listeners that systemd passes.
func (p *parser) proxyProtocol(t *proxyTable, s *Server, opts *LoadOptions) ProxyProtocol {
	pp := ProxyProtocol{HeaderTimeout: t.HeaderTimeout}
	p.duration(pp.HeaderTimeout, "proxy_protocol", "header_timeout")
	hasListeners := p.md.IsDefined("proxy_protocol", "listeners")
	hasAllowed := p.md.IsDefined("proxy_protocol", "allowed")
	configured := map[string]bool{
		"listen":          s.Listen != "" || opts.InheritedListen,
		"listen_tls":      s.ListenTLS != "" || opts.InheritedListenTLS,
		"listen_pop3":     s.ListenPOP3 != "" || opts.InheritedPOP3,
		"listen_pop3_tls": s.ListenPOP3TLS != "" || opts.InheritedPOP3TLS,
		"listen_smtp":     s.ListenSMTP != "" || opts.InheritedSMTP,
		"listen_smtps":    s.ListenSMTPS != "" || opts.InheritedSMTPS,
	}
	for i, key := range t.Listeners {
		switch {
		case !isOneOf(key, ProxyListeners...):
			p.addf("proxy_protocol.listeners", "element %d: unknown listener %q (want some of %s)", i, key, strings.Join(ProxyListeners, ", "))
		case slices.Contains(pp.Listeners, key):
			p.addf("proxy_protocol.listeners", "%s listed twice", key)
		case !configured[key]:
			p.addf("proxy_protocol.listeners", "element %d: server.%s is not set: no such listener", i, key)
		default:
			pp.Listeners = append(pp.Listeners, key)
		}
	}
	for i, text := range t.Sources {
		prefix, err := parseSource(text)
		if err != nil {
			p.addf("proxy_protocol.allowed", "element %d: bad address %q (want an IP address or a CIDR prefix such as 10.0.0.0/24)", i, text)
			continue
		}
		pp.Allowed = append(pp.Allowed, prefix)
	}
	switch {
	case hasListeners && len(t.Listeners) == 0:
		p.addf("proxy_protocol.listeners", "empty: name the listeners behind the load balancer, or remove the table")
	case !hasListeners && hasAllowed:
		p.addf("proxy_protocol.listeners", "missing (allowed is set): name the listeners behind the load balancer")
	case hasListeners && len(t.Sources) == 0:
		p.addf("proxy_protocol.allowed", "missing: the PROXY protocol needs the load balancers' addresses, or anyone could claim any address")
	}
	return pp
}

// parseSource reads an allowed source: an address, or a CIDR prefix.
func parseSource(text string) (netip.Prefix, error) {
	if strings.Contains(text, "/") {
		prefix, err := netip.ParsePrefix(text)
		if err != nil {
			return netip.Prefix{}, err
		}
		return prefix.Masked(), nil
	}
	addr, err := netip.ParseAddr(text)
	if err != nil {
		return netip.Prefix{}, err
	}
	addr = addr.Unmap()
	return netip.PrefixFrom(addr, addr.BitLen()), nil
}
