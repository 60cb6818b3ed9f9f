package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
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
