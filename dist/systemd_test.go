//go:build linux

// Package dist holds the files that install imap-oauth-proxy as a
// service: systemd units, the sysusers.d file, the example config and the
// Debian package's definition. Its tests boot a real systemd in a
// container and walk the operator's path of docs/operations.md, from
// `make install` and from the .deb.
package dist

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Local passwords and the client secret of the lab. The journal check
// looks for each of them.
const (
	helpdeskPassword = "HelpdeskLocal7f3a9c"
	salesPassword    = "SalesLocal2b8e41"
	clientSecret     = "demo-secret" // what the demo's token endpoint requires
)

// artifacts are built once per test binary, on the host: the tree for
// `make install` (binary and man pages), and two .debs of different
// versions for the upgrade.
type artifacts struct {
	src         string // the repository, with the binary and man pages built
	debs        string // directory holding oldDeb and newDeb
	oldDeb      string
	newDeb      string
	lab         string // directory holding imap-oauth-proxy-demo, the lab's upstream
	err         error
	buildTiming time.Duration
}

var (
	builtOnce sync.Once
	built     artifacts
	rootOnce  sync.Once
	rootDir   string
)

// prepare returns the container's root filesystem and the artifacts, made
// once for both tests.
func prepare(t *testing.T) (string, *artifacts) {
	t.Helper()
	rootOnce.Do(func() { rootDir = rootfs(t) })
	if rootDir == "" {
		t.Fatal("no root filesystem (see the first test's failure)")
	}
	return rootDir, buildArtifacts(t)
}

func buildArtifacts(t *testing.T) *artifacts {
	t.Helper()
	builtOnce.Do(func() {
		start := time.Now()
		src, err := filepath.Abs("..")
		if err != nil {
			built.err = err
			return
		}
		built.src = src
		built.debs, built.err = os.MkdirTemp("", "imap-oauth-proxy-debs-")
		if built.err != nil {
			return
		}
		built.lab, built.err = os.MkdirTemp("", "imap-oauth-proxy-lab-")
		if built.err != nil {
			return
		}
		steps := [][]string{
			{"make", "-C", src, "build", "man"},
			{"make", "-C", src, "deb", "DEB_VERSION=0.1.0", "DEB_DIR=" + built.debs},
			{"make", "-C", src, "deb", "DEB_VERSION=0.1.1", "DEB_DIR=" + built.debs},
			{"go", "build", "-o", filepath.Join(built.lab, "imap-oauth-proxy-demo"), "./cmd/imap-oauth-proxy-demo"},
		}
		for _, step := range steps {
			cmd := exec.Command(step[0], step[1:]...)
			cmd.Dir = src
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("%s: %v\n%s", strings.Join(step, " "), err, tail(out, 30))
				return
			}
		}
		built.oldDeb = "/debs/imap-oauth-proxy_0.1.0_amd64.deb"
		built.newDeb = "/debs/imap-oauth-proxy_0.1.1_amd64.deb"
		built.buildTiming = time.Since(start)
	})
	if built.err != nil {
		t.Fatalf("building what the operator installs: %v", built.err)
	}
	return &built
}

// lab is a container with the demo's upstream running beside the service.
type lab struct {
	*container
	provider   string // the [providers.demo] table, as the operator adapts it
	configText string
}

// TestServiceFromMakeInstall walks the operator's path with `make install`.
func TestServiceFromMakeInstall(t *testing.T) {
	needContainers(t)
	t.Parallel()
	root, art := prepare(t)
	start := time.Now()
	c := boot(t, root, map[string]string{art.src: "/src", art.lab: "/opt/lab"})
	t.Logf("booted in %s", time.Since(start).Round(time.Millisecond))

	// make install from a tree whose binary and man pages are built; the
	// container has no Go, so a rebuild would fail here.
	c.must("make -C /src install")
	checkInstalled(t, c, "/usr/local/bin/imap-oauth-proxy", "/usr/local/share/man")
	l := startLab(t, c)

	l.configure(t, "")
	l.importToken(t, "helpdesk", helpdeskPassword)
	l.startService(t)
	l.loginAndRotation(t)
	l.otherUserReadsNothing(t)
	l.peerUIDKnown(t)
	l.metricsUnderTheSandbox(t)
	l.securityExposure(t)
	l.reload(t)
	l.badConfigDoesNotLoop(t)
	l.socketActivation(t)
	l.stopIsClean(t)
	l.statusAfterStop(t)
	l.journalHasNoSecret(t)

	c.must("make -C /src uninstall")
	c.mustFail("test -e /usr/local/bin/imap-oauth-proxy || test -e /etc/systemd/system/imap-oauth-proxy.service || " +
		"test -e /etc/systemd/system/sockets.target.wants/imap-oauth-proxy.socket")
	c.must("test -f /etc/imap-oauth-proxy/config.toml && test -f /var/lib/imap-oauth-proxy/helpdesk.token")
}

// TestServiceFromPackage installs the .deb, upgrades it over itself and
// removes it.
func TestServiceFromPackage(t *testing.T) {
	needContainers(t)
	t.Parallel()
	root, art := prepare(t)
	c := boot(t, root, map[string]string{art.debs: "/debs", art.lab: "/opt/lab"})

	c.must("apt-get install -y -q " + art.oldDeb)
	checkInstalled(t, c, "/usr/bin/imap-oauth-proxy", "/usr/share/man")
	if got := c.must("dpkg-query -W -f '${Conffiles}' imap-oauth-proxy"); !strings.Contains(got, "/etc/imap-oauth-proxy/config.toml") {
		t.Errorf("config.toml is not a conffile: %q", got)
	}
	if got, _ := c.run("systemctl is-enabled imap-oauth-proxy"); got != "disabled" {
		t.Errorf("after install the service is %q, want disabled until configured", got)
	}
	l := startLab(t, c)
	l.configure(t, "")
	l.importToken(t, "helpdesk", helpdeskPassword)
	l.startService(t)
	l.loginAndRotation(t)
	l.otherUserReadsNothing(t)

	// Upgrade over itself: config (a changed conffile) and records stay,
	// and the running service restarts on the new binary.
	configSum := c.must("sha256sum /etc/imap-oauth-proxy/config.toml")
	// The token records, byte for byte (health.json beside them is the
	// daemon's own state, rewritten at every stop).
	const recordSums = "cd /var/lib/imap-oauth-proxy && sha256sum *.token && stat -c '%U:%G %a %n' *.token"
	records := c.must(recordSums)
	oldPID := c.must("systemctl show -p MainPID --value imap-oauth-proxy")
	c.must("apt-get install -y -q " + art.newDeb)
	if got := c.must("dpkg-query -W -f '${Version}' imap-oauth-proxy"); got != "0.1.1" {
		t.Fatalf("after the upgrade the package is %q, want 0.1.1", got)
	}
	if got := c.must("sha256sum /etc/imap-oauth-proxy/config.toml"); got != configSum {
		t.Errorf("the upgrade changed config.toml")
	}
	if got := c.must(recordSums); got != records {
		t.Errorf("the upgrade changed the records:\nbefore\n%s\nafter\n%s", records, got)
	}
	// The restart postinst asks for failed once in about fifteen loaded CI
	// runs, before our binary ran (status 219/CGROUP: systemd could not
	// set up the unit's cgroup inside the container); Restart=on-failure
	// then starts it again after RestartSec, as it would for an operator.
	// So the service must be active within RestartSec and a start, and a
	// restart systemd had to make is reported. Bounded poll inside the
	// container: nothing announces the end of an automatic restart.
	if _, err := c.run("for i in $(seq 150); do systemctl is-active -q imap-oauth-proxy && exit 0; sleep 0.1; done; exit 1"); err != nil {
		got, _ := c.run("systemctl is-active imap-oauth-proxy")
		t.Fatalf("after the upgrade the service is %s, not active within 15s", got)
	}
	if n := c.must("systemctl show -p NRestarts --value imap-oauth-proxy"); n != "0" {
		journal, _ := c.run("journalctl --no-pager -n 40 -o short-monotonic")
		t.Logf("the restart at upgrade failed and systemd restarted the service (NRestarts=%s):\n%s", n, journal)
	}
	if pid := c.must("systemctl show -p MainPID --value imap-oauth-proxy"); pid == oldPID {
		t.Errorf("the upgrade did not restart the service (MainPID %s)", pid)
	}
	// journald reads the daemon's stdout on its own time: wait for the line.
	l.waitJournal(t, "version=0.1.1", 0)
	// The new process has no cached token: this login refreshes with the
	// record the old one left.
	l.fetchWelcome(t, "helpdesk", helpdeskPassword, 1143)

	// Remove: units gone, service stopped; config and records stay.
	c.must("apt-get remove -y -q imap-oauth-proxy")
	if got, _ := c.run("systemctl is-active imap-oauth-proxy"); got == "active" {
		t.Errorf("after apt remove the service is still active")
	}
	c.mustFail("test -e /usr/bin/imap-oauth-proxy || test -e /usr/lib/systemd/system/imap-oauth-proxy.service")
	c.must("test -f /etc/imap-oauth-proxy/config.toml && test -f /var/lib/imap-oauth-proxy/helpdesk.token")
	// Purge: the config goes; the records stay.
	c.must("apt-get purge -y -q imap-oauth-proxy")
	c.mustFail("test -e /etc/imap-oauth-proxy/config.toml")
	c.must("test -f /var/lib/imap-oauth-proxy/helpdesk.token")
	l.journalHasNoSecret(t)
}

// checkInstalled checks the user, the owners and modes of the config and
// state directories, and the man pages.
func checkInstalled(t *testing.T, c *container, bin, mandir string) {
	t.Helper()
	c.must("getent passwd imap-oauth-proxy && getent group imap-oauth-proxy")
	c.must("test -x " + bin)
	want := map[string]string{
		"/etc/imap-oauth-proxy":             "root:imap-oauth-proxy 750",
		"/etc/imap-oauth-proxy/config.toml": "root:imap-oauth-proxy 640",
		"/var/lib/imap-oauth-proxy":         "imap-oauth-proxy:imap-oauth-proxy 700",
	}
	for path, w := range want {
		if got := c.must("stat -c '%U:%G %a' " + path); got != w {
			t.Errorf("%s: %s, want %s", path, got, w)
		}
	}
	c.must(fmt.Sprintf("ls %[1]s/man1/imap-oauth-proxy.1* %[1]s/man5/imap-oauth-proxy.toml.5*", mandir))
}

// startLab starts the demo's upstream and token endpoint as a transient
// unit beside the service (Type=notify: systemd-run returns once it has
// written provider.toml and the refresh tokens), and adapts provider.toml
// as docs/operations.md says: the CA and the client secret in files of
// /etc/imap-oauth-proxy.
func startLab(t *testing.T, c *container) *lab {
	t.Helper()
	c.must("systemd-run --unit=demo-upstream -p Type=notify -p NotifyAccess=main /opt/lab/imap-oauth-proxy-demo" +
		" -upstream-only -dir /run/demo -mailbox helpdesk@example.test -mailbox sales@example.test")
	provider := c.must("cat /run/demo/provider.toml") + "\n"
	for _, edit := range []struct{ re, repl string }{
		{`(?m)^ca_file = .*$`, `ca_file = "/etc/imap-oauth-proxy/demo-ca.pem"`},
		{`(?m)^client_secret = "` + clientSecret + `"$`, `client_secret_file = "/etc/imap-oauth-proxy/demo.secret"`},
	} {
		re := regexp.MustCompile(edit.re)
		if !re.MatchString(provider) {
			t.Fatalf("provider.toml has no line matching %s:\n%s", edit.re, provider)
		}
		provider = re.ReplaceAllString(provider, edit.repl)
	}
	return &lab{container: c, provider: provider}
}

const labServer = `# The lab's mapping file: the demo upstream as a generic provider.
[server]
listen = "127.0.0.1:1143"
metrics_listen = "127.0.0.1:9143"
state_dir = "/var/lib/imap-oauth-proxy"
log_level = "debug"
%s
`

const labAccounts = `
[accounts.helpdesk]
provider = "demo"
mailbox = "helpdesk@example.test"
grant = "refresh_token"
`

const salesAccount = `
[accounts.sales]
provider = "demo"
mailbox = "sales@example.test"
grant = "refresh_token"
`

// configure does what docs/operations.md tells the operator: secret files
// root:imap-oauth-proxy 0640, and the config edited in place.
func (l *lab) configure(t *testing.T, serverExtra string) {
	t.Helper()
	l.mustInput("install -m 0640 -o root -g imap-oauth-proxy /dev/null /etc/imap-oauth-proxy/demo.secret && "+
		"cat > /etc/imap-oauth-proxy/demo.secret", clientSecret+"\n")
	l.must("install -m 0640 -o root -g imap-oauth-proxy /run/demo/upstream-ca.pem /etc/imap-oauth-proxy/demo-ca.pem")
	l.configText = fmt.Sprintf(labServer, serverExtra) + l.provider + labAccounts
	l.writeConfig(t, l.configText)
}

// writeConfig replaces config.toml's content, keeping its owner and mode
// as an editor does.
func (l *lab) writeConfig(t *testing.T, text string) {
	t.Helper()
	l.must("cat > /etc/imap-oauth-proxy/config.toml <<'EOF'\n" + text + "EOF")
}

// importToken runs `token import` as root with the demo's refresh token
// for login's mailbox, and checks that the record belongs to the service.
func (l *lab) importToken(t *testing.T, login, password string) {
	t.Helper()
	// stdin: the local password (from the test), then the refresh token.
	l.mustInput(fmt.Sprintf("{ cat; cat /run/demo/%s@example.test.refresh-token; } | imap-oauth-proxy token import %s", login, login),
		password+"\n")
	record := "/var/lib/imap-oauth-proxy/" + login + ".token"
	if got := l.must("stat -c '%U:%G %a' " + record); got != "imap-oauth-proxy:imap-oauth-proxy 600" {
		t.Errorf("%s written by root's token import: %s, want imap-oauth-proxy:imap-oauth-proxy 600", record, got)
	}
}

// props returns systemctl show's properties of unit.
func (l *lab) props(t *testing.T, unit string, names ...string) map[string]string {
	t.Helper()
	out := l.must("systemctl show -p " + strings.Join(names, ",") + " " + unit)
	m := make(map[string]string)
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(line, "=")
		m[k] = v
	}
	return m
}

// wantProps fails the test when unit's properties differ from want.
func (l *lab) wantProps(t *testing.T, unit string, want map[string]string) {
	t.Helper()
	var names []string
	for k := range want {
		names = append(names, k)
	}
	got := l.props(t, unit, names...)
	for k, w := range want {
		if got[k] != w {
			t.Fatalf("%s: %s=%s, want %s (all: %v)\njournal:\n%s", unit, k, got[k], w, got,
				l.must("journalctl -u "+unit+" -n 10 -o cat --no-pager"))
		}
	}
}

// startService enables and starts the service as installed; systemctl
// returns once the daemon has sent READY=1.
func (l *lab) startService(t *testing.T) {
	t.Helper()
	l.must("systemctl enable --now imap-oauth-proxy")
	l.wantProps(t, "imap-oauth-proxy", map[string]string{"Type": "notify", "ActiveState": "active", "SubState": "running"})
	pid := l.must("systemctl show -p MainPID --value imap-oauth-proxy")
	if user := l.must("ps -o user= -p " + pid); user != "imap-oauth-proxy" {
		t.Errorf("the daemon runs as %q, want imap-oauth-proxy", user)
	}
}

// fetchWelcome logs in with curl, a real client, and reads the first
// message.
func (l *lab) fetchWelcome(t *testing.T, login, password string, port int) {
	t.Helper()
	out := l.mustInput(fmt.Sprintf("curl -sS --max-time 30 -K - --url 'imap://127.0.0.1:%d/INBOX;UID=1'", port), curlUser(login, password))
	if !strings.Contains(out, "Subject: Welcome to the imap-oauth-proxy demo") {
		t.Fatalf("curl as %s through port %d did not read the welcome message:\n%s", login, port, out)
	}
}

// curlUser is a curl config (read with -K -) that holds the login, so
// that the password is in no command line.
func curlUser(login, password string) string {
	return fmt.Sprintf("user = \"%s:%s\"\n", login, password)
}

// loginAndRotation logs in (the daemon refreshes and the token endpoint
// rotates the refresh token), checks that the record was rewritten and is
// still the service's, then restarts the daemon, whose next login can
// only refresh with the rotated token: the demo endpoint, like
// Microsoft's, invalidates the one it replaced.
func (l *lab) loginAndRotation(t *testing.T) {
	t.Helper()
	record := "/var/lib/imap-oauth-proxy/helpdesk.token"
	before := l.must("sha256sum " + record)
	l.fetchWelcome(t, "helpdesk", helpdeskPassword, 1143)
	if after := l.must("sha256sum " + record); after == before {
		t.Errorf("the record is unchanged after a login that rotated the refresh token")
	}
	if got := l.must("stat -c '%U:%G %a' " + record); got != "imap-oauth-proxy:imap-oauth-proxy 600" {
		t.Errorf("the record rewritten by the daemon: %s", got)
	}
	l.must("systemctl restart imap-oauth-proxy")
	l.fetchWelcome(t, "helpdesk", helpdeskPassword, 1143)
	out, err := l.runInput("curl -sS --max-time 30 -K - --url 'imap://127.0.0.1:1143/INBOX;UID=1'", curlUser("helpdesk", helpdeskPassword+"-wrong"))
	if err == nil || !strings.Contains(out, "Login denied") {
		t.Errorf("curl with a wrong local password: %v\n%s", err, out)
	}
}

// otherUserReadsNothing checks that another local user can read neither
// the config and the secrets beside it nor the records.
func (l *lab) otherUserReadsNothing(t *testing.T) {
	t.Helper()
	for _, cmd := range []string{
		"ls /etc/imap-oauth-proxy",
		"cat /etc/imap-oauth-proxy/config.toml",
		"cat /etc/imap-oauth-proxy/demo.secret",
		"ls /var/lib/imap-oauth-proxy",
		"cat /var/lib/imap-oauth-proxy/helpdesk.token",
	} {
		out := l.mustFail("setpriv --reuid=nobody --regid=nogroup --clear-groups " + cmd)
		if !strings.Contains(out, "Permission denied") {
			t.Errorf("as nobody, %s: %s", cmd, out)
		}
	}
}

// peerUIDKnown checks that the sandboxed daemon finds the uid of a
// loopback client (sock_diag, or /proc as the fallback): a login by nobody
// is logged with uid=65534, and never with "peer uid unknown".
func (l *lab) peerUIDKnown(t *testing.T) {
	t.Helper()
	before := l.journalCount(t, "uid=65534")
	l.mustInput("setpriv --reuid=nobody --regid=nogroup --clear-groups curl -sS --max-time 30 -K - --url 'imap://127.0.0.1:1143/INBOX;UID=1'",
		curlUser("helpdesk", helpdeskPassword))
	l.waitJournal(t, "uid=65534", before)
	if n := l.journalCount(t, "peer uid unknown"); n > 0 {
		t.Errorf("the daemon logged %d time(s) that it could not find a peer's uid:\n%s", n,
			l.must("journalctl -u imap-oauth-proxy -o cat --no-pager | grep -F 'peer uid unknown' | head -n 3"))
	}
}

// metricsUnderTheSandbox scrapes /metrics from the sandboxed daemon: the
// proxy's counters, and the process collector, which reads /proc/self
// under ProcSubset=pid.
func (l *lab) metricsUnderTheSandbox(t *testing.T) {
	t.Helper()
	out := l.must("curl -sS --max-time 10 http://127.0.0.1:9143/metrics")
	for _, re := range []string{
		`(?m)^imap_oauth_proxy_logins_total\{outcome="OK",protocol="imap"\} [1-9]`,
		`(?m)^process_open_fds [1-9]`,
		`(?m)^process_resident_memory_bytes [1-9]`,
		`(?m)^go_goroutines [1-9]`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("/metrics has no line matching %s", re)
		}
	}
}

// securityExposure reports systemd-analyze security's score for the unit
// and fails above 2.0 ("OK" ends at 3.9; DynamicUser's unit scored 1.2).
func (l *lab) securityExposure(t *testing.T) {
	t.Helper()
	out := l.must("systemd-analyze security --no-pager imap-oauth-proxy.service | tail -n 1")
	m := regexp.MustCompile(`exposure level for imap-oauth-proxy.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: %s", out)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security: %s", out)
	if score > 2.0 {
		t.Errorf("exposure %.1f, want at most 2.0", score)
	}
}

// waitJournal waits until the service's journal holds more lines
// matching pattern than before, which it returns for the next wait.
func (l *lab) waitJournal(t *testing.T, pattern string, before int) int {
	t.Helper()
	script := fmt.Sprintf("journalctl -u imap-oauth-proxy -o cat --no-pager | grep -c -F %q || true", pattern)
	deadline := time.Now().Add(commandTimeout)
	for {
		n, _ := strconv.Atoi(l.must(script))
		if n > before {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new %q in the journal within %s", pattern, commandTimeout)
		}
		// systemctl reload returns once kill -HUP has run, before the
		// daemon has reloaded, and systemd 252 has no Type=notify-reload:
		// the journal line is the only sign, so poll it.
		time.Sleep(50 * time.Millisecond)
	}
}

func (l *lab) journalCount(t *testing.T, pattern string) int {
	t.Helper()
	n, _ := strconv.Atoi(l.must(fmt.Sprintf("journalctl -u imap-oauth-proxy -o cat --no-pager | grep -c -F %q || true", pattern)))
	return n
}

// reload checks that a reload keeps a logged-in session, picks up a new
// account, and refuses a broken file while keeping the old one.
func (l *lab) reload(t *testing.T) {
	t.Helper()
	s := l.dial("127.0.0.1", 1143)
	if greeting := s.readLine(); !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting %q", greeting)
	}
	if r := s.command("a1", "LOGIN helpdesk "+helpdeskPassword); !strings.HasPrefix(r[len(r)-1], "a1 OK") {
		t.Fatalf("LOGIN: %q", r)
	}
	if r := s.command("a2", "SELECT INBOX"); !strings.HasPrefix(r[len(r)-1], "a2 OK") {
		t.Fatalf("SELECT: %q", r)
	}

	// A new account and its record, then reload.
	l.writeConfig(t, l.configText+salesAccount)
	l.importToken(t, "sales", salesPassword)
	reloaded := l.journalCount(t, "msg=reloaded")
	l.must("systemctl reload imap-oauth-proxy")
	l.waitJournal(t, "msg=reloaded", reloaded)
	l.fetchWelcome(t, "sales", salesPassword, 1143)

	// A broken file is refused; the accounts of the old one still log in.
	failed := l.journalCount(t, "reload failed")
	l.writeConfig(t, l.configText+salesAccount+"\n[accounts.broken]\nprovider = \"nosuch\"\n")
	l.must("systemctl reload imap-oauth-proxy")
	l.waitJournal(t, "reload failed", failed)
	if got := l.must("systemctl is-active imap-oauth-proxy"); got != "active" {
		t.Fatalf("after a broken reload the service is %s", got)
	}
	l.fetchWelcome(t, "sales", salesPassword, 1143)
	l.writeConfig(t, l.configText+salesAccount)

	// The session from before both reloads goes on.
	r := s.command("a3", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
	if !strings.HasPrefix(r[len(r)-1], "a3 OK") || !strings.Contains(strings.Join(r, "\n"), "Welcome") {
		t.Fatalf("FETCH on the session opened before the reloads: %q", r)
	}
	s.command("a4", "LOGOUT")
}

// badConfigDoesNotLoop starts the service on a broken file: it must end
// failed with status 78 and no restart pending, then start once fixed.
func (l *lab) badConfigDoesNotLoop(t *testing.T) {
	t.Helper()
	good := l.must("cat /etc/imap-oauth-proxy/config.toml") + "\n"
	l.writeConfig(t, good+"[server.bogus]\n")
	l.mustFail("systemctl restart imap-oauth-proxy")
	// failed, not activating (auto-restart): no restart is pending.
	l.wantProps(t, "imap-oauth-proxy", map[string]string{
		"ActiveState": "failed", "SubState": "failed", "ExecMainStatus": "78", "NRestarts": "0",
	})
	l.writeConfig(t, good)
	// Clears the start counter too: the suite starts the unit more often
	// than StartLimitBurst= allows in StartLimitIntervalSec=.
	l.must("systemctl reset-failed imap-oauth-proxy && systemctl start imap-oauth-proxy")
	l.fetchWelcome(t, "helpdesk", helpdeskPassword, 1143)
}

// socketActivation enables both socket units from the running state with
// the commands of docs/operations.md, then lets a connection start the
// stopped service.
func (l *lab) socketActivation(t *testing.T) {
	t.Helper()
	l.must("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost " +
		"-addext subjectAltName=IP:127.0.0.1 -keyout /etc/imap-oauth-proxy/key.pem -out /etc/imap-oauth-proxy/cert.pem 2>&1")
	l.must("chown root:imap-oauth-proxy /etc/imap-oauth-proxy/key.pem /etc/imap-oauth-proxy/cert.pem && " +
		"chmod 0640 /etc/imap-oauth-proxy/key.pem /etc/imap-oauth-proxy/cert.pem")
	l.mustFail("setpriv --reuid=nobody --regid=nogroup --clear-groups cat /etc/imap-oauth-proxy/key.pem")
	l.configText = strings.Replace(l.configText, "log_level = \"debug\"\n",
		"log_level = \"debug\"\ntls_cert = \"/etc/imap-oauth-proxy/cert.pem\"\ntls_key = \"/etc/imap-oauth-proxy/key.pem\"\n", 1)
	l.writeConfig(t, l.configText+salesAccount)
	l.must("systemctl reset-failed imap-oauth-proxy; systemctl restart imap-oauth-proxy")

	l.must("systemctl stop imap-oauth-proxy")
	l.must("systemctl enable --now imap-oauth-proxy.socket")
	l.must("systemctl enable --now imap-oauth-proxy-tls.socket")
	l.must("systemctl enable --now imap-oauth-proxy-pop3.socket")
	l.must("systemctl enable --now imap-oauth-proxy-smtp.socket")
	l.must("systemctl reset-failed imap-oauth-proxy; systemctl start imap-oauth-proxy")
	// The daemon has no capability to bind ports below 1024, and its
	// config names neither: logins on 143 and 993 prove it got both sockets.
	l.fetchWelcome(t, "helpdesk", helpdeskPassword, 143)
	out := l.mustInput("curl -sS --max-time 30 -K - --cacert /etc/imap-oauth-proxy/cert.pem --url 'imaps://127.0.0.1:993/INBOX;UID=1'",
		curlUser("sales", salesPassword))
	if !strings.Contains(out, "Welcome") {
		t.Fatalf("imaps on 993:\n%s", out)
	}
	// POP3 on port 110: the daemon answers on the socket; the account
	// lists only imap, so a right password gets -ERR too, but no wrong
	// one gets further than [AUTH].
	p := l.dial("127.0.0.1", 110)
	if greeting := p.readLine(); !strings.HasPrefix(greeting, "+OK") {
		t.Fatalf("POP3 greeting on port 110: %q", greeting)
	}
	p.write("USER helpdesk\r\n")
	if r := p.readLine(); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("POP3 USER: %q", r)
	}
	p.write("PASS not-the-password\r\n")
	if r := p.readLine(); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Fatalf("POP3 PASS with a wrong password: %q", r)
	}
	p.close()
	// SMTP submission on port 587: the greeting, and STARTTLS offered
	// since the config has a certificate.
	m := l.dial("127.0.0.1", 587)
	if greeting := m.readLine(); !strings.HasPrefix(greeting, "220") {
		t.Fatalf("SMTP greeting on port 587: %q", greeting)
	}
	m.write("EHLO scanner.example\r\n")
	var ehlo []string
	for line := m.readLine(); ; line = m.readLine() {
		ehlo = append(ehlo, line)
		if !strings.HasPrefix(line, "250-") {
			break
		}
	}
	if !strings.Contains(strings.Join(ehlo, "\n"), "STARTTLS") {
		t.Fatalf("EHLO on port 587: %q", ehlo)
	}
	m.close()

	// With the sockets listening, a stopped service starts on the next
	// connection.
	l.must("systemctl stop imap-oauth-proxy")
	if got, _ := l.run("systemctl is-active imap-oauth-proxy"); got != "inactive" {
		t.Fatalf("after stop the service is %s", got)
	}
	l.must("systemctl reset-failed imap-oauth-proxy")
	l.fetchWelcome(t, "helpdesk", helpdeskPassword, 143)
	if got := l.must("systemctl is-active imap-oauth-proxy"); got != "active" {
		t.Fatalf("a connection to port 143 did not start the service: %s", got)
	}
}

// stopIsClean stops the service: status 0 and the drain logged.
func (l *lab) stopIsClean(t *testing.T) {
	t.Helper()
	stopped := l.journalCount(t, "msg=stopped")
	l.must("systemctl stop imap-oauth-proxy.service imap-oauth-proxy.socket imap-oauth-proxy-tls.socket " +
		"imap-oauth-proxy-pop3.socket imap-oauth-proxy-smtp.socket")
	l.wantProps(t, "imap-oauth-proxy", map[string]string{"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"})
	l.waitJournal(t, "msg=stopped", stopped)
}

// statusAfterStop runs `status` as root, as the docs say: it reads what
// the daemon saved at exit (the state directory is the service's), and
// both accounts, which logged in, are ok.
func (l *lab) statusAfterStop(t *testing.T) {
	t.Helper()
	out := l.must("imap-oauth-proxy status -json")
	for _, login := range []string{"helpdesk", "sales"} {
		re := regexp.MustCompile(`"login":\s*"` + login + `"[^}]*"verdict":\s*"ok"`)
		if !re.MatchString(out) {
			t.Errorf("status does not say %s is ok:\n%s", login, out)
		}
	}
}

// journalHasNoSecret searches the whole journal, at log level debug, for
// the local passwords, the refresh tokens the lab imported and the client
// secret; it also checks that the journal holds the debug trace at all.
func (l *lab) journalHasNoSecret(t *testing.T) {
	t.Helper()
	journal := l.must("journalctl -o cat --no-pager")
	if !strings.Contains(journal, "[redacted]") {
		t.Fatalf("the journal holds no redacted trace line: is the lab at log level debug?")
	}
	secrets := map[string]string{
		"helpdesk's local password": helpdeskPassword,
		"sales' local password":     salesPassword,
		"the client secret":         clientSecret,
	}
	for _, login := range []string{"helpdesk", "sales"} {
		secrets[login+"'s first refresh token"] = l.must("cat /run/demo/" + login + "@example.test.refresh-token")
	}
	for what, secret := range secrets {
		if strings.Contains(journal, secret) {
			t.Errorf("the journal contains %s", what)
		}
	}
}
