//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// peerLookup is unsupported outside Linux: every loopback peer shares one
// key.
type peerLookup struct{}

func newPeerLookup() *peerLookup { return &peerLookup{} }

func (*peerLookup) uid(local, remote net.Addr) (uint32, error) {
	return 0, errors.ErrUnsupported
}

func (*peerLookup) close() {}
