package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// Real senders through the proxy's SMTP listener to the in-process
// submission upstream. The listener is on 0.0.0.0 (dialled on 127.0.0.1),
// so AUTH needs STARTTLS, as off loopback.

// smtpClientHarness is a harness with local TLS and a submission upstream
// of personality; it returns the proxy's SMTP address and its CA file.
func smtpClientHarness(t *testing.T, personality proxytest.SMTPPersonality) (h *harness, host, port, caFile string) {
	t.Helper()
	h = newHarness(t, harnessOptions{smtp: true, localTLS: true, smtpOptions: proxytest.SMTPUpstreamOptions{Personality: personality}})
	host, port, _ = net.SplitHostPort(h.serveSMTP("0.0.0.0:0", false))
	return h, host, port, filepath.Join(h.dir, "cert.pem")
}

// bigMessage returns a message of about size bytes with CRLF line
// endings, some of its lines starting with a dot.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: " + testMailbox + "\r\nTo: a@example.com\r\nSubject: large\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		if i%100 == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "%08d %s\r\n", i, strings.Repeat("abcdefghij", 7))
	}
	return b.Bytes()
}

// TestSMTPSmtplib: Python's smtplib, with STARTTLS and AUTH LOGIN or AUTH
// PLAIN, sends a 1 MB message that arrives byte for byte; a recipient the
// upstream refuses is reported to it with the upstream's code while the
// other gets the message.
func TestSMTPSmtplib(t *testing.T) {
	python := requireProgram(t, "python3", "python3")
	const script = `
import smtplib, ssl, sys
host, port, cafile, user, password, sender, mode, path = sys.argv[1:]
ctx = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP(host, int(port), timeout=30)
s.ehlo('scanner.example')
assert not s.has_extn('auth'), 'AUTH offered before STARTTLS'
s.starttls(context=ctx)
s.ehlo('scanner.example')
assert 'LOGIN' in s.esmtp_features['auth'], s.esmtp_features
s.user, s.password = user, password
if mode == 'login':
    s.auth('LOGIN', s.auth_login, initial_response_ok=False)
else:
    s.auth('PLAIN', s.auth_plain)
refused = s.sendmail(sender, ['a@example.com', 'unknown@contoso.test'], open(path, 'rb').read())
print(refused)
s.quit()
`
	for _, mode := range []string{"login", "plain"} {
		t.Run(mode, func(t *testing.T) {
			h, host, port, caFile := smtpClientHarness(t, proxytest.SMTPMicrosoft)
			msg := bigMessage(1 << 20)
			path := filepath.Join(t.TempDir(), "msg")
			if err := os.WriteFile(path, msg, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.CommandContext(context.Background(), python, "-c", script,
				host, port, caFile, testLogin, testPassword, testMailbox, mode, path).CombinedOutput()
			if err != nil {
				t.Fatalf("smtplib: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "'unknown@contoso.test': (550, b'5.1.10 RESOLVER.ADR.RecipientNotFound") {
				t.Errorf("smtplib's refused recipients = %s, want the upstream's 550 5.1.10", out)
			}
			msgs := h.smtpUpstream.Messages()
			if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, msg) || strings.Join(msgs[0].To, ",") != "a@example.com" {
				t.Fatalf("upstream got %d messages, want the %d-byte message to a@example.com", len(msgs), len(msg))
			}
			h.noSecretsInLogs()
		})
	}
}

// TestSMTPCurl: curl's smtp:// with STARTTLS (--ssl-reqd), AUTH LOGIN or
// PLAIN, sends a 20 MB message (2 MB with -short) that arrives byte for
// byte; a refused recipient fails the transfer with the upstream's code.
func TestSMTPCurl(t *testing.T) {
	curl := requireProgram(t, "curl", "curl")
	size := 20 << 20
	if testing.Short() {
		size = 2 << 20
	}
	msg := bigMessage(size)
	path := filepath.Join(t.TempDir(), "msg")
	if err := os.WriteFile(path, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mech := range []string{"LOGIN", "PLAIN"} {
		t.Run(mech, func(t *testing.T) {
			h, host, port, caFile := smtpClientHarness(t, proxytest.SMTPGmail)
			args := []string{"-sS", "--ssl-reqd", "--cacert", caFile, "--url", "smtp://" + host + ":" + port + "/scanner.example",
				"--login-options", "AUTH=" + mech, "-u", testLogin + ":" + testPassword,
				"--mail-from", testMailbox, "--mail-rcpt", "a@example.com", "-T", path}
			if out, err := exec.CommandContext(context.Background(), curl, args...).CombinedOutput(); err != nil {
				t.Fatalf("curl: %v\n%s", err, out)
			}
			msgs := h.smtpUpstream.Messages()
			if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, msg) {
				t.Fatalf("upstream got %d messages, want the %d-byte message byte for byte", len(msgs), len(msg))
			}
		})
	}
	t.Run("refused recipient", func(t *testing.T) {
		h, host, port, caFile := smtpClientHarness(t, proxytest.SMTPMicrosoft)
		out, err := exec.CommandContext(context.Background(), curl, "-sS", "--ssl-reqd", "--cacert", caFile,
			"--url", "smtp://"+host+":"+port, "-u", testLogin+":"+testPassword,
			"--mail-from", testMailbox, "--mail-rcpt", "unknown@contoso.test", "-T", path).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "550") {
			t.Errorf("curl to a refused recipient: %v, %s; want a failure naming 550", err, out)
		}
		if n := len(h.smtpUpstream.Messages()); n != 0 {
			t.Errorf("upstream got %d messages", n)
		}
	})
}

// TestSMTPSwaks: swaks, the admins' SMTP test tool, with STARTTLS and AUTH
// LOGIN or PLAIN, sends a message through the proxy; a refused recipient
// ends swaks with a failure. Its transcript shows the AUTH exchange, so it
// is hidden and only the exit status is reported.
func TestSMTPSwaks(t *testing.T) {
	swaks := requireProgram(t, "swaks", "swaks")
	for _, mech := range []string{"LOGIN", "PLAIN"} {
		t.Run(mech, func(t *testing.T) {
			h, host, port, _ := smtpClientHarness(t, proxytest.SMTPMicrosoft)
			cmd := exec.CommandContext(context.Background(), swaks, "--server", host, "--port", port, "--tls",
				"--auth", mech, "--auth-user", testLogin, "--auth-password", testPassword,
				"--from", testMailbox, "--to", "a@example.com", "--header", "Subject: swaks through the proxy", "--hide-all")
			if err := cmd.Run(); err != nil {
				t.Fatalf("swaks: %v", err)
			}
			msgs := h.smtpUpstream.Messages()
			if len(msgs) != 1 || !bytes.Contains(msgs[0].Data, []byte("Subject: swaks through the proxy")) {
				t.Fatalf("upstream got %d messages, want swaks' one", len(msgs))
			}
		})
	}
	t.Run("refused recipient", func(t *testing.T) {
		h, host, port, _ := smtpClientHarness(t, proxytest.SMTPMicrosoft)
		err := exec.CommandContext(context.Background(), swaks, "--server", host, "--port", port, "--tls",
			"--auth", "LOGIN", "--auth-user", testLogin, "--auth-password", testPassword,
			"--from", testMailbox, "--to", "unknown@contoso.test", "--hide-all").Run()
		if err == nil {
			t.Error("swaks to a refused recipient succeeded")
		}
		if n := len(h.smtpUpstream.Messages()); n != 0 {
			t.Errorf("upstream got %d messages", n)
		}
	})
}

// TestSMTPMsmtp: msmtp, the sendmail stand-in of many appliances and PHP
// setups, with STARTTLS against the proxy's certificate and AUTH LOGIN or
// PLAIN, sends a 1 MB message that arrives byte for byte. The password
// comes from a file, as a deployment would keep it.
func TestSMTPMsmtp(t *testing.T) {
	msmtp := requireProgram(t, "msmtp", "msmtp")
	// msmtp adds a Date and a Message-ID to a message that lacks them.
	msg := append([]byte("Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <msmtp-test@example.com>\r\n"), bigMessage(1<<20)...)
	for _, mech := range []string{"login", "plain"} {
		t.Run(mech, func(t *testing.T) {
			h, host, port, caFile := smtpClientHarness(t, proxytest.SMTPGmail)
			dir := t.TempDir()
			pwFile := filepath.Join(dir, "password")
			if err := os.WriteFile(pwFile, []byte(testPassword+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(context.Background(), msmtp, "--host="+host, "--port="+port,
				"--tls=on", "--tls-starttls=on", "--tls-trust-file="+caFile, "--auth="+mech,
				"--user="+testLogin, "--passwordeval=cat "+pwFile, "--from="+testMailbox, "a@example.com")
			cmd.Stdin = bytes.NewReader(msg)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("msmtp: %v\n%s", err, out)
			}
			msgs := h.smtpUpstream.Messages()
			if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, msg) {
				t.Fatalf("upstream got %d messages, want the %d-byte message byte for byte (got %d bytes; first difference at %d)", len(msgs), len(msg), len(msgs[0].Data), firstDiff(msgs[0].Data, msg))
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
