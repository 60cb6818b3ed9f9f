package auth

import (
	"errors"
	"time"

	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// A shared store (tokenstore.Store.Shared: PostgreSQL) serves several
// instances. Their refreshes of one account are serialized by the store's
// refresh lock, and the refreshing instance saves the access token with
// the refresh token (encrypted, in the record), so that the others use it
// instead of refreshing again: one refresh per expiry across all of them.

// sharedAccess returns the access token kept in secret if the store is
// shared, the token is valid for longer than the refresh margin, and it is
// not refused (one the upstream refused); else nil.
func (m *Manager) sharedAccess(secret tokenstore.Secret, refused string) *oauth2.Token {
	if !m.store.Shared() || secret.AccessToken == "" || secret.AccessToken == refused ||
		time.Until(secret.Expiry) <= m.margin {
		return nil
	}
	return &oauth2.Token{AccessToken: secret.AccessToken, TokenType: "Bearer", Expiry: secret.Expiry}
}

// lockShared takes the account's refresh lock in the shared store and
// reads the record again. If another instance has saved a usable access
// token meanwhile, it releases the lock and returns that token. Otherwise
// it returns the release, to be called once the refreshed token is saved.
// A store that cannot be reached fails with Kind Unavailable: without the
// lock, a refresh could kill the refresh token another instance is using.
func (p *persistingSource) lockShared() (release func(), tok *oauth2.Token, err error) {
	a := p.account
	release, err = a.m.store.LockRefresh(a.m.ctx, a.login)
	if err != nil {
		a.m.logger.Warn("token refresh needs the shared token store, which is unavailable", "login", a.login, "err", err)
		return nil, nil, &Error{Kind: Unavailable, Message: "token store unavailable; retry shortly", Err: err}
	}
	changed, err := a.m.store.Reload(a.m.ctx, p.record)
	if err != nil {
		release()
		if errors.Is(err, tokenstore.ErrRecordChanged) {
			// A new authorization or a removed record: the next login
			// unlocks it afresh.
			return nil, nil, &Error{Kind: Unavailable, Message: "token record replaced; retry", Err: err}
		}
		return nil, nil, &Error{Kind: Unavailable, Message: "token store unavailable; retry shortly", Err: err}
	}
	if changed {
		// Another instance refreshed (and perhaps rotated) since.
		p.refreshToken = p.record.Secret.RefreshToken
		p.savedRT = p.refreshToken
		a.mu.Lock()
		a.generation = p.record.Info.SecretGeneration
		refused := a.refused
		a.mu.Unlock()
		if tok := a.m.sharedAccess(p.record.Secret, refused); tok != nil {
			release()
			a.mu.Lock()
			a.lastAccess = tok.AccessToken
			a.mu.Unlock()
			return nil, tok, nil
		}
	}
	return release, nil, nil
}

// While a shared store is unreachable, saving a refreshed token is tried
// again, after saveRetryFirst, doubling up to saveRetryMax, for
// saveRetryFor in all: a refresh token the provider has rotated lives only
// in this process until it is saved, and another instance that refreshes
// the account first, from the record, would present the dead one.
const (
	saveRetryFirst = 100 * time.Millisecond
	saveRetryMax   = time.Second
	saveRetryFor   = 15 * time.Second
)

// saveShared writes secret to the record, retrying while the store is
// unavailable. It runs under ReuseTokenSource's mutex, as Token does.
func (p *persistingSource) saveShared(secret tokenstore.Secret) error {
	a := p.account
	deadline := time.Now().Add(saveRetryFor)
	wait := saveRetryFirst
	for {
		err := a.m.store.Update(p.record, secret)
		if err == nil || !errors.Is(err, tokenstore.ErrStoreUnavailable) || time.Now().Add(wait).After(deadline) {
			return err
		}
		a.m.logger.Warn("saving the refreshed token failed; retrying", "login", a.login, "retry_in", wait, "err", err)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-a.m.ctx.Done():
			timer.Stop()
			return err
		}
		wait = min(2*wait, saveRetryMax)
	}
}
