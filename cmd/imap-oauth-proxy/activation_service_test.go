package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// passedSocket is a listening socket for the daemon to inherit. Once the
// daemon has started, closing file leaves the daemon's copy the only one.
type passedSocket struct {
	addr string
	file *os.File
}

// listenFile opens a listening TCP socket on addr and returns it as a file
// to pass to a child process.
func listenFile(t *testing.T, addr string) passedSocket {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return passedSocket{addr: ln.Addr().String(), file: f}
}

// withSockets passes files to the daemon as fds 3, 4, ... named by names
// (LISTEN_FDNAMES), the way systemd does. LISTEN_PID must be the daemon's
// own pid, which is known only once it runs: sh sets it to its own pid,
// $$, which exec keeps for the daemon.
func withSockets(names string, files ...*os.File) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		cmd.ExtraFiles = files
		cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+names)
		cmd.Args = append([]string{"sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}, cmd.Args...)
		cmd.Path = "/bin/sh"
	}
}

// wait waits for the daemon to exit and returns Wait's result.
func (d *daemon) wait() error {
	d.t.Helper()
	select {
	case <-d.exited:
		return d.err
	case <-time.After(testDeadline):
		d.t.Fatalf("still running after %v\nstderr:\n%s", testDeadline, d.stderr)
		return nil
	}
}

// noNotify fails the test if an sd_notify message is waiting.
func (d *daemon) noNotify() {
	d.t.Helper()
	buf := make([]byte, 4096)
	d.notify.SetReadDeadline(time.Now())
	if n, err := d.notify.Read(buf); err == nil {
		d.t.Errorf("sd_notify %q from a daemon that did not start", buf[:n])
	}
}

// localCertificate writes cert.pem and key.pem for 127.0.0.1 into the
// lab's directory and returns a pool that trusts the certificate.
func (l *lab) localCertificate(t *testing.T) *x509.CertPool {
	t.Helper()
	certPEM, keyPEM, err := proxytest.NewCertificatePEM("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, l.dir, "cert.pem", string(certPEM))
	writeFile(t, l.dir, "key.pem", string(keyPEM))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	return roots
}

// configListening is the lab's mapping file with listen = addr.
func (l *lab) configListening(t *testing.T, addr, server string, logins ...string) string {
	t.Helper()
	text := labConfig(l.tokens.TokenURL(), l.upstream.Addr, server, logins...)
	return writeFile(t, l.dir, "config.toml",
		strings.Replace(text, `listen = "127.0.0.1:0"`, fmt.Sprintf("listen = %q", addr), 1))
}

// busyAddr returns an address that stays taken until the test ends: a
// daemon that tried to bind it would fail to start.
func busyAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// TestSocketActivation runs the binary with a plain IMAP socket from
// "systemd": it serves that socket instead of binding server.listen (which
// is taken), a collector that connected before the daemon started is
// served, READY=1 comes once it serves, and SIGTERM stops it cleanly.
func TestSocketActivation(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector")
	const password = "activation-pw-canary-31"
	l.authorize(t, c, "collector", password)
	path := l.configListening(t, busyAddr(t), "", "collector")

	sock := listenFile(t, "127.0.0.1:0")
	// Connected in the socket's backlog before the daemon exists.
	early, err := net.DialTimeout("tcp", sock.addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	early.SetDeadline(time.Now().Add(testDeadline))
	d := startDaemonWith(t, c, path, withSockets("imap", sock.file))
	sock.file.Close()

	if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
		t.Fatalf("first sd_notify = %q, want READY=1\nstderr:\n%s", msg, d.stderr)
	}
	m := d.waitLog(regexp.MustCompile(`msg=serving listen=(\S+) .*systemd_sockets=(\S+)`))
	if m[1] != sock.addr || m[2] != "imap" {
		t.Errorf("serving listen=%s systemd_sockets=%s, want %s and imap", m[1], m[2], sock.addr)
	}
	d.waitLog(regexp.MustCompile(`msg="using the socket from systemd" key=server.listen address=` + regexp.QuoteMeta(sock.addr)))

	cl := imapclient.New(early, nil)
	defer cl.Close()
	if err := cl.Login("collector", password).Wait(); err != nil {
		t.Fatalf("LOGIN on the connection made before the daemon started: %v", err)
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	loginSelect(t, sock.addr, "collector", password)

	d.signal(syscall.SIGTERM)
	if err := d.wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\nstderr:\n%s", err, d.stderr)
	}
	// The daemon held the socket's last copy.
	if conn, err := net.DialTimeout("tcp", sock.addr, testDeadline); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after the daemon exited", sock.addr)
	}
}

// TestSocketActivationAllSockets passes imaps, metrics and imap sockets
// (in that fd order) with listen_tls empty and server.listen taken. The
// plain socket listens on 0.0.0.0 while server.listen says 127.0.0.1:
// plaintext LOGIN must follow the socket's real address. It also reloads:
// a changed listen address is reported as unused, and a file without the
// certificate the imaps socket needs is refused.
func TestSocketActivationAllSockets(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector")
	const password = "activation-pw-canary-32"
	l.authorize(t, c, "collector", password)
	roots := l.localCertificate(t)
	tlsConfig := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	const server = "listen_tls = \"\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
	path := l.configListening(t, busyAddr(t), server, "collector")

	plain := listenFile(t, "0.0.0.0:0") // dialled on 127.0.0.1 only
	imaps := listenFile(t, "127.0.0.1:0")
	metrics := listenFile(t, "127.0.0.1:0")
	d := startDaemonWith(t, c, path, withSockets("imaps:metrics:imap", imaps.file, metrics.file, plain.file))
	for _, s := range []passedSocket{plain, imaps, metrics} {
		s.file.Close()
	}
	if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
		t.Fatalf("first sd_notify = %q, want READY=1\nstderr:\n%s", msg, d.stderr)
	}
	m := d.waitLog(regexp.MustCompile(`msg=serving listen=(\S+) listen_tls=(\S+) metrics=(\S+) systemd_sockets=(\S+)`))
	if got, want := m[1:], []string{plain.addr, imaps.addr, metrics.addr, "imaps,metrics,imap"}; !slices.Equal(got, want) {
		t.Errorf("serving line %q, want %q", got, want)
	}
	_, port, err := net.SplitHostPort(plain.addr)
	if err != nil {
		t.Fatal(err)
	}
	plainAddr := net.JoinHostPort("127.0.0.1", port)

	// Plain socket, not loopback: LOGIN needs STARTTLS first.
	cl := dialIMAP(t, plainAddr)
	if caps := cl.Caps(); !caps.Has("LOGINDISABLED") || !caps.Has("STARTTLS") {
		t.Errorf("capabilities on the 0.0.0.0 socket = %v, want LOGINDISABLED and STARTTLS", caps)
	}
	wantNO(t, "LOGIN without TLS on the 0.0.0.0 socket", cl.Login("collector", password).Wait(), imap.ResponseCodePrivacyRequired)
	startTLS := func() {
		t.Helper()
		conn, err := net.DialTimeout("tcp", plainAddr, testDeadline)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(testDeadline))
		cl, err := imapclient.NewStartTLS(conn, &imapclient.Options{TLSConfig: tlsConfig})
		if err != nil {
			t.Fatalf("STARTTLS: %v", err)
		}
		defer cl.Close()
		if err := cl.Login("collector", password).Wait(); err != nil {
			t.Fatalf("LOGIN after STARTTLS: %v", err)
		}
		if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("SELECT after STARTTLS: %v", err)
		}
	}
	startTLS()

	// Implicit TLS on the imaps socket.
	implicitTLS := func() {
		t.Helper()
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testDeadline}, "tcp", imaps.addr, tlsConfig)
		if err != nil {
			t.Fatalf("TLS to the imaps socket: %v", err)
		}
		conn.SetDeadline(time.Now().Add(testDeadline))
		cl := imapclient.New(conn, nil)
		defer cl.Close()
		if err := cl.Login("collector", password).Wait(); err != nil {
			t.Fatalf("LOGIN on the imaps socket: %v", err)
		}
		if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("SELECT on the imaps socket: %v", err)
		}
	}
	implicitTLS()

	// Metrics on the metrics socket.
	hc := &http.Client{Timeout: testDeadline}
	resp, err := hc.Get("http://" + metrics.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `imap_oauth_proxy_sessions_total{protocol="imap"} 3`) {
		t.Errorf("GET /metrics: %s, %v:\n%s", resp.Status, err, body)
	}

	reload := func(text string) {
		t.Helper()
		writeFile(t, l.dir, "config.toml", text)
		d.signal(syscall.SIGHUP)
		if msg := d.nextNotify(); !strings.HasPrefix(msg, "RELOADING=1") {
			t.Fatalf("sd_notify at reload = %q", msg)
		}
		if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
			t.Fatalf("sd_notify after reload = %q", msg)
		}
	}
	// A new listen address is not used, and reload says so, not "restart".
	moved := strings.Replace(labConfig(l.tokens.TokenURL(), l.upstream.Addr, server, "collector"),
		`listen = "127.0.0.1:0"`, `listen = "127.0.0.1:1"`, 1)
	reload(moved)
	d.waitLog(regexp.MustCompile(`msg="setting changed; not used: the listener is the socket from systemd" key=server.listen\n`))
	d.waitLog(regexp.MustCompile(`msg=reloaded`))
	if m, _ := d.stderr.Match(regexp.MustCompile(`next restart" key=server.listen\n`)); m != nil {
		t.Errorf("reload asks for a restart for the inherited listener:\n%s", d.stderr)
	}
	// The imaps socket needs the certificate: a file without it is refused.
	reload(strings.Replace(moved, "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n", "", 1))
	d.waitLog(regexp.MustCompile(`reload failed.*server\.tls_cert: missing: .*imaps`))
	implicitTLS()
	startTLS()
}

// TestSocketActivationStartFailures: sockets serve cannot use stop it
// before it reads the state directory, with an error naming the socket, and
// without READY=1.
func TestSocketActivationStartFailures(t *testing.T) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udpFile, err := udp.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer udpFile.Close()
	for _, tc := range []struct {
		name  string
		names string
		files func(t *testing.T) []*os.File
		code  int // exit status
		want  []string
	}{
		{"unknown name", "nntp", oneSocket, 1, []string{"fd 3", `"nntp"`}},
		{"name twice", "imap:imap", func(t *testing.T) []*os.File {
			return append(oneSocket(t), oneSocket(t)...)
		}, 1, []string{"fd 4", `"imap"`, "fd 3"}},
		{"datagram socket", "imap", func(*testing.T) []*os.File { return []*os.File{udpFile} },
			1, []string{"fd 3", `"imap"`, "not a stream socket"}},
		// The socket is fine; the file lacks what it needs: EX_CONFIG.
		{"imaps without a certificate", "imaps", oneSocket, exitConfig, []string{"server.tls_cert", "imaps"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.secret(testClientSecret)
			dir := t.TempDir()
			path := writeFile(t, dir, "config.toml", labConfig("https://idp.example/token", "imap.example:993", "", "collector"))
			d := startDaemonWith(t, c, path, withSockets(tc.names, tc.files(t)...))
			err := d.wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tc.code {
				t.Errorf("exit %v, want status %d", err, tc.code)
			}
			stderr := d.stderr.String()
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not contain %q:\n%s", w, stderr)
				}
			}
			d.noNotify()
			if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("serve that failed to start created the state directory (stat: %v)", err)
			}
		})
	}
}

// oneSocket is one listening socket to pass.
func oneSocket(t *testing.T) []*os.File {
	return []*os.File{listenFile(t, "127.0.0.1:0").file}
}

// TestSocketActivationOtherProcess: sockets whose LISTEN_PID is another
// process are not the daemon's; it binds server.listen as usual.
func TestSocketActivationOtherProcess(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector")
	const password = "activation-pw-canary-33"
	l.authorize(t, c, "collector", password)
	path := l.config(t, "", "collector")
	sock := listenFile(t, "127.0.0.1:0")
	d := startDaemonWith(t, c, path, func(cmd *exec.Cmd) {
		cmd.ExtraFiles = []*os.File{sock.file}
		cmd.Env = append(cmd.Env, "LISTEN_PID="+strconv.Itoa(os.Getpid()), "LISTEN_FDS=1", "LISTEN_FDNAMES=imap")
	})
	if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
		t.Fatalf("first sd_notify = %q, want READY=1\nstderr:\n%s", msg, d.stderr)
	}
	d.waitLog(regexp.MustCompile(`msg="sockets from systemd ignored; binding the configured addresses" reason="LISTEN_PID=` +
		strconv.Itoa(os.Getpid()) + ` is another process`))
	addr := d.waitLog(servingRE)[1]
	if addr == sock.addr {
		t.Fatalf("serving on the socket meant for another process, %s", addr)
	}
	if strings.Contains(d.stderr.String(), "systemd_sockets=") {
		t.Errorf("serving line names sockets from systemd:\n%s", d.stderr)
	}
	loginSelect(t, addr, "collector", password)
}

// TestReloadKeepsCertificateForBoundTLSListener: the implicit-TLS listener
// bound at start keeps serving until a restart, so a reload that drops
// listen_tls together with the certificate is refused (the new listen_tls
// would only apply at a restart, the missing certificate at once), and
// implicit TLS keeps working.
func TestReloadKeepsCertificateForBoundTLSListener(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector")
	const password = "reload-tls-pw-canary-71"
	l.authorize(t, c, "collector", password)
	roots := l.localCertificate(t)
	const server = "listen_tls = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
	text := labConfig(l.tokens.TokenURL(), l.upstream.Addr, server, "collector")
	d := startDaemon(t, c, writeFile(t, l.dir, "config.toml", text))
	if msg := d.nextNotify(); !strings.Contains(msg, "READY=1") {
		t.Fatalf("first sd_notify = %q, want READY=1\nstderr:\n%s", msg, d.stderr)
	}
	tlsAddr := d.waitLog(regexp.MustCompile(`msg=serving .*listen_tls=(\S+)`))[1]
	implicitTLS := func(when string) {
		t.Helper()
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testDeadline}, "tcp", tlsAddr,
			&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("implicit TLS %s: %v", when, err)
		}
		conn.SetDeadline(time.Now().Add(testDeadline))
		cl := imapclient.New(conn, nil)
		defer cl.Close()
		if err := cl.Login("collector", password).Wait(); err != nil {
			t.Fatalf("LOGIN over implicit TLS %s: %v", when, err)
		}
	}
	implicitTLS("before the reload")

	dropped := strings.Replace(text, server, "listen_tls = \"\"\n", 1)
	if dropped == text {
		t.Fatal("the test's config has no TLS settings to drop")
	}
	writeFile(t, l.dir, "config.toml", dropped)
	d.signal(syscall.SIGHUP)
	d.waitLog(regexp.MustCompile(`reload failed.*server\.tls_cert: missing: the implicit-TLS listener`))
	implicitTLS("after the refused reload")
}
