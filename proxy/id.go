package proxy

import (
	"strings"
)

// RFC 2971's bounds on an ID parameter list.
const (
	maxIDPairs      = 30
	maxIDFieldBytes = 30
	maxIDValueBytes = 1024
)

// clientID renders the argument of a collector's ID command as the
// parameter list the proxy forwards upstream after login: a list of
// quoted strings and NILs, in pairs, within RFC 2971's bounds. It returns
// "" for NIL, for anything malformed, and for values that a quoted string
// cannot carry (CR, LF, NUL, 8-bit), which are then not forwarded.
func clientID(args []arg) string {
	if len(args) != 1 || args[0].kind != argList {
		return ""
	}
	list := args[0].list
	if len(list) == 0 || len(list)%2 != 0 || len(list)/2 > maxIDPairs {
		return ""
	}
	var b strings.Builder
	b.WriteByte('(')
	for i, a := range list {
		if i > 0 {
			b.WriteByte(' ')
		}
		limit := maxIDValueBytes
		if i%2 == 0 {
			limit = maxIDFieldBytes
		}
		switch {
		case a.kind == argAtom && strings.EqualFold(a.s, "NIL") && i%2 == 1:
			b.WriteString("NIL")
		case a.kind == argString && len(a.s) <= limit && quotable(a.s):
			b.WriteByte('"')
			b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a.s))
			b.WriteByte('"')
		default:
			return ""
		}
	}
	b.WriteByte(')')
	return b.String()
}

// quotable reports whether s fits in an IMAP quoted string: 7-bit, no CR,
// LF or NUL.
func quotable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return false
		}
	}
	return true
}
