package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// Real POP3 collectors through the proxy to the in-process POP3 upstream:
// each must get every message byte for byte. They run on loopback, where
// plaintext USER/PASS and AUTH PLAIN are allowed.

// pop3ClientHarness is a harness whose mailbox also holds a large message
// (a relay of many TLS records), with a POP3 listener.
func pop3ClientHarness(t *testing.T, personality proxytest.POP3Personality) (*harness, string, [][]byte) {
	t.Helper()
	h := newHarness(t, harnessOptions{pop3: true, pop3Personality: personality})
	var big bytes.Buffer
	big.WriteString("From: big@example.com\r\nSubject: large\r\n\r\n")
	for i := 0; big.Len() < 4<<20; i++ {
		fmt.Fprintf(&big, "%08d %s\r\n", i, strings.Repeat("abcdefghij", 7))
	}
	h.pop3Upstream.AddMessage(testMailbox, big.Bytes())
	return h, h.servePOP3("127.0.0.1:0", false), h.pop3Upstream.Messages(testMailbox)
}

func digests(msgs [][]byte) []string {
	var d []string
	for _, m := range msgs {
		sum := sha256.Sum256(bytes.ReplaceAll(m, []byte("\r\n"), []byte("\n")))
		d = append(d, hex.EncodeToString(sum[:]))
	}
	slices.Sort(d)
	return d
}

// samePOP3Messages fails unless got and want hold the same messages, line
// endings aside.
func samePOP3Messages(t *testing.T, who string, got, want [][]byte) {
	t.Helper()
	for i := range want {
		if !bytes.HasSuffix(want[i], []byte("\r\n")) {
			want[i] = append(slices.Clone(want[i]), '\r', '\n') // POP3 ends every message with a line
		}
	}
	if g, w := digests(got), digests(want); !slices.Equal(g, w) {
		t.Errorf("%s got %d messages %v, want %d %v", who, len(got), g, len(want), w)
	}
}

// TestPOP3Poplib: Python's poplib with USER/PASS, and with AUTH PLAIN
// (with and without the initial response), retrieves every message.
func TestPOP3Poplib(t *testing.T) {
	python := requireProgram(t, "python3", "python3")
	h, addr, want := pop3ClientHarness(t, proxytest.POP3Microsoft)
	host, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	const script = `
import base64, os, poplib, sys
host, port, user, password, out, mode = sys.argv[1:]
p = poplib.POP3(host, int(port), timeout=30)
caps = p.capa()
assert 'SASL' in caps and 'PLAIN' in caps['SASL'], caps
plain = base64.b64encode(b'\0' + user.encode() + b'\0' + password.encode()).decode()
if mode == 'user':
    p.user(user)
    p.pass_(password)
elif mode == 'ir':
    p._shortcmd('AUTH PLAIN ' + plain)
else:
    p._putcmd('AUTH PLAIN')
    assert p._getline()[0].startswith(b'+'), 'no continuation'
    p._shortcmd(plain)
count, _ = p.stat()
for i in range(1, count + 1):
    _, lines, _ = p.retr(i)
    with open(os.path.join(out, 'msg%d' % i), 'wb') as f:
        f.write(b''.join(l + b'\n' for l in lines))
p.quit()
`
	for _, mode := range []string{"user", "ir", "continuation"} {
		t.Run(mode, func(t *testing.T) {
			out := filepath.Join(dir, mode)
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(t.Context(), python, "-c", script, host, port, testLogin, testPassword, out, mode)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("poplib: %v\n%s", err, b)
			}
			samePOP3Messages(t, "poplib "+mode, readDir(t, out), want)
		})
	}
	if strings.Contains(h.logs.String(), testPassword) {
		t.Error("the password is in the log")
	}
}

// TestPOP3Curl: curl's pop3:// retrieves every message, logging in with
// AUTH PLAIN after a continuation, and with --sasl-ir on the AUTH line.
func TestPOP3Curl(t *testing.T) {
	curl := requireProgram(t, "curl", "curl")
	_, addr, want := pop3ClientHarness(t, proxytest.POP3Gmail)
	for _, opts := range [][]string{nil, {"--sasl-ir"}} {
		for n := range want {
			args := append([]string{"--silent", "--show-error", "--max-time", "60",
				"--user", testLogin + ":" + testPassword}, opts...)
			args = append(args, fmt.Sprintf("pop3://%s/%d", addr, n+1))
			out, err := exec.CommandContext(context.Background(), curl, args...).Output()
			if err != nil {
				t.Fatalf("curl %v: %v", opts, err)
			}
			samePOP3Messages(t, fmt.Sprintf("curl %v message %d", opts, n+1), [][]byte{out}, [][]byte{want[n]})
		}
	}
}

// TestPOP3Fetchmail: fetchmail pulls the whole mailbox with USER/PASS and
// deletes it (its default), as a ticketing system's collector does.
func TestPOP3Fetchmail(t *testing.T) {
	bin := requireProgram(t, "fetchmail", "fetchmail")
	h, addr, want := pop3ClientHarness(t, proxytest.POP3Microsoft)
	host, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	rc := fmt.Sprintf(`poll %s service %s protocol pop3 auth password
    user %q there with password %q is "tester" here
    mda "/bin/sh -c 'cat > $(mktemp %s/msg.XXXXXX)'"
    sslproto ''
`, host, port, testLogin, testPassword, out)
	rcPath := filepath.Join(dir, "fetchmailrc")
	if err := os.WriteFile(rcPath, []byte(rc), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, "--fetchmailrc", rcPath, "--idfile", filepath.Join(dir, "ids"),
		"--nodetach", "--nosyslog")
	cmd.Env = append(os.Environ(), "HOME="+dir, "FETCHMAILHOME="+dir)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fetchmail: %v\n%s", err, b)
	}
	var got [][]byte
	for _, m := range readDir(t, out) {
		got = append(got, withoutReceived(m))
	}
	samePOP3Messages(t, "fetchmail", got, want)
	if left := h.pop3Upstream.Messages(testMailbox); len(left) != 0 {
		t.Errorf("the upstream still holds %d messages after fetchmail's DELE and QUIT", len(left))
	}
}

// readDir returns the contents of every file in dir.
func readDir(t *testing.T, dir string) [][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
	}
	return msgs
}
