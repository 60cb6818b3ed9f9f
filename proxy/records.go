package proxy

import (
	"errors"
	"net"
	"syscall"
)

// recordConn sits between an upstream's socket and its TLS client. It
// follows the TLS record framing of the bytes it passes up, so that the
// relay can tell when crypto/tls holds a whole record it has not returned
// yet, and it can refuse socket reads for a moment (onlyBuffered), so that
// a Read on the TLS connection returns what is already buffered or fails
// at once, never waiting on the network. Only the goroutine reading the TLS
// connection uses it.
type recordConn struct {
	net.Conn
	onlyBuffered bool

	header   [5]byte // the record header being received
	headerN  int
	bodyLeft int   // bytes of the current record's body still to come
	complete int64 // whole records passed up to crypto/tls
	// crypto/tls reads the socket only when it holds no whole record, so
	// at each socket read every whole record so far has been used.
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

// Read reads the socket unless onlyBuffered is set, and follows the
// framing of what it returns.
func (c *recordConn) Read(p []byte) (int, error) {
	if c.onlyBuffered {
		return 0, errOnlyBuffered
	}
	c.usedBefore, c.returned = c.complete, 0
	n, err := c.Conn.Read(p)
	c.frame(p[:n])
	return n, err
}

// frame advances the record framing over b.
func (c *recordConn) frame(b []byte) {
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
func (c *recordConn) noteReturned() { c.returned++ }

// holdsRecord reports whether crypto/tls probably holds a whole record not
// returned yet. It can be wrong only in one direction: a record that
// carries no data (a session ticket) counts as one, and then a Read under
// onlyBuffered just fails.
func (c *recordConn) holdsRecord() bool {
	return c.complete-c.usedBefore-c.returned > 0
}

// readBuffered is one Read of src (the TLS connection above c) that takes
// only what is already buffered.
func (c *recordConn) readBuffered(src net.Conn, p []byte) (int, error) {
	c.onlyBuffered = true
	n, err := src.Read(p)
	c.onlyBuffered = false
	if n > 0 {
		c.noteReturned()
	}
	return n, err
}

// SyscallConn gives the socket's descriptor, so the relay can measure the
// receive queue under the TLS layer.
func (c *recordConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}
