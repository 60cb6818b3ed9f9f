// Package haproxytest runs a private HAProxy for tests, from Debian's
// haproxy package: a configuration written to a temporary directory,
// checked with haproxy -c, and run in the foreground (-db) until the test
// ends. It also takes the haproxy.cfg blocks of the docs, so that the
// tests run the configurations operators copy.
//
// A missing haproxy skips the test, except under CI=true (where .ci/run
// installs the haproxy package): there it fails.
package haproxytest

import (
	"context"
	"fmt"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds HAProxy's start and stop.
const startTimeout = 20 * time.Second

// HAProxy is a running HAProxy. Its methods are safe for concurrent use.
type HAProxy struct {
	out *syncbuf.Buffer
}

// Start checks cfg and runs it until the test ends, and returns once
// every address in frontends accepts connections.
func Start(t testing.TB, cfg string, frontends ...string) *HAProxy {
	t.Helper()
	bin := findBinary(t)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\nconfiguration:\n%s", err, out, cfg)
	}
	h := &HAProxy{out: &syncbuf.Buffer{}}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = h.out, h.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting haproxy: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(startTimeout):
			t.Errorf("haproxy did not stop within %v after SIGTERM; killing it", startTimeout)
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("haproxy output:\n%s", h.Output())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	for _, addr := range frontends {
		if err := waitListening(ctx, addr, exited); err != nil {
			t.Fatalf("haproxy: %v\n%s", err, h.Output())
		}
	}
	return h
}

// Output returns what HAProxy has written so far: its warnings, and the
// log lines of a configuration that logs to stderr.
func (h *HAProxy) Output() string { return h.out.String() }

// WaitOutput waits until HAProxy's output matches re, for at most
// timeout, and fails the test if it does not.
func (h *HAProxy) WaitOutput(t testing.TB, re *regexp.Regexp, timeout time.Duration) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		m, changed := h.out.Match(re)
		if m != nil {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("haproxy wrote nothing matching %q within %v:\n%s", re, timeout, h.Output())
		}
	}
}

// waitListening dials addr until it connects, HAProxy exits, or ctx
// ends. A bounded poll: a listening socket gives no other signal.
func waitListening(ctx context.Context, addr string, exited <-chan struct{}) error {
	for {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before listening on %s", addr)
		case <-ctx.Done():
			return fmt.Errorf("not listening on %s: %w", addr, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// findBinary returns haproxy's path, or skips the test (fails it under
// CI=true).
func findBinary(t testing.TB) string {
	t.Helper()
	if path, err := exec.LookPath("haproxy"); err == nil {
		return path
	}
	const path = "/usr/sbin/haproxy" // not in a user's PATH on Debian
	if _, err := os.Stat(path); err == nil {
		return path
	}
	msg := "haproxy not installed (apt-get install haproxy)"
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI must install it (.ci/run)", msg)
	}
	t.Skip(msg)
	return ""
}

// FreeAddr returns a loopback address nobody listens on, for a frontend.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Replacement is a substitution DocsConfig makes: every Old becomes New.
type Replacement struct{ Old, New string }

// DocsConfig returns the first ```haproxy block of the Markdown file at
// path that contains marker, with the replacements made. Each Old must
// occur in the block, so that a test fails, rather than drifts, when the
// docs change.
func DocsConfig(t testing.TB, path, marker string, replacements ...Replacement) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var block string
	for _, m := range regexp.MustCompile("(?s)```haproxy\n(.*?)```").FindAllStringSubmatch(string(data), -1) {
		if strings.Contains(m[1], marker) {
			block = m[1]
			break
		}
	}
	if block == "" {
		t.Fatalf("%s has no haproxy block with %q", path, marker)
	}
	for _, r := range replacements {
		if !strings.Contains(block, r.Old) {
			t.Fatalf("the haproxy.cfg of %s has no %q any more: update the test", path, r.Old)
		}
		block = strings.ReplaceAll(block, r.Old, r.New)
	}
	return block
}

// RunnableHere are the replacements that let the docs' global section
// run in a test: logs to stderr (HAProxy's output) instead of syslog, and
// no user or group, which only root may switch to.
var RunnableHere = []Replacement{
	{"log /dev/log local0\n", "log stderr format raw local0\n"},
	{"    user haproxy\n", ""},
	{"    group haproxy\n", ""},
}
