package proxy_test

import (
	"fmt"
	"strings"
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

// TestPeerUIDFromProcNet: where sock_diag is not available, the uid comes
// from /proc/net/tcp: another user's connections are counted as theirs.
func TestPeerUIDFromProcNet(t *testing.T) {
	needRoot(t)
	bin := helperBinary(t)
	h := newHarness(t, harnessOptions{serverTOML: "max_connections_per_peer = 2\n", peerUID: proxy.ProcNetPeerUID})
	greetings, release := holdAs(t, bin, otherUIDs[1], h.addr, 3)
	defer release()
	if count(greetings, "* OK ") != 2 || count(greetings, "* BYE ") != 1 {
		t.Errorf("the other user's connections got %q", greetings)
	}
	if !strings.Contains(h.logs.String(), fmt.Sprintf("peer=\"uid %d\"", otherUIDs[1])) {
		t.Error("the refusal does not name the other user's uid")
	}
	wantLoginUnthrottled(t, h, h.raw(), "c1")
}
