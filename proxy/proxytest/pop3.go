package proxytest

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// POP3Personality is whose wire behaviour a POP3Upstream copies.
type POP3Personality int

const (
	// POP3Microsoft behaves as outlook.office365.com:995 does:
	//   - greeting "+OK The Microsoft Exchange POP3 service is ready. [...]"
	//     and CAPA "TOP UIDL SASL PLAIN XOAUTH2 USER" (kisli/vmime#267,
	//     simonrob/email-oauth2-proxy#62);
	//   - AUTH XOAUTH2, then "+ ", then the base64 string on a line of its
	//     own, "+OK User successfully authenticated." (Microsoft's "POP
	//     protocol exchange", learn.microsoft.com/exchange/client-developer/
	//     legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-
	//     by-using-oauth);
	//   - an initial response on the AUTH line is refused with "-ERR Protocol
	//     error. Connection is closed. 10" and the connection closed
	//     (getmail6/getmail6#256);
	//   - a refused token gets "-ERR Authentication failure: unknown user
	//     name or bad password." (simonrob/email-oauth2-proxy#244).
	POP3Microsoft POP3Personality = iota
	// POP3Gmail behaves as pop.gmail.com:995 does:
	//   - greeting "+OK Gpop ready for requests from ..." and CAPA "USER
	//     RESP-CODES EXPIRE 0 LOGIN-DELAY 300 TOP UIDL X-GOOGLE-RICO SASL
	//     PLAIN XOAUTH2 OAUTHBEARER" (horde/Imap_Client#36);
	//   - AUTH XOAUTH2 with the initial response on the line (same source);
	//   - a refused token gets a "+" challenge carrying base64 JSON
	//     {"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}
	//     that the client answers with an empty line, then an -ERR
	//     (developers.google.com/gmail/imap/xoauth2-protocol, "Error
	//     response"; the [AUTH] code and its text are assumed, as Gmail's
	//     IMAP says "Invalid credentials (Failure)").
	POP3Gmail
)

// POP3UpstreamOptions configure a POP3Upstream.
type POP3UpstreamOptions struct {
	// Validate decides whether token is a valid access token for user; nil
	// refuses every token.
	Validate func(user, token string) error
	// Personality chooses Microsoft's or Gmail's wire behaviour.
	Personality POP3Personality
}

// POP3Upstream is a TLS POP3 server on 127.0.0.1 that accepts only AUTH
// XOAUTH2, with a fixed list of messages per user. DELE takes effect at
// QUIT. It is safe for concurrent use.
type POP3Upstream struct {
	// Addr is the host:port to dial ("127.0.0.1:N").
	Addr string
	// CAPEM is the PEM certificate that signs the server's certificate.
	CAPEM []byte

	opts     POP3UpstreamOptions
	conns    *connServer
	mu       sync.Mutex
	mailbox  map[string][][]byte
	authLine string // if set, the answer to every AUTH
	logins   atomic.Int64
	refusals atomic.Int64
}

// NewPOP3Upstream starts a POP3Upstream on a free loopback port.
func NewPOP3Upstream(opts POP3UpstreamOptions) (*POP3Upstream, error) {
	cert, caPEM, err := NewCertificate("localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	u := &POP3Upstream{Addr: ln.Addr().String(), CAPEM: caPEM, opts: opts, mailbox: make(map[string][][]byte)}
	u.conns = serveConns(ln, func(c net.Conn) {
		s := &pop3Session{u: u, br: bufio.NewReader(c), bw: bufio.NewWriter(c)}
		s.serve()
	})
	return u, nil
}

// AddMessage appends a message (with CRLF line endings) to user's maildrop,
// creating the user.
func (u *POP3Upstream) AddMessage(user string, msg []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.mailbox[user] = append(u.mailbox[user], msg)
}

// AddUser creates user with an empty maildrop.
func (u *POP3Upstream) AddUser(user string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.mailbox[user]; !ok {
		u.mailbox[user] = nil
	}
}

// Messages returns user's messages.
func (u *POP3Upstream) Messages(user string) [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.mailbox[user]...)
}

// AnswerAuthWith makes every later AUTH get line (such as "-ERR [IN-USE]
// Mailbox locked"), whatever the token; "" restores validation.
func (u *POP3Upstream) AnswerAuthWith(line string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.authLine = line
}

// Logins returns how many authentications succeeded.
func (u *POP3Upstream) Logins() int64 { return u.logins.Load() }

// Refusals returns how many authentications were refused.
func (u *POP3Upstream) Refusals() int64 { return u.refusals.Load() }

// Close stops the server, closes its connections and waits for them.
func (u *POP3Upstream) Close() error { return u.conns.close() }

// pop3Session is one connection to a POP3Upstream.
type pop3Session struct {
	u       *POP3Upstream
	br      *bufio.Reader
	bw      *bufio.Writer
	user    string   // set once authenticated
	msgs    [][]byte // the maildrop as it was at login
	deleted map[int]bool
}

func (s *pop3Session) reply(lines ...string) bool {
	for _, l := range lines {
		s.bw.WriteString(l + "\r\n")
	}
	return s.bw.Flush() == nil
}

func (s *pop3Session) readLine() (string, bool) {
	l, err := s.br.ReadString('\n')
	if err != nil {
		return "", false
	}
	return strings.TrimRight(l, "\r\n"), true
}

func (s *pop3Session) serve() {
	greeting := "+OK The Microsoft Exchange POP3 service is ready. [TABBAEAVABFAFMAVAA=]"
	if s.u.opts.Personality == POP3Gmail {
		greeting = "+OK Gpop ready for requests from 127.0.0.1 t3st"
	}
	if !s.reply(greeting) {
		return
	}
	for {
		line, ok := s.readLine()
		if !ok {
			return
		}
		name, arg, _ := strings.Cut(line, " ")
		name = strings.ToUpper(name)
		if s.user == "" {
			if !s.authorization(name, arg) {
				return
			}
			continue
		}
		if !s.transaction(name, arg) {
			return
		}
	}
}

// authorization runs one command before login; false ends the session.
func (s *pop3Session) authorization(name, arg string) bool {
	switch name {
	case "CAPA":
		if s.u.opts.Personality == POP3Gmail {
			return s.reply("+OK Capability list follows", "USER", "RESP-CODES", "EXPIRE 0", "LOGIN-DELAY 300",
				"TOP", "UIDL", "X-GOOGLE-RICO", "SASL PLAIN XOAUTH2 OAUTHBEARER", ".")
		}
		return s.reply("+OK", "TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER", ".")
	case "QUIT":
		s.reply("+OK")
		return false
	case "USER", "PASS":
		return s.reply("-ERR [AUTH] Only AUTH XOAUTH2 is accepted here")
	case "AUTH":
		return s.auth(arg)
	}
	return s.reply("-ERR Unknown command")
}

func (s *pop3Session) auth(arg string) bool {
	mech, ir, hasIR := strings.Cut(arg, " ")
	if !strings.EqualFold(mech, auth.XOAUTH2) {
		return s.reply("-ERR Unsupported mechanism")
	}
	u := s.u
	if hasIR && u.opts.Personality == POP3Microsoft {
		s.reply("-ERR Protocol error. Connection is closed. 10")
		return false
	}
	if !hasIR {
		if !s.reply("+ ") {
			return false
		}
		var ok bool
		if ir, ok = s.readLine(); !ok {
			return false
		}
	}
	u.mu.Lock()
	forced := u.authLine
	u.mu.Unlock()
	if forced != "" {
		return s.reply(forced)
	}
	err := errors.New("undecodable response")
	var name string
	if raw, derr := base64.StdEncoding.DecodeString(ir); derr == nil {
		var token string
		name, token, err = auth.ParseXOAUTH2(raw)
		if err == nil && u.opts.Validate == nil {
			err = errors.New("no validator")
		} else if err == nil {
			err = u.opts.Validate(name, token)
		}
	}
	u.mu.Lock()
	msgs, known := u.mailbox[name]
	msgs = append([][]byte(nil), msgs...)
	u.mu.Unlock()
	if err == nil && !known {
		err = errors.New("no such mailbox")
	}
	if err != nil {
		u.refusals.Add(1)
		if u.opts.Personality == POP3Gmail {
			status := base64.StdEncoding.EncodeToString([]byte(`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`))
			if !s.reply("+ " + status) {
				return false
			}
			if _, ok := s.readLine(); !ok {
				return false
			}
			return s.reply("-ERR [AUTH] Invalid credentials.")
		}
		return s.reply("-ERR Authentication failure: unknown user name or bad password.")
	}
	u.logins.Add(1)
	s.user, s.msgs, s.deleted = name, msgs, make(map[int]bool)
	if u.opts.Personality == POP3Gmail {
		return s.reply("+OK Welcome.")
	}
	return s.reply("+OK User successfully authenticated.")
}

// message returns message number arg (1-based) unless deleted.
func (s *pop3Session) message(arg string) (int, []byte, bool) {
	n, err := strconv.Atoi(strings.Fields(arg + " x")[0])
	if err != nil || n < 1 || n > len(s.msgs) || s.deleted[n] {
		return 0, nil, false
	}
	return n, s.msgs[n-1], true
}

// transaction runs one command after login; false ends the session.
func (s *pop3Session) transaction(name, arg string) bool {
	switch name {
	case "STAT":
		count, size := 0, 0
		for i, m := range s.msgs {
			if !s.deleted[i+1] {
				count++
				size += len(m)
			}
		}
		return s.reply(fmt.Sprintf("+OK %d %d", count, size))
	case "LIST", "UIDL":
		if arg != "" {
			n, m, ok := s.message(arg)
			if !ok {
				return s.reply("-ERR No such message")
			}
			return s.reply(fmt.Sprintf("+OK %d %s", n, s.listValue(name, n, m)))
		}
		lines := []string{"+OK"}
		for i, m := range s.msgs {
			if !s.deleted[i+1] {
				lines = append(lines, fmt.Sprintf("%d %s", i+1, s.listValue(name, i+1, m)))
			}
		}
		return s.reply(append(lines, ".")...)
	case "RETR", "TOP":
		_, m, ok := s.message(arg)
		if !ok {
			return s.reply("-ERR No such message")
		}
		if name == "TOP" {
			// RFC 1939 section 7: the header, the blank line, and n lines
			// of the body.
			_, ns, _ := strings.Cut(arg, " ")
			n, err := strconv.Atoi(ns)
			if err != nil || n < 0 {
				return s.reply("-ERR TOP takes a message and a line count")
			}
			head, body, _ := strings.Cut(string(m), "\r\n\r\n")
			lines := strings.SplitAfter(body, "\r\n")
			m = []byte(head + "\r\n\r\n" + strings.Join(lines[:min(n, len(lines))], ""))
		}
		s.bw.WriteString(fmt.Sprintf("+OK %d octets\r\n", len(m)))
		for _, l := range strings.SplitAfter(string(m), "\r\n") {
			if l == "" {
				continue
			}
			if strings.HasPrefix(l, ".") {
				s.bw.WriteByte('.') // RFC 1939 section 3: byte-stuffing
			}
			s.bw.WriteString(l)
		}
		if len(m) > 0 && !strings.HasSuffix(string(m), "\r\n") {
			s.bw.WriteString("\r\n")
		}
		return s.reply(".")
	case "DELE":
		n, _, ok := s.message(arg)
		if !ok {
			return s.reply("-ERR No such message")
		}
		s.deleted[n] = true
		return s.reply("+OK")
	case "NOOP":
		return s.reply("+OK")
	case "RSET":
		s.deleted = make(map[int]bool)
		return s.reply("+OK")
	case "QUIT":
		s.u.mu.Lock()
		var kept [][]byte
		for i, m := range s.u.mailbox[s.user] {
			if !s.deleted[i+1] {
				kept = append(kept, m)
			}
		}
		s.u.mailbox[s.user] = kept
		s.u.mu.Unlock()
		s.reply("+OK Bye")
		return false
	case "CAPA":
		return s.reply("+OK", "TOP", "UIDL", "USER", ".")
	}
	return s.reply("-ERR Unknown command")
}

// listValue is a message's size (LIST) or unique id (UIDL).
func (s *pop3Session) listValue(cmd string, n int, m []byte) string {
	if cmd == "UIDL" {
		return fmt.Sprintf("uid%d-%d", n, len(m))
	}
	return strconv.Itoa(len(m))
}
