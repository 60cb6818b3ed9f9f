package proxy

import (
	"net"
	"os"
	"testing"
)

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
	for _, tc := range []struct{ name, listen, client string }{
		{"ipv4", "127.0.0.1:0", "127.0.0.1"},
		{"ipv4 other address", "127.0.0.1:0", "127.0.9.7"},
		{"ipv6", "[::1]:0", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := loopbackPair(t, tc.listen, tc.client)
			if got, err := sockDiagUID(nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
				t.Errorf("sock_diag: uid %d, %v; want %d", got, err, uid)
			}
			if got, err := procNetUID("/proc/net", nc.LocalAddr(), nc.RemoteAddr()); err != nil || got != uid {
				t.Errorf("/proc/net: uid %d, %v; want %d", got, err, uid)
			}
			who, err := identifyPeer(nc, lookupPeerUID)
			if err != nil || who.uid != int(uid) || who.key == loopbackPeerKey {
				t.Errorf("identifyPeer = %+v, %v", who, err)
			}
		})
	}
	// A socket that does not exist has no owner, not the listener's.
	nc := loopbackPair(t, "127.0.0.1:0", "127.0.0.1")
	if got, err := sockDiagUID(nc.LocalAddr(), &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}); err == nil {
		t.Errorf("sock_diag found uid %d for a socket that does not exist", got)
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
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sockDiagUID(server.LocalAddr(), server.RemoteAddr()); err != nil {
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
	if got, err := sockDiagUID(server.LocalAddr(), server.RemoteAddr()); err == nil {
		t.Errorf("sock_diag: uid %d for a closed client, want an error", got)
	}
	if got, err := procNetUID("/proc/net", server.LocalAddr(), server.RemoteAddr()); err == nil {
		t.Errorf("/proc/net: uid %d for a closed client, want an error", got)
	}
}
