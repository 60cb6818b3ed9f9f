package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// A real submission upstream: Postfix (Debian postfix) in a private
// directory, whose smtpd takes AUTH only through Dovecot's SASL socket,
// over the Dovecot passdb the interop tests already start: XOAUTH2 and
// OAUTHBEARER, each token introspected at the test token endpoint. Mail
// to example.test lands in one maildir the test reads.

// postfixDaemonDir is Debian's daemon_directory, where master lives.
const postfixDaemonDir = "/usr/lib/postfix/sbin"

// postfix is a Postfix started by a test.
type postfix struct {
	// Addr is the submission address (STARTTLS), "127.0.0.1:port".
	Addr string

	dir, logPath, newDir string
}

// postfixConfig fills testdata/interop/postfix-main.cf and
// postfix-master.cf.
type postfixConfig struct {
	Dir, QueueDir, DataDir, LogPath, MailDir string
	CertPath, KeyPath, AuthSocket            string
	Port, MailUID, MailGID                   int
}

// startPostfix starts Postfix's master in the foreground with a private
// configuration, queue and data directory, submission on a loopback port
// with d's certificate and d's SASL socket (dovecotOptions.SMTPAuth),
// waits for its greeting, and stops it when the test ends. Postfix's
// master runs only as root: a test not run as root skips (CI runs as
// root, so there it fails).
func startPostfix(t testing.TB, d *dovecot) *postfix {
	t.Helper()
	bin := requireProgram(t, "postfix", "postfix", "/usr/sbin")
	master := filepath.Join(postfixDaemonDir, "master")
	if _, err := os.Stat(master); err != nil {
		missingPackage(t, fmt.Sprintf("postfix's master not in %s", postfixDaemonDir), "postfix")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("postfix's master runs only as root, and CI runs the tests as root")
		}
		t.Skip("postfix's master runs only as root")
	}
	if d.AuthSocket == "" {
		t.Fatal("startPostfix needs a dovecot with dovecotOptions.SMTPAuth")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("the mail user: %v", err)
	}
	// Not t.TempDir: the mail user and user postfix must reach it.
	dir, err := os.MkdirTemp("", "iop-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	p := &postfix{dir: dir, logPath: filepath.Join(dir, "postfix.log")}
	cfg := postfixConfig{
		Dir: dir, QueueDir: filepath.Join(dir, "queue"), DataDir: filepath.Join(dir, "data"),
		LogPath: p.logPath, MailDir: filepath.Join(dir, "mail"),
		CertPath: d.CertPath, KeyPath: d.KeyPath, AuthSocket: d.AuthSocket,
	}
	cfg.MailUID, _ = strconv.Atoi(nobody.Uid)
	cfg.MailGID, _ = strconv.Atoi(nobody.Gid)
	p.newDir = filepath.Join(cfg.MailDir, "box", "new")
	confDir := filepath.Join(dir, "etc")
	for _, sub := range []string{confDir, cfg.QueueDir, cfg.DataDir, cfg.MailDir} {
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pw, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("postfix's mail_owner: %v", err)
	}
	pfUID, _ := strconv.Atoi(pw.Uid)
	if err := os.Chown(cfg.DataDir, pfUID, -1); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(cfg.MailDir, cfg.MailUID, cfg.MailGID); err != nil {
		t.Fatal(err)
	}
	p.Addr = freeAddr(t)
	_, port, _ := net.SplitHostPort(p.Addr)
	cfg.Port, _ = strconv.Atoi(port)
	renderFixture(t, "postfix-main.cf", filepath.Join(confDir, "main.cf"), cfg)
	renderFixture(t, "postfix-master.cf", filepath.Join(confDir, "master.cf"), cfg)

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postfix log:\n%s", p.Log())
		}
	})
	// "postfix check" creates the queue's subdirectories with their
	// owners and modes, as "postfix start" would.
	ctx, cancel := context.WithTimeout(context.Background(), dovecotStartTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, "-c", confDir, "check").CombinedOutput(); err != nil {
		t.Fatalf("postfix check: %v\n%s", err, out)
	}
	// -d: master stays in the foreground, so the test owns it. It leads
	// a process group of its own, which it kills on SIGTERM: that stops
	// it and its children.
	cmd := exec.Command(master, "-c", confDir, "-d")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, exited, waitErr := startForeground(t, "postfix", cmd)
	if err := waitGreeting((&net.Dialer{}).DialContext, p.Addr, "220 ", exited, waitErr); err != nil {
		t.Fatalf("postfix did not start: %v\noutput: %s", err, out.String())
	}
	return p
}

// Log returns Postfix's log (maillog_file) so far.
func (p *postfix) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", p.logPath, err)
	}
	return string(b)
}

// delivered waits, up to testDeadline, for the message Postfix delivered
// to rcpt (its Delivered-To header) in the maildir, and returns it as
// stored: Postfix's Return-Path, Delivered-To and Received headers on
// top of the message, with LF line ends.
func (p *postfix) delivered(t testing.TB, rcpt string) []byte {
	t.Helper()
	mark := []byte("\nDelivered-To: " + rcpt + "\n")
	deadline := time.Now().Add(testDeadline)
	backoff := 5 * time.Millisecond
	for {
		entries, err := os.ReadDir(p.newDir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(p.newDir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, mark) {
				return b
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix delivered nothing to %s within %v (%d messages in the maildir)", rcpt, testDeadline, len(entries))
		}
		time.Sleep(backoff) // polling a directory, bounded by deadline
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// checkDelivered fails unless stored, a maildir file, is msg with
// Postfix's delivery headers on top and its CRLF line ends stored as LF
// (the maildir's form): headers and body byte for byte otherwise.
func checkDelivered(t testing.TB, who string, stored, msg []byte) {
	t.Helper()
	want := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	if !bytes.HasSuffix(stored, want) {
		t.Errorf("%s: postfix stored %d bytes sha256 %s, which does not end with the %d-byte message sha256 %s; starts %q",
			who, len(stored), sha256Hex(stored), len(want), sha256Hex(want), firstLines(stored, 8))
		return
	}
	for _, h := range strings.Split(string(stored[:len(stored)-len(want)]), "\n") {
		if h == "" {
			continue
		}
		if name, _, _ := strings.Cut(h, ":"); !strings.HasPrefix(h, " ") && !strings.HasPrefix(h, "\t") &&
			name != "Return-Path" && name != "Delivered-To" && name != "X-Original-To" && name != "Received" {
			t.Errorf("%s: postfix added header %q", who, h)
		}
	}
}

// postfixMessage is a message from mailbox to rcpt with a Date and a
// Message-ID (so Postfix adds none), some lines starting with dots, one
// a lone dot, trailing blanks, and about size bytes of body.
func postfixMessage(mailbox, rcpt, subject string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <%s@contoso.test>\r\nFrom: %s\r\nTo: %s\r\nSubject: %s\r\n\r\n",
		randomHex(8), mailbox, rcpt, subject)
	b.WriteString(".\r\n..\r\n.leading dot\r\ntrailing blanks \t \r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		if i%100 == 0 {
			b.WriteString(".")
		}
		fmt.Fprintf(&b, "%08d %s\r\n", i, strings.Repeat("abcdefghij", 7))
	}
	b.WriteString("end\r\n")
	return b.Bytes()
}

// directSMTP connects to Postfix's submission with STARTTLS, trusting
// the test CA.
func (e *interopEnv) directSMTP(t testing.TB) *smtp.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.dovecot.CAPEM)
	c, err := smtp.DialStartTLS(e.postfix.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("dialing postfix: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.CommandTimeout, c.SubmissionTimeout = testDeadline, testDeadline
	return c
}

// answerChallenge is a SASL client that answers an XOAUTH2 error
// challenge with the empty response the mechanism asks for, so that the
// server's final reply is the error.
type answerChallenge struct {
	sasl.Client
	challenge []byte
}

func (c *answerChallenge) Next(challenge []byte) ([]byte, error) {
	c.challenge = challenge
	return []byte{}, nil
}

// sendDirect submits msg from a's mailbox to rcpt on c.
func sendDirect(c *smtp.Client, from, rcpt string, msg []byte) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// TestPostfixSubmission: Postfix, whose submission takes only bearer
// tokens through Dovecot's SASL, is the SMTP upstream. Postfix itself
// offers only XOAUTH2 and OAUTHBEARER after STARTTLS, refuses a token
// the token endpoint does not know, and delivers a direct XOAUTH2
// submission as sent; curl and Python's smtplib, with the local password
// through the proxy, get their messages delivered the same way.
func TestPostfixSubmission(t *testing.T) {
	e := newInteropEnvWith(t, interopOptions{smtp: true}, "curl", "smtplib")

	t.Run("direct", func(t *testing.T) {
		a := e.account(t, "curl")
		c := e.directSMTP(t)
		ok, mechs := c.Extension("AUTH")
		if !ok || strings.Join(strings.Fields(mechs), " ") != "XOAUTH2 OAUTHBEARER" {
			t.Errorf("postfix offers AUTH %v %q after STARTTLS, want only XOAUTH2 OAUTHBEARER", ok, mechs)
		}
		if err := c.Auth(auth.NewXOAUTH2Client(a.Mailbox, e.accessToken(t, a.Mailbox))); err != nil {
			t.Fatalf("direct XOAUTH2 submission to postfix as %s: %v", a.Mailbox, err)
		}
		msg := postfixMessage(a.Mailbox, "direct@example.test", "direct", 256<<10)
		if err := sendDirect(c, a.Mailbox, "direct@example.test", msg); err != nil {
			t.Fatalf("direct submission: %v", err)
		}
		if err := c.Quit(); err != nil {
			t.Error(err)
		}
		checkDelivered(t, "direct", e.postfix.delivered(t, "direct@example.test"), msg)
	})

	t.Run("curl", func(t *testing.T) {
		curl := requireProgram(t, "curl", "curl")
		a := e.account(t, "curl")
		msg := postfixMessage(a.Mailbox, "curl@example.test", "curl", 1<<20)
		path := filepath.Join(t.TempDir(), "msg")
		if err := os.WriteFile(path, msg, 0o600); err != nil {
			t.Fatal(err)
		}
		// The password reaches curl in a config file on stdin, not argv.
		cfg := fmt.Sprintf("user = %q\n", a.Login+":"+a.Password)
		if _, err := e.run(t, cfg, nil, curl, "-sS", "-K", "-", "--url", "smtp://"+e.smtpAddr+"/scanner.example",
			"--login-options", "AUTH=PLAIN", "--mail-from", a.Mailbox, "--mail-rcpt", "curl@example.test", "-T", path); err != nil {
			t.Fatalf("curl: %v", err)
		}
		checkDelivered(t, "curl", e.postfix.delivered(t, "curl@example.test"), msg)
	})

	t.Run("smtplib", func(t *testing.T) {
		python := requireProgram(t, "python3", "python3")
		a := e.account(t, "smtplib")
		msg := postfixMessage(a.Mailbox, "smtplib@example.test", "smtplib", 1<<20)
		path := filepath.Join(t.TempDir(), "msg")
		if err := os.WriteFile(path, msg, 0o600); err != nil {
			t.Fatal(err)
		}
		host, port, _ := net.SplitHostPort(e.smtpAddr)
		const script = `
import smtplib, sys
host, port, user, sender, rcpt, path = sys.argv[1:]
password = sys.stdin.readline().rstrip('\n')
s = smtplib.SMTP(host, int(port), timeout=30)
s.login(user, password)
refused = s.sendmail(sender, [rcpt], open(path, 'rb').read())
assert not refused, refused
s.quit()
`
		_, err := e.run(t, a.Password+"\n", nil, python, "-c", script, host, port, a.Login, a.Mailbox, "smtplib@example.test", path)
		if err != nil {
			t.Fatalf("smtplib: %v", err)
		}
		checkDelivered(t, "smtplib", e.postfix.delivered(t, "smtplib@example.test"), msg)
	})

	// Last: after a refused login the next ones from the same address
	// waited about 4 s (observed; most likely Dovecot's auth penalty,
	// since Postfix passes the client's address to Dovecot's SASL).
	t.Run("refused", func(t *testing.T) {
		a := e.account(t, "curl")
		var smtpErr *smtp.SMTPError
		err := e.directSMTP(t).Auth(sasl.NewPlainClient("", a.Mailbox, a.Password))
		if !errors.As(err, &smtpErr) || smtpErr.Code != 535 {
			t.Errorf("AUTH PLAIN to postfix: %v, want 535", err)
		}
		// An unknown token: Dovecot's error challenge comes through
		// Postfix as a 334, then 535 after the empty answer.
		bogus := "bogus-" + randomHex(16)
		e.addSecret(bogus)
		refused := &answerChallenge{Client: auth.NewXOAUTH2Client(a.Mailbox, bogus)}
		err = e.directSMTP(t).Auth(refused)
		if !errors.As(err, &smtpErr) || smtpErr.Code != 535 {
			t.Errorf("AUTH XOAUTH2 with an unknown token: %v, want 535", err)
		}
		if !bytes.Contains(refused.challenge, []byte(`"status"`)) {
			t.Errorf("XOAUTH2 error challenge %q, want Dovecot's JSON status", refused.challenge)
		}
	})
}
