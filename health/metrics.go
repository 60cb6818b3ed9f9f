package health

import (
	"errors"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// Per-account metrics, labelled by the account's login.
var (
	descAccessExpiry = prometheus.NewDesc("imap_oauth_proxy_account_access_token_expiry_timestamp_seconds",
		"When the account's newest access token expires (Unix time).", []string{"login"}, nil)
	descLastRefresh = prometheus.NewDesc("imap_oauth_proxy_account_last_refresh_timestamp_seconds",
		"Time of the account's last successful token refresh (Unix time).", []string{"login"}, nil)
	descLastLogin = prometheus.NewDesc("imap_oauth_proxy_account_last_login_timestamp_seconds",
		"Time of the account's last collector login (Unix time).", []string{"login"}, nil)
	descLastLoginOK = prometheus.NewDesc("imap_oauth_proxy_account_last_login_ok",
		"1 if the account's last collector login succeeded, 0 if it failed.", []string{"login"}, nil)
	descNeedsAuth = prometheus.NewDesc("imap_oauth_proxy_account_needs_authorization",
		"1 if the account has no token record or the token endpoint refused its grant.", []string{"login"}, nil)
	descCertNotAfter = prometheus.NewDesc("imap_oauth_proxy_account_certificate_not_after_timestamp_seconds",
		"NotAfter of the client certificate the account's app-only grant signs with (Unix time).", []string{"login"}, nil)
)

// Metrics exports per-account gauges from a Tracker, for the accounts of
// the current configuration. It is safe for concurrent use.
type Metrics struct {
	tracker *Tracker
	records RecordReader
	config  func() *config.Config
	certs   certCache
}

// NewMetrics returns the per-account metrics of the accounts cfg returns,
// from tracker and, for needs_authorization, the records' metadata.
func NewMetrics(tracker *Tracker, records RecordReader, cfg func() *config.Config) *Metrics {
	return &Metrics{tracker: tracker, records: records, config: cfg}
}

// Describe sends the per-account metrics' descriptions
// (prometheus.Collector).
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccessExpiry, descLastRefresh, descLastLogin,
		descLastLoginOK, descNeedsAuth, descCertNotAfter} {
		ch <- d
	}
}

// Collect sends each configured account's gauges (prometheus.Collector).
// A time not known yet has no sample.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	cfg := m.config()
	if cfg == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, login string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, login)
	}
	stamp := func(d *prometheus.Desc, t time.Time, login string) {
		if !t.IsZero() {
			gauge(d, float64(t.UnixMilli())/1e3, login)
		}
	}
	for login, acct := range cfg.Accounts {
		e := m.tracker.Entry(login)
		rec, err := m.records.Info(login)
		current := err == nil && (e.RecordID == "" || e.RecordID == rec.ID)
		if current {
			stamp(descAccessExpiry, e.AccessExpiry, login)
			stamp(descLastRefresh, e.LastRefresh, login)
		}
		stamp(descLastLogin, e.LastLogin, login)
		if e.LastOutcome != "" {
			gauge(descLastLoginOK, boolValue(e.LastOutcome == "OK"), login)
		}
		// A record that cannot be read is not known to need authorization.
		noRecord := errors.Is(err, tokenstore.ErrNoRecord)
		gauge(descNeedsAuth, boolValue(noRecord || (current && e.NeedsAuthorization)), login)
		if f := acct.Provider.ClientCertificateFile; f != "" && acct.Grant.AppOnly() {
			if t, err := m.certs.notAfter(f); err == nil {
				stamp(descCertNotAfter, t, login)
			}
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// certCache keeps certificates' NotAfter by file, reread when the file's
// size or modification time changes.
type certCache struct {
	mu      sync.Mutex
	entries map[string]certEntry
}

type certEntry struct {
	mod      time.Time
	size     int64
	notAfter time.Time
}

func (c *certCache) notAfter(path string) (time.Time, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[path]; ok && e.mod.Equal(fi.ModTime()) && e.size == fi.Size() {
		return e.notAfter, nil
	}
	t, err := CertificateNotAfter(path)
	if err != nil {
		return time.Time{}, err
	}
	if c.entries == nil {
		c.entries = map[string]certEntry{}
	}
	c.entries[path] = certEntry{mod: fi.ModTime(), size: fi.Size(), notAfter: t}
	return t, nil
}
