package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
)

// tracingTransport writes one trace line per token endpoint request:
// method, URL, status and time; never a body.
type tracingTransport struct {
	next  http.RoundTripper
	trace *redactor
}

func (t *tracingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(r)
	u := *r.URL
	u.RawQuery = ""
	if err != nil {
		fmt.Fprintf(t.trace, "HTTP %s %s: %v\n", r.Method, u.String(), err)
		return nil, err
	}
	fmt.Fprintf(t.trace, "HTTP %s %s -> %s (%s)\n", r.Method, u.String(), resp.Status, formatDuration(time.Since(start)))
	return resp, nil
}

// redactor is the -v trace: it writes whole lines with a prefix, and
// replaces every registered secret (access and refresh tokens, their
// base64 forms, the SASL initial response) and every AUTHENTICATE payload
// by [redacted]. Written to directly, it marks IMAP lines C: (client) or
// S: (server) by their look; stream gives writers for one known
// direction. It is safe for concurrent use; a nil *redactor discards
// everything, and so does one after stop.
type redactor struct {
	w      io.Writer
	prefix string

	mu      sync.Mutex
	secrets []string
	stopped bool
	pending map[string][]byte // partial lines by mark ("?" = guess)
}

var (
	authenticateRE = regexp.MustCompile(`(?i)^(\S+ AUTHENTICATE \S+) \S+`)
	serverLineRE   = regexp.MustCompile(`(?i)^(\* |\+ |\+$|\S+ (OK|NO|BAD|BYE|PREAUTH)\b)`)
	base64LineRE   = regexp.MustCompile(`^[A-Za-z0-9+/=]{16,}$`)
)

func (r *redactor) addSecret(s string) {
	if r == nil || s == "" {
		return
	}
	r.mu.Lock()
	r.secrets = append(r.secrets, s)
	r.mu.Unlock()
}

// Write writes trace text whose direction is guessed line by line.
func (r *redactor) Write(p []byte) (int, error) { return r.write("?", p) }

// stream returns a writer for text going one way: mark is "C" or "S".
func (r *redactor) stream(mark string) io.Writer { return markedWriter{r, mark} }

type markedWriter struct {
	r    *redactor
	mark string
}

func (m markedWriter) Write(p []byte) (int, error) { return m.r.write(m.mark, p) }

func (r *redactor) write(mark string, p []byte) (int, error) {
	if r == nil {
		return len(p), nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return len(p), nil
	}
	if r.pending == nil {
		r.pending = make(map[string][]byte)
	}
	buf := append(r.pending[mark], p...)
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		r.emitLocked(mark, string(buf[:i]))
		buf = buf[i+1:]
	}
	if len(buf) > 64*1024 {
		r.emitLocked(mark, string(buf))
		buf = nil
	}
	r.pending[mark] = buf
	return len(p), nil
}

// flush writes pending partial lines.
func (r *redactor) flush() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for mark, buf := range r.pending {
		if len(buf) > 0 && !r.stopped {
			r.emitLocked(mark, string(buf))
		}
		delete(r.pending, mark)
	}
}

// stop flushes and discards everything written later.
func (r *redactor) stop() {
	if r == nil {
		return
	}
	r.flush()
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

func (r *redactor) redact(line string) string {
	if r == nil {
		return line
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.redactLocked(line)
}

func (r *redactor) redactLocked(line string) string {
	for _, s := range r.secrets {
		line = strings.ReplaceAll(line, s, "[redacted]")
	}
	return authenticateRE.ReplaceAllString(line, "$1 [redacted]")
}

func (r *redactor) emitLocked(mark, line string) {
	line = strings.TrimRight(line, "\r")
	if mark == "?" {
		switch {
		case strings.HasPrefix(line, "HTTP ") || strings.HasPrefix(line, "level="):
			mark = ""
		case serverLineRE.MatchString(line):
			mark = "S"
		default:
			mark = "C"
		}
	}
	if mark == "C" && base64LineRE.MatchString(line) {
		line = "[redacted]" // a SASL response sent on its own line
	}
	if mark != "" {
		mark += ": "
	}
	fmt.Fprintf(r.w, "%s%s%s\n", r.prefix, mark, r.redactLocked(line))
}

// tracedConn copies what goes over a connection to a trace, each
// direction on its own, writes before they are sent.
type tracedConn struct {
	net.Conn
	client, server io.Writer
}

func (t *tracedConn) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	t.server.Write(p[:n])
	return n, err
}

func (t *tracedConn) Write(p []byte) (int, error) {
	t.client.Write(p)
	return t.Conn.Write(p)
}
