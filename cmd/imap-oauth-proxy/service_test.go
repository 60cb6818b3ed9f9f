package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
)

// buildBinary compiles the command once per test binary run.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "imap-oauth-proxy-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "imap-oauth-proxy")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", &buildError{out: string(out), err: err}
	}
	return bin, nil
})

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// daemon is the real binary running `serve`, with a test NOTIFY_SOCKET.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	notify *net.UnixConn
	exited chan struct{} // closed when the process has exited
	err    error         // Wait's result, once exited is closed
}

// startDaemon starts the binary with `serve -config configPath`.
func startDaemon(t *testing.T, c *cli, configPath string) *daemon {
	t.Helper()
	return startDaemonWith(t, c, configPath, nil)
}

// startDaemonWith is startDaemon with setup, if not nil, adjusting the
// command before it starts. The environment given to setup holds no
// LISTEN_* variables.
func startDaemonWith(t *testing.T, c *cli, configPath string, setup func(*exec.Cmd)) *daemon {
	t.Helper()
	bin, err := buildBinary()
	if err != nil {
		t.Fatalf("building the binary: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })
	args := []string{"serve", "-config", configPath}
	_, stderr := c.capture(args)
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+sock)
	cmd.Stderr = stderr
	if setup != nil {
		setup(cmd)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, cmd: cmd, stderr: stderr, notify: notify, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-d.exited
	})
	return d
}

// nextNotify returns the next sd_notify message. If the daemon exits
// first, it fails at once rather than at the deadline.
func (d *daemon) nextNotify() string {
	d.t.Helper()
	buf := make([]byte, 4096)
	d.notify.SetReadDeadline(time.Now().Add(testDeadline))
	// An exit wakes the Read below through a past deadline. The goroutine
	// is waited for, so it cannot move the deadline of a later call.
	wake, woken := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(woken)
		select {
		case <-d.exited:
			d.notify.SetReadDeadline(time.Now())
		case <-wake:
		}
	}()
	n, err := d.notify.Read(buf)
	close(wake)
	<-woken
	if err != nil && d.hasExited() {
		// What the daemon sent before it exited is queued already.
		n, err = readQueued(d.notify, buf)
		if err != nil {
			d.t.Fatalf("the daemon exited (%v) without sending the sd_notify message awaited\nstderr:\n%s", d.err, d.stderr)
		}
	}
	if err != nil {
		d.t.Fatalf("waiting for sd_notify: %v\nstderr:\n%s", err, d.stderr)
	}
	return string(buf[:n])
}

// hasExited reports whether the daemon's process has ended.
func (d *daemon) hasExited() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// readQueued reads one datagram already queued on conn, without waiting.
func readQueued(conn *net.UnixConn, buf []byte) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	conn.SetReadDeadline(time.Time{})
	n, rerr := 0, error(nil)
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_DONTWAIT)
		return true
	}); err != nil {
		return 0, err
	}
	return n, rerr
}

// waitLog waits until the log matches re. If the daemon exits first, it
// fails at once rather than at the deadline.
func (d *daemon) waitLog(re *regexp.Regexp) []string {
	d.t.Helper()
	deadline := time.After(testDeadline)
	for {
		m, changed := d.stderr.Match(re)
		if m != nil {
			return m
		}
		select {
		case <-changed:
		case <-d.exited:
			// Wait has returned, so stderr is complete: one last look.
			if m, _ := d.stderr.Match(re); m != nil {
				return m
			}
			d.t.Fatalf("the daemon exited (%v) before a log line matched %q\nstderr:\n%s", d.err, re, d.stderr)
		case <-deadline:
			d.t.Fatalf("no log line matched %q\nstderr:\n%s", re, d.stderr)
		}
	}
}

func (d *daemon) signal(sig os.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// TestServiceLifecycle drives the real binary as systemd would: readiness,
// SIGHUP reloads (good and broken files) while a session relays, and a
// SIGTERM drain with a relayed and a pre-auth session open.
func TestServiceLifecycle(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector", "newcomer")
	const pwOld, pwNew = "old-account-pw-canary-71", "new-account-pw-canary-72"
	l.authorize(t, c, "collector", pwOld)
	l.authorize(t, c, "newcomer", pwNew)
	server := "shutdown_timeout = \"2s\"\n"
	path := l.config(t, server, "collector")
	d := startDaemon(t, c, path)

	// READY=1 comes only once the port accepts connections.
	if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
		t.Fatalf("first sd_notify = %q, want READY=1", msg)
	}
	addr := d.waitLog(regexp.MustCompile(`msg=serving listen=(\S+)`))[1]
	probe, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("READY=1 sent but %s does not accept: %v", addr, err)
	}
	probe.Close()

	// A session opened before the reloads keeps relaying through them.
	old := dialIMAP(t, addr)
	if err := old.Login("collector", pwOld).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	reload := func(text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		d.signal(syscall.SIGHUP)
		if msg := d.nextNotify(); !strings.HasPrefix(msg, "RELOADING=1\nMONOTONIC_USEC=") {
			t.Fatalf("sd_notify at reload = %q", msg)
		}
		if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
			t.Fatalf("sd_notify after reload = %q", msg)
		}
	}

	// A valid file adds an account for new sessions.
	reload(labConfig(l.tokens.TokenURL(), l.upstream.Addr, server, "collector", "newcomer"))
	loginSelect(t, addr, "newcomer", pwNew)
	if err := old.Noop().Wait(); err != nil {
		t.Fatalf("the session from before the reload broke: %v", err)
	}

	// A broken file is rejected with its key path; the old config stays.
	reload(labConfig(l.tokens.TokenURL(), l.upstream.Addr, server+"max_conections = 5\n", "collector"))
	d.waitLog(regexp.MustCompile(`reload failed.*server\.max_conections`))
	loginSelect(t, addr, "newcomer", pwNew)

	// An account removed from the file cannot start new sessions.
	reload(labConfig(l.tokens.TokenURL(), l.upstream.Addr, server, "collector"))
	cl := dialIMAP(t, addr)
	wantNO(t, "LOGIN of a removed account", cl.Login("newcomer", pwNew).Wait(), imap.ResponseCodeAuthenticationFailed)
	if _, err := old.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("the session from before the reloads broke: %v", err)
	}

	// SIGTERM: the pre-auth session gets BYE at once, the relayed one is cut
	// after shutdown_timeout, and the process exits 0 within the bound.
	pre, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	pre.SetDeadline(time.Now().Add(testDeadline))
	preReader := bufio.NewReader(pre)
	if greeting, err := preReader.ReadString('\n'); err != nil || !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting %q, %v", greeting, err)
	}
	start := time.Now()
	d.signal(syscall.SIGTERM)
	if msg := d.nextNotify(); !strings.Contains(msg, "STOPPING=1") {
		t.Errorf("sd_notify at SIGTERM = %q", msg)
	}
	if line, err := preReader.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* BYE") {
		t.Errorf("pre-auth session got %q, %v; want * BYE", line, err)
	}
	if rest, err := io.ReadAll(preReader); err != nil || len(rest) != 0 {
		t.Errorf("pre-auth session not closed after BYE: %q, %v", rest, err)
	}
	select {
	case <-d.exited:
		if d.err != nil {
			t.Fatalf("exit: %v\nstderr:\n%s", d.err, d.stderr)
		}
	case <-time.After(2*time.Second + 10*time.Second):
		t.Fatalf("still running 12 s after SIGTERM with a 2 s drain\nstderr:\n%s", d.stderr)
	}
	if elapsed := time.Since(start); elapsed < 2*time.Second {
		t.Errorf("exited after %v: the relayed session was not given its drain time", elapsed)
	}
	if err := old.Noop().Wait(); err == nil {
		t.Error("the relayed session still works after the daemon exited")
	}
}
