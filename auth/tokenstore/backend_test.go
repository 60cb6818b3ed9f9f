package tokenstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestFileLogins lists the logins of a directory, unescaping file names,
// and skips temporary and foreign files.
func TestFileLogins(t *testing.T) {
	dir := t.TempDir()
	s := newTestStore(t, dir)
	logins := []string{"alice", "bob@contoso.test", ".hidden", "a/b", "ünï", "x%y"}
	for _, login := range logins {
		if _, err := s.Create(login, "pw", Secret{RefreshToken: "rt"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{".alice.token.tmp123", "notes.txt", "%zz.token"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Logins(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(logins)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("Logins = %q; want %q", got, want)
	}
}

// TestExportImport moves a record between two directories byte for byte
// and refuses another login's record.
func TestExportImport(t *testing.T) {
	a, b := newTestStore(t, t.TempDir()), newTestStore(t, t.TempDir())
	ctx := context.Background()
	if _, err := a.Create("alice", "pw", Secret{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	data, err := a.Export(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Import(ctx, "alice", data); err != nil {
		t.Fatal(err)
	}
	back, err := os.ReadFile(b.Path("alice"))
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("imported file differs (%v)", err)
	}
	if err := b.Import(ctx, "bob", data); !errors.Is(err, ErrCorruptRecord) {
		t.Fatalf("Import of alice's record as bob = %v; want ErrCorruptRecord", err)
	}
	if _, err := b.Export(ctx, "bob"); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("Export of a missing record = %v; want ErrNoRecord", err)
	}
	if b.Shared() {
		t.Fatal("a directory store claims to be shared")
	}
}
