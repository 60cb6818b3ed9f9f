package proxy_test

import (
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

// TestPeerSocketsClosedWithServer: the server keeps the netlink socket of
// a loopback peer's uid lookup for the next one, and closes it when it
// stops.
func TestPeerSocketsClosedWithServer(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	for range 3 {
		h.raw() // reads the greeting, sent once the peer is known
	}
	if n := proxy.IdlePeerSockets(h.srv); n != 1 {
		t.Errorf("%d netlink sockets kept after three sequential connections, want 1", n)
	}
	h.srv.Close()
	if n := proxy.IdlePeerSockets(h.srv); n != 0 {
		t.Errorf("%d netlink sockets still open after Close", n)
	}
}
