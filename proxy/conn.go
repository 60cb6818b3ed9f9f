package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// maxBadCommands is how many malformed or unknown commands a pre-auth
// session may send before it is dropped.
const maxBadCommands = 3

// preauthCaps are the capabilities the proxy itself offers before login;
// after login the upstream's own list reaches the collector.
const preauthCaps = "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN"

// conn is one collector connection.
type conn struct {
	srv    *Server
	cfg    *runtimeConfig // snapshot taken at accept
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	id     string
	start  time.Time
	logger *slog.Logger

	mu       sync.Mutex
	upstream net.Conn // set once relaying, so abort can close it too
}

func (c *conn) serve() {
	defer c.srv.removeConn(c)
	defer c.nc.Close()
	defer func() {
		if v := recover(); v != nil {
			c.logger.Error("panic in session", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	c.logger.Info("session start", "local", c.nc.LocalAddr().String())
	c.br = bufio.NewReaderSize(c.nc, 4096)
	c.bw = bufio.NewWriterSize(c.nc, 4096)
	reason := c.preauth()
	c.logger.Info("session end", "duration", time.Since(c.start).Round(time.Millisecond), "reason", reason)
}

// abort ends the session from another goroutine.
func (c *conn) abort() {
	c.nc.SetDeadline(time.Now())
	c.mu.Lock()
	if c.upstream != nil {
		c.upstream.SetDeadline(time.Now())
	}
	c.mu.Unlock()
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
	if err := c.writeLine("* OK [CAPABILITY " + preauthCaps + "] imap-oauth-proxy ready"); err != nil {
		return "write failed"
	}
	bad := 0
	for n := 0; ; n++ {
		c.nc.SetReadDeadline(time.Now().Add(srvCfg.PreauthTimeout))
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
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.bye("Autologout; idle for too long")
			return "pre-auth timeout"
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed):
			return "client closed"
		case err != nil:
			return "read failed: " + err.Error()
		}

		switch cmd.name {
		case "CAPABILITY":
			c.writeLine("* CAPABILITY " + preauthCaps)
			c.writeStatus(cmd.tag, "OK", "", "CAPABILITY completed")
		case "NOOP":
			c.writeStatus(cmd.tag, "OK", "", "NOOP completed")
		case "LOGOUT":
			c.writeLine("* BYE imap-oauth-proxy logging out")
			c.writeStatus(cmd.tag, "OK", "", "LOGOUT completed")
			return "logout"
		case "ID":
			c.writeLine(fmt.Sprintf("* ID (\"name\" \"imap-oauth-proxy\" \"version\" %q)", c.srv.version))
			c.writeStatus(cmd.tag, "OK", "", "ID completed")
		case "LOGIN":
			if len(cmd.args) != 2 || cmd.args[0].kind == argList || cmd.args[1].kind == argList {
				bad++
				c.writeStatus(cmd.tag, "BAD", "", "LOGIN takes a user name and a password")
				continue
			}
			if reason, done := c.login(cmd.tag, cmd.args[0].s, cmd.args[1].s); done {
				return reason
			}
		case "AUTHENTICATE":
			if reason, done := c.authenticatePlain(cmd); done {
				return reason
			}
		case "STARTTLS":
			c.writeStatus(cmd.tag, "BAD", "", "STARTTLS is not offered on this listener")
		default:
			bad++
			if bad >= maxBadCommands {
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

func orStar(tag string) string {
	if tag == "" {
		return "*"
	}
	return tag
}

// writeLine writes one response line and flushes it.
func (c *conn) writeLine(line string) error {
	c.nc.SetWriteDeadline(time.Now().Add(c.cfg.Server.PreauthTimeout))
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
