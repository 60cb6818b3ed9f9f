package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// relayBufferSize is the copy buffer per direction: one TLS record.
const relayBufferSize = 16 * 1024

// halfCloseGrace is how long the upstream may keep answering after the
// collector has closed its sending side.
const halfCloseGrace = 10 * time.Second

// relayBuffers recycles copy buffers across sessions, so the relay
// allocates nothing per byte and little per session.
var relayBuffers = sync.Pool{New: func() any {
	b := make([]byte, relayBufferSize)
	return &b
}}

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
	c.mu.Lock()
	c.upstream = up.nc
	c.mu.Unlock()
	c.relaying.Store(true)
	defer up.nc.Close()
	c.nc.SetDeadline(time.Time{})
	start := time.Now()

	results := make(chan copyResult, 2)
	go proxyCopy(results, true, up.nc, c.nc, c.br, &c.srv.metrics.bytesToUpstream)
	go proxyCopy(results, false, c.nc, up.nc, up.br, &c.srv.metrics.bytesToClient)

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
func proxyCopy(results chan<- copyResult, toUpstream bool, dst, src net.Conn, pending bufferedReader, counter *atomic.Int64) {
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
	bufp := relayBuffers.Get().(*[]byte)
	defer relayBuffers.Put(bufp)
	buf := *bufp
	for {
		n, rerr := src.Read(buf)
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
