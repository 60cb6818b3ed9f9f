package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestServeSurvivesEMFILE runs the real binary with a low RLIMIT_NOFILE
// and floods it with more connections than it has descriptors: accept
// fails with EMFILE. The daemon must log that, keep serving, and let a
// good login in once the flood ends.
func TestServeSurvivesEMFILE(t *testing.T) {
	const fdLimit = 48
	c := newCLI(t)
	l := newLab(t, c)
	const password = "emfile-pw-canary-3c1d"
	l.authorize(t, c, "collector", password)
	l.upstream.AddUser(mailboxOf("collector"))
	path := l.config(t, "max_connections = 1000\nmax_connections_per_ip = 1000\n", "collector")
	d := startDaemonWith(t, c, path, func(cmd *exec.Cmd) {
		// Go raises the soft limit to the hard one at start, so the shell
		// lowers both before it execs the daemon.
		script := fmt.Sprintf("ulimit -n %d && exec \"$0\" \"$@\"", fdLimit)
		cmd.Args = append([]string{"/bin/sh", "-c", script, cmd.Path}, cmd.Args[1:]...)
		cmd.Path = "/bin/sh"
	})
	addr := d.waitLog(servingRE)[1]

	var flood []net.Conn
	defer func() {
		for _, conn := range flood {
			conn.Close()
		}
	}()
	// Twice the limit: the kernel completes the handshakes into the
	// listen queue, and the daemon runs out of descriptors taking them.
	for i := 0; i < 2*fdLimit; i++ {
		conn, err := net.DialTimeout("tcp", addr, testDeadline)
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
		flood = append(flood, conn)
	}
	d.waitLog(regexp.MustCompile(`accept failed; retrying.*too many open files`))
	if d.hasExited() {
		t.Fatalf("the daemon exited under EMFILE: %v\nstderr:\n%s", d.err, d.stderr)
	}
	for _, conn := range flood {
		conn.Close()
	}
	flood = nil
	// The flood has ended once the daemon has taken every connection of
	// it, from the listen queue too, and ended its session; until then a
	// login may find no descriptor for the files of a token refresh.
	d.waitLog(regexp.MustCompile(fmt.Sprintf(`(?s)(?:msg="session end".*?){%d}`, 2*fdLimit)))
	loginSelect(t, addr, "collector", password)
	if d.hasExited() {
		t.Fatalf("the daemon exited: %v\nstderr:\n%s", d.err, d.stderr)
	}
}

// TestServeRefusesWritableStateDir: serve does not start on a state
// directory that other users could write to.
func TestServeRefusesWritableStateDir(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c)
	l.authorize(t, c, "collector", "state-dir-pw-canary-9e2b")
	path := l.config(t, "", "collector")
	if err := os.Chmod(l.stateDir(), 0o777); err != nil {
		t.Fatal(err)
	}
	r := c.run("", "serve", "-config", path)
	if r.code != 1 {
		t.Errorf("exit %d, want 1; stderr:\n%s", r.code, r.stderr)
	}
	if want := "group- or world-writable"; !strings.Contains(r.stderr, want) {
		t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
	}
}
