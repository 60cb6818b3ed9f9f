package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// fuzzPOP3Secret is the password in the seeds: no answer may echo it.
const fuzzPOP3Secret = "s3cret-fuzz"

// FuzzPOP3Preauth feeds arbitrary bytes to a POP3 session before login,
// over loopback TCP, with an account whose record does not exist
// (every login fails). The session must end when the input does, answer
// only with POP3 status lines, continuations or list lines, and never
// repeat the password.
func FuzzPOP3Preauth(f *testing.F) {
	for _, s := range []string{
		"CAPA\r\nQUIT\r\n",
		"USER collector\r\nPASS " + fuzzPOP3Secret + " with spaces\r\n",
		"AUTH PLAIN AGNvbGxlY3RvcgBzM2NyZXQtZnV6eg==\r\n",
		"AUTH PLAIN\r\nAGNvbGxlY3RvcgBzM2NyZXQtZnV6eg==\r\n",
		"AUTH PLAIN\r\n*\r\nAUTH PLAIN =\r\nAUTH\r\n",
		"auth plain !!!\nuser x\npass y\n",
		"STLS\r\nUSER a\r\n",
		"CAPA\r\nSTAT\r\nLIST\r\nRETR 1\r\n",
		"a1 LOGIN collector " + fuzzPOP3Secret + "\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00",
		"USER " + strings.Repeat("x", 600) + "\r\n",
		"\r\n\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	srv, ln := newFuzzServer(f, "pop3_address = \"pop.example:995\"\n", "pop3")

	f.Fuzz(func(t *testing.T, data []byte) {
		out := fuzzSession(t, srv, ln, pop3Protocol, data)
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

// newFuzzServer returns a proxy for a pre-auth fuzz target, whose account
// "collector" has no token record (every login fails) and lists protocol,
// with providerTOML in its provider's table; and a loopback listener for
// fuzzSession.
func newFuzzServer(f *testing.F, providerTOML, protocol string) (*Server, net.Listener) {
	cfg, err := config.Parse([]byte(`[server]
state_dir = "state"
max_line_bytes = 512
[providers.lab]
type = "generic"
token_url = "https://idp.example/token"
scopes = ["mail"]
client_id = "c"
imap_address = "imap.example:993"
`+providerTOML+`[accounts.collector]
provider = "lab"
mailbox = "a"
protocols = ["`+protocol+`"]
`), f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	store, err := tokenstore.New(cfg.Server.StateDir, &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: store, Logger: discard})
	if err != nil {
		f.Fatal(err)
	}
	srv, err := New(&Options{Config: cfg, Auth: mgr, Logger: discard, FailureDelay: -1,
		PeerUID: func(net.Addr, net.Addr) (uint32, error) { return 0, nil }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	// A TCP pair rather than net.Pipe: the client half-closes after its
	// input and still reads every answer.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	return srv, ln
}

// fuzzSession runs one loopback session of proto on srv with data as the
// client's input, and returns every byte the proxy answered.
func fuzzSession(t *testing.T, srv *Server, ln net.Listener, proto *protocol, data []byte) string {
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	var c *conn
	if srv.admit(server, proto) {
		c = srv.newConn(server, &origin{nc: server, remote: server.RemoteAddr()}, false, true, proto, srv.cfg.Load())
	}
	if c == nil {
		t.Fatal("connection refused")
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		c.serve()
	}()
	go func() {
		client.Write(data) // fails once the session has ended: fine
		client.(*net.TCPConn).CloseWrite()
	}()
	var out bytes.Buffer
	io.Copy(&out, client)
	<-ended
	return out.String()
}
