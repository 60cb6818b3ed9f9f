package proxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// linkRig is a relayLink between two TCP pairs: collector <-> link.client,
// link.upstream <-> server. Every socket has a 10 s deadline, so that a
// direction that fails to end the session fails the test instead of
// hanging it.
type linkRig struct {
	collector, server *net.TCPConn
	link              *relayLink
	released          atomic.Int32
	toUpstream        atomic.Int64
	toClient          atomic.Int64
}

func newLinkRig(t *testing.T, plain bool, toUpstreamFirst, toClientFirst string) *linkRig {
	t.Helper()
	collector, client := tcpPair(t)
	upstream, server := tcpPair(t)
	for _, c := range []net.Conn{collector, client, upstream, server} {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	r := &linkRig{collector: collector.(*net.TCPConn), server: server.(*net.TCPConn)}
	r.link = &relayLink{
		client: client, upstream: upstream,
		toUpstreamFirst: []byte(toUpstreamFirst), toClientFirst: []byte(toClientFirst),
		plain:           plain,
		toUpstreamBytes: &r.toUpstream, toClientBytes: &r.toClient,
		release: func() { r.released.Add(1) },
	}
	return r
}

// send writes s on c, one of the rig's ends, failing the test if it
// cannot.
func (r *linkRig) send(t *testing.T, c *net.TCPConn, s string) {
	t.Helper()
	if _, err := c.Write([]byte(s)); err != nil {
		t.Fatalf("writing %q: %v", s, err)
	}
}

// start runs the link; the channel gets its two results once both
// directions have ended.
func (r *linkRig) start() <-chan [2]copyResult {
	done := make(chan [2]copyResult, 1)
	go func() {
		first, second := r.link.run()
		done <- [2]copyResult{first, second}
	}()
	return done
}

// wait waits for the link's results, failing the test if run does not
// return: a direction that did not end the session.
func (r *linkRig) wait(t *testing.T, done <-chan [2]copyResult) [2]copyResult {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(15 * time.Second): // a deadline, not synchronization
		t.Fatal("the relay did not end")
		return [2]copyResult{}
	}
}

// forBothCopies runs f with proxyCopy and with plainCopy.
func forBothCopies(t *testing.T, f func(t *testing.T, plain bool)) {
	for _, plain := range []bool{false, true} {
		name := "proxyCopy"
		if plain {
			name = "plainCopy"
		}
		t.Run(name, func(t *testing.T) { f(t, plain) })
	}
}

// TestRelayLinkCollectorHalfClose: when the collector closes its sending
// side, the upstream sees the end of its input (not a closed connection)
// and may still answer; the answer reaches the collector, and the session
// ends when the upstream closes. The collector's direction ended first.
func TestRelayLinkCollectorHalfClose(t *testing.T) {
	forBothCopies(t, func(t *testing.T, plain bool) {
		r := newLinkRig(t, plain, "a0 NOOP\r\n", "* OK first\r\n")
		done := r.start()
		r.send(t, r.collector, "a1 LOGOUT\r\n")
		r.collector.CloseWrite()
		got, err := io.ReadAll(r.server)
		if err != nil {
			t.Fatalf("the upstream did not see the end of the collector's input: %v (after %q)", err, got)
		}
		if want := "a0 NOOP\r\na1 LOGOUT\r\n"; string(got) != want {
			t.Errorf("the upstream got %q, want %q", got, want)
		}
		const answer = "* BYE logging out\r\na1 OK done\r\n"
		r.send(t, r.server, answer)
		r.server.Close()
		res := r.wait(t, done)
		r.link.client.Close() // as the session does when the relay returns
		seen, err := io.ReadAll(r.collector)
		if err != nil {
			t.Fatalf("collector: %v (after %q)", err, seen)
		}
		if want := "* OK first\r\n" + answer; string(seen) != want {
			t.Errorf("the collector got %q, want %q", seen, want)
		}
		if !res[0].toUpstream || res[1].toUpstream {
			t.Errorf("results in the order toUpstream=%v, %v; want the collector's direction first", res[0].toUpstream, res[1].toUpstream)
		}
		for _, c := range res {
			if c.err != nil {
				t.Errorf("toUpstream=%v ended with %v, want a clean end", c.toUpstream, c.err)
			}
		}
		if res[0].n != 20 || r.toUpstream.Load() != 20 {
			t.Errorf("to upstream: %d bytes, counter %d; want 20", res[0].n, r.toUpstream.Load())
		}
		if n := int64(len("* OK first\r\n" + answer)); res[1].n != n || r.toClient.Load() != n {
			t.Errorf("to collector: %d bytes, counter %d; want %d", res[1].n, r.toClient.Load(), n)
		}
		if bye, ok := upstreamBye(r.link.clientTail.bytes()); ok {
			t.Errorf("the tail ends with BYE %q, but the last line was the tagged OK", bye)
		}
	})
}

// TestRelayLinkUpstreamGone: when the upstream closes, the collector sees
// its connection closed although it never closes its own side, the
// session's slot is given back before that, and the relay ends. The
// upstream's last line is kept for the end's reason.
func TestRelayLinkUpstreamGone(t *testing.T) {
	forBothCopies(t, func(t *testing.T, plain bool) {
		r := newLinkRig(t, plain, "", "")
		done := r.start()
		r.send(t, r.server, "* BYE Session invalidated - AccessTokenExpired\r\n")
		r.server.Close()
		seen, err := io.ReadAll(r.collector)
		if err != nil {
			t.Fatalf("the collector's connection was not closed after the upstream went: %v (after %q)", err, seen)
		}
		if n := r.released.Load(); n != 1 {
			t.Errorf("slot released %d times before the collector saw the end, want 1", n)
		}
		res := r.wait(t, done)
		if res[0].toUpstream || !res[1].toUpstream {
			t.Errorf("results in the order toUpstream=%v, %v; want the upstream's direction first", res[0].toUpstream, res[1].toUpstream)
		}
		if res[0].err != nil {
			t.Errorf("the upstream's clean close ended its direction with %v", res[0].err)
		}
		if res[1].err != nil && !isClosedErr(res[1].err) {
			t.Errorf("the collector's direction ended with %v, want nil or a closed connection", res[1].err)
		}
		if bye, ok := upstreamBye(r.link.clientTail.bytes()); !ok || !tokenExpiredBye(bye) {
			t.Errorf("upstreamBye = %q, %v; want the AccessTokenExpired BYE", bye, ok)
		}
	})
}

// TestRelayLinkCollectorReset: a collector that resets its connection
// ends the session at once: the upstream's connection is closed too (not
// half closed and left to answer), and the slot given back.
func TestRelayLinkCollectorReset(t *testing.T) {
	forBothCopies(t, func(t *testing.T, plain bool) {
		r := newLinkRig(t, plain, "", "")
		done := r.start()
		r.send(t, r.server, "* OK still here\r\n")
		buf := make([]byte, 64)
		if n, err := io.ReadAtLeast(r.collector, buf, len("* OK still here\r\n")); err != nil {
			t.Fatalf("collector read %q: %v", buf[:n], err)
		}
		r.collector.SetLinger(0)
		r.collector.Close() // RST
		res := r.wait(t, done)
		if !res[0].toUpstream || res[0].err == nil || isClosedErr(res[0].err) {
			t.Fatalf("first result toUpstream=%v err=%v; want the collector's direction, failed", res[0].toUpstream, res[0].err)
		}
		if n := r.released.Load(); n != 1 {
			t.Errorf("slot released %d times, want 1", n)
		}
		// The upstream's connection was closed by the proxy, not half
		// closed and left to time out: the other direction's read ended
		// on the closed connection.
		if res[1].toUpstream || !errors.Is(res[1].err, net.ErrClosed) {
			t.Errorf("second result toUpstream=%v err=%v; want the upstream's direction, ended by the close", res[1].toUpstream, res[1].err)
		}
	})
}
