package proxy

import (
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	th := newThrottle(100*time.Millisecond, func() time.Time { return now })

	// Delays double per failure of one login from one address, capped.
	var delays []time.Duration
	for i := 0; i < maxFailuresPerLogin-1; i++ {
		delays = append(delays, th.failed("collector", "192.0.2.1"))
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000}
	for i := range want {
		if delays[i] != want[i]*time.Millisecond {
			t.Fatalf("delays = %v, want %v ms", delays, want)
		}
	}
	if locked, _ := th.locked("collector", "192.0.2.1"); locked {
		t.Fatal("locked before the limit")
	}
	th.failed("collector", "192.0.2.1")
	locked, left := th.locked("collector", "192.0.2.1")
	if !locked || left != lockoutTime {
		t.Fatalf("after %d failures: locked=%v for %v", maxFailuresPerLogin, locked, left)
	}
	// The same login from another address, and another login from the same
	// address, are not locked.
	if locked, _ := th.locked("collector", "192.0.2.2"); locked {
		t.Error("a guesser on one address locked the login out everywhere")
	}
	if locked, _ := th.locked("other", "192.0.2.1"); locked {
		t.Error("another login is locked")
	}
	// The lock ends.
	now = now.Add(lockoutTime + time.Second)
	if locked, _ := th.locked("collector", "192.0.2.1"); locked {
		t.Error("still locked after the lockout time")
	}

	// A success forgets the login's failures.
	th.failed("ticket", "192.0.2.3")
	th.failed("ticket", "192.0.2.3")
	th.succeeded("ticket", "192.0.2.3")
	if d := th.failed("ticket", "192.0.2.3"); d != 100*time.Millisecond {
		t.Errorf("delay after a success = %v, want the first step", d)
	}

	// Failures older than the window do not count.
	th.failed("late", "192.0.2.4")
	now = now.Add(failureWindow + time.Second)
	if d := th.failed("late", "192.0.2.4"); d != 100*time.Millisecond {
		t.Errorf("delay after the window = %v, want the first step", d)
	}

	// Spraying many logins from one address slows every answer there.
	sprayer := newThrottle(100*time.Millisecond, func() time.Time { return now })
	var last time.Duration
	for i := 0; i < 3*addressFailureStep; i++ {
		last = sprayer.failed(string(rune('a'+i%26))+string(rune('a'+i/26)), "192.0.2.9")
	}
	if last != 800*time.Millisecond {
		t.Errorf("delay after %d sprayed failures = %v, want 800ms", 3*addressFailureStep, last)
	}
}
