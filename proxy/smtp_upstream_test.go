package proxy

import (
	"context"
	"net"
	"testing"
	"time"
)

// deadlineConn records the last deadline set on it.
type deadlineConn struct {
	net.Conn
	last time.Time
}

func (c *deadlineConn) SetDeadline(t time.Time) error { c.last = t; return nil }

// TestLoginDeadlineConn: during the login no deadline goes past the
// login's; after it, the session's own deadlines apply, so that a session
// outlives login_timeout.
func TestLoginDeadlineConn(t *testing.T) {
	loginBy := time.Now().Add(time.Minute)
	ctx, cancel := context.WithDeadline(context.Background(), loginBy)
	defer cancel()
	inner := &deadlineConn{}
	c := &loginDeadlineConn{Conn: inner, ctx: ctx}
	later := loginBy.Add(time.Hour)
	for _, set := range []time.Time{later, {}} {
		c.SetDeadline(set)
		if !inner.last.Equal(loginBy) {
			t.Errorf("during login, SetDeadline(%v) set %v, want the login's %v", set, inner.last, loginBy)
		}
	}
	c.loggedIn.Store(true)
	for _, set := range []time.Time{later, {}} {
		c.SetDeadline(set)
		if !inner.last.Equal(set) {
			t.Errorf("after login, SetDeadline(%v) set %v", set, inner.last)
		}
	}
}
