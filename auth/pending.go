package auth

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// pendingSaves tracks the records that a refresh spilled (tokenstore's
// spill directory) while the shared store was unreachable, and wakes the
// goroutine that saves them.
type pendingSaves struct {
	count atomic.Int64  // spilled records, as last counted
	wake  chan struct{} // buffered: a save to try now
}

// defaultPendingRetry is ManagerOptions.PendingRetry when zero.
const defaultPendingRetry = 30 * time.Second

// startPending counts the records a previous run left in the spill
// directory and, unless maxWait is negative, starts the goroutine that
// saves them (at once, and again with a doubling wait up to maxWait while
// the store is unreachable) until m.ctx ends.
func (m *Manager) startPending(maxWait time.Duration) {
	m.pending.wake = make(chan struct{}, 1)
	if !m.store.Shared() || !m.store.Spilling() {
		return
	}
	if n := m.pending.recount(m.store); n > 0 {
		m.logger.Warn("rotated tokens pending save to the database, from an earlier run; saving them", "count", n)
	}
	if maxWait < 0 {
		return
	}
	if maxWait == 0 {
		maxWait = defaultPendingRetry
	}
	go m.savePendingLoop(maxWait)
}

func (m *Manager) savePendingLoop(maxWait time.Duration) {
	wait := saveRetryFirst
	timer := time.NewTimer(0)
	timer.Stop()
	for {
		var retry <-chan time.Time
		if _, err := m.SavePending(m.ctx); err != nil {
			timer.Reset(wait)
			retry = timer.C
			wait = min(2*wait, maxWait)
		} else {
			wait = saveRetryFirst
		}
		select {
		case <-m.ctx.Done():
			timer.Stop()
			return
		case <-m.pending.wake:
		case <-retry:
		}
		timer.Stop()
	}
}

// SavePending saves the records waiting in the store's spill directory,
// and drops those the store has superseded (a new authorization, a newer
// token). It returns how many still wait, and an error matching
// tokenstore.ErrStoreUnavailable if the store could not be reached.
func (m *Manager) SavePending(ctx context.Context) (int, error) {
	logins, err := m.store.Spilled()
	if err != nil {
		m.logger.Error("listing rotated tokens pending save", "err", err)
		return int(m.pending.count.Load()), err
	}
	var unavailable error
	for _, login := range logins {
		saved, err := m.store.PushSpill(ctx, login, nil)
		switch {
		case errors.Is(err, tokenstore.ErrStoreUnavailable):
			unavailable = err
		case errors.Is(err, tokenstore.ErrSpillSuperseded):
			m.logger.Warn("dropped a rotated token pending save: the database holds a newer record", "login", login, "reason", err)
		case errors.Is(err, tokenstore.ErrSpillNeedsKey):
			m.logger.Warn("rotated token pending save: the record was rewritten meanwhile; the next refresh of the account saves it",
				"login", login, "err", err)
		case err != nil:
			m.logger.Error("saving a rotated token pending save failed", "login", login, "err", err)
		case saved:
			m.logger.Info("rotated token pending save saved to the database", "login", login)
		}
		if unavailable != nil {
			break
		}
	}
	return m.pending.recount(m.store), unavailable
}

// PendingSaves returns how many rotated records wait in the spill
// directory for the shared store, as last counted.
func (m *Manager) PendingSaves() int { return int(m.pending.count.Load()) }

// recount counts the spilled records and returns the count.
func (p *pendingSaves) recount(store *tokenstore.Store) int {
	logins, err := store.Spilled()
	if err != nil {
		return int(p.count.Load())
	}
	p.count.Store(int64(len(logins)))
	return len(logins)
}

// kick recounts and wakes the saving goroutine.
func (p *pendingSaves) kick(store *tokenstore.Store) {
	p.recount(store)
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// descPendingSaves describes the gauge of rotated tokens pending save.
var descPendingSaves = prometheus.NewDesc("imap_oauth_proxy_token_saves_pending",
	"Rotated refresh tokens kept in the spill directory until the shared token store takes them.", nil, nil)
