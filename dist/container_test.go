//go:build linux

package dist

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The root filesystem the containers boot: Debian 12 with systemd, and
// the programs the operator's path uses (make for `make install`, curl as
// the collector, openssl for a local certificate).
const (
	rootfsSuite    = "bookworm"
	rootfsPackages = "systemd,systemd-sysv,dbus,libnss-systemd,make,curl,openssl,procps,iproute2"
)

// Deadlines for the container's own steps; each is far above what they
// take (systemd boots in under a second, a command in milliseconds).
const (
	bootTimeout     = 60 * time.Second
	commandTimeout  = 60 * time.Second
	poweroffTimeout = 30 * time.Second
)

// hostTools are the programs the suite runs on the host.
var hostTools = []string{"systemd-nspawn", "debootstrap", "nsenter"}

// needContainers skips the test when containers cannot be booted here, or
// fails it under CI=true, where .ci/run installs what the suite needs.
func needContainers(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots containers; not in -short")
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range hostTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("cannot boot systemd in a container: missing %s (run as root; apt-get install systemd-container debootstrap)",
		strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// debianMirror returns the Debian mirror apt on this machine uses, so that
// debootstrap reaches what apt reaches.
func debianMirror(t *testing.T) string {
	t.Helper()
	uriRE := regexp.MustCompile(`(?m)^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)`)
	paths, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	paths = append(paths, "/etc/apt/sources.list")
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, m := range uriRE.FindAllStringSubmatch(string(data), -1) {
			if !strings.Contains(m[1], "security") {
				return m[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// rootfs returns a Debian root filesystem built by debootstrap, cached
// under /var/cache by its package list, so that only the first run (about
// a minute) pays for it. Containers boot it with --volatile=overlay and
// never change it.
func rootfs(t *testing.T) string {
	t.Helper()
	sum := sha256.Sum256([]byte(rootfsSuite + "\n" + rootfsPackages))
	cache := "/var/cache/imap-oauth-proxy-tests"
	dir := filepath.Join(cache, "rootfs-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(dir, "usr/lib/systemd/systemd")); err == nil {
		return dir
	}
	if err := os.MkdirAll(cache, 0o700); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(cache, "building-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	mirror := debianMirror(t)
	start := time.Now()
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+rootfsPackages, rootfsSuite, tmp, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap %s from %s: %v\n%s", rootfsSuite, mirror, err, tail(out, 40))
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the container root filesystem in %s (cached in %s)", time.Since(start).Round(time.Second), dir)
	return dir
}

// container is a Debian system booted with systemd as PID 1 by
// systemd-nspawn: a fresh overlay over the cached root filesystem, with a
// private network and the given host directories bound read-only.
type container struct {
	t      *testing.T
	nspawn *exec.Cmd
	log    string // file holding nspawn's and the console's output
	exited chan struct{}
	leader int // the container's systemd, as a host PID
}

// boot starts a container and waits until its systemd reports the system
// running. binds maps host directories to paths inside.
func boot(t *testing.T, root string, binds map[string]string) *container {
	t.Helper()
	args := []string{
		"--directory=" + root, "--volatile=overlay", "--boot",
		// The host's PID 1 is not systemd here: --register=no and
		// --keep-unit keep nspawn away from machined and the system bus.
		"--register=no", "--keep-unit",
		"--private-network", "--link-journal=no", "--console=passive",
		// READY=1 on NOTIFY_SOCKET once the container's systemd says so.
		"--notify-ready=yes",
	}
	for host, inside := range binds {
		args = append(args, "--bind-ro="+host+":"+inside)
	}
	// nspawn tells its NOTIFY_SOCKET the host PID of the container's init,
	// and READY=1 when that init is ready.
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	c := &container{t: t, log: filepath.Join(t.TempDir(), "nspawn.log"), exited: make(chan struct{})}
	logFile, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // nspawn holds its own descriptor
	c.nspawn = exec.Command("systemd-nspawn", args...)
	c.nspawn.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	c.nspawn.Stdout, c.nspawn.Stderr = logFile, logFile
	c.nspawn.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.nspawn.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() {
		c.nspawn.Wait()
		close(c.exited)
		notify.Close() // ends the read below if nspawn fails first
	}()
	t.Cleanup(c.poweroff)

	notify.SetReadDeadline(time.Now().Add(bootTimeout))
	buf := make([]byte, 4096)
	for ready := false; c.leader == 0 || !ready; {
		n, err := notify.Read(buf)
		if err != nil {
			t.Fatalf("systemd-nspawn did not report the container ready: %v\n%s", err, c.output())
		}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if v, ok := strings.CutPrefix(line, "X_NSPAWN_LEADER_PID="); ok {
				c.leader, _ = strconv.Atoi(v)
			}
			ready = ready || line == "READY=1"
		}
	}
	// --wait returns once boot has finished, whatever the outcome. Nothing
	// of the proxy is installed yet, so a unit that failed here is the base
	// system's: on a machine loaded enough, systemd-journal-flush can pass
	// its 90 s timeout. That is reported, with its journal, and the test
	// goes on; any other state ends it.
	switch state, _ := c.run("systemctl is-system-running --wait"); state {
	case "running":
	case "degraded":
		failed, _ := c.run("systemctl --failed --no-legend --plain")
		journal, _ := c.run("journalctl --no-pager -b -p warning -n 30 -o short-monotonic")
		t.Logf("the container booted degraded; failed units of the base system:\n%s\nits journal (warnings):\n%s", failed, journal)
	default:
		failed, _ := c.run("systemctl --failed --no-legend")
		t.Fatalf("container system state %q, want running; failed units:\n%s", state, failed)
	}
	return c
}

// poweroff asks the container's systemd to shut down (SIGTERM to nspawn),
// then kills it if it does not within poweroffTimeout.
func (c *container) poweroff() {
	c.nspawn.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(poweroffTimeout):
		c.nspawn.Process.Kill()
		<-c.exited
		c.t.Errorf("the container did not power off within %s", poweroffTimeout)
	}
}

// command returns a command that runs script with /bin/sh inside the
// container, as root, in a clean environment.
func (c *container) command(shell, script string) *exec.Cmd {
	return exec.Command("nsenter", "--target", strconv.Itoa(c.leader), "--all", "--root", "--wd",
		"/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "DEBIAN_FRONTEND=noninteractive",
		shell, "-c", script)
}

// run runs script inside the container and returns its output (stdout and
// stderr), trimmed.
func (c *container) run(script string) (string, error) {
	return c.runInput(script, "")
}

// runInput is run with input on the script's stdin: the way to pass a
// secret, which then appears in no command line and no failure message.
func (c *container) runInput(script, input string) (string, error) {
	cmd := c.command("/bin/sh", script)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return strings.TrimSpace(out.String()), err
	case <-time.After(commandTimeout):
		cmd.Process.Kill()
		<-done
		return strings.TrimSpace(out.String()), fmt.Errorf("timed out after %s", commandTimeout)
	}
}

// must runs script and fails the test, with the output and the service's
// state, if it fails.
func (c *container) must(script string) string {
	c.t.Helper()
	return c.mustInput(script, "")
}

// mustInput is must with input on stdin (see runInput).
func (c *container) mustInput(script, input string) string {
	c.t.Helper()
	out, err := c.runInput(script, input)
	if err != nil {
		status, _ := c.run("systemctl status --no-pager -n 30 imap-oauth-proxy.service")
		// systemd's own reasons (a unit that failed at step CGROUP, say)
		// are in the system journal, not the unit's.
		journal, _ := c.run("journalctl --no-pager -n 40 -o short-monotonic")
		c.t.Fatalf("in the container: %s\n%v\n%s\n\nthe service:\n%s\n\nthe journal:\n%s", script, err, out, status, journal)
	}
	return out
}

// mustFail runs script and fails the test if it succeeds.
func (c *container) mustFail(script string) string {
	c.t.Helper()
	out, err := c.run(script)
	if err == nil {
		c.t.Fatalf("in the container, succeeded but must fail: %s\n%s", script, out)
	}
	return out
}

// session is a TCP connection opened inside the container (bash's
// /dev/tcp) whose bytes the test reads and writes through pipes.
type session struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// dial opens a connection to addr (host and port) inside the container.
func (c *container) dial(host string, port int) *session {
	c.t.Helper()
	cmd := c.command("/bin/bash",
		fmt.Sprintf("exec 3<>/dev/tcp/%s/%d || exit 1; cat <&3 & cat >&3; wait", host, port))
	in, err := cmd.StdinPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	s := &session{t: c.t, cmd: cmd, in: in, out: bufio.NewReader(out)}
	c.t.Cleanup(s.close)
	return s
}

func (s *session) close() {
	s.in.Close()
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

// readLine reads one line, failing the test after commandTimeout.
func (s *session) readLine() string {
	s.t.Helper()
	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		line, err := s.out.ReadString('\n')
		got <- result{line, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			s.t.Fatalf("reading from the session: %v (after %q)", r.err, r.line)
		}
		return strings.TrimRight(r.line, "\r\n")
	case <-time.After(commandTimeout):
		s.t.Fatalf("no line from the session within %s", commandTimeout)
		return ""
	}
}

// write sends text as it is.
func (s *session) write(text string) {
	s.t.Helper()
	if _, err := io.WriteString(s.in, text); err != nil {
		s.t.Fatalf("writing to the session: %v", err)
	}
}

// command sends an IMAP command with tag and returns the lines up to and
// including the tagged answer.
func (s *session) command(tag, cmd string) []string {
	s.t.Helper()
	s.write(tag + " " + cmd + "\r\n")
	var lines []string
	for {
		line := s.readLine()
		lines = append(lines, line)
		if strings.HasPrefix(line, tag+" ") {
			return lines
		}
	}
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// output returns what nspawn and the container's console printed.
func (c *container) output() string {
	data, _ := os.ReadFile(c.log)
	return tail(data, 40)
}
