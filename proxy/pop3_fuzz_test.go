package proxy_test

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// fuzzPOP3Secret is the password in the seeds (testdata/fuzz/FuzzPOP3Preauth):
// no answer may echo it.
const fuzzPOP3Secret = "s3cret-fuzz"

// FuzzPOP3Preauth feeds arbitrary bytes to a POP3 session before login,
// over loopback TCP, with an account whose record does not exist
// (every login fails). The session must end when the input does, answer
// only with POP3 status lines, continuations or list lines, and never
// repeat the password.
func FuzzPOP3Preauth(f *testing.F) {
	p := newFuzzProxy(f, proxytest.LabConfigOptions{POP3Address: "pop.example:995", Protocols: []string{"pop3"}})
	addr := p.serveWith(f, "127.0.0.1:0", p.srv.ServePOP3)
	f.Fuzz(func(t *testing.T, data []byte) {
		out := fuzzSession(t, addr, data)
		lines := strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n")
		if lines[0] != "+OK imap-oauth-proxy POP3 ready" {
			t.Fatalf("greeting %q", lines[0])
		}
		inList := false
		for _, l := range lines[1:] {
			switch {
			case inList:
				inList = l != "."
			case strings.HasPrefix(l, "+OK ") && strings.HasSuffix(l, " follows"):
				inList = true
			case l == "+ " || strings.HasPrefix(l, "+OK ") || strings.HasPrefix(l, "-ERR "):
			case l == "":
			default:
				t.Fatalf("answer line %q", l)
			}
		}
		if strings.Contains(out, fuzzPOP3Secret) {
			t.Fatal("an answer repeats the password")
		}
	})
}

// newFuzzProxy starts a proxy for a pre-auth fuzz target from lab, which
// gives the account's protocols and the provider's servers: its account
// "collector" has no token record, so every login fails.
func newFuzzProxy(f *testing.F, lab proxytest.LabConfigOptions) *testProxy {
	lab.Server = "max_line_bytes = 512\n"
	lab.TokenURL, lab.ClientID, lab.IMAPAddress = "https://idp.example/token", "c", "imap.example:993"
	lab.Accounts = map[string]string{"collector": "a"}
	return newTestProxy(f, testProxyOptions{dir: f.TempDir(), config: proxytest.LabConfig(lab),
		logger: slog.New(slog.DiscardHandler), failureDelay: -1,
		peerUID: func(net.Addr, net.Addr) (uint32, error) { return 0, nil }})
}

// fuzzSession connects to addr, sends data, half-closes, and returns
// every byte the proxy answered until it closed the session. TCP rather
// than net.Pipe: the client half-closes after its input and still reads
// every answer.
func fuzzSession(t *testing.T, addr string, data []byte) string {
	client, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	client.SetDeadline(time.Now().Add(testDeadline))
	go func() {
		client.Write(data) // fails once the session has ended: fine
		client.(*net.TCPConn).CloseWrite()
	}()
	var out bytes.Buffer
	io.Copy(&out, client)
	return out.String()
}
