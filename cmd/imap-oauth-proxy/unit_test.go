package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on the shipped unit,
// with its placeholders filled as make install fills them.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze missing in CI (.ci/run installs systemd)")
		}
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	unit, err := os.ReadFile("../../dist/imap-oauth-proxy.service")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("@BINDIR@", filepath.Dir(bin), "@DOCDIR@", t.TempDir()).Replace(string(unit))
	if strings.Contains(text, "@") && strings.Contains(text, "@BINDIR@") {
		t.Fatal("placeholder left in the unit")
	}
	path := filepath.Join(t.TempDir(), "imap-oauth-proxy.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
