package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/tlsconfig"
)

// The steps of check that are not phases of the upstream login (those are
// named by proxy.Phase), as their lines name them.
const (
	stepRecord = "record" // the token store opens with the local password
	stepToken  = "token"  // the token endpoint gives an access token
	stepList   = "list"   // the mailboxes list over the logged-in connection
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
	fs := newCommandFlags("check", stderr)
	verbose := fs.Bool("v", false, "add the protocol trace (secrets redacted)")
	timeout := fs.Duration("timeout", 0, "bound on the whole check (default: the login_timeout plus the token_timeout)")
	login, cfg, acct, err := fs.parseAccount(args)
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
	// printed holds the steps whose line was printed.
	printed map[string]bool
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
	c.markPrinted(name)
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
	c.markPrinted(name)
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

func (c *checker) markPrinted(name string) {
	if c.printed == nil {
		c.printed = make(map[string]bool)
	}
	c.printed[name] = true
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
	store, err := openStore(c.cfg)
	if err != nil {
		c.step(stepRecord, func() (string, error) { return "", failStep(err, "cannot open the token store: %v", err) })
		return
	}
	defer store.Close()
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
		c.step(stepRecord, func() (string, error) { return "", failStep(err, "%v", err) })
		return
	}

	var account *auth.Account
	c.step(stepRecord, func() (string, error) {
		exists, err := store.Exists(acct.Login)
		if err != nil {
			return "", failStep(err, "cannot read %s: %v", store.Where(acct.Login), err)
		}
		if !exists {
			return "", failStep(nil, "no authorization stored for %s (%s); run: imap-oauth-proxy authorize %s",
				acct.Login, store.Where(acct.Login), acct.Login)
		}
		account, err = mgr.Unlock(ctx, acct, password)
		if err != nil {
			if auth.KindOf(err) == auth.AuthenticationFailed {
				return "", failStep(err, "the local password does not open %s (the collector's LOGIN would fail the same way)", store.Where(acct.Login))
			}
			return "", failStep(err, "%s", auth.MessageOf(err, err.Error()))
		}
		info, _ := store.Info(acct.Login)
		return fmt.Sprintf("%s opens with the local password (written %s)", store.Where(acct.Login),
			info.Updated.Local().Format(time.RFC3339)), nil
	})

	var tok *oauth2.Token
	c.step(stepToken, func() (string, error) {
		tctx, cancel := context.WithTimeout(ctx, c.cfg.Server.TokenTimeout+5*time.Second)
		defer cancel()
		var err error
		tok, err = account.Token(tctx)
		if err != nil {
			return "", failStep(err, "[%s] %s", auth.KindOf(err), auth.MessageOf(err, err.Error()))
		}
		c.trace.addSecret(tok.AccessToken)
		c.trace.addSecret(base64.StdEncoding.EncodeToString([]byte(tok.AccessToken)))
		if tok.RefreshToken != "" {
			c.trace.addSecret(tok.RefreshToken)
		}
		return fmt.Sprintf("access token from %s, valid for %s", hostOf(p.TokenURL),
			time.Until(tok.Expiry).Round(time.Second)), nil
	})

	if c.failed != "" {
		c.skipUpstream()
		c.trace.stop()
		return
	}
	tlsConfig, err := tlsconfig.Upstream(p.IMAPAddress, p.CAFile)
	if err != nil {
		c.stepDone(string(proxy.PhaseTLS), 0, "", failStep(err, "TLS settings of provider %s: %v", p.Name, err))
		c.skipUpstream()
		return
	}
	up := c.login(ctx, tok, tlsConfig)
	c.skipUpstream()
	if up != nil {
		c.list(ctx, up)
	}
	c.otherProtocols(ctx, tok)
	c.trace.stop()
}

// missingScopes returns the scopes the account's protocols need that the
// token endpoint did not grant, when its answer says what it granted
// (Microsoft's does, in "scope"); nil when it does not say.
func missingScopes(tok *oauth2.Token, acct *config.Account) []string {
	granted, _ := tok.Extra("scope").(string)
	if granted == "" || acct.Grant.AppOnly() {
		return nil
	}
	have := strings.Fields(granted)
	var missing []string
	for _, s := range acct.Scopes() {
		if s != "offline_access" && !slices.Contains(have, s) {
			missing = append(missing, s)
		}
	}
	return missing
}

// otherProtocols logs in once over each protocol besides IMAP that the
// account lists (pop3, smtp), with the daemon's own login for it, and
// prints a step line for each.
func (c *checker) otherProtocols(ctx context.Context, tok *oauth2.Token) {
	p, acct := c.acct.Provider, c.acct
	for _, proto := range acct.Protocols {
		if proto == config.IMAP || c.printed[string(proto)] { // skipped already
			continue
		}
		addr := p.Address(proto)
		c.step(string(proto), func() (string, error) {
			up, err := proxy.LoginUpstream(ctx, proto, &proxy.UpstreamLogin{
				Account: acct, DialTimeout: c.cfg.Server.DialTimeout, Token: tok.AccessToken})
			if err != nil {
				hint := ""
				if missing := missingScopes(tok, acct); len(missing) > 0 {
					hint = fmt.Sprintf("; the stored authorization lacks %s, granted before %s was added to protocols: run imap-oauth-proxy authorize -force %s",
						strings.Join(missing, " "), proto, acct.Login)
				}
				return "", failStep(err, "%s login to %s: %s%s", strings.ToUpper(string(proto)), addr, refusalDetail(err, acct), hint)
			}
			up.Close()
			return fmt.Sprintf("logged in to %s as %s", addr, acct.Mailbox), nil
		})
	}
}

// upstreamSteps are the steps of the upstream login in the order check
// prints them, capability only when it ran.
func (c *checker) upstreamSteps() []string {
	mech := strings.ToLower(c.acct.Provider.Mechanism)
	connect, secure := string(proxy.PhaseConnect), string(proxy.PhaseTLS)
	greeting, capability := string(proxy.PhaseGreeting), string(proxy.PhaseCapability)
	steps := []string{connect, secure, greeting, capability, mech, stepList}
	if c.acct.Provider.IMAPTLS == "starttls" {
		steps = []string{connect, greeting, secure, capability, mech, stepList}
	}
	for _, proto := range c.acct.Protocols {
		if proto != config.IMAP {
			steps = append(steps, string(proto))
		}
	}
	return steps
}

// skipUpstream prints a skip line for every upstream step not yet
// printed, after a failure; capability is left out, as it may not have
// been needed.
func (c *checker) skipUpstream() {
	if c.failed == "" {
		return
	}
	for _, name := range c.upstreamSteps() {
		if !c.printed[name] && name != string(proxy.PhaseCapability) {
			c.step(name, nil)
		}
	}
}

// login logs in upstream with the daemon's own code, proxy.DialUpstream,
// and prints a step line as each of its phases ends. It returns the
// authenticated connection, or nil after a failed step.
func (c *checker) login(ctx context.Context, tok *oauth2.Token, tlsConfig *tls.Config) *proxy.UpstreamConn {
	p, acct := c.acct.Provider, c.acct
	mech := p.Mechanism
	var offered string // the capabilities before login
	l := &proxy.UpstreamLogin{
		Account:     acct,
		TLSConfig:   tlsConfig,
		DialTimeout: c.cfg.Server.DialTimeout,
		Token:       tok.AccessToken,
		PhaseDone: func(phase proxy.Phase, r proxy.PhaseResult) {
			name, detail, err := string(phase), r.Detail, r.Err
			switch phase {
			case proxy.PhaseConnect:
				if err != nil {
					err = failStep(err, "cannot connect to %s: %s; check providers.%s.imap_address and the firewall",
						p.IMAPAddress, netReason(err), p.Name)
				} else if detail != p.IMAPAddress {
					detail = fmt.Sprintf("%s (%s)", p.IMAPAddress, detail)
				}
			case proxy.PhaseTLS:
				if err != nil {
					err = failStep(err, "%s", tlsReason(err, p))
				} else {
					detail = tlsDetail(r.TLS, tlsConfig.ServerName)
				}
			case proxy.PhaseGreeting:
				offered = detail
				if err != nil {
					err = failStep(err, "no IMAP greeting from %s: %s", p.IMAPAddress, auth.MessageOf(err, err.Error()))
				}
			case proxy.PhaseCapability:
				offered = detail
				if err != nil {
					err = failStep(err, "CAPABILITY failed: %s", auth.MessageOf(err, err.Error()))
				}
			case proxy.PhaseAuthenticate:
				name = strings.ToLower(mech)
				note := ""
				if !strings.Contains(strings.ToUpper(offered), "AUTH="+mech) {
					note = fmt.Sprintf(" (the server does not announce AUTH=%s)", mech)
				}
				if err != nil {
					err = failStep(err, "%s%s", refusalDetail(err, acct), note)
				} else {
					detail = fmt.Sprintf("logged in as %s%s", acct.Mailbox, note)
				}
			}
			c.stepDone(name, r.Elapsed, detail, err)
		},
	}
	if c.trace != nil {
		client, server := c.trace.stream("C"), c.trace.stream("S")
		l.Trace = func(dir, line string) {
			w := server
			if dir == "U>" {
				w = client
			}
			io.WriteString(w, line+"\n")
		}
	}
	up, err := proxy.DialUpstream(ctx, l)
	if err != nil {
		return nil
	}
	return up
}

// list lists the mailboxes over the authenticated connection with
// go-imap's client, which starts on a PREAUTH greeting of check's own.
func (c *checker) list(ctx context.Context, up *proxy.UpstreamConn) {
	conn := up.Conn()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if c.trace != nil {
		conn = &tracedConn{Conn: conn, client: c.trace.stream("C"), server: c.trace.stream("S")}
	}
	greeting := "* PREAUTH "
	if caps := up.Capabilities(); caps != "" {
		greeting += "[CAPABILITY " + caps + "] "
	}
	greeting += "logged in by imap-oauth-proxy check\r\n"
	client := imapclient.New(&preludeConn{Conn: conn, r: io.MultiReader(strings.NewReader(greeting), conn)}, nil)
	c.step(stepList, func() (string, error) {
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
	if c.failed == "" {
		client.Logout().Wait()
	}
	client.Close()
}

// preludeConn is a net.Conn whose reads come from r: a line of check's
// own, then the connection.
type preludeConn struct {
	net.Conn
	r io.Reader
}

func (p *preludeConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// refusalDetail explains an AUTHENTICATE failure: the server's answer and
// the usual causes for the provider and grant.
func refusalDetail(err error, acct *config.Account) string {
	var parts []string
	var xe *auth.XOAUTH2Error
	if errors.As(err, &xe) {
		s := "the server refused the token (XOAUTH2 status " + xe.Status
		if xe.Scope != "" {
			s += ", scope " + xe.Scope
		}
		parts = append(parts, s+")")
	}
	var answer *proxy.UpstreamAnswer
	switch {
	case !errors.As(err, &answer):
		return fmt.Sprintf("AUTHENTICATE failed: %s", auth.MessageOf(err, err.Error()))
	case auth.KindOf(err) == auth.Unavailable:
		// A limit or throttling: the token was not what failed.
		return fmt.Sprintf("the server answered %s %s: it will not take this login now, whatever the token; "+
			"the collector gets NO [UNAVAILABLE] and retries. If it persists, lower the sessions open to %s "+
			"(max_sessions) or wait for the back-off", answer.Command, answer.String(), acct.Mailbox)
	case answer.Command == "NAMESPACE":
		return fmt.Sprintf("the server said OK to AUTHENTICATE, then %s to NAMESPACE. %s", answer.String(), proxy.NotConnectedAdvice(acct))
	}
	parts = append(parts, "the server answered "+answer.String())
	return strings.TrimSuffix(strings.Join(parts, " and "), ".") + ". " + auth.RefusalAdvice(acct)
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
