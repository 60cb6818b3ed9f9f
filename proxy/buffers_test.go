package proxy

import (
	"strings"
	"testing"
)

// TestTakeBufferedOutlivesThePool: what takeBuffered returns stays intact
// after its reader goes back to the pool and is reused, and a pooled
// reader starts empty.
func TestTakeBufferedOutlivesThePool(t *testing.T) {
	br := newLineReader(strings.NewReader("a1 LOGIN u p\r\na2 SELECT INBOX\r\n"))
	if _, err := br.ReadSlice('\n'); err != nil {
		t.Fatal(err)
	}
	pending := takeBuffered(br)
	putLineReader(br)
	for range 4 { // the pool may hand back the same reader
		other := newLineReader(strings.NewReader(strings.Repeat("x", lineBufferSize)))
		if n := other.Buffered(); n != 0 {
			t.Fatalf("a pooled reader starts with %d bytes buffered", n)
		}
		other.Peek(lineBufferSize)
		putLineReader(other)
	}
	if got := string(pending); got != "a2 SELECT INBOX\r\n" {
		t.Errorf("pending = %q after the reader was reused", got)
	}
	if takeBuffered(nil) != nil || takeBuffered(newLineReader(strings.NewReader(""))) != nil {
		t.Error("nothing buffered should give nil")
	}
}
