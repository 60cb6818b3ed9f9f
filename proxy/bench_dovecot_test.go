package proxy_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

// BenchmarkFetchDovecot is BenchmarkFetch with Dovecot as the upstream: a
// separate process that reads the messages from its own store, as a real
// server does, instead of go-imap's in-memory server inside the benchmark
// process. Direct, proxied and forwarded clients use the same Dovecot in
// the same run. cpu-proxy/direct counts this process only (proxy and
// client), not Dovecot. It needs dovecot-imapd, like the interop tests.
func BenchmarkFetchDovecot(b *testing.B) {
	benchFetch(b, func(b *testing.B, bodies [][]byte) fetchClients {
		e := newInteropEnv(b, "bench")
		a := e.account(b, "bench")
		seed := e.direct(b, a)
		for _, body := range bodies {
			appendMessage(b, seed, body)
		}
		seed.Close()

		forwarded := dialTLSVia(b, tcpForwarder(b, e.dovecot.Addr), e.dovecot.CAPEM)
		if err := forwarded.Authenticate(auth.NewXOAUTH2Client(a.Mailbox, e.accessToken(b, a.Mailbox))); err != nil {
			b.Fatalf("XOAUTH2 through the forwarder: %v", err)
		}
		return fetchClients{
			direct:          e.direct(b, a),
			proxied:         benchLoginAs(b, e.addr, a.Login, a.Password, false),
			proxiedBigReads: benchLoginAs(b, e.addr, a.Login, a.Password, true),
			forwarded:       forwarded,
		}
	})
}

// dialTLSVia connects an imapclient over TLS to addr, trusting caPEM for
// the name 127.0.0.1.
func dialTLSVia(b *testing.B, addr string, caPEM []byte) *imapclient.Client {
	b.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}})
	if err != nil {
		b.Fatalf("dialing %s: %v", addr, err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkRelayDovecot compares the two relays against Dovecot in one
// run: proxyCopy, which coalesces the TLS records that have already
// arrived (coalescingConn, reads without waiting), and plainCopy, a plain
// read/write loop with the same small idle buffer. Two sessions of the
// same mailbox through the same proxy, one on each relay, fetch in turns
// (paired, as in BenchmarkFetch), with the proxy logging at warn level:
//
//	coalescing/plain      speed of proxyCopy over plainCopy (median of the pairs; > 1: coalescing is faster)
//	cpu-coalescing/plain  this process's CPU time (client and proxy) on the proxyCopy session over the plainCopy one
func BenchmarkRelayDovecot(b *testing.B) {
	for _, tc := range fetchCases {
		b.Run(tc.name, func(b *testing.B) {
			e := newInteropEnvLogging(b, slog.LevelWarn, "bench")
			a := e.account(b, "bench")
			seed := e.direct(b, a)
			body := benchBody(tc.size)
			for range tc.count {
				appendMessage(b, seed, body)
			}
			seed.Close()
			// Each session takes the relay in force when it starts
			// relaying: SELECT waits for that before the switch.
			session := func(plain bool) *imapclient.Client {
				proxy.SetPlainRelay(e.srv, plain)
				c := benchLoginAs(b, e.addr, a.Login, a.Password, false)
				if _, err := c.Select("INBOX", nil).Wait(); err != nil {
					b.Fatal(err)
				}
				return c
			}
			plain, coalescing := session(true), session(false)
			fetch := func(c *imapclient.Client) {
				msgs, err := c.Fetch(allMessages(), &imap.FetchOptions{
					BodySection: []*imap.FetchItemBodySection{{Peek: true}},
				}).Collect()
				if err != nil || len(msgs) != tc.count {
					b.Fatalf("FETCH: %d messages, %v", len(msgs), err)
				}
			}
			r := paired(b.N, func() { fetch(plain) }, func() { fetch(coalescing) })
			mb := float64(tc.size*tc.count) / 1e6
			b.ReportMetric(mb/r.direct.Seconds(), "plain-MB/s")
			b.ReportMetric(mb/r.proxied.Seconds(), "coalescing-MB/s")
			b.ReportMetric(r.ratio, "coalescing/plain")
			b.ReportMetric(r.cpuRatio, "cpu-coalescing/plain")
		})
	}
}

// benchBody returns a message of size bytes.
func benchBody(size int) []byte {
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n")
	body := bytes.Repeat(line, size/len(line)+1)[:size]
	copy(body, message("bench", ""))
	return body
}

// BenchmarkLoginDovecot is BenchmarkLogin against Dovecot: one collector
// login, from connect to the tagged OK, then the connection is closed.
// The proxy logs at warn level and its caches are warm (derived key and
// access token); Dovecot checks every token at the test token endpoint,
// for both paths alike.
//
//	direct-xoauth2  TLS + AUTHENTICATE XOAUTH2 straight to Dovecot
//	proxy-warm      LOGIN through the proxy
//	paired-warm     the two alternated: direct-ms, proxy-ms (medians) and added-ms
//
// allocs/op of direct-xoauth2 and proxy-warm count this whole process:
// the client and, for proxy-warm, the proxy.
func BenchmarkLoginDovecot(b *testing.B) {
	e := newInteropEnvLogging(b, slog.LevelWarn, "bench")
	a := e.account(b, "bench")
	token := e.accessToken(b, a.Mailbox)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.dovecot.CAPEM)
	direct := func() error {
		c, err := imapclient.DialTLS(e.dovecot.Addr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}})
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Authenticate(auth.NewXOAUTH2Client(a.Mailbox, token))
	}
	viaProxy := func() error {
		conn, err := net.DialTimeout("tcp", e.addr, testDeadline)
		if err != nil {
			return err
		}
		c := imapclient.New(conn, nil)
		defer c.Close()
		return c.Login(a.Login, a.Password).Wait()
	}
	must := func(b *testing.B, f func() error) func() {
		return func() {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
	}
	must(b, viaProxy)() // warm the key and token caches
	b.Run("direct-xoauth2", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			must(b, direct)()
		}
	})
	b.Run("proxy-warm", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			must(b, viaProxy)()
		}
	})
	b.Run("paired-warm", func(b *testing.B) {
		r := paired(b.N, must(b, direct), must(b, viaProxy))
		b.ReportMetric(float64(r.direct.Microseconds())/1e3, "direct-ms")
		b.ReportMetric(float64(r.proxied.Microseconds())/1e3, "proxy-ms")
		b.ReportMetric(float64((r.proxied-r.direct).Microseconds())/1e3, "added-ms")
		b.ReportMetric(r.cpuRatio, "cpu-proxy/direct")
	})
}
