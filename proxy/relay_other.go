//go:build !linux

package proxy

// canMeasureQueue: elsewhere the relay does not coalesce TLS records.
const canMeasureQueue = false

func queuedBytes(fd uintptr) int { return 0 }
