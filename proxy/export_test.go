package proxy

// Throttle figures the external tests check against.
const (
	LoginBudget              = loginBudget
	MaxChecksInFlightPerPeer = maxChecksInFlightPerPeer
	MaxTracedUpstreamLines   = maxTracedUpstreamLines
)
