package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
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

// tailBytes is how much of the upstream's last output the relay keeps:
// enough for a BYE line such as Microsoft's
// "* BYE Session invalidated - AccessTokenExpired".
const tailBytes = 160

// byeTail keeps the last tailBytes bytes written in one direction.
type byeTail struct {
	buf [tailBytes]byte
	n   int
}

// bytes returns the bytes kept.
func (t *byeTail) bytes() []byte { return t.buf[:t.n] }

func (t *byeTail) add(b []byte) {
	if len(b) >= tailBytes {
		t.n = copy(t.buf[:], b[len(b)-tailBytes:])
		return
	}
	if keep := tailBytes - len(b); t.n > keep {
		copy(t.buf[:], t.buf[t.n-keep:t.n])
		t.n = keep
	}
	t.n += copy(t.buf[t.n:], b)
}

// upstreamBye returns the text of the BYE that ends tail, if the last
// complete line of tail is one.
func upstreamBye(tail []byte) (string, bool) {
	s := strings.TrimRight(string(tail), "\r\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	r := parseResponse(s)
	if r.tag != "*" || r.status != "BYE" {
		return "", false
	}
	return auth.OneLine(r.text, 200), true
}

// tokenExpiredBye reports whether a BYE's text is Microsoft 365's for a
// session whose access token expired, which is expected: the collector
// reconnects, and the proxy gives it a fresh token.
func tokenExpiredBye(text string) bool {
	return strings.Contains(text, "AccessTokenExpired")
}

// relay passes bytes both ways until one side closes, first forwarding
// whatever the pre-auth readers had already buffered. It returns why the
// session ended.
func (c *conn) relay(up *UpstreamConn, log *sessionLog) string {
	defer up.Close()
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

	// What the line readers hold unread goes first (pipelined commands,
	// or what the upstream sent after its OK); the readers themselves,
	// and the pre-auth writer, go back to their pools: a relayed session
	// holds only the relay's buffers.
	toUpstreamFirst, toClientFirst := takeBuffered(c.br), takeBuffered(up.br)
	c.releaseLineBuffers()
	putLineReader(up.br)
	up.br = nil

	link := relayLink{
		client: c.nc, upstream: up.nc, coalescer: up.coalescer,
		toUpstreamFirst: toUpstreamFirst, toClientFirst: toClientFirst,
		plain:           c.srv.plainRelay.Load(),
		toUpstreamBytes: &c.srv.metrics.bytesToUpstream, toClientBytes: &c.srv.metrics.bytesToClient,
		release: up.release,
	}
	first, second := link.run()
	var toUpstream, toClient int64
	var firstErr error
	for _, r := range [2]copyResult{first, second} {
		if r.toUpstream {
			toUpstream = r.n
		} else {
			toClient = r.n
		}
		if r.err != nil && firstErr == nil && !isClosedErr(r.err) {
			firstErr = r.err
		}
	}
	reason := "closed"
	if firstErr != nil {
		reason = "relay error: " + firstErr.Error()
	}
	if bye, ok := upstreamBye(link.clientTail.bytes()); ok {
		// The upstream said why it ended the session; what the sockets
		// did afterwards does not matter.
		reason = "upstream BYE: " + bye
		if tokenExpiredBye(bye) {
			reason += " (expected: the access token expired; the collector reconnects with a fresh one, see session_token_min)"
		}
	}
	if log.Enabled(slog.LevelInfo) {
		log.Info("relay end", "duration", time.Since(start).Round(time.Millisecond),
			"bytes_to_upstream", toUpstream, "bytes_to_client", toClient, "reason", reason)
	}
	return reason
}

// relayLink is one relayed session's two directions: the collector's
// connection, the upstream's, and what each direction first forwards.
type relayLink struct {
	client, upstream net.Conn
	// coalescer is the socket under upstream, following its TLS records;
	// nil for none.
	coalescer *coalescingConn
	// toUpstreamFirst and toClientFirst are what the pre-auth readers
	// had buffered, forwarded before anything else.
	toUpstreamFirst, toClientFirst []byte
	// plain selects plainCopy instead of proxyCopy (tests only).
	plain                          bool
	toUpstreamBytes, toClientBytes *atomic.Int64
	// release gives back the session's max_sessions slot; nil for none.
	release func()
	// clientTail is the last bytes written to the collector, to tell why
	// the upstream ended the session.
	clientTail byeTail
	// ended is set by the first direction to end, which ends the session.
	ended atomic.Bool
}

// run copies both ways until both directions have ended, and returns
// their results in the order they ended. The collector-to-upstream
// direction runs on the calling goroutine, the session's, which was
// only waiting for the two copies before; the upstream-to-collector
// direction gets a goroutine of its own (toClient). That way round, an
// idle relayed session holds less stack: the session's goroutine,
// waiting in a plain socket read, keeps a shallow stack that garbage
// collection shrinks to 8 KiB, while waiting in a TLS read kept it at
// 16 KiB; the new goroutine's TLS read fits in the 4 KiB it starts
// with. Whichever direction ends first ends the session (endFirst).
func (l *relayLink) run() (first, second copyResult) {
	done := make(chan copyResult, 1)
	go l.toClient(done)
	r := l.toUpstream()
	if l.endFirst(r) {
		return r, <-done
	}
	// The other direction ended first, and has finished ending the
	// session before it sent its result.
	return <-done, r
}

// toClient is the upstream-to-collector direction's goroutine. It is a
// named function so that goroutine dumps show what it is. It calls the
// copy itself, without a frame between: a new goroutine starts with a
// small stack (4 KiB under load), which a TLS read and write nearly
// fill, and every frame more made it grow in each session.
func (l *relayLink) toClient(done chan<- copyResult) {
	var r copyResult
	if l.plain {
		r = plainCopy(false, l.client, l.upstream, l.toClientFirst, l.toClientBytes, &l.clientTail)
	} else {
		r = proxyCopy(false, l.client, l.upstream, l.toClientFirst, l.coalescer, l.toClientBytes, &l.clientTail)
	}
	l.endFirst(r)
	done <- r
}

// toUpstream runs the collector-to-upstream direction to its end.
func (l *relayLink) toUpstream() copyResult {
	if l.plain {
		return plainCopy(true, l.upstream, l.client, l.toUpstreamFirst, l.toUpstreamBytes, nil)
	}
	return proxyCopy(true, l.upstream, l.client, l.toUpstreamFirst, nil, l.toUpstreamBytes, nil)
}

// endFirst ends the session if r is the first direction to end, and
// reports whether it was. When the collector closed its sending side
// cleanly, the upstream is told (a half close) and may finish answering
// for halfCloseGrace. Otherwise (the upstream is gone, or a side failed)
// both connections are closed, and the session's slot is given back
// before the collector sees the end, so that it may log in again at once.
func (l *relayLink) endFirst(r copyResult) bool {
	if !l.ended.CompareAndSwap(false, true) {
		return false
	}
	if r.toUpstream && r.err == nil {
		if cw, ok := l.upstream.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		l.upstream.SetReadDeadline(time.Now().Add(halfCloseGrace))
		return true
	}
	if l.release != nil {
		l.release()
	}
	l.client.Close()
	l.upstream.Close()
	return true
}

// proxyCopy copies src to dst, after first writing what pending holds, and
// adds every byte written to counter, and returns what it did. A clean EOF
// from src is reported as a nil error. tail, if not nil, keeps the last
// bytes written.
//
// Each Read's bytes are written at once; proxyCopy never waits for more
// data before a write. Two things keep that cheap:
//   - Buffers: after a Read that emptied what had arrived, the next Read
//     waits in a small buffer, which is all an idle direction holds. A Read
//     that fills its buffer, or leaves records or part of one in the TLS
//     layer, sends the next one to a large pooled buffer, which goes back
//     to the pool as soon as the flow stops.
//   - Coalescing: a TLS source returns one record per Read. When more
//     records have already arrived (many small FETCH responses, one record
//     each, or a large message faster than the collector reads), the relay
//     reads them into the same buffer and writes them with one call,
//     instead of one write (and one wake-up of the collector) per record.
//     It takes only what cannot make it wait on the network: for those
//     extra Reads, coalescer (the socket under a TLS src) hands crypto/tls
//     only what the kernel already holds, and fails them once it has
//     nothing more.
//
// coalescer is the coalescingConn under a TLS src, or nil.
func proxyCopy(toUpstream bool, dst, src net.Conn, pending []byte, coalescer *coalescingConn, counter *atomic.Int64, tail *byeTail) copyResult {
	w := copyWriter{dst: dst, toUpstream: toUpstream, counter: counter, tail: tail}
	if err := w.write(pending); err != nil {
		return w.result(err)
	}
	bufs := takeCopyBuffers()
	defer bufs.release()
	flowing := false // the last Read may have left data waiting
	for {
		var buf []byte
		if flowing {
			buf = bufs.takeLarge()
		} else {
			buf = bufs.dropLarge()
		}
		n, rerr := src.Read(buf)
		if coalescer != nil && n > 0 {
			coalescer.noteReturned()
		}
		for coalescer != nil && rerr == nil {
			if n == len(buf) {
				if bufs.large != nil {
					break
				}
				// The small buffer is full, and the rest of a record may
				// wait in the TLS layer: go on in the large one, so that
				// one write carries it all.
				large := bufs.takeLarge()
				n = copy(large, buf)
				buf = large
			} else if !coalescer.more() {
				break
			}
			m, err := coalescer.readBuffered(src, buf[n:])
			n += m
			if err != nil || m == 0 {
				break // an error other than errOnlyBuffered comes back at the next Read
			}
		}
		flowing = n == len(buf) || (coalescer != nil && (coalescer.more() || coalescer.midRecord()))
		if err := w.write(buf[:n]); err != nil {
			return w.result(err)
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = nil
			}
			return w.result(rerr)
		}
	}
}

// plainCopy copies src to dst, after first writing what pending holds, and
// adds every byte written to counter, as proxyCopy does, but with a plain
// read/write loop: one write per Read, no coalescing, no reads without
// waiting. It waits for data in a small buffer and moves to a large
// pooled one when a Read fills the small one; it goes back to the small
// one after a Read that the small one would have held, which ends most
// bursts (the last record of a large response, or a short response).
//
// It is the baseline proxyCopy's coalescing must beat by 5% to be kept:
// BenchmarkRelayDovecot runs both against Dovecot in one run. Sessions use
// it only when a test sets Server.plainRelay. Measured in December 2026
// (docs/performance.md), proxyCopy was 5.4% faster (median of 84 runs:
// 5.8% for many small messages, 3.9% for one large one), with 8-11% less
// CPU, and 5.0% faster in 44 runs on a quiet machine (December 2).
func plainCopy(toUpstream bool, dst, src net.Conn, pending []byte, counter *atomic.Int64, tail *byeTail) copyResult {
	w := copyWriter{dst: dst, toUpstream: toUpstream, counter: counter, tail: tail}
	if err := w.write(pending); err != nil {
		return w.result(err)
	}
	bufs := takeCopyBuffers()
	defer bufs.release()
	for {
		buf := *bufs.idle
		if bufs.large != nil {
			buf = *bufs.large
		}
		n, rerr := src.Read(buf)
		if err := w.write(buf[:n]); err != nil {
			return w.result(err)
		}
		switch {
		case bufs.large == nil && n == len(buf):
			bufs.takeLarge()
		case bufs.large != nil && n < idleBufferSize:
			bufs.dropLarge()
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = nil
			}
			return w.result(rerr)
		}
	}
}

// copyBuffers are one direction's buffers: the small idle one, held for
// the whole copy, and a large pooled one, held only while data flows.
type copyBuffers struct {
	idle  *[]byte
	large *[]byte // nil when not held
}

// takeCopyBuffers takes an idle buffer from its pool.
func takeCopyBuffers() copyBuffers {
	return copyBuffers{idle: idleBuffers.Get().(*[]byte)}
}

// takeLarge returns the large buffer, first taking one from its pool if
// none is held.
func (b *copyBuffers) takeLarge() []byte {
	if b.large == nil {
		b.large = relayBuffers.Get().(*[]byte)
	}
	return *b.large
}

// dropLarge puts the large buffer, if held, back in its pool, and returns
// the idle buffer.
func (b *copyBuffers) dropLarge() []byte {
	if b.large != nil {
		relayBuffers.Put(b.large)
		b.large = nil
	}
	return *b.idle
}

// release puts both buffers back in their pools.
func (b *copyBuffers) release() {
	b.dropLarge()
	idleBuffers.Put(b.idle)
}

// copyWriter is one direction's writing side: it counts what it writes in
// the session and in the metrics counter and, towards the collector,
// keeps the last bytes for the relay's end line.
type copyWriter struct {
	dst        net.Conn
	toUpstream bool
	counter    *atomic.Int64
	written    int64
	tail       *byeTail // nil: not kept
}

// write writes p (nothing when it is empty) and counts what went out.
func (w *copyWriter) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	m, err := w.dst.Write(p)
	w.written += int64(m)
	w.counter.Add(int64(m))
	if w.tail != nil {
		w.tail.add(p[:m])
	}
	return err
}

// result is the direction's outcome, ending with err (nil: a clean EOF).
func (w *copyWriter) result(err error) copyResult {
	return copyResult{toUpstream: w.toUpstream, n: w.written, err: err}
}

// isClosedErr reports errors that only say the other direction closed the
// connection or a shutdown deadline fired.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}
