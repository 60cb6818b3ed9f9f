package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// Timeouts of the upstream submission session after login, RFC 5321
// section 4.5.3.2: 5 minutes for a command's reply; 10 minutes for the
// reply to the end of the message, plus a margin.
const (
	smtpCommandTimeout    = 5 * time.Minute
	smtpSubmissionTimeout = 12 * time.Minute
)

// errSMTPAuthDisabled marks Microsoft's 535 5.7.139: SMTP AUTH is
// disabled for the tenant or the mailbox. A fresh token does not help.
var errSMTPAuthDisabled = errors.New("SMTP AUTH disabled for the mailbox or tenant")

// loginSMTPUpstream dials the provider's submission server, runs EHLO and
// STARTTLS (RFC 3207), and authenticates with AUTH XOAUTH2 (or
// OAUTHBEARER) with the initial response (RFC 4954), the form both
// Microsoft 365 and Gmail document. The returned connection carries the
// go-smtp client in up.smtp. Failures are *auth.Error values; a refused
// token also matches errTokenRefused.
func loginSMTPUpstream(ctx context.Context, l *UpstreamLogin) (*UpstreamConn, error) {
	addr := l.Account.Provider.SMTPAddress
	start := time.Now()
	up, err := dialUpstream(ctx, l, addr)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			up.nc.Close()
		}
	}()
	if l.Trace != nil {
		l.Trace("U>", "EHLO localhost; STARTTLS")
	}
	bounded := &loginDeadlineConn{Conn: up.nc, ctx: ctx}
	client, err := smtp.NewClientStartTLS(bounded, l.TLSConfig)
	if err != nil {
		return nil, smtpUnavailable(addr, "EHLO and STARTTLS", err)
	}
	up.dialTime = time.Since(start)
	client.CommandTimeout = max(time.Until(loginDeadline(ctx)), time.Second)
	saslClient, abort := newSASLClient(l, addr)
	sc := &smtpSASLClient{Client: saslClient, abort: []byte{}}
	if abort != "" {
		sc.abort = []byte{0x01} // OAUTHBEARER's %x01, RFC 7628 section 3.2.3
	}
	if l.Trace != nil {
		l.Trace("U>", "AUTH "+l.Account.Provider.Mechanism+" "+redactedMarker)
	}
	if err := client.Auth(sc); err != nil {
		return nil, smtpAuthError(l, addr, err, sc.challengeErr)
	}
	if l.Trace != nil {
		l.Trace("U<", "235 authenticated")
	}
	bounded.loggedIn.Store(true) // the session outlives the login's deadline
	client.CommandTimeout = smtpCommandTimeout
	client.SubmissionTimeout = smtpSubmissionTimeout
	up.smtp = client
	up.nc.SetDeadline(time.Time{})
	ok = true
	return up, nil
}

// loginDeadline is ctx's deadline, or a minute from now without one.
func loginDeadline(ctx context.Context) time.Time {
	if dl, has := ctx.Deadline(); has {
		return dl
	}
	return time.Now().Add(time.Minute)
}

// loginDeadlineConn keeps the login's deadline on a connection whose user
// (go-smtp's client) sets its own deadlines per command: until loggedIn
// is set, no deadline it sets goes past ctx's.
type loginDeadlineConn struct {
	net.Conn
	ctx      context.Context
	loggedIn atomic.Bool
}

func (c *loginDeadlineConn) SetDeadline(t time.Time) error {
	return c.Conn.SetDeadline(c.bound(t))
}

func (c *loginDeadlineConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.bound(t))
}

func (c *loginDeadlineConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.bound(t))
}

func (c *loginDeadlineConn) bound(t time.Time) time.Time {
	if c.loggedIn.Load() {
		return t
	}
	if dl, has := c.ctx.Deadline(); has && (t.IsZero() || dl.Before(t)) {
		return dl
	}
	return t
}

// smtpSASLClient answers an error challenge (Gmail's base64 JSON status)
// with abort instead of failing, so that the server's final 535 reaches
// the caller; the decoded challenge is kept in challengeErr.
type smtpSASLClient struct {
	sasl.Client
	abort        []byte
	challengeErr error
}

func (c *smtpSASLClient) Next(challenge []byte) ([]byte, error) {
	resp, err := c.Client.Next(challenge)
	if err != nil {
		c.challengeErr = err
		return c.abort, nil
	}
	return resp, nil
}

// smtpAuthError turns the upstream's answer to AUTH into an *auth.Error:
// 4xx is temporary; Microsoft's 535 5.7.139 says SMTP AUTH is disabled,
// which the operator must fix; any other refusal is the token's
// (errTokenRefused, so the caller refreshes once).
func smtpAuthError(l *UpstreamLogin, addr string, err, challengeErr error) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return smtpUnavailable(addr, "AUTH", err)
	}
	text := fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	switch {
	case se.Code >= 400 && se.Code < 500:
		return unavailable(fmt.Sprintf("upstream %s: %s", addr, auth.OneLine(text, 200)), err)
	case se.EnhancedCode == smtp.EnhancedCode{5, 7, 139}:
		return &auth.Error{Kind: auth.AuthorizationFailed,
			Message: auth.OneLine(fmt.Sprintf("upstream refused SMTP AUTH for %s: %s; the Exchange admin enables it: Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false",
				l.Account.Mailbox, text, l.Account.Mailbox), 400),
			Err: fmt.Errorf("%w: %w", errSMTPAuthDisabled, err)}
	}
	detail := err
	if challengeErr != nil {
		detail = fmt.Errorf("%w (challenge: %w)", err, challengeErr)
	}
	advice := smtpRefusalAdvice(l.Account)
	return &auth.Error{Kind: auth.AuthorizationFailed,
		Message: auth.OneLine(fmt.Sprintf("upstream refused the token for %s: %s; likely cause: %s", l.Account.Mailbox, text, advice), 400),
		Err:     fmt.Errorf("%w: %w", errTokenRefused, detail)}
}

// smtpRefusalAdvice names, for an operator, the usual reason why acct's
// submission server refuses a token its token endpoint just issued.
// (auth.RefusalAdvice speaks of IMAP's switches.)
func smtpRefusalAdvice(acct *config.Account) string {
	p := acct.Provider
	switch {
	case p.Type == "microsoft" && acct.Grant == config.GrantClientCredentials:
		return "the app lacks SMTP.SendAsApp with admin consent, or its service principal has no access to " + acct.Mailbox
	case p.Type == "microsoft":
		return "the authorization lacks SMTP.Send (add it to the app, grant consent, run authorize again), or " +
			acct.Mailbox + " is not the account that authorized and has no Send As permission for it"
	case p.Type == "google":
		return acct.Mailbox + " is not the Google account that authorized (run authorize again signed in as it)"
	}
	return fmt.Sprintf("provider %s's scopes do not allow SMTP, or accounts.%s.mailbox is wrong", p.Name, acct.Login)
}

// smtpUnavailable is the error for an upstream that failed during step
// for a reason other than a refusal of the token.
func smtpUnavailable(addr, step string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return unavailable(fmt.Sprintf("upstream %s refused %s: %d %s", addr, step, se.Code, auth.OneLine(se.Message, 200)), err)
	}
	return unavailable(fmt.Sprintf("upstream %s failed during %s", addr, step), err)
}
