package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/pires/go-proxyproto"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// A listener named in [proxy_protocol] listeners sits behind a load
// balancer that starts each connection with a PROXY protocol header (v1
// or v2) naming the client. The header is read on the connection's own
// goroutine, bounded by header_timeout, never in the accept loop: a
// client that sends half a header must not hold up everyone else.
//
// From an allowed source the header is required: a connection from the
// load balancer without one is a misconfiguration, and taking the load
// balancer's address for the client's would put every client under one
// throttle key. From any other source, the connection is a client's and is
// served as such, but a PROXY header it sends is refused: IMAP, POP3 and
// SMTP servers speak first, so waiting for a header that a client never
// sends would delay every greeting, and the check is instead made on the
// client's first bytes (headerRefusingConn).

// origin is where a connection comes from, once its PROXY header (if any)
// is read.
type origin struct {
	nc     net.Conn // what to read from: the accepted connection, or a wrapper
	remote net.Addr // the client: from the header, else the direct peer
	// via is the load balancer's address when a header named the client;
	// nil for a direct connection and the balancer's own.
	via net.Addr
	// local reports a header for the load balancer's own connection,
	// such as a health check: LOCAL (or v1's UNKNOWN), or one naming the
	// direct connection's own address.
	local bool
	// refusing is the wrapper that refuses a PROXY header from a source
	// not allowed; nil unless the listener takes headers.
	refusing *headerRefusingConn
}

// proxied reports whether the connection's client came from a header.
func (o *origin) proxied() bool { return o.via != nil }

// errNoProxyHeader is a connection from an allowed source that did not
// start with a PROXY header.
var errNoProxyHeader = errors.New("no PROXY header from an allowed source (a load balancer must send one on this listener)")

// readOrigin finds where nc, accepted on the listener of key listenerKey,
// comes from, reading its PROXY header when pp asks for one. The error
// says why the connection is refused; nc is left open.
func readOrigin(nc net.Conn, pp *config.ProxyProtocol, listenerKey string) (*origin, error) {
	direct := nc.RemoteAddr()
	if !pp.On(listenerKey) {
		return &origin{nc: nc, remote: direct}, nil
	}
	if !pp.AllowedFrom(addrIP(direct)) {
		rc := newHeaderRefusingConn(nc)
		return &origin{nc: rc, remote: direct, refusing: rc}, nil
	}
	br := bufio.NewReaderSize(nc, 512)
	h, err := proxyproto.ReadHeaderTimeout(nc, br, pp.HeaderTimeout)
	switch {
	case errors.Is(err, proxyproto.ErrNoProxyProtocol) && br.Buffered() > 0:
		return nil, fmt.Errorf("%w: it started with other data", errNoProxyHeader)
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		return nil, fmt.Errorf("%w: none within proxy_protocol.header_timeout (%s)", errNoProxyHeader, pp.HeaderTimeout)
	case err != nil:
		return nil, fmt.Errorf("bad PROXY header: %w", err)
	}
	o := &origin{nc: nc, remote: direct}
	if br.Buffered() > 0 { // the client's first bytes came with the header
		o.nc = &bufferedConn{Conn: nc, br: br}
	}
	switch src := h.SourceAddr.(type) {
	case *net.TCPAddr:
		// HAProxy's health checks (check-send-proxy) name the check's own
		// connection: that is the balancer speaking for itself too.
		if !h.Command.IsLocal() && src.String() != direct.String() {
			o.remote, o.via = src, direct
			return o, nil
		}
	case nil:
	default:
		if !h.Command.IsLocal() && !h.TransportProtocol.IsUnspec() {
			return nil, fmt.Errorf("bad PROXY header: the client is %s %s, not TCP", src.Network(), src)
		}
	}
	// LOCAL (v2), UNKNOWN (v1), a family the proxy does not know, or the
	// direct connection itself: the load balancer speaking for itself, as
	// in a health check.
	o.local = true
	return o, nil
}

// addrIP is the IP address of a TCP address, or the zero Addr.
func addrIP(a net.Addr) netip.Addr {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(tcp.IP)
	return ip.Unmap()
}

// errProxyHeaderNotAllowed is a PROXY header from a source that
// proxy_protocol.allowed does not list.
var errProxyHeaderNotAllowed = errors.New("PROXY header from a source that proxy_protocol.allowed does not list")

// proxySignatures are the beginnings of a PROXY header: version 1 for TCP
// over IPv4 and IPv6 and its UNKNOWN, and version 2's binary signature.
// "PROXY" alone could be an IMAP tag, so version 1 is matched up to its
// protocol.
var proxySignatures = [][]byte{
	[]byte("PROXY TCP4 "), []byte("PROXY TCP6 "), []byte("PROXY UNKNOWN"), proxyproto.SIGV2,
}

// headerRefusingConn is a connection from a source not allowed to send a
// PROXY header, on a listener that takes them. Its first read fails with
// errProxyHeaderNotAllowed if the client's first bytes are a header;
// otherwise reads pass through. Only its goroutine may read from it.
type headerRefusingConn struct {
	net.Conn
	br      *bufio.Reader // until the first bytes are checked and read
	checked bool
	refused bool
}

func newHeaderRefusingConn(nc net.Conn) *headerRefusingConn {
	return &headerRefusingConn{Conn: nc, br: bufio.NewReaderSize(nc, 16)} // the longest signature fits
}

func (c *headerRefusingConn) Read(p []byte) (int, error) {
	if !c.checked {
		if err := c.check(); err != nil {
			return 0, err
		}
	}
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.Conn.Read(p)
}

// check peeks at the first bytes for as long as they could still begin
// a PROXY header, bounded by the read deadline the session has set.
func (c *headerRefusingConn) check() error {
	for n := 1; ; n++ {
		b, err := c.br.Peek(n)
		if err != nil {
			// EOF or a deadline: the caller's read sees it; a partial
			// signature is not a header.
			c.checked = true
			if len(b) > 0 {
				return nil
			}
			return err
		}
		possible := false
		for _, sig := range proxySignatures {
			if bytes.HasPrefix(sig, b) {
				if len(sig) == n {
					c.refused = true
					return errProxyHeaderNotAllowed
				}
				possible = true
			}
		}
		if !possible {
			c.checked = true
			return nil
		}
	}
}
