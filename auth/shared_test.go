package auth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore/pgtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// countingEndpoint is a rotating token endpoint (authtest, Rotate: true:
// every refresh kills the refresh token it used) that records, per user,
// when each successful refresh was answered, and counts invalid_grant
// answers.
type countingEndpoint struct {
	*authtest.Server
	http *httptest.Server

	// hold, if set, is called for each refresh request of the victim
	// instance, which then waits until the victim dies.
	hold atomic.Pointer[func()]
	// afterRefresh, if set, is called after a refresh succeeded (the
	// refresh token it used is dead) and before the answer is sent.
	afterRefresh atomic.Pointer[func()]

	mu           sync.Mutex
	users        []string
	refreshes    map[string][]time.Time
	invalidGrant int
}

func newCountingEndpoint(t testing.TB, ttl time.Duration) *countingEndpoint {
	t.Helper()
	e := &countingEndpoint{
		Server:    authtest.New(authtest.Options{ClientID: "id", ClientSecret: "secret", Rotate: true, AccessTTL: ttl}),
		refreshes: map[string][]time.Time{},
	}
	inner := e.Handler()
	e.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hold := e.hold.Load(); hold != nil && r.URL.Query().Get("instance") == "victim" {
			// A refresh by the instance about to be killed: it never
			// reaches the endpoint, as if the process died before the
			// provider answered.
			io.Copy(io.Discard, r.Body) // so that the server notices the client's death
			(*hold)()
			<-r.Context().Done()
			return
		}
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		e.record(rec)
		if after := e.afterRefresh.Load(); after != nil && rec.Code == http.StatusOK {
			(*after)()
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	}))
	e.URL = e.http.URL
	t.Cleanup(func() { e.http.Close(); e.Close() })
	return e
}

func (e *countingEndpoint) record(rec *httptest.ResponseRecorder) {
	var body struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	json.Unmarshal(rec.Body.Bytes(), &body)
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if body.Error == "invalid_grant" {
		e.invalidGrant++
		return
	}
	for _, u := range e.users {
		if e.Validate(u, body.AccessToken) == nil {
			e.refreshes[u] = append(e.refreshes[u], now)
			return
		}
	}
}

// grant registers user and returns a first refresh token.
func (e *countingEndpoint) grant(user string) string {
	e.mu.Lock()
	e.users = append(e.users, user)
	e.mu.Unlock()
	return e.Grant(user)
}

// instance is one proxy's token manager on the shared database.
type instance struct {
	store *tokenstore.Store
	mgr   *auth.Manager
}

func newInstance(t *testing.T, ctx context.Context, dsn string, margin time.Duration) *instance {
	t.Helper()
	return newInstanceLogging(t, ctx, dsn, margin, slog.New(slog.DiscardHandler))
}

func newInstanceLogging(t *testing.T, ctx context.Context, dsn string, margin time.Duration, logger *slog.Logger) *instance {
	t.Helper()
	b, err := pgstore.Open(dsn, &pgstore.Options{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	store, err := tokenstore.NewWithBackend(b, &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: store, RefreshMargin: margin, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	return &instance{store: store, mgr: mgr}
}

func (in *instance) login(ctx context.Context, acct *config.Account) (*auth.Account, error) {
	a, err := in.mgr.Unlock(ctx, acct, managerPassword)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = a.Token(ctx)
	return a, err
}

// sharedConfigs returns n accounts userNN on tokenURL.
func sharedConfigs(tokenURL string, n int) []*config.Account {
	accts := make([]*config.Account, n)
	for i := range accts {
		login := fmt.Sprintf("user%02d", i)
		accts[i] = &config.Account{Login: login, Mailbox: login + "@contoso.test", Grant: "refresh_token",
			Provider: &config.Provider{Name: "lab", Type: "generic", TokenURL: tokenURL,
				ClientID: "id", ClientSecret: "secret", Scopes: []string{"imap"}}}
	}
	return accts
}

// sharedAccounts returns n accounts on e, each with a fresh grant stored.
func sharedAccounts(t *testing.T, e *countingEndpoint, store *tokenstore.Store, n int) []*config.Account {
	t.Helper()
	accts := sharedConfigs(e.TokenURL(), n)
	for _, a := range accts {
		if _, err := store.Create(a.Login, managerPassword, tokenstore.Secret{RefreshToken: e.grant(a.Mailbox)}); err != nil {
			t.Fatal(err)
		}
	}
	return accts
}

// TestSharedStoreThreeInstances: three instances share one database
// against an endpoint that kills every refresh token it rotates, with
// access tokens that leave a one-second window. Under steady logins on
// all three, every login succeeds, no refresh token is ever reused
// (no invalid_grant), and each account refreshes once per expiry across
// the three: no two refreshes of an account inside one token's window.
func TestSharedStoreThreeInstances(t *testing.T) {
	const (
		ttl      = 2 * time.Second
		margin   = time.Second
		window   = ttl - margin
		accounts = 20
		workers  = 4 // per instance
	)
	duration := 5 * time.Second // about 20 accounts × 5 windows = 100 refreshes
	if testing.Short() {
		duration = 2 * time.Second
	}
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, ttl)
	ctx := t.Context()
	var insts []*instance
	for range 3 {
		insts = append(insts, newInstance(t, ctx, dsn, margin))
	}
	accts := sharedAccounts(t, e, insts[0].store, accounts)

	var logins, failures atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(duration)
	var wg sync.WaitGroup
	for i, in := range insts {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := i*workers + w; time.Now().Before(deadline); n++ {
					if _, err := in.login(ctx, accts[n%accounts]); err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
					logins.Add(1)
				}
			}()
		}
	}
	wg.Wait()

	e.mu.Lock()
	defer e.mu.Unlock()
	total := 0
	for _, a := range accts {
		times := e.refreshes[a.Mailbox]
		total += len(times)
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < window*8/10 {
				t.Errorf("%s refreshed twice within %v (a token's window is %v): duplicate refresh", a.Login, gap, window)
			}
		}
	}
	t.Logf("%d logins over 3 instances in %v, %d refreshes at the endpoint (%d accounts, %v windows), %d invalid_grant, %d failed logins",
		logins.Load(), duration, total, accounts, window, e.invalidGrant, failures.Load())
	if e.invalidGrant != 0 {
		t.Errorf("%d invalid_grant answers; want 0", e.invalidGrant)
	}
	if f := failures.Load(); f != 0 {
		t.Errorf("%d logins failed; first: %v", f, firstErr.Load())
	}
	if min := accounts * int(duration/window) / 2; total < min {
		t.Errorf("%d refreshes; want at least %d: tokens were not renewed as they expired", total, min)
	}
}

// TestSharedStoreDatabaseRestart stops the database under two instances:
// logins with a valid cached access token go on, a login that needs a
// refresh and one never seen by the instance get Unavailable, and once
// the database is back every login works again, with no restart.
func TestSharedStoreDatabaseRestart(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, time.Hour)
	ctx := t.Context()
	a, b := newInstance(t, ctx, dsn, time.Minute), newInstance(t, ctx, dsn, time.Minute)
	accts := sharedAccounts(t, e, a.store, 3)
	warm, needsRefresh, cold := accts[0], accts[1], accts[2]
	if _, err := a.login(ctx, warm); err != nil {
		t.Fatal(err)
	}
	acct, err := a.login(ctx, needsRefresh)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := acct.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// b got a's access token through the record: no refresh of its own.
	if _, err := b.login(ctx, warm); err != nil {
		t.Fatal(err)
	}
	if n := e.RefreshCount(warm.Mailbox); n != 1 {
		t.Fatalf("%d refreshes of %s by two instances; want 1", n, warm.Login)
	}

	srv.Stop()
	for _, in := range []*instance{a, b} {
		if _, err := in.login(ctx, warm); err != nil {
			t.Errorf("login with a cached access token while the database is down: %v", err)
		}
	}
	acct.Refused(tok) // the upstream refused it: the next login needs a refresh
	var ae *auth.Error
	if _, err := a.login(ctx, needsRefresh); !errors.As(err, &ae) || ae.Kind != auth.Unavailable {
		t.Errorf("login needing a refresh while the database is down = %v; want Unavailable", err)
	}
	if _, err := a.login(ctx, cold); !errors.As(err, &ae) || ae.Kind != auth.Unavailable {
		t.Errorf("first login of an account while the database is down = %v; want Unavailable", err)
	}
	if n := e.RefreshCount(needsRefresh.Mailbox); n != 1 {
		t.Errorf("%d refreshes of %s; want 1: no refresh without the store", n, needsRefresh.Login)
	}

	srv.Started()
	for _, in := range []*instance{a, b} {
		for _, acct := range accts {
			if _, err := in.login(ctx, acct); err != nil {
				t.Errorf("login of %s after the database came back: %v", acct.Login, err)
			}
		}
	}
	if e.invalidGrant != 0 {
		t.Errorf("%d invalid_grant answers; want 0", e.invalidGrant)
	}
	if n := e.RefreshCount(needsRefresh.Mailbox); n != 2 {
		t.Errorf("%d refreshes of %s; want 2", n, needsRefresh.Login)
	}
}

// Environment of TestSharedStoreVictimInstance.
const (
	victimDSN      = "IMAP_OAUTH_PROXY_TEST_VICTIM_DSN"
	victimTokenURL = "IMAP_OAUTH_PROXY_TEST_VICTIM_TOKEN_URL"
	victimAccounts = "IMAP_OAUTH_PROXY_TEST_VICTIM_ACCOUNTS"
)

// TestSharedStoreVictimInstance is the instance that
// TestSharedStoreKilledMidRefresh runs in a child process and kills: it
// logs in to every account in turn until it is killed.
func TestSharedStoreVictimInstance(t *testing.T) {
	dsn := os.Getenv(victimDSN)
	if dsn == "" {
		t.Skip("run by TestSharedStoreKilledMidRefresh")
	}
	n, err := strconv.Atoi(os.Getenv(victimAccounts))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	in := newInstance(t, ctx, dsn, time.Second)
	accts := sharedConfigs(os.Getenv(victimTokenURL), n)
	for i := 0; ; i++ {
		in.login(ctx, accts[i%n])
	}
}

// TestSharedStoreKilledMidRefresh kills (SIGKILL) an instance in the
// middle of a refresh, again and again, while two others go on: the dead
// holder's refresh lock is freed by the database, nobody reuses a dead
// refresh token, and every account keeps working.
func TestSharedStoreKilledMidRefresh(t *testing.T) {
	const (
		ttl      = 2 * time.Second
		margin   = time.Second
		accounts = 5
	)
	kills := 5
	if testing.Short() {
		kills = 2
	}
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, ttl)
	ctx := t.Context()
	a, b := newInstance(t, ctx, dsn, margin), newInstance(t, ctx, dsn, margin)
	accts := sharedAccounts(t, e, a.store, accounts)

	stop := make(chan struct{})
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for _, in := range []*instance{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := in.login(ctx, accts[i%accounts]); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}

	for k := range kills {
		inFlight := make(chan struct{})
		var once sync.Once
		hold := func() { once.Do(func() { close(inFlight) }) }
		e.hold.Store(&hold)
		cmd := exec.Command(os.Args[0], "-test.run=^TestSharedStoreVictimInstance$")
		cmd.Env = append(os.Environ(), victimDSN+"="+dsn, victimTokenURL+"="+e.TokenURL()+"?instance=victim",
			victimAccounts+"="+strconv.Itoa(accounts))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.NewTimer(30 * time.Second)
		select {
		case <-inFlight:
		case <-timer.C:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("kill %d: the victim did not start a refresh within 30s", k+1)
		}
		timer.Stop()
		cmd.Process.Kill()
		cmd.Wait()
	}
	e.hold.Store(nil)
	close(stop)
	wg.Wait()

	// Every account still works, from both survivors.
	for _, in := range []*instance{a, b} {
		for _, acct := range accts {
			if _, err := in.login(ctx, acct); err != nil {
				t.Errorf("login of %s after the kills: %v", acct.Login, err)
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.invalidGrant != 0 {
		t.Errorf("%d invalid_grant answers; want 0", e.invalidGrant)
	}
	if f := failures.Load(); f != 0 {
		t.Errorf("%d logins of the survivors failed; first: %v", f, firstErr.Load())
	}
	t.Logf("%d kills of an instance mid-refresh; survivors: 0 invalid_grant, %d failed logins", kills, failures.Load())
}

// TestSharedStoreRestartUnderLoad restarts PostgreSQL while two instances
// serve logins: the only failures are Unavailable (refreshes that need the
// store), no refresh token is reused, and every account works afterwards
// without help.
func TestSharedStoreRestartUnderLoad(t *testing.T) {
	const accounts = 10
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	// Access tokens last 5 s and are refreshed 1 s early: after a refresh,
	// 4 s of cached logins, then refreshes are due.
	e := newCountingEndpoint(t, 5*time.Second)
	ctx := t.Context()
	insts := []*instance{newInstance(t, ctx, dsn, time.Second), newInstance(t, ctx, dsn, time.Second)}
	accts := sharedAccounts(t, e, insts[0].store, accounts)

	stop := make(chan struct{})
	progress := make(chan struct{}, 1)
	var ok, unavailable, other atomic.Int64
	var otherErr atomic.Value
	var wg sync.WaitGroup
	for _, in := range insts {
		for w := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					_, err := in.login(ctx, accts[i%accounts])
					var ae *auth.Error
					switch {
					case err == nil:
						ok.Add(1)
					case errors.As(err, &ae) && ae.Kind == auth.Unavailable:
						unavailable.Add(1)
					default:
						other.Add(1)
						otherErr.CompareAndSwap(nil, err)
					}
					select {
					case progress <- struct{}{}:
					default:
					}
				}
			}()
		}
	}
	// Let every account refresh at least once, then restart quickly, then
	// stay down until cached logins went on and refreshes were refused.
	for _, acct := range accts {
		if _, err := insts[0].login(ctx, acct); err != nil {
			t.Fatal(err)
		}
	}
	srv.Restart()
	// Fresh tokens for every account just before the database goes down,
	// so that cached logins can go on however long the restart took on a
	// loaded machine.
	for _, acct := range accts {
		if err := forceRefresh(t, insts[0], acct); err != nil {
			t.Fatalf("refresh of %s after the restart: %v", acct.Login, err)
		}
	}
	srv.Stop()
	okBefore := ok.Load()
	timeout := time.NewTimer(30 * time.Second)
	for unavailable.Load() == 0 || ok.Load() == okBefore {
		select {
		case <-progress:
		case <-timeout.C:
			t.Fatalf("database down: %d logins ok, %d Unavailable; want some of each", ok.Load()-okBefore, unavailable.Load())
		}
	}
	timeout.Stop()
	downOK := ok.Load() - okBefore
	srv.Started()
	close(stop)
	wg.Wait()
	for _, in := range insts {
		for _, acct := range accts {
			if _, err := in.login(ctx, acct); err != nil {
				t.Errorf("login of %s after the restarts: %v", acct.Login, err)
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	t.Logf("restarts under load: %d logins ok (%d while down), %d Unavailable, %d other failures, %d invalid_grant",
		ok.Load(), downOK, unavailable.Load(), other.Load(), e.invalidGrant)
	if e.invalidGrant != 0 {
		t.Errorf("%d invalid_grant answers; want 0", e.invalidGrant)
	}
	if n := other.Load(); n != 0 {
		t.Errorf("%d logins failed otherwise than Unavailable; first: %v", n, otherErr.Load())
	}
}

// TestSharedStorePasswdSeenAtOnce: a password change or a new
// authorization made through one instance holds on the others at their
// next login, with no notification.
func TestSharedStorePasswdSeenAtOnce(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, time.Hour)
	ctx := t.Context()
	a, b := newInstance(t, ctx, dsn, time.Minute), newInstance(t, ctx, dsn, time.Minute)
	acct := sharedAccounts(t, e, a.store, 1)[0]
	if _, err := b.login(ctx, acct); err != nil {
		t.Fatal(err)
	}
	u, err := a.store.Open(acct.Login, managerPassword)
	if err != nil {
		t.Fatal(err)
	}
	const newPassword = "the new local password"
	if err := a.store.SetPassword(u, newPassword); err != nil {
		t.Fatal(err)
	}
	var ae *auth.Error
	if _, err := b.mgr.Unlock(ctx, acct, managerPassword); !errors.As(err, &ae) || ae.Kind != auth.AuthenticationFailed {
		t.Fatalf("old password on the other instance after passwd = %v; want AuthenticationFailed", err)
	}
	if _, err := b.mgr.Unlock(ctx, acct, newPassword); err != nil {
		t.Fatalf("new password on the other instance: %v", err)
	}

	// A new authorization: the other instance drops its token source.
	if _, err := a.store.Create(acct.Login, managerPassword, tokenstore.Secret{RefreshToken: e.Grant(acct.Mailbox)}); err != nil {
		t.Fatal(err)
	}
	before := e.RefreshCount(acct.Mailbox)
	if _, err := b.login(ctx, acct); err != nil {
		t.Fatalf("login after a new authorization: %v", err)
	}
	if got := e.RefreshCount(acct.Mailbox); got != before+1 {
		t.Fatalf("%d refreshes after a new authorization; want %d (from the new grant)", got, before+1)
	}
}

// signalHandler discards log records, and signals on ch when one has the
// message msg.
type signalHandler struct {
	slog.Handler
	msg string
	ch  chan struct{}
}

func (h signalHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h signalHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// TestSharedStoreRotationSavedAfterOutage stops the database after the
// provider rotated a refresh token and before the instance saved it: the
// instance keeps trying, saves it once the database is back, and the
// other instance then uses the rotated token, never the dead one.
func TestSharedStoreRotationSavedAfterOutage(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	e := newCountingEndpoint(t, time.Hour)
	ctx := t.Context()
	retrying := make(chan struct{}, 1)
	a := newInstanceLogging(t, ctx, dsn, time.Minute, slog.New(signalHandler{slog.DiscardHandler,
		"saving the refreshed token failed; retrying", retrying}))
	b := newInstance(t, ctx, dsn, time.Minute)
	acct := sharedAccounts(t, e, a.store, 1)[0]

	var once sync.Once
	stopDB := func() { once.Do(srv.Stop) }
	e.afterRefresh.Store(&stopDB)
	done := make(chan error, 1)
	go func() {
		_, err := a.login(ctx, acct)
		done <- err
	}()
	select {
	case <-retrying:
	case err := <-done:
		t.Fatalf("login ended before the save was retried: %v", err)
	}
	e.afterRefresh.Store(nil)
	srv.Started()
	if err := <-done; err != nil {
		t.Fatalf("login whose save waited for the database: %v", err)
	}
	// Force b to refresh: it must use the rotated token a saved.
	if err := forceRefresh(t, b, acct); err != nil {
		t.Fatalf("refresh on the other instance after the outage: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.invalidGrant != 0 {
		t.Errorf("%d invalid_grant answers; want 0", e.invalidGrant)
	}
}
