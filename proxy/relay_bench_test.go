package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// BenchmarkProxyCopy runs one proxyCopy (one direction of a relayed
// session) over loopback TCP for the whole benchmark and moves size bytes
// through it per op. For "tcp", allocs/op is zero for 1 MiB and for 64 MiB:
// the relay allocates nothing per byte, per read or per write.
//
// The "tls" cases read from a TLS client connection, as the upstream side
// of a session does, with the peer writing records of 4 KiB; this is the
// path that coalesces records. Their allocs/op grow with the bytes, but
// none is the relay's: crypto/tls allocates one small reader each time it
// reads the socket (Conn.readFromUntil), as it does for any TLS client,
// the collector's own included when it talks to the upstream directly;
// the relay's reads that do not wait count too, those that find nothing
// included (check with -memprofile).
func BenchmarkProxyCopy(b *testing.B) {
	for _, tc := range []struct {
		tls   bool
		chunk int // bytes per Write by the sender
	}{
		{false, 64 << 10},
		{true, 4 << 10},
	} {
		for _, size := range []int{1 << 20, 64 << 20} {
			kind := "tcp"
			if tc.tls {
				kind = "tls"
			}
			b.Run(fmt.Sprintf("%s/%dMiB", kind, size>>20), func(b *testing.B) {
				benchProxyCopy(b, tc.tls, tc.chunk, size)
			})
		}
	}
}

func benchProxyCopy(b *testing.B, useTLS bool, chunk, size int) {
	// sender --(src pair)--> proxyCopy --(dst pair)--> receiver
	sendSide, src := tcpPair(b)
	dst, recvSide := tcpPair(b)
	var sender io.Writer = sendSide
	var records *coalescingConn
	if useTLS {
		cert, caPEM, err := proxytest.NewCertificate("localhost", "127.0.0.1")
		if err != nil {
			b.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(caPEM)
		server := tls.Server(sendSide, &tls.Config{Certificates: []tls.Certificate{cert}})
		records = newCoalescingConn(src)
		client := tls.Client(records, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		errc := make(chan error, 1)
		go func() { errc <- server.Handshake() }()
		if err := client.Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		sender, src = server, client
	}

	results := make(chan copyResult, 1)
	var counter atomic.Int64
	go func() { results <- proxyCopy(false, dst, src, nil, records, &counter, nil) }()

	ops := make(chan struct{})
	sendErr := make(chan error, 1)
	go func() {
		data := make([]byte, chunk)
		for range ops {
			for left := size; left > 0; left -= chunk {
				if _, err := sender.Write(data[:min(chunk, left)]); err != nil {
					sendErr <- err
					return
				}
			}
		}
		sendErr <- nil
	}()
	sink := make([]byte, 256<<10)

	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ops <- struct{}{}
		for got := 0; got < size; {
			n, err := recvSide.Read(sink)
			if err != nil {
				b.Fatalf("after %d of %d bytes: %v", got, size, err)
			}
			got += n
		}
	}
	b.StopTimer()
	close(ops)
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
	sender.(io.Closer).Close() // TLS: close_notify, then the socket
	if r := <-results; r.err != nil || r.n != int64(b.N)*int64(size) {
		b.Fatalf("proxyCopy: %d bytes, %v", r.n, r.err)
	}
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(b testing.TB) (net.Conn, net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	other := <-accepted
	if other == nil {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() {
		dialed.Close()
		other.Close()
	})
	return dialed, other
}
