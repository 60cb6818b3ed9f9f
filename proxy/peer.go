package proxy

import (
	"net"
	"strconv"
)

// peer is who is on the other end of a collector connection, as far as
// connection limits and the login throttle are concerned.
type peer struct {
	// key is what limits and the throttle count by: "uid N" for a
	// loopback peer whose uid the kernel tells, loopbackPeerKey for any
	// other loopback peer, and addressKey of the remote IP otherwise.
	key string
	// uid is the loopback peer's uid, or -1 when it is unknown or the
	// peer is remote.
	uid int
}

// loopbackPeerKey is the one key of every loopback peer whose uid is
// unknown: each address in 127.0.0.0/8 is the same host, so counting them
// apart would hand out fresh counters to whoever binds a new one.
const loopbackPeerKey = "loopback"

// PeerUIDFunc returns the uid owning the client socket of a TCP
// connection, given the server side's local and remote addresses.
type PeerUIDFunc func(local, remote net.Addr) (uint32, error)

// identifyPeer returns nc's peer. For a loopback peer it asks lookup for
// the uid; err is lookup's error, and the peer is then the shared
// loopback key.
func identifyPeer(nc net.Conn, lookup PeerUIDFunc) (peer, error) {
	remote, ok := nc.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return peer{key: nc.RemoteAddr().String(), uid: -1}, nil
	}
	if !remote.IP.IsLoopback() {
		return peer{key: addressKey(remote.IP), uid: -1}, nil
	}
	uid, err := lookup(nc.LocalAddr(), remote)
	if err != nil {
		return peer{key: loopbackPeerKey, uid: -1}, err
	}
	return peer{key: "uid " + strconv.FormatUint(uint64(uid), 10), uid: int(uid)}, nil
}

// addressPeer is the peer of a client whose address a PROXY header gave:
// addressKey of its IP, loopback ones included, since the uid of a socket
// on the load balancer's host cannot be known here.
func addressPeer(remote net.Addr) peer {
	if tcp, ok := remote.(*net.TCPAddr); ok {
		return peer{key: addressKey(tcp.IP), uid: -1}
	}
	return peer{key: remote.String(), uid: -1}
}

// addressKey is what a remote peer counts by: its IPv4 address, or the /64
// of its IPv6 address. An IPv6 host is routinely given a whole /64 (SLAAC,
// privacy addresses), so counting its addresses apart would hand out
// fresh counters to whoever picks a new one.
func addressKey(ip net.IP) string {
	if ip4 := ip.To4(); ip4 != nil {
		return ip4.String()
	}
	return (&net.IPNet{IP: ip.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
}
