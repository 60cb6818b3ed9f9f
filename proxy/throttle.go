package proxy

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Failed-login throttling, after Dovecot's auth_penalty: no lockout, but a
// growing wait before a peer's next password check, and a budget of
// failures per login across all peers. A peer is "uid N" on loopback, the
// address otherwise (see peer).
//
//   - A password whose derived key is cached (it opened the record
//     before) is never throttled: login checks the cache first.
//   - A peer with no recent failures has its password checked at once,
//     whatever other peers do, so the owner is never slowed down or locked
//     out by a guesser on another peer.
//   - A peer with f recent failures waits penalty(f) = base·2^(f-1),
//     capped at base·2^penaltyDoublings, between the start of one password
//     check and the next (with the default base of 250 ms: 0.25, 0.5, 1,
//     2, 4, 8, then 16 s). A check that would have to wait longer than the
//     cap for its turn, or while maxChecksInFlightPerPeer of the peer's
//     run already, is refused at once with NO [UNAVAILABLE] and never
//     reaches the KDF. (A peer with no failures that has that many checks
//     in progress queues further ones behind them instead.) Failures are forgotten failureMemory after the
//     peer's last one; a success does not clear them (the peer may be
//     shared: all of loopback when uids are unknown).
//   - Every failed check spends one of the login's loginBudget failures,
//     which refill at one per budgetRefill. With the budget spent, peers
//     with recent failures get no check for that login until it refills;
//     a peer with no recent failures still gets one, so rotating peers
//     gains one guess per new peer, and rotating loopback addresses gains
//     nothing (they are one uid, or one key).
const (
	failureMemory            = 15 * time.Minute
	penaltyDoublings         = 6
	loginBudget              = 20
	budgetRefill             = 45 * time.Second
	maxChecksInFlightPerPeer = 2
	// throttleEntries bounds the memory of the throttle.
	throttleEntries = 16384
)

// peerFailures is the failure history of one peer.
type peerFailures struct {
	failures  int
	last      time.Time // the last failure
	nextCheck time.Time // no check of this peer's passwords starts before
	inFlight  int       // checks admitted and not done
	// checkDone, if not nil, is closed when a check of this peer ends.
	checkDone chan struct{}
}

// failureBudget is what is left of one login's failure budget.
type failureBudget struct {
	left float64 // may go below zero: failures from fresh peers spend too
	at   time.Time
}

// throttle decides which password checks may run, and when. It is safe
// for concurrent use.
type throttle struct {
	base time.Duration // the first penalty; <= 0 disables waits and refusals by peer
	now  func() time.Time

	mu     sync.Mutex
	peers  *lru.Cache[string, *peerFailures]
	logins *lru.Cache[string, *failureBudget]
}

func newThrottle(base time.Duration, now func() time.Time) *throttle {
	peers, _ := lru.New[string, *peerFailures](throttleEntries) // only fails for size <= 0
	logins, _ := lru.New[string, *failureBudget](throttleEntries)
	return &throttle{base: base, now: now, peers: peers, logins: logins}
}

// admission is the throttle's answer for one password check.
type admission struct {
	// wait is how long to wait before checking.
	wait time.Duration
	// busy, if not nil, is closed when one of the peer's checks in
	// progress ends: wait for it (its password may then be cached), then
	// ask again.
	busy <-chan struct{}
	// refused: do not check; answer NO [UNAVAILABLE] and suggest retrying
	// in retryIn. reason is for the log.
	refused bool
	retryIn time.Duration
	reason  string
}

// maxPenalty is the longest wait between two checks of one peer.
func (t *throttle) maxPenalty() time.Duration { return t.base << penaltyDoublings }

// penalty is the wait after failures recent failures.
func (t *throttle) penalty(failures int) time.Duration {
	if failures <= 0 || t.base <= 0 {
		return 0
	}
	return t.base << (min(failures, penaltyDoublings+1) - 1)
}

// admit decides whether a password for login from peer key may be
// checked. An admitted check must be ended with done.
func (t *throttle) admit(login, key string) admission {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	pf := t.peer(key, now)
	if t.base > 0 && pf.inFlight >= maxChecksInFlightPerPeer {
		if pf.failures == 0 {
			// Several logins at once from a peer with no failures (a
			// collector's first logins after a restart): queue them.
			if pf.checkDone == nil {
				pf.checkDone = make(chan struct{})
			}
			return admission{busy: pf.checkDone}
		}
		return admission{refused: true, retryIn: max(t.base, time.Second), reason: "password checks from this peer in progress"}
	}
	if pf.failures == 0 {
		pf.inFlight++
		return admission{}
	}
	if b := t.budget(login, now); b.left < 1 {
		// Rounded up, so that retrying then finds a whole failure's worth.
		retryIn := time.Duration((1-b.left)*float64(budgetRefill)).Truncate(time.Millisecond) + time.Millisecond
		return admission{refused: true, retryIn: retryIn,
			reason: "the login's failure budget is spent"}
	}
	if t.base <= 0 {
		pf.inFlight++
		return admission{}
	}
	start := pf.nextCheck
	if start.Before(now) {
		start = now
	}
	wait := start.Sub(now)
	if wait > t.maxPenalty() {
		return admission{refused: true, retryIn: wait, reason: "this peer is throttled after failed logins"}
	}
	pf.nextCheck = start.Add(t.penalty(pf.failures))
	pf.inFlight++
	return admission{wait: wait}
}

// done ends a check admit admitted; failed reports a wrong password (or an
// unknown login).
func (t *throttle) done(login, key string, failed bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	pf := t.peer(key, now)
	pf.inFlight = max(pf.inFlight-1, 0)
	if pf.checkDone != nil {
		close(pf.checkDone)
		pf.checkDone = nil
	}
	if !failed {
		return
	}
	pf.failures++
	pf.last = now
	if next := now.Add(t.penalty(pf.failures)); next.After(pf.nextCheck) {
		pf.nextCheck = next
	}
	b := t.budget(login, now)
	b.left = max(b.left-1, -loginBudget)
}

// peer returns key's history, forgetting failures older than
// failureMemory.
func (t *throttle) peer(key string, now time.Time) *peerFailures {
	pf, ok := t.peers.Get(key)
	if !ok {
		pf = &peerFailures{}
		t.peers.Add(key, pf)
	}
	if pf.failures > 0 && now.Sub(pf.last) > failureMemory {
		pf.failures, pf.nextCheck = 0, time.Time{}
	}
	return pf
}

// budget returns login's budget, refilled up to now.
func (t *throttle) budget(login string, now time.Time) *failureBudget {
	b, ok := t.logins.Get(login)
	if !ok {
		b = &failureBudget{left: loginBudget, at: now}
		t.logins.Add(login, b)
	}
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.left = min(b.left+float64(elapsed)/float64(budgetRefill), loginBudget)
		b.at = now
	}
	return b
}
