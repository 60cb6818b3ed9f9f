package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore/pgtest"
)

// TestStoreOnPostgres runs the CLI against a PostgreSQL store: store init,
// token import, passwd, then store migrate to the files and back, checking
// that records travel byte for byte and that no secret (passwords, tokens,
// the DSN's password) is printed.
func TestStoreOnPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t) + " password=dsn-password-canary-5e2a" // trust ignores it
	c := newCLI(t)
	path, stateDir := importConfig(t)
	dir := filepath.Dir(path)
	writeFile(t, dir, "db.dsn", dsn+"\n")
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "config.toml", string(text)+"\n[store]\ntype = \"postgres\"\ndsn_file = \"db.dsn\"\n")
	const (
		password    = "pg-pw-canary-0b1d"
		newPassword = "pg-pw-canary-new-93aa"
		refresh     = "pg-refresh-canary-41c7"
	)
	c.secret(password, newPassword, refresh, "dsn-password-canary-5e2a", testClientSecret)

	if r := c.run("", "store", "init", "-config", path); r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("to %d", pgstore.SchemaVersion)) {
		t.Fatalf("store init: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := c.run("", "store", "init", "-config", path); r.code != 0 || !strings.Contains(r.stdout, "up to date") {
		t.Fatalf("second store init: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := c.run(password+"\n"+refresh+"\n", "token", "import", "-config", path, "collector"); r.code != 0 {
		t.Fatalf("token import: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "collector.token")); err == nil {
		t.Fatal("token import wrote a file; want the record in the database only")
	}
	if r := c.run(password+"\n"+newPassword+"\n", "passwd", "-config", path, "collector"); r.code != 0 {
		t.Fatalf("passwd: exit %d\n%s", r.code, r.stderr)
	}
	b, err := pgstore.Open(dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := tokenstore.NewWithBackend(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	u, err := db.Open("collector", newPassword)
	if err != nil || u.Secret.RefreshToken != refresh {
		t.Fatalf("the database's record after passwd: %v, %v", u, err)
	}
	ctx := context.Background()
	inDB, err := db.Export(ctx, "collector")
	if err != nil {
		t.Fatal(err)
	}

	// To the files, byte for byte.
	if r := c.run("", "store", "migrate", "-config", path, "-to", "files"); r.code != 0 {
		t.Fatalf("store migrate -to files: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	onDisk, err := os.ReadFile(filepath.Join(stateDir, "collector.token"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, inDB) {
		t.Fatal("the file differs from the database's record")
	}
	files, err := tokenstore.New(stateDir, &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := files.Open("collector", newPassword); err != nil {
		t.Fatalf("the migrated file does not open: %v", err)
	}

	// Back, with a record made in the files meanwhile; the one already
	// there is left alone.
	if _, err := files.Create("app", password, tokenstore.Secret{}); err != nil {
		t.Fatal(err)
	}
	r := c.run("", "store", "migrate", "-config", path, "-to", "postgres")
	if r.code != 0 || !strings.Contains(r.stdout, "collector: already there") || !strings.Contains(r.stdout, "copied 1 token records") {
		t.Fatalf("store migrate -to postgres: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	appFile, _ := files.Export(ctx, "app")
	appDB, err := db.Export(ctx, "app")
	if err != nil || !bytes.Equal(appFile, appDB) {
		t.Fatalf("app's record in the database differs from its file (%v)", err)
	}

	// A record that differs is not replaced without -force.
	if _, err := files.Create("app", newPassword, tokenstore.Secret{}); err != nil {
		t.Fatal(err)
	}
	if r := c.run("", "store", "migrate", "-config", path, "-to", "postgres"); r.code == 0 || !strings.Contains(r.stderr, "-force") {
		t.Fatalf("store migrate over a different record: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := c.run("", "store", "migrate", "-config", path, "-to", "postgres", "-force"); r.code != 0 {
		t.Fatalf("store migrate -force: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := db.Open("app", newPassword); err != nil {
		t.Fatalf("the forced record does not open: %v", err)
	}
}

// TestServeThreeDaemonsOnPostgres runs three serve commands on one
// database against a token endpoint that kills every refresh token it
// rotates, with access tokens that need a refresh every second (and
// session_token_min below that, so that sessions take them): at least
// 1,000 IMAP logins spread over the three all succeed (an invalid_grant
// would fail one), and the endpoint sees about one refresh per account
// and expiry, not one per daemon.
func TestServeThreeDaemonsOnPostgres(t *testing.T) {
	const (
		accounts = 10
		ttl      = 2 * time.Second
		margin   = time.Second
		minLogin = 1000
	)
	minTime := 4 * time.Second
	if testing.Short() {
		minTime = 2 * time.Second
	}
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	c := newCLI(t)
	l := newLab(t, c)
	l.tokens.Close()
	l.tokens = authtest.NewServer(authtest.Options{
		Flavor: authtest.Microsoft, ClientID: testClientID, ClientSecret: testClientSecret, Rotate: true, AccessTTL: ttl,
	})
	t.Cleanup(l.tokens.Close)

	var logins []string
	for i := range accounts {
		logins = append(logins, fmt.Sprintf("collector%02d", i))
	}
	db := migratedPGStore(t, dsn)
	const password = "three-daemons-pw-canary-77d1"
	c.secret(password)
	for _, login := range logins {
		l.upstream.AddUser(mailboxOf(login))
		rt := l.tokens.Grant(mailboxOf(login))
		c.secret(rt)
		if _, err := db.Create(login, password, tokenstore.Secret{RefreshToken: rt}); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, l.dir, "store.dsn", dsn+"\n")
	path := writeFile(t, l.dir, "config.toml",
		labConfig(l.tokens.TokenURL(), l.upstream.Addr, fmt.Sprintf("refresh_margin = %q\nsession_token_min = %q\n", margin.String(), (margin/2).String()), logins...)+
			"\n[store]\ntype = \"postgres\"\ndsn_file = \"store.dsn\"\n")
	var addrs []string
	for range 3 {
		b := c.start("", "serve", "-config", path)
		addrs = append(addrs, b.wait(b.stderr, servingRE)[1])
	}

	var done, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := w; done.Load() < minLogin || time.Since(start) < minTime; n++ {
				conn, err := net.DialTimeout("tcp", addrs[n%3], testDeadline)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conn.SetDeadline(time.Now().Add(testDeadline))
				cl := imapclient.New(conn, nil)
				err = cl.Login(logins[n%accounts], password).Wait()
				cl.Close()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	refreshes := 0
	for _, login := range logins {
		refreshes += l.tokens.RefreshCount(mailboxOf(login))
	}
	windows := int(elapsed / (ttl - margin))
	t.Logf("%d logins over 3 daemons in %v: %d failed, %d refreshes at the endpoint for %d accounts (%d windows each)",
		done.Load(), elapsed.Round(time.Millisecond), failed.Load(), refreshes, accounts, windows)
	if f := failed.Load(); f != 0 {
		t.Errorf("%d logins failed; first: %v", f, firstErr.Load())
	}
	// One refresh per account and window, plus the first; three daemons
	// refreshing on their own would make about three times as many.
	if max := accounts * (windows + 2); refreshes > max {
		t.Errorf("%d refreshes; want at most %d (one per account and expiry)", refreshes, max)
	}
	if min := accounts * windows / 2; refreshes < min {
		t.Errorf("%d refreshes; want at least %d", refreshes, min)
	}
}

// migratedPGStore migrates the database at dsn to the current schema and
// returns a store on it with cheap KDF parameters, closed when the test
// ends.
func migratedPGStore(t *testing.T, dsn string) *tokenstore.Store {
	t.Helper()
	be, err := pgstore.Open(dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := be.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	db, err := tokenstore.NewWithBackend(be, &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
