package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// BenchmarkCapabilitiesAfterLogin measures an upstream login (connect,
// TLS, greeting, AUTHENTICATE and what follows) to the Microsoft
// personality, whose OK to AUTHENTICATE carries no capabilities, with and
// without asking for them after login: alone (provider type generic, one
// more round trip) and pipelined with the NAMESPACE probe (type
// microsoft). The variants alternate in one run, on loopback and through
// a relay that delays every flight by 5 ms each way (a 10 ms round trip):
//
//	go test -run '^$' -bench CapabilitiesAfterLogin -benchtime 40x ./proxy/
func BenchmarkCapabilitiesAfterLogin(b *testing.B) {
	h := newHarness(b, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft, upstreamMaxSessions: -1})
	token := h.directToken()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.upstream.CAPEM)
	addrs := map[string]string{"loopback": h.upstream.Addr, "rtt10ms": delayingRelay(b, h.upstream.Addr, 5*time.Millisecond)}
	for round := 0; round < 2; round++ {
		for _, path := range []string{"loopback", "rtt10ms"} {
			for _, v := range []struct {
				name string
				typ  string
				ask  bool
			}{
				{"generic/without", "generic", false},
				{"generic/with", "generic", true},
				{"microsoft/without", "microsoft", false},
				{"microsoft/with", "microsoft", true},
			} {
				b.Run(path+"/"+v.name, func(b *testing.B) {
					l := &proxy.UpstreamLogin{
						Account: &config.Account{Login: testLogin, Mailbox: testMailbox,
							Provider: &config.Provider{Name: "lab", Type: v.typ, IMAPAddress: addrs[path],
								IMAPTLS: "implicit", Mechanism: auth.XOAUTH2}},
						TLSConfig:       &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12},
						Token:           token,
						AskCapabilities: v.ask,
					}
					for i := 0; i < b.N; i++ {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						up, err := proxy.DialUpstream(ctx, l)
						cancel()
						if err != nil {
							b.Fatal(err)
						}
						if got := up.Capabilities() != ""; got != v.ask {
							b.Fatalf("capabilities %q with ask %v", up.Capabilities(), v.ask)
						}
						up.Close()
					}
				})
			}
		}
	}
}

// delayingRelay forwards connections to addr, holding every chunk for
// delay in each direction, and returns its address.
func delayingRelay(b *testing.B, addr string, delay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				time.Sleep(delay) // the simulated latency, not a synchronization
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	return ln.Addr().String()
}
