package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxBadCommands is how many malformed or unknown commands a pre-auth
// session may send before it is dropped.
const maxBadCommands = 3

// conn is one collector connection.
type conn struct {
	srv   *Server
	proto *protocol      // what the listener speaks
	cfg   *runtimeConfig // snapshot taken at accept
	raw   net.Conn       // the accepted connection, past its PROXY header; deadlines on it reach TLS too
	peer  peer           // who connects, for limits and throttling
	// refusing, if not nil, refuses a PROXY header from a source not
	// allowed to send one; raw reads through it.
	refusing *headerRefusingConn
	// balancerOwn marks the load balancer's own connection, such as a
	// health check (see origin.local).
	balancerOwn bool
	nc          net.Conn // raw, or the TLS connection over it
	br          *bufio.Reader
	bw          *bufio.Writer
	id          string
	start       time.Time
	log         *sessionLog
	implicit    bool // accepted on an implicit-TLS listener
	tlsOn       bool // the connection is protected by TLS
	// plaintextOK allows LOGIN without TLS: a loopback listener (and,
	// behind a load balancer, a loopback client) or allow_plaintext.
	plaintextOK bool

	// clientID is the parameter list of the collector's last ID before
	// login, forwarded upstream after login; "" for none.
	clientID string

	relaying atomic.Bool // past login: the byte relay owns the connection
	draining atomic.Bool // the server is shutting down

	mu       sync.Mutex
	upstream net.Conn // set once relaying, so abort can close it too
	aborted  bool     // abort was called: deadlines set later must not undo it
}

func (c *conn) serve() {
	// Unregister before closing, so a client that sees the close can count
	// on its slot being free.
	defer c.raw.Close()
	defer c.srv.removeConn(c)
	defer func() {
		if v := recover(); v != nil {
			c.log.Error("panic in session", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	c.srv.metrics.session(c.proto.name)
	if level := c.sessionLevel(); c.log.Enabled(level) {
		c.log.Log(level, "session start", "local", c.raw.LocalAddr().String(), "tls", c.implicit)
	}
	c.nc = c.raw
	if c.implicit {
		if err := c.handshake(); err != nil {
			if c.headerRefused() {
				err = errProxyHeaderNotAllowed
			}
			c.logSessionEnd("TLS handshake failed: " + err.Error())
			return
		}
	}
	c.br, c.bw = newLineReader(c.nc), newLineWriter(c.nc)
	reason := c.proto.preauth(c)
	c.releaseLineBuffers()
	if c.headerRefused() {
		reason = errProxyHeaderNotAllowed.Error()
	}
	c.logSessionEnd(reason)
}

// headerRefused reports whether the session ended on a PROXY header from
// a source that may not send one, and counts it; it is called once, at
// the session's end.
func (c *conn) headerRefused() bool {
	if c.refusing == nil || !c.refusing.refused {
		return false
	}
	c.srv.metrics.proxyRefused[proxyRefusedSourceNotAllowed].Add(1)
	return true
}

// logSessionEnd logs the end of the session and why, at sessionLevel;
// below that level it builds no attributes.
func (c *conn) logSessionEnd(reason string) {
	if level := c.sessionLevel(); c.log.Enabled(level) {
		c.log.Log(level, "session end", "duration", time.Since(c.start).Round(time.Millisecond), "reason", reason)
	}
}

// sessionLevel is the level of a session's start and end: info, or debug
// for the load balancer's own connections (health checks), which come
// every few seconds.
func (c *conn) sessionLevel() slog.Level {
	if c.balancerOwn {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// releaseLineBuffers returns the pre-auth reader and writer to their
// pools, once nothing reads or writes through them any more.
func (c *conn) releaseLineBuffers() {
	putLineReader(c.br)
	putLineWriter(c.bw)
	c.br, c.bw = nil, nil
}

// handshake runs the server side of TLS on c.nc (implicit TLS or STARTTLS).
func (c *conn) handshake() error {
	if c.localTLS() == nil {
		return errors.New("no local TLS certificate configured")
	}
	tc := tls.Server(c.nc, c.localTLS())
	ctx, cancel := context.WithTimeout(c.srv.ctx, c.cfg.Server.PreauthTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	c.nc = tc
	c.tlsOn = true
	return nil
}

// abort ends the session from another goroutine. It is sticky: code that
// moves a deadline afterwards checks isAborted (or registers the upstream
// under c.mu, as relay does) so the session cannot outlive it.
func (c *conn) abort() {
	c.mu.Lock()
	c.aborted = true
	up := c.upstream
	c.mu.Unlock()
	c.raw.SetDeadline(time.Now())
	if up != nil {
		up.SetDeadline(time.Now())
	}
}

func (c *conn) isAborted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.aborted
}

// drain asks the session to end at its next command boundary: a pre-auth
// session says BYE at once; a relayed one is left alone until abort.
func (c *conn) drain() {
	c.draining.Store(true)
	if !c.relaying.Load() {
		c.raw.SetReadDeadline(time.Now())
	}
}

// canAuth reports whether LOGIN and AUTHENTICATE PLAIN are allowed now.
func (c *conn) canAuth() bool { return c.tlsOn || c.plaintextOK }

// caps returns the capabilities the proxy offers in the current state.
func (c *conn) caps() string {
	caps := "IMAP4rev1 SASL-IR LITERAL+ ID"
	if !c.tlsOn && c.cfg.localTLS != nil {
		caps += " STARTTLS"
	}
	if c.canAuth() {
		return caps + " AUTH=PLAIN"
	}
	return caps + " LOGINDISABLED"
}

// preauth runs the pre-auth command loop and, after a successful login,
// the relay. It returns why the session ended.
func (c *conn) preauth() string {
	srvCfg := &c.cfg.Server
	reader := &commandReader{
		br: c.br,
		cont: func() error {
			return c.writeLine("+ Ready for literal data")
		},
		maxLine:    srvCfg.MaxLineBytes,
		maxLiteral: srvCfg.MaxLiteralBytes,
	}
	if err := c.writeLine("* OK [CAPABILITY " + c.caps() + "] imap-oauth-proxy ready"); err != nil {
		return "write failed"
	}
	bad := 0
	loginBy := c.start.Add(srvCfg.PreauthMaxTime)
	for n := 0; ; n++ {
		if reason, tell := c.awaitCommand(n, loginBy); reason != "" {
			if tell != "" {
				c.bye(tell)
			}
			return reason
		}
		cmd, err := reader.read()
		var syn *syntaxError
		switch {
		case errors.As(err, &syn):
			bad++
			if syn.fatal || n == 0 || bad >= maxBadCommands {
				// A first line that is not IMAP is likely another protocol
				// (cross-protocol attacks); a lost literal cannot be resynced.
				c.bye("Syntax error: " + syn.msg)
				return "syntax error: " + syn.msg
			}
			c.writeStatus(orStar(syn.tag), "BAD", syn.code, syn.msg)
			continue
		case errors.Is(err, errLineTooLong):
			c.bye(fmt.Sprintf("[TOOBIG] Command line longer than %d bytes", srvCfg.MaxLineBytes))
			return "line too long"
		case err != nil:
			reason, tell := c.readFailure(err, loginBy)
			if tell != "" {
				c.bye(tell)
			}
			return reason
		}
		if c.tracing() {
			c.trace("C", cmd.redacted())
		}

		switch cmd.name {
		case "CAPABILITY":
			c.writeLine("* CAPABILITY " + c.caps())
			c.writeStatus(cmd.tag, "OK", "", "CAPABILITY completed")
		case "NOOP":
			c.writeStatus(cmd.tag, "OK", "", "NOOP completed")
		case "LOGOUT":
			c.writeLine("* BYE imap-oauth-proxy logging out")
			c.writeStatus(cmd.tag, "OK", "", "LOGOUT completed")
			return "logout"
		case "ID":
			// Not the proxy's name: a client that learns the server from
			// ID (imapflow) never asks again after login, and should see
			// the provider's quirks, not the proxy's. The upstream gets the
			// collector's ID after login instead.
			c.clientID = clientID(cmd.args)
			c.writeLine("* ID NIL")
			c.writeStatus(cmd.tag, "OK", "", "ID completed")
		case "STARTTLS":
			if reason, done := c.startTLS(cmd.tag, reader); done {
				return reason
			}
		case "LOGIN":
			if len(cmd.args) != 2 || cmd.args[0].kind == argList || cmd.args[1].kind == argList {
				if bad++; bad >= maxBadCommands {
					c.bye("Too many invalid commands")
					return "too many invalid commands"
				}
				c.writeStatus(cmd.tag, "BAD", "", "LOGIN takes a user name and a password")
				continue
			}
			if !c.canAuth() {
				c.writeStatus(cmd.tag, "NO", "PRIVACYREQUIRED", "Use STARTTLS before LOGIN on this listener")
				continue
			}
			if reason, done := c.login(cmd.tag, cmd.args[0].s, cmd.args[1].s); done {
				return reason
			}
		case "AUTHENTICATE":
			if reason, done := c.authenticatePlain(cmd); done {
				return reason
			}
		default:
			bad++
			if bad >= maxBadCommands || n == 0 { // an unknown first command: likely another protocol
				c.bye("Too many invalid commands")
				return "too many invalid commands"
			}
			c.writeStatus(cmd.tag, "BAD", "", "Command unknown or not allowed before login; log in first")
		}
		if c.bw.Buffered() > 0 {
			return "write failed"
		}
	}
}

// awaitCommand prepares to read the n-th command before login: it sets
// the read deadline (first_command_timeout for the first command, then
// preauth_timeout, never past loginBy). If the session must end instead,
// it returns why, and what to tell the client ("" for nothing).
func (c *conn) awaitCommand(n int, loginBy time.Time) (reason, tell string) {
	idle := c.cfg.Server.PreauthTimeout
	if n == 0 {
		// A connection that never speaks only holds a slot.
		idle = min(idle, c.cfg.Server.FirstCommandTimeout)
	}
	c.raw.SetReadDeadline(earliest(time.Now().Add(idle), loginBy))
	if c.isAborted() {
		return "server closed", ""
	}
	if c.draining.Load() {
		return "shutdown", "Server shutting down"
	}
	return "", ""
}

// readFailure says why a session ends after reading a command before
// login failed with err (other than a protocol error), and what to tell
// the client ("" for nothing).
func (c *conn) readFailure(err error, loginBy time.Time) (reason, tell string) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		if c.draining.Load() {
			return "shutdown", "Server shutting down"
		}
		if !time.Now().Before(loginBy) {
			return "pre-auth time limit", "Autologout; no login within the allowed time"
		}
		return "pre-auth timeout", "Autologout; idle for too long"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed):
		return "client closed", ""
	}
	return "read failed: " + err.Error(), ""
}

// startTLS upgrades the connection (RFC 3501 section 6.2.1).
func (c *conn) startTLS(tag string, reader *commandReader) (reason string, done bool) {
	if c.tlsOn || c.cfg.localTLS == nil {
		c.writeStatus(tag, "BAD", "", "STARTTLS is not available")
		return "", false
	}
	if c.br.Buffered() > 0 {
		// Plaintext pipelined after STARTTLS would be taken as protected
		// (command injection); refuse and end the session.
		c.bye("Commands pipelined after STARTTLS")
		return "data after STARTTLS", true
	}
	if err := c.writeStatus(tag, "OK", "", "Begin TLS negotiation now"); err != nil {
		return "write failed", true
	}
	if err := c.resumeInTLS(); err != nil {
		return err.Error(), true
	}
	reader.br = c.br
	return "", false
}

// resumeInTLS runs the TLS handshake after the answer to STARTTLS (or
// STLS), and reads and writes through TLS from then on.
func (c *conn) resumeInTLS() error {
	if err := c.handshake(); err != nil {
		return fmt.Errorf("TLS handshake failed: %w", err)
	}
	c.br.Reset(c.nc) // empty: both callers refuse pipelined bytes first
	c.bw.Reset(c.nc)
	return nil
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func orStar(tag string) string {
	if tag == "" {
		return "*"
	}
	return tag
}

// writeLine writes one response line and flushes it.
func (c *conn) writeLine(line string) error {
	c.trace("S", line)
	c.raw.SetWriteDeadline(time.Now().Add(c.cfg.Server.PreauthTimeout))
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	return c.bw.Flush()
}

// writeStatus writes a tagged (or untagged) status response. code is an
// RFC 5530 response code without brackets, or "".
func (c *conn) writeStatus(tag, status, code, text string) error {
	var sb strings.Builder
	sb.WriteString(tag)
	sb.WriteByte(' ')
	sb.WriteString(status)
	if code != "" {
		sb.WriteString(" [")
		sb.WriteString(code)
		sb.WriteByte(']')
	}
	sb.WriteByte(' ')
	sb.WriteString(text)
	return c.writeLine(sb.String())
}

func (c *conn) bye(text string) {
	c.writeLine("* BYE " + text)
}

// trace logs one protocol line at debug level. Callers pass lines with
// every secret already replaced by [redacted].
func (c *conn) trace(dir, line string) {
	if c.tracing() {
		c.log.Debug(string(c.proto.name), "dir", dir, "line", line)
	}
}

// tracing reports whether the protocol trace is on (debug level), so
// that a caller builds a trace line only when it will be logged.
func (c *conn) tracing() bool {
	return c.log.Enabled(slog.LevelDebug)
}

// redactedMarker stands in for every secret in the protocol trace.
const redactedMarker = "[redacted]"

// redacted renders the command for the trace. Only the arguments of ID
// and the mechanism of AUTHENTICATE are shown: every argument of LOGIN
// (a password with a space in it spills into a third one, a forgotten user
// name turns the password into the first) and of any other command (a
// mistyped XLOGIN carries a password too) is replaced.
func (cmd *command) redacted() string {
	var sb strings.Builder
	sb.WriteString(cmd.tag)
	sb.WriteByte(' ')
	sb.WriteString(cmd.name)
	for i, a := range cmd.args {
		sb.WriteByte(' ')
		shown := cmd.name == "ID" || (cmd.name == "AUTHENTICATE" && i == 0 && a.kind == argAtom)
		if shown {
			writeArg(&sb, a)
		} else {
			sb.WriteString(redactedMarker)
		}
	}
	return sb.String()
}

func writeArg(sb *strings.Builder, a arg) {
	switch a.kind {
	case argList:
		sb.WriteByte('(')
		for i, e := range a.list {
			if i > 0 {
				sb.WriteByte(' ')
			}
			writeArg(sb, e)
		}
		sb.WriteByte(')')
	case argString:
		fmt.Fprintf(sb, "%q", a.s)
	default:
		sb.WriteString(a.s)
	}
}
