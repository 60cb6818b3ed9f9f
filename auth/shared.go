package auth

import (
	"errors"
	"fmt"
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

// lockShared takes the account's refresh lock in the shared store, saves
// a record of the account that waits in the spill directory, and reads
// the record again. If another instance has saved a usable access token
// meanwhile, it releases the lock and returns that token. Otherwise it
// marks the refresh as started (MarkRefresh) and returns the release, to
// be called once the refreshed token is saved. A store that cannot be
// reached fails with Kind Unavailable: without the lock, a refresh could
// kill the refresh token another instance is using, and without the
// spilled record it would start from a dead one.
func (p *persistingSource) lockShared() (release func(), tok *oauth2.Token, err error) {
	a := p.account
	unavailable := func(err error) (func(), *oauth2.Token, error) {
		return nil, nil, &Error{Kind: Unavailable, Message: "token store unavailable; retry shortly", Err: err}
	}
	release, err = a.m.store.LockRefresh(a.m.ctx, a.login)
	if err != nil {
		a.m.logger.Warn("token refresh needs the shared token store, which is unavailable", "login", a.login, "err", err)
		return unavailable(err)
	}
	if a.m.pending.count.Load() > 0 {
		a.m.pending.kick(a.m.store) // the store is back: save what waits
	}
	before := p.record.Info.SecretGeneration
	if err := p.savePending(); err != nil {
		release()
		return unavailable(err)
	}
	changed, err := a.m.store.Reload(a.m.ctx, p.record)
	if err != nil {
		release()
		if errors.Is(err, tokenstore.ErrRecordChanged) {
			// A new authorization or a removed record: the next login
			// unlocks it afresh.
			return nil, nil, &Error{Kind: Unavailable, Message: "token record replaced; retry", Err: err}
		}
		return unavailable(err)
	}
	if changed || p.record.Info.SecretGeneration != before {
		// Another instance refreshed (and perhaps rotated) since, or this
		// one's spilled record was saved.
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
	if p.unfinished, err = a.m.store.MarkRefresh(a.m.ctx, a.login); err != nil {
		release()
		return unavailable(err)
	}
	return release, nil, nil
}

// savePending saves the account's record that waits in the spill
// directory, if any, into p.record. A spill that the store's record has
// superseded is dropped (and logged); one that cannot be saved is an
// error, since the store's record may hold a refresh token it killed.
func (p *persistingSource) savePending() error {
	a := p.account
	if !a.m.store.HasSpill(a.login) {
		return nil
	}
	saved, err := a.m.store.PushSpill(a.m.ctx, a.login, p.record)
	switch {
	case errors.Is(err, tokenstore.ErrSpillSuperseded):
		a.m.logger.Warn("dropped a rotated token pending save: the database holds a newer record", "login", a.login, "reason", err)
	case err != nil:
		return err
	case saved:
		a.m.logger.Info("rotated token pending save saved to the database", "login", a.login)
	}
	a.m.pending.recount(a.m.store)
	return nil
}

// A refresh that ended in invalid_grant while the store records another
// one that started within unfinishedGrace and never saved its record may
// have been refused only because that other refresh rotated the token:
// its instance may still save the new one from its spill. The account is
// then not lost: the login gets Unavailable, and the token endpoint is
// asked again pendingHold later, or at once when the record changes.
// After unfinishedGrace the refusal is final.
const (
	unfinishedGrace = 24 * time.Hour
	pendingHold     = time.Minute
)

// sharedFailure returns the collector's answer to a failed refresh of a
// shared account, authErr unless the refusal may be due to a rotation
// whose save is pending elsewhere (see unfinishedGrace). It clears the
// store's mark of this refresh when the token endpoint answered, so
// that nothing was rotated.
func (p *persistingSource) sharedFailure(err error, authErr *Error) *Error {
	a := p.account
	var re *oauth2.RetrieveError
	answered := errors.As(err, &re)
	pendingElsewhere := !p.unfinished.IsZero() && time.Since(p.unfinished) < unfinishedGrace
	if isRevocation(err) && pendingElsewhere {
		held := &Error{Kind: Unavailable, Err: err, Message: fmt.Sprintf(
			"refresh token refused, but a refresh of it by another instance started at %s and never saved its record; "+
				"that instance may still save the rotated token: retry later", p.unfinished.UTC().Format(time.RFC3339))}
		a.m.logger.Warn("refresh token refused while another instance's rotation may be pending save; not final yet",
			"login", a.login, "final_after", p.unfinished.Add(unfinishedGrace).UTC().Format(time.RFC3339), "err", err)
		a.mu.Lock()
		a.revoked, a.heldUntil = held, time.Now().Add(pendingHold)
		a.mu.Unlock()
		return held
	}
	if answered && (p.unfinished.IsZero() || isRevocation(err)) {
		// No rotation happened, or the refusal is final: the mark no
		// longer protects anything.
		if uerr := a.m.store.UnmarkRefresh(a.m.ctx, a.login); uerr != nil {
			a.m.logger.Warn("clearing the refresh mark failed", "login", a.login, "err", uerr)
		}
	}
	return authErr
}

// Without a spill directory, saving a refreshed token to an unreachable
// shared store is tried again, after saveRetryFirst, doubling up to
// saveRetryMax, for Manager.saveRetryFor (saveRetryFor by default): a
// refresh token the provider has rotated lives only in this process until
// it is saved.
const (
	saveRetryFirst = 100 * time.Millisecond
	saveRetryMax   = time.Second
	saveRetryFor   = 15 * time.Second
)

// saveShared writes secret to the record. A rotated secret goes to the
// spill directory first, if the store has one: then it is safe on disk,
// and if the store cannot take it now, it is saved later (pendingSaves)
// and the refresh succeeds. Otherwise the save is retried while the store
// is unavailable. It runs under ReuseTokenSource's mutex, as Token does.
func (p *persistingSource) saveShared(secret tokenstore.Secret, rotated bool) error {
	a := p.account
	if rotated && a.m.store.Spilling() {
		err := a.m.store.Spill(p.record, secret)
		if err == nil {
			_, err = a.m.store.PushSpill(a.m.ctx, a.login, p.record)
			if err == nil || errors.Is(err, tokenstore.ErrSpillSuperseded) {
				return err
			}
			a.m.logger.Warn("rotated token pending save to the database; saving it when the database is back",
				"login", a.login, "err", err)
			a.m.pending.kick(a.m.store)
			return nil
		}
		a.m.logger.Error("spilling the rotated token failed; saving it to the database directly", "login", a.login, "err", err)
	}
	deadline := time.Now().Add(a.m.saveRetryFor)
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
