package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// SMTP submission (RFC 6409) is not a byte relay: go-smtp's server speaks
// to the sender, and each MAIL, RCPT and DATA (or BDAT, which the upstream
// gets as DATA) is forwarded on the upstream session as it arrives, with
// the upstream's reply passed back, so that a refusal reaches the sender
// as it happened. The message streams through; it is never held whole.

// ServeSMTP accepts SMTP submission connections on ln (port 587 style,
// with STARTTLS when a local certificate is configured) until Shutdown or
// Close, and then returns nil. AUTH without TLS is allowed only when ln is
// a loopback address or the configuration sets allow_plaintext. It shares
// the connection limits, the throttle and the token manager with the IMAP
// listeners.
func (s *Server) ServeSMTP(ln net.Listener) error { return s.serve(ln, false, smtpProtocol) }

// ServeSMTPS is ServeSMTP for implicit TLS (port 465 style, RFC 8314):
// every connection starts with a TLS handshake using the local
// certificate.
func (s *Server) ServeSMTPS(ln net.Listener) error { return s.serve(ln, true, smtpProtocol) }

const (
	// smtpIdleTimeout bounds the wait for a sender's command, or for more
	// of its message, after login: RFC 5321 section 4.5.3.2.7's 5 minutes.
	smtpIdleTimeout = 5 * time.Minute
	// smtpMaxRecipients bounds the recipients of one message (announced as
	// LIMITS RCPTMAX), which go-smtp keeps in memory; Microsoft 365 allows
	// 500 per message.
	smtpMaxRecipients = 1000
	// smtpQuitTimeout bounds the QUIT sent upstream when a session ends.
	smtpQuitTimeout = 5 * time.Second
)

// smtpServe runs one SMTP session with go-smtp's server, on c.nc. It
// returns why the session ended.
func (c *conn) smtpServe() string {
	srvCfg := &c.cfg.Server
	b := &smtpBackend{c: c}
	srv := smtp.NewServer(b)
	srv.Domain = "imap-oauth-proxy"
	srv.MaxMessageBytes = int64(srvCfg.SMTPMaxMessageBytes)
	srv.MaxLineLength = srvCfg.MaxLineBytes
	srv.MaxRecipients = smtpMaxRecipients
	srv.AllowInsecureAuth = c.plaintextOK
	srv.TLSConfig = c.localTLS()
	// go-smtp sets the read deadline before each command line; a
	// connection that never speaks only holds a slot.
	srv.ReadTimeout = min(srvCfg.PreauthTimeout, srvCfg.FirstCommandTimeout)
	srv.WriteTimeout = srvCfg.PreauthTimeout
	srv.ErrorLog = smtpErrorLog{c.log}
	b.srv = srv

	ln := &oneConnListener{conn: c.nc, accepted: make(chan struct{}), waiting: make(chan struct{}),
		closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	done := make(chan struct{})
	defer close(done)
	go c.smtpWatch(done, b)
	<-ln.waiting                       // Serve has registered the connection
	srv.Shutdown(context.Background()) // returns once the session is over
	<-served
	return b.reason()
}

// smtpWatch ends the session when the server closes (go-smtp moves the
// read deadline before every command, so abort's deadline alone would not
// hold) and at preauth_max_time without a login.
func (c *conn) smtpWatch(done <-chan struct{}, b *smtpBackend) {
	limit := time.NewTimer(time.Until(c.start.Add(c.cfg.Server.PreauthMaxTime)))
	defer limit.Stop()
	for {
		select {
		case <-done:
			return
		case <-c.srv.ctx.Done():
			b.setReason("server closed")
			c.raw.Close()
			c.mu.Lock()
			up := c.upstream
			c.mu.Unlock()
			if up != nil {
				up.Close()
			}
			return
		case <-limit.C:
			if !b.loggedIn.Load() {
				b.setReason("pre-auth time limit")
				c.raw.Close()
				return
			}
		}
	}
}

// oneConnListener hands go-smtp's Serve one connection, then blocks until
// closed. Serve calls Accept again only after it has counted the
// connection in, so that Shutdown, called after waiting is closed, waits
// for it.
type oneConnListener struct {
	conn      net.Conn
	accepted  chan struct{} // closed by the first Accept
	waiting   chan struct{} // closed by the second
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case <-l.accepted:
	default:
		close(l.accepted)
		return l.conn, nil
	}
	select {
	case <-l.waiting:
	default:
		close(l.waiting)
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// smtpErrorLog passes go-smtp's internal errors (a connection reset, a
// failed handshake) to the session's log at debug level.
type smtpErrorLog struct{ log *sessionLog }

func (l smtpErrorLog) Printf(format string, v ...any) {
	l.log.Debug("smtp server", "detail", fmt.Sprintf(format, v...))
}

func (l smtpErrorLog) Println(v ...any) {
	l.log.Debug("smtp server", "detail", strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

// smtpBackend creates the sessions of one connection: one per EHLO
// before STARTTLS and one after (go-smtp starts over after STARTTLS).
type smtpBackend struct {
	c        *conn
	srv      *smtp.Server
	loggedIn atomic.Bool

	mu       sync.Mutex
	why      string
	messages int
}

func (b *smtpBackend) NewSession(sc *smtp.Conn) (smtp.Session, error) {
	if !b.loggedIn.Load() {
		b.srv.ReadTimeout = b.c.cfg.Server.PreauthTimeout // past the first command
	}
	return &smtpSession{b: b, c: b.c}, nil
}

func (b *smtpBackend) setReason(why string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.why == "" {
		b.why = why
	}
}

// reason says why the session ended.
func (b *smtpBackend) reason() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.why != "" {
		return b.why
	}
	if b.loggedIn.Load() {
		return fmt.Sprintf("logout after %d messages", b.messages)
	}
	return "client closed"
}

// smtpSession is one go-smtp session: before login it only
// authenticates; after, it forwards each command to up.
//
// Its methods run on go-smtp's connection goroutine, except Data for BDAT
// (a goroutine of its own, which RSET or a closing connection may
// interrupt): mu serializes them.
type smtpSession struct {
	b *smtpBackend
	c *conn

	mu  sync.Mutex
	up  *UpstreamConn // nil before login
	log *sessionLog
	// inTx is true between an accepted MAIL and the end of its message.
	inTx bool
	// broken is set once the upstream session is unusable (cut in the
	// middle of a message, or gone); every later command gets 421.
	broken bool
}

var (
	errSMTPAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "Authentication required"}
	errSMTPUpstreamLost = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "Connection to the mail provider lost; message not sent; reconnect and retry"}
)

// AuthMechanisms lists what AUTH accepts: PLAIN (RFC 4616) and LOGIN
// (draft-murchison-sasl-login), what scanners and PHP mailers send.
func (s *smtpSession) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }

// Auth starts AUTH; go-smtp has refused it already without TLS on a
// listener that needs TLS.
func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	s.c.trace("C", "AUTH "+mech)
	if s.b.loggedIn.Load() {
		return nil, &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Already authenticated"}
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, login, password string) error {
			if identity != "" && identity != login {
				return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
					Message: "Authorization identity must be empty or equal the login"}
			}
			return s.login(login, password)
		}), nil
	case sasl.Login:
		return &loginServer{authenticate: s.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks the credentials and logs in upstream; the error is the
// SMTP reply for a failure.
func (s *smtpSession) login(login, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.c
	up, log, err := c.openSession(login, password)
	if err != nil {
		return smtpLoginReply(err)
	}
	c.mu.Lock()
	c.upstream = up.nc
	aborted := c.aborted
	c.mu.Unlock()
	if aborted { // Close ran during the login
		up.Close()
		return errSMTPUpstreamLost
	}
	c.relaying.Store(true) // a drain no longer cuts the session mid-message
	s.up, s.log = up, log
	s.b.loggedIn.Store(true)
	s.b.srv.ReadTimeout = smtpIdleTimeout
	return nil
}

// smtpLoginReply is the RFC 4954 reply to a failed login: 535 5.7.8 for
// refused credentials or authorization, 454 4.7.0 for what a retry may
// fix.
func smtpLoginReply(err error) error {
	msg := auth.MessageOf(err, "login failed")
	if auth.KindOf(err) == auth.Unavailable {
		return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: msg}
	}
	return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: msg}
}

// ready returns the reply for a command that cannot be forwarded now, or
// nil when it can.
func (s *smtpSession) ready() error {
	switch {
	case s.broken:
		return errSMTPUpstreamLost
	case s.up == nil:
		return errSMTPAuthRequired
	}
	return nil
}

// Mail forwards MAIL FROM, with the sender's parameters (SIZE, BODY).
func (s *smtpSession) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(); err != nil {
		return err
	}
	s.c.trace("C", "MAIL FROM:<"+from+">")
	err := s.forwarded(s.up.smtp.Mail(from, opts))
	s.inTx = err == nil
	return err
}

// Rcpt forwards RCPT TO.
func (s *smtpSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(); err != nil {
		return err
	}
	s.c.trace("C", "RCPT TO:<"+to+">")
	return s.forwarded(s.up.smtp.Rcpt(to, opts))
}

// Data forwards the message as it arrives (DATA, or BDAT chunks) in the
// upstream's DATA, and returns the upstream's reply to its end.
func (s *smtpSession) Data(r io.Reader) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(); err != nil {
		return err
	}
	s.inTx = false
	w, err := s.up.smtp.Data()
	if err != nil {
		return s.forwarded(err)
	}
	n, err := io.Copy(w, &idleReader{r: r, c: s.c})
	if err != nil {
		// The upstream has part of the message: only closing the connection
		// keeps it from being sent.
		s.dropUpstream()
		s.log.Warn("message not sent", "bytes", n, "err", err)
		var se *smtp.SMTPError
		if errors.As(err, &se) { // go-smtp's 552 for a message over the limit
			return se
		}
		return errSMTPUpstreamLost
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		s.log.Info("message refused", "bytes", n, "reply", err.Error())
		return s.forwarded(err)
	}
	s.b.mu.Lock()
	s.b.messages++
	s.b.mu.Unlock()
	s.log.Info("message sent", "bytes", n, "reply", auth.OneLine(resp.StatusText, 200))
	return smtpAccepted(resp.StatusText)
}

// smtpAccepted passes the upstream's 250 to the end of a message (often
// with its queue id) back to the sender; go-smtp writes an SMTPError's
// code and text whatever the code.
func smtpAccepted(text string) error {
	code := smtp.EnhancedCode{2, 0, 0}
	if first, rest, ok := strings.Cut(text, " "); ok {
		if ec, ok := parseEnhancedCode(first); ok && ec[0] == 2 {
			code, text = ec, rest
		}
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: code, Message: text}
}

// parseEnhancedCode parses an RFC 3463 status code such as "2.0.0".
func parseEnhancedCode(s string) (smtp.EnhancedCode, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, false
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return smtp.EnhancedCode{}, false
		}
		ec[i] = n
	}
	return ec, true
}

// forwarded returns the reply to pass back for err, the result of
// forwarding a command: the upstream's own reply when it answered,
// errSMTPUpstreamLost when the connection failed.
func (s *smtpSession) forwarded(err error) error {
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		s.c.trace("U<", fmt.Sprintf("%d %s", se.Code, auth.OneLine(se.Message, 200)))
		if se.Code == 421 { // the upstream closes after 421 (RFC 5321 section 3.8)
			s.dropUpstream()
		}
		return se
	}
	s.log.Warn("upstream connection lost", "err", err)
	s.dropUpstream()
	return errSMTPUpstreamLost
}

// dropUpstream closes the upstream session after a failure. The sender's
// session stays, so that it reads the reply to the current command and
// the rest of its message is drained; its later transactions get 421,
// after which senders close (RFC 5321 section 3.8).
func (s *smtpSession) dropUpstream() {
	if s.up == nil || s.broken {
		return
	}
	s.broken = true
	s.up.Close()
	s.b.setReason("upstream session lost")
}

// Reset forwards RSET when a transaction is open upstream.
func (s *smtpSession) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inTx && s.ready() == nil {
		s.forwarded(s.up.smtp.Reset())
	}
	s.inTx = false
}

// Logout ends the upstream session (QUIT, then close) and gives back its
// max_sessions slot.
func (s *smtpSession) Logout() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up == nil {
		return nil
	}
	if !s.broken {
		s.up.smtp.CommandTimeout = smtpQuitTimeout
		s.up.smtp.Quit()
	}
	return s.up.Close()
}

// idleReader reads a message from the sender, moving the read deadline
// before each read: a message may take longer than one command, as long
// as it keeps coming.
type idleReader struct {
	r io.Reader
	c *conn
}

func (r *idleReader) Read(p []byte) (int, error) {
	if r.c.isAborted() {
		return 0, net.ErrClosed
	}
	r.c.raw.SetReadDeadline(time.Now().Add(smtpIdleTimeout))
	return r.r.Read(p)
}

// loginServer is the server side of AUTH LOGIN
// (draft-murchison-sasl-login-00): "Username:", then "Password:", each
// answered with a base64 string; the first may come as the initial
// response. go-sasl has only its client.
type loginServer struct {
	authenticate func(login, password string) error
	login        string
	step         int
}

var errLoginEmpty = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Empty login"}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		s.step++
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		if len(response) == 0 {
			return nil, false, errLoginEmpty
		}
		s.login, s.step = string(response), 2
		return []byte("Password:"), false, nil
	case 2:
		s.step++
		return nil, true, s.authenticate(s.login, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
