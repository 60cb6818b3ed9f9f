//go:build !linux

package proxy

import "net"

// canReadWithoutWaiting: elsewhere it does not.
const canReadWithoutWaiting = false

// nonblockingReader: elsewhere the relay coalesces only the records the
// TLS layer has already read.
type nonblockingReader struct{}

func (r *nonblockingReader) init(nc net.Conn) {}

func (r *nonblockingReader) read(p []byte) (int, error) { return 0, nil }
