package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// countingConn counts the Write calls on a connection.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestProxyCopyCoalescesWithoutWaiting: records that have already arrived
// leave in fewer writes than records, every byte arrives unchanged and in
// order, and the last record is delivered although the sender then stays
// silent (coalescing never waits for data that is not there). With the
// socket's descriptor hidden, only the records the TLS layer has read
// ahead can be coalesced (coalescingConn tells when).
func TestProxyCopyCoalescesWithoutWaiting(t *testing.T) {
	for _, tc := range []struct {
		name       string
		hideSocket bool
	}{{"kernel-queue", false}, {"tls-buffer-only", true}} {
		t.Run(tc.name, func(t *testing.T) {
			if !canReadWithoutWaiting && !tc.hideSocket {
				t.Skip("on this platform the relay does not read a socket without waiting")
			}
			testProxyCopyCoalesces(t, tc.hideSocket)
		})
	}
}

// opaqueConn hides a connection's file descriptor (no SyscallConn), so the
// relay cannot read it without waiting.
type opaqueConn struct{ net.Conn }

func testProxyCopyCoalesces(t *testing.T, hideSocket bool) {
	sendSide, src := tcpPair(t)
	dstConn, recvSide := tcpPair(t)
	cert, caPEM, err := proxytest.NewCertificate("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var under net.Conn = src
	if hideSocket {
		under = opaqueConn{src}
	}
	rc := newCoalescingConn(under)
	server := tls.Server(sendSide, &tls.Config{Certificates: []tls.Certificate{cert}})
	client := tls.Client(rc, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for _, c := range []net.Conn{sendSide, src, dstConn, recvSide} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}

	// One full record first (as a large literal would), which grows the
	// TLS layer's read buffer, then 60 records of 1 KiB and a short last
	// one: all in the receiver's kernel buffer before the relay starts,
	// and nothing follows the last one.
	var want bytes.Buffer
	send := func(rec []byte) {
		want.Write(rec)
		if _, err := server.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	send(bytes.Repeat([]byte{'L'}, maxRecordPlaintext))
	const records = 60
	for i := 0; i < records; i++ {
		rec := bytes.Repeat([]byte{byte('a' + i%26)}, 1024)
		rec[0] = byte(i)
		send(rec)
	}
	send([]byte("A1 OK done\r\n"))

	dst := &countingConn{Conn: dstConn}
	results := make(chan copyResult, 1)
	var counter atomic.Int64
	go func() { results <- proxyCopy(false, dst, client, nil, rc, &counter, nil) }()

	got := make([]byte, want.Len())
	if _, err := io.ReadFull(recvSide, got); err != nil {
		t.Fatalf("after the sender went silent, the relay delivered %d of %d bytes: %v", counter.Load(), want.Len(), err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("relayed bytes differ from the bytes sent")
	}
	// With the socket readable, everything queued can go out in full
	// large buffers (one more write allowed for where the first Read
	// ends). The TLS layer alone holds fewer records at a time.
	limit := int64(records - 1)
	if !hideSocket {
		limit = int64((want.Len()+relayBufferSize-1)/relayBufferSize + 1)
	}
	if n := dst.writes.Load(); n > limit {
		t.Errorf("%d writes for %d queued records (%d bytes): want at most %d", n, records+2, want.Len(), limit)
	} else {
		t.Logf("%d writes for %d records", n, records+2)
	}
	server.Close()
	if r := <-results; r.err != nil || r.n != int64(want.Len()) {
		t.Errorf("proxyCopy: %d bytes, %v", r.n, r.err)
	}
}

// scriptedSrc is a source whose Reads fill the given counts of bytes (a
// count past the buffer fills it), then return EOF; it records the size
// of the buffer each Read was given.
type scriptedSrc struct {
	net.Conn
	counts []int
	sizes  []int
}

func (s *scriptedSrc) Read(p []byte) (int, error) {
	s.sizes = append(s.sizes, len(p))
	if len(s.counts) == 0 {
		return 0, io.EOF
	}
	n := min(s.counts[0], len(p))
	s.counts = s.counts[1:]
	return n, nil
}

// TestCopyBufferSizes: both relays wait in the small idle buffer, move to
// the large one after a Read that filled the small one, and go back to
// the small one once the flow stops, so that an idle direction holds
// only the small one.
func TestCopyBufferSizes(t *testing.T) {
	relays := map[string]func(net.Conn, *scriptedSrc) copyResult{
		"proxyCopy": func(dst net.Conn, src *scriptedSrc) copyResult {
			return proxyCopy(false, dst, src, nil, nil, new(atomic.Int64), nil)
		},
		"plainCopy": func(dst net.Conn, src *scriptedSrc) copyResult {
			return plainCopy(false, dst, src, nil, new(atomic.Int64), nil)
		},
	}
	for name, relay := range relays {
		t.Run(name, func(t *testing.T) {
			dst, sink := tcpPair(t)
			go io.Copy(io.Discard, sink)
			// A burst: the small buffer fills, the large one too, then a
			// short Read ends it; then a short Read while idle.
			src := &scriptedSrc{counts: []int{relayBufferSize, relayBufferSize, 10, 10}}
			r := relay(dst, src)
			if r.err != nil {
				t.Fatal(r.err)
			}
			if want := int64(idleBufferSize + relayBufferSize + 10 + 10); r.n != want {
				t.Errorf("copied %d bytes, want %d", r.n, want)
			}
			want := []int{idleBufferSize, relayBufferSize, relayBufferSize, idleBufferSize, idleBufferSize}
			if !slices.Equal(src.sizes, want) {
				t.Errorf("Read buffer sizes %v, want %v", src.sizes, want)
			}
		})
	}
}
