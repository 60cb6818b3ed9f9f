package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// BenchmarkSMTPSubmit sends messages of two sizes on one session, through
// the proxy's SMTP listener and directly to the submission upstream (both
// over TLS with XOAUTH2), in one run: msgs/s and MB/s for each. The proxy
// path adds a TCP hop and a second TLS session, and each message waits for
// both replies.
func BenchmarkSMTPSubmit(b *testing.B) {
	h := newHarness(b, harnessOptions{smtp: true, smtpOptions: proxytest.SMTPUpstreamOptions{DiscardData: true}})
	proxyAddr := h.serveSMTP("127.0.0.1:0", false)
	for _, size := range []int{4 << 10, 1 << 20} {
		msg := bigMessage(size)
		b.Run(fmt.Sprintf("proxy/%dKiB", size>>10), func(b *testing.B) {
			c := dialSMTP(b, proxyAddr)
			if err := c.Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
				b.Fatal(err)
			}
			submit(b, c, msg)
		})
		b.Run(fmt.Sprintf("direct/%dKiB", size>>10), func(b *testing.B) {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(h.smtpUpstream.CAPEM)
			conn, err := net.Dial("tcp", h.smtpUpstream.Addr)
			if err != nil {
				b.Fatal(err)
			}
			c, err := smtp.NewClientStartTLS(conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			if err := c.Auth(auth.NewXOAUTH2Client(testMailbox, h.directToken())); err != nil {
				b.Fatal(err)
			}
			submit(b, c, msg)
		})
	}
}

// submit sends msg b.N times on c and reports msgs/s.
func submit(b *testing.B, c *smtp.Client, msg []byte) {
	b.SetBytes(int64(len(msg)))
	b.ResetTimer()
	for range b.N {
		if err := c.Mail(testMailbox, nil); err != nil {
			b.Fatal(err)
		}
		if err := c.Rcpt("a@example.com", nil); err != nil {
			b.Fatal(err)
		}
		w, err := c.Data()
		if err != nil {
			b.Fatal(err)
		}
		w.Write(msg)
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
