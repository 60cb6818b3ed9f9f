package tokenstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// newSpillingStore returns a file store with a spill directory beside it
// (the file backend stands in for a shared one: PushSpill only needs
// Replace), and the spill directory.
func newSpillingStore(t *testing.T) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	spillDir := filepath.Join(dir, "pending")
	s, err := New(filepath.Join(dir, "tokens"), &Options{KDF: testKDF, SpillDir: spillDir})
	if err != nil {
		t.Fatal(err)
	}
	return s, spillDir
}

// TestSpillPushed: a spilled record is encrypted, 0600, and once pushed
// is the store's record and no longer spilled.
func TestSpillPushed(t *testing.T) {
	s, spillDir := newSpillingStore(t)
	ctx := context.Background()
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Spill(u, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(spillDir, recordFileName(testLogin))
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("spill file mode %04o; want 0600", info.Mode().Perm())
	}
	if bytes.Contains(readFile(t, path), []byte(testRT)) {
		t.Fatal("the spill file holds the clear refresh token")
	}
	if logins, err := s.Spilled(); err != nil || len(logins) != 1 || logins[0] != testLogin {
		t.Fatalf("Spilled = %v, %v; want [%s]", logins, err, testLogin)
	}
	if u.Info.SecretGeneration != 1 {
		t.Fatalf("Spill changed the unlocked record: secret generation %d", u.Info.SecretGeneration)
	}

	if saved, err := s.PushSpill(ctx, testLogin, nil); err != nil || !saved {
		t.Fatalf("PushSpill = %v, %v; want saved", saved, err)
	}
	if s.HasSpill(testLogin) {
		t.Error("still spilled after the push")
	}
	got, err := s.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret.RefreshToken != testRT || got.Info.SecretGeneration != 2 {
		t.Fatalf("record after the push: %v generation %d; want the spilled one, secret generation 2", got.Secret, got.Info.SecretGeneration)
	}
	// The unlocked record from before catches up by reloading.
	if changed, err := s.Reload(ctx, u); err != nil || !changed || u.Secret.RefreshToken != testRT {
		t.Fatalf("Reload after the push = %v, %v", changed, err)
	}
	if saved, err := s.PushSpill(ctx, testLogin, nil); err != nil || saved {
		t.Fatalf("PushSpill with nothing spilled = %v, %v; want nothing", saved, err)
	}
}

// TestSpillSuperseded: a spill made from a record that a new
// authorization or a newer token replaced is dropped, and the store's
// record stays.
func TestSpillSuperseded(t *testing.T) {
	for _, tc := range []struct {
		name     string
		overtake func(t *testing.T, s *Store, u *Unlocked)
	}{
		{"new authorization", func(t *testing.T, s *Store, _ *Unlocked) {
			if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt-new-grant"}); err != nil {
				t.Fatal(err)
			}
		}},
		{"newer token", func(t *testing.T, s *Store, _ *Unlocked) {
			other, err := s.Open(testLogin, testPassword)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Update(other, Secret{RefreshToken: "rt-other-instance"}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newSpillingStore(t)
			u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt-1"})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Spill(u, Secret{RefreshToken: "rt-spilled"}); err != nil {
				t.Fatal(err)
			}
			tc.overtake(t, s, u)
			before, err := s.Export(context.Background(), testLogin)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.PushSpill(context.Background(), testLogin, nil); !errors.Is(err, ErrSpillSuperseded) {
				t.Fatalf("PushSpill = %v; want ErrSpillSuperseded", err)
			}
			if s.HasSpill(testLogin) {
				t.Error("a superseded spill was kept")
			}
			if after, _ := s.Export(context.Background(), testLogin); !bytes.Equal(before, after) {
				t.Error("a superseded spill was written over the newer record")
			}
		})
	}
}

// TestSpillOverPasswordChange: after a password change, a spill made
// before it cannot be saved byte for byte; it is kept, and saved with the
// record's data key, under the new password.
func TestSpillOverPasswordChange(t *testing.T) {
	s, _ := newSpillingStore(t)
	ctx := context.Background()
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Spill(u, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	other, err := s.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	const newPassword = "a new local password"
	if err := s.SetPassword(other, newPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PushSpill(ctx, testLogin, nil); !errors.Is(err, ErrSpillNeedsKey) {
		t.Fatalf("PushSpill without the key = %v; want ErrSpillNeedsKey", err)
	}
	if !s.HasSpill(testLogin) {
		t.Fatal("the spill was dropped; want it kept")
	}
	if saved, err := s.PushSpill(ctx, testLogin, u); err != nil || !saved {
		t.Fatalf("PushSpill with the key = %v, %v; want saved", saved, err)
	}
	if u.Secret.RefreshToken != testRT || u.Info.SecretGeneration != 2 {
		t.Errorf("the unlocked record did not take the saved one: %v, secret generation %d", u.Secret, u.Info.SecretGeneration)
	}
	got, err := s.Open(testLogin, newPassword)
	if err != nil {
		t.Fatalf("the new password after the push: %v", err)
	}
	if got.Secret.RefreshToken != testRT {
		t.Fatalf("record after the push holds %v; want the spilled token", got.Secret)
	}
}
