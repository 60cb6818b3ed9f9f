package proxy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// errUpstreamBusy marks an upstream answer to AUTHENTICATE that says the
// server will not take this login now, whatever the token: a limit,
// throttling or an outage. The token is not refreshed for it.
var errUpstreamBusy = errors.New("upstream busy")

// errNotConnected marks Microsoft 365's "User is authenticated but not
// connected.": the token was accepted, the mailbox cannot be opened.
var errNotConnected = errors.New("upstream authenticated the token but cannot open the mailbox")

// busyCodes are the RFC 5530 response codes (rfc/5530 section 3) by which
// a NO says the login failed for a reason other than the credentials.
var busyCodes = map[string]bool{"UNAVAILABLE": true, "LIMIT": true, "INUSE": true, "OVERQUOTA": true}

// upstreamBusy reports whether a tagged answer to AUTHENTICATE is about
// the server's state rather than the token: a NO with a code of
// busyCodes, Gmail's NO [ALERT] Too many simultaneous connections, or
// Microsoft's BAD Request is throttled.
func upstreamBusy(a *UpstreamAnswer) bool {
	code, _, _ := strings.Cut(strings.ToUpper(a.Code), " ")
	text := strings.ToLower(a.Text)
	switch {
	case a.Status == "BAD":
		return strings.Contains(text, "throttled")
	case busyCodes[code]:
		return true
	case code == "ALERT":
		return strings.Contains(text, "connection")
	}
	return false
}

// busyError is the error for an answer upstreamBusy accepts: the
// collector gets NO [UNAVAILABLE] with the upstream's own words.
func busyError(acct *config.Account, a *UpstreamAnswer) error {
	msg := fmt.Sprintf("upstream %s is busy for %s: %s; retry later", acct.Provider.IMAPAddress, acct.Mailbox, a.String())
	return &auth.Error{Kind: auth.Unavailable, Message: auth.OneLine(msg, 400), Err: fmt.Errorf("%w: %w", errUpstreamBusy, a)}
}

// isNotConnected reports whether a is Microsoft's answer to a command
// after login when the mailbox cannot be opened.
func isNotConnected(a *UpstreamAnswer) bool {
	return a.Status == "BAD" && strings.Contains(strings.ToLower(a.Text), "authenticated but not connected")
}

// NotConnectedAdvice lists the usual causes of Microsoft 365's "User is
// authenticated but not connected." for acct, and their fixes. Sources:
// simonrob/email-oauth2-proxy#74 and #275, getmail6/getmail6#221,
// jstedfast/MailKit#1494 and #1496, mscdex/node-imap#523.
func NotConnectedAdvice(acct *config.Account) string {
	m, p := acct.Mailbox, acct.Provider
	who := "the account that authorized"
	if acct.Grant == "client_credentials" {
		who = "the app's service principal"
	}
	return fmt.Sprintf("Microsoft 365 accepted the token but cannot open %s. Usual causes: %s is not %s and has no Full Access to it "+
		"(Add-MailboxPermission -Identity %s -User <%s> -AccessRights FullAccess); the token is for another tenant than the mailbox's "+
		"(check providers.%s.tenant and client_id: the app must be registered in, or consented to by, the mailbox's tenant); "+
		"or too many sessions are open to the mailbox (Microsoft allows about 16; see max_sessions)",
		m, who, m, m, who, p.Name)
}

// notConnectedError is the error for Microsoft's answer a to the probe
// after login.
func notConnectedError(acct *config.Account, a *UpstreamAnswer) error {
	msg := fmt.Sprintf("upstream accepted the token for %s but cannot open the mailbox (%s); for the likely causes run: imap-oauth-proxy check %s",
		acct.Mailbox, a.Text, acct.Login)
	return &auth.Error{Kind: auth.AuthorizationFailed, Message: auth.OneLine(msg, 400),
		Err: fmt.Errorf("%w: %w; likely causes: %s", errNotConnected, a, NotConnectedAdvice(acct))}
}
