package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// The benchmarks measure the proxy against direct access to the same
// in-process upstream in the same run. The "direct" and "proxy"
// sub-benchmarks give each path's own ns/op and MB/s; the "paired" ones
// alternate the two paths inside every op, so that both see the same
// machine load, and report:
//
//	proxy/direct      relay throughput as a fraction of direct (median of the pairs)
//	cpu-proxy/direct  CPU time of the whole process (upstream, proxy and
//	                  client) on the proxied path over the direct one
//	added-ms          what a login through the proxy adds to a direct one
//
// Run them with `make bench`. Heavy setup happens only inside Benchmark
// functions, so `go test` without -bench never pays for it.

// fetchCases are the relay throughput workloads: one large message, and
// many small ones (one TLS record each from the upstream).
var fetchCases = []struct {
	name  string
	size  int
	count int
}{
	{"large-4MiB", 4 << 20, 1},
	{"small-200x2KiB", 2 << 10, 200},
}

// BenchmarkFetch fetches one large message, or many small ones, per op,
// directly from the in-process upstream and through the proxy.
func BenchmarkFetch(b *testing.B) {
	benchFetch(b, func(b *testing.B, bodies [][]byte) fetchClients {
		h := newHarness(b, harnessOptions{})
		seed := h.login()
		for _, body := range bodies {
			appendMessage(b, seed, body)
		}
		seed.Close()
		return fetchClients{
			direct:          h.direct(nil),
			proxied:         benchLoginAs(b, h.addr, testLogin, testPassword, false),
			proxiedBigReads: benchLoginAs(b, h.addr, testLogin, testPassword, true),
			forwarded:       benchDirectVia(b, h, tcpForwarder(b, h.upstream.Addr)),
		}
	})
}

// fetchClients are clients of the same mailbox: straight to the upstream
// with XOAUTH2, through the proxy with LOGIN (as is, and reading its socket
// in 64 KiB pieces), and straight to the upstream through a bare TCP
// forwarder.
type fetchClients struct {
	direct, proxied, proxiedBigReads, forwarded *imapclient.Client
}

// benchFetch runs fetchCases against the clients that setup returns for a
// mailbox holding bodies.
func benchFetch(b *testing.B, setup func(b *testing.B, bodies [][]byte) fetchClients) {
	for _, tc := range fetchCases {
		b.Run(tc.name, func(b *testing.B) {
			line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n")
			body := bytes.Repeat(line, tc.size/len(line)+1)[:tc.size]
			copy(body, message("bench", ""))
			bodies := make([][]byte, tc.count)
			for i := range bodies {
				bodies[i] = body
			}
			cs := setup(b, bodies)
			for _, c := range []*imapclient.Client{cs.direct, cs.proxied, cs.proxiedBigReads, cs.forwarded} {
				if _, err := c.Select("INBOX", nil).Wait(); err != nil {
					b.Fatal(err)
				}
			}
			perOp := int64(tc.size * tc.count)
			fetch := func(b *testing.B, c *imapclient.Client) {
				msgs, err := c.Fetch(allMessages(), &imap.FetchOptions{
					BodySection: []*imap.FetchItemBodySection{{Peek: true}},
				}).Collect()
				if err != nil || len(msgs) != tc.count {
					b.Fatalf("FETCH: %d messages, %v", len(msgs), err)
				}
			}
			b.Run("direct", func(b *testing.B) {
				b.SetBytes(perOp)
				for i := 0; i < b.N; i++ {
					fetch(b, cs.direct)
				}
			})
			b.Run("proxy", func(b *testing.B) {
				b.SetBytes(perOp)
				for i := 0; i < b.N; i++ {
					fetch(b, cs.proxied)
				}
			})
			b.Run("paired", func(b *testing.B) {
				r := paired(b.N, func() { fetch(b, cs.direct) }, func() { fetch(b, cs.proxied) })
				mb := float64(perOp) / 1e6
				b.ReportMetric(mb/r.direct.Seconds(), "direct-MB/s")
				b.ReportMetric(mb/r.proxied.Seconds(), "proxy-MB/s")
				b.ReportMetric(r.ratio, "proxy/direct")
				b.ReportMetric(r.cpuRatio, "cpu-proxy/direct")
			})
			// The same with a collector that reads its plain socket in
			// 64 KiB pieces rather than imapclient's 4 KiB: over TLS a
			// client's reads from the socket are already large (the TLS
			// layer fills its own buffer), over the proxy's plain socket
			// each 4 KiB is a read system call and often a wake-up.
			b.Run("paired-64KiB-reads", func(b *testing.B) {
				r := paired(b.N, func() { fetch(b, cs.direct) }, func() { fetch(b, cs.proxiedBigReads) })
				b.ReportMetric(r.ratio, "proxy/direct")
				b.ReportMetric(r.cpuRatio, "cpu-proxy/direct")
			})
			// The floor for any relay: a direct XOAUTH2 client through a
			// bare TCP forwarder (a read/write loop, no TLS termination),
			// against the same client without it.
			b.Run("forwarder-paired", func(b *testing.B) {
				r := paired(b.N, func() { fetch(b, cs.direct) }, func() { fetch(b, cs.forwarded) })
				b.ReportMetric(r.ratio, "forwarder/direct")
				b.ReportMetric(r.cpuRatio, "cpu-forwarder/direct")
			})
		})
	}
}

// pairedResult is what paired measured.
type pairedResult struct {
	direct, proxied time.Duration // median wall time of one run
	ratio           float64       // median of the per-pair ratios direct/proxied
	// cpuRatio is the process CPU time (user and system, every goroutine:
	// upstream, proxy and client) of all proxied runs over that of all
	// direct runs.
	cpuRatio float64
}

// paired runs direct and proxied n times each, alternating which goes
// first. Medians of adjacent pairs keep a burst of load from other
// processes, or a garbage collection, from counting against one path only.
func paired(n int, direct, proxied func()) pairedResult {
	var cpuD, cpuP time.Duration
	timed := func(f func(), cpu *time.Duration) time.Duration {
		c0 := processCPU()
		start := time.Now()
		f()
		d := time.Since(start)
		*cpu += processCPU() - c0
		return d
	}
	ds, ps := make([]time.Duration, n), make([]time.Duration, n)
	ratios := make([]float64, n)
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			ds[i] = timed(direct, &cpuD)
			ps[i] = timed(proxied, &cpuP)
		} else {
			ps[i] = timed(proxied, &cpuP)
			ds[i] = timed(direct, &cpuD)
		}
		ratios[i] = float64(ds[i]) / float64(ps[i])
	}
	slices.Sort(ds)
	slices.Sort(ps)
	slices.Sort(ratios)
	return pairedResult{ds[n/2], ps[n/2], ratios[n/2], float64(cpuP) / float64(cpuD)}
}

// processCPU returns the CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLogin measures one collector login, from connect to the tagged
// OK (then the connection is closed):
//
//	direct-xoauth2  TLS + AUTHENTICATE XOAUTH2 straight to the upstream
//	proxy-warm      LOGIN through the proxy, derived key and access token cached
//	proxy-cold      LOGIN through the proxy with an empty access-token cache:
//	                every login refreshes at the token endpoint (the
//	                endpoint's tokens live 1 min, under the 15 min refresh margin)
//	paired-warm, paired-cold  the proxy path alternated with the direct one
func BenchmarkLogin(b *testing.B) {
	warm := newHarness(b, harnessOptions{})
	warm.login().Close() // warm the key and token caches
	cold := newHarness(b, harnessOptions{accessTTL: time.Minute})
	cold.login().Close() // warm the key cache only
	token := warm.directToken()
	direct := func(b *testing.B) func() {
		return func() {
			if err := benchDirectErr(warm, token); err != nil {
				b.Fatal(err)
			}
		}
	}
	viaProxy := func(b *testing.B, h *harness) func() {
		return func() {
			if err := benchLoginErr(h); err != nil {
				b.Fatalf("LOGIN through the proxy: %v", err)
			}
		}
	}
	b.Run("direct-xoauth2", func(b *testing.B) {
		f := direct(b)
		for i := 0; i < b.N; i++ {
			f()
		}
	})
	for _, tc := range []struct {
		name string
		h    *harness
	}{{"warm", warm}, {"cold", cold}} {
		b.Run("proxy-"+tc.name, func(b *testing.B) {
			f := viaProxy(b, tc.h)
			for i := 0; i < b.N; i++ {
				f()
			}
		})
	}
	for _, tc := range []struct {
		name string
		h    *harness
	}{{"warm", warm}, {"cold", cold}} {
		b.Run("paired-"+tc.name, func(b *testing.B) {
			before := tc.h.tokens.RefreshCount(testMailbox)
			r := paired(b.N, direct(b), viaProxy(b, tc.h))
			b.ReportMetric(float64(r.direct.Microseconds())/1e3, "direct-ms")
			b.ReportMetric(float64(r.proxied.Microseconds())/1e3, "proxy-ms")
			b.ReportMetric(float64((r.proxied-r.direct).Microseconds())/1e3, "added-ms")
			refreshes := tc.h.tokens.RefreshCount(testMailbox) - before
			b.ReportMetric(float64(refreshes)/float64(b.N), "refreshes/login")
		})
	}
}

// BenchmarkLoginParallel is the login rate with many collectors logging in
// at once (16 per CPU), directly and through the proxy (warm caches).
func BenchmarkLoginParallel(b *testing.B) {
	h := newHarness(b, harnessOptions{serverTOML: "max_connections_per_ip = 1000\n"})
	h.login().Close()
	token := h.directToken()
	for _, via := range []string{"direct-xoauth2", "proxy-warm"} {
		b.Run(via, func(b *testing.B) {
			b.SetParallelism(16)
			var failures atomic.Int64
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					var err error
					if via == "proxy-warm" {
						err = benchLoginErr(h)
					} else {
						err = benchDirectErr(h, token)
					}
					if err != nil {
						failures.Add(1)
					}
				}
			})
			elapsed := time.Since(start)
			if n := failures.Load(); n > 0 {
				b.Fatalf("%d of %d logins failed", n, b.N)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "logins/s")
		})
	}
}

// benchLoginAs logs in through the proxy at addr on a connection without
// the harness's per-connection deadline, which a long benchmark would
// outlive. With bigReads the client reads the socket in 64 KiB pieces.
func benchLoginAs(b *testing.B, addr, login, password string, bigReads bool) *imapclient.Client {
	b.Helper()
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		b.Fatal(err)
	}
	if bigReads {
		conn = bigReadConn{conn, bufio.NewReaderSize(conn, 64<<10)}
	}
	c := imapclient.New(conn, nil)
	b.Cleanup(func() { c.Close() })
	if err := c.Login(login, password).Wait(); err != nil {
		b.Fatalf("LOGIN through the proxy: %v", err)
	}
	return c
}

// bigReadConn reads its connection through a large buffer.
type bigReadConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bigReadConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// benchLoginErr is one login through the proxy for RunParallel, which must
// not call Fatal from its goroutines.
func benchLoginErr(h *harness) error {
	conn, err := net.DialTimeout("tcp", h.addr, testDeadline)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := imapclient.New(conn, nil)
	defer c.Close()
	return c.Login(testLogin, testPassword).Wait()
}

// benchDirectErr is one direct XOAUTH2 login for RunParallel.
func benchDirectErr(h *harness, token string) error {
	c, err := dialUpstream(h, h.upstream.Addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Authenticate(auth.NewXOAUTH2Client(testMailbox, token)); err != nil {
		return fmt.Errorf("direct XOAUTH2: %w", err)
	}
	return nil
}

// dialUpstream connects an imapclient to the upstream's TLS port at addr
// (the upstream itself, or a forwarder in front of it).
func dialUpstream(h *harness, addr string) (*imapclient.Client, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.upstream.CAPEM)
	return imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}})
}

// benchDirectVia logs in with XOAUTH2 to the upstream through addr.
func benchDirectVia(b *testing.B, h *harness, addr string) *imapclient.Client {
	b.Helper()
	c, err := dialUpstream(h, addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if err := c.Authenticate(auth.NewXOAUTH2Client(testMailbox, h.directToken())); err != nil {
		b.Fatalf("XOAUTH2 via %s: %v", addr, err)
	}
	return c
}

// tcpForwarder listens on loopback and relays every connection to target
// with a plain read/write loop per direction; it returns its address.
func tcpForwarder(b *testing.B, target string) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		defer src.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return ln.Addr().String()
}
