package tokenstore

import (
	"encoding/json"
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// The version 1 fixture: made by the store before records had a data key.
const (
	v1Login    = "legacy@contoso.test"
	v1Password = "v1-fixture-password"
	v1Token    = "v1-fixture-refresh-token"
)

// v1Store returns a store holding testdata/record-v1.token.
func v1Store(t *testing.T) *Store {
	t.Helper()
	s := newTestStore(t, "")
	if err := os.WriteFile(s.Path(v1Login), readFile(t, "testdata/record-v1.token"), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func recordVersionOf(t *testing.T, s *Store, login string) float64 {
	t.Helper()
	var r map[string]any
	if err := json.Unmarshal(readFile(t, s.Path(login)), &r); err != nil {
		t.Fatal(err)
	}
	v, _ := r["version"].(float64)
	return v
}

// TestStoreVersion1Record: a record written before data keys existed still
// opens, and its next write (Update or SetPassword) makes it version 2.
func TestStoreVersion1Record(t *testing.T) {
	s := v1Store(t)
	if _, err := s.Open(v1Login, "wrong"); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("Open with a wrong password: %v", err)
	}
	u, err := s.Open(v1Login, v1Password)
	if err != nil {
		t.Fatal(err)
	}
	if u.Secret.RefreshToken != v1Token || u.Info.Generation != 1 || u.Info.SecretGeneration != 1 {
		t.Fatalf("version 1 record opened as %v", u)
	}
	if err := s.Update(u, Secret{RefreshToken: "rotated"}); err != nil {
		t.Fatalf("Update of a version 1 record: %v", err)
	}
	if v := recordVersionOf(t, s, v1Login); v != recordVersion {
		t.Errorf("after Update the record is version %v", v)
	}
	got, err := newTestStore(t, s.Dir()).Open(v1Login, v1Password)
	if err != nil || got.Secret.RefreshToken != "rotated" || got.Info.Generation != 2 || got.Info.SecretGeneration != 2 || got.Info.ID != u.Info.ID {
		t.Fatalf("reopened after the upgrade: %v, %v", got, err)
	}

	s = v1Store(t)
	u, err = s.Open(v1Login, v1Password)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetPassword(u, "new password"); err != nil {
		t.Fatalf("SetPassword of a version 1 record: %v", err)
	}
	if v := recordVersionOf(t, s, v1Login); v != recordVersion {
		t.Errorf("after SetPassword the record is version %v", v)
	}
	fresh := newTestStore(t, s.Dir())
	if _, err := fresh.Open(v1Login, v1Password); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("old password after SetPassword: %v", err)
	}
	if got, err := fresh.Open(v1Login, "new password"); err != nil || got.Secret.RefreshToken != v1Token {
		t.Errorf("new password after SetPassword: %v, %v", got, err)
	}

	// A process still holding the version 1 view cannot write over the
	// upgraded record.
	s = v1Store(t)
	stale, err := s.Open(v1Login, v1Password)
	if err != nil {
		t.Fatal(err)
	}
	other := newTestStore(t, s.Dir())
	o, err := other.Open(v1Login, v1Password)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Update(o, Secret{RefreshToken: "theirs"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(stale, Secret{RefreshToken: "mine"}); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("Update from a stale version 1 view: %v; want ErrRecordChanged", err)
	}
}

// TestStoreRotationSurvivesPasswordChange: the daemon holds an open record;
// passwd, in another process, changes the password; then the daemon saves
// a rotated token. The save succeeds, and the record opens with the new
// password only, holding the rotated token. Before records had a data key,
// that save failed and the rotated token lived in memory only.
func TestStoreRotationSurvivesPasswordChange(t *testing.T) {
	daemon := newTestStore(t, "")
	if _, err := daemon.Create(testLogin, testPassword, Secret{RefreshToken: "rt1"}); err != nil {
		t.Fatal(err)
	}
	held, err := daemon.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}

	cli := newTestStore(t, daemon.Dir())
	u, err := cli.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.SetPassword(u, "new password"); err != nil {
		t.Fatal(err)
	}

	for i, rt := range []string{"rt2", "rt3"} { // the second save reuses the kept wrapping
		if err := daemon.Update(held, Secret{RefreshToken: rt}); err != nil {
			t.Fatalf("save %d after the password change: %v", i+1, err)
		}
		fresh := newTestStore(t, daemon.Dir())
		got, err := fresh.Open(testLogin, "new password")
		if err != nil || got.Secret.RefreshToken != rt || got.Info.SecretGeneration != uint64(i+2) {
			t.Fatalf("after save %d, the new password opens %v, %v", i+1, got, err)
		}
		if _, err := fresh.Open(testLogin, testPassword); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("after save %d, the old password: %v; want ErrWrongPassword", i+1, err)
		}
	}

	// passwd's own view is stale now: it must reopen, not overwrite.
	if err := cli.SetPassword(u, "third password"); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("SetPassword after the daemon's save: %v; want ErrRecordChanged", err)
	}
	// A new authorization is never overwritten by the old one's rotation.
	if _, err := cli.Create(testLogin, "new password", Secret{RefreshToken: "fresh"}); err != nil {
		t.Fatal(err)
	}
	if err := daemon.Update(held, Secret{RefreshToken: "rt4"}); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("save after a new authorization: %v; want ErrRecordChanged", err)
	}
}

// TestStoreLockExcludesOtherProcesses: while a write holds the store's
// lock, another open file description cannot take the directory's flock,
// as another process (the CLI beside the daemon) would try to.
func TestStoreLockExcludesOtherProcesses(t *testing.T) {
	s := newTestStore(t, "")
	d, err := os.Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	unlock, err := s.files.lock()
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Errorf("flock while the store is locked: %v; want EWOULDBLOCK", err)
	}
	unlock()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("flock after the store's unlock: %v", err)
	}
	unix.Flock(int(d.Fd()), unix.LOCK_UN)
}
