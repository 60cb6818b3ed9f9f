package proxy

import (
	"io"
	"net"
)

// coalescingConn sits between an upstream's socket and its TLS client. It
// follows the TLS record framing of the bytes it passes up, so that the
// relay can tell when crypto/tls holds a whole record it has not returned
// yet, and it can keep a Read on the TLS connection from waiting on the
// network for a moment (onlyBuffered): the Read then returns what is
// already buffered, in crypto/tls or in the kernel, or fails at once. Only
// the goroutine reading the TLS connection uses it.
type coalescingConn struct {
	net.Conn
	onlyBuffered bool
	// drained: the last socket read returned less than it asked for, so
	// the kernel held nothing more at that moment.
	drained bool
	now     nonblockingReader // reads the socket without waiting; zero if it cannot
	ended   error             // EOF or the error a read without waiting met

	header     [5]byte // the record header being received
	headerN    int
	bodyLeft   int   // bytes of the current record's body still to come
	complete   int64 // whole records passed up to crypto/tls
	usedBefore int64 // complete at the last socket read
	returned   int64 // records returned by TLS Reads since then
}

// errOnlyBuffered is what a socket read gets while onlyBuffered is set. It
// is temporary, like a timeout, so crypto/tls keeps its state and the next
// Read carries on.
var errOnlyBuffered error = onlyBufferedError{}

type onlyBufferedError struct{}

func (onlyBufferedError) Error() string   { return "relay: only buffered records wanted" }
func (onlyBufferedError) Timeout() bool   { return true }
func (onlyBufferedError) Temporary() bool { return true }

// newCoalescingConn returns a coalescingConn over an upstream's socket.
func newCoalescingConn(nc net.Conn) *coalescingConn {
	c := &coalescingConn{Conn: nc}
	c.now.init(nc)
	return c
}

// Read reads the socket and follows the framing of what it returns. Under
// onlyBuffered it takes only bytes the kernel already holds, and fails with
// errOnlyBuffered when there are none (or none are known to be there).
func (c *coalescingConn) Read(p []byte) (int, error) {
	// crypto/tls reads only when it holds no whole record: every whole
	// record so far has been used.
	c.usedBefore, c.returned = c.complete, 0
	var n int
	var err error
	switch {
	case c.onlyBuffered && c.drained:
		return 0, errOnlyBuffered
	case c.onlyBuffered:
		if n, err = c.now.read(p); n == 0 {
			// Nothing queued, or the end of the stream: keep an EOF or
			// an error for the next Read, which crypto/tls treats as
			// final (it sees a temporary error now).
			c.drained = true
			if err != nil && err != io.EOF {
				err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
			}
			c.ended = err
			return 0, errOnlyBuffered
		}
	case c.ended != nil:
		return 0, c.ended
	default:
		n, err = c.Conn.Read(p)
	}
	c.drained = n < len(p)
	c.frame(p[:n])
	return n, err
}

// more reports whether a Read of the TLS connection above c may have data
// without waiting on the network: a whole record crypto/tls has not
// returned, or bytes the kernel may hold.
func (c *coalescingConn) more() bool {
	return c.holdsRecord() || !c.drained
}

// midRecord reports whether crypto/tls holds part of a record: the rest is
// on its way.
func (c *coalescingConn) midRecord() bool {
	return c.headerN > 0 || c.bodyLeft > 0
}

// frame advances the record framing over b.
func (c *coalescingConn) frame(b []byte) {
	for len(b) > 0 {
		if c.headerN < len(c.header) {
			k := copy(c.header[c.headerN:], b)
			c.headerN += k
			b = b[k:]
			if c.headerN < len(c.header) {
				return
			}
			c.bodyLeft = int(c.header[3])<<8 | int(c.header[4])
		}
		k := min(c.bodyLeft, len(b))
		c.bodyLeft -= k
		b = b[k:]
		if c.bodyLeft == 0 {
			c.complete++
			c.headerN = 0
		}
	}
}

// noteReturned records that a TLS Read returned data: one record used (or
// the rest of one, which makes holdsRecord err on the safe side).
func (c *coalescingConn) noteReturned() { c.returned++ }

// holdsRecord reports whether crypto/tls probably holds a whole record not
// returned yet. It can be wrong only in one direction: a record that
// carries no data (a session ticket) counts as one, and then a Read under
// onlyBuffered just fails.
func (c *coalescingConn) holdsRecord() bool {
	return c.complete-c.usedBefore-c.returned > 0
}

// readBuffered is one Read of src (the TLS connection above c) that takes
// only what is already buffered.
func (c *coalescingConn) readBuffered(src net.Conn, p []byte) (int, error) {
	c.onlyBuffered = true
	n, err := src.Read(p)
	c.onlyBuffered = false
	if n > 0 {
		c.noteReturned()
	}
	return n, err
}
