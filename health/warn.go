package health

import (
	"log/slog"
	"strings"
	"time"
)

// warnEvery is how often one account is warned about at most.
const warnEvery = 24 * time.Hour

// Warner logs, at most once a day per account, a warning for each account
// that needs authorization or whose authorization or certificate nears a
// known expiry. It is not safe for concurrent use: one loop calls Check.
type Warner struct {
	logger *slog.Logger
	last   map[string]time.Time // login → last warning
}

// NewWarner returns a Warner that logs to logger.
func NewWarner(logger *slog.Logger) *Warner {
	return &Warner{logger: logger, last: map[string]time.Time{}}
}

// Check warns about the accounts of report that are not ok and have not
// been warned about in the day before now. It returns how many warnings
// it logged.
func (w *Warner) Check(report []Status, now time.Time) int {
	n := 0
	for _, s := range report {
		if s.Verdict != NeedsAuthorization && s.Verdict != Expiring {
			delete(w.last, s.Login)
			continue
		}
		if last, ok := w.last[s.Login]; ok && now.Sub(last) < warnEvery {
			continue
		}
		w.last[s.Login] = now
		w.logger.Warn("account "+string(s.Verdict), "login", s.Login, "provider", s.Provider,
			"reason", strings.Join(s.Reasons, "; "))
		n++
	}
	return n
}
