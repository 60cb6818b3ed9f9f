package tokenstore

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

// settledStore is a test store whose record files count as settled at
// once, so that the second open of a record is served from memory.
func settledStore(t *testing.T, dir string) *Store {
	t.Helper()
	s := newTestStore(t, dir)
	s.settleTime = 0
	return s
}

// TestReopenUnchangedRecord: a record opened once is opened again, with
// the same password, without decoding or decrypting it, and each caller
// gets its own copy. A wrong password is still refused, and does not
// evict the opened record.
func TestReopenUnchangedRecord(t *testing.T) {
	s := settledStore(t, "")
	if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	first, err := s.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	decrypts := s.decrypts.Load()
	second, err := s.OpenCached(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.decrypts.Load() - decrypts; n != 0 {
		t.Errorf("opening an unchanged record again decrypted it %d times; want 0", n)
	}
	if second == first || second.Secret != first.Secret || second.Info != first.Info {
		t.Errorf("reopened record = %p %v; want a copy of %p %v", second, second, first, first)
	}
	if _, err := s.OpenCached(testLogin, "wrong"); !errors.Is(err, ErrNotCached) {
		t.Errorf("OpenCached with a wrong password = %v; want ErrNotCached", err)
	}
	if _, err := s.Open(testLogin, "wrong"); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("Open with a wrong password = %v; want ErrWrongPassword", err)
	}
	decrypts = s.decrypts.Load()
	if _, err := s.OpenCached(testLogin, testPassword); err != nil {
		t.Fatal(err)
	}
	if n := s.decrypts.Load() - decrypts; n != 0 {
		t.Errorf("after a wrong password, the right one decrypted the record %d times; want 0", n)
	}

	// A write through the store: the next open reads what it wrote.
	if err := s.Update(second, Secret{RefreshToken: "rotated"}); err != nil {
		t.Fatal(err)
	}
	third, err := s.OpenCached(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if third.Secret.RefreshToken != "rotated" || first.Secret.RefreshToken != testRT {
		t.Errorf("after Update: reopened %v, first %v; want the rotated token, and the first copy unchanged", third.Secret.RefreshToken, first.Secret.RefreshToken)
	}
}

// TestReopenSeesChangesOnDisk: another process (the CLI: another Store on
// the same directory) changes the password, makes a new authorization, or
// changes the file in place; the next open sees it.
func TestReopenSeesChangesOnDisk(t *testing.T) {
	dir := t.TempDir()
	daemon, cli := settledStore(t, dir), newTestStore(t, dir)
	if _, err := cli.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.Open(testLogin, testPassword); err != nil {
		t.Fatal(err)
	}

	// passwd.
	const newPassword = "a new local password"
	u, err := cli.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.SetPassword(u, newPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := daemon.OpenCached(testLogin, testPassword); !errors.Is(err, ErrNotCached) {
		t.Fatalf("old password from the key cache after passwd = %v; want ErrNotCached", err)
	}
	if _, err := daemon.Open(testLogin, testPassword); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("old password after passwd = %v; want ErrWrongPassword", err)
	}
	if _, err := daemon.Open(testLogin, newPassword); err != nil {
		t.Fatalf("new password after passwd: %v", err)
	}

	// A new authorization with the same password.
	created, err := cli.Create(testLogin, newPassword, Secret{RefreshToken: "a new grant"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := daemon.Open(testLogin, newPassword)
	if err != nil {
		t.Fatal(err)
	}
	if got.Info.ID != created.Info.ID || got.Secret.RefreshToken != "a new grant" {
		t.Fatalf("after a new authorization: id %s, secret %v; want id %s and the new grant", got.Info.ID, got.Secret, created.Info.ID)
	}

	// A change in place: the same inode, another size and change time.
	if _, err := daemon.OpenCached(testLogin, newPassword); err != nil {
		t.Fatal(err)
	}
	data := readFile(t, daemon.Path(testLogin))
	f, err := os.OpenFile(daemon.Path(testLogin), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(append(data[:len(data)-1], " \n"...)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	decrypts := daemon.decrypts.Load()
	if _, err := daemon.OpenCached(testLogin, newPassword); err != nil {
		t.Fatal(err)
	}
	if daemon.decrypts.Load() == decrypts {
		t.Error("a record changed in place was not read again")
	}
}

// TestReopenWaitsForSettledFile: a record file changed less than
// settleTime before it was read is read again at every open, since a
// change within the file system's time step could keep its stamp.
func TestReopenWaitsForSettledFile(t *testing.T) {
	s := newTestStore(t, "")
	if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	decrypts := s.decrypts.Load()
	for range 3 {
		if _, err := s.OpenCached(testLogin, testPassword); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.decrypts.Load() - decrypts; n != 3 {
		t.Errorf("a record just written was decrypted %d times in 3 opens; want 3", n)
	}

	now := time.Unix(1000, 0)
	stamp := fileStamp{ctime: now.UnixNano()}
	for _, c := range []struct {
		readAt time.Time
		want   bool
	}{
		{now, false},
		{now.Add(defaultSettleTime), false},
		{now.Add(defaultSettleTime + time.Nanosecond), true},
	} {
		if got := stamp.settled(c.readAt, defaultSettleTime); got != c.want {
			t.Errorf("changed at %v, read at %v: settled = %v; want %v", now, c.readAt, got, c.want)
		}
	}
}

// memBackend keeps records in memory, shared by the Stores built on it
// as a database is by several instances.
type memBackend struct {
	mu      sync.Mutex
	records map[string][]byte
}

func (b *memBackend) Read(_ context.Context, login string) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, ok := b.records[login]
	if !ok {
		return nil, ErrNoRecord
	}
	return data, nil
}

func (b *memBackend) Replace(_ context.Context, login string, fn func([]byte) ([]byte, uint64, error)) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	data, _, err := fn(b.records[login])
	if err != nil {
		return false, err
	}
	b.records[login] = data
	return true, nil
}

func (b *memBackend) Logins(context.Context) ([]string, error) { return nil, nil }
func (b *memBackend) LockRefresh(context.Context, string) (func(), error) {
	return func() {}, nil
}
func (b *memBackend) Shared() bool { return true }
func (b *memBackend) Close() error { return nil }

// TestReopenSharedBackend: in a store that is not files, the record's bytes
// as read from the backend at every open decide; another instance's
// password change holds at the next open.
func TestReopenSharedBackend(t *testing.T) {
	b := &memBackend{records: map[string][]byte{}}
	newStore := func() *Store {
		s, err := NewWithBackend(b, &Options{KDF: testKDF})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	one, other := newStore(), newStore()
	if _, err := other.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	if _, err := one.Open(testLogin, testPassword); err != nil {
		t.Fatal(err)
	}
	decrypts := one.decrypts.Load()
	if _, err := one.OpenCached(testLogin, testPassword); err != nil {
		t.Fatal(err)
	}
	if n := one.decrypts.Load() - decrypts; n != 0 {
		t.Errorf("opening an unchanged record again decrypted it %d times; want 0", n)
	}
	u, err := other.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.SetPassword(u, "another password"); err != nil {
		t.Fatal(err)
	}
	if _, err := one.OpenCached(testLogin, testPassword); !errors.Is(err, ErrNotCached) {
		t.Fatalf("old password from the key cache after another instance's passwd = %v; want ErrNotCached", err)
	}
	if _, err := one.Open(testLogin, testPassword); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("old password after another instance's passwd = %v; want ErrWrongPassword", err)
	}
}

// BenchmarkOpenCached is the password check of a login whose password is
// in the key cache: "reopen" with the record opened before and unchanged
// (one lstat), "read" reading, decoding and decrypting it every time.
func BenchmarkOpenCached(b *testing.B) {
	for _, c := range []struct {
		name   string
		settle time.Duration
	}{{"reopen", 0}, {"read", time.Hour}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := New(b.TempDir(), &Options{KDF: testKDF})
			if err != nil {
				b.Fatal(err)
			}
			s.settleTime = c.settle
			if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Open(testLogin, testPassword); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.OpenCached(testLogin, testPassword); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
