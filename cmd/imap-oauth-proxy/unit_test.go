package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// placeholderRE matches a placeholder make install fills (@BINDIR@), not
// a system call set (@system-service).
var placeholderRE = regexp.MustCompile(`@[A-Z_]+@`)

// distUnits returns the unit files make install installs, by file name,
// with their placeholders filled as make install fills them.
func distUnits(t *testing.T) map[string]string {
	t.Helper()
	var paths []string
	for _, pattern := range []string{"../../dist/*.service", "../../dist/*.socket"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, m...)
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("@BINDIR@", filepath.Dir(bin), "@DOCDIR@", t.TempDir())
	units := make(map[string]string, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		text := fill.Replace(string(data))
		if ph := placeholderRE.FindString(text); ph != "" {
			t.Fatalf("%s: placeholder %s is not filled by make install", p, ph)
		}
		units[filepath.Base(p)] = text
	}
	for _, want := range []string{"imap-oauth-proxy.service", "imap-oauth-proxy.socket", "imap-oauth-proxy-tls.socket"} {
		if _, ok := units[want]; !ok {
			t.Fatalf("dist/%s missing", want)
		}
	}
	return units
}

// verifyUnits writes units into one new directory and runs
// systemd-analyze verify on all of them; any output fails the test.
func verifyUnits(t *testing.T, analyze string, units map[string]string) {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for name, text := range units {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	// The man pages the units name are installed with them; the suite in
	// dist/ checks them on an installed system.
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify on the shipped units,
// with their placeholders filled as make install fills them: the service
// alone (the socket units are optional), and the service with the socket
// units (which name it in Service=).
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze missing in CI (.ci/run installs systemd)")
		}
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	units := distUnits(t)
	t.Run("service alone", func(t *testing.T) {
		verifyUnits(t, analyze, map[string]string{"imap-oauth-proxy.service": units["imap-oauth-proxy.service"]})
	})
	t.Run("all units", func(t *testing.T) {
		verifyUnits(t, analyze, units)
	})
}

// TestSocketUnitsMatchServe checks each shipped socket unit against what
// serve takes: one ListenStream=, a FileDescriptorName= serve knows, no
// name used twice, and the service as Service=.
func TestSocketUnitsMatchServe(t *testing.T) {
	names := make(map[string]string) // FileDescriptorName → unit
	for unit, text := range distUnits(t) {
		if !strings.HasSuffix(unit, ".socket") {
			continue
		}
		settings := make(map[string][]string)
		sc := bufio.NewScanner(strings.NewReader(text))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				settings[k] = append(settings[k], v)
			}
		}
		if got := settings["ListenStream"]; len(got) != 1 {
			t.Errorf("%s: ListenStream= %q, want exactly one", unit, got)
		}
		if got := settings["Service"]; len(got) != 1 || got[0] != "imap-oauth-proxy.service" {
			t.Errorf("%s: Service= %q, want imap-oauth-proxy.service", unit, got)
		}
		if len(settings["Accept"]) > 0 {
			t.Errorf("%s: Accept= set; serve needs listening sockets (Accept=no, the default)", unit)
		}
		got := settings["FileDescriptorName"]
		if len(got) != 1 {
			t.Errorf("%s: FileDescriptorName= %q, want exactly one", unit, got)
			continue
		}
		if _, ok := socketKey(got[0]); !ok {
			t.Errorf("%s: FileDescriptorName=%s is not a name serve takes", unit, got[0])
		}
		if other, dup := names[got[0]]; dup {
			t.Errorf("%s and %s both have FileDescriptorName=%s", unit, other, got[0])
		}
		names[got[0]] = unit
	}
	for unit, want := range map[string]string{"imap-oauth-proxy.socket": socketIMAP, "imap-oauth-proxy-tls.socket": socketIMAPS,
		"imap-oauth-proxy-pop3.socket": socketPOP3, "imap-oauth-proxy-pop3s.socket": socketPOP3S,
		"imap-oauth-proxy-smtp.socket": socketSMTP, "imap-oauth-proxy-smtps.socket": socketSMTPS} {
		if names[want] != unit {
			t.Errorf("FileDescriptorName=%s is in %q, want %s", want, names[want], unit)
		}
	}
}
