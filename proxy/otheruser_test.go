package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Tests that need a second local user run as root and start this test
// binary again, as another uid, to act as that user (a "helper").

// otherUIDs are the uids the helpers run as: nobody and the ones below.
var otherUIDs = []int{65534, 65533, 65532, 65531, 65530}

// helperEnv names the variable that makes TestOtherUserHelper act.
const helperEnv = "IMAP_PROXY_TEST_HELPER"

// needRoot skips t unless it runs as root, which it needs to act as
// another uid.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test switches to another uid (syscall.SysProcAttr.Credential) to act as a second local user")
	}
}

// helperBinary copies this test binary where any uid may run it.
func helperBinary(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "proxy-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "helper.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// helperCommand returns the command that runs action as uid against the
// proxy at addr; env adds variables.
func helperCommand(t testing.TB, bin string, uid int, action, addr string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestOtherUserHelper$")
	cmd.Env = append([]string{helperEnv + "=" + action, "HELPER_ADDR=" + addr, "PATH=/usr/bin:/bin"}, env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	cmd.Stderr = &prefixWriter{t: t, prefix: fmt.Sprintf("helper uid %d: ", uid)}
	return cmd
}

// guessAs has uid send count wrong passwords for login, one connection
// each, from the local addresses fromIPs in turn, and returns the tagged
// answers.
func guessAs(t testing.TB, bin string, uid int, addr, login string, count int, fromIPs []string) []string {
	t.Helper()
	cmd := helperCommand(t, bin, uid, "guess", addr, "HELPER_LOGIN="+login,
		"HELPER_COUNT="+strconv.Itoa(count), "HELPER_FROM="+strings.Join(fromIPs, ","))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("guessing as uid %d: %v", uid, err)
	}
	return helperLines(string(out), "answer ")
}

// holdAs has uid open count connections to addr and keep them until the
// returned function is called. It returns each connection's first line.
func holdAs(t testing.TB, bin string, uid int, addr string, count int) (greetings []string, release func()) {
	t.Helper()
	cmd := helperCommand(t, bin, uid, "hold", addr, "HELPER_COUNT="+strconv.Itoa(count))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	release = func() {
		stdin.Close()
		cmd.Wait()
	}
	t.Cleanup(release)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if line == "ready" {
			return greetings, release
		}
		if g, ok := strings.CutPrefix(line, "greeting "); ok {
			greetings = append(greetings, g)
		}
	}
	t.Fatalf("the helper ended before it held its connections: %v", sc.Err())
	return nil, nil
}

func helperLines(out, prefix string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			lines = append(lines, rest)
		}
	}
	return lines
}

// TestOtherUserHelper is not a test: it is the helper's body, run by the
// tests above as another uid. Without helperEnv it does nothing.
func TestOtherUserHelper(t *testing.T) {
	action := os.Getenv(helperEnv)
	if action == "" {
		return
	}
	addr := os.Getenv("HELPER_ADDR")
	count, _ := strconv.Atoi(os.Getenv("HELPER_COUNT"))
	switch action {
	case "guess":
		from := strings.Split(os.Getenv("HELPER_FROM"), ",")
		for i := range count {
			answer, err := helperGuess(addr, from[i%len(from)], os.Getenv("HELPER_LOGIN"), fmt.Sprintf("wrong-guess-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Println("answer " + answer)
		}
	case "hold":
		var conns []net.Conn
		for range count {
			conn, err := net.DialTimeout("tcp", addr, testDeadline)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			conn.SetReadDeadline(time.Now().Add(testDeadline))
			greeting, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			fmt.Println("greeting " + strings.TrimRight(greeting, "\r\n"))
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin) // until the test releases them
		for _, conn := range conns {
			conn.Close()
		}
	case "flood":
		helperFlood(addr, count, strings.Split(os.Getenv("HELPER_LOGINS"), ","))
	default:
		t.Fatalf("unknown helper action %q", action)
	}
}

// helperGuess logs in once with a wrong password from localIP ("" for
// any) and returns the tagged answer.
func helperGuess(addr, localIP, login, password string) (string, error) {
	d := &net.Dialer{Timeout: testDeadline}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testDeadline))
	br := bufio.NewReader(conn)
	if _, err := br.ReadString('\n'); err != nil {
		return "", fmt.Errorf("reading the greeting: %w", err)
	}
	if _, err := fmt.Fprintf(conn, "g1 LOGIN %s %q\r\n", login, password); err != nil {
		return "", err
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("reading the answer to LOGIN: %w", err)
		}
		if strings.HasPrefix(line, "g1 ") {
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
}

// prefixWriter logs what a helper writes to stderr.
type prefixWriter struct {
	t      testing.TB
	prefix string
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s%s", w.prefix, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// helperFlood runs workers parallel loops of wrong logins against addr,
// each from its own 127.0.k.j address in turn and for the logins in turn,
// until stdin closes. It prints "flooding" once every worker has had an
// answer, and at the end the answers it got: "checked N" (AUTHENTICATIONFAILED),
// "refused N" (UNAVAILABLE) and "other N", and "seconds S" it ran.
func helperFlood(addr string, workers int, logins []string) {
	start := time.Now()
	var checked, refused, other, started atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from := fmt.Sprintf("127.0.%d.%d", 100+w%100, 1+i%250)
				answer, err := helperGuess(addr, from, logins[(w+i)%len(logins)], fmt.Sprintf("flood-%d-%d", w, i))
				switch {
				case err != nil:
					other.Add(1)
				case strings.HasPrefix(answer, "g1 NO [AUTHENTICATIONFAILED]"):
					checked.Add(1)
				case strings.HasPrefix(answer, "g1 NO [UNAVAILABLE]"):
					refused.Add(1)
				default:
					other.Add(1)
				}
				if i == 0 && started.Add(1) == int64(workers) {
					fmt.Println("flooding")
				}
			}
		}()
	}
	io.Copy(io.Discard, os.Stdin)
	close(stop)
	wg.Wait()
	fmt.Printf("checked %d\nrefused %d\nother %d\nseconds %f\n", checked.Load(), refused.Load(), other.Load(),
		time.Since(start).Seconds())
}
