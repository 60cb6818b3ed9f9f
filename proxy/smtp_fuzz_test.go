package proxy

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// fuzzSMTPSecret is the password in the seeds' AUTH responses (base64
// only): no answer may carry it.
const fuzzSMTPSecret = "s3cret-fuzz"

// smtpReplyLine is one line of an SMTP reply (RFC 5321 section 4.2).
var smtpReplyLine = regexp.MustCompile(`^[2-5][0-9][0-9]([ -].*)?$`)

// FuzzSMTPPreauth feeds arbitrary bytes to an SMTP session before login,
// over loopback TCP, with an account whose record does not exist (every
// login fails). The session must end when the input does, answer only
// with SMTP reply lines, and never carry the password.
func FuzzSMTPPreauth(f *testing.F) {
	for _, s := range []string{
		"EHLO x\r\nQUIT\r\n",
		"EHLO x\r\nAUTH PLAIN AGNvbGxlY3RvcgBzM2NyZXQtZnV6eg==\r\n",
		"EHLO x\r\nAUTH PLAIN\r\nAGNvbGxlY3RvcgBzM2NyZXQtZnV6eg==\r\n",
		"EHLO x\r\nAUTH LOGIN Y29sbGVjdG9y\r\nczNjcmV0LWZ1eno=\r\n",
		"EHLO x\r\nAUTH LOGIN\r\nY29sbGVjdG9y\r\nczNjcmV0LWZ1eno=\r\n",
		"EHLO x\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN =\r\nAUTH\r\n",
		"HELO x\nmail from:<a@b>\nrcpt to:<c@d>\ndata\n",
		"EHLO x\r\nBDAT 10 LAST\r\n0123456789",
		"STARTTLS\r\nEHLO x\r\n",
		"a1 LOGIN collector pw\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00",
		"EHLO " + strings.Repeat("x", 600) + "\r\n",
		"\r\n\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	srv, ln := newFuzzServer(f, "smtp_address = \"smtp.example:587\"\n", "smtp")
	f.Fuzz(func(t *testing.T, data []byte) {
		out := fuzzSession(t, srv, ln, smtpProtocol, data)
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
