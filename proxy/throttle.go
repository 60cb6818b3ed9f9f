package proxy

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Failed-login throttling. Failures are counted per (login, address) and per
// address within failureWindow. Each failure delays the NO answer, more for
// each earlier failure; after maxFailuresPerLogin failures of one login from
// one address, that login is refused from that address for lockoutTime
// without its password being checked. A collector that knows its password
// is never slowed down, and a guesser on another address cannot lock it out.
const (
	failureWindow       = 15 * time.Minute
	maxFailuresPerLogin = 10
	lockoutTime         = 5 * time.Minute
	maxFailureDelay     = 5 * time.Second
	// addressFailureStep: every this many failures from one address (any
	// login) add one more doubling of the delay, to slow down sprayers.
	addressFailureStep = 10
	// throttleEntries bounds the memory of the throttle.
	throttleEntries = 16384
)

// failures is the failure history of one key.
type failures struct {
	count       int
	first       time.Time
	lockedUntil time.Time
}

// throttle tracks failed logins. It is safe for concurrent use.
type throttle struct {
	baseDelay time.Duration // delay after the first failure; <= 0 disables delays
	now       func() time.Time

	mu          sync.Mutex
	byLoginAddr *lru.Cache[string, *failures]
	byAddr      *lru.Cache[string, *failures]
}

func newThrottle(baseDelay time.Duration, now func() time.Time) *throttle {
	byLoginAddr, _ := lru.New[string, *failures](throttleEntries) // only fails for size <= 0
	byAddr, _ := lru.New[string, *failures](throttleEntries)
	return &throttle{baseDelay: baseDelay, now: now, byLoginAddr: byLoginAddr, byAddr: byAddr}
}

func loginAddrKey(login, addr string) string { return login + "\x00" + addr }

// locked reports whether login is refused from addr now, and for how long.
func (t *throttle) locked(login, addr string) (bool, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f, ok := t.byLoginAddr.Get(loginAddrKey(login, addr))
	if !ok {
		return false, 0
	}
	if left := f.lockedUntil.Sub(t.now()); left > 0 {
		return true, left
	}
	return false, 0
}

// failed records a failed login and returns how long to wait before
// answering it.
func (t *throttle) failed(login, addr string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	perLogin := t.count(t.byLoginAddr, loginAddrKey(login, addr), now)
	perAddr := t.count(t.byAddr, addr, now)
	if perLogin.count >= maxFailuresPerLogin {
		perLogin.lockedUntil = now.Add(lockoutTime)
	}
	if t.baseDelay <= 0 {
		return 0
	}
	doublings := perLogin.count - 1 + perAddr.count/addressFailureStep
	delay := t.baseDelay
	for i := 0; i < doublings && delay < maxFailureDelay; i++ {
		delay *= 2
	}
	return min(delay, maxFailureDelay)
}

// count adds one failure under key, starting afresh after failureWindow.
func (t *throttle) count(c *lru.Cache[string, *failures], key string, now time.Time) *failures {
	f, ok := c.Get(key)
	if !ok || now.Sub(f.first) > failureWindow {
		f = &failures{first: now}
		c.Add(key, f)
	}
	f.count++
	return f
}

// succeeded forgets the failures of login from addr.
func (t *throttle) succeeded(login, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byLoginAddr.Remove(loginAddrKey(login, addr))
}
