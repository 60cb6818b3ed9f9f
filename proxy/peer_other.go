//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// lookupPeerUID is unsupported outside Linux: every loopback peer shares
// one key.
func lookupPeerUID(local, remote net.Addr) (uint32, error) {
	return 0, errors.ErrUnsupported
}
