package proxy

import (
	"strings"
	"testing"
)

func TestClientID(t *testing.T) {
	pairs := func(n int) []arg {
		var l []arg
		for range n {
			l = append(l, strArg("k"), strArg("v"))
		}
		return l
	}
	for _, tc := range []struct {
		name string
		args []arg
		want string
	}{
		{"pairs", []arg{listArg(strArg("name"), strArg("fetchmail"), strArg("version"), strArg("6.4.38"))},
			`("name" "fetchmail" "version" "6.4.38")`},
		{"NIL value", []arg{listArg(strArg("name"), strArg("x"), strArg("os"), atomArg("nil"))}, `("name" "x" "os" NIL)`},
		{"quotes and backslashes", []arg{listArg(strArg("name"), strArg(`a"b\c`))}, `("name" "a\"b\\c")`},
		{"NIL", []arg{atomArg("NIL")}, ""},
		{"empty list", []arg{listArg()}, ""},
		{"odd", []arg{listArg(strArg("name"))}, ""},
		{"NIL field", []arg{listArg(atomArg("NIL"), strArg("x"))}, ""},
		{"atom value", []arg{listArg(strArg("name"), atomArg("x"))}, ""},
		{"nested", []arg{listArg(strArg("name"), listArg())}, ""},
		{"CR LF", []arg{listArg(strArg("name"), strArg("x\r\nP9 DELETE INBOX"))}, ""},
		{"8-bit", []arg{listArg(strArg("name"), strArg("caf\xc3\xa9"))}, ""},
		{"long field", []arg{listArg(strArg(strings.Repeat("f", 31)), strArg("x"))}, ""},
		{"long value", []arg{listArg(strArg("name"), strArg(strings.Repeat("v", 1025)))}, ""},
		{"30 pairs", []arg{listArg(pairs(30)...)}, "(" + strings.TrimSuffix(strings.Repeat(`"k" "v" `, 30), " ") + ")"},
		{"31 pairs", []arg{listArg(pairs(31)...)}, ""},
		{"two arguments", []arg{listArg(strArg("a"), strArg("b")), atomArg("NIL")}, ""},
	} {
		if got := clientID(tc.args); got != tc.want {
			t.Errorf("%s: clientID = %q, want %q", tc.name, got, tc.want)
		}
	}
}
