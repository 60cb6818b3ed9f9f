package tokenstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestKDFQueue: runs beyond the CPUs wait at most the queue's bound, no
// more than its length wait at all, and a cancelled login stops waiting.
func TestKDFQueue(t *testing.T) {
	q := &kdfQueue{running: make(chan struct{}, 1), maxWait: 50 * time.Millisecond, maxWaiting: 1}
	release, err := q.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The one slot is taken: a waiter gives up after maxWait.
	start := time.Now()
	if _, err := q.acquire(context.Background()); !errors.Is(err, ErrKDFBusy) {
		t.Errorf("acquire with the slot taken = %v, want ErrKDFBusy", err)
	}
	if waited := time.Since(start); waited < q.maxWait {
		t.Errorf("gave up after %v, before the bound of %v", waited, q.maxWait)
	}
	// A cancelled context ends the wait with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("acquire with a cancelled context = %v", err)
	}
	// With the queue full (here: no room to wait), another fails at once.
	q.maxWaiting, q.maxWait = 0, time.Hour
	if _, err := q.acquire(context.Background()); !errors.Is(err, ErrKDFBusy) {
		t.Errorf("acquire with the queue full = %v, want ErrKDFBusy at once", err)
	}
	// A freed slot goes to the next waiter.
	q.maxWaiting = 1
	got := make(chan error, 1)
	go func() {
		rel, err := q.acquire(context.Background())
		if err == nil {
			rel()
		}
		got <- err
	}()
	release()
	if err := <-got; err != nil {
		t.Errorf("the waiter did not get the freed slot: %v", err)
	}
}

// TestCachedOpenNeverWaitsForKDF: with every KDF slot taken, a password
// whose key is cached opens at once, and an uncached one fails fast with
// ErrKDFBusy instead of waiting behind the runs.
func TestCachedOpenNeverWaitsForKDF(t *testing.T) {
	s, err := New(t.TempDir(), &Options{KDF: testKDF, KDFQueueWait: 20 * time.Millisecond, KDFQueueLength: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("collector", "right", Secret{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	for range cap(s.kdf.running) {
		release, err := s.kdf.acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer release()
	}
	runs := s.kdfRuns.Load()
	if _, err := s.OpenCached("collector", "right"); err != nil {
		t.Errorf("OpenCached with the KDF busy: %v", err)
	}
	if _, err := s.OpenContext(context.Background(), "collector", "right"); err != nil {
		t.Errorf("OpenContext of a cached password with the KDF busy: %v", err)
	}
	if _, err := s.OpenCached("collector", "wrong"); !errors.Is(err, ErrNotCached) {
		t.Errorf("OpenCached with a wrong password = %v, want ErrNotCached", err)
	}
	if _, err := s.OpenContext(context.Background(), "collector", "wrong"); !errors.Is(err, ErrKDFBusy) {
		t.Errorf("OpenContext of an uncached password with the KDF busy = %v, want ErrKDFBusy", err)
	}
	if s.kdfRuns.Load() != runs {
		t.Error("the KDF ran")
	}
}
