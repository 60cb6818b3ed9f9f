package auth_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore/pgtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// spillInstance is one proxy's token manager on the shared database, with
// its own state directory, that the test can stop (cancel its Manager,
// close its store) to start another over the same directory.
type spillInstance struct {
	*instance
	stop func()
}

// newSpillInstance starts an instance on dsn whose store spills into
// stateDir/pending (no spill directory if stateDir is ""). It does not
// touch the database, which may be down: the schema must exist.
func newSpillInstance(t *testing.T, dsn, stateDir string, opts auth.ManagerOptions) *spillInstance {
	t.Helper()
	b, err := pgstore.Open(dsn, &pgstore.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	storeOpts := &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}
	if stateDir != "" {
		storeOpts.SpillDir = filepath.Join(stateDir, "pending")
	}
	store, err := tokenstore.NewWithBackend(b, storeOpts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	opts.Store = store
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	mgr, err := auth.NewManager(ctx, &opts)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); store.Close() }) }
	t.Cleanup(stop)
	return &spillInstance{instance: &instance{store: store, mgr: mgr}, stop: stop}
}

// spilled returns the spill file of login in stateDir, if there is one.
func spilled(t *testing.T, stateDir, login string) (os.FileInfo, bool) {
	t.Helper()
	info, err := os.Stat(filepath.Join(stateDir, "pending", login+".token"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return info, true
}

// rotateWhileDatabaseStops logs in to acct on in while the database stops
// between the provider's rotation (which kills the old refresh token) and
// the instance's save, and returns the login's error.
func rotateWhileDatabaseStops(t *testing.T, srv *pgtest.Server, e *countingEndpoint, in *instance, acct *config.Account) error {
	t.Helper()
	var once sync.Once
	stopDB := func() { once.Do(srv.Stop) } // the answer waits for it
	e.afterRefresh.Store(&stopDB)
	defer e.afterRefresh.Store(nil)
	_, err := in.login(t.Context(), acct)
	return err
}

// forceRefresh logs in to acct on in and makes the account refresh from
// the record's refresh token (the upstream "refused" the access token).
func forceRefresh(t *testing.T, in *instance, acct *config.Account) error {
	t.Helper()
	ctx := t.Context()
	a, err := in.login(ctx, acct)
	if err != nil {
		return err
	}
	tok, err := a.Token(ctx)
	if err != nil {
		return err
	}
	a.Refused(tok)
	_, err = a.Token(ctx)
	return err
}

// TestSharedStoreSpillOutageAndRestart: the database stops while the
// provider's answer to a refresh is on its way (the provider has rotated
// the refresh token and killed the old one). The instance writes the
// rotated record to its spill directory and serves the login; the
// outage outlasts the save retries of an instance without a spill; the
// instance is restarted (a new Manager over the same state directory)
// while the database is still down; once the database is back the new
// Manager saves the spilled record by itself. The account then works on
// every instance, from the rotated token: no invalid_grant, the spill is
// gone.
func TestSharedStoreSpillOutageAndRestart(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, time.Hour)
	ctx := t.Context()
	other := newInstance(t, ctx, dsn, time.Minute) // migrates the schema
	acct := sharedAccounts(t, e, other.store, 1)[0]
	stateDir := t.TempDir()
	opts := auth.ManagerOptions{RefreshMargin: time.Minute, SaveRetryFor: 50 * time.Millisecond, PendingRetry: 100 * time.Millisecond}
	holder := newSpillInstance(t, dsn, stateDir, opts)

	if err := rotateWhileDatabaseStops(t, srv, e, holder.instance, acct); err != nil {
		t.Fatalf("login whose rotated token the database could not take: %v", err)
	}
	info, ok := spilled(t, stateDir, acct.Login)
	if !ok {
		t.Fatal("no spill file after the database stopped mid-save")
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("spill file mode %04o; want 0600", mode)
	}
	if n := holder.mgr.PendingSaves(); n != 1 {
		t.Errorf("PendingSaves = %d; want 1", n)
	}

	// Restart the holder during the outage: only the spill file is left.
	holder.stop()
	restartedSavesSpill(t, srv, e, dsn, stateDir, opts, other, acct)
}

// restartedSavesSpill starts a holder over stateDir while the database is
// down, and checks that it finds the spilled record of acct, saves it by
// itself once the database is back, and that the account then works on
// it and on other from the rotated token, with no invalid_grant at all.
func restartedSavesSpill(t *testing.T, srv *pgtest.Server, e *countingEndpoint, dsn, stateDir string,
	opts auth.ManagerOptions, other *instance, acct *config.Account) {
	t.Helper()
	saved := make(chan struct{}, 1)
	opts.Logger = slog.New(signalHandler{slog.DiscardHandler, "rotated token pending save saved to the database", saved})
	holder := newSpillInstance(t, dsn, stateDir, opts)
	if n := holder.mgr.PendingSaves(); n != 1 {
		t.Errorf("PendingSaves after the restart = %d; want 1", n)
	}
	srv.Started()
	// The new Manager's background save runs on its own clock
	// (PendingRetry); it logs when it has saved the record.
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case <-saved:
	case <-timer.C:
		t.Fatal("the restarted instance did not save the spilled record within 30s of the database's return")
	}
	if _, ok := spilled(t, stateDir, acct.Login); ok {
		t.Error("the spill file is still there after the save")
	}
	// The background loop recounts after its pass; a pass of our own
	// recounts now, and must find nothing left.
	if n, err := holder.mgr.SavePending(t.Context()); n != 0 || err != nil {
		t.Errorf("SavePending after the save = %d, %v; want 0", n, err)
	}
	if n := holder.mgr.PendingSaves(); n != 0 {
		t.Errorf("PendingSaves after the save = %d; want 0", n)
	}

	rec, err := other.store.Open(acct.Login, managerPassword)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Info.SecretGeneration != 2 {
		t.Errorf("record's secret generation %d after the save; want 2 (the rotation)", rec.Info.SecretGeneration)
	}
	// The database holds the rotated token: both instances refresh from it.
	for name, in := range map[string]*instance{"restarted holder": holder.instance, "other instance": other} {
		if err := forceRefresh(t, in, acct); err != nil {
			t.Errorf("refresh on the %s after the outage: %v", name, err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.invalidGrant != 0 {
		t.Errorf("%d invalid_grant answers; want 0: a dead refresh token was used", e.invalidGrant)
	}
}

// Environment of TestSharedStoreSpillVictimInstance.
const victimStateDir = "IMAP_OAUTH_PROXY_TEST_VICTIM_STATE_DIR"

// TestSharedStoreSpillVictimInstance is the holder that
// TestSharedStoreSpillKilled runs in a child process: it logs in once
// (the parent stops the database as the provider answers), says so on
// stdout, and waits to be killed.
func TestSharedStoreSpillVictimInstance(t *testing.T) {
	dsn := os.Getenv(victimDSN)
	if dsn == "" {
		t.Skip("run by TestSharedStoreSpillKilled")
	}
	in := newSpillInstance(t, dsn, os.Getenv(victimStateDir), auth.ManagerOptions{RefreshMargin: time.Minute, PendingRetry: -1})
	acct := sharedConfigs(os.Getenv(victimTokenURL), 1)[0]
	if _, err := in.login(t.Context(), acct); err != nil {
		t.Fatal(err)
	}
	fmt.Println("logged in")
	<-t.Context().Done()
}

// TestSharedStoreSpillKilled is TestSharedStoreSpillOutageAndRestart with
// the holder killed (SIGKILL) during the outage, after the login that
// rotated the token: what it spilled is enough.
func TestSharedStoreSpillKilled(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, time.Hour)
	other := newInstance(t, t.Context(), dsn, time.Minute)
	acct := sharedAccounts(t, e, other.store, 1)[0]
	stateDir := t.TempDir()

	var once sync.Once
	stopDB := func() { once.Do(srv.Stop) }
	e.afterRefresh.Store(&stopDB)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSharedStoreSpillVictimInstance$")
	cmd.Env = append(os.Environ(), victimDSN+"="+dsn, victimTokenURL+"="+e.TokenURL(), victimStateDir+"="+stateDir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	loggedIn := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "logged in" {
				loggedIn <- true
				io.Copy(io.Discard, stdout)
				return
			}
		}
		loggedIn <- false
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case ok := <-loggedIn:
		if !ok {
			t.Fatal("the holder ended without logging in")
		}
	case <-timer.C:
		t.Fatal("the holder did not log in within 30s")
	}
	e.afterRefresh.Store(nil)
	cmd.Process.Kill()
	cmd.Wait()

	restartedSavesSpill(t, srv, e, dsn, stateDir,
		auth.ManagerOptions{RefreshMargin: time.Minute, PendingRetry: 100 * time.Millisecond}, other, acct)
}

// TestSharedStoreSpillOtherInstanceFirst: after the outage, another
// instance needs a refresh of the account before the holder has saved
// its spilled record. The other instance presents the dead refresh token
// and gets invalid_grant, but the account is not lost: the refusal comes
// while the database records an unfinished refresh, so the login gets
// Unavailable and nothing is written or marked for re-authorization. Once
// the holder saves its record, the other instance works from it.
func TestSharedStoreSpillOtherInstanceFirst(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, time.Hour)
	ctx := t.Context()
	other := newInstance(t, ctx, dsn, time.Minute)
	acct := sharedAccounts(t, e, other.store, 1)[0]
	stateDir := t.TempDir()
	// No background saves: the test says when the holder saves.
	holder := newSpillInstance(t, dsn, stateDir, auth.ManagerOptions{RefreshMargin: time.Minute,
		SaveRetryFor: 50 * time.Millisecond, PendingRetry: -1})

	if err := rotateWhileDatabaseStops(t, srv, e, holder.instance, acct); err != nil {
		t.Fatalf("login whose rotated token the database could not take: %v", err)
	}
	srv.Started()

	_, err := other.login(ctx, acct)
	var ae *auth.Error
	if !errors.As(err, &ae) || ae.Kind != auth.Unavailable {
		t.Fatalf("the other instance's login before the holder saved = %v; want Unavailable (the account is not lost)", err)
	}
	if !strings.Contains(ae.Message, "another instance") {
		t.Errorf("message %q does not say that another instance may hold the token", ae.Message)
	}

	if left, err := holder.mgr.SavePending(ctx); err != nil || left != 0 {
		t.Fatalf("SavePending = %d, %v; want 0 left", left, err)
	}
	if _, ok := spilled(t, stateDir, acct.Login); ok {
		t.Error("the spill file is still there after the save")
	}
	if err := forceRefresh(t, other, acct); err != nil {
		t.Fatalf("refresh on the other instance after the holder saved: %v", err)
	}
	if err := forceRefresh(t, holder.instance, acct); err != nil {
		t.Fatalf("refresh on the holder after its save: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.invalidGrant != 1 {
		t.Errorf("%d invalid_grant answers; want 1 (the other instance's try before the save)", e.invalidGrant)
	}
}
