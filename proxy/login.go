package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// login checks the collector's credentials, logs in upstream, answers the
// collector with its own tag and, on success, relays the session. done is
// true when the session is over (successfully relayed or broken).
func (c *conn) login(tag, login, password string) (reason string, done bool) {
	up, log, err := c.openSession(login, password)
	if err != nil {
		if c.writeStatus(tag, "NO", auth.KindOf(err).String(), auth.MessageOf(err, "login failed")) != nil {
			return "write failed", true
		}
		return "", false
	}
	code := ""
	if up.caps != "" {
		code = "CAPABILITY " + up.caps
	}
	if err := c.writeStatus(tag, "OK", code, "LOGIN completed"); err != nil {
		up.Close()
		return "write failed", true
	}
	return c.relay(up, log), true
}

// openSession checks the collector's credentials and logs in upstream
// over c's protocol, counting and logging the outcome. It returns the
// upstream connection and the session's logger, or an error whose
// auth.Kind and auth.MessageOf say what to answer the collector.
func (c *conn) openSession(login, password string) (*UpstreamConn, *sessionLog, error) {
	start := time.Now()
	log := c.log.withLogin(login)
	ctx, cancel := context.WithTimeout(c.srv.ctx, c.cfg.Server.LoginTimeout)
	defer cancel()
	account, waited, err := c.checkPassword(ctx, login, password)
	if err == nil && !c.cfg.Accounts[login].Allows(c.proto.name) {
		// Said only to a collector that knows the password.
		err = &auth.Error{Kind: auth.AuthorizationFailed,
			Message: fmt.Sprintf("%s is not enabled for %s; the operator adds %q to accounts.%s.protocols and runs authorize again",
				login, c.proto.label, c.proto.name, login),
			Err: fmt.Errorf("account does not list %s in protocols", c.proto.name)}
	}
	var up *UpstreamConn
	var release func()
	if err == nil {
		// Past max_sessions, the upstream is not even asked.
		release, err = c.srv.sessions.take(c.cfg.Accounts[login])
	}
	if err == nil {
		up, err = c.connectUpstream(ctx, login, account)
	}
	if release != nil {
		if err != nil {
			release()
		} else {
			up.release = release // given back by up.Close, or earlier by the relay
		}
	}
	if err == nil && c.draining.Load() {
		up.Close()
		err = &auth.Error{Kind: auth.Unavailable, Message: "server shutting down; retry later",
			Err: errors.New("shutdown during login")}
	}
	if err != nil {
		kind := auth.KindOf(err)
		c.srv.metrics.login(c.proto.name, kind.String())
		if c.cfg.Accounts[login] != nil {
			c.srv.auth.Health().Login(login, kind.String())
		}
		log.Warn("login failed", "outcome", kind.String(), "duration", time.Since(start).Round(time.Millisecond),
			"throttle_wait", waited.Round(time.Millisecond), "err", err)
		return nil, log, err
	}
	c.srv.metrics.login(c.proto.name, "OK")
	c.srv.auth.Health().Login(login, "OK")
	c.srv.metrics.observeDial(up.dialTime)
	if log.Enabled(slog.LevelInfo) {
		log.Info("login", "outcome", "OK", "duration", time.Since(start).Round(time.Millisecond),
			"throttle_wait", waited.Round(time.Millisecond),
			"upstream", c.cfg.Accounts[login].Provider.Address(c.proto.name), "dial", up.dialTime.Round(time.Millisecond))
	}
	return up, log, nil
}

// checkPassword checks login's password and returns the account's token
// source. A password whose derived key is cached is checked at once and
// never throttled; any other is checked (by the KDF) only when the
// throttle admits it, after the wait it sets. waited is that wait.
func (c *conn) checkPassword(ctx context.Context, login, password string) (account *auth.Account, waited time.Duration, err error) {
	acct := c.cfg.Accounts[login]
	var adm admission
	for {
		if acct != nil {
			account, err := c.srv.auth.UnlockCached(acct, password)
			if !errors.Is(err, tokenstore.ErrNotCached) {
				return account, 0, err
			}
		}
		if adm = c.srv.throttle.admit(login, c.peer.key); adm.busy == nil {
			break
		}
		select {
		case <-adm.busy: // a check ended: the password may be cached now
		case <-ctx.Done():
			return nil, 0, &auth.Error{Kind: auth.Unavailable, Message: "login timed out; retry later",
				Err: fmt.Errorf("waiting for this peer's other password checks: %w", ctx.Err())}
		}
	}
	if adm.refused {
		retry := adm.retryIn.Round(time.Second) + time.Second
		return nil, 0, &auth.Error{Kind: auth.Unavailable,
			Message: fmt.Sprintf("Too many failed logins; retry in %s", retry),
			Err:     fmt.Errorf("password not checked (peer %s): %s", c.peer.key, adm.reason)}
	}
	failed := false
	defer func() { c.srv.throttle.done(login, c.peer.key, failed) }()
	if !sleepContext(ctx, adm.wait) {
		return nil, adm.wait, &auth.Error{Kind: auth.Unavailable, Message: "login timed out; retry later",
			Err: fmt.Errorf("waiting %v to check the password: %w", adm.wait, ctx.Err())}
	}
	if acct == nil {
		if err := c.srv.auth.Decoy(ctx, password); err != nil {
			return nil, adm.wait, err
		}
		failed = true
		return nil, adm.wait, &auth.Error{Kind: auth.AuthenticationFailed, Message: "authentication failed",
			Err: errors.New("unknown login")}
	}
	account, err = c.srv.auth.Unlock(ctx, acct, password)
	failed = auth.KindOf(err) == auth.AuthenticationFailed
	return account, adm.wait, err
}

// sleepContext waits d; it returns false if ctx is done first.
func sleepContext(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// connectUpstream gets the account's access token and logs in upstream, refreshing and retrying once if the upstream refuses a cached
// token.
func (c *conn) connectUpstream(ctx context.Context, login string, account *auth.Account) (*UpstreamConn, error) {
	acct := c.cfg.Accounts[login]
	l := &UpstreamLogin{
		Trace:           c.upstreamTrace(),
		Account:         acct,
		TLSConfig:       c.upstreamTLS(acct.Provider),
		DialTimeout:     c.cfg.Server.DialTimeout,
		AskCapabilities: true,
		ClientID:        c.clientID,
	}
	for attempt := 0; ; attempt++ {
		tok, err := c.sessionToken(ctx, login, account)
		if err != nil {
			return nil, err
		}
		l.Token = tok.AccessToken
		up, err := c.proto.loginUpstream(ctx, l)
		if err == nil {
			return up, nil
		}
		if attempt > 0 || !errors.Is(err, errTokenRefused) {
			return nil, err
		}
		c.log.Info("upstream refused the access token; refreshing once", "login", login)
		account.Refused(tok)
	}
}

// sessionToken returns an access token for a new session: one with at
// least session_token_min left, refreshing the cached one when it has less
// (Microsoft 365 ends a session when its token expires). A token just
// refreshed is used whatever its lifetime.
func (c *conn) sessionToken(ctx context.Context, login string, account *auth.Account) (*oauth2.Token, error) {
	refreshes := account.Refreshes()
	tok, err := account.Token(ctx)
	if err != nil {
		return nil, err
	}
	min := c.cfg.Server.SessionTokenMin
	left := time.Until(tok.Expiry)
	fresh := account.Refreshes() != refreshes // this call refreshed
	if min <= 0 || tok.Expiry.IsZero() || left >= min || fresh {
		return tok, nil
	}
	c.log.Info("access token too close to expiry for a new session; refreshing", "login", login,
		"left", left.Round(time.Second), "session_token_min", min)
	account.Refused(tok) // drops it from the cache, so Token refreshes
	return account.Token(ctx)
}

// maxTracedUpstreamLines bounds the upstream lines one login traces: an
// upstream (with a valid certificate) can stream untagged lines until
// login_timeout, and at debug level each would be a log line.
const maxTracedUpstreamLines = 64

// upstreamTrace returns the trace function for one login's upstream
// connections: c.trace, up to maxTracedUpstreamLines lines from the
// upstream, then one line saying the rest is left out. It is not safe for
// concurrent use; a login's upstream exchange is sequential.
func (c *conn) upstreamTrace() func(dir, line string) {
	received := 0
	return func(dir, line string) {
		if dir == "U<" {
			received++
			switch {
			case received == maxTracedUpstreamLines+1:
				line = fmt.Sprintf("[more upstream lines; only the first %d of a login are traced]", maxTracedUpstreamLines)
			case received > maxTracedUpstreamLines:
				return
			}
		}
		c.trace(dir, line)
	}
}
