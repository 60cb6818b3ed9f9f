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
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// maxUpstreamLine bounds one response line (with its literals) read from
// the upstream before the relay starts.
const maxUpstreamLine = 64 * 1024

// errTokenRefused marks an upstream NO to AUTHENTICATE: the token may be
// stale, so the caller refreshes once and retries once.
var errTokenRefused = errors.New("upstream refused the token")

// UpstreamAnswer is a tagged answer of the upstream other than OK. It is
// in the chain of the error DialUpstream returns for it.
type UpstreamAnswer struct {
	// Command is the command answered, such as "AUTHENTICATE".
	Command string
	// Status is "NO" or "BAD".
	Status string
	// Code is the response code without its brackets, such as
	// "AUTHENTICATIONFAILED" or "ALERT"; "" when there is none.
	Code string
	// Text is the human-readable rest of the line.
	Text string
}

// String returns the answer as the server sent it, without its tag.
func (a *UpstreamAnswer) String() string {
	s := a.Status
	if a.Code != "" {
		s += " [" + a.Code + "]"
	}
	if a.Text != "" {
		s += " " + a.Text
	}
	return s
}

func (a *UpstreamAnswer) Error() string { return a.Command + " " + a.String() }

// Phase names one step of an upstream login, in the order they run:
// connect, tls, greeting, capability, authenticate; with STARTTLS the
// greeting comes before tls.
type Phase string

// The phases of an upstream login.
const (
	// PhaseConnect is the TCP connection; its detail is the remote address.
	PhaseConnect Phase = "connect"
	// PhaseTLS is the TLS handshake (after STARTTLS, when configured); its
	// PhaseResult carries the connection state.
	PhaseTLS Phase = "tls"
	// PhaseGreeting is the server's greeting; its detail is the line.
	PhaseGreeting Phase = "greeting"
	// PhaseCapability is a CAPABILITY command, run only when the greeting
	// did not carry the capabilities; its detail is the list.
	PhaseCapability Phase = "capability"
	// PhaseAuthenticate is AUTHENTICATE XOAUTH2 or OAUTHBEARER; its detail
	// is the capabilities the server gave with its OK, if any.
	PhaseAuthenticate Phase = "authenticate"
)

// PhaseResult is what one phase of an upstream login did.
type PhaseResult struct {
	// Elapsed is the phase's duration.
	Elapsed time.Duration
	// Detail is the phase's outcome in a few words (see each Phase); ""
	// when it failed.
	Detail string
	// TLS is the connection state after PhaseTLS succeeded; nil otherwise.
	TLS *tls.ConnectionState
	// Err is the phase's failure, as DialUpstream returns it; nil when it
	// passed.
	Err error
}

// UpstreamLogin describes one upstream login for DialUpstream.
type UpstreamLogin struct {
	// Account is what the token is for: its provider's server and
	// mechanism, its mailbox, and for a refusal auth.RefusalAdvice.
	Account *config.Account
	// TLSConfig verifies the server; see package tls's Upstream.
	TLSConfig *tls.Config
	// DialTimeout bounds the TCP connection; zero means none beyond ctx.
	DialTimeout time.Duration
	// Token is the OAuth access token.
	Token string
	// Trace gets each protocol line, with the direction "U>" (to the
	// upstream) or "U<" (from it), the SASL payloads replaced by
	// [redacted]; nil disables it.
	Trace func(dir, line string)
	// PhaseDone, when not nil, is called as each phase ends, passed or
	// failed, in the order of the phases, from DialUpstream's goroutine.
	PhaseDone func(Phase, PhaseResult)
	// AskCapabilities asks for the capabilities after login when the OK
	// to AUTHENTICATE carried none (Microsoft 365's does not).
	AskCapabilities bool
	// ClientID is the collector's ID parameter list (RFC 2971), such as
	// ("name" "fetchmail"), sent to the upstream after login when it
	// announces ID; "" sends none.
	ClientID string
}

// UpstreamConn is an upstream IMAP connection in the authenticated state.
type UpstreamConn struct {
	nc net.Conn      // the TLS connection
	br *bufio.Reader // may hold bytes the relay must forward first
	// coalescer is the socket under nc, following its TLS records.
	coalescer *coalescingConn
	caps      string // post-login capabilities, "" when the server gave none
	// dialTime is how long TCP connect and TLS handshake took.
	dialTime time.Duration
	// trace logs protocol lines at debug level; nil disables it.
	trace func(dir, line string)
	// lastLine is the last response read, for the greeting's detail.
	lastLine string
	// release gives back the session's max_sessions slot; nil when
	// there is none. The relay calls it as soon as the upstream is gone.
	release func()
	// smtp is the authenticated submission session; nil for IMAP and POP3.
	smtp *smtp.Client
}

// Capabilities returns the capabilities the server announced with its OK
// to AUTHENTICATE, or "" when it gave none.
func (up *UpstreamConn) Capabilities() string { return up.caps }

// Conn returns the authenticated connection, for a caller that goes on
// speaking IMAP itself. Reads from it first return what the login read
// ahead. Use either Conn or the relay, not both.
func (up *UpstreamConn) Conn() net.Conn { return &bufferedConn{Conn: up.nc, br: up.br} }

// Close closes the connection and gives back its max_sessions slot, if
// it holds one.
func (up *UpstreamConn) Close() error {
	if up.release != nil {
		up.release() // runs once, however often it is called
	}
	return up.nc.Close()
}

// bufferedConn is a net.Conn whose reads go through br.
type bufferedConn struct {
	net.Conn
	br *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.br.Read(p) }

// DialUpstream dials the provider's IMAP server, secures the connection,
// and authenticates with the OAuth token: the upstream login of every
// collector session, and of the check command. Failures are *auth.Error
// values; a refused token also matches errTokenRefused. The connection's
// deadline is cleared on success.
func DialUpstream(ctx context.Context, l *UpstreamLogin) (*UpstreamConn, error) {
	addr := l.Account.Provider.IMAPAddress
	phaseStart := time.Now()
	done := func(p Phase, detail string, cs *tls.ConnectionState, err error) error {
		if l.PhaseDone != nil {
			if err != nil {
				detail, cs = "", nil
			}
			l.PhaseDone(p, PhaseResult{Elapsed: time.Since(phaseStart), Detail: detail, TLS: cs, Err: err})
		}
		phaseStart = time.Now()
		return err
	}
	start := time.Now()
	up, err := dialUpstream(ctx, l, addr)
	if err != nil {
		return nil, done(PhaseConnect, "", nil, err)
	}
	done(PhaseConnect, up.nc.RemoteAddr().String(), nil, nil)
	ok := false
	defer func() {
		if !ok {
			up.nc.Close() // the TLS connection once secure has run
		}
	}()

	var caps string
	starttls := l.Account.Provider.IMAPTLS == "starttls"
	if starttls {
		up.br = bufio.NewReader(up.nc) // only STARTTLS reads before TLS
		// Capabilities before TLS are not to be trusted (RFC 3501
		// section 6.2.1): they are asked for again after the handshake.
		if _, err := up.readGreeting(addr); done(PhaseGreeting, up.lastLine, nil, err) != nil {
			return nil, err
		}
		if err := up.startTLS(addr); err != nil {
			return nil, done(PhaseTLS, "", nil, err)
		}
	}
	if err := up.secure(ctx, l, addr, start); err != nil {
		return nil, done(PhaseTLS, "", nil, err)
	}
	tc := up.nc.(*tls.Conn)
	cs := tc.ConnectionState()
	done(PhaseTLS, tls.VersionName(cs.Version), &cs, nil)
	if !starttls {
		caps, err = up.readGreeting(addr)
		if done(PhaseGreeting, up.lastLine, nil, err) != nil {
			return nil, err
		}
	}
	if caps == "" {
		caps, err = up.capability(addr)
		if done(PhaseCapability, caps, nil, err) != nil {
			return nil, err
		}
	}
	err = up.authenticate(l, hasCap(caps, "SASL-IR"))
	if err == nil {
		id := ""
		if hasCap(caps, "ID") {
			id = l.ClientID
		}
		err = up.afterLogin(l, l.Account.Provider.Type == "microsoft", l.AskCapabilities && up.caps == "", id)
	}
	if done(PhaseAuthenticate, up.caps, nil, err) != nil {
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	ok = true
	return up, nil
}

// openUpstream dials addr for l and secures the connection with TLS. It
// is the start of a POP3 login; DialUpstream runs the same steps with
// IMAP's STARTTLS and the phase hooks between them. On error nothing
// stays open.
func openUpstream(ctx context.Context, l *UpstreamLogin, addr string) (*UpstreamConn, error) {
	start := time.Now()
	up, err := dialUpstream(ctx, l, addr)
	if err != nil {
		return nil, err
	}
	if err := up.secure(ctx, l, addr, start); err != nil {
		up.nc.Close()
		return nil, err
	}
	return up, nil
}

// dialUpstream connects to addr for l, with the login's deadline on the
// connection.
func dialUpstream(ctx context.Context, l *UpstreamLogin, addr string) (*UpstreamConn, error) {
	dialer := &net.Dialer{Timeout: l.DialTimeout, KeepAlive: time.Minute}
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, unavailable(fmt.Sprintf("upstream %s unreachable", addr), err)
	}
	if dl, has := ctx.Deadline(); has {
		raw.SetDeadline(dl)
	}
	return &UpstreamConn{nc: raw, trace: l.Trace}, nil
}

// secure runs the TLS handshake on up's plain connection and reads on
// through TLS from then on; dialTime counts from start.
func (up *UpstreamConn) secure(ctx context.Context, l *UpstreamLogin, addr string, start time.Time) error {
	up.coalescer = newCoalescingConn(up.nc)
	tc := tls.Client(up.coalescer, l.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return unavailable(fmt.Sprintf("TLS with upstream %s failed", addr), err)
	}
	up.nc, up.br = tc, newLineReader(tc) // the relay gives it back
	up.dialTime = time.Since(start)
	return nil
}

// newSASLClient returns the SASL client for l's mechanism, XOAUTH2 or
// OAUTHBEARER, towards the server at addr, and the answer to an error
// challenge that ends the exchange: empty for XOAUTH2, and for
// OAUTHBEARER the %x01 of RFC 7628 section 3.2.3, base64.
func newSASLClient(l *UpstreamLogin, addr string) (client sasl.Client, abort string) {
	if l.Account.Provider.Mechanism == sasl.OAuthBearer {
		host, portStr, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(portStr)
		return sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
				Username: l.Account.Mailbox, Token: l.Token, Host: host, Port: port}),
			base64.StdEncoding.EncodeToString([]byte{0x01})
	}
	return auth.NewXOAUTH2Client(l.Account.Mailbox, l.Token), ""
}

// tokenRefused is the error for an upstream that refused l's token with
// text; detail (the upstream's answer, what decoding its error challenge
// failed with) joins the chain when not nil. It matches errTokenRefused,
// so the caller refreshes once.
func tokenRefused(l *UpstreamLogin, text string, detail error) error {
	cause := errTokenRefused
	if detail != nil {
		cause = fmt.Errorf("%w: %w", errTokenRefused, detail)
	}
	cause = fmt.Errorf("%w; likely causes: %s", cause, auth.RefusalAdvice(l.Account))
	msg := auth.OneLine(fmt.Sprintf("upstream refused the token for %s: %s", l.Account.Mailbox, text), 300) +
		"; for the likely causes run: imap-oauth-proxy check " + l.Account.Login
	return &auth.Error{Kind: auth.AuthorizationFailed, Err: cause, Message: auth.OneLine(msg, 400)}
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
func (up *UpstreamConn) send(line, shown string) error {
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
func (up *UpstreamConn) read() (response, error) {
	line, err := readResponse(up.br)
	if err != nil {
		return response{}, err
	}
	up.lastLine = auth.OneLine(line, 1000)
	if up.trace != nil {
		up.trace("U<", up.lastLine)
	}
	return parseResponse(line), nil
}

// readGreeting reads the server greeting and returns the capabilities it
// carries, if any.
func (up *UpstreamConn) readGreeting(addr string) (string, error) {
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

// startTLS runs STARTTLS on the plain connection after the greeting
// (RFC 3501 section 6.2.1).
func (up *UpstreamConn) startTLS(addr string) error {
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
func (up *UpstreamConn) capability(addr string) (string, error) {
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
func (up *UpstreamConn) authenticate(l *UpstreamLogin, saslIR bool) error {
	addr := l.Account.Provider.IMAPAddress
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
				answer := &UpstreamAnswer{Command: "AUTHENTICATE", Status: r.status, Code: r.code, Text: r.text}
				if upstreamBusy(answer) {
					return busyError(l.Account, answer)
				}
				detail := error(answer)
				if challengeErr != nil {
					detail = fmt.Errorf("%w: %w", answer, challengeErr)
				}
				return tokenRefused(l, r.text, detail)
			default:
				answer := &UpstreamAnswer{Command: "AUTHENTICATE", Status: r.status, Code: r.code, Text: r.text}
				if upstreamBusy(answer) {
					return busyError(l.Account, answer)
				}
				return &auth.Error{Kind: auth.AuthorizationFailed, Err: answer,
					Message: auth.OneLine(fmt.Sprintf("upstream rejected the login for %s: %s", l.Account.Mailbox, r.text), 400)}
			}
		default:
			return protocolError(addr, "unexpected response to AUTHENTICATE")
		}
	}
}

// probeMailbox sends NAMESPACE after Microsoft 365 accepted the token
// (see afterLogin).
func (up *UpstreamConn) probeMailbox(l *UpstreamLogin) error {
	return up.afterLogin(l, true, false, "")
}

// afterLogin sends, in one write, the commands that follow an accepted
// AUTHENTICATE, and reads their answers in order:
//
//   - probe: NAMESPACE. When the mailbox cannot be opened, Microsoft
//     says OK to AUTHENTICATE and BAD "User is authenticated but not
//     connected." to every command after it, so the collector would get
//     OK and then an unexplained BAD. NAMESPACE is the first command that
//     fails in the published logs (MailKit#1496, node-imap#523) and
//     changes no state. Any answer but that BAD (or a busy one) passes.
//   - askCaps: CAPABILITY, whose list becomes up.caps.
//   - id: ID with the collector's parameter list, so that the provider's
//     logs name the real client. Its answer is not checked.
//
// Untagged responses (NAMESPACE, CAPABILITY, ID) are consumed.
func (up *UpstreamConn) afterLogin(l *UpstreamLogin, probe, askCaps bool, id string) error {
	var lines []string
	if probe {
		lines = append(lines, "P3 NAMESPACE")
	}
	if askCaps {
		lines = append(lines, "P4 CAPABILITY")
	}
	if id != "" {
		lines = append(lines, "P5 ID "+id)
	}
	if len(lines) == 0 {
		return nil
	}
	addr := l.Account.Provider.IMAPAddress
	if err := up.sendAll(lines); err != nil {
		return unavailable(fmt.Sprintf("upstream %s", addr), err)
	}
	for _, line := range lines {
		tag, _, _ := strings.Cut(line, " ")
		var caps string
		r, err := up.waitTagged(tag, func(u response) {
			if u.status == "CAPABILITY" {
				caps = u.text
			}
		})
		if err != nil {
			return unavailable(fmt.Sprintf("upstream %s closed after AUTHENTICATE", addr), err)
		}
		switch tag {
		case "P3":
			answer := &UpstreamAnswer{Command: "NAMESPACE", Status: r.status, Code: r.code, Text: r.text}
			if isNotConnected(answer) {
				return notConnectedError(l.Account, answer)
			}
			if upstreamBusy(answer) {
				return busyError(l.Account, answer)
			}
		case "P4":
			if r.status == "OK" {
				up.caps = caps
			}
		}
	}
	return nil
}

// sendAll writes command lines in one write, for pipelining (RFC 3501
// section 5.5).
func (up *UpstreamConn) sendAll(lines []string) error {
	var b strings.Builder
	for _, line := range lines {
		if up.trace != nil {
			up.trace("U>", line)
		}
		b.WriteString(line)
		b.WriteString("\r\n")
	}
	_, err := io.WriteString(up.nc, b.String())
	return err
}

// waitTagged reads responses until the one tagged tag, passing untagged
// ones to untagged (if not nil).
func (up *UpstreamConn) waitTagged(tag string, untagged func(response)) (response, error) {
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
	for c := range strings.FieldsSeq(caps) {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}
