package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// passwdRecord writes login's record under password with cheap KDF
// parameters into stateDir, registers the secrets with c, and returns the
// record.
func passwdRecord(t *testing.T, c *cli, stateDir, login, password, refreshToken string) *tokenstore.Unlocked {
	t.Helper()
	store, err := tokenstore.New(stateDir, &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	c.secret(password)
	if refreshToken != "" {
		c.secret(refreshToken)
	}
	u, err := store.Create(login, password, tokenstore.Secret{RefreshToken: refreshToken})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// wantWrongPassword fails the test unless password no longer opens
// login's record.
func wantWrongPassword(t *testing.T, stateDir, login, password string) {
	t.Helper()
	store, err := tokenstore.New(stateDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Open(login, password); !errors.Is(err, tokenstore.ErrWrongPassword) {
		t.Errorf("the old password: Open returned %v, want ErrWrongPassword", err)
	}
}

func TestPasswd(t *testing.T) {
	for _, tc := range []struct {
		name, login, refresh string
	}{
		{"refresh_token", "collector", "passwd-refresh-canary-8a41"},
		{"app-only record", "app", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			path, stateDir := importConfig(t)
			const oldPassword, newPassword = "passwd-old-canary-1f0e", "passwd-new-canary-c7d3"
			before := passwdRecord(t, c, stateDir, tc.login, oldPassword, tc.refresh)
			c.secret(newPassword)

			r := c.run(oldPassword+"\n"+newPassword+"\n", "passwd", "-config", path, tc.login)
			if r.code != 0 {
				t.Fatalf("passwd: exit %d, stderr:\n%s", r.code, r.stderr)
			}
			record := filepath.Join(stateDir, tc.login+".token")
			for _, want := range []string{"Changed the local password of " + tc.login, record, "generation 2", "next login"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
				}
			}

			wantWrongPassword(t, stateDir, tc.login, oldPassword)
			after := openRecord(t, stateDir, tc.login, newPassword)
			if after.Secret.RefreshToken != tc.refresh {
				t.Errorf("refresh token %q after passwd, want it unchanged (%q)", after.Secret.RefreshToken, tc.refresh)
			}
			if after.Info.ID != before.Info.ID {
				t.Errorf("record ID %s after passwd, want it unchanged (%s)", after.Info.ID, before.Info.ID)
			}
			if after.Info.Generation != before.Info.Generation+1 {
				t.Errorf("generation %d after passwd, want %d", after.Info.Generation, before.Info.Generation+1)
			}
			fi, err := os.Stat(record)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("record mode %v, want 0600", fi.Mode().Perm())
			}
			data, err := os.ReadFile(record)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{oldPassword, newPassword, tc.refresh} {
				if s != "" && bytes.Contains(data, []byte(s)) {
					t.Errorf("the record holds %q in the clear", s)
				}
			}
			entries, err := os.ReadDir(stateDir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 {
				t.Errorf("state directory holds %d files after passwd, want only the record", len(entries))
			}

			// Flags may follow LOGIN, and a password may be changed again
			// (here back to the old one).
			r = c.run(newPassword+"\n"+oldPassword+"\n", "passwd", tc.login, "-config", path)
			if r.code != 0 {
				t.Fatalf("second passwd: exit %d, stderr:\n%s", r.code, r.stderr)
			}
			if got := openRecord(t, stateDir, tc.login, oldPassword); got.Info.Generation != before.Info.Generation+2 {
				t.Errorf("generation %d after the second passwd, want %d", got.Info.Generation, before.Info.Generation+2)
			}
		})
	}
}

// TestPasswdRefuses checks every way passwd can fail: the record is left
// byte for byte as it was, stdout stays empty, and stderr says why.
func TestPasswdRefuses(t *testing.T) {
	const (
		password    = "refuse-pw-canary-02b9"
		newPassword = "refuse-new-canary-e61c"
		refresh     = "refuse-refresh-canary-9d57"
	)
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string // after "passwd -config PATH"
		code  int
		want  []string // in stderr
	}{
		{"wrong current password", "wrong-" + password + "\n" + newPassword + "\n", []string{"collector"}, 1,
			[]string{"current local password of collector is wrong", "nothing was changed"}},
		{"empty new password", password + "\n\n", []string{"collector"}, 1, []string{"local password is empty"}},
		{"blank new password", password + "\n \t\n", []string{"collector"}, 1, []string{"local password is empty"}},
		{"no new password line", password + "\n", []string{"collector"}, 1, []string{"reading the local password"}},
		{"empty current password", "\n" + newPassword + "\n", []string{"collector"}, 1, []string{"current local password is empty"}},
		{"empty stdin", "", []string{"collector"}, 1, []string{"reading the current local password"}},
		{"no record", password + "\n" + newPassword + "\n", []string{"app"}, 1,
			[]string{"app has no stored authorization", "imap-oauth-proxy authorize app"}},
		{"unknown login", password + "\n" + newPassword + "\n", []string{"nobody"}, 1, []string{"no [accounts.nobody]"}},
		{"no login", password + "\n" + newPassword + "\n", nil, 2, []string{"passwd takes exactly one LOGIN", "usage: imap-oauth-proxy"}},
		{"two logins", password + "\n" + newPassword + "\n", []string{"collector", "app"}, 2, []string{"passwd takes exactly one LOGIN"}},
		{"unknown flag", password + "\n" + newPassword + "\n", []string{"-force", "collector"}, 2, []string{"-force"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCLI(t)
			c.secret(newPassword, "wrong-"+password)
			path, stateDir := importConfig(t)
			passwdRecord(t, c, stateDir, "collector", password, refresh)
			record := filepath.Join(stateDir, "collector.token")
			before, err := os.ReadFile(record)
			if err != nil {
				t.Fatal(err)
			}

			args := append([]string{"passwd", "-config", path}, tc.args...)
			r := c.run(tc.stdin, args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", r.code, tc.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			if after, err := os.ReadFile(record); err != nil {
				t.Fatal(err)
			} else if !bytes.Equal(before, after) {
				t.Error("a refused passwd changed the record")
			}
			entries, err := os.ReadDir(stateDir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 1 {
				t.Errorf("state directory holds %d files, want only the record", len(entries))
			}
		})
	}
}

// TestPasswdWhileServing changes the password of an account that a
// running serve has already unlocked: the next login with the old password
// fails, and the new one works, without a reload.
func TestPasswdWhileServing(t *testing.T) {
	c := newCLI(t)
	l := newLab(t, c, "collector")
	const oldPassword, newPassword = "serving-old-canary-4d2a", "serving-new-canary-b80f"
	c.secret(newPassword)
	l.authorize(t, c, "collector", oldPassword)
	path := l.config(t, "", "collector")

	b := c.start("", "serve", "-config", path)
	addr := b.wait(b.stderr, servingRE)[1]
	loginSelect(t, addr, "collector", oldPassword)

	if r := c.run(oldPassword+"\n"+newPassword+"\n", "passwd", "-config", path, "collector"); r.code != 0 {
		t.Fatalf("passwd: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	wantNO(t, "LOGIN with the old password after passwd", dialIMAP(t, addr).Login("collector", oldPassword).Wait(),
		imap.ResponseCodeAuthenticationFailed)
	loginSelect(t, addr, "collector", newPassword)
	// The endpoint rotates refresh tokens; the rotation is saved under the
	// new password.
	c.secret(l.tokens.CurrentRefreshToken(mailboxOf("collector")))
	if got := openRecord(t, l.stateDir(), "collector", newPassword).Secret.RefreshToken; got != l.tokens.CurrentRefreshToken(mailboxOf("collector")) {
		t.Error("the record does not hold the current refresh token after a login with the new password")
	}
	if code := b.stop(); code != 0 {
		t.Errorf("serve exit %d, want 0", code)
	}
}

// TestPasswdWhileServeRotates: a running serve saves a rotated refresh
// token after passwd has opened the record and before it writes. passwd
// reopens the newer record and changes its password; the rotated token is
// kept.
func TestPasswdWhileServeRotates(t *testing.T) {
	c := newCLI(t)
	path, stateDir := importConfig(t)
	const oldPassword, newPassword = "passwd-old-canary-59b2", "passwd-new-canary-0ad4"
	const rotated = "passwd-rotated-canary-6c1e"
	passwdRecord(t, c, stateDir, "collector", oldPassword, "passwd-refresh-canary-3d77")
	c.secret(newPassword)
	c.secret(rotated)

	rotations := 0
	rotate := func() { // the daemon's save, in its own Store
		rotations++
		daemon, err := tokenstore.New(stateDir, &tokenstore.Options{KDF: testKDF})
		if err != nil {
			t.Error(err)
			return
		}
		u, err := daemon.Open("collector", oldPassword)
		if err != nil {
			t.Error(err)
			return
		}
		if err := daemon.Update(u, tokenstore.Secret{RefreshToken: rotated}); err != nil {
			t.Error(err)
		}
	}
	// passwd reads the new password only after opening the record with
	// the current one: the rotation lands between its read and its write.
	stdin := &stagedReader{lines: []string{oldPassword + "\n", newPassword + "\n"}, before: map[int]func(){1: rotate}}
	args := []string{"passwd", "-config", path, "collector"}
	stdout, stderr := c.capture(args)
	if code := run(t.Context(), args, stdin, stdout, stderr); code != 0 {
		t.Fatalf("passwd: exit %d, stderr:\n%s", code, stderr.String())
	}
	if rotations != 1 {
		t.Fatalf("passwd read %d lines after the first; want 1", rotations)
	}
	wantWrongPassword(t, stateDir, "collector", oldPassword)
	if got := openRecord(t, stateDir, "collector", newPassword); got.Secret.RefreshToken != rotated {
		t.Error("passwd lost the token the daemon rotated meanwhile")
	}
}

// stagedReader returns one line per Read, running before[i] before it
// returns line i.
type stagedReader struct {
	lines  []string
	before map[int]func()
	next   int
}

func (r *stagedReader) Read(p []byte) (int, error) {
	if r.next == len(r.lines) {
		return 0, io.EOF
	}
	if f := r.before[r.next]; f != nil {
		f()
	}
	n := copy(p, r.lines[r.next])
	r.next++
	return n, nil
}
