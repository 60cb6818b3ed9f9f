package proxy

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// newTestPeerLookup returns a peerLookup that is closed when the test
// ends.
func newTestPeerLookup(t testing.TB) *peerLookup {
	p := newPeerLookup()
	t.Cleanup(p.close)
	return p
}

// loopbackPair returns the server side of a TCP connection to a listener
// on network's loopback address, dialed from clientIP.
func loopbackPair(t *testing.T, listen, clientIP string) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Skipf("no loopback listener on %s: %v", listen, err)
	}
	defer ln.Close()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(clientIP)}}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return server
}

// TestPeerUIDLookups: sock_diag and the /proc/net fallback both find the
// uid of a loopback client (this process's), over IPv4 from any address
// in 127.0.0.0/8 and over IPv6.
func TestPeerUIDLookups(t *testing.T) {
	uid := uint32(os.Getuid())
	p := newTestPeerLookup(t)
	for _, tc := range []struct{ name, listen, client string }{
		{"ipv4", "127.0.0.1:0", "127.0.0.1"},
		{"ipv4 other address", "127.0.0.1:0", "127.0.9.7"},
		{"ipv6", "[::1]:0", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := loopbackPair(t, tc.listen, tc.client)
			if got, err := p.sockDiagUID(nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
				t.Errorf("sock_diag: uid %d, %v; want %d", got, err, uid)
			}
			if got, err := procNetUID("/proc/net", nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
				t.Errorf("/proc/net: uid %d, %v; want %d", got, err, uid)
			}
			who, err := identifyPeer(nc, p.uid)
			if err != nil || who.uid != int(uid) || who.key == loopbackPeerKey {
				t.Errorf("identifyPeer = %+v, %v", who, err)
			}
		})
	}
	// A socket that does not exist has no owner, not the listener's.
	nc := loopbackPair(t, "127.0.0.1:0", "127.0.0.1")
	if got, err := p.sockDiagUID(nc.LocalAddr(), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}); !errors.Is(err, unix.ENOENT) {
		t.Errorf("sock_diag found uid %d, %v for a socket that does not exist, want ENOENT", got, err)
	}
	// The kernel's "no such socket" is a full answer: the socket is kept.
	if got, err := p.sockDiagUID(nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
		t.Errorf("sock_diag after a socket that does not exist: uid %d, %v; want %d", got, err, uid)
	}
	// Without an answer, all of loopback is one peer.
	nc = loopbackPair(t, "127.0.0.1:0", "127.0.0.5")
	who, err := identifyPeer(nc, func(_, _ net.Addr) (uint32, error) { return 0, os.ErrNotExist })
	if err == nil || who.key != loopbackPeerKey || who.uid != -1 {
		t.Errorf("identifyPeer without uids = %+v, %v", who, err)
	}
}

// BenchmarkSockDiagUID is one sock_diag lookup of a loopback peer. What it
// costs depends on the host: run it with many sockets in TIME_WAIT (after
// `make load`) to see what a lookup costs under a burst of logins.
func BenchmarkSockDiagUID(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer server.Close()
	p := newTestPeerLookup(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.sockDiagUID(server.LocalAddr(), server.RemoteAddr()); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPeerUIDOfClosedClient: a client that closed its socket before the
// lookup has no owner left. The kernel reports an orphaned socket with uid
// 0 and inode 0; counting it as root would let any local user spend root's
// throttle and limits by closing at once.
func TestPeerUIDOfClosedClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	client.Close()
	if got, err := newTestPeerLookup(t).sockDiagUID(server.LocalAddr(), server.RemoteAddr()); err == nil {
		t.Errorf("sock_diag: uid %d for a closed client, want an error", got)
	}
	if got, err := procNetUID("/proc/net", server.LocalAddr(), server.RemoteAddr()); err == nil {
		t.Errorf("/proc/net: uid %d for a closed client, want an error", got)
	}
}

// TestPeerLookupReusesSockets: lookups reuse one netlink socket, and at
// most diagSocketsKept are kept; close closes the idle ones, and a
// lookup after close still answers, keeping nothing open.
func TestPeerLookupReusesSockets(t *testing.T) {
	uid := uint32(os.Getuid())
	p := newTestPeerLookup(t)
	a := loopbackPair(t, "127.0.0.1:0", "127.0.0.2")
	b := loopbackPair(t, "127.0.0.1:0", "127.0.0.3")
	if _, err := p.sockDiagUID(a.LocalAddr(), a.RemoteAddr()); err != nil {
		t.Fatal(err)
	}
	s := <-p.free
	p.free <- s
	for _, nc := range []net.Conn{a, b, a} {
		if got, err := p.sockDiagUID(nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
			t.Fatalf("uid %d, %v; want %d", got, err, uid)
		}
	}
	if len(p.free) != 1 || s.seq != 4 {
		t.Fatalf("%d idle sockets, the first one asked %d times; want 1 socket asked 4 times", len(p.free), s.seq)
	}
	// More sockets than are kept.
	var taken []*diagSocket
	for range diagSocketsKept + 2 {
		s, err := p.get()
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, s)
	}
	for _, s := range taken {
		p.put(s, true)
	}
	if len(p.free) != diagSocketsKept {
		t.Errorf("%d idle sockets, want %d", len(p.free), diagSocketsKept)
	}
	wantClosed(t, taken[diagSocketsKept:]...)
	p.close()
	if len(p.free) != 0 {
		t.Errorf("%d idle sockets after close", len(p.free))
	}
	wantClosed(t, taken[:diagSocketsKept]...)
	if got, err := p.sockDiagUID(a.LocalAddr(), a.RemoteAddr()); err != nil || got != uid {
		t.Errorf("after close: uid %d, %v; want %d", got, err, uid)
	}
	if len(p.free) != 0 {
		t.Errorf("a lookup after close left %d idle sockets", len(p.free))
	}
}

// wantClosed checks that the sockets' descriptors are closed (and not yet
// reused by another file).
func wantClosed(t *testing.T, sockets ...*diagSocket) {
	t.Helper()
	for _, s := range sockets {
		if _, err := unix.FcntlInt(uintptr(s.fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("netlink socket %d is still open (F_GETFD: %v)", s.fd, err)
		}
	}
}

// TestPeerLookupStaleAnswer: a kept socket that still holds the answer to
// an earlier request (as one would after a request whose answer was never
// read) must not answer for the next connection: the lookup fails, and the
// socket is closed rather than kept.
func TestPeerLookupStaleAnswer(t *testing.T) {
	uid := uint32(os.Getuid())
	p := newTestPeerLookup(t)
	a := loopbackPair(t, "127.0.0.1:0", "127.0.0.2")
	b := loopbackPair(t, "127.0.0.1:0", "127.0.0.3")
	s, err := p.get()
	if err != nil {
		t.Fatal(err)
	}
	la, ra, _ := tcpAddrs(a.LocalAddr(), a.RemoteAddr())
	putInetDiagRequest(s.msg[unix.SizeofNlMsghdr:], ra, la)
	if err := s.send(); err != nil {
		t.Fatal(err)
	}
	p.put(s, true) // as if its answer had been read
	got, err := p.sockDiagUID(b.LocalAddr(), b.RemoteAddr())
	if err == nil || !strings.Contains(err.Error(), "answer to request 1, want 2") {
		t.Errorf("with a stale answer queued: uid %d, %v; want an error for the stale answer", got, err)
	}
	if len(p.free) != 0 {
		t.Errorf("the socket that held a stale answer was kept")
	}
	wantClosed(t, s)
	if got, err := p.sockDiagUID(b.LocalAddr(), b.RemoteAddr()); err != nil || got != uid {
		t.Errorf("the next lookup: uid %d, %v; want %d", got, err, uid)
	}
}

// TestPeerLookupConcurrent: concurrent lookups of different connections
// each get the answer for their own (sockDiagUID checks that the answer
// names the socket asked for), sharing the kept sockets one at a time.
func TestPeerLookupConcurrent(t *testing.T) {
	uid := uint32(os.Getuid())
	p := newTestPeerLookup(t)
	const n = 16
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = loopbackPair(t, "127.0.0.1:0", "127.0.0.1")
	}
	var wg sync.WaitGroup
	for _, nc := range conns {
		wg.Go(func() {
			for range 50 {
				if got, err := p.sockDiagUID(nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
					t.Errorf("uid %d, %v; want %d", got, err, uid)
					return
				}
			}
		})
	}
	wg.Wait()
	if len(p.free) == 0 || len(p.free) > diagSocketsKept {
		t.Errorf("%d idle sockets after the lookups, want 1 to %d", len(p.free), diagSocketsKept)
	}
}

// TestParseNetlinkAnswer: an answer must be exactly one whole netlink
// message; a short one, a cut one or two of them are refused.
func TestParseNetlinkAnswer(t *testing.T) {
	message := func(seq uint32, payload string) []byte {
		b := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(payload)+3)
		binary.NativeEndian.PutUint32(b[0:], uint32(unix.SizeofNlMsghdr+len(payload)))
		binary.NativeEndian.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
		binary.NativeEndian.PutUint32(b[8:], seq)
		b = append(b, payload...)
		for len(b)%unix.NLMSG_ALIGNTO != 0 {
			b = append(b, 0)
		}
		return b
	}
	one := message(7, "answer")
	h, data, err := parseNetlinkAnswer(one)
	if err != nil || h.Seq != 7 || h.Type != unix.SOCK_DIAG_BY_FAMILY || string(data) != "answer" {
		t.Errorf("one message: header %+v, data %q, %v", h, data, err)
	}
	for name, b := range map[string][]byte{
		"short":        one[:unix.SizeofNlMsghdr-1],
		"cut":          one[:len(one)-4],
		"two messages": append(message(7, "answer"), message(8, "more")...),
	} {
		if _, _, err := parseNetlinkAnswer(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
