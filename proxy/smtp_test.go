package proxy_test

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// testMessage is a message with a line that needs dot-stuffing.
var testMessage = []byte("From: " + testMailbox + "\r\nTo: a@example.com\r\nSubject: scan\r\n\r\nbody\r\n.a dot line\r\n..two\r\n")

// startSMTPUpstream starts the submission upstream, adds its CA to ca.pem,
// and returns its address.
func (h *harness) startSMTPUpstream(validate func(user, token string) error, opts proxytest.SMTPUpstreamOptions) string {
	h.t.Helper()
	opts.Validate = validate
	up, err := proxytest.NewSMTPUpstream(opts)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { up.Close() })
	h.appendCA(up.CAPEM)
	h.smtpUpstream = up
	return up.Addr
}

// serveSMTP makes the running proxy accept SMTP on listenAddr (implicit TLS
// if implicitTLS) and returns the loopback address to dial.
func (h *harness) serveSMTP(listenAddr string, implicitTLS bool) string {
	h.t.Helper()
	if implicitTLS {
		return h.serveWith(h.t, listenAddr, h.srv.ServeSMTPS)
	}
	return h.serveWith(h.t, listenAddr, h.srv.ServeSMTP)
}

// dialSMTP connects a go-smtp client to addr and says EHLO.
func dialSMTP(t testing.TB, addr string) *smtp.Client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = testDeadline, testDeadline
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("scanner.example"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	return c
}

// smtpCode returns err's SMTP reply code and enhanced code, or fails.
func smtpCode(t testing.TB, what string, err error) (int, smtp.EnhancedCode, string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: err = %v, want an SMTP reply", what, err)
	}
	return se.Code, se.EnhancedCode, se.Message
}

// TestSMTPSend: AUTH PLAIN and AUTH LOGIN, then a message to Microsoft's
// and Gmail's submission servers, arriving byte-exact, with the upstream's
// queue id passed back.
func TestSMTPSend(t *testing.T) {
	for _, p := range []struct {
		name        string
		personality proxytest.SMTPPersonality
	}{{"microsoft", proxytest.SMTPMicrosoft}, {"gmail", proxytest.SMTPGmail}} {
		for _, mech := range []string{"PLAIN", "LOGIN"} {
			t.Run(p.name+" "+mech, func(t *testing.T) {
				h := newHarness(t, harnessOptions{smtp: true, smtpOptions: proxytest.SMTPUpstreamOptions{Personality: p.personality}})
				c := dialSMTP(t, h.serveSMTP("127.0.0.1:0", false))
				a := sasl.NewPlainClient("", testLogin, testPassword)
				if mech == "LOGIN" {
					a = sasl.NewLoginClient(testLogin, testPassword)
				}
				if err := c.Auth(a); err != nil {
					t.Fatalf("AUTH %s: %v", mech, err)
				}
				if err := c.Mail(testMailbox, nil); err != nil {
					t.Fatalf("MAIL: %v", err)
				}
				for _, to := range []string{"a@example.com", "b@example.com"} {
					if err := c.Rcpt(to, nil); err != nil {
						t.Fatalf("RCPT %s: %v", to, err)
					}
				}
				w, err := c.Data()
				if err != nil {
					t.Fatalf("DATA: %v", err)
				}
				w.Write(testMessage)
				resp, err := w.CloseWithResponse()
				if err != nil {
					t.Fatalf("end of DATA: %v", err)
				}
				if !strings.Contains(resp.StatusText, "queued-as-42@upstream") {
					t.Errorf("reply to DATA = %q, want the upstream's", resp.StatusText)
				}
				if err := c.Quit(); err != nil {
					t.Errorf("QUIT: %v", err)
				}
				msgs := h.smtpUpstream.Messages()
				if len(msgs) != 1 {
					t.Fatalf("upstream got %d messages, want 1", len(msgs))
				}
				m := msgs[0]
				if m.User != testMailbox || m.From != testMailbox || strings.Join(m.To, ",") != "a@example.com,b@example.com" {
					t.Errorf("upstream got %+v", m)
				}
				if !bytes.Equal(m.Data, testMessage) {
					t.Errorf("upstream got\n%q\nwant\n%q", m.Data, testMessage)
				}
				h.noSecretsInLogs()
			})
		}
	}
}

// noSecretsInLogs fails if the proxy's log holds the password, a refresh
// token or an access token.
func (h *harness) noSecretsInLogs() {
	h.t.Helper()
	logs := h.logs.String()
	secrets := append([]string{testPassword, base64.StdEncoding.EncodeToString([]byte("\x00" + testLogin + "\x00" + testPassword))},
		h.grants...)
	secrets = append(secrets, h.accessTokens()...)
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			h.t.Errorf("log holds a secret (%d bytes)", len(s))
		}
	}
}

// TestSMTPRefusalsPerCommand: the upstream's refusal of one RCPT, and of
// the message at its end, reach the sender with the upstream's codes, as
// they happen, and the session goes on.
func TestSMTPRefusalsPerCommand(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true})
	c := dialSMTP(t, h.serveSMTP("127.0.0.1:0", false))
	if err := c.Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail(testMailbox, nil); err != nil {
		t.Fatal(err)
	}
	code, ec, msg := smtpCode(t, "RCPT unknown", c.Rcpt("unknown@contoso.test", nil))
	if code != 550 || ec != (smtp.EnhancedCode{5, 1, 10}) || !strings.Contains(msg, "RecipientNotFound") {
		t.Errorf("RCPT unknown = %d %v %q, want Microsoft's 550 5.1.10", code, ec, msg)
	}
	if err := c.Rcpt("a@example.com", nil); err != nil {
		t.Fatalf("RCPT after a refused one: %v", err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(testMessage)
	if err := w.Close(); err != nil {
		t.Fatalf("end of DATA: %v", err)
	}
	// Sending as another address: refused at the end of the message.
	if err := c.Mail("boss@contoso.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("a@example.com", nil); err != nil {
		t.Fatal(err)
	}
	w, err = c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(testMessage)
	code, ec, msg = smtpCode(t, "DATA as another sender", w.Close())
	if code != 554 || ec != (smtp.EnhancedCode{5, 2, 252}) || !strings.Contains(msg, "SendAsDenied") {
		t.Errorf("DATA as another sender = %d %v %q, want 554 5.2.252 SendAsDenied", code, ec, msg)
	}
	if err := c.Noop(); err != nil {
		t.Errorf("NOOP after a refused message: %v", err)
	}
	if n := len(h.smtpUpstream.Messages()); n != 1 {
		t.Errorf("upstream has %d messages, want 1", n)
	}
}

// TestSMTPUpstreamRefusesToken: a refused token is refreshed once; then
// the sender gets 535 naming the cause, for Microsoft's direct 535 and
// Gmail's JSON challenge alike.
func TestSMTPUpstreamRefusesToken(t *testing.T) {
	for _, p := range []struct {
		name        string
		personality proxytest.SMTPPersonality
		want        string
	}{{"microsoft", proxytest.SMTPMicrosoft, "535 5.7.3"}, {"gmail", proxytest.SMTPGmail, "535 5.7.8"}} {
		t.Run(p.name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{smtp: true, smtpOptions: proxytest.SMTPUpstreamOptions{Personality: p.personality},
				validate: func(string, string, func(string, string) error) error { return errors.New("refused") }})
			c := dialSMTP(t, h.serveSMTP("127.0.0.1:0", false))
			code, ec, msg := smtpCode(t, "AUTH", c.Auth(sasl.NewPlainClient("", testLogin, testPassword)))
			if code != 535 || ec != (smtp.EnhancedCode{5, 7, 8}) {
				t.Errorf("AUTH = %d %v %q, want 535 5.7.8", code, ec, msg)
			}
			if !strings.Contains(msg, "upstream refused the token for "+testMailbox+": "+p.want) {
				t.Errorf("AUTH refusal %q does not carry the upstream's %s", msg, p.want)
			}
			if !strings.Contains(msg, "likely cause: provider lab's scopes do not allow SMTP") {
				t.Errorf("AUTH refusal %q does not name the likely cause", msg)
			}
			if tokens := h.accessTokens(); len(tokens) != 2 || tokens[0] == tokens[1] {
				t.Errorf("upstream saw %d tokens, want a token and a refreshed one", len(tokens))
			}
			if n := h.smtpUpstream.Refusals(); n != 2 {
				t.Errorf("upstream refused %d times, want 2", n)
			}
			h.noSecretsInLogs()
		})
	}
}

// TestSMTPAuthDisabled: Microsoft's 535 5.7.139 is not the token's fault:
// no refresh, and the sender learns what the admin must switch on.
func TestSMTPAuthDisabled(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true, smtpOptions: proxytest.SMTPUpstreamOptions{AuthDisabled: true}})
	c := dialSMTP(t, h.serveSMTP("127.0.0.1:0", false))
	code, _, msg := smtpCode(t, "AUTH", c.Auth(sasl.NewLoginClient(testLogin, testPassword)))
	if code != 535 || !strings.Contains(msg, "5.7.139") || !strings.Contains(msg, "-SmtpClientAuthenticationDisabled $false") {
		t.Errorf("AUTH = %d %q, want 535 naming Set-CASMailbox", code, msg)
	}
	if n := len(h.accessTokens()); n != 0 {
		t.Errorf("upstream validated %d tokens, want none (it refuses before)", n)
	}
	if n := h.smtpUpstream.Refusals(); n != 1 {
		t.Errorf("upstream refused %d times, want 1 (no retry)", n)
	}
}

// TestSMTPNotEnabled: an account that does not list smtp is refused.
func TestSMTPNotEnabled(t *testing.T) {
	h := newHarness(t, harnessOptions{pop3: true})
	c := dialSMTP(t, h.serveSMTP("127.0.0.1:0", false))
	code, _, msg := smtpCode(t, "AUTH", c.Auth(sasl.NewPlainClient("", testLogin, testPassword)))
	if code != 535 || !strings.Contains(msg, testLogin+" is not enabled for SMTP") {
		t.Errorf("AUTH = %d %q", code, msg)
	}
	code, _, _ = smtpCode(t, "AUTH with a wrong password", c.Auth(sasl.NewPlainClient("", testLogin, "wrong")))
	if code != 535 {
		t.Errorf("AUTH with a wrong password = %d, want 535", code)
	}
}

// smtpRaw speaks SMTP by hand.
type smtpRaw struct {
	*rawConn // send and line, as for IMAP
}

func dialSMTPRaw(t testing.TB, addr string) *smtpRaw {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testDeadline))
	r := &smtpRaw{newRawConn(t, conn)}
	if g := r.reply(); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting = %q", g)
	}
	return r
}

// reply reads one reply, multi-line or not, and returns its last line.
func (r *smtpRaw) reply() string {
	r.t.Helper()
	for {
		if l := r.line(); len(l) < 4 || l[3] != '-' {
			return l
		}
	}
}

// cmd sends a line and returns the last line of the reply.
func (r *smtpRaw) cmd(line string) string {
	r.t.Helper()
	r.send(line + "\r\n")
	return r.reply()
}

// closed reports whether the proxy closed the connection, after what it
// had still to say (go-smtp says 421 when a read deadline cuts a session).
func (r *smtpRaw) closed() bool {
	rest, err := io.ReadAll(r.br)
	if len(rest) > 0 && !bytes.HasPrefix(rest, []byte("421 ")) {
		r.t.Errorf("before closing, the proxy said %q", rest)
	}
	return err == nil
}

// login says EHLO and logs in with AUTH PLAIN.
func (r *smtpRaw) login() {
	r.t.Helper()
	wantPrefix(r.t, "EHLO", r.cmd("EHLO scanner.example"), "250 ")
	wantPrefix(r.t, "AUTH PLAIN", r.cmd("AUTH PLAIN "+plainIR("", testLogin, testPassword)), "235 ")
}

// TestSMTPSizeLimit: smtp_max_message_bytes is announced in SIZE; a MAIL
// declaring more is refused at once; a message that grows past it is
// refused at its end and never reaches the upstream's queue.
func TestSMTPSizeLimit(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true, serverTOML: "smtp_max_message_bytes = 1000\n"})
	addr := h.serveSMTP("127.0.0.1:0", false)
	c := dialSMTP(t, addr)
	if size, ok := c.MaxMessageSize(); !ok || size != 1000 {
		t.Errorf("SIZE = %d, %v; want 1000", size, ok)
	}
	if err := c.Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
		t.Fatal(err)
	}
	code, ec, _ := smtpCode(t, "MAIL SIZE=2000", c.Mail(testMailbox, &smtp.MailOptions{Size: 2000}))
	if code != 552 || ec != (smtp.EnhancedCode{5, 3, 4}) {
		t.Errorf("MAIL SIZE=2000 = %d %v, want 552 5.3.4", code, ec)
	}

	r := dialSMTPRaw(t, addr)
	r.login()
	wantPrefix(t, "MAIL", r.cmd("MAIL FROM:<"+testMailbox+">"), "250 ")
	wantPrefix(t, "RCPT", r.cmd("RCPT TO:<a@example.com>"), "250 ")
	wantPrefix(t, "DATA", r.cmd("DATA"), "354 ")
	r.send(strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz\r\n", 100) + ".\r\n")
	wantPrefix(t, "end of an oversized message", r.reply(), "552 5.3.4 ")
	wantPrefix(t, "MAIL after the upstream was cut", r.cmd("MAIL FROM:<"+testMailbox+">"), "421 4.4.2 ")
	if n := len(h.smtpUpstream.Messages()); n != 0 {
		t.Errorf("upstream queued %d messages, want none", n)
	}
}

// TestSMTPStreams: the upstream has the start of a message while the
// sender still holds back the rest. (go-smtp's message reader fills the
// 32 KiB buffer of each read, and the writer to the upstream buffers 4 KiB,
// so the first part is larger than both.)
func TestSMTPStreams(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true})
	r := dialSMTPRaw(t, h.serveSMTP("127.0.0.1:0", false))
	r.login()
	wantPrefix(t, "MAIL", r.cmd("MAIL FROM:<"+testMailbox+">"), "250 ")
	wantPrefix(t, "RCPT", r.cmd("RCPT TO:<a@example.com>"), "250 ")
	started := h.smtpUpstream.DataStarted()
	wantPrefix(t, "DATA", r.cmd("DATA"), "354 ")
	firstPart := "Subject: first part\r\n\r\n" + strings.Repeat("a line of the first part\r\n", 4000)
	r.send(firstPart)
	select {
	case first := <-started:
		if !strings.HasPrefix(firstPart, string(first)) {
			t.Errorf("upstream's first bytes = %q", first)
		}
	case <-time.After(testDeadline):
		t.Fatal("the upstream got nothing before the end of the message")
	}
	r.send("second part\r\n.\r\n")
	wantPrefix(t, "end of DATA", r.reply(), "250 2.0.0 OK <queued-as-42@upstream>")
	msgs := h.smtpUpstream.Messages()
	if len(msgs) != 1 || string(msgs[0].Data) != firstPart+"second part\r\n" {
		t.Errorf("upstream got %+v", msgs)
	}
}

// TestSMTPBDAT: BDAT chunks (RFC 3030) reach the upstream as one message.
func TestSMTPBDAT(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true})
	r := dialSMTPRaw(t, h.serveSMTP("127.0.0.1:0", false))
	r.login()
	wantPrefix(t, "MAIL", r.cmd("MAIL FROM:<"+testMailbox+">"), "250 ")
	wantPrefix(t, "RCPT", r.cmd("RCPT TO:<a@example.com>"), "250 ")
	part1, part2 := "Subject: chunks\r\n\r\n.dot at line start\r\n", "end\r\n"
	r.send(fmt.Sprintf("BDAT %d\r\n%s", len(part1), part1))
	wantPrefix(t, "BDAT", r.reply(), "250 ")
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(part2), part2))
	wantPrefix(t, "BDAT LAST", r.reply(), "250 2.0.0 OK <queued-as-42@upstream>")
	msgs := h.smtpUpstream.Messages()
	if len(msgs) != 1 || string(msgs[0].Data) != part1+part2 {
		t.Errorf("upstream got %+v", msgs)
	}
}

// TestSMTPPreauth: what the proxy answers before login, and that bad input
// gets a clear reply and leaves the proxy serving.
func TestSMTPPreauth(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true, serverTOML: "max_line_bytes = 512\n"})
	addr := h.serveSMTP("127.0.0.1:0", false)
	tests := []struct {
		name        string
		lines, want []string
		closed      bool
	}{
		{"EHLO", []string{"EHLO x"}, []string{"250 LIMITS RCPTMAX=1000"}, false},
		{"MAIL before AUTH", []string{"EHLO x", "MAIL FROM:<a@example.com>"}, []string{"250 ", "530 5.7.0 Authentication required"}, false},
		{"AUTH before EHLO", []string{"AUTH PLAIN"}, []string{"502 5.5.1 "}, false},
		{"unknown mechanism", []string{"EHLO x", "AUTH CRAM-MD5"}, []string{"250 ", "504 5.7.4 "}, false},
		{"wrong password", []string{"EHLO x", "AUTH PLAIN " + plainIR("", testLogin, "wrong")}, []string{"250 ", "535 5.7.8 authentication failed"}, false},
		{"authzid differs", []string{"EHLO x", "AUTH PLAIN " + plainIR("boss", testLogin, testPassword)},
			[]string{"250 ", "535 5.7.8 Authorization identity must be empty"}, false},
		{"AUTH LOGIN empty user", []string{"EHLO x", "AUTH LOGIN", ""}, []string{"250 ", "334 VXNlcm5hbWU6", "501 5.5.2 Empty login"}, false},
		{"cancelled", []string{"EHLO x", "AUTH LOGIN", "*"}, []string{"250 ", "334 ", "501 5.0.0 Negotiation cancelled"}, false},
		{"malformed base64", []string{"EHLO x", "AUTH PLAIN !!!"}, []string{"250 ", "454 4.7.0 Invalid base64"}, false},
		{"STARTTLS without a certificate", []string{"STARTTLS"}, []string{"502 5.5.1 TLS not supported"}, false},
		{"garbage", []string{"\x01\x02 garbage"}, []string{"501 5.5.2 Bad command"}, false},
		{"bare LF", []string{"NOOP\n"}, []string{"250 "}, false},
		{"pipelined before the greeting is read", []string{"EHLO x\r\nNOOP"}, []string{"250 ", "250 "}, false},
		{"HTTP", []string{"GET / HTTP/1.1", "Host: x", "", "x-header: y"},
			[]string{"501 5.5.2 Bad command", "501 5.5.2 Bad command", "500 5.5.2 Error: bad syntax", "501 5.5.2 Bad command", "500 5.5.1 Too many errors"}, true},
		{"overlong line", []string{"EHLO " + strings.Repeat("x", 600)}, []string{"500 5.4.0 Too long line"}, true},
		{"AUTH PLAIN without an initial response", []string{"EHLO x", "AUTH PLAIN", plainIR("", testLogin, testPassword), "QUIT"},
			[]string{"250 ", "334 ", "235 2.0.0 ", "221 "}, true},
		{"AUTH LOGIN with the user as initial response", []string{"EHLO x", "AUTH LOGIN " + base64.StdEncoding.EncodeToString([]byte(testLogin)),
			base64.StdEncoding.EncodeToString([]byte(testPassword)), "QUIT"}, []string{"250 ", "334 UGFzc3dvcmQ6", "235 2.0.0 ", "221 "}, true},
		{"QUIT", []string{"QUIT"}, []string{"221 "}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := dialSMTPRaw(t, addr)
			for _, l := range tt.lines {
				r.send(l + "\r\n")
			}
			for i, want := range tt.want {
				wantPrefix(t, fmt.Sprintf("reply %d", i), r.reply(), want)
			}
			if tt.closed && !r.closed() {
				t.Error("session still open")
			}
		})
	}
	r := dialSMTPRaw(t, addr)
	var ehlo []string
	r.send("EHLO x\r\n")
	for l := ""; len(l) < 4 || l[3] != ' '; {
		l, _ = r.br.ReadString('\n')
		ehlo = append(ehlo, strings.TrimSpace(l))
	}
	if s := strings.Join(ehlo, "|"); !strings.Contains(s, "|250-SIZE 36700160|") || !strings.Contains(s, "|250-AUTH PLAIN LOGIN|") {
		t.Errorf("EHLO on loopback = %q, want SIZE and AUTH", s)
	}
	wantPrefix(t, "AUTH PLAIN", r.cmd("AUTH PLAIN "+plainIR("", testLogin, testPassword)), "235 ") // still serving
	h.noSecretsInLogs()
}

// TestSMTPPlaintextRule: off loopback, AUTH needs STARTTLS first; after it,
// a message goes through. Implicit TLS offers AUTH at once.
func TestSMTPPlaintextRule(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true, localTLS: true})
	addr := h.serveSMTP("0.0.0.0:0", false) // dialled on 127.0.0.1 only
	r := dialSMTPRaw(t, addr)
	r.send("EHLO x\r\n")
	var ehlo []string
	for {
		l, err := r.br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		ehlo = append(ehlo, strings.TrimSpace(l))
		if l[3] == ' ' {
			break
		}
	}
	if s := strings.Join(ehlo, "|"); !strings.Contains(s, "STARTTLS") || strings.Contains(s, "AUTH") {
		t.Errorf("EHLO before STARTTLS = %q, want STARTTLS and no AUTH", s)
	}
	wantPrefix(t, "AUTH before STARTTLS", r.cmd("AUTH PLAIN "+plainIR("", testLogin, testPassword)), "523 5.7.10 ")

	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	c, err := smtp.NewClientStartTLS(conn, &tls.Config{RootCAs: h.localCA, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH after STARTTLS = %v %q", ok, mechs)
	}
	if err := c.SendMail(testMailbox, []string{"a@example.com"}, bytes.NewReader(testMessage)); err == nil {
		t.Error("SendMail without AUTH succeeded")
	}
	if err := c.Auth(sasl.NewPlainClient("", testLogin, testPassword)); err != nil {
		t.Fatalf("AUTH after STARTTLS: %v", err)
	}
	if err := c.SendMail(testMailbox, []string{"a@example.com"}, bytes.NewReader(testMessage)); err != nil {
		t.Fatalf("SendMail: %v", err)
	}

	tlsAddr := h.serveSMTP("127.0.0.1:0", true)
	conn, err = tls.Dial("tcp", tlsAddr, &tls.Config{RootCAs: h.localCA, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	sc := smtp.NewClient(conn)
	t.Cleanup(func() { sc.Close() })
	if err := sc.Auth(sasl.NewLoginClient(testLogin, testPassword)); err != nil {
		t.Fatalf("AUTH LOGIN over implicit TLS: %v", err)
	}
	if ok, _ := sc.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered over implicit TLS")
	}
	if n := len(h.smtpUpstream.Messages()); n != 1 {
		t.Errorf("upstream has %d messages, want 1", n)
	}
}

// TestSMTPSharesMaxSessions: a logged-in SMTP sender holds one of the
// mailbox's max_sessions until it quits, with IMAP sessions counting too.
func TestSMTPSharesMaxSessions(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true, accountTOML: "max_sessions = 1\n"})
	addr := h.serveSMTP("127.0.0.1:0", false)
	sender := dialSMTPRaw(t, addr)
	sender.login()
	r := dialSMTPRaw(t, addr)
	wantPrefix(t, "EHLO", r.cmd("EHLO x"), "250 ")
	wantPrefix(t, "AUTH past max_sessions", r.cmd("AUTH PLAIN "+plainIR("", testLogin, testPassword)),
		"454 4.7.0 too many sessions open for "+testLogin)
	wantPrefix(t, "QUIT", sender.cmd("QUIT"), "221 ")
	if !sender.closed() {
		t.Fatal("session still open after QUIT")
	}
	// The slot is given back before the connection closes.
	wantPrefix(t, "AUTH after the other sender quit", r.cmd("AUTH PLAIN "+plainIR("", testLogin, testPassword)), "235 ")
	if err := h.dial().Login(testLogin, testPassword).Wait(); err == nil {
		t.Error("IMAP login past max_sessions succeeded")
	}
}

// TestSMTPServerClose: Close ends a logged-in SMTP session, whose
// go-smtp server would otherwise wait for its next command.
func TestSMTPServerClose(t *testing.T) {
	h := newHarness(t, harnessOptions{smtp: true})
	r := dialSMTPRaw(t, h.serveSMTP("127.0.0.1:0", false))
	r.login()
	wantPrefix(t, "MAIL", r.cmd("MAIL FROM:<"+testMailbox+">"), "250 ")
	closed := make(chan error, 1)
	go func() { closed <- h.srv.Close() }()
	select {
	case <-closed:
	case <-time.After(testDeadline):
		t.Fatal("Close did not return: the SMTP session kept it waiting")
	}
	if !r.closed() {
		t.Error("session still open after Close")
	}
}
