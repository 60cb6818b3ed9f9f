package proxytest

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// Personality selects whose wire behaviour an Upstream reproduces before
// and around login. After a successful login, every personality hands the
// session to go-imap's in-memory server, so mailbox commands answer the
// same everywhere; the capabilities a post-login CAPABILITY command
// returns are go-imap's.
type Personality string

// The personalities. The exchanges each reproduces are quoted, with their
// public source, at the wire text below; docs/microsoft365.md and
// docs/google.md say what was assumed where the sources are silent.
const (
	// Plain is go-imap's imapserver as it is: AUTHENTICATE refusals
	// follow UpstreamOptions.GmailErrors, and there are no limits.
	Plain Personality = ""
	// Microsoft is Exchange Online (outlook.office365.com).
	Microsoft Personality = "microsoft"
	// Gmail is imap.gmail.com.
	Gmail Personality = "gmail"
)

// The wire text of the personalities.
const (
	// Microsoft 365's greeting names the backend server, UTF-16LE and
	// base64, in brackets; its CAPABILITY before login. Source: the
	// protocol logs in jstedfast/MailKit#1494 and #1496, mscdex/node-imap#523.
	microsoftGreetingText = "The Microsoft Exchange IMAP4 service is ready."
	microsoftCaps         = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+"
	// microsoftAuthOK carries no capabilities (MailKit#1494: the client
	// asks CAPABILITY again after "OK AUTHENTICATE completed.").
	microsoftAuthOK = "OK AUTHENTICATE completed."
	// microsoftRefused is the answer to a refused token: a tagged NO at
	// once, no challenge (MailKit#849, simonrob/email-oauth2-proxy#74).
	microsoftRefused = "NO AUTHENTICATE failed."
	// microsoftNotConnected answers every mailbox command after an OK to
	// AUTHENTICATE when the mailbox cannot be opened; after the second
	// such answer the server says microsoftClosed and hangs up
	// (MailKit#1496, simonrob/email-oauth2-proxy#74).
	microsoftNotConnected = "BAD User is authenticated but not connected."
	microsoftClosed       = "* BYE Connection closed. 14"
	// microsoftThrottled answers a command while the mailbox is
	// throttled, followed by microsoftClosed
	// (simonrob/email-oauth2-proxy#191; imapsync/imapsync#212, #272 quote
	// the same text with other back-off times).
	microsoftThrottled = "BAD Request is throttled. Suggested Backoff Time: %d milliseconds"
	// microsoftTokenExpired ends a session whose access token expired
	// (iroco-co/aioimaplib#83, joeyates/imap-backup#198).
	microsoftTokenExpired = "* BYE Session invalidated - AccessTokenExpired"

	// Gmail's greeting names the client's address and a session id; its
	// capabilities come with CAPABILITY, not in the greeting.
	gmailGreeting = "* OK Gimap ready for requests from %s %s"
	gmailCaps     = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER AUTH=XOAUTH"
	// gmailAuthOK carries the post-login capabilities.
	gmailAuthOK = "OK [CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584] %s authenticated (Success)"
	// gmailChallenge is the base64 JSON status Gmail sends as a "+"
	// challenge for a refused token; the client answers with an empty
	// line and gets gmailRefused. Source: Google's "OAuth 2.0 Mechanism"
	// page (developers.google.com/gmail/imap/xoauth2-protocol), which
	// shows status 401; logs of expired tokens show 400.
	gmailChallenge = `{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`
	gmailRefused   = "NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)"
	// gmailTooMany refuses a login past Gmail's 15 simultaneous
	// connections per account (zone-eu/wildduck#35 quotes it;
	// imapsync/imapsync#61 and support.google.com/mail/answer/97150 give
	// the 15).
	gmailTooMany = "NO [ALERT] Too many simultaneous connections. (Failure)"
	// gmailSessionExpired ends a long session. The wording is assumed:
	// joeyates/imap-backup#92 reports only "Session expired".
	gmailSessionExpired = "* BYE Session expired, please login again."
)

// defaultMaxSessions are the personalities' limits of simultaneous
// sessions per mailbox: Gmail's documented 15; for Microsoft, 20, the top
// of the 16-20 that imapsync/imapsync#212 and mscdex/node-imap#523 report.
var defaultMaxSessions = map[Personality]int{Gmail: 15, Microsoft: 20}

// microsoftGreeting returns Microsoft's greeting with a made-up backend
// name in its bracket.
func microsoftGreeting() string {
	units := utf16.Encode([]rune("FAKE01PR01MB0001.PROD.OUTLOOK.COM"))
	b := make([]byte, 0, 2*len(units))
	for _, u := range units {
		b = append(b, byte(u), byte(u>>8))
	}
	return "* OK " + microsoftGreetingText + " [" + base64.StdEncoding.EncodeToString(b) + "]"
}

// providerState is an Upstream's per-mailbox state for the personalities.
// Its fields are guarded by Upstream.mu.
type providerState struct {
	sessions     map[string]map[*frontConn]struct{} // authenticated, by mailbox
	notConnected map[string]bool                    // mailboxes whose logins end in BAD
	throttled    int                                // AUTHENTICATEs still to throttle
	backoff      time.Duration
}

// Throttle makes the next n AUTHENTICATE commands get Microsoft's
// throttling BAD with the suggested back-off, followed by a BYE.
func (u *Upstream) Throttle(n int, backoff time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.state.throttled, u.state.backoff = n, backoff
}

// SetNotConnected makes logins to mailbox succeed and every command after
// them fail with Microsoft's "User is authenticated but not connected."
func (u *Upstream) SetNotConnected(mailbox string, on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.state.notConnected[mailbox] = on
}

// Sessions returns how many authenticated sessions mailbox has now.
func (u *Upstream) Sessions(mailbox string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.state.sessions[mailbox])
}

// ExpireSessions ends every session of mailbox the way the personality
// ends a session whose access token expired (Microsoft) or which lasted
// too long (Gmail), and returns how many it ended.
func (u *Upstream) ExpireSessions(mailbox string) int {
	u.mu.Lock()
	var conns []*frontConn
	for fc := range u.state.sessions[mailbox] {
		conns = append(conns, fc)
	}
	u.mu.Unlock()
	bye := microsoftTokenExpired
	if u.opts.Personality == Gmail {
		bye = gmailSessionExpired
	}
	for _, fc := range conns {
		fc.bye(bye)
	}
	return len(conns)
}

// maxSessions returns the per-mailbox session limit in force.
func (u *Upstream) maxSessions() int {
	if u.opts.MaxSessions != 0 {
		return u.opts.MaxSessions
	}
	return defaultMaxSessions[u.opts.Personality]
}

// frontConn is one collector-side connection to a personality: the
// personality speaks until login, then relays to go-imap's server.
type frontConn struct {
	u  *Upstream
	nc net.Conn
	br *bufio.Reader

	wmu    sync.Mutex // serializes writes to nc: relay and bye
	closed bool
}

func (fc *frontConn) writeLine(s string) error {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	_, err := io.WriteString(fc.nc, s+"\r\n")
	return err
}

// bye sends an untagged BYE and closes the connection.
func (fc *frontConn) bye(line string) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	if !fc.closed {
		io.WriteString(fc.nc, line+"\r\n")
		fc.closed = true
	}
	fc.nc.Close()
}

// serveFront runs the personality on one accepted connection.
func (u *Upstream) serveFront(nc net.Conn) {
	defer nc.Close()
	fc := &frontConn{u: u, nc: nc, br: bufio.NewReader(nc)}
	if u.faultAt(BeforeGreeting, nc, fc.br, "") {
		return
	}
	p := u.opts.Personality
	greeting := microsoftGreeting()
	if p == Gmail {
		host, _, _ := net.SplitHostPort(nc.RemoteAddr().String())
		greeting = fmt.Sprintf(gmailGreeting, host, "a1b2c3d4e5f6mb12345678abc")
	}
	if fc.writeLine(greeting) != nil {
		return
	}
	for {
		line, err := fc.br.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		name, args, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(name) {
		case "CAPABILITY":
			caps := microsoftCaps
			if p == Gmail {
				caps = gmailCaps
			}
			err = fc.writeLine("* CAPABILITY " + caps + "\r\n" + tag + " OK CAPABILITY completed.")
		case "NOOP":
			err = fc.writeLine(tag + " OK NOOP completed.")
		case "LOGOUT":
			fc.writeLine("* BYE LOGOUT Requested\r\n" + tag + " OK LOGOUT completed.")
			return
		case "AUTHENTICATE":
			if u.faultAt(AtAuthenticate, nc, fc.br, tag) {
				return
			}
			var mailbox string
			var done bool
			mailbox, done, err = fc.authenticate(tag, args)
			if done {
				return
			}
			if mailbox != "" {
				fc.loggedIn(mailbox)
				return
			}
		default:
			err = fc.writeLine(tag + " BAD Command Error. 12")
		}
		if err != nil {
			return
		}
	}
}

// authenticate runs AUTHENTICATE XOAUTH2. It returns the mailbox on
// success; done when the connection must end.
func (fc *frontConn) authenticate(tag, args string) (mailbox string, done bool, err error) {
	u, p := fc.u, fc.u.opts.Personality
	mech, ir, _ := strings.Cut(args, " ")
	if !strings.EqualFold(mech, auth.XOAUTH2) {
		return "", false, fc.writeLine(tag + " NO Unsupported mechanism")
	}
	u.mu.Lock()
	throttled := p == Microsoft && u.state.throttled > 0
	if throttled {
		u.state.throttled--
	}
	backoff := u.state.backoff
	u.mu.Unlock()
	if throttled {
		fc.writeLine(tag + " " + fmt.Sprintf(microsoftThrottled, backoff.Milliseconds()) + "\r\n" + microsoftClosed)
		return "", true, nil
	}
	if ir == "" {
		if err := fc.writeLine("+ "); err != nil {
			return "", true, err
		}
		line, err := fc.br.ReadString('\n')
		if err != nil {
			return "", true, err
		}
		ir = strings.TrimRight(line, "\r\n")
	}
	name, token, err := decodeXOAUTH2(ir)
	if err == nil {
		if u.opts.Validate == nil {
			err = errors.New("no validator")
		} else {
			err = u.opts.Validate(name, token)
		}
	}
	if err == nil && u.user(name) == nil {
		err = errors.New("no such mailbox")
	}
	if err != nil {
		u.refusals.Add(1)
		if p == Gmail {
			if err := fc.writeLine("+ " + base64.StdEncoding.EncodeToString([]byte(gmailChallenge))); err != nil {
				return "", true, err
			}
			if _, err := fc.br.ReadString('\n'); err != nil {
				return "", true, err
			}
			return "", false, fc.writeLine(tag + " " + gmailRefused)
		}
		return "", false, fc.writeLine(tag + " " + microsoftRefused)
	}
	u.mu.Lock()
	full := u.maxSessions() > 0 && len(u.state.sessions[name]) >= u.maxSessions()
	notConnected := u.state.notConnected[name] || (full && p == Microsoft)
	if full && p == Gmail {
		u.mu.Unlock()
		u.limited.Add(1)
		return "", false, fc.writeLine(tag + " " + gmailTooMany)
	}
	if !notConnected {
		if u.state.sessions[name] == nil {
			u.state.sessions[name] = make(map[*frontConn]struct{})
		}
		u.state.sessions[name][fc] = struct{}{}
	}
	u.mu.Unlock()
	u.logins.Add(1)
	ok := microsoftAuthOK
	if p == Gmail {
		ok = fmt.Sprintf(gmailAuthOK, name)
	}
	if err := fc.writeLine(tag + " " + ok); err != nil {
		return "", true, err
	}
	if notConnected {
		fc.notConnected()
		return "", true, nil
	}
	return name, false, nil
}

func decodeXOAUTH2(ir string) (user, token string, err error) {
	raw, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		return "", "", fmt.Errorf("decoding the initial response: %w", err)
	}
	return auth.ParseXOAUTH2(raw)
}

// notConnected answers as Microsoft does after an OK to AUTHENTICATE for
// a mailbox it cannot open: CAPABILITY still works, every other command
// gets the BAD, and the second BAD comes with a BYE.
func (fc *frontConn) notConnected() {
	bads := 0
	for {
		line, err := fc.br.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		name, _, _ := strings.Cut(rest, " ")
		switch strings.ToUpper(name) {
		case "CAPABILITY":
			err = fc.writeLine("* CAPABILITY " + microsoftCaps + "\r\n" + tag + " OK CAPABILITY completed.")
		case "LOGOUT":
			fc.writeLine("* BYE LOGOUT Requested\r\n" + tag + " OK LOGOUT completed.")
			return
		default:
			bads++
			if bads >= 2 {
				fc.writeLine(tag + " " + microsoftNotConnected + "\r\n" + microsoftClosed)
				return
			}
			err = fc.writeLine(tag + " " + microsoftNotConnected)
		}
		if err != nil {
			return
		}
	}
}

// loggedIn relays the authenticated session to go-imap's server, which
// starts it in the authenticated state for mailbox.
func (fc *frontConn) loggedIn(mailbox string) {
	u := fc.u
	defer func() {
		u.mu.Lock()
		delete(u.state.sessions[mailbox], fc)
		u.mu.Unlock()
	}()
	if u.faultAt(AfterLogin, fc.nc, fc.br, "") {
		return
	}
	inner, outer := net.Pipe()
	defer outer.Close()
	u.mu.Lock()
	u.preauth[inner] = mailbox
	u.mu.Unlock()
	if !u.pipes.deliver(inner) {
		return
	}
	ibr := bufio.NewReader(outer)
	if _, err := ibr.ReadString('\n'); err != nil { // go-imap's PREAUTH greeting
		return
	}
	done := make(chan struct{}, 2)
	go func() { // collector to server; fc.br may hold pipelined commands
		io.Copy(outer, fc.br)
		outer.Close()
		done <- struct{}{}
	}()
	go func() { // server to collector, line by line so that bye lands between lines
		for {
			line, err := ibr.ReadString('\n')
			if len(line) > 0 {
				fc.wmu.Lock()
				if !fc.closed {
					_, werr := io.WriteString(fc.nc, line)
					if werr != nil {
						err = werr
					}
				}
				fc.wmu.Unlock()
			}
			if err != nil {
				break
			}
		}
		fc.nc.Close()
		done <- struct{}{}
	}()
	<-done
	fc.nc.Close()
	outer.Close()
	<-done
}

// pipeListener hands the personalities' authenticated sessions to go-imap's
// server as connections.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// deliver passes c to Accept; false when the listener is closed.
func (l *pipeListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		c.Close()
		return false
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "personality" }
