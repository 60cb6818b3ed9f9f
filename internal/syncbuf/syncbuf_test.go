package syncbuf

import (
	"fmt"
	"regexp"
	"sync"
	"testing"
)

// TestBufferWakesWaiters: every write wakes the waiters of the moment, and
// Match sees all that concurrent writers wrote.
func TestBufferWakesWaiters(t *testing.T) {
	var b Buffer
	re := regexp.MustCompile(`line 99\n`)
	got, changed := b.Match(re)
	if got != nil {
		t.Fatalf("match in an empty buffer: %q", got)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 100; i += 4 {
				fmt.Fprintf(&b, "line %d\n", i)
			}
		}()
	}
	for got == nil {
		<-changed
		got, changed = b.Match(re)
	}
	wg.Wait()
	changed = b.Changed()
	select {
	case <-changed:
		t.Fatal("Changed's channel closed with no write after it")
	default:
	}
	fmt.Fprint(&b, "one more\n")
	select {
	case <-changed:
	default:
		t.Fatal("a write did not close the waiters' channel")
	}
	if n := len(regexp.MustCompile(`line \d+\n`).FindAllString(b.String(), -1)); n != 100 {
		t.Fatalf("%d lines in the buffer; want 100", n)
	}
}
