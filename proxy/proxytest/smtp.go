package proxytest

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// SMTPPersonality is whose wire behaviour an SMTPUpstream copies.
type SMTPPersonality int

const (
	// SMTPMicrosoft behaves as smtp.office365.com:587 does:
	//   - STARTTLS, then AUTH XOAUTH2 with the initial response, answered
	//     "235 2.7.0 Authentication successful" (Microsoft's "SMTP protocol
	//     exchange", learn.microsoft.com/exchange/client-developer/legacy-
	//     protocols/how-to-authenticate-an-imap-pop-smtp-application-by-
	//     using-oauth);
	//   - a refused token gets "535 5.7.3 Authentication unsuccessful"
	//     (jstedfast/MailKit#700);
	//   - with SMTP AUTH disabled for the mailbox or tenant, every AUTH gets
	//     "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication
	//     is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled
	//     for more information." (simonrob/email-oauth2-proxy#193,
	//     nodemailer/nodemailer#1484);
	//   - an envelope sender other than the mailbox is refused at the end of
	//     the message with "554 5.2.252 SendAsDenied" (assumed text; the code
	//     is Exchange Online's NDR code for it);
	//   - an unknown recipient gets "550 5.1.10 RESOLVER.ADR.
	//     RecipientNotFound" at RCPT (assumed; the code is Exchange's).
	SMTPMicrosoft SMTPPersonality = iota
	// SMTPGmail behaves as smtp.gmail.com:587 does:
	//   - EHLO with "SIZE 35882577" and, after STARTTLS, "AUTH LOGIN PLAIN
	//     XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH" (a published
	//     transcript, pastebin.com/uXqSaYa4);
	//   - a refused token gets a 334 challenge carrying base64 JSON
	//     {"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"},
	//     which the client answers with an empty line, then "535-5.7.8
	//     Username and Password not accepted. Learn more at" and "535 5.7.8
	//     https://support.google.com/mail/?p=BadCredentials"
	//     (developers.google.com/gmail/imap/xoauth2-protocol, "Error
	//     response"; curl's test 949 has the same exchange);
	//   - an unknown recipient is accepted at RCPT (Gmail bounces later).
	SMTPGmail
)

// SMTPUpstreamOptions configure an SMTPUpstream.
type SMTPUpstreamOptions struct {
	// Validate decides whether token is a valid access token for user; nil
	// refuses every token.
	Validate func(user, token string) error
	// Personality chooses Microsoft's or Gmail's wire behaviour.
	Personality SMTPPersonality
	// AuthDisabled makes every AUTH fail as Microsoft's does when SMTP AUTH
	// is disabled for the mailbox (535 5.7.139).
	AuthDisabled bool
	// MaxMessageBytes is announced in SIZE and enforced; zero means
	// 35882577, Gmail's.
	MaxMessageBytes int64
	// DiscardData keeps only the envelope of accepted messages (Data is
	// nil), for benchmarks.
	DiscardData bool
}

// SMTPMessage is one message an SMTPUpstream accepted.
type SMTPMessage struct {
	// User is the authenticated mailbox.
	User string
	From string
	To   []string
	Data []byte
}

// SMTPUpstream is a submission server on 127.0.0.1 that offers STARTTLS
// and accepts only AUTH XOAUTH2 over TLS, and keeps the messages it
// accepts. It is safe for concurrent use.
type SMTPUpstream struct {
	// Addr is the host:port to dial ("127.0.0.1:N").
	Addr string
	// CAPEM is the PEM certificate that signs the server's certificate.
	CAPEM []byte

	opts     SMTPUpstreamOptions
	srv      *smtp.Server
	done     chan error
	mu       sync.Mutex
	messages []SMTPMessage
	// dataStarted, if not nil, gets the first bytes of every message as
	// soon as they arrive; see DataStarted.
	dataStarted chan []byte
	logins      atomic.Int64
	refusals    atomic.Int64
}

// NewSMTPUpstream starts an SMTPUpstream on a free loopback port.
func NewSMTPUpstream(opts SMTPUpstreamOptions) (*SMTPUpstream, error) {
	cert, caPEM, err := NewCertificate("localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = 35882577
	}
	u := &SMTPUpstream{Addr: ln.Addr().String(), CAPEM: caPEM, opts: opts, done: make(chan error, 1)}
	u.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &smtpUpstreamSession{u: u}, nil
	}))
	u.srv.Domain = "smtp.upstream.test"
	u.srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	u.srv.MaxMessageBytes = opts.MaxMessageBytes
	u.srv.ErrorLog = log.New(io.Discard, "", 0)
	go func() { u.done <- u.srv.Serve(ln) }()
	return u, nil
}

// Close stops the server and closes every connection.
func (u *SMTPUpstream) Close() error {
	u.srv.Close()
	return <-u.done
}

// Messages returns the messages accepted so far.
func (u *SMTPUpstream) Messages() []SMTPMessage {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]SMTPMessage(nil), u.messages...)
}

// DataStarted makes the server send the first bytes of each message to
// the returned channel as soon as it has them, before the message ends: a
// test that holds back the rest of a message sees that it streams. Call it
// before the message is sent.
func (u *SMTPUpstream) DataStarted() <-chan []byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.dataStarted = make(chan []byte, 1)
	return u.dataStarted
}

// Logins returns how many AUTH commands succeeded.
func (u *SMTPUpstream) Logins() int64 { return u.logins.Load() }

// Refusals returns how many AUTH commands were refused.
func (u *SMTPUpstream) Refusals() int64 { return u.refusals.Load() }

// smtpUpstreamSession is one SMTPUpstream session.
type smtpUpstreamSession struct {
	u    *SMTPUpstream
	user string // "" before AUTH
	from string
	to   []string
}

func (s *smtpUpstreamSession) AuthMechanisms() []string {
	if s.u.opts.Personality == SMTPGmail {
		return []string{"LOGIN", "PLAIN", "XOAUTH2", "PLAIN-CLIENTTOKEN", "OAUTHBEARER", "XOAUTH"}
	}
	return []string{"LOGIN", "XOAUTH2"}
}

func (s *smtpUpstreamSession) Auth(mech string) (sasl.Server, error) {
	if mech != auth.XOAUTH2 {
		return nil, &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4}, Message: "Unrecognized authentication type"}
	}
	return &smtpXOAUTH2Server{s: s}, nil
}

// smtpXOAUTH2Server is the server side of XOAUTH2 in the personality's form.
type smtpXOAUTH2Server struct {
	s       *smtpUpstreamSession
	refused bool // the error challenge was sent
}

func (x *smtpXOAUTH2Server) Next(response []byte) ([]byte, bool, error) {
	u := x.s.u
	if x.refused {
		// Gmail: whatever answers the error challenge, the final 535.
		return nil, false, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8},
			// go-smtp puts the enhanced code on the last line only; Gmail
			// on each.
			Message: "5.7.8 Username and Password not accepted. Learn more at\nhttps://support.google.com/mail/?p=BadCredentials - gsmtp"}
	}
	if response == nil {
		return []byte{}, false, nil // "334 ": send the initial response
	}
	if u.opts.AuthDisabled {
		u.refusals.Add(1)
		return nil, false, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139},
			Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."}
	}
	user, token, err := auth.ParseXOAUTH2(response)
	if err == nil {
		if u.opts.Validate == nil {
			err = errors.New("no validator")
		} else {
			err = u.opts.Validate(user, token)
		}
	}
	if err != nil {
		u.refusals.Add(1)
		if u.opts.Personality == SMTPGmail {
			x.refused = true
			challenge, _ := json.Marshal(auth.XOAUTH2Error{Status: "400", Schemes: "Bearer", Scope: "https://mail.google.com/"})
			return challenge, false, nil
		}
		return nil, false, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful"}
	}
	u.logins.Add(1)
	x.s.user = user
	return nil, true, nil
}

func (s *smtpUpstreamSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 57}, Message: "Client not authenticated to send mail"}
	}
	s.from, s.to = from, nil
	return nil
}

func (s *smtpUpstreamSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.u.opts.Personality == SMTPMicrosoft && strings.HasPrefix(to, "unknown@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 10},
			Message: "RESOLVER.ADR.RecipientNotFound; Recipient " + to + " not found by SMTP address lookup"}
	}
	s.to = append(s.to, to)
	return nil
}

func (s *smtpUpstreamSession) Data(r io.Reader) error {
	var buf bytes.Buffer
	first := make([]byte, 16)
	n, err := io.ReadAtLeast(r, first, 1)
	buf.Write(first[:n])
	s.u.mu.Lock()
	started := s.u.dataStarted
	s.u.dataStarted = nil
	s.u.mu.Unlock()
	if started != nil {
		started <- append([]byte(nil), first[:n]...)
	}
	if err == nil {
		_, err = io.Copy(&buf, r)
	}
	if err != nil {
		return err
	}
	if s.u.opts.Personality == SMTPMicrosoft && !strings.EqualFold(s.from, s.user) {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 2, 252},
			Message: "SendAsDenied; " + s.user + " not allowed to send as " + s.from}
	}
	data := buf.Bytes()
	if s.u.opts.DiscardData {
		data = nil
	}
	s.u.mu.Lock()
	s.u.messages = append(s.u.messages, SMTPMessage{User: s.user, From: s.from, To: s.to, Data: data})
	s.u.mu.Unlock()
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK <queued-as-42@upstream>"}
}

func (s *smtpUpstreamSession) Reset() { s.from, s.to = "", nil }

func (s *smtpUpstreamSession) Logout() error { return nil }
