package proxy_test

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// fuzzSMTPSecret is the password in the AUTH responses of the seeds
// (testdata/fuzz/FuzzSMTPPreauth), in base64 only: no answer may carry it.
const fuzzSMTPSecret = "s3cret-fuzz"

// smtpReplyLine is one line of an SMTP reply (RFC 5321 section 4.2).
var smtpReplyLine = regexp.MustCompile(`^[2-5][0-9][0-9]([ -].*)?$`)

// FuzzSMTPPreauth feeds arbitrary bytes to an SMTP session before login,
// over loopback TCP, with an account whose record does not exist (every
// login fails). The session must end when the input does, answer only
// with SMTP reply lines, and never carry the password.
func FuzzSMTPPreauth(f *testing.F) {
	p := newFuzzProxy(f, proxytest.LabConfigOptions{SMTPAddress: "smtp.example:587", Protocols: []string{"smtp"}})
	addr := p.serveWith(f, "127.0.0.1:0", p.srv.ServeSMTP)
	f.Fuzz(func(t *testing.T, data []byte) {
		out := fuzzSession(t, addr, data)
		lines := strings.Split(strings.TrimSuffix(out, "\r\n"), "\r\n")
		if lines[0] != "220 imap-oauth-proxy ESMTP Service Ready" {
			t.Fatalf("greeting %q", lines[0])
		}
		for _, l := range lines[1:] {
			if !smtpReplyLine.MatchString(l) {
				t.Fatalf("answer line %q", l)
			}
		}
		// EHLO echoes its argument: only a password the input carries in
		// plain may come back.
		if strings.Contains(out, fuzzSMTPSecret) && !bytes.Contains(data, []byte(fuzzSMTPSecret)) {
			t.Fatal("an answer carries the password")
		}
	})
}
