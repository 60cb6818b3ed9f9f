package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// The interop suites run real programs from Debian packages. A missing
// program skips its test with the package to install, except in CI
// (CI=true), which installs them all (.ci/run): there it fails.

// interopFixtures is the directory of the interop suites' fixtures.
const interopFixtures = "../testdata/interop"

// dovecotStartTimeout bounds Dovecot's start and stop.
const dovecotStartTimeout = 20 * time.Second

// requireProgram returns the path of program, or skips the test (fails it
// under CI=true) naming the Debian package that provides it. extraDirs are
// searched after PATH (Dovecot lives in /usr/sbin, often not in a user's
// PATH).
func requireProgram(t testing.TB, program, pkg string, extraDirs ...string) string {
	t.Helper()
	if path, err := exec.LookPath(program); err == nil {
		return path
	}
	for _, dir := range extraDirs {
		path := filepath.Join(dir, program)
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return path
		}
	}
	missingPackage(t, fmt.Sprintf("%s not installed", program), pkg)
	return ""
}

// missingPackage skips the test, or fails it under CI=true, because what
// is missing comes from the Debian package pkg.
func missingPackage(t testing.TB, what, pkg string) {
	t.Helper()
	msg := fmt.Sprintf("%s (apt-get install %s)", what, pkg)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI must install it (.ci/run)", msg)
	}
	t.Skip(msg)
}

// dovecot is a Dovecot 2.3 started by a test in a private directory: IMAP
// (and, if asked, POP3) with implicit TLS on loopback ports, accepting
// only XOAUTH2 and OAUTHBEARER, each token checked with the test token
// endpoint's introspection URL, any user a mailbox.
type dovecot struct {
	// Addr is the imaps address, "127.0.0.1:port".
	Addr string
	// POP3Addr is the pop3s address, "" unless dovecotOptions.POP3.
	POP3Addr string
	// CAPEM is the PEM certificate that signs (is) the server's.
	CAPEM []byte
	// CertPath and KeyPath are the server's certificate and key files
	// (mode 0600), which a private Postfix uses too.
	CertPath, KeyPath string
	// AuthSocket is the SASL socket for Postfix, "" unless
	// dovecotOptions.SMTPAuth.
	AuthSocket string

	dir     string
	logPath string
}

// dovecotConfig fills testdata/interop/dovecot.conf and
// dovecot-oauth2.conf.ext.
type dovecotConfig struct {
	BaseDir, StateDir, LogPath, MailDir string
	CertPath, KeyPath, OAuth2Conf       string
	Port, POP3Port                      int
	IntrospectionURL                    string
	AuthSocket                          string
	MailUID, MailGID                    int
	NonRoot                             bool
	User, Group                         string
}

// dovecotOptions is what a test asks of its Dovecot beyond IMAP.
type dovecotOptions struct {
	// POP3 adds the pop3 service (Debian dovecot-pop3d) with implicit
	// TLS on a port of its own, same passdb and mail.
	POP3 bool
	// SMTPAuth adds an auth listener (dovecot.AuthSocket) for Postfix's
	// smtpd_sasl_type = dovecot, world-usable.
	SMTPAuth bool
}

// requireDovecotService skips the test (fails it under CI=true) unless
// Dovecot's service binary name is installed (Debian's libexec directory
// first, then upstream's default): dovecot-core alone has neither imap
// nor pop3.
func requireDovecotService(t testing.TB, name, pkg string) {
	t.Helper()
	if !slices.ContainsFunc([]string{"/usr/lib/dovecot/" + name, "/usr/libexec/dovecot/" + name}, func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	}) {
		missingPackage(t, fmt.Sprintf("dovecot's %s service not installed", name), pkg)
	}
}

// startDovecot starts Dovecot in the foreground in a private directory,
// with the services opts asks for, validating tokens at introspectionURL,
// waits until each answers on its port with its greeting, and stops it
// when the test ends. On failure the test's log shows Dovecot's log.
func startDovecot(t testing.TB, introspectionURL string, opts dovecotOptions) *dovecot {
	t.Helper()
	bin := requireProgram(t, "dovecot", "dovecot-imapd", "/usr/sbin", "/usr/local/sbin")
	requireDovecotService(t, "imap", "dovecot-imapd")
	if opts.POP3 {
		requireDovecotService(t, "pop3", "dovecot-pop3d")
	}

	// Not t.TempDir: unix socket paths under base_dir must stay short,
	// and a root run needs the mail directory reachable by its mail user.
	dir, err := os.MkdirTemp("", "iop-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &dovecot{dir: dir, logPath: filepath.Join(dir, "dovecot.log")}

	cfg := dovecotConfig{
		BaseDir:          filepath.Join(dir, "run"),
		StateDir:         filepath.Join(dir, "state"),
		LogPath:          d.logPath,
		MailDir:          filepath.Join(dir, "mail"),
		CertPath:         filepath.Join(dir, "cert.pem"),
		KeyPath:          filepath.Join(dir, "key.pem"),
		OAuth2Conf:       filepath.Join(dir, "dovecot-oauth2.conf.ext"),
		IntrospectionURL: introspectionURL,
	}
	if opts.SMTPAuth {
		cfg.AuthSocket = "auth-postfix" // under base_dir
		d.AuthSocket = filepath.Join(cfg.BaseDir, cfg.AuthSocket)
	}
	d.CertPath, d.KeyPath = cfg.CertPath, cfg.KeyPath
	for _, sub := range []string{cfg.BaseDir, cfg.StateDir, cfg.MailDir} {
		// base_dir as Dovecot wants it (world-readable), the rest private.
		mode := os.FileMode(0o700)
		if sub == cfg.BaseDir {
			mode = 0o755
		}
		if err := os.Mkdir(sub, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(sub, mode); err != nil { // umask
			t.Fatal(err)
		}
	}
	if err := d.mailUser(&cfg); err != nil {
		t.Fatal(err)
	}

	cert, certPEM, err := proxytest.NewCertificate("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	d.CAPEM = certPEM
	if err := os.WriteFile(cfg.CertPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.KeyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}

	d.Addr = freeAddr(t)
	_, port, _ := net.SplitHostPort(d.Addr)
	cfg.Port, _ = strconv.Atoi(port)
	if opts.POP3 {
		d.POP3Addr = freeAddr(t)
		_, port, _ := net.SplitHostPort(d.POP3Addr)
		cfg.POP3Port, _ = strconv.Atoi(port)
	}
	renderFixture(t, "dovecot-oauth2.conf.ext", cfg.OAuth2Conf, cfg)
	conf := filepath.Join(dir, "dovecot.conf")
	renderFixture(t, "dovecot.conf", conf, cfg)

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dovecot log:\n%s", d.Log())
		}
	})
	// -F: the master stays in the foreground, so the test owns it and
	// SIGTERM stops it and every process it started.
	out, exited, waitErr := startForeground(t, "dovecot", exec.Command(bin, "-F", "-c", conf))

	if err := waitGreeting(d.tlsDialer().DialContext, d.Addr, "* OK", exited, waitErr); err != nil {
		t.Fatalf("dovecot did not start: %v\noutput: %s", err, out.String())
	}
	if opts.POP3 {
		if err := waitGreeting(d.tlsDialer().DialContext, d.POP3Addr, "+OK", exited, waitErr); err != nil {
			t.Fatalf("dovecot's pop3 did not start: %v\noutput: %s", err, out.String())
		}
	}
	return d
}

// mailUser picks the owner of the mail: the current user, or nobody when
// the test runs as root (Dovecot refuses uid 0 for mail).
func (d *dovecot) mailUser(cfg *dovecotConfig) error {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return fmt.Errorf("current user: %w", err)
		}
		g, err := user.LookupGroupId(strconv.Itoa(os.Getegid()))
		if err != nil {
			return fmt.Errorf("current group: %w", err)
		}
		cfg.NonRoot, cfg.User, cfg.Group = true, u.Username, g.Name
		cfg.MailUID, cfg.MailGID = os.Geteuid(), os.Getegid()
		return nil
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		return fmt.Errorf("root needs an unprivileged mail user: %w", err)
	}
	cfg.MailUID, _ = strconv.Atoi(u.Uid)
	cfg.MailGID, _ = strconv.Atoi(u.Gid)
	// The mail user reaches only its own directory.
	if err := os.Chmod(d.dir, 0o711); err != nil {
		return err
	}
	return os.Chown(cfg.MailDir, cfg.MailUID, cfg.MailGID)
}

// renderFixture executes the template testdata/interop/name with data into
// path, mode 0600.
func renderFixture(t testing.TB, name, path string, data any) {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join(interopFixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := tmpl.Execute(f, data); err != nil {
		f.Close()
		t.Fatalf("rendering %s: %v", name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// startForeground starts cmd, a mail server's master process that stays
// in the foreground, and stops it with SIGTERM (then kills it after
// dovecotStartTimeout) when the test ends. It returns the process's
// output, a channel closed when it exits, and its exit error once it has.
func startForeground(t testing.TB, name string, cmd *exec.Cmd) (out *syncbuf.Buffer, exited <-chan struct{}, waitErr func() error) {
	t.Helper()
	out = &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	done := make(chan struct{})
	var err error
	go func() { err = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(dovecotStartTimeout):
			t.Errorf("%s did not stop within %v after SIGTERM; killing it", name, dovecotStartTimeout)
			cmd.Process.Kill()
			<-done
		}
	})
	return out, done, func() error { <-done; return err }
}

// tlsDialer dials Dovecot's TLS ports, trusting its test CA.
func (d *dovecot) tlsDialer() *tls.Dialer {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.CAPEM)
	return &tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}
}

// waitGreeting dials addr with dial until the server greets with a line
// starting with prefix, or exits (exited closes; waitErr says how), or
// dovecotStartTimeout passes. Only a failed dial is retried, with a
// growing pause; TLS or protocol trouble ends the wait at once.
func waitGreeting(dial func(context.Context, string, string) (net.Conn, error), addr, prefix string,
	exited <-chan struct{}, waitErr func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), dovecotStartTimeout)
	defer cancel()
	backoff := 5 * time.Millisecond
	for {
		conn, err := dial(ctx, "tcp", addr)
		if err == nil {
			conn.SetDeadline(time.Now().Add(dovecotStartTimeout))
			greeting, err := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err != nil {
				return fmt.Errorf("reading the greeting: %w", err)
			}
			if !strings.HasPrefix(greeting, prefix) {
				return fmt.Errorf("greeting %q", greeting)
			}
			return nil
		}
		var opErr *net.OpError
		if !errors.As(err, &opErr) || opErr.Op != "dial" {
			return err
		}
		timer := time.NewTimer(backoff)
		select {
		case <-exited:
			timer.Stop()
			return fmt.Errorf("the server exited: %v", waitErr())
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%s not listening: %w", addr, err)
		case <-timer.C:
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// Log returns Dovecot's log so far. It holds login outcomes but no
// passwords or tokens (auth_verbose without auth_debug).
func (d *dovecot) Log() string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", d.logPath, err)
	}
	return string(b)
}
