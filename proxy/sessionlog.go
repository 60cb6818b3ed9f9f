package proxy

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// sessionLog is a session's logger: the server's logger with the
// session's attributes. It adds them (slog.Logger.With, which formats
// every attribute ahead) only when the first line at an enabled level is
// written: at warn level most sessions write none. It is safe for
// concurrent use.
type sessionLog struct {
	server *slog.Logger
	// parent, if not nil, is the session's log, whose attributes come
	// before login; otherwise attrs are the session's.
	parent *sessionLog
	attrs  sessionAttrs
	login  string
	built  atomic.Pointer[slog.Logger]
}

// sessionAttrs are what every line of a session names.
type sessionAttrs struct {
	id       string
	protocol config.Protocol
	remote   net.Addr // the client's, from the PROXY header if it sent one
	// via is the load balancer's address when a PROXY header named the
	// client; nil otherwise.
	via net.Addr
	// proxyHeaderLocal marks the load balancer's own connection (a PROXY
	// header's LOCAL command).
	proxyHeaderLocal bool
	uid              int // the loopback peer's uid; -1 if unknown, not logged
}

// list returns a's key-value pairs for slog.
func (a *sessionAttrs) list() []any {
	attrs := []any{"session", a.id, "protocol", string(a.protocol), "remote", a.remote.String()}
	switch {
	case a.via != nil:
		attrs = append(attrs, "via", a.via.String())
	case a.proxyHeaderLocal:
		attrs = append(attrs, "proxy_header", "local")
	}
	if a.uid >= 0 {
		attrs = append(attrs, "uid", a.uid)
	}
	return attrs
}

func newSessionLog(server *slog.Logger, attrs sessionAttrs) *sessionLog {
	return &sessionLog{server: server, attrs: attrs}
}

// withLogin returns a log whose lines also name login.
func (l *sessionLog) withLogin(login string) *sessionLog {
	return &sessionLog{server: l.server, parent: l, login: login}
}

// logger returns the slog.Logger with every attribute of l, built once.
func (l *sessionLog) logger() *slog.Logger {
	if lg := l.built.Load(); lg != nil {
		return lg
	}
	var lg *slog.Logger
	if l.parent != nil {
		lg = l.parent.logger().With("login", l.login)
	} else {
		lg = l.server.With(l.attrs.list()...)
	}
	if !l.built.CompareAndSwap(nil, lg) {
		lg = l.built.Load() // another goroutine built the same first
	}
	return lg
}

// Enabled reports whether a line at level would be written, so that a
// caller builds its attributes only then. It asks the server's handler:
// With does not change which levels slog's handlers write.
func (l *sessionLog) Enabled(level slog.Level) bool {
	return l.server.Enabled(context.Background(), level)
}

// Log writes msg with args at level, after the session's attributes.
func (l *sessionLog) Log(level slog.Level, msg string, args ...any) {
	if l.Enabled(level) {
		l.logger().Log(context.Background(), level, msg, args...)
	}
}

func (l *sessionLog) Debug(msg string, args ...any) { l.Log(slog.LevelDebug, msg, args...) }
func (l *sessionLog) Info(msg string, args ...any)  { l.Log(slog.LevelInfo, msg, args...) }
func (l *sessionLog) Warn(msg string, args ...any)  { l.Log(slog.LevelWarn, msg, args...) }
func (l *sessionLog) Error(msg string, args ...any) { l.Log(slog.LevelError, msg, args...) }
