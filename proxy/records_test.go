package proxy

import (
	"bytes"
	"math/rand/v2"
	"net"
	"testing"
)

// TestRecordConnFraming feeds a stream of TLS records through recordConn
// in pieces of every size, headers split included, and checks that it
// counts exactly the records that have fully passed.
func TestRecordConnFraming(t *testing.T) {
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
		c := &recordConn{Conn: a}
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

// TestRecordConnOnlyBuffered: under onlyBuffered a socket read fails at
// once, with a temporary error, and holdsRecord follows what was returned.
func TestRecordConnOnlyBuffered(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := &recordConn{Conn: a}
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
