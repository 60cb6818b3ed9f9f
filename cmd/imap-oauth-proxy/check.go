package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/tlsconfig"
)

// cmdCheck diagnoses one account end to end, the way a collector's login
// goes through the proxy: the record opens with the local password, the
// token endpoint gives an access token, the upstream answers over TLS with
// a greeting, accepts the token, and lists the mailboxes. It prints one
// line per step, "step outcome duration detail", and fails (exit 1) when a
// step fails; the steps after it are skipped. -v adds the protocol trace
// with every secret replaced by [redacted]. The local password is asked on
// a terminal, or is the first line of stdin.
func cmdCheck(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "mapping file")
	verbose := fs.Bool("v", false, "add the protocol trace (secrets redacted)")
	timeout := fs.Duration("timeout", 0, "bound on the whole check (default: the login_timeout plus the token_timeout)")
	login, err := parseLoginFlags(fs, args, "check")
	if err != nil {
		return err
	}
	cfg, acct, err := loadAccount(*configPath, login)
	if err != nil {
		return err
	}
	password, err := newInput(stdin, stderr).password(fmt.Sprintf("Local password of %s: ", login), "local password")
	if err != nil {
		return err
	}
	if *timeout <= 0 {
		*timeout = cfg.Server.LoginTimeout + cfg.Server.TokenTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	c := &checker{out: stdout, cfg: cfg, acct: acct}
	if *verbose {
		c.trace = &redactor{w: stdout, prefix: "    "}
		defer c.trace.stop()
	}
	p := acct.Provider
	fmt.Fprintf(stdout, "check %s: mailbox %s on %s, provider %s (%s), grant %s\n",
		login, acct.Mailbox, p.IMAPAddress, p.Name, p.Type, acct.Grant)
	c.run(ctx, password)
	if c.failed != "" {
		return fmt.Errorf("check of %s failed at step %s", login, c.failed)
	}
	fmt.Fprintf(stdout, "check passed: %s logs in to %s\n", login, acct.Mailbox)
	return nil
}

// checker runs the steps of check and prints their outcomes.
type checker struct {
	out    io.Writer
	trace  *redactor // nil without -v
	cfg    *config.Config
	acct   *config.Account
	failed string // name of the failed step, "" while all pass
}

// stepError is a failed step's operator-facing detail and its cause.
type stepError struct {
	detail string
	cause  error
}

func (e *stepError) Error() string { return e.detail }

func failStep(cause error, format string, args ...any) error {
	return &stepError{detail: fmt.Sprintf(format, args...), cause: cause}
}

// step runs fn as the step called name unless an earlier step failed,
// and prints its line. It reports whether the step passed.
func (c *checker) step(name string, fn func() (string, error)) bool {
	if c.failed != "" {
		fmt.Fprintf(c.out, "%-11s %-4s %8s  %s\n", name, "skip", "-", "not run: step "+c.failed+" failed")
		return false
	}
	start := time.Now()
	detail, err := fn()
	c.report(name, time.Since(start), detail, err)
	return err == nil
}

// report prints the line of a step that ran, and took elapsed.
func (c *checker) report(name string, elapsed time.Duration, detail string, err error) {
	c.trace.flush()
	outcome := "ok"
	if err != nil {
		outcome, c.failed = "FAIL", name
		detail = err.Error()
	}
	fmt.Fprintf(c.out, "%-11s %-4s %8s  %s\n", name, outcome, formatDuration(elapsed), auth.OneLine(detail, 2000))
	if err != nil && c.trace != nil {
		var se *stepError
		if errors.As(err, &se) && se.cause != nil {
			cause := se.cause
			if ae := (*auth.Error)(nil); errors.As(cause, &ae) && ae.Err != nil {
				cause = ae.Err // the message is on the step line already
			}
			fmt.Fprintf(c.out, "    cause: %s\n", c.trace.redact(auth.OneLine(cause.Error(), 2000)))
		}
	}
}

// stepDone is step for work already done: it took elapsed and ended with
// detail or err.
func (c *checker) stepDone(name string, elapsed time.Duration, detail string, err error) bool {
	if c.failed != "" {
		return c.step(name, nil)
	}
	c.report(name, elapsed, detail, err)
	return err == nil
}

func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func (c *checker) run(ctx context.Context, password string) {
	acct, p := c.acct, c.acct.Provider
	store, err := openStore(c.cfg.Server.StateDir)
	if err != nil {
		c.step("record", func() (string, error) { return "", failStep(err, "cannot open the state directory: %v", err) })
		return
	}
	var traceLogger *slog.Logger
	httpClient := &http.Client{Timeout: c.cfg.Server.TokenTimeout}
	if c.trace != nil {
		httpClient.Transport = &tracingTransport{next: http.DefaultTransport, trace: c.trace}
		traceLogger = slog.New(slog.NewTextHandler(c.trace, &slog.HandlerOptions{
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}}))
	} else {
		traceLogger = slog.New(slog.DiscardHandler)
	}
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{
		Store:         store,
		HTTPClient:    httpClient,
		RefreshMargin: c.cfg.Server.RefreshMargin,
		Logger:        traceLogger,
	})
	if err != nil {
		c.step("record", func() (string, error) { return "", failStep(err, "%v", err) })
		return
	}

	var account *auth.Account
	c.step("record", func() (string, error) {
		exists, err := store.Exists(acct.Login)
		if err != nil {
			return "", failStep(err, "cannot read %s: %v", store.Path(acct.Login), err)
		}
		if !exists {
			return "", failStep(nil, "no authorization stored for %s (%s); run: imap-oauth-proxy authorize %s",
				acct.Login, store.Path(acct.Login), acct.Login)
		}
		account, err = mgr.Unlock(ctx, acct, password)
		if err != nil {
			if auth.KindOf(err) == auth.AuthenticationFailed {
				return "", failStep(err, "the local password does not open %s (the collector's LOGIN would fail the same way)", store.Path(acct.Login))
			}
			return "", failStep(err, "%s", auth.MessageOf(err, err.Error()))
		}
		info, _ := store.Info(acct.Login)
		return fmt.Sprintf("%s opens with the local password (written %s)", store.Path(acct.Login),
			info.Updated.Local().Format(time.RFC3339)), nil
	})

	var tok *oauth2.Token
	c.step("token", func() (string, error) {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.Server.TokenTimeout+5*time.Second)
		defer cancel()
		var err error
		tok, err = account.Token(tctx)
		if err != nil {
			return "", failStep(err, "[%s] %s", auth.KindOf(err), auth.MessageOf(err, err.Error()))
		}
		c.trace.addSecret(tok.AccessToken)
		if tok.RefreshToken != "" {
			c.trace.addSecret(tok.RefreshToken)
		}
		return fmt.Sprintf("access token from %s, valid for %s", hostOf(p.TokenURL),
			time.Until(tok.Expiry).Round(time.Second)), nil
	})

	tlsConfig, tlsErr := tlsconfig.Upstream(p.IMAPAddress, p.CAFile)
	if tlsErr != nil {
		tlsErr = failStep(tlsErr, "TLS settings of provider %s: %v", p.Name, tlsErr)
	}
	var raw net.Conn
	c.step("connect", func() (string, error) {
		d := &net.Dialer{Timeout: c.cfg.Server.DialTimeout}
		var err error
		raw, err = d.DialContext(ctx, "tcp", p.IMAPAddress)
		if err != nil {
			return "", failStep(err, "cannot connect to %s: %s; check providers.%s.imap_address and the firewall",
				p.IMAPAddress, netReason(err), p.Name)
		}
		if remote := raw.RemoteAddr().String(); remote != p.IMAPAddress {
			return fmt.Sprintf("%s (%s)", p.IMAPAddress, remote), nil
		}
		return p.IMAPAddress, nil
	})
	if raw != nil {
		defer raw.Close()
		if dl, ok := ctx.Deadline(); ok {
			raw.SetDeadline(dl)
		}
	}

	var client *imapclient.Client
	var greeting *firstLine
	var tlsState *tls.ConnectionState
	opts := &imapclient.Options{}
	if p.IMAPTLS == "starttls" {
		if c.trace != nil {
			// The connection changes under imapclient at STARTTLS: trace
			// through its DebugWriter, guessing each line's direction.
			opts.DebugWriter = c.trace
		}
		// imapclient reads the greeting, sends STARTTLS and shakes hands
		// in one call; firstLine tells when the greeting came.
		greeting = &firstLine{Conn: raw}
		startErr := tlsErr
		start, end := time.Now(), time.Now()
		if raw != nil && tlsErr == nil && c.failed == "" {
			cfg := tlsConfig.Clone()
			cfg.VerifyConnection = func(cs tls.ConnectionState) error { tlsState = &cs; return nil }
			opts.TLSConfig = cfg
			client, startErr = imapclient.NewStartTLS(greeting, opts)
			end = time.Now()
		}
		line, at, ok := greeting.get()
		if !ok {
			at = end
		}
		var gerr error
		if !ok && startErr != nil {
			gerr = failStep(startErr, "no greeting from %s: %v", p.IMAPAddress, startErr)
		}
		c.stepDone("greeting", at.Sub(start), line, gerr)
		var terr error
		switch {
		case startErr != nil && startErr == tlsErr:
			terr = tlsErr
		case startErr != nil:
			terr = failStep(startErr, "STARTTLS: %s", tlsReason(startErr, p))
		}
		c.stepDone("tls", end.Sub(at), tlsDetail(tlsState, tlsConfig.ServerName), terr)
	} else {
		var tc *tls.Conn
		c.step("tls", func() (string, error) {
			if tlsErr != nil {
				return "", tlsErr
			}
			tc = tls.Client(raw, tlsConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				return "", failStep(err, "%s", tlsReason(err, p))
			}
			cs := tc.ConnectionState()
			return tlsDetail(&cs, tlsConfig.ServerName), nil
		})
		c.step("greeting", func() (string, error) {
			greeting = &firstLine{Conn: tc}
			var conn net.Conn = greeting
			if c.trace != nil {
				conn = &tracedConn{Conn: greeting, client: c.trace.stream("C"), server: c.trace.stream("S")}
			}
			client = imapclient.New(conn, opts)
			if err := client.WaitGreeting(); err != nil {
				return "", failStep(err, "no IMAP greeting from %s: %v", p.IMAPAddress, err)
			}
			line, _, _ := greeting.get()
			return line, nil
		})
	}

	mech := p.Mechanism
	c.step(strings.ToLower(mech), func() (string, error) {
		var sc sasl.Client
		if mech == sasl.OAuthBearer {
			host, portStr, _ := net.SplitHostPort(p.IMAPAddress)
			port, _ := strconv.Atoi(portStr)
			sc = sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{Username: acct.Mailbox, Token: tok.AccessToken, Host: host, Port: port})
		} else {
			sc = auth.NewXOAUTH2Client(acct.Mailbox, tok.AccessToken)
		}
		_, ir, _ := sc.Start()
		c.trace.addSecret(base64.StdEncoding.EncodeToString(ir))
		c.trace.addSecret(base64.StdEncoding.EncodeToString([]byte(tok.AccessToken)))
		note := ""
		if caps := client.Caps(); !caps.Has(imap.Cap("AUTH=" + mech)) {
			note = fmt.Sprintf(" (the server does not announce AUTH=%s)", mech)
		}
		if err := client.Authenticate(sc); err != nil {
			return "", failStep(err, "%s%s", refusalDetail(err, acct), note)
		}
		return fmt.Sprintf("logged in as %s%s", acct.Mailbox, note), nil
	})

	c.step("list", func() (string, error) {
		boxes, err := client.List("", "*", nil).Collect()
		if err != nil {
			return "", failStep(err, "LIST failed: %v", err)
		}
		names := make([]string, 0, len(boxes))
		for _, b := range boxes {
			names = append(names, b.Mailbox)
		}
		shown := names
		if len(shown) > 8 {
			shown = append(shown[:8:8], "...")
		}
		return fmt.Sprintf("%d mailboxes: %s", len(names), strings.Join(shown, ", ")), nil
	})
	if client != nil {
		if c.failed == "" {
			client.Logout().Wait()
		}
		client.Close()
	}
	c.trace.stop()
}

// refusalDetail explains an AUTHENTICATE failure: the server's answer and
// the usual causes for the provider and grant.
func refusalDetail(err error, acct *config.Account) string {
	var answer string
	var ie *imap.Error
	var xe *auth.XOAUTH2Error
	switch {
	case errors.As(err, &ie):
		answer = "the server answered " + string(ie.Type)
		if ie.Code != "" {
			answer += " [" + string(ie.Code) + "]"
		}
		answer += " " + ie.Text
	case errors.As(err, &xe):
		answer = fmt.Sprintf("the server refused the token (XOAUTH2 status %s", xe.Status)
		if xe.Scope != "" {
			answer += ", scope " + xe.Scope
		}
		answer += ")"
	default:
		return fmt.Sprintf("AUTHENTICATE failed: %v", err)
	}
	return strings.TrimSuffix(answer, ".") + ". " + auth.RefusalAdvice(acct)
}

// tlsReason explains a failed TLS handshake.
func tlsReason(err error, p *config.Provider) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		issuer := ""
		if unknown.Cert != nil {
			issuer = " (issued by " + unknown.Cert.Issuer.String() + ")"
		}
		return fmt.Sprintf("the server's certificate is not trusted%s; for a private CA, set providers.%s.ca_file to its PEM certificate", issuer, p.Name)
	case errors.As(err, &host):
		return fmt.Sprintf("the server's certificate is not valid for %s: %v; check providers.%s.imap_address", host.Host, err, p.Name)
	case errors.As(err, &invalid):
		return fmt.Sprintf("the server's certificate is invalid: %v", err)
	}
	hint := ""
	if p.IMAPTLS == "implicit" {
		hint = fmt.Sprintf(" (if port %s expects STARTTLS, set providers.%s.imap_tls = \"starttls\")", portOf(p.IMAPAddress), p.Name)
	}
	return fmt.Sprintf("TLS handshake failed: %s%s", netReason(err), hint)
}

func tlsDetail(cs *tls.ConnectionState, host string) string {
	if cs == nil {
		return "TLS established"
	}
	d := tls.VersionName(cs.Version) + ", " + tls.CipherSuiteName(cs.CipherSuite)
	if len(cs.PeerCertificates) > 0 {
		cert := cs.PeerCertificates[0]
		d += fmt.Sprintf(", certificate for %s verified, valid until %s", host, cert.NotAfter.Format("2006-01-02"))
	}
	return d
}

// netReason shortens a network error to its last, telling part.
func netReason(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

func hostOf(rawURL string) string {
	if i := strings.Index(rawURL, "://"); i >= 0 {
		rest := rawURL[i+3:]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			rest = rest[:j]
		}
		return rest
	}
	return rawURL
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// firstLine remembers the first line read from a connection: the server
// greeting.
type firstLine struct {
	net.Conn
	mu   sync.Mutex
	buf  []byte
	line string
	at   time.Time // when the line was complete
	done bool
}

func (f *firstLine) Read(p []byte) (int, error) {
	n, err := f.Conn.Read(p)
	f.mu.Lock()
	if !f.done {
		f.buf = append(f.buf, p[:n]...)
		if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
			f.line, f.done, f.buf, f.at = strings.TrimRight(string(f.buf[:i]), "\r"), true, nil, time.Now()
		} else if len(f.buf) > 4096 {
			f.done, f.buf = true, nil
		}
	}
	f.mu.Unlock()
	return n, err
}

func (f *firstLine) get() (string, time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.line, f.at, f.line != ""
}

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
