// Package proxytest provides an in-process IMAP upstream that accepts only
// OAuth (XOAUTH2), for the proxy's tests and the demo command. It is built
// on go-imap v2's imapserver and imapmemserver.
package proxytest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// UpstreamOptions configure an Upstream.
type UpstreamOptions struct {
	// Validate decides whether token is a valid access token for user; nil
	// refuses every token.
	Validate func(user, token string) error
	// GmailErrors makes a refused token get a "+" challenge carrying a
	// base64 JSON status before the NO, as Gmail does; otherwise the server
	// answers NO at once, as Microsoft 365 does.
	GmailErrors bool
	// Personality makes the server greet, announce capabilities, refuse
	// tokens and limit sessions as Microsoft 365 or Gmail do; Plain (the
	// zero value) keeps go-imap's own behaviour.
	Personality Personality
	// MaxSessions bounds a mailbox's simultaneous sessions under a
	// personality; zero means the personality's own limit (Gmail 15,
	// Microsoft 20), negative means none.
	MaxSessions int
	// Logger receives go-imap's error messages; nil discards them.
	Logger *log.Logger
	// StartTLS serves plain IMAP that offers STARTTLS (a provider's
	// imap_tls = "starttls") instead of implicit TLS, and refuses to
	// authenticate before it. Only without a Personality.
	StartTLS bool
	// Hosts are the names the server's certificate is for; nil: localhost
	// and 127.0.0.1.
	Hosts []string
	// MaxTLSVersion caps the TLS versions the server accepts (as
	// tls.VersionTLS11, for a server too old for the proxy); zero: TLS 1.2
	// and up.
	MaxTLSVersion uint16
	// Fault makes every connection misbehave at one phase. Only with a
	// Personality.
	Fault *Fault
}

// Upstream is a TLS IMAP server on 127.0.0.1 that offers AUTH=XOAUTH2 and
// refuses LOGIN and every other mechanism. It is safe for concurrent use.
type Upstream struct {
	// Addr is the host:port to dial ("127.0.0.1:N").
	Addr string
	// CAPEM is the PEM certificate that signs the server's certificate.
	CAPEM []byte

	opts     UpstreamOptions
	ln       net.Listener
	server   *imapserver.Server
	mu       sync.Mutex
	users    map[string]*imapmemserver.User
	conns    atomic.Int64
	logins   atomic.Int64
	refusals atomic.Int64
	limited  atomic.Int64
	done     chan struct{}

	// The personalities' state, guarded by mu.
	state   providerState
	preauth map[net.Conn]string // go-imap's side of a relayed session: its mailbox
	fronts  *connServer         // the collectors' connections to a personality
	pipes   *pipeListener
}

// NewUpstream starts an Upstream on a free loopback port.
func NewUpstream(opts UpstreamOptions) (*Upstream, error) {
	hosts := opts.Hosts
	if hosts == nil {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	cert, caPEM, err := NewCertificate(hosts...)
	if err != nil {
		return nil, err
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	u := &Upstream{
		Addr:  raw.Addr().String(),
		CAPEM: caPEM,
		opts:  opts,
		users: make(map[string]*imapmemserver.User),
		done:  make(chan struct{}),
		state: providerState{sessions: make(map[string]map[*frontConn]struct{}),
			notConnected: make(map[string]bool)},
		preauth: make(map[net.Conn]string),
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		MaxVersion: opts.MaxTLSVersion}
	if opts.MaxTLSVersion != 0 && opts.MaxTLSVersion < tls.VersionTLS12 {
		tlsConfig.MinVersion = tls.VersionTLS10
	}
	var ln net.Listener = raw
	var startTLS *tls.Config // go-imap offers STARTTLS when it has a config
	switch {
	case opts.StartTLS && opts.Personality != Plain:
		raw.Close()
		return nil, errors.New("proxytest: StartTLS needs the Plain personality")
	case opts.Fault != nil && opts.Personality == Plain:
		raw.Close()
		return nil, errors.New("proxytest: a Fault needs a Personality")
	case opts.StartTLS:
		startTLS = tlsConfig
	default:
		ln = tls.NewListener(raw, tlsConfig)
	}
	u.ln = &countingListener{Listener: ln, count: &u.conns}
	logger := opts.Logger
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	u.server = imapserver.New(&imapserver.Options{
		NewSession: func(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			u.mu.Lock()
			mailbox, ok := u.preauth[c.NetConn()]
			delete(u.preauth, c.NetConn())
			u.mu.Unlock()
			if ok {
				// Logged in by a personality: start authenticated.
				return &session{upstream: u, UserSession: imapmemserver.NewUserSession(u.user(mailbox))},
					&imapserver.GreetingData{PreAuth: true}, nil
			}
			return &session{upstream: u}, nil, nil
		},
		Caps: imap.CapSet{
			imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {},
			imap.CapUIDPlus: {}, imap.CapMove: {}, imap.CapNamespace: {},
		},
		TLSConfig: startTLS,
		Logger:    logger,
	})
	if opts.Personality == Plain {
		go func() {
			defer close(u.done)
			u.server.Serve(u.ln)
		}()
		return u, nil
	}
	u.pipes = newPipeListener()
	go func() {
		defer close(u.done)
		u.server.Serve(u.pipes)
	}()
	u.fronts = serveConns(u.ln, func(nc net.Conn) {
		tc := nc.(*tls.Conn)
		if u.faultAt(BeforeTLS, tc.NetConn(), nil, "") || tc.Handshake() != nil {
			return
		}
		u.serveFront(nc)
	})
	return u, nil
}

// AddUser creates the mailbox user (with an INBOX) and returns it.
func (u *Upstream) AddUser(name string) *imapmemserver.User {
	user := imapmemserver.NewUser(name, "")
	if err := user.Create("INBOX", nil); err != nil {
		panic(err) // a fresh user has no mailboxes
	}
	u.mu.Lock()
	u.users[name] = user
	u.mu.Unlock()
	return user
}

func (u *Upstream) user(name string) *imapmemserver.User {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.users[name]
}

// Connections returns how many TCP connections the upstream has accepted.
func (u *Upstream) Connections() int64 { return u.conns.Load() }

// Logins returns how many XOAUTH2 authentications succeeded.
func (u *Upstream) Logins() int64 { return u.logins.Load() }

// Refusals returns how many XOAUTH2 authentications were refused.
func (u *Upstream) Refusals() int64 { return u.refusals.Load() }

// Limited returns how many valid logins a personality refused at its
// session limit.
func (u *Upstream) Limited() int64 { return u.limited.Load() }

// WriteCAFile writes CAPEM to path with mode 0600.
func (u *Upstream) WriteCAFile(path string) error {
	if err := os.WriteFile(path, u.CAPEM, 0o600); err != nil {
		return fmt.Errorf("writing CA file: %w", err)
	}
	return nil
}

// Close stops the server and waits for it.
func (u *Upstream) Close() error {
	if u.pipes == nil {
		err := u.server.Close()
		<-u.done
		return err
	}
	err := u.fronts.close()
	// Closing the pipe listener ends go-imap's Serve (Server.Close could
	// race with a Serve that has not started yet); its sessions end as
	// their fronts close their pipes.
	u.pipes.Close()
	<-u.done
	return err
}

type countingListener struct {
	net.Listener
	count *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.count.Add(1)
	}
	return c, err
}

// session is an imapmemserver session whose only way in is XOAUTH2.
type session struct {
	*imapmemserver.UserSession // nil until authenticated
	upstream                   *Upstream
}

var _ imapserver.SessionSASL = (*session)(nil)

func (s *session) Login(username, password string) error {
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed,
		Text: "LOGIN is disabled; use AUTHENTICATE XOAUTH2"}
}

func (s *session) Close() error {
	if s.UserSession == nil {
		return nil
	}
	return s.UserSession.Close()
}

func (s *session) AuthenticateMechanisms() []string { return []string{auth.XOAUTH2} }

func (s *session) Authenticate(mech string) (sasl.Server, error) {
	if mech != auth.XOAUTH2 {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Text: "Unsupported mechanism"}
	}
	return &xoauth2Server{session: s}, nil
}

// xoauth2Server is the server side of XOAUTH2.
type xoauth2Server struct {
	session *session
	failed  bool
}

var errAuthFailed = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed,
	Text: "AUTHENTICATE failed."}

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if x.failed {
		// The client answered the error challenge.
		return nil, true, errAuthFailed
	}
	if response == nil {
		return []byte{}, false, nil // ask for the initial response
	}
	u := x.session.upstream
	name, token, err := auth.ParseXOAUTH2(response)
	if err == nil {
		if u.opts.Validate == nil {
			err = errors.New("no validator")
		} else {
			err = u.opts.Validate(name, token)
		}
	}
	var user *imapmemserver.User
	if err == nil {
		if user = u.user(name); user == nil {
			err = errors.New("no such mailbox")
		}
	}
	if err != nil {
		u.refusals.Add(1)
		if u.opts.GmailErrors {
			x.failed = true
			return []byte(`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`), false, nil
		}
		return nil, true, errAuthFailed
	}
	u.logins.Add(1)
	x.session.UserSession = imapmemserver.NewUserSession(user)
	return nil, true, nil
}
