package proxy

// IdlePeerSockets returns how many netlink sockets s keeps open for its
// peer uid lookups.
func IdlePeerSockets(s *Server) int { return len(s.peers.free) }
