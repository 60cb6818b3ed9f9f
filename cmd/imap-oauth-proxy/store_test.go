package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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

	if r := c.run("", "store", "init", "-config", path); r.code != 0 || !strings.Contains(r.stdout, "to 1") {
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
