package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// dialFake runs proxy.DialUpstream against a proxytest upstream with
// opts, recording the phases it reports.
func dialFake(t *testing.T, opts proxytest.UpstreamOptions) (*proxy.UpstreamConn, []string, error) {
	t.Helper()
	f, err := proxytest.NewUpstream(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.AddUser("m@example.test")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(f.CAPEM)
	var phases []string
	l := &proxy.UpstreamLogin{
		Account: &config.Account{Login: "lab-login", Mailbox: "m@example.test",
			Provider: &config.Provider{Name: "lab", Type: "generic", IMAPAddress: f.Addr, IMAPTLS: "implicit", Mechanism: auth.XOAUTH2}},
		TLSConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
		Token:     "phase-token-canary",
		PhaseDone: func(p proxy.Phase, r proxy.PhaseResult) {
			outcome := "ok"
			if r.Err != nil {
				outcome = "FAIL"
			}
			if p == proxy.PhaseTLS && r.Err == nil && r.TLS == nil {
				t.Error("tls phase passed without a connection state")
			}
			if r.Elapsed < 0 {
				t.Errorf("phase %s took %v", p, r.Elapsed)
			}
			phases = append(phases, string(p)+" "+outcome+" "+r.Detail)
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := proxy.DialUpstream(ctx, l)
	if up != nil {
		t.Cleanup(func() { up.Close() })
	}
	return up, phases, err
}

func TestDialUpstreamPhases(t *testing.T) {
	up, phases, err := dialFake(t, proxytest.UpstreamOptions{Personality: proxytest.Gmail,
		Validate: func(string, string) error { return nil }})
	if err != nil {
		t.Fatalf("DialUpstream: %v", err)
	}
	// Gmail's greeting has no capabilities, its OK to AUTHENTICATE has them.
	want := []string{"connect ok 127.0.0.1:", "tls ok TLS 1.3", "greeting ok * OK Gimap ready",
		"capability ok IMAP4rev1 ", "authenticate ok IMAP4rev1 UNSELECT IDLE"}
	if len(phases) != len(want) {
		t.Fatalf("phases %q, want %d like %q", phases, len(want), want)
	}
	for i := range want {
		if !strings.HasPrefix(phases[i], want[i]) {
			t.Errorf("phase %d: %q, want %q...", i, phases[i], want[i])
		}
	}
	if !strings.HasSuffix(up.Capabilities(), " APPENDLIMIT=35651584") {
		t.Errorf("Capabilities() = %q", up.Capabilities())
	}
	// Conn goes on where the login stopped.
	c := up.Conn()
	if _, err := c.Write([]byte("A1 NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "A1 OK NOOP completed\r\n" {
		t.Errorf("after login: %q, %v", buf[:n], err)
	}
}

func TestDialUpstreamPhaseFails(t *testing.T) {
	_, phases, err := dialFake(t, proxytest.UpstreamOptions{Personality: proxytest.Microsoft, Validate: refuseEveryToken})
	var answer *proxy.UpstreamAnswer
	if !errors.As(err, &answer) || answer.String() != "NO AUTHENTICATE failed." {
		t.Fatalf("error %v, want the upstream's answer in its chain", err)
	}
	if last := phases[len(phases)-1]; last != "authenticate FAIL " {
		t.Errorf("phases %q, want the last to be a failed authenticate", phases)
	}
	for _, p := range phases {
		if strings.Contains(p, "canary") {
			t.Errorf("phase %q shows the token", p)
		}
	}
}
