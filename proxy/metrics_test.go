package proxy

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// loginsOnly collects a metrics value's login counter alone.
type loginsOnly struct{ m *metrics }

func (l loginsOnly) Describe(ch chan<- *prometheus.Desc) { ch <- descLogins }

func (l loginsOnly) Collect(ch chan<- prometheus.Metric) { l.m.collectLogins(ch) }

// TestLoginsByProtocol: each protocol's logins are counted apart.
func TestLoginsByProtocol(t *testing.T) {
	var m metrics
	m.login(config.POP3, "OK")
	m.login(config.SMTP, "AUTHENTICATIONFAILED")
	m.login(config.SMTP, "AUTHENTICATIONFAILED")
	m.login(config.IMAP, "no such outcome") // ignored
	want := `
# HELP imap_oauth_proxy_logins_total Logins by protocol and outcome (OK, or the RFC 5530 kind of the refusal).
# TYPE imap_oauth_proxy_logins_total counter
imap_oauth_proxy_logins_total{outcome="AUTHENTICATIONFAILED",protocol="imap"} 0
imap_oauth_proxy_logins_total{outcome="AUTHENTICATIONFAILED",protocol="pop3"} 0
imap_oauth_proxy_logins_total{outcome="AUTHENTICATIONFAILED",protocol="smtp"} 2
imap_oauth_proxy_logins_total{outcome="AUTHORIZATIONFAILED",protocol="imap"} 0
imap_oauth_proxy_logins_total{outcome="AUTHORIZATIONFAILED",protocol="pop3"} 0
imap_oauth_proxy_logins_total{outcome="AUTHORIZATIONFAILED",protocol="smtp"} 0
imap_oauth_proxy_logins_total{outcome="OK",protocol="imap"} 0
imap_oauth_proxy_logins_total{outcome="OK",protocol="pop3"} 1
imap_oauth_proxy_logins_total{outcome="OK",protocol="smtp"} 0
imap_oauth_proxy_logins_total{outcome="UNAVAILABLE",protocol="imap"} 0
imap_oauth_proxy_logins_total{outcome="UNAVAILABLE",protocol="pop3"} 0
imap_oauth_proxy_logins_total{outcome="UNAVAILABLE",protocol="smtp"} 0
`
	if err := testutil.CollectAndCompare(loginsOnly{&m}, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// sessionsOnly collects a metrics value's session counter alone.
type sessionsOnly struct{ m *metrics }

func (o sessionsOnly) Describe(ch chan<- *prometheus.Desc) { ch <- descSessionsTotal }

func (o sessionsOnly) Collect(ch chan<- prometheus.Metric) { o.m.collectSessions(ch) }

// TestSessionsByProtocol: each protocol's connections are counted apart.
func TestSessionsByProtocol(t *testing.T) {
	var m metrics
	m.session(config.IMAP)
	m.session(config.SMTP)
	m.session(config.SMTP)
	want := `
# HELP imap_oauth_proxy_sessions_total Collector connections accepted, by protocol.
# TYPE imap_oauth_proxy_sessions_total counter
imap_oauth_proxy_sessions_total{protocol="imap"} 1
imap_oauth_proxy_sessions_total{protocol="pop3"} 0
imap_oauth_proxy_sessions_total{protocol="smtp"} 2
`
	if err := testutil.CollectAndCompare(sessionsOnly{&m}, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
