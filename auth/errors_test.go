package auth_test

import (
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// TestOneLine: control characters become spaces, runs of spaces collapse,
// the result is cut to max bytes; a line that needs none of that comes
// back as it is, without allocating.
func TestOneLine(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"", 10, ""},
		{"A1 OK LOGIN completed", 100, "A1 OK LOGIN completed"},
		{"a  b", 10, "a b"},
		{" a", 10, "a"},
		{"a ", 10, "a"},
		{" ", 10, ""},
		{"a\tb\r\nc", 10, "a b c"},
		{"a\x7fb", 10, "a b"},
		{"a\x00b", 10, "a b"},
		{"j\xc3\xb6rg", 10, "j\xc3\xb6rg"},
		{"a\u00a0b", 10, "a b"},    // a Unicode space
		{"a\xffb", 10, "a\ufffdb"}, // invalid UTF-8
		{strings.Repeat("x", 12), 10, "xxxxxxxxxx..."},
		{"xxxxxxxxx\xc3\xb6", 10, "xxxxxxxxx..."}, // not cut inside a character
	} {
		if got := auth.OneLine(tc.in, tc.max); got != tc.want {
			t.Errorf("OneLine(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
	line := "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready"
	if n := testing.AllocsPerRun(10, func() { auth.OneLine(line, 1000) }); n != 0 {
		t.Errorf("OneLine of a clean line: %.0f allocations, want 0", n)
	}
}
