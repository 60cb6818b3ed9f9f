package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// login checks the collector's credentials, logs in upstream, answers the
// collector with its own tag and, on success, relays the session. done is
// true when the session is over (successfully relayed or broken).
func (c *conn) login(tag, login, password string) (reason string, done bool) {
	start := time.Now()
	log := c.logger.With("login", login)
	if locked, left := c.srv.throttle.locked(login, c.addr); locked {
		c.srv.metrics.login(auth.Unavailable.String())
		log.Warn("login refused: too many failures from this address", "outcome", auth.Unavailable.String(), "retry_in", left.Round(time.Second))
		if c.writeStatus(tag, "NO", auth.Unavailable.String(), fmt.Sprintf(
			"Too many failed logins for this user from your address; retry in %s", left.Round(time.Minute)+time.Minute)) != nil {
			return "write failed", true
		}
		return "", false
	}
	up, err := c.connectUpstream(login, password)
	if err == nil && c.draining.Load() {
		up.nc.Close()
		err = &auth.Error{Kind: auth.Unavailable, Message: "server shutting down; retry later",
			Err: errors.New("shutdown during login")}
	}
	if err != nil {
		kind := auth.KindOf(err)
		msg := auth.MessageOf(err, "login failed")
		c.srv.metrics.login(kind.String())
		log.Warn("login failed", "outcome", kind.String(), "duration", time.Since(start).Round(time.Millisecond), "err", err)
		if kind == auth.AuthenticationFailed && !c.holdBack(c.srv.throttle.failed(login, c.addr)) {
			return "shutdown", true
		}
		if c.writeStatus(tag, "NO", kind.String(), msg) != nil {
			return "write failed", true
		}
		return "", false
	}
	c.srv.throttle.succeeded(login, c.addr)
	c.srv.metrics.login("OK")
	c.srv.metrics.observeDial(up.dialTime)
	log.Info("login", "outcome", "OK", "duration", time.Since(start).Round(time.Millisecond),
		"upstream", c.cfg.Accounts[login].Provider.IMAPAddress, "dial", up.dialTime.Round(time.Millisecond))
	code := ""
	if up.caps != "" {
		code = "CAPABILITY " + up.caps
	}
	if err := c.writeStatus(tag, "OK", code, "LOGIN completed"); err != nil {
		up.nc.Close()
		return "write failed", true
	}
	return c.relay(up, log), true
}

// holdBack waits d before a failed login is answered. It returns false if
// the server shuts down meanwhile.
func (c *conn) holdBack(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.srv.ctx.Done():
		return false
	}
}

// connectUpstream resolves the login, unlocks its token and logs in
// upstream, refreshing and retrying once if the upstream refuses a cached
// token.
func (c *conn) connectUpstream(login, password string) (*upstreamConn, error) {
	acct := c.cfg.Accounts[login]
	if acct == nil {
		c.srv.auth.Decoy(password)
		return nil, &auth.Error{Kind: auth.AuthenticationFailed, Message: "authentication failed",
			Err: errors.New("unknown login")}
	}
	ctx, cancel := context.WithTimeout(c.srv.ctx, c.cfg.Server.LoginTimeout)
	defer cancel()
	account, err := c.srv.auth.Unlock(acct, password)
	if err != nil {
		return nil, err
	}
	l := &upstreamLogin{
		trace:       c.trace,
		account:     acct,
		tlsConfig:   c.cfg.upstreamTLS[acct.Provider.Name],
		dialTimeout: c.cfg.Server.DialTimeout,
	}
	for attempt := 0; ; attempt++ {
		tok, err := account.Token(ctx)
		if err != nil {
			return nil, err
		}
		l.token = tok.AccessToken
		up, err := loginUpstream(ctx, l)
		if err == nil {
			return up, nil
		}
		if attempt > 0 || !errors.Is(err, errTokenRefused) {
			return nil, err
		}
		c.logger.Info("upstream refused the access token; refreshing once", "login", login)
		account.Refused(tok)
	}
}
