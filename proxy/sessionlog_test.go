package proxy

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
)

// textLogger returns a logger writing to buf at level, without times.
func textLogger(buf *bytes.Buffer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
}

// TestSessionLogAttributes: a session's lines name the session, protocol,
// remote address, the load balancer (via, or proxy_header=local) and the
// uid where they are known, before the line's own attributes; a login's
// lines add login after them.
func TestSessionLogAttributes(t *testing.T) {
	client := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}
	balancer := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
	for _, tc := range []struct {
		name  string
		attrs sessionAttrs
		want  string
	}{
		{"loopback with uid", sessionAttrs{id: "a1", protocol: "imap", remote: balancer, uid: 1000},
			"session=a1 protocol=imap remote=127.0.0.1:50000 uid=1000"},
		{"uid unknown", sessionAttrs{id: "a2", protocol: "pop3", remote: client, uid: -1},
			"session=a2 protocol=pop3 remote=192.0.2.7:40000"},
		{"through a load balancer", sessionAttrs{id: "a3", protocol: "smtp", remote: client, via: balancer, uid: -1},
			"session=a3 protocol=smtp remote=192.0.2.7:40000 via=127.0.0.1:50000"},
		{"the load balancer's own", sessionAttrs{id: "a4", protocol: "imap", remote: balancer, proxyHeaderLocal: true, uid: -1},
			"session=a4 protocol=imap remote=127.0.0.1:50000 proxy_header=local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := newSessionLog(textLogger(&buf, slog.LevelDebug), tc.attrs)
			l.Info("session start", "tls", false)
			login := l.withLogin("alice")
			login.Warn("login failed", "outcome", "NO")
			l.Debug("imap", "dir", "S")
			login.Error("relay end", "reason", "closed")
			want := "level=INFO msg=\"session start\" " + tc.want + " tls=false\n" +
				"level=WARN msg=\"login failed\" " + tc.want + " login=alice outcome=NO\n" +
				"level=DEBUG msg=imap " + tc.want + " dir=S\n" +
				"level=ERROR msg=\"relay end\" " + tc.want + " login=alice reason=closed\n"
			if got := buf.String(); got != want {
				t.Errorf("logged\n%s\nwant\n%s", got, want)
			}
		})
	}
}

// TestSessionLogBuiltWhenEnabled: below the handler's level nothing is
// written and the logger with the session's attributes is not built; the
// first line at an enabled level builds it, with every attribute.
func TestSessionLogBuiltWhenEnabled(t *testing.T) {
	var buf bytes.Buffer
	l := newSessionLog(textLogger(&buf, slog.LevelWarn),
		sessionAttrs{id: "b1", protocol: "imap", remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, uid: 0})
	login := l.withLogin("alice")
	l.Info("session start")
	login.Info("login", "outcome", "OK")
	if l.Enabled(slog.LevelInfo) || !l.Enabled(slog.LevelWarn) {
		t.Error("Enabled does not follow the handler's level")
	}
	if buf.Len() != 0 || l.built.Load() != nil || login.built.Load() != nil {
		t.Fatalf("below the level: logged %q, session logger built: %v, login's: %v",
			buf.String(), l.built.Load() != nil, login.built.Load() != nil)
	}
	login.Warn("login failed")
	if got, want := buf.String(), "level=WARN msg=\"login failed\" session=b1 protocol=imap remote=127.0.0.1:1 uid=0 login=alice\n"; got != want {
		t.Errorf("logged %q, want %q", got, want)
	}
}

// TestSessionLogConcurrentFirstUse: goroutines that write a session's
// first lines at once all write every attribute.
func TestSessionLogConcurrentFirstUse(t *testing.T) {
	var buf bytes.Buffer // the handler serializes its writes
	logger := textLogger(&buf, slog.LevelInfo)
	l := newSessionLog(logger, sessionAttrs{id: "c1", protocol: "imap",
		remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}, uid: 7})
	login := l.withLogin("alice")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if i%2 == 0 {
				l.Info("x")
			} else {
				login.Info("x")
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 8 {
		t.Fatalf("%d lines, want 8:\n%s", len(lines), buf.String())
	}
	for _, line := range lines {
		if !strings.HasPrefix(line, "level=INFO msg=x session=c1 protocol=imap remote=127.0.0.1:2 uid=7") {
			t.Errorf("line %q lacks the session's attributes", line)
		}
	}
}
