package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The relay's buffers. A direction waits for data in a small buffer, so an
// idle session (a collector in IDLE, or between commands) holds
// idleBufferSize per direction; it takes a large pooled buffer only while
// data flows, and puts it back before it waits again.
const (
	// relayBufferSize is the large buffer: two TLS records of the largest
	// plaintext (2^14 bytes), so that two records can go out in one write.
	relayBufferSize = 2 * maxRecordPlaintext
	// idleBufferSize is the buffer a direction waits in. Most IMAP
	// commands and responses other than message bodies fit.
	idleBufferSize = 4 * 1024
	// maxRecordPlaintext is the most a TLS Read returns at once: one
	// record's plaintext.
	maxRecordPlaintext = 16 * 1024
)

// Coalescing limits. A TLS record on the wire is at most a 5-byte header
// plus 2^14 bytes of plaintext plus 2048 bytes of expansion (TLS 1.2's
// limit; TLS 1.3 allows 256, padding included).
const (
	maxRecordSize = 5 + maxRecordPlaintext + 2048
	// coalesceMinAhead is how many received bytes must be known to be
	// waiting before the relay reads another record into the same write:
	// room for the largest record, and for one more before it that
	// carries no data (a post-handshake message). With that much already
	// here, the extra Read never waits on the network.
	coalesceMinAhead = 2 * maxRecordSize
)

// halfCloseGrace is how long the upstream may keep answering after the
// collector has closed its sending side.
const halfCloseGrace = 10 * time.Second

// relayBuffers and idleBuffers recycle copy buffers across sessions, so
// the relay allocates nothing per byte and little per session.
var (
	relayBuffers = sync.Pool{New: func() any {
		b := make([]byte, relayBufferSize)
		return &b
	}}
	idleBuffers = sync.Pool{New: func() any {
		b := make([]byte, idleBufferSize)
		return &b
	}}
)

// copyResult is what one direction of the relay did.
type copyResult struct {
	toUpstream bool
	n          int64
	err        error
}

// relay passes bytes both ways until one side closes, first forwarding
// whatever the pre-auth readers had already buffered. It returns why the
// session ended.
func (c *conn) relay(up *upstreamConn, log *slog.Logger) string {
	defer up.nc.Close()
	c.nc.SetDeadline(time.Time{})
	c.mu.Lock()
	c.upstream = up.nc
	aborted := c.aborted
	c.mu.Unlock()
	if aborted { // Close ran between the login and here
		c.raw.SetDeadline(time.Now())
		up.nc.SetDeadline(time.Now())
	}
	c.relaying.Store(true)
	start := time.Now()

	results := make(chan copyResult, 2)
	go proxyCopy(results, true, up.nc, c.nc, c.br, nil, &c.srv.metrics.bytesToUpstream)
	go proxyCopy(results, false, c.nc, up.nc, up.br, up.records, &c.srv.metrics.bytesToClient)
	up.br = nil // proxyCopy drains it; its 4 KiB need not outlive that

	var toUpstream, toClient int64
	var firstErr error
	for i := 0; i < 2; i++ {
		r := <-results
		if r.toUpstream {
			toUpstream = r.n
		} else {
			toClient = r.n
		}
		if r.err != nil && firstErr == nil && !isClosedErr(r.err) {
			firstErr = r.err
		}
		if i == 0 {
			if r.toUpstream && r.err == nil {
				// The collector closed its side: tell the upstream, and let
				// it finish answering for a bounded time.
				if cw, ok := up.nc.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				up.nc.SetReadDeadline(time.Now().Add(halfCloseGrace))
			} else {
				// The upstream is gone (or a side failed): end both.
				c.nc.Close()
				up.nc.Close()
			}
		}
	}
	reason := "closed"
	if firstErr != nil {
		reason = "relay error: " + firstErr.Error()
	}
	log.Info("relay end", "duration", time.Since(start).Round(time.Millisecond),
		"bytes_to_upstream", toUpstream, "bytes_to_client", toClient, "reason", reason)
	return reason
}

// bufferedReader is the part of bufio.Reader the relay needs to drain.
type bufferedReader interface {
	Buffered() int
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
}

// proxyCopy copies src to dst, after first writing what pending holds, and
// adds every byte written to counter. It is a named function so goroutine
// dumps show what each goroutine is. A clean EOF from src is reported as a
// nil error.
//
// Each Read's bytes are written at once; proxyCopy never waits for more
// data before a write. Two things keep that cheap:
//   - Buffers: while nothing is known to be waiting (the kernel holds no
//     received bytes, and the TLS layer no rest of a record), the next Read
//     goes into a small buffer, which is all an idle direction holds.
//     Otherwise it goes into a large pooled buffer, which goes back to the
//     pool as soon as the flow stops. (Where the receive queue cannot be
//     measured, the large buffer is used throughout.)
//   - Coalescing: a TLS source returns one record per Read. When more
//     records have already arrived (many small FETCH responses, one record
//     each, or a large message faster than the collector reads), the relay
//     reads them into the same buffer and writes them with one call,
//     instead of one write (and one wake-up of the collector) per record.
//     It takes only what cannot make it wait on the network: whole records
//     that crypto/tls has already read ahead (records tells when, and keeps
//     such a Read off the socket), and records in the kernel while
//     coalesceMinAhead bytes are known to be there.
//
// records is the recordConn under a TLS src, or nil.
func proxyCopy(results chan<- copyResult, toUpstream bool, dst, src net.Conn, pending bufferedReader, records *recordConn, counter *atomic.Int64) {
	var written int64
	if n := pending.Buffered(); n > 0 {
		b, _ := pending.Peek(n)
		m, err := dst.Write(b)
		written += int64(m)
		counter.Add(int64(m))
		pending.Discard(n)
		if err != nil {
			results <- copyResult{toUpstream, written, err}
			return
		}
	}
	probe := newQueueProbe(src)
	_, coalesce := src.(*tls.Conn)
	var idle *[]byte // the small buffer; only with a probe to tell when to use it
	if probe != nil {
		idle = idleBuffers.Get().(*[]byte)
		defer idleBuffers.Put(idle)
	}
	var large *[]byte // held only while data flows
	defer func() {
		if large != nil {
			relayBuffers.Put(large)
		}
	}()
	// leftover: the TLS layer may hold plaintext of a record that did not
	// fit the small buffer. (A record always fits the large one.)
	leftover := false
	// ahead is a lower bound on the bytes received from the peer that src
	// has not returned yet (in the kernel or inside the TLS layer): the
	// last probe, less the most that the Reads since can have used up
	// (a TLS Read, one record whatever it returns).
	ahead := 0
	used := func(n int) int {
		if coalesce {
			return maxRecordSize
		}
		return n
	}
	for {
		if !leftover && ahead <= 0 {
			ahead = probe.queued()
		}
		var buf []byte
		// Without a probe nothing is known to be waiting, ever: always
		// use the large buffer, as a plain copy loop would.
		if leftover || ahead > 0 || probe == nil {
			if large == nil {
				large = relayBuffers.Get().(*[]byte)
			}
			buf = *large
		} else {
			if large != nil {
				relayBuffers.Put(large)
				large = nil
			}
			buf = *idle
		}
		n, rerr := src.Read(buf)
		ahead -= used(n)
		if records != nil && n > 0 {
			records.noteReturned()
		}
		if coalesce {
			for rerr == nil && n < len(buf) {
				// Whole records crypto/tls already holds (into the small
				// buffer too: filling it sends the next Read to the large
				// one).
				for records != nil && n < len(buf) && records.holdsRecord() {
					m, err := records.readBuffered(src, buf[n:])
					n += m
					ahead -= used(m)
					if err != nil || m == 0 {
						break // an error other than errOnlyBuffered comes back at the next Read
					}
				}
				// Records in the kernel, while a Read cannot wait for them.
				if large == nil || len(buf)-n < maxRecordPlaintext {
					break
				}
				if ahead < coalesceMinAhead {
					if ahead = max(ahead, probe.queued()); ahead < coalesceMinAhead {
						break
					}
				}
				var m int
				m, rerr = src.Read(buf[n:])
				n += m
				ahead -= used(m)
				if records != nil && m > 0 {
					records.noteReturned()
				}
			}
		}
		leftover = coalesce && large == nil && n == len(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			written += int64(m)
			counter.Add(int64(m))
			if werr != nil {
				results <- copyResult{toUpstream, written, werr}
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = nil
			}
			results <- copyResult{toUpstream, written, rerr}
			return
		}
	}
}

// isClosedErr reports errors that only say the other direction closed the
// connection or a shutdown deadline fired.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}

// queueProbe reports how many received bytes wait in the kernel under a
// connection (under the TLS layer for a TLS connection). A nil *queueProbe
// knows nothing and always says 0.
type queueProbe struct {
	rc      syscall.RawConn
	control func(fd uintptr) // p.read, bound once so probing does not allocate
	n       int
}

// newQueueProbe returns a probe for src, or nil when this platform cannot
// measure src's receive queue.
func newQueueProbe(src net.Conn) *queueProbe {
	if !canMeasureQueue {
		return nil
	}
	var c net.Conn = src
	if tc, ok := src.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &queueProbe{rc: rc}
	p.control = p.read
	return p
}

func (p *queueProbe) read(fd uintptr) { p.n = queuedBytes(fd) }

// queued returns how many bytes wait to be read from the socket, 0 if
// unknown.
func (p *queueProbe) queued() int {
	if p == nil {
		return 0
	}
	p.n = 0
	if err := p.rc.Control(p.control); err != nil {
		return 0
	}
	return p.n
}
