// Package syncbuf is the tests' concurrent output buffer: daemons, HAProxy
// and loggers write to it from their goroutines while the test reads what
// was written and waits for the next write instead of sleeping.
package syncbuf

import (
	"bytes"
	"regexp"
	"sync"
)

// Buffer is an io.Writer safe for concurrent use. The zero value is ready.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed at the next Write; nil until asked for
}

// Write appends p and wakes every waiter on Changed.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Changed returns a channel closed at the next Write.
func (b *Buffer) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changedLocked()
}

// Match returns re's submatches in what was written so far (nil if none),
// and a channel closed at the next Write: a test that found nothing waits
// on it and looks again, with no write missed in between.
func (b *Buffer) Match(re *regexp.Regexp) ([]string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return re.FindStringSubmatch(b.buf.String()), b.changedLocked()
}

func (b *Buffer) changedLocked() chan struct{} {
	if b.changed == nil {
		b.changed = make(chan struct{})
	}
	return b.changed
}
