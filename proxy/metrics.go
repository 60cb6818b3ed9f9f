package proxy

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// loginOutcomes are the label values of imap_oauth_proxy_logins_total.
var loginOutcomes = [...]string{"OK", "AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "UNAVAILABLE"}

// dialBuckets are the upper bounds, in seconds, of the upstream dial
// latency histogram.
var dialBuckets = [...]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// metrics are the server's counters; all fields are safe for concurrent use.
type metrics struct {
	sessionsTotal   atomic.Int64
	rejectedTotal   atomic.Int64
	acceptErrors    [len(acceptErrorKinds)]atomic.Int64
	logins          [len(loginOutcomes)]atomic.Int64
	bytesToUpstream atomic.Int64
	bytesToClient   atomic.Int64
	dialCounts      [len(dialBuckets)]atomic.Int64 // non-cumulative
	dialCount       atomic.Int64
	dialSumMicros   atomic.Int64
}

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

func (m *metrics) login(outcome string) {
	for i, o := range loginOutcomes {
		if o == outcome {
			m.logins[i].Add(1)
			return
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

// WriteMetrics writes the server's metrics in the Prometheus text
// exposition format (version 0.0.4).
func (s *Server) WriteMetrics(w io.Writer) error {
	m := &s.metrics
	var err error
	p := func(format string, args ...any) {
		if err == nil {
			_, err = fmt.Fprintf(w, format, args...)
		}
	}
	// head writes a metric's HELP and TYPE lines; single adds its one
	// unlabelled sample.
	head := func(name, kind, help string) {
		p("# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
	}
	single := func(name, kind, help string, value any) {
		head(name, kind, help)
		p("%s %v\n", name, value)
	}
	single("imap_oauth_proxy_sessions_active", "gauge", "Collector connections open now.", s.ActiveSessions())
	single("imap_oauth_proxy_sessions_total", "counter", "Collector connections accepted.", m.sessionsTotal.Load())
	single("imap_oauth_proxy_connections_refused_total", "counter", "Connections refused at a connection limit.", m.rejectedTotal.Load())
	head("imap_oauth_proxy_accept_errors_total", "counter", "Failed accepts the listener backed off from and survived, by error.")
	for i, k := range acceptErrorKinds {
		p("imap_oauth_proxy_accept_errors_total{error=%q} %d\n", k, m.acceptErrors[i].Load())
	}
	head("imap_oauth_proxy_logins_total", "counter", "Logins by outcome (OK or the RFC 5530 code of the NO).")
	for i, o := range loginOutcomes {
		p("imap_oauth_proxy_logins_total{outcome=%q} %d\n", o, m.logins[i].Load())
	}
	head("imap_oauth_proxy_relayed_bytes_total", "counter", "Bytes relayed after login, by direction.")
	p("imap_oauth_proxy_relayed_bytes_total{direction=\"to_upstream\"} %d\n", m.bytesToUpstream.Load())
	p("imap_oauth_proxy_relayed_bytes_total{direction=\"to_client\"} %d\n", m.bytesToClient.Load())
	head("imap_oauth_proxy_upstream_dial_seconds", "histogram", "Time to connect and finish TLS with the upstream.")
	var cumulative int64
	for i, le := range dialBuckets {
		cumulative += m.dialCounts[i].Load()
		p("imap_oauth_proxy_upstream_dial_seconds_bucket{le=\"%g\"} %d\n", le, cumulative)
	}
	count := m.dialCount.Load()
	p("imap_oauth_proxy_upstream_dial_seconds_bucket{le=\"+Inf\"} %d\n", count)
	p("imap_oauth_proxy_upstream_dial_seconds_sum %g\n", float64(m.dialSumMicros.Load())/1e6)
	p("imap_oauth_proxy_upstream_dial_seconds_count %d\n", count)
	if err == nil {
		err = s.auth.WriteMetrics(w) // token refreshes by outcome
	}

	// Go runtime gauges, named as Prometheus's Go client names them. They
	// give the memory cost of a session (heap and goroutine stacks over
	// sessions_active); ReadMemStats stops the world briefly, once per scrape.
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	single("go_goroutines", "gauge", "Number of goroutines that currently exist.", runtime.NumGoroutine())
	single("go_memstats_heap_alloc_bytes", "gauge", "Heap bytes allocated and not yet freed (live and unswept).", ms.HeapAlloc)
	single("go_memstats_heap_inuse_bytes", "gauge", "Bytes in in-use heap spans.", ms.HeapInuse)
	single("go_memstats_stack_inuse_bytes", "gauge", "Bytes in goroutine stacks.", ms.StackInuse)
	single("go_memstats_sys_bytes", "gauge", "Bytes of memory obtained from the OS.", ms.Sys)
	single("go_gc_cycles_total", "counter", "Completed garbage collection cycles.", ms.NumGC)
	return err
}
