package proxy

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// TestHeaderRefusingConn: a client's first bytes pass through unchanged,
// however they are split, unless they are a PROXY header.
func TestHeaderRefusingConn(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pieces []string
		refuse bool
	}{
		{"IMAP", []string{"a1 CAPABILITY\r\n"}, false},
		{"IMAP tag PROXY", []string{"PRO", "XY LOGIN a b\r\n"}, false},
		{"POP3 in pieces", []string{"U", "S", "ER a\r\n"}, false},
		{"empty line", []string{"\r\n", "NOOP\r\n"}, false},
		{"v1", []string{"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"}, true},
		{"v1 in pieces", []string{"PR", "OXY TC", "P6 ::1 ::1 1 2\r\n"}, true},
		{"v1 UNKNOWN", []string{"PROXY UNKNOWN\r\n"}, true},
		{"v2", []string{string(proxyproto.SIGV2), "\x20\x00\x00\x00"}, true},
		{"v2 in pieces", []string{string(proxyproto.SIGV2[:5]), string(proxyproto.SIGV2[5:]) + "\x20\x00\x00\x00"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			server.SetDeadline(time.Now().Add(10 * time.Second))
			go func() {
				for _, p := range tc.pieces {
					if _, err := io.WriteString(client, p); err != nil {
						return
					}
				}
				client.Close()
			}()
			rc := newHeaderRefusingConn(server)
			got, err := io.ReadAll(rc)
			if tc.refuse {
				if !errors.Is(err, errProxyHeaderNotAllowed) || !rc.refused || len(got) != 0 {
					t.Fatalf("read %q, %v (refused %v); want the header refused", got, err, rc.refused)
				}
				return
			}
			want := ""
			for _, p := range tc.pieces {
				want += p
			}
			if err != nil || string(got) != want || rc.refused {
				t.Fatalf("read %q, %v (refused %v); want %q", got, err, rc.refused, want)
			}
		})
	}
}
