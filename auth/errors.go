package auth

import (
	"errors"
	"strings"
)

// Kind says what a failed login means for the collector and the operator.
// The proxy maps each kind to an RFC 5530 response code.
type Kind int

const (
	// AuthenticationFailed: unknown login or wrong local password
	// (RFC 5530 AUTHENTICATIONFAILED).
	AuthenticationFailed Kind = iota
	// Unavailable: the token endpoint, the upstream or the state directory
	// failed in a way that a later retry may fix (RFC 5530 UNAVAILABLE).
	Unavailable
	// AuthorizationFailed: the stored authorization no longer works and the
	// operator must act, usually by running authorize again
	// (RFC 5530 AUTHORIZATIONFAILED).
	AuthorizationFailed
)

// String names the kind as its RFC 5530 response code.
func (k Kind) String() string {
	switch k {
	case AuthenticationFailed:
		return "AUTHENTICATIONFAILED"
	case Unavailable:
		return "UNAVAILABLE"
	case AuthorizationFailed:
		return "AUTHORIZATIONFAILED"
	}
	return "UNKNOWN"
}

// Error is a login failure with two faces: Message is safe to show the
// collector (one line, no secrets), Err is the cause for the logs.
type Error struct {
	Kind    Kind
	Message string
	Err     error
}

// Error returns the external message followed by the cause.
func (e *Error) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of err: the Kind of the first *Error in its chain,
// or Unavailable for any other error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Unavailable
}

// MessageOf returns the collector-facing message of err, or fallback when
// err carries none.
func MessageOf(err error, fallback string) string {
	var e *Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	return fallback
}

// OneLine makes s safe for an IMAP response text: control characters become
// spaces, runs of spaces collapse, and it is cut to max bytes.
func OneLine(s string, max int) string {
	if len(s) <= max && isOneLine(s) {
		return s
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max]
		// Do not leave a broken UTF-8 sequence at the end.
		for len(s) > 0 && s[len(s)-1]&0xc0 == 0x80 {
			s = s[:len(s)-1]
		}
		if len(s) > 0 && s[len(s)-1] >= 0xc0 {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}

// isOneLine reports whether OneLine leaves s as it is (its length aside):
// ASCII without control characters, with no space at either end and no
// two in a row. It lets an upstream's response lines through without
// allocating.
func isOneLine(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f:
			// Control characters become spaces; beyond ASCII, Fields
			// splits at Unicode spaces and Map replaces invalid UTF-8.
			return false
		case c == ' ' && (i == 0 || i == len(s)-1 || s[i+1] == ' '):
			return false
		}
	}
	return true
}
