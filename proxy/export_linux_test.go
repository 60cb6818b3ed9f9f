package proxy

import "net"

// ProcNetPeerUID finds a loopback peer's uid from /proc/net only, to test
// the fallback for where sock_diag is not available.
func ProcNetPeerUID(local, remote net.Addr) (uint32, error) {
	return procNetUID("/proc/net", local, remote)
}

// IdlePeerSockets returns how many netlink sockets s keeps open for its
// peer uid lookups.
func IdlePeerSockets(s *Server) int { return len(s.peers.free) }
