package proxy_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// The benchmarks measure the proxy against direct access to the same
// upstream in the same run; compare the ns/op of the "proxy" and "direct"
// sub-benchmarks (ratio direct/proxy is the relative throughput).

// BenchmarkFetch fetches one large message, or many small ones, per op.
func BenchmarkFetch(b *testing.B) {
	for _, tc := range []struct {
		name  string
		size  int
		count int
	}{
		{"large-4MiB", 4 << 20, 1},
		{"small-200x2KiB", 2 << 10, 200},
	} {
		h := newHarness(b, harnessOptions{})
		seed := h.login()
		line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n")
		body := bytes.Repeat(line, tc.size/len(line)+1)[:tc.size]
		copy(body, message("bench", ""))
		for i := 0; i < tc.count; i++ {
			appendMessage(b, seed, body)
		}
		clients := map[string]*imapclient.Client{"direct": h.direct(nil), "proxy": h.login()}
		for _, via := range []string{"direct", "proxy"} {
			c := clients[via]
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%s/%s", tc.name, via), func(b *testing.B) {
				b.SetBytes(int64(tc.size * tc.count))
				for i := 0; i < b.N; i++ {
					msgs, err := c.Fetch(allMessages(), &imap.FetchOptions{
						BodySection: []*imap.FetchItemBodySection{{Peek: true}},
					}).Collect()
					if err != nil || len(msgs) != tc.count {
						b.Fatalf("FETCH: %d messages, %v", len(msgs), err)
					}
				}
			})
		}
	}
}

// BenchmarkLogin compares a collector's LOGIN through the proxy (token and
// derived key cached: the warm path) with a direct XOAUTH2 login.
func BenchmarkLogin(b *testing.B) {
	h := newHarness(b, harnessOptions{})
	h.login() // warm the key and token caches
	token := h.directToken()
	b.Run("direct-xoauth2", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c := h.directWith(token, nil)
			c.Close()
		}
	})
	b.Run("proxy-warm", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			c := h.login()
			c.Close()
		}
	})
}
