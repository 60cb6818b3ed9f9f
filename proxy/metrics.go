package proxy

import (
	"errors"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// loginOutcomes and loginProtocols are the label values of
// imap_oauth_proxy_logins_total.
var (
	loginOutcomes  = [...]string{"OK", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "UNAVAILABLE"}
	loginProtocols = [...]config.Protocol{config.IMAP, config.POP3, config.SMTP}
)

// dialBuckets are the upper bounds, in seconds, of the upstream dial
// latency histogram.
var dialBuckets = [...]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// metrics are the server's counters; all fields are safe for concurrent use.
type metrics struct {
	sessionsTotal   [len(loginProtocols)]atomic.Int64
	rejectedTotal   atomic.Int64
	acceptErrors    [len(acceptErrorKinds)]atomic.Int64
	logins          [len(loginProtocols)][len(loginOutcomes)]atomic.Int64
	bytesToUpstream atomic.Int64
	bytesToClient   atomic.Int64
	dialCounts      [len(dialBuckets)]atomic.Int64 // non-cumulative
	dialCount       atomic.Int64
	dialSumMicros   atomic.Int64
	proxyRefused    [len(proxyRefusalReasons)]atomic.Int64
}

// proxyRefusalReasons are the label values of
// imap_oauth_proxy_proxy_headers_refused_total: a connection from a
// proxy_protocol.allowed source without a valid header in time, and a
// PROXY header from a source that is not allowed.
var proxyRefusalReasons = [...]string{"bad_header", "source_not_allowed"}

const (
	proxyRefusedBadHeader = iota
	proxyRefusedSourceNotAllowed
)

// acceptErrorKinds are the label values of
// imap_oauth_proxy_accept_errors_total; "other" counts the rest.
var acceptErrorKinds = [...]string{"EMFILE", "ENFILE", "ENOBUFS", "ECONNABORTED", "other"}

func (m *metrics) acceptError(err error) {
	for i, errno := range [...]syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ECONNABORTED} {
		if errors.Is(err, errno) {
			m.acceptErrors[i].Add(1)
			return
		}
	}
	m.acceptErrors[len(acceptErrorKinds)-1].Add(1)
}

func (m *metrics) login(proto config.Protocol, outcome string) {
	p := slices.Index(loginProtocols[:], proto)
	o := slices.Index(loginOutcomes[:], outcome)
	if p >= 0 && o >= 0 {
		m.logins[p][o].Add(1)
	}
}

// session counts an accepted connection of proto.
func (m *metrics) session(proto config.Protocol) {
	if p := slices.Index(loginProtocols[:], proto); p >= 0 {
		m.sessionsTotal[p].Add(1)
	}
}

// collectSessions sends the session counter, by protocol.
func (m *metrics) collectSessions(ch chan<- prometheus.Metric) {
	for p, proto := range loginProtocols {
		ch <- prometheus.MustNewConstMetric(descSessionsTotal, prometheus.CounterValue,
			float64(m.sessionsTotal[p].Load()), string(proto))
	}
}

// collectLogins sends the login counter, by protocol and outcome.
func (m *metrics) collectLogins(ch chan<- prometheus.Metric) {
	for p, proto := range loginProtocols {
		for o, outcome := range loginOutcomes {
			ch <- prometheus.MustNewConstMetric(descLogins, prometheus.CounterValue,
				float64(m.logins[p][o].Load()), string(proto), outcome)
		}
	}
}

func (m *metrics) observeDial(d time.Duration) {
	m.dialCount.Add(1)
	m.dialSumMicros.Add(d.Microseconds())
	for i, le := range dialBuckets {
		if d.Seconds() <= le {
			m.dialCounts[i].Add(1)
			return
		}
	}
}

// Metric descriptions: the names and labels operators' dashboards use.
var (
	descSessionsActive = prometheus.NewDesc("imap_oauth_proxy_sessions_active",
		"Collector connections open now.", nil, nil)
	descSessionsTotal = prometheus.NewDesc("imap_oauth_proxy_sessions_total",
		"Collector connections accepted, by protocol.", []string{"protocol"}, nil)
	descRefusedTotal = prometheus.NewDesc("imap_oauth_proxy_connections_refused_total",
		"Connections refused at a connection limit.", nil, nil)
	descAcceptErrors = prometheus.NewDesc("imap_oauth_proxy_accept_errors_total",
		"Failed accepts the listener backed off from and survived, by error.", []string{"error"}, nil)
	descLogins = prometheus.NewDesc("imap_oauth_proxy_logins_total",
		"Logins by protocol and outcome (OK, or the RFC 5530 kind of the refusal).", []string{"protocol", "outcome"}, nil)
	descRelayedBytes = prometheus.NewDesc("imap_oauth_proxy_relayed_bytes_total",
		"Bytes relayed after login, by direction.", []string{"direction"}, nil)
	descDialSeconds = prometheus.NewDesc("imap_oauth_proxy_upstream_dial_seconds",
		"Time to connect and finish TLS with the upstream.", nil, nil)
	descProxyRefused = prometheus.NewDesc("imap_oauth_proxy_proxy_headers_refused_total",
		"Connections closed over the PROXY protocol, by reason: bad_header (from an allowed source) or source_not_allowed.",
		[]string{"reason"}, nil)
)

// Describe sends the descriptions of the server's metrics, of its token
// manager's and of the per-account ones (prometheus.Collector).
func (s *Server) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessionsActive, descSessionsTotal, descRefusedTotal,
		descAcceptErrors, descLogins, descRelayedBytes, descDialSeconds, descProxyRefused} {
		ch <- d
	}
	s.auth.Describe(ch)
	s.accounts.Describe(ch)
}

// Collect sends the current values of the server's metrics and of its
// token manager's (prometheus.Collector). The counters live in atomics
// that the hot paths update; a scrape reads them.
func (s *Server) Collect(ch chan<- prometheus.Metric) {
	m := &s.metrics
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descSessionsActive, float64(s.ActiveSessions()))
	m.collectSessions(ch)
	counter(descRefusedTotal, m.rejectedTotal.Load())
	for i, reason := range proxyRefusalReasons {
		counter(descProxyRefused, m.proxyRefused[i].Load(), reason)
	}
	for i, k := range acceptErrorKinds {
		counter(descAcceptErrors, m.acceptErrors[i].Load(), k)
	}
	m.collectLogins(ch)
	counter(descRelayedBytes, m.bytesToUpstream.Load(), "to_upstream")
	counter(descRelayedBytes, m.bytesToClient.Load(), "to_client")
	buckets := make(map[float64]uint64, len(dialBuckets))
	var cumulative int64
	for i, le := range dialBuckets {
		cumulative += m.dialCounts[i].Load()
		buckets[le] = uint64(cumulative)
	}
	ch <- prometheus.MustNewConstHistogram(descDialSeconds, uint64(m.dialCount.Load()),
		float64(m.dialSumMicros.Load())/1e6, buckets)
	s.auth.Collect(ch)
	s.accounts.Collect(ch)
}
