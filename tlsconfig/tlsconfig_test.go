package tlsconfig

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// testServer is a TLS server on loopback that writes "hello" on every
// connection (so that the client reads the session tickets sent with it)
// and then closes it. It returns its address and the path of a file with
// its CA certificate.
func testServer(t *testing.T) (addr, caFile string) {
	t.Helper()
	cert, caPEM, err := proxytest.NewCertificate("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	return ln.Addr().String(), caFile
}

// dial connects with cfg, reads the server's "hello" and reports whether
// the handshake resumed a session.
func dial(t *testing.T, addr string, cfg *tls.Config) (resumed bool, err error) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, cfg)
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return false, err
	}
	if _, err := io.ReadAll(c); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

// TestUpstreamResumes: the second connection with one configuration
// resumes the first one's session; a configuration of its own (another
// provider, or after a reload) starts with a full handshake, and one with
// other roots still refuses the server.
func TestUpstreamResumes(t *testing.T) {
	addr, caFile := testServer(t)
	cfg, err := Upstream(addr, caFile)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{false, true, true} {
		resumed, err := dial(t, addr, cfg)
		if err != nil || resumed != want {
			t.Fatalf("connection %d: resumed %v, %v; want %v", i+1, resumed, err, want)
		}
	}
	other, err := Upstream(addr, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if resumed, err := dial(t, addr, other); err != nil || resumed {
		t.Errorf("another configuration: resumed %v, %v; want a full handshake", resumed, err)
	}

	// A configuration that does not trust the server's CA, given the
	// session of one that does, still refuses the server.
	_, otherCA := testServer(t)
	untrusting, err := Upstream(addr, otherCA)
	if err != nil {
		t.Fatal(err)
	}
	key := cfg.ServerName
	if cs, ok := cfg.ClientSessionCache.Get(key); !ok || cs == nil {
		t.Fatalf("no session cached under %q", key)
	} else {
		untrusting.ClientSessionCache.Put(key, cs)
	}
	if _, err := dial(t, addr, untrusting); err == nil {
		t.Error("a configuration without the server's CA connected by resuming another's session")
	}
}
