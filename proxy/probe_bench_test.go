package proxy_test

import (
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// BenchmarkMicrosoftLoginProbe measures a warm login through the proxy
// to the Microsoft personality with the NAMESPACE probe (provider type
// microsoft) and without it (type generic), LOGIN to OK, alternating in
// one run: go test -run '^$' -bench MicrosoftLoginProbe -benchtime 300x ./proxy/
func BenchmarkMicrosoftLoginProbe(b *testing.B) {
	for _, typ := range []string{"generic", "microsoft", "generic", "microsoft"} {
		name := "without_probe"
		if typ == "microsoft" {
			name = "with_probe"
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, harnessOptions{flavor: authtest.Microsoft, personality: proxytest.Microsoft,
				providerType: typ, upstreamMaxSessions: -1})
			login := func() {
				r := h.raw()
				r.send("a1 LOGIN " + testLogin + " \"" + testPassword + "\"\r\n")
				if l := r.until("a1 "); !strings.HasPrefix(l[len(l)-1], "a1 OK") {
					b.Fatalf("login: %q", l)
				}
				r.nc.Close()
			}
			login() // the KDF and the first token
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				login()
			}
		})
	}
}
