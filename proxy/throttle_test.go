package proxy

import (
	"testing"
	"time"
)

// TestThrottleFigures checks the documented figures (docs/security.md)
// with the default first penalty and a fake clock.
func TestThrottleFigures(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	th := newThrottle(250*time.Millisecond, func() time.Time { return now })

	// A peer with no failures is checked at once; then each failure makes
	// the next check wait twice as long, up to 16 s.
	var waits []time.Duration
	for range 9 {
		adm := th.admit("collector", "uid 1001")
		if adm.refused {
			t.Fatalf("refused: %s", adm.reason)
		}
		waits = append(waits, adm.wait)
		now = now.Add(adm.wait)
		th.done("collector", "uid 1001", true)
	}
	want := []time.Duration{0, 250, 500, 1000, 2000, 4000, 8000, 16000, 16000}
	for i := range want {
		if waits[i] != want[i]*time.Millisecond {
			t.Fatalf("waits = %v, want %v ms", waits, want)
		}
	}

	// Another peer, with no failures, is checked at once for that login,
	// and a success does not clear the guesser's penalty.
	if adm := th.admit("collector", "uid 1000"); adm.refused || adm.wait != 0 {
		t.Errorf("owner's check: %+v", adm)
	}
	th.done("collector", "uid 1000", false)

	// A check that would wait beyond the cap is refused: the next one
	// would start 16 s after the one admitted now, 32 s ahead.
	if adm := th.admit("collector", "uid 1001"); adm.refused || adm.wait != 16*time.Second {
		t.Errorf("check at the cap: %+v", adm)
	}
	th.done("collector", "uid 1001", false)

	// A peer with no failures may have two checks in progress; a third
	// waits for one of them to end.
	first := th.admit("collector", "uid 1002")
	second := th.admit("collector", "uid 1002")
	third := th.admit("collector", "uid 1002")
	if first.refused || second.refused || third.refused || first.busy != nil || second.busy != nil || third.busy == nil {
		t.Errorf("in flight: %+v %+v %+v", first, second, third)
	}
	th.done("collector", "uid 1002", true)
	select {
	case <-third.busy:
	default:
		t.Error("the end of a check did not wake the one waiting")
	}
	// With a failure, a check that would be the peer's third in progress
	// is refused rather than queued.
	if again := th.admit("collector", "uid 1002"); again.refused || again.wait != 250*time.Millisecond {
		t.Errorf("second check in progress after a failure: %+v", again)
	}
	if fourth := th.admit("collector", "uid 1002"); !fourth.refused {
		t.Errorf("third check in progress of a peer with a failure: %+v", fourth)
	}
	th.done("collector", "uid 1002", false)
	th.done("collector", "uid 1002", false)
	// Later checks queue 250 ms apart.
	if adm := th.admit("collector", "uid 1002"); adm.refused || adm.wait != 500*time.Millisecond {
		t.Errorf("first queued check: %+v", adm)
	}
	if adm := th.admit("collector", "uid 1002"); adm.refused || adm.wait != 750*time.Millisecond {
		t.Errorf("second queued check: %+v", adm)
	}

	// A check that would wait beyond the cap is refused.
	if adm := th.admit("collector", "uid 1001"); !adm.refused {
		t.Errorf("check 48 s ahead admitted: %+v", adm)
	}

	// Failures are forgotten 15 minutes after the last one.
	now = now.Add(failureMemory + time.Second)
	if adm := th.admit("collector", "uid 1001"); adm.refused || adm.wait != 0 {
		t.Errorf("after the failure memory: %+v", adm)
	}
	th.done("collector", "uid 1001", false)
}

// TestThrottleBudget: a login's budget of failures holds across peers;
// it refills at one per budgetRefill; a peer with no failures still gets
// its check.
func TestThrottleBudget(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	th := newThrottle(time.Millisecond, func() time.Time { return now })
	checked := 0
	for i := range 200 {
		key := "10.0.0." + string(rune('1'+i%5)) // five peers
		adm := th.admit("collector", key)
		now = now.Add(th.maxPenalty())
		if adm.refused {
			continue
		}
		checked++
		th.done("collector", key, true)
	}
	if checked != loginBudget {
		t.Errorf("%d checks from 5 peers, want the budget of %d", checked, loginBudget)
	}
	// A fresh peer is checked; a failed one is not, until a failure's
	// worth of budget is back.
	if adm := th.admit("collector", "uid 1000"); adm.refused {
		t.Errorf("fresh peer refused: %s", adm.reason)
	}
	th.done("collector", "uid 1000", false)
	adm := th.admit("collector", "10.0.0.1")
	if !adm.refused || adm.retryIn <= 0 || adm.retryIn > budgetRefill {
		t.Errorf("failed peer with the budget spent: %+v", adm)
	}
	now = now.Add(adm.retryIn)
	if adm := th.admit("collector", "10.0.0.1"); adm.refused {
		t.Errorf("after the refill: %+v", adm)
	}
	// Other logins have budgets of their own.
	if adm := th.admit("other", "10.0.0.2"); adm.refused {
		t.Errorf("another login: %+v", adm)
	}
}
