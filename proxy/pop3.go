package proxy

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// POP3 before login: the AUTHORIZATION state of RFC 1939 (USER, PASS,
// QUIT), with CAPA and response codes (RFC 2449), AUTH PLAIN (RFC 5034),
// STLS (RFC 2595) and the [AUTH] and [SYS/...] codes of RFC 3206. After
// the upstream has accepted the token, bytes are relayed as for IMAP.

// ServePOP3 accepts plain POP3 connections on ln (with STLS when a local
// certificate is configured) until Shutdown or Close, and then returns
// nil. USER/PASS and AUTH PLAIN without TLS are allowed only when ln is a
// loopback address or the configuration sets allow_plaintext. It shares
// the connection limits, the throttle and the token manager with the IMAP
// listeners.
func (s *Server) ServePOP3(ln net.Listener) error { return s.serve(ln, false, pop3Protocol) }

// ServePOP3TLS is ServePOP3 for implicit TLS (POP3S, RFC 8314): every
// connection starts with a TLS handshake using the local certificate.
func (s *Server) ServePOP3TLS(ln net.Listener) error { return s.serve(ln, true, pop3Protocol) }

// pop3Code is the RFC 3206 response code for a failed login of kind:
// [AUTH] for the collector's credentials, [SYS/TEMP] for what a retry may
// fix, [SYS/PERM] for what the operator must fix (a revoked
// authorization, a login not enabled for POP3).
func pop3Code(kind auth.Kind) string {
	switch kind {
	case auth.AuthenticationFailed:
		return "AUTH"
	case auth.Unavailable:
		return "SYS/TEMP"
	}
	return "SYS/PERM"
}

// pop3Session is the state of one POP3 session before login.
type pop3Session struct {
	c   *conn
	bad int // malformed or unknown commands so far
	// user is the name a USER command gave, for the PASS that follows.
	user    string
	hasUser bool
}

// pop3Preauth runs the POP3 AUTHORIZATION state and, after a successful
// login, the relay. It returns why the session ended.
func (c *conn) pop3Preauth() string {
	s := &pop3Session{c: c}
	if err := c.writeLine("+OK imap-oauth-proxy POP3 ready"); err != nil {
		return "write failed"
	}
	loginBy := c.start.Add(c.cfg.Server.PreauthMaxTime)
	for n := 0; ; n++ {
		if reason, tell := c.awaitCommand(n, loginBy); reason != "" {
			if tell != "" {
				s.fail("SYS/TEMP", tell)
			}
			return reason
		}
		line, err := readLine(c.br, c.cfg.Server.MaxLineBytes)
		switch {
		case errors.Is(err, errLineTooLong):
			s.fail("", fmt.Sprintf("Command line longer than %d bytes", c.cfg.Server.MaxLineBytes))
			return "line too long"
		case err != nil:
			reason, tell := c.readFailure(err, loginBy)
			if tell != "" {
				s.fail("SYS/TEMP", tell)
			}
			return reason
		}
		if reason, done := s.command(string(line), n == 0); done {
			return reason
		}
		if c.bw.Buffered() > 0 {
			return "write failed"
		}
	}
}

// fail writes an -ERR response with an RFC 2449 response code ("" for
// none).
func (s *pop3Session) fail(code, text string) error {
	if code != "" {
		text = "[" + code + "] " + text
	}
	return s.c.writeLine("-ERR " + text)
}

// command runs one command line; first is true for the session's first.
// done is true when the session is over.
func (s *pop3Session) command(line string, first bool) (reason string, done bool) {
	c := s.c
	name, arg, hasArg := strings.Cut(line, " ")
	name = strings.ToUpper(name)
	if c.tracing() {
		c.trace("C", pop3Redacted(name, arg, hasArg))
	}
	switch name {
	case "CAPA":
		return s.capa()
	case "QUIT":
		c.writeLine("+OK imap-oauth-proxy signing off")
		return "logout", true
	case "STLS":
		return s.stls(hasArg)
	case "USER":
		if !hasArg || arg == "" || strings.ContainsAny(arg, " \t") {
			return s.badCommand(first, "USER takes one argument, the login")
		}
		if !c.canAuth() {
			s.fail("AUTH", "Use STLS before USER on this listener")
			return "", false
		}
		s.user, s.hasUser = arg, true
		c.writeLine("+OK Send PASS")
		return "", false
	case "PASS":
		if !s.hasUser {
			return s.badCommand(first, "Send USER before PASS")
		}
		// RFC 1939 section 7: the password is the rest of the line, spaces
		// and all.
		user := s.user
		s.user, s.hasUser = "", false
		return s.login(user, arg)
	case "AUTH":
		return s.auth(arg, hasArg, first)
	}
	if first {
		// An unknown first command: likely another protocol (a
		// cross-protocol attack, or an IMAP client on the wrong port).
		s.fail("", "Not a POP3 command; closing")
		return "unknown first command", true
	}
	return s.badCommand(false, "Command unknown or not allowed before login; log in first")
}

// badCommand answers a malformed or out-of-place command with text, and
// ends the session on the first command or at maxBadCommands.
func (s *pop3Session) badCommand(first bool, text string) (reason string, done bool) {
	s.bad++
	if first || s.bad >= maxBadCommands {
		s.fail("", "Too many invalid commands; closing")
		return "too many invalid commands", true
	}
	s.fail("", text)
	return "", false
}

// capa answers CAPA (RFC 2449 section 5) with the proxy's capabilities
// before login. USER and SASL PLAIN are listed only where they may be used
// (RFC 2595 section 4: not before STLS on a listener that needs TLS).
func (s *pop3Session) capa() (reason string, done bool) {
	c := s.c
	lines := []string{"+OK Capability list follows"}
	if c.canAuth() {
		lines = append(lines, "USER", "SASL PLAIN")
	}
	if !c.tlsOn && c.localTLS() != nil {
		lines = append(lines, "STLS")
	}
	lines = append(lines, "RESP-CODES", "AUTH-RESP-CODE", "IMPLEMENTATION imap-oauth-proxy", ".")
	if err := c.writeLines(lines); err != nil {
		return "write failed", true
	}
	return "", false
}

// writeLines writes a multi-line response and flushes it once.
func (c *conn) writeLines(lines []string) error {
	for _, l := range lines {
		c.trace("S", l)
		c.bw.WriteString(l)
		c.bw.WriteString("\r\n")
	}
	c.raw.SetWriteDeadline(time.Now().Add(c.cfg.Server.PreauthTimeout))
	return c.bw.Flush()
}

// stls upgrades the connection (RFC 2595 section 4).
func (s *pop3Session) stls(hasArg bool) (reason string, done bool) {
	c := s.c
	if hasArg {
		return s.badCommand(false, "STLS takes no argument")
	}
	if c.tlsOn || c.localTLS() == nil {
		s.fail("", "STLS is not available")
		return "", false
	}
	if c.br.Buffered() > 0 {
		// Plaintext pipelined after STLS would be taken as protected
		// (command injection); refuse and end the session.
		s.fail("", "Commands pipelined after STLS; closing")
		return "data after STLS", true
	}
	if err := c.writeLine("+OK Begin TLS negotiation"); err != nil {
		return "write failed", true
	}
	if err := c.resumeInTLS(); err != nil {
		return err.Error(), true
	}
	s.user, s.hasUser = "", false // RFC 2595 section 4: forget what came before
	return "", false
}

// auth runs AUTH (RFC 5034): PLAIN with or without an initial response.
// AUTH without an argument lists the mechanisms, as many clients expect
// (the form of RFC 1734's successors' implementations).
func (s *pop3Session) auth(arg string, hasArg, first bool) (reason string, done bool) {
	c := s.c
	if !hasArg || arg == "" {
		lines := []string{"+OK Mechanism list follows"}
		if c.canAuth() {
			lines = append(lines, "PLAIN")
		}
		if err := c.writeLines(append(lines, ".")); err != nil {
			return "write failed", true
		}
		return "", false
	}
	mech, initial, hasInitial := strings.Cut(arg, " ")
	if hasInitial && (initial == "" || strings.Contains(initial, " ")) {
		return s.badCommand(first, "AUTH takes a mechanism and an optional initial response")
	}
	if !strings.EqualFold(mech, "PLAIN") {
		s.fail("", "Unsupported mechanism; use PLAIN")
		return "", false
	}
	if !c.canAuth() {
		s.fail("AUTH", "Use STLS before AUTH on this listener")
		return "", false
	}
	var ir *string
	if hasInitial {
		ir = &initial
	}
	login, password, err := c.plainCredentials(ir)
	switch {
	case errors.Is(err, errSASLCancelled):
		s.fail("", "AUTH cancelled")
		return "", false
	case errors.Is(err, errAuthzidDiffers):
		s.fail("AUTH", "Authorization identity must be empty or equal the login")
		return "", false
	case errors.Is(err, errMalformedSASL):
		s.fail("", "Malformed SASL response")
		return "", false
	case err != nil:
		return err.Error(), true
	}
	return s.login(login, password)
}

// login checks the credentials, logs in upstream and, on success, relays
// the session.
func (s *pop3Session) login(login, password string) (reason string, done bool) {
	c := s.c
	up, log, err := c.openSession(login, password)
	if err != nil {
		if s.fail(pop3Code(auth.KindOf(err)), auth.MessageOf(err, "login failed")) != nil {
			return "write failed", true
		}
		return "", false
	}
	if err := c.writeLine("+OK Logged in"); err != nil {
		up.Close()
		return "write failed", true
	}
	return c.relay(up, log), true
}

// pop3Redacted renders a command line for the trace: the command name,
// and its argument only for CAPA, STLS, QUIT and the mechanism of AUTH.
// USER is hidden too, as IMAP's LOGIN is: a collector that mixes up its
// fields sends the password there.
func pop3Redacted(name, arg string, hasArg bool) string {
	if !hasArg {
		return name
	}
	if name == "AUTH" {
		mech, _, hasInitial := strings.Cut(arg, " ")
		if hasInitial {
			return name + " " + mech + " " + redactedMarker
		}
		return name + " " + mech
	}
	return name + " " + redactedMarker
}
