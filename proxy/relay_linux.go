package proxy

import "golang.org/x/sys/unix"

// canMeasureQueue: Linux reports a socket's receive queue (SIOCINQ).
const canMeasureQueue = true

// queuedBytes returns how many received bytes wait in the socket fd's
// receive queue, or 0 if that cannot be read.
func queuedBytes(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}
