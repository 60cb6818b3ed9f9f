package proxy

// Throttle figures the external tests check against.
const (
	LoginBudget              = loginBudget
	MaxChecksInFlightPerPeer = maxChecksInFlightPerPeer
	MaxTracedUpstreamLines   = maxTracedUpstreamLines
)

// SetPlainRelay makes the sessions of s that start relaying from now on
// use plainCopy (on) or proxyCopy (off).
func SetPlainRelay(s *Server, on bool) { s.plainRelay.Store(on) }
