package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// maxUpstreamLine bounds one response line (with its literals) read from
// the upstream before the relay starts.
const maxUpstreamLine = 64 * 1024

// errTokenRefused marks an upstream NO to AUTHENTICATE: the token may be
// stale, so the caller refreshes once and retries once.
var errTokenRefused = errors.New("upstream refused the token")

// upstreamConn is an upstream IMAP connection in the authenticated state.
type upstreamConn struct {
	nc net.Conn      // the TLS connection
	br *bufio.Reader // may hold bytes the relay must forward first
	// records is the socket under nc, following its TLS records.
	records *recordConn
	caps    string // post-login capabilities, "" when the server gave none
	// dialTime is how long TCP connect and TLS handshake took.
	dialTime time.Duration
	// trace logs protocol lines at debug level; nil disables it.
	trace func(dir, line string)
}

// upstreamLogin describes one upstream login.
type upstreamLogin struct {
	// trace logs protocol lines at debug level; nil disables it.
	trace func(dir, line string)
	// account is what the token is for: its provider's server and
	// mechanism, its mailbox, and for a refusal auth.RefusalAdvice.
	account     *config.Account
	tlsConfig   *tls.Config
	dialTimeout time.Duration
	token       string
}

// loginUpstream dials the provider's IMAP server, secures the connection,
// and authenticates with the OAuth token. Failures are *auth.Error values;
// a refused token also matches errTokenRefused.
func loginUpstream(ctx context.Context, l *upstreamLogin) (*upstreamConn, error) {
	addr := l.account.Provider.IMAPAddress
	var beforeTLS func(*upstreamConn) error
	if l.account.Provider.IMAPTLS == "starttls" {
		beforeTLS = func(up *upstreamConn) error { return up.startTLS(addr) }
	}
	up, err := openUpstream(ctx, l, addr, beforeTLS)
	if err != nil {
		return nil, err
	}
	tc := up.nc
	ok := false
	defer func() {
		if !ok {
			tc.Close()
		}
	}()
	var caps string
	if l.account.Provider.IMAPTLS != "starttls" {
		if caps, err = up.readGreeting(addr); err != nil {
			return nil, err
		}
	}
	if caps == "" {
		if caps, err = up.capability(addr); err != nil {
			return nil, err
		}
	}
	if err := up.authenticate(l, hasCap(caps, "SASL-IR")); err != nil {
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	ok = true
	return up, nil
}

// openUpstream dials addr for l and secures the connection with TLS,
// running beforeTLS (IMAP's STARTTLS) on the plain connection first when
// it is not nil. On error nothing stays open.
func openUpstream(ctx context.Context, l *upstreamLogin, addr string, beforeTLS func(*upstreamConn) error) (*upstreamConn, error) {
	start := time.Now()
	up, err := dialUpstream(ctx, l, addr)
	if err != nil {
		return nil, err
	}
	if beforeTLS != nil {
		err = beforeTLS(up)
	}
	if err == nil {
		err = up.secure(ctx, l, addr, start)
	}
	if err != nil {
		up.nc.Close()
		return nil, err
	}
	return up, nil
}

// dialUpstream connects to addr for l, with the login's deadline on the
// connection.
func dialUpstream(ctx context.Context, l *upstreamLogin, addr string) (*upstreamConn, error) {
	dialer := &net.Dialer{Timeout: l.dialTimeout, KeepAlive: time.Minute}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, unavailable(fmt.Sprintf("upstream %s unreachable", addr), err)
	}
	if dl, has := ctx.Deadline(); has {
		raw.SetDeadline(dl)
	}
	return &upstreamConn{nc: raw, br: bufio.NewReader(raw), trace: l.trace}, nil
}

// secure runs the TLS handshake on up's plain connection and reads on
// through TLS from then on; dialTime counts from start.
func (up *upstreamConn) secure(ctx context.Context, l *upstreamLogin, addr string, start time.Time) error {
	up.records = newRecordConn(up.nc)
	tc := tls.Client(up.records, l.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return unavailable(fmt.Sprintf("TLS with upstream %s failed", addr), err)
	}
	up.nc, up.br = tc, bufio.NewReader(tc)
	up.dialTime = time.Since(start)
	return nil
}

func unavailable(msg string, err error) error {
	return &auth.Error{Kind: auth.Unavailable, Message: auth.OneLine(msg+"; retry later", 300), Err: err}
}

func protocolError(addr, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return unavailable(fmt.Sprintf("upstream %s: %v", addr, err), err)
}

// send writes one command line; shown is what the trace logs instead of
// line when line carries a secret ("" logs line itself).
func (up *upstreamConn) send(line, shown string) error {
	if up.trace != nil {
		if shown == "" {
			shown = line
		}
		up.trace("U>", shown)
	}
	_, err := io.WriteString(up.nc, line+"\r\n")
	return err
}

// read reads one response and parses it.
func (up *upstreamConn) read() (response, error) {
	line, err := readResponse(up.br)
	if err != nil {
		return response{}, err
	}
	if up.trace != nil {
		up.trace("U<", auth.OneLine(line, 1000))
	}
	return parseResponse(line), nil
}

// readGreeting reads the server greeting and returns the capabilities it
// carries, if any.
func (up *upstreamConn) readGreeting(addr string) (string, error) {
	r, err := up.read()
	if err != nil {
		return "", unavailable(fmt.Sprintf("no greeting from upstream %s", addr), err)
	}
	switch {
	case r.tag == "*" && r.status == "OK":
		return r.caps(), nil
	case r.tag == "*" && r.status == "BYE":
		return "", unavailable(fmt.Sprintf("upstream %s refused the connection: %s", addr, r.text), errors.New("greeting BYE"))
	case r.tag == "*" && r.status == "PREAUTH":
		return "", protocolError(addr, "greeting PREAUTH: session already authenticated")
	}
	return "", protocolError(addr, "bad greeting %q", auth.OneLine(r.tag+" "+r.status+" "+r.text, 100))
}

// startTLS runs STARTTLS on the plain connection (RFC 3501 section 6.2.1).
func (up *upstreamConn) startTLS(addr string) error {
	if _, err := up.readGreeting(addr); err != nil {
		return err
	}
	if err := up.send("P0 STARTTLS", ""); err != nil {
		return unavailable(fmt.Sprintf("upstream %s", addr), err)
	}
	r, err := up.waitTagged("P0", nil)
	if err != nil {
		return unavailable(fmt.Sprintf("upstream %s STARTTLS", addr), err)
	}
	if r.status != "OK" {
		return protocolError(addr, "STARTTLS refused: %s", r.text)
	}
	if up.br.Buffered() > 0 {
		// Bytes sent before the handshake would be taken as protected.
		return protocolError(addr, "data after STARTTLS response")
	}
	return nil
}

// capability asks for the capability list.
func (up *upstreamConn) capability(addr string) (string, error) {
	if err := up.send("P1 CAPABILITY", ""); err != nil {
		return "", unavailable(fmt.Sprintf("upstream %s", addr), err)
	}
	var caps string
	r, err := up.waitTagged("P1", func(u response) {
		if u.status == "CAPABILITY" {
			caps = u.text
		}
	})
	if err != nil {
		return "", unavailable(fmt.Sprintf("upstream %s CAPABILITY", addr), err)
	}
	if r.status != "OK" {
		return "", protocolError(addr, "CAPABILITY failed: %s", r.text)
	}
	return caps, nil
}

// authenticate runs AUTHENTICATE XOAUTH2 or OAUTHBEARER. On success up.caps
// holds the capabilities the server announced with its OK, if any.
func (up *upstreamConn) authenticate(l *upstreamLogin, saslIR bool) error {
	addr := l.account.Provider.IMAPAddress
	client, abort := newSASLClient(l, addr)
	mech, ir, err := client.Start()
	if err != nil {
		return unavailable("SASL client failed", err)
	}
	encodedIR := base64.StdEncoding.EncodeToString(ir)
	cmd, shown := "P2 AUTHENTICATE "+mech, ""
	if saslIR {
		cmd, shown = cmd+" "+encodedIR, cmd+" "+redactedMarker
		encodedIR = ""
	}
	if err := up.send(cmd, shown); err != nil {
		return unavailable(fmt.Sprintf("upstream %s", addr), err)
	}
	var challengeErr error
	var untaggedCaps string
	for {
		r, err := up.read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return unavailable(fmt.Sprintf("upstream %s did not answer AUTHENTICATE in time", addr), err)
		}
		if err != nil {
			return unavailable(fmt.Sprintf("upstream %s closed during AUTHENTICATE", addr), err)
		}
		switch r.tag {
		case "+":
			answer, shown := abort, ""
			if encodedIR != "" {
				answer, shown, encodedIR = encodedIR, redactedMarker, ""
			} else if challenge, err := base64.StdEncoding.DecodeString(r.text); err != nil {
				challengeErr = fmt.Errorf("undecodable challenge: %w", err)
			} else if _, err := client.Next(challenge); err != nil {
				challengeErr = err
			}
			if err := up.send(answer, shown); err != nil {
				return unavailable(fmt.Sprintf("upstream %s", addr), err)
			}
		case "*":
			if r.status == "CAPABILITY" {
				untaggedCaps = r.text
			}
		case "P2":
			switch r.status {
			case "OK":
				up.caps = r.caps()
				if up.caps == "" {
					up.caps = untaggedCaps
				}
				return nil
			case "NO":
				return tokenRefused(l, r.text, challengeErr)
			default:
				return &auth.Error{Kind: auth.AuthorizationFailed, Err: fmt.Errorf("AUTHENTICATE %s: %s", r.status, r.text),
					Message: auth.OneLine(fmt.Sprintf("upstream rejected the login for %s: %s", l.account.Mailbox, r.text), 400)}
			}
		default:
			return protocolError(addr, "unexpected response to AUTHENTICATE")
		}
	}
}

// newSASLClient returns the SASL client for l's mechanism, XOAUTH2 or
// OAUTHBEARER, towards the server at addr, and the answer to an error
// challenge that ends the exchange: empty for XOAUTH2, and for
// OAUTHBEARER the %x01 of RFC 7628 section 3.2.3, base64.
func newSASLClient(l *upstreamLogin, addr string) (client sasl.Client, abort string) {
	if l.account.Provider.Mechanism == sasl.OAuthBearer {
		host, portStr, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(portStr)
		return sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
				Username: l.account.Mailbox, Token: l.token, Host: host, Port: port}),
			base64.StdEncoding.EncodeToString([]byte{0x01})
	}
	return auth.NewXOAUTH2Client(l.account.Mailbox, l.token), ""
}

// tokenRefused is the error for an upstream that refused l's token with
// text; challengeErr is what decoding its error challenge failed with, if
// anything. It matches errTokenRefused, so the caller refreshes once.
func tokenRefused(l *upstreamLogin, text string, challengeErr error) error {
	cause := errTokenRefused
	if challengeErr != nil {
		cause = fmt.Errorf("%w: %w", errTokenRefused, challengeErr)
	}
	cause = fmt.Errorf("%w; likely causes: %s", cause, auth.RefusalAdvice(l.account))
	msg := auth.OneLine(fmt.Sprintf("upstream refused the token for %s: %s", l.account.Mailbox, text), 300) +
		"; for the likely causes run: imap-oauth-proxy check " + l.account.Login
	return &auth.Error{Kind: auth.AuthorizationFailed, Err: cause, Message: auth.OneLine(msg, 400)}
}

// waitTagged reads responses until the one tagged tag, passing untagged
// ones to untagged (if not nil).
func (up *upstreamConn) waitTagged(tag string, untagged func(response)) (response, error) {
	for {
		r, err := up.read()
		if err != nil {
			return response{}, err
		}
		switch r.tag {
		case tag:
			return r, nil
		case "*":
			if untagged != nil {
				untagged(r)
			}
		default:
			return response{}, fmt.Errorf("unexpected response tag %q", auth.OneLine(r.tag, 20))
		}
	}
}

// readResponse reads one server response, following literals, bounded by
// maxUpstreamLine bytes in all.
func readResponse(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := readLine(br, maxUpstreamLine-sb.Len())
		if err != nil {
			return "", err
		}
		sb.Write(line)
		n, ok := trailingLiteral(line)
		if !ok {
			return sb.String(), nil
		}
		if n > int64(maxUpstreamLine-sb.Len()) {
			return "", errLineTooLong
		}
		sb.WriteString("\r\n")
		if _, err := io.CopyN(&sb, br, n); err != nil {
			return "", fmt.Errorf("reading literal: %w", err)
		}
	}
}

// trailingLiteral reports whether line ends with a literal size {N}.
func trailingLiteral(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	open := strings.LastIndexByte(string(line), '{')
	if open < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(line[open+1:len(line)-1]), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// response is a server response split into its parts: tag ("*", "+" or a
// command tag), status or untagged keyword (upper case), the bracketed
// response code if any, and the text.
type response struct {
	tag, status, code, text string
}

// caps returns the capabilities of a [CAPABILITY ...] response code.
func (r response) caps() string {
	name, rest, _ := strings.Cut(r.code, " ")
	if strings.EqualFold(name, "CAPABILITY") {
		return rest
	}
	return ""
}

func parseResponse(line string) response {
	tag, rest, _ := strings.Cut(line, " ")
	r := response{tag: tag}
	if tag == "+" {
		r.text = rest
		return r
	}
	status, rest, _ := strings.Cut(rest, " ")
	r.status = strings.ToUpper(status)
	if strings.HasPrefix(rest, "[") {
		if end := strings.IndexByte(rest, ']'); end > 0 {
			r.code = rest[1:end]
			rest = strings.TrimPrefix(rest[end+1:], " ")
		}
	}
	r.text = rest
	return r
}

// hasCap reports whether the space-separated capability list has name.
func hasCap(caps, name string) bool {
	for _, c := range strings.Fields(caps) {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}
