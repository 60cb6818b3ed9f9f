package tokenstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestOpenRefusesNonRegular: a FIFO or a symbolic link where a record
// belongs makes Open fail at once, instead of hanging on the FIFO or
// reading the link's target.
func TestOpenRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	s, err := New(dir, &Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(s.Path("fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("target", "pw", Secret{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(s.Path("target"), s.Path("link")); err != nil {
		t.Fatal(err)
	}
	for _, login := range []string{"fifo", "link"} {
		done := make(chan error, 1)
		go func() {
			_, err := s.Open(login, "pw")
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotRegular) {
				t.Errorf("Open(%s) = %v, want ErrNotRegular", login, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Open(%s) still blocked after 10 s", login)
		}
	}
}

// TestNewRefusesWritableDir: a group- or world-writable state
// directory is refused at start.
func TestNewRefusesWritableDir(t *testing.T) {
	for _, mode := range []os.FileMode{0o770, 0o777, 0o1777, 0o720} {
		dir := filepath.Join(t.TempDir(), "state")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := New(dir, nil); err == nil {
			t.Errorf("New accepted a state directory of mode %04o", mode)
		}
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir, nil); err != nil {
		t.Errorf("New refused a 0755 directory: %v", err)
	}
}

// TestOversizedRecordRefused: a record file larger than maxRecordSize is
// corrupt, even when what it holds would decode (here a valid record
// padded with white space), so that a planted file cannot make a login
// read without bound.
func TestOversizedRecordRefused(t *testing.T) {
	s := newTestStore(t, "")
	if _, err := s.Create("big", "pw", Secret{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	data := append(readFile(t, s.Path("big")), bytes.Repeat([]byte(" "), maxRecordSize)...)
	if err := os.WriteFile(s.Path("big"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open("big", "pw"); !errors.Is(err, ErrCorruptRecord) {
		t.Errorf("Open of a %d-byte record = %v, want ErrCorruptRecord", len(data), err)
	}
}
