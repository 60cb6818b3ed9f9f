package config

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestProxyProtocolTable(t *testing.T) {
	const listeners = "[server]\nlisten = \"127.0.0.1:1143\"\nlisten_pop3 = \"127.0.0.1:1110\"\n"
	for _, tc := range []struct {
		name, text string
		opts       *LoadOptions
		want       ProxyProtocol
		// problems are the exact problems, each starting with its key path.
		problems []string
	}{
		{name: "default off", text: listeners,
			want: ProxyProtocol{HeaderTimeout: DefaultProxyHeaderTimeout}},
		{name: "on", text: listeners + "[proxy_protocol]\nlisteners = [\"listen\", \"listen_pop3\"]\n" +
			"allowed = [\"10.0.0.5\", \"192.0.2.0/24\", \"2001:db8::/32\", \"::ffff:10.0.0.6\"]\nheader_timeout = \"2s\"",
			want: ProxyProtocol{Listeners: []string{"listen", "listen_pop3"}, HeaderTimeout: 2 * time.Second,
				Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32"), netip.MustParsePrefix("192.0.2.0/24"),
					netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("10.0.0.6/32")}}},
		{name: "a socket from systemd is a listener", text: "[server]\nlisten = \"\"\n[proxy_protocol]\nlisteners = [\"listen_smtp\"]\nallowed = [\"10.0.0.5\"]\n",
			opts: &LoadOptions{InheritedSMTP: true, InheritedListen: true},
			want: ProxyProtocol{Listeners: []string{"listen_smtp"}, Allowed: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")},
				HeaderTimeout: DefaultProxyHeaderTimeout}},
		{name: "no allowed", text: listeners + "[proxy_protocol]\nlisteners = [\"listen\"]",
			problems: []string{"proxy_protocol.allowed: missing: the PROXY protocol needs the load balancers' addresses, or anyone could claim any address"}},
		{name: "empty allowed", text: listeners + "[proxy_protocol]\nlisteners = [\"listen\"]\nallowed = []",
			problems: []string{"proxy_protocol.allowed: missing: the PROXY protocol needs the load balancers' addresses, or anyone could claim any address"}},
		{name: "no listeners", text: listeners + "[proxy_protocol]\nallowed = [\"10.0.0.5\"]",
			problems: []string{"proxy_protocol.listeners: missing (allowed is set): name the listeners behind the load balancer"}},
		{name: "empty listeners", text: listeners + "[proxy_protocol]\nlisteners = []\nallowed = [\"10.0.0.5\"]",
			problems: []string{"proxy_protocol.listeners: empty: name the listeners behind the load balancer, or remove the table"}},
		{name: "bad values", text: listeners + "[proxy_protocol]\nlisteners = [\"listen\", \"imap\", \"listen\", \"listen_smtp\"]\n" +
			"allowed = [\"10.0.0.5\", \"10.0.0.300\", \"lb.example\", \"10.0.0.0/33\"]\nheader_timeout = \"0s\"\nsend_proxy = true",
			problems: []string{
				"proxy_protocol.send_proxy: unknown key",
				"proxy_protocol.header_timeout: must be positive, got \"0s\"",
				"proxy_protocol.listeners: element 1: unknown listener \"imap\" (want some of listen, listen_tls, listen_pop3, listen_pop3_tls, listen_smtp, listen_smtps)",
				"proxy_protocol.listeners: listen listed twice",
				"proxy_protocol.listeners: element 3: server.listen_smtp is not set: no such listener",
				"proxy_protocol.allowed: element 1: bad address \"10.0.0.300\" (want an IP address or a CIDR prefix such as 10.0.0.0/24)",
				"proxy_protocol.allowed: element 2: bad address \"lb.example\" (want an IP address or a CIDR prefix such as 10.0.0.0/24)",
				"proxy_protocol.allowed: element 3: bad address \"10.0.0.0/33\" (want an IP address or a CIDR prefix such as 10.0.0.0/24)",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parse([]byte(tc.text), "", tc.opts)
			if tc.problems == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(cfg.ProxyProtocol, tc.want) {
					t.Fatalf("ProxyProtocol = %+v; want %+v", cfg.ProxyProtocol, tc.want)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse = %v; want a ValidationError", err)
			}
			if !reflect.DeepEqual(ve.Problems, tc.problems) {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(ve.Problems, "\n"), strings.Join(tc.problems, "\n"))
			}
		})
	}
}

func TestProxyProtocolAllowedFrom(t *testing.T) {
	cfg, err := Parse([]byte("[proxy_protocol]\nlisteners = [\"listen\"]\nallowed = [\"10.0.0.5\", \"192.0.2.0/24\", \"::1\"]"), "")
	if err != nil {
		t.Fatal(err)
	}
	pp := &cfg.ProxyProtocol
	if !pp.On("listen") || pp.On("listen_tls") {
		t.Errorf("On(listen), On(listen_tls) = %v, %v; want true, false", pp.On("listen"), pp.On("listen_tls"))
	}
	for addr, want := range map[string]bool{
		"10.0.0.5": true, "::ffff:10.0.0.5": true, "10.0.0.6": false,
		"192.0.2.200": true, "192.0.3.1": false, "::1": true, "127.0.0.1": false,
	} {
		if got := pp.AllowedFrom(netip.MustParseAddr(addr)); got != want {
			t.Errorf("AllowedFrom(%s) = %v; want %v", addr, got, want)
		}
	}
}
