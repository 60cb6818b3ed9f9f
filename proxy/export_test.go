package proxy

import "net"

// Throttle figures the external tests check against.
const (
	LoginBudget              = loginBudget
	MaxChecksInFlightPerPeer = maxChecksInFlightPerPeer
	MaxTracedUpstreamLines   = maxTracedUpstreamLines
)

// ProcNetPeerUID finds a loopback peer's uid from /proc/net only, to test
// the fallback for where sock_diag is not available.
func ProcNetPeerUID(local, remote net.Addr) (uint32, error) {
	return procNetUID("/proc/net", local, remote)
}

// SetPlainRelay makes the sessions of s that start relaying from now on
// use plainCopy (on) or proxyCopy (off).
func SetPlainRelay(s *Server, on bool) { s.plainRelay.Store(on) }
