// Package proxy is the IMAP side of imap-oauth-proxy: it accepts collector
// connections, speaks the pre-auth part of IMAP itself, logs in to the
// account's upstream with an OAuth token, and then relays bytes unchanged.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/tlsconfig"
)

// Options configure a Server. Config and Auth are required.
type Options struct {
	// Config is the initial configuration; see Server.SetConfig.
	Config *config.Config
	// Auth turns logins into access tokens.
	Auth *auth.Manager
	// Logger receives one line per session event. If nil, slog.Default().
	Logger *slog.Logger
	// Version is announced in the ID response. If empty, "dev".
	Version string
	// FailureDelay is the login throttle's first penalty: after a failed
	// login, a peer waits this long before its next password check, twice
	// as long after each further failure, up to 64 times as long (see
	// throttle.go). If zero, 250 ms. If negative, peers are not made to
	// wait (the per-login failure budget still applies).
	FailureDelay time.Duration
	// PeerUID finds the uid of a loopback peer, for per-user limits and
	// throttling. If nil, the kernel is asked (sock_diag netlink, then
	// /proc/net/tcp); where it cannot tell, every loopback peer counts as
	// one.
	PeerUID PeerUIDFunc
}

// Server is an IMAP proxy server. It is safe for concurrent use.
type Server struct {
	auth    *auth.Manager
	logger  *slog.Logger
	version string

	ctx    context.Context // cancelled by Close: ends pending logins
	cancel context.CancelFunc

	cfg      atomic.Pointer[runtimeConfig]
	nextID   atomic.Uint64
	metrics  metrics
	accounts *health.Metrics // per-account gauges
	throttle *throttle
	sessions sessionSlots // upstream sessions per mailbox, for max_sessions
	peerUID  PeerUIDFunc
	// peers is the kernel lookup behind peerUID, nil when Options.PeerUID
	// replaces it; it holds netlink sockets until the server stops.
	peers    *peerLookup
	rejected rateLimitedLog // over-limit connections
	// uidUnknown logs failed peer uid lookups.
	uidUnknown rateLimitedLog
	// acceptFailed logs accept errors the server backs off from.
	acceptFailed rateLimitedLog
	// plainRelay makes sessions that start relaying from now on use
	// plainCopy instead of proxyCopy (tests and benchmarks only, to
	// compare the two in one run).
	plainRelay atomic.Bool

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	// pending are the connections accepted but not yet sessions: their
	// PROXY header is being read, or their peer identified.
	pending map[net.Conn]struct{}
	perPeer map[string]int // open connections per peer key
	closed  bool
	wg      sync.WaitGroup // one per connection
}

// runtimeConfig is a validated config with what is derived from it once.
type runtimeConfig struct {
	*config.Config
	upstreamTLS map[string]*tls.Config // by provider name
	localTLS    *tls.Config            // nil without tls_cert
	pop3        protocolTLS
	smtp        protocolTLS
}

// New returns a Server for opts.
func New(opts *Options) (*Server, error) {
	if opts == nil || opts.Config == nil || opts.Auth == nil {
		return nil, errors.New("proxy: Options.Config and Options.Auth are required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	delay := opts.FailureDelay
	if delay == 0 {
		delay = 250 * time.Millisecond
	}
	peerUID := opts.PeerUID
	var peers *peerLookup
	if peerUID == nil {
		peers = newPeerLookup()
		peerUID = peers.uid
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		throttle:  newThrottle(delay, time.Now),
		peerUID:   peerUID,
		peers:     peers,
		perPeer:   make(map[string]int),
		auth:      opts.Auth,
		logger:    logger,
		version:   version,
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		pending:   make(map[net.Conn]struct{}),
	}
	s.accounts = health.NewMetrics(opts.Auth.Health(), opts.Auth, s.Config)
	if err := s.SetConfig(opts.Config); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// SetConfig makes cfg the configuration of sessions that start from now on;
// running sessions keep the one they started with. It (re)reads the local
// TLS certificate and the providers' CA files. On error the previous
// configuration stays in force.
func (s *Server) SetConfig(cfg *config.Config) error {
	rc := &runtimeConfig{Config: cfg, upstreamTLS: make(map[string]*tls.Config)}
	if cfg.Server.TLSCert != "" {
		tc, err := tlsconfig.Local(cfg.Server.TLSCert, cfg.Server.TLSKey)
		if err != nil {
			return fmt.Errorf("server.tls_cert: %w", err)
		}
		rc.localTLS = tc
	}
	for name, p := range cfg.Providers {
		tc, err := tlsconfig.Upstream(p.IMAPAddress, p.CAFile)
		if err != nil {
			return fmt.Errorf("providers.%s: %w", name, err)
		}
		rc.upstreamTLS[name] = tc
	}
	pop3, err := pop3TLS(cfg, rc.localTLS)
	if err != nil {
		return err
	}
	rc.pop3 = pop3
	// No ALPN id towards the upstream: STARTTLS servers do not expect one.
	if rc.smtp, err = deriveTLS(cfg, rc.localTLS, smtpProtocol); err != nil {
		return err
	}
	s.cfg.Store(rc)
	return nil
}

// Config returns the configuration new sessions use.
func (s *Server) Config() *config.Config { return s.cfg.Load().Config }

// Accept-error backoff bounds, as in net/http and go-imap's server.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// Serve accepts plain IMAP connections on ln (with STARTTLS when a local
// certificate is configured) until Shutdown or Close, and then returns nil.
// LOGIN without TLS is allowed only when ln is a loopback address or the
// configuration sets allow_plaintext.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, false, imapProtocol) }

// ServeTLS is Serve for implicit TLS: every connection starts with a TLS
// handshake using the configured local certificate.
func (s *Server) ServeTLS(ln net.Listener) error { return s.serve(ln, true, imapProtocol) }

func (s *Server) serve(ln net.Listener, implicitTLS bool, proto *protocol) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("proxy: server closed")
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil && isTransientAcceptError(err) {
			// Out of descriptors or buffers, or a connection reset before
			// it was accepted: none of it is the listener's fault, and
			// ending here would cut every relayed session.
			backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
			s.metrics.acceptError(err)
			s.acceptFailed.log(s.logger, "accept failed; retrying", "err", err, "backoff", backoff)
			if !s.sleep(backoff) {
				return nil
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("accepting connection: %w", err)
		}
		backoff = 0
		if s.admit(nc, proto) {
			go s.start(nc, implicitTLS, isLoopback(ln.Addr()), proto)
		}
	}
}

// admit counts an accepted connection in as pending, before its PROXY
// header is read and its peer known; it returns false (and closes nc)
// once the server is closing or max_connections is reached. It does
// nothing that waits: it runs in the accept loop.
func (s *Server) admit(nc net.Conn, proto *protocol) bool {
	cfg := s.cfg.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return false
	}
	if len(s.conns)+len(s.pending) >= cfg.Server.MaxConnections {
		s.metrics.rejectedTotal.Add(1)
		s.rejected.log(s.logger, "connection refused: limit reached", "remote", nc.RemoteAddr().String(),
			"limit", "server.max_connections")
		go refuse(nc, proto.tooManyConnections) // never block the accept loop on a client that does not read
		return false
	}
	s.pending[nc] = struct{}{}
	s.wg.Add(1)
	return true
}

// start runs on a connection's own goroutine: it reads the PROXY header
// where the listener takes one, identifies the peer (a sock_diag query
// for a loopback one), and serves the session unless a limit refuses it.
func (s *Server) start(nc net.Conn, implicitTLS, loopbackListener bool, proto *protocol) {
	cfg := s.cfg.Load()
	o, err := readOrigin(nc, &cfg.ProxyProtocol, proto.listenerKey(implicitTLS))
	if err != nil && s.isClosed() {
		nc.Close() // Shutdown or Close cut the wait for the header
		s.dropPending(nc)
		return
	}
	if err != nil {
		s.metrics.proxyRefused[proxyRefusedBadHeader].Add(1)
		s.logger.Warn("connection refused", "protocol", string(proto.name), "remote", nc.RemoteAddr().String(),
			"listener", "server."+proto.listenerKey(implicitTLS), "reason", err.Error())
		nc.Close()
		s.dropPending(nc)
		return
	}
	c := s.newConn(nc, o, implicitTLS, loopbackListener, proto, cfg)
	if c == nil {
		return
	}
	c.serve()
}

// isClosed reports whether Shutdown or Close was called.
func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// dropPending forgets a pending connection that will not be served.
func (s *Server) dropPending(nc net.Conn) {
	s.mu.Lock()
	delete(s.pending, nc)
	s.mu.Unlock()
	s.wg.Done()
}

// isTransientAcceptError reports whether an accept error may pass by
// itself: a timeout, running out of file descriptors (EMFILE, ENFILE) or
// kernel buffers (ENOBUFS, ENOMEM), or a connection aborted or reset while
// it waited in the queue.
func isTransientAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, errno := range transientAcceptErrnos {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

var transientAcceptErrnos = [...]syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS,
	syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EPROTO, syscall.EPERM}

// sleep waits d, or until the server is closed; it reports whether the
// server is still open.
func (s *Server) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// isLoopback reports whether addr is a loopback IP address.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// newConn turns the pending connection nc, from o, into a session; it
// returns nil (and closes nc) once the server is closing or
// max_connections_per_peer is reached. A connection with a PROXY header
// counts by an address with no uid lookup: the client's, or for the load
// balancer's own connection its address (its health checks close at
// once, before a lookup could find the socket).
func (s *Server) newConn(nc net.Conn, o *origin, implicitTLS, loopbackListener bool, proto *protocol, cfg *runtimeConfig) *conn {
	var who peer
	if o.proxied() || o.local {
		who = addressPeer(o.remote)
	} else {
		var err error
		who, err = identifyPeer(nc, s.peerUID)
		if err != nil {
			s.uidUnknown.log(s.logger, "peer uid unknown; counting it with every loopback peer",
				"remote", o.remote.String(), "err", err)
		}
	}
	// Plain text is for loopback: with a load balancer, both hops must be.
	loopback := loopbackListener && (!o.proxied() || isLoopback(o.remote))
	c := &conn{
		srv:         s,
		proto:       proto,
		cfg:         cfg,
		raw:         o.nc,
		peer:        who,
		refusing:    o.refusing,
		balancerOwn: o.local,
		id:          strconv.FormatUint(s.nextID.Add(1), 36),
		start:       time.Now(),
		implicit:    implicitTLS,
		plaintextOK: loopback || cfg.Server.AllowPlaintext,
	}
	c.log = newSessionLog(s.logger, sessionAttrs{id: c.id, protocol: proto.name, remote: o.remote,
		via: o.via, proxyHeaderLocal: o.local, uid: who.uid})
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, nc)
	if s.closed {
		nc.Close()
		s.wg.Done()
		return nil
	}
	if s.perPeer[who.key] >= cfg.Server.MaxConnectionsPerPeer {
		s.metrics.rejectedTotal.Add(1)
		s.rejected.log(s.logger, "connection refused: limit reached", "remote", o.remote.String(),
			"peer", who.key, "limit", "server.max_connections_per_peer")
		s.wg.Done()
		go refuse(nc, proto.tooManyConnections) // not under s.mu
		return nil
	}
	s.conns[c] = struct{}{}
	s.perPeer[who.key]++
	return c
}

// refuseWriteTimeout bounds the BYE written to a refused connection.
const refuseWriteTimeout = time.Second

// refuse tells a connection over a limit why it is closed, with line.
func refuse(nc net.Conn, line string) {
	nc.SetWriteDeadline(time.Now().Add(refuseWriteTimeout))
	io.WriteString(nc, line+"\r\n")
	nc.Close()
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if s.perPeer[c.peer.key]--; s.perPeer[c.peer.key] <= 0 {
		delete(s.perPeer, c.peer.key)
	}
	s.mu.Unlock()
	s.wg.Done()
}

// rateLimitedLog logs an event at most once per second, counting the
// occurrences it left out, so a flood cannot flood the log. It is safe for
// concurrent use.
type rateLimitedLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLimitedLog) log(logger *slog.Logger, msg string, attrs ...any) {
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.last) < time.Second {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.last, r.suppressed = now, 0
	r.mu.Unlock()
	logger.Warn(msg, append(attrs, "suppressed_since_last", suppressed)...)
}

// abortPending ends the wait for the PROXY headers of pending
// connections; s.mu is held. Their goroutines see the server closed.
func (s *Server) abortPending() {
	for nc := range s.pending {
		nc.SetDeadline(time.Now())
	}
}

// ActiveSessions returns the number of open collector connections.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Shutdown stops accepting, says BYE to every session that has not logged
// in yet, and waits for relayed sessions to end until ctx is done; then it
// cuts the rest and waits for their goroutines. It returns ctx.Err() if
// sessions had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.drain()
	}
	s.abortPending()
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		s.closePeerLookup()
		return nil
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// Close stops the listeners, ends every session at once and waits for
// their goroutines to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.abort()
	}
	s.abortPending()
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.closePeerLookup()
	return nil
}

// closePeerLookup closes the peer lookup's sockets, once no connection is
// being identified any more.
func (s *Server) closePeerLookup() {
	if s.peers != nil {
		s.peers.close()
	}
}
