package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"log/slog"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// POP3 collectors through the proxy to Dovecot's pop3 service (Debian
// dovecot-pop3d), which accepts only XOAUTH2 and OAUTHBEARER: each must
// get the same bytes as a direct XOAUTH2 POP3 session to Dovecot.

// rawPOP3 is a POP3 client that keeps each answer's bytes as sent: only
// the byte-stuffing of RFC 1939 and the final "." line are undone.
type rawPOP3 struct {
	conn net.Conn
	br   *bufio.Reader
}

// line reads one line with its CRLF.
func (c *rawPOP3) line() (string, error) {
	l, err := c.br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read after %q: %w", l, err)
	}
	return l, nil
}

// cmd sends line and returns the answer's first line; not +OK is an
// error.
func (c *rawPOP3) cmd(line string) (string, error) {
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		return "", err
	}
	l, err := c.line()
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(l, "+OK") {
		verb, _, _ := strings.Cut(line, " ")
		return l, fmt.Errorf("%s: %q", verb, strings.TrimRight(l, "\r\n"))
	}
	return l, nil
}

// retr returns message n exactly as the server sent it, un-byte-stuffed,
// line ends included.
func (c *rawPOP3) retr(n int) ([]byte, error) {
	if _, err := c.cmd(fmt.Sprintf("RETR %d", n)); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for {
		l, err := c.line()
		if err != nil {
			return nil, err
		}
		if l == ".\r\n" {
			return b.Bytes(), nil
		}
		b.WriteString(strings.TrimPrefix(l, "."))
	}
}

// stat returns the message count of STAT.
func (c *rawPOP3) stat() (int, error) {
	l, err := c.cmd("STAT")
	if err != nil {
		return 0, err
	}
	var n, size int
	if _, err := fmt.Sscanf(l, "+OK %d %d", &n, &size); err != nil {
		return 0, fmt.Errorf("STAT answer %q: %w", l, err)
	}
	return n, nil
}

// all retrieves every message, within testDeadline.
func (c *rawPOP3) all() ([][]byte, error) {
	c.conn.SetDeadline(time.Now().Add(testDeadline))
	n, err := c.stat()
	if err != nil {
		return nil, err
	}
	msgs := make([][]byte, n)
	for i := range n {
		if msgs[i], err = c.retr(i + 1); err != nil {
			return nil, err
		}
	}
	return msgs, nil
}

// newRawPOP3 reads conn's greeting; conn gets a deadline of testDeadline.
func newRawPOP3(conn net.Conn) (*rawPOP3, error) {
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := &rawPOP3{conn: conn, br: bufio.NewReaderSize(conn, 64<<10)}
	g, err := c.line()
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(g, "+OK") {
		return nil, fmt.Errorf("greeting %q", g)
	}
	return c, nil
}

// directPOP3 logs in to Dovecot's pop3s with AUTH XOAUTH2 (initial
// response) and an access token from a's own grant.
func (e *interopEnv) directPOP3(t testing.TB, a *interopAccount) *rawPOP3 {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.dovecot.CAPEM)
	conn, err := tls.Dial("tcp", e.dovecot.POP3Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("dialing dovecot pop3s: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := newRawPOP3(conn)
	if err != nil {
		t.Fatalf("dovecot pop3s: %v", err)
	}
	_, ir, err := auth.NewXOAUTH2Client(a.Mailbox, e.accessToken(t, a.Mailbox)).Start()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.cmd("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString(ir)); err != nil {
		t.Fatalf("direct XOAUTH2 login to dovecot pop3 as %s: %v", a.Mailbox, err)
	}
	return c
}

// proxyPOP3 logs in to the proxy's POP3 listener with USER/PASS.
func (e *interopEnv) proxyPOP3(t testing.TB, a *interopAccount) *rawPOP3 {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.pop3Addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := newRawPOP3(conn)
	if err != nil {
		t.Fatalf("proxy pop3: %v", err)
	}
	if _, err := c.cmd("USER " + a.Login); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cmd("PASS " + a.Password); err != nil {
		t.Fatalf("login through the proxy: %v", err)
	}
	return c
}

// directPOP3Messages is a's whole mailbox through a direct XOAUTH2 POP3
// session, which then QUITs without deleting anything.
func (e *interopEnv) directPOP3Messages(t testing.TB, a *interopAccount) [][]byte {
	t.Helper()
	c := e.directPOP3(t, a)
	msgs, err := c.all()
	if err != nil {
		t.Fatalf("direct pop3: %v", err)
	}
	if _, err := c.cmd("QUIT"); err != nil {
		t.Fatal(err)
	}
	return msgs
}

// pop3InteropMessages are interopMessages plus one whose lines start with
// dots (byte-stuffed on the wire) and end in trailing blanks.
func pop3InteropMessages(a *interopAccount) [][]byte {
	msgs := interopMessages(a, 3)
	msgs = append(msgs, []byte(fmt.Sprintf("From: dots@example.test\r\nTo: %s\r\nSubject: dots\r\n\r\n"+
		".\r\n..\r\n.leading dot\r\ntrailing blanks \t \r\n\r\nend\r\n", a.Mailbox)))
	return msgs
}

// sameBytes fails unless got and want are the same messages in the same
// order, byte for byte.
func sameBytes(t testing.TB, who string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d messages, want %d", who, len(got), len(want))
		return
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("%s: message %d differs: %d bytes sha256 %s, want %d bytes sha256 %s; starts %q, want %q",
				who, i+1, len(got[i]), sha256Hex(got[i]), len(want[i]), sha256Hex(want[i]),
				firstLines(got[i], 6), firstLines(want[i], 6))
		}
	}
}

// TestDovecotPOP3Interop: the proxy's own POP3 session, Python's poplib
// and fetchmail pull a whole mailbox from Dovecot's pop3 through the
// proxy, each on its own mailbox, and get what a direct XOAUTH2 POP3
// session gets. fetchmail then deletes the mailbox (its default).
func TestDovecotPOP3Interop(t *testing.T) {
	e := newInteropEnvWith(t, interopOptions{pop3: true}, "raw", "poplib", "fetchmail")

	t.Run("raw", func(t *testing.T) {
		a := e.account(t, "raw")
		e.seed(t, a, pop3InteropMessages(a)...)
		want := e.directPOP3Messages(t, a)
		if len(want) != 4 {
			t.Fatalf("direct pop3 sees %d messages, want 4", len(want))
		}
		c := e.proxyPOP3(t, a)
		got, err := c.all()
		if err != nil {
			t.Fatalf("through the proxy: %v", err)
		}
		sameBytes(t, "proxied RETR", got, want)
		if _, err := c.cmd("QUIT"); err != nil {
			t.Error(err)
		}
	})
	t.Run("poplib", func(t *testing.T) { e.testPoplibDovecot(t) })
	t.Run("fetchmail", func(t *testing.T) { e.testFetchmailPOP3Dovecot(t) })
}

// testPoplibDovecot: poplib logs in with USER/PASS and with AUTH PLAIN
// and writes each message's lines back with CRLF, which is what the
// server sent when lines end in CRLF, as RFC 1939 requires.
func (e *interopEnv) testPoplibDovecot(t *testing.T) {
	python := requireProgram(t, "python3", "python3")
	a := e.account(t, "poplib")
	e.seed(t, a, pop3InteropMessages(a)...)
	want := e.directPOP3Messages(t, a)
	host, port, _ := net.SplitHostPort(e.pop3Addr)
	const script = `
import base64, os, poplib, sys
host, port, user, out, mode = sys.argv[1:]
password = sys.stdin.readline().rstrip('\n')
p = poplib.POP3(host, int(port), timeout=30)
if mode == 'user':
    p.user(user)
    p.pass_(password)
else:
    p._shortcmd('AUTH PLAIN ' + base64.b64encode(b'\0' + user.encode() + b'\0' + password.encode()).decode())
count, _ = p.stat()
for i in range(1, count + 1):
    _, lines, _ = p.retr(i)
    with open(os.path.join(out, 'msg%03d' % i), 'wb') as f:
        f.write(b''.join(l + b'\r\n' for l in lines))
p.quit()
`
	for _, mode := range []string{"user", "plain"} {
		t.Run(mode, func(t *testing.T) {
			out := t.TempDir()
			// e.run's error holds the redacted output.
			if _, err := e.run(t, a.Password+"\n", nil, python, "-c", script, host, port, a.Login, out, mode); err != nil {
				t.Fatalf("poplib: %v", err)
			}
			sameBytes(t, "poplib "+mode, readDir(t, out), want)
		})
	}
}

// testFetchmailPOP3Dovecot: fetchmail with USER/PASS pulls the mailbox
// and deletes it. Its MDA gets LF line ends and a Received: header on top
// (fetchmail's own doing); with those undone, each message is the direct
// session's byte for byte.
func (e *interopEnv) testFetchmailPOP3Dovecot(t *testing.T) {
	bin := requireProgram(t, "fetchmail", "fetchmail")
	a := e.account(t, "fetchmail")
	e.seed(t, a, pop3InteropMessages(a)...)
	want := e.directPOP3Messages(t, a)
	host, port, _ := net.SplitHostPort(e.pop3Addr)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := fmt.Sprintf(`set no bouncemail
poll %s service %s protocol pop3 auth password timeout 30
    user %q there with password %q is "tester" here
    mda "/bin/sh -c 'cat > $(mktemp %s/msg.XXXXXX)'"
    sslproto ''
`, host, port, a.Login, a.Password, out)
	rcPath := filepath.Join(dir, "fetchmailrc")
	if err := os.WriteFile(rcPath, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.run(t, "", []string{"HOME=" + dir, "FETCHMAILHOME=" + dir}, bin,
		"--fetchmailrc", rcPath, "--idfile", filepath.Join(dir, "ids"), "--nodetach", "--nosyslog"); err != nil {
		t.Fatalf("fetchmail: %v", err) // redacted by e.run
	}
	// The MDA's files come in no particular order: compare as sets.
	var got, exp []string
	for _, m := range readDir(t, out) {
		got = append(got, sha256Hex(withoutReceived(m)))
	}
	for _, w := range want {
		exp = append(exp, sha256Hex(bytes.ReplaceAll(w, []byte("\r\n"), []byte("\n"))))
	}
	if !sameSet(got, exp) {
		t.Errorf("fetchmail delivered %d messages %v, want %d %v", len(got), got, len(exp), exp)
	}
	if left := e.directPOP3Messages(t, a); len(left) != 0 {
		t.Errorf("dovecot still holds %d messages after fetchmail's DELE and QUIT", len(left))
	}
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	count := map[string]int{}
	for _, s := range a {
		count[s]++
	}
	for _, s := range b {
		if count[s]--; count[s] < 0 {
			return false
		}
	}
	return true
}

// BenchmarkPOP3RetrDovecot compares POP3 RETR throughput through the
// proxy with direct access to the same Dovecot pop3 service, in one run:
// a direct XOAUTH2 session and a proxied USER/PASS session of the same
// mailbox each RETR the whole mailbox in turns (paired, as in
// BenchmarkFetch), with the proxy logging at warn level. Each message is
// checked against the direct session's copy.
//
//	direct-MB/s, proxy-MB/s  median throughput of one whole-mailbox pull
//	proxy/direct             proxied speed over direct (median of the pairs; 1: no cost)
//	cpu-proxy/direct         this process's CPU time (client and proxy) proxied over direct
//
// It needs dovecot-imapd and dovecot-pop3d, like the interop tests.
func BenchmarkPOP3RetrDovecot(b *testing.B) {
	for _, tc := range fetchCases {
		b.Run(tc.name, func(b *testing.B) {
			e := newInteropEnvWith(b, interopOptions{level: slog.LevelWarn, pop3: true}, "bench")
			a := e.account(b, "bench")
			body := benchBody(tc.size)
			msgs := make([][]byte, tc.count)
			for i := range msgs {
				msgs[i] = body
			}
			e.seed(b, a, msgs...)
			direct, proxied := e.directPOP3(b, a), e.proxyPOP3(b, a)
			want, err := direct.all()
			if err != nil {
				b.Fatal(err)
			}
			if len(want) != tc.count {
				b.Fatalf("direct pop3 sees %d messages, want %d", len(want), tc.count)
			}
			pull := func(c *rawPOP3, who string) func() {
				return func() {
					got, err := c.all()
					if err != nil {
						b.Fatalf("%s: %v", who, err)
					}
					if len(got) != len(want) || !bytes.Equal(got[len(got)-1], want[len(want)-1]) {
						b.Fatalf("%s: %d messages, or the last one differs", who, len(got))
					}
				}
			}
			b.ResetTimer()
			r := paired(b.N, pull(direct, "direct"), pull(proxied, "proxied"))
			mb := float64(tc.size*tc.count) / 1e6
			b.ReportMetric(mb/r.direct.Seconds(), "direct-MB/s")
			b.ReportMetric(mb/r.proxied.Seconds(), "proxy-MB/s")
			b.ReportMetric(r.ratio, "proxy/direct")
			b.ReportMetric(r.cpuRatio, "cpu-proxy/direct")
		})
	}
}
