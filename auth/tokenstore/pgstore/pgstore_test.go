package pgstore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore/pgtest"
)

var testKDF = tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

// openTest returns a migrated Backend on dsn and a Store on it.
func openTest(t *testing.T, dsn string, opts *Options) (*Backend, *tokenstore.Store) {
	t.Helper()
	b, err := Open(dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, err := tokenstore.NewWithBackend(b, &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return b, s
}

func TestMigrate(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	b, err := Open(dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if from, to, err := b.Migrate(ctx); err != nil || from != 0 || to != SchemaVersion {
		t.Fatalf("first Migrate = %d, %d, %v; want 0, %d", from, to, err, SchemaVersion)
	}
	if from, to, err := b.Migrate(ctx); err != nil || from != SchemaVersion || to != SchemaVersion {
		t.Fatalf("second Migrate = %d, %d, %v; want no change", from, to, err)
	}
	if _, err := b.pool.Exec(ctx, `INSERT INTO imap_oauth_proxy_schema (version) VALUES ($1)`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Migrate(ctx); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Migrate on a newer schema = %v; want a refusal", err)
	}
}

// TestSameBytes checks that a record moves between the file store and the
// database byte for byte, and opens with its password in both.
func TestSameBytes(t *testing.T) {
	srv := pgtest.Start(t)
	_, pg := openTest(t, srv.NewDatabase(t), nil)
	files, err := tokenstore.New(t.TempDir(), &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u, err := files.Create("alice", "pw", tokenstore.Secret{RefreshToken: "rt-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := files.Update(u, tokenstore.Secret{RefreshToken: "rt-2"}); err != nil {
		t.Fatal(err)
	}
	data, err := files.Export(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.Import(ctx, "alice", data); err != nil {
		t.Fatal(err)
	}
	back, err := pg.Export(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("record changed on its way through the database")
	}
	if bytes.Contains(back, []byte("rt-2")) {
		t.Fatal("the stored record shows the refresh token")
	}
	got, err := pg.Open("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret.RefreshToken != "rt-2" || got.Info.Generation != 2 {
		t.Fatalf("opened %v generation %d; want rt-2, 2", got.Secret, got.Info.Generation)
	}
	if err := pg.Import(ctx, "bob", data); !errors.Is(err, tokenstore.ErrCorruptRecord) {
		t.Fatalf("importing alice's record as bob = %v; want ErrCorruptRecord", err)
	}
	logins, err := pg.Logins(ctx)
	if err != nil || len(logins) != 1 || logins[0] != "alice" {
		t.Fatalf("Logins = %v, %v; want [alice]", logins, err)
	}
}

// TestCompareAndSwap has two instances update one record: the one that
// read an older generation writes nothing, then reloads the other's
// secret without the password.
func TestCompareAndSwap(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	_, a := openTest(t, dsn, nil)
	_, b := openTest(t, dsn, nil)
	if _, err := a.Create("alice", "pw", tokenstore.Secret{RefreshToken: "rt-1"}); err != nil {
		t.Fatal(err)
	}
	ua, err := a.Open("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	ub, err := b.Open("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Update(ua, tokenstore.Secret{RefreshToken: "rt-2", AccessToken: "at-2", Expiry: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Update(ub, tokenstore.Secret{RefreshToken: "rt-stale"}); !errors.Is(err, tokenstore.ErrRecordChanged) {
		t.Fatalf("stale Update = %v; want ErrRecordChanged", err)
	}
	changed, err := b.Reload(context.Background(), ub)
	if err != nil || !changed {
		t.Fatalf("Reload = %v, %v; want a change", changed, err)
	}
	if ub.Secret.RefreshToken != "rt-2" || ub.Secret.AccessToken != "at-2" {
		t.Fatalf("reloaded %v; want rt-2 and at-2", ub.Secret)
	}
	if err := b.Update(ub, tokenstore.Secret{RefreshToken: "rt-3"}); err != nil {
		t.Fatalf("Update after Reload: %v", err)
	}
	// A password change by b does not stop a's next write.
	if _, err := a.Reload(context.Background(), ua); err != nil {
		t.Fatal(err)
	}
	ub2, err := b.Open("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetPassword(ub2, "new"); err != nil {
		t.Fatal(err)
	}
	if err := a.Update(ua, tokenstore.Secret{RefreshToken: "rt-4"}); err != nil {
		t.Fatalf("Update after another instance's passwd: %v", err)
	}
	got, err := b.Open("alice", "new")
	if err != nil || got.Secret.RefreshToken != "rt-4" {
		t.Fatalf("Open with the new password = %v, %v; want rt-4", got, err)
	}
	if _, err := b.Open("alice", "pw"); !errors.Is(err, tokenstore.ErrWrongPassword) {
		t.Fatalf("Open with the old password = %v; want ErrWrongPassword", err)
	}
}

// TestConcurrentCreate races instances writing one login: every write
// either lands or reports ErrRecordChanged, and the row is a whole record.
func TestConcurrentUpdates(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	_, first := openTest(t, dsn, nil)
	if _, err := first.Create("alice", "pw", tokenstore.Secret{RefreshToken: "rt-0"}); err != nil {
		t.Fatal(err)
	}
	const instances, rounds = 3, 20
	type result struct{ ok, lost int }
	results := make(chan result, instances)
	for i := range instances {
		_, s := openTest(t, dsn, nil)
		go func() {
			var r result
			for n := range rounds {
				u, err := s.Open("alice", "pw")
				if err != nil {
					t.Error(err)
					break
				}
				err = s.Update(u, tokenstore.Secret{RefreshToken: "rt-" + string(rune('a'+i)) + string(rune('a'+n))})
				switch {
				case err == nil:
					r.ok++
				case errors.Is(err, tokenstore.ErrRecordChanged):
					r.lost++
				default:
					t.Error(err)
				}
			}
			results <- r
		}()
	}
	var ok int
	for range instances {
		r := <-results
		ok += r.ok
	}
	u, err := first.Open("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	// Each successful Update added one secret generation, no more, no less.
	if want := uint64(1 + ok); u.Info.SecretGeneration != want {
		t.Fatalf("secret generation %d after %d successful updates; want %d", u.Info.SecretGeneration, ok, want)
	}
}

// TestRefreshLock checks that the refresh lock keeps a second instance
// waiting until the first releases it, and that a holder whose session
// dies frees it.
func TestRefreshLock(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	a, _ := openTest(t, dsn, nil)
	b, _ := openTest(t, dsn, &Options{LockWait: 200 * time.Millisecond})
	ctx := context.Background()
	release, err := a.LockRefresh(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.LockRefresh(ctx, "alice"); !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("second LockRefresh while held = %v; want a timeout (ErrStoreUnavailable)", err)
	}
	other, err := b.LockRefresh(ctx, "bob")
	if err != nil {
		t.Fatalf("another login's lock: %v", err)
	}
	other()
	release()
	rb, err := b.LockRefresh(ctx, "alice")
	if err != nil {
		t.Fatalf("LockRefresh after release: %v", err)
	}
	rb()

	// A dead holder: its session ends, the server frees the lock.
	dead, err := Open(dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	relDead, err := dead.LockRefresh(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND classid = $1 AND granted AND pid <> pg_backend_pid()`, lockClass); err != nil {
		t.Fatal(err)
	}
	b2, _ := openTest(t, dsn, &Options{LockWait: 10 * time.Second})
	r, err := b2.LockRefresh(ctx, "alice")
	if err != nil {
		t.Fatalf("LockRefresh after the holder died: %v", err)
	}
	r()
	relDead() // its connection is gone: release closes it
	dead.Close()
}

// TestDatabaseDown stops the server: reads of known records are served
// from memory, fresh reads, writes and refresh locks fail as unavailable,
// and everything works again once the server is back, without help.
func TestDatabaseDown(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	b, s := openTest(t, dsn, &Options{Timeout: 2 * time.Second})
	u, err := s.Create("alice", "pw", tokenstore.Secret{RefreshToken: "rt-1"})
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	ctx := context.Background()
	if got, err := s.Open("alice", "pw"); err != nil || got.Secret.RefreshToken != "rt-1" {
		t.Fatalf("Open while down = %v, %v; want the known record", got, err)
	}
	if _, err := s.Open("bob", "pw"); !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("Open of an unknown login while down = %v; want ErrStoreUnavailable", err)
	}
	if _, err := s.Reload(ctx, u); !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("Reload while down = %v; want ErrStoreUnavailable", err)
	}
	if err := s.Update(u, tokenstore.Secret{RefreshToken: "rt-2"}); !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("Update while down = %v; want ErrStoreUnavailable", err)
	}
	if _, err := b.LockRefresh(ctx, "alice"); !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("LockRefresh while down = %v; want ErrStoreUnavailable", err)
	}
	if strings.Contains(u.String(), "rt-1") {
		t.Fatal("Unlocked.String shows the token")
	}
	srv.Started()
	if err := s.Update(u, tokenstore.Secret{RefreshToken: "rt-2"}); err != nil {
		t.Fatalf("Update after the server came back: %v", err)
	}
	if got, err := s.Open("alice", "pw"); err != nil || got.Secret.RefreshToken != "rt-2" {
		t.Fatalf("Open after the server came back = %v, %v", got, err)
	}
}

func TestDSNPasswordNotShown(t *testing.T) {
	for _, dsn := range []string{
		"postgres://user:s3cret-pw@[::1:5432/db",
		"host=/nonexistent user=u password=s3cret-pw dbname=db sslmode=bogus",
	} {
		b, err := Open(dsn, nil)
		if err == nil {
			b.Close()
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error shows the password: %v", err)
		}
	}
	// A connection failure names no password either.
	b, err := Open("host=/nonexistent-dir user=u password=s3cret-pw dbname=db sslmode=disable", &Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.Ping(context.Background())
	if err == nil || strings.Contains(err.Error(), "s3cret") || !errors.Is(err, tokenstore.ErrStoreUnavailable) {
		t.Fatalf("Ping = %v; want ErrStoreUnavailable without the password", err)
	}
}

// TestRefreshMark: MarkRefresh keeps the first unfinished refresh's start
// and returns it to the next; a write of the record or UnmarkRefresh
// clears it.
func TestRefreshMark(t *testing.T) {
	srv := pgtest.Start(t)
	b, s := openTest(t, srv.NewDatabase(t), nil)
	ctx := context.Background()
	if since, err := b.MarkRefresh(ctx, "nobody"); err != nil || !since.IsZero() {
		t.Fatalf("MarkRefresh without a record = %v, %v; want zero", since, err)
	}
	u, err := s.Create("alice", "pw", tokenstore.Secret{RefreshToken: "rt-1"})
	if err != nil {
		t.Fatal(err)
	}
	if since, err := b.MarkRefresh(ctx, "alice"); err != nil || !since.IsZero() {
		t.Fatalf("first MarkRefresh = %v, %v; want zero", since, err)
	}
	first, err := b.MarkRefresh(ctx, "alice")
	if err != nil || first.IsZero() {
		t.Fatalf("second MarkRefresh = %v, %v; want the first one's start", first, err)
	}
	if again, err := b.MarkRefresh(ctx, "alice"); err != nil || !again.Equal(first) {
		t.Fatalf("third MarkRefresh = %v, %v; want the first one's start %v still", again, err, first)
	}
	if err := s.Update(u, tokenstore.Secret{RefreshToken: "rt-2"}); err != nil {
		t.Fatal(err)
	}
	if since, err := b.MarkRefresh(ctx, "alice"); err != nil || !since.IsZero() {
		t.Fatalf("MarkRefresh after a save = %v, %v; want zero", since, err)
	}
	if err := b.UnmarkRefresh(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if since, err := b.MarkRefresh(ctx, "alice"); err != nil || !since.IsZero() {
		t.Fatalf("MarkRefresh after UnmarkRefresh = %v, %v; want zero", since, err)
	}
}

// TestMigrateFromVersion1: a database made by a build of schema version 1
// is brought to the current version, its rows kept.
func TestMigrateFromVersion1(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, stmt := range []string{
		`CREATE TABLE imap_oauth_proxy_schema (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())`,
		schema[0],
		`INSERT INTO imap_oauth_proxy_schema (version) VALUES (1)`,
		`INSERT INTO token_records (login, generation, record) VALUES ('alice', 1, 'x')`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Open(dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if from, to, err := b.Migrate(ctx); err != nil || from != 1 || to != SchemaVersion {
		t.Fatalf("Migrate = %d, %d, %v; want 1, %d", from, to, err, SchemaVersion)
	}
	if since, err := b.MarkRefresh(ctx, "alice"); err != nil || !since.IsZero() {
		t.Fatalf("MarkRefresh on a migrated row = %v, %v", since, err)
	}
}
