package health

import (
	"context"
	"log/slog"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// reportEvery is how often Monitor judges the accounts.
const reportEvery = time.Hour

// Monitor is the daemon's side of health: it writes the tracker's state
// file and, once an hour, judges every account and warns (see Warner). It
// is not safe for concurrent use: one loop (Run) calls Tick.
type Monitor struct {
	tracker *Tracker
	records RecordReader
	config  func() *config.Config
	logger  *slog.Logger
	warner  *Warner

	lastReport time.Time
	flushErr   bool // the last Flush failed (logged once until it works again)
}

// NewMonitor returns a Monitor of the accounts cfg returns.
func NewMonitor(tracker *Tracker, records RecordReader, cfg func() *config.Config, logger *slog.Logger) *Monitor {
	return &Monitor{tracker: tracker, records: records, config: cfg, logger: logger, warner: NewWarner(logger)}
}

// Tick writes the state file if it changed and, if an hour has passed
// since the last report (or there was none), judges the accounts at now
// and warns about those that need it.
func (m *Monitor) Tick(now time.Time) {
	m.flush()
	if !m.lastReport.IsZero() && now.Sub(m.lastReport) < reportEvery {
		return
	}
	m.lastReport = now
	report, err := Report(m.config(), Inputs{Records: m.records, Entries: m.tracker.Entry}, now)
	if err != nil {
		m.logger.Warn("cannot judge the accounts' health", "err", err)
		return
	}
	m.warner.Check(report, now)
}

func (m *Monitor) flush() {
	err := m.tracker.Flush()
	switch {
	case err != nil && !m.flushErr:
		m.logger.Warn("cannot save the accounts' health for the status command", "err", err)
	case err == nil && m.flushErr:
		m.logger.Info("saving the accounts' health works again")
	}
	m.flushErr = err != nil
}

// Run ticks at once and then every interval until ctx is done, and
// writes the state file a last time.
func (m *Monitor) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		m.Tick(time.Now())
		select {
		case <-t.C:
		case <-ctx.Done():
			m.flush()
			return
		}
	}
}
