package proxy

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// errSessionLimit marks a login refused at the account's max_sessions.
var errSessionLimit = errors.New("max_sessions reached")

// sessionSlots counts the upstream sessions open per mailbox, for
// max_sessions. The zero value is ready; it is safe for concurrent use.
type sessionSlots struct {
	mu   sync.Mutex
	open map[string]int
}

// slotKey names the upstream mailbox acct logs in to: providers' limits
// are per mailbox, whichever local login reaches it.
func slotKey(acct *config.Account) string {
	return acct.Provider.IMAPAddress + " " + strings.ToLower(acct.Mailbox)
}

// take reserves a session for acct under its MaxSessions (0: no limit).
// release gives the session back; it may be called more than once.
func (s *sessionSlots) take(acct *config.Account) (release func(), err error) {
	key := slotKey(acct)
	s.mu.Lock()
	defer s.mu.Unlock()
	if acct.MaxSessions > 0 && s.open[key] >= acct.MaxSessions {
		return nil, &auth.Error{Kind: auth.Unavailable,
			Message: fmt.Sprintf("too many sessions open for %s (max_sessions %d); retry later", acct.Login, acct.MaxSessions),
			Err:     fmt.Errorf("%w: %d sessions open to %s", errSessionLimit, s.open[key], acct.Mailbox)}
	}
	if s.open == nil {
		s.open = make(map[string]int)
	}
	s.open[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.open[key]--; s.open[key] <= 0 {
				delete(s.open, key)
			}
		})
	}, nil
}
