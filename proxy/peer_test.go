package proxy

import (
	"net"
	"testing"
)

// TestAddressKey: IPv4 addresses count one by one (mapped ones as IPv4),
// IPv6 addresses by their /64.
func TestAddressKey(t *testing.T) {
	for _, tc := range []struct{ ip, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"127.0.0.2", "127.0.0.2"},
	} {
		if got := addressKey(net.ParseIP(tc.ip)); got != tc.want {
			t.Errorf("addressKey(%s) = %q; want %q", tc.ip, got, tc.want)
		}
	}
}

// TestAddressPeerIPv6: two addresses of one /64 behind a load balancer are
// one peer for the limits and the throttle; another /64 is another.
func TestAddressPeerIPv6(t *testing.T) {
	a := addressPeer(&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 40000})
	b := addressPeer(&net.TCPAddr{IP: net.ParseIP("2001:db8::2:3"), Port: 40001})
	c := addressPeer(&net.TCPAddr{IP: net.ParseIP("2001:db8:0:1::1"), Port: 40000})
	if a.key != b.key {
		t.Errorf("one /64, two keys: %q, %q", a.key, b.key)
	}
	if a.key == c.key {
		t.Errorf("two /64s, one key %q", a.key)
	}
	if a.uid != -1 {
		t.Errorf("uid of an address peer = %d; want -1", a.uid)
	}
}
