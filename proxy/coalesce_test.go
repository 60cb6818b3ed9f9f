package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestCoalescingConnFraming feeds a stream of TLS records through coalescingConn
// in pieces of every size, headers split included, and checks that it
// counts exactly the records that have fully passed.
func TestCoalescingConnFraming(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream bytes.Buffer
	var ends []int // offset just after each record
	for i := 0; i < 200; i++ {
		n := rng.IntN(600)
		if i%50 == 0 {
			n = 0 // empty records are legal framing
		}
		if i%37 == 0 {
			n = maxRecordPlaintext + 256
		}
		stream.Write([]byte{23, 3, 3, byte(n >> 8), byte(n)})
		stream.Write(bytes.Repeat([]byte{byte(i)}, n))
		ends = append(ends, stream.Len())
	}
	data := stream.Bytes()
	for _, piece := range []int{1, 2, 4, 5, 6, 7, 100, 4096, len(data)} {
		a, b := net.Pipe()
		c := &coalescingConn{Conn: a}
		go func() {
			for off := 0; off < len(data); off += piece {
				b.Write(data[off:min(off+piece, len(data))])
			}
			b.Close()
		}()
		got := 0
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			got += n
			want := 0
			for want < len(ends) && ends[want] <= got {
				want++
			}
			if c.complete != int64(want) {
				t.Fatalf("pieces of %d, after %d bytes: %d whole records counted, want %d", piece, got, c.complete, want)
			}
			if err != nil {
				break
			}
		}
		a.Close()
		if got != len(data) {
			t.Fatalf("pieces of %d: read %d of %d bytes", piece, got, len(data))
		}
	}
}

// TestCoalescingConnOnlyBuffered: under onlyBuffered a socket read fails at
// once, with a temporary error, and holdsRecord follows what was returned.
func TestCoalescingConnOnlyBuffered(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := &coalescingConn{Conn: a}
	c.onlyBuffered = true
	n, err := c.Read(make([]byte, 10)) // net.Pipe would block here without onlyBuffered
	if ne, ok := err.(net.Error); n != 0 || !ok || !ne.Timeout() {
		t.Fatalf("Read under onlyBuffered: %d, %v; want 0 and a timeout-like error", n, err)
	}
	c.onlyBuffered = false

	two := []byte{23, 3, 3, 0, 1, 'x', 23, 3, 3, 0, 1, 'y'}
	go b.Write(two)
	if _, err := c.Read(make([]byte, len(two))); err != nil {
		t.Fatal(err)
	}
	if c.complete != 2 || !c.holdsRecord() {
		t.Fatalf("after two records: complete %d, holdsRecord %v", c.complete, c.holdsRecord())
	}
	c.noteReturned()
	if !c.holdsRecord() {
		t.Error("one of two records returned: the other is still held")
	}
	c.noteReturned()
	if c.holdsRecord() {
		t.Error("both records returned: holdsRecord still true")
	}
}

// TestCoalescingConnReadsQueuedBytesWithoutWaiting: under onlyBuffered a read
// takes what the kernel already holds, and once a read has emptied the
// queue the next one fails at once instead of waiting for the peer.
func TestCoalescingConnReadsQueuedBytesWithoutWaiting(t *testing.T) {
	if !canReadWithoutWaiting {
		t.Skip("on this platform the relay does not read a socket without waiting")
	}
	peer, local := tcpPair(t)
	local.SetDeadline(time.Now().Add(10 * time.Second)) // a read that waits fails the test, not hangs it
	c := newCoalescingConn(local)

	two := []byte{23, 3, 3, 0, 1, 'x', 23, 3, 3, 0, 1, 'y'}
	if _, err := peer.Write(two); err != nil {
		t.Fatal(err)
	}
	// A waiting read of a piece: the rest came in the same segment, so it
	// is queued now.
	if n, err := c.Read(make([]byte, 3)); n != 3 || err != nil {
		t.Fatalf("first read: %d, %v", n, err)
	}
	c.onlyBuffered = true
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n != len(two)-3 || err != nil {
		t.Fatalf("read of the queued rest: %d, %v; want %d bytes", n, err, len(two)-3)
	}
	if c.complete != 2 || c.more() != true {
		t.Fatalf("after the queued rest: complete %d, more %v; want 2 and true (two records for crypto/tls)", c.complete, c.more())
	}
	c.noteReturned()
	c.noteReturned()
	if c.more() {
		t.Error("both records returned and the queue emptied: more still true")
	}
	n, err = c.Read(buf)
	if ne, ok := err.(net.Error); n != 0 || !ok || !ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of an empty queue: %d, %v; want 0 and errOnlyBuffered at once", n, err)
	}
}

// TestCoalescingConnKeepsResetForNextRead: a connection reset met by a read
// that does not wait is reported by the next waiting read, not lost (the
// kernel reports it once, then only EOF).
func TestCoalescingConnKeepsResetForNextRead(t *testing.T) {
	if !canReadWithoutWaiting {
		t.Skip("on this platform the relay does not read a socket without waiting")
	}
	peer, local := tcpPair(t)
	local.SetDeadline(time.Now().Add(10 * time.Second))
	c := newCoalescingConn(local)
	if _, err := peer.Write([]byte{23, 3, 3, 0, 1, 'x'}); err != nil {
		t.Fatal(err)
	}
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // RST
	if n, err := io.ReadFull(c, make([]byte, 6)); n != 6 {
		t.Fatalf("record before the reset: %d bytes, %v", n, err)
	}
	// Under onlyBuffered, read until the reset has been met: the RST may
	// still be on its way when the first read runs.
	c.onlyBuffered = true
	deadline := time.Now().Add(10 * time.Second)
	for c.ended == nil {
		if time.Now().After(deadline) {
			t.Fatal("no reset seen by reads that do not wait")
		}
		c.drained = false
		if _, err := c.Read(make([]byte, 64)); err != errOnlyBuffered {
			t.Fatalf("read under onlyBuffered: %v; want errOnlyBuffered", err)
		}
	}
	c.onlyBuffered = false
	_, err := c.Read(make([]byte, 64))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("next waiting read: %v; want the connection reset", err)
	}
}
