package auth_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

const managerPassword = "local password"

// managerRig is a Manager over a fresh store with one account per token
// endpoint.
type managerRig struct {
	t     *testing.T
	store *tokenstore.Store
	mgr   *auth.Manager
}

func newManagerRig(t *testing.T) *managerRig {
	t.Helper()
	store, err := tokenstore.New(t.TempDir(), &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := auth.NewManager(t.Context(), &auth.ManagerOptions{Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &managerRig{t: t, store: store, mgr: mgr}
}

// account configures login against tokens and stores a fresh grant.
func (r *managerRig) account(login string, tokens *authtest.Server) *config.Account {
	r.t.Helper()
	acct := &config.Account{Login: login, Mailbox: login + "@contoso.test", Grant: "refresh_token",
		Provider: &config.Provider{Name: "lab-" + login, Type: "generic", TokenURL: tokens.TokenURL(),
			ClientID: "id", ClientSecret: "secret", Scopes: []string{"imap"}}}
	if _, err := r.store.Create(login, managerPassword, tokenstore.Secret{RefreshToken: tokens.Grant(acct.Mailbox)}); err != nil {
		r.t.Fatal(err)
	}
	return acct
}

// passwd changes login's local password from managerPassword to
// newPassword as the passwd command does: through a store of its own on
// the same directory, not through the Manager's. It returns that store.
func (r *managerRig) passwd(login, newPassword string) *tokenstore.Store {
	r.t.Helper()
	cli, err := tokenstore.New(r.store.Dir(), &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		r.t.Fatal(err)
	}
	u, err := cli.Open(login, managerPassword)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := cli.SetPassword(u, newPassword); err != nil {
		r.t.Fatal(err)
	}
	return cli
}

func (r *managerRig) token(acct *config.Account) error {
	r.t.Helper()
	a, err := r.mgr.Unlock(context.Background(), acct, managerPassword)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.t.Context(), 30*time.Second)
	defer cancel()
	_, err = a.Token(ctx)
	return err
}

func newTokens(t *testing.T) *authtest.Server {
	s := authtest.NewServer(authtest.Options{ClientID: "id", ClientSecret: "secret", Rotate: true})
	t.Cleanup(s.Close)
	return s
}

// TestTransientFailuresRetried: 5xx and 429 are retried with back-off and
// the login succeeds; a longer outage gives Unavailable and keeps the
// stored token, so the next login works.
func TestTransientFailuresRetried(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	acct := r.account("collector", tokens)

	tokens.FailNext(2, 503)
	if err := r.token(acct); err != nil {
		t.Fatalf("two 503s then success: %v", err)
	}
	if n := tokens.Requests(); n != 3 {
		t.Errorf("%d token requests, want 3 (two retried failures)", n)
	}

	acct2 := r.account("throttled", tokens)
	tokens.FailNext(1, 429) // carries Retry-After: 1
	if err := r.token(acct2); err != nil {
		t.Fatalf("429 then success: %v", err)
	}

	acct3 := r.account("outage", tokens)
	before, _ := r.store.Open("outage", managerPassword)
	tokens.FailNext(3, 503)
	err := r.token(acct3)
	if auth.KindOf(err) != auth.Unavailable {
		t.Fatalf("three 503s: %v, want Unavailable", err)
	}
	after, openErr := r.store.Open("outage", managerPassword)
	if openErr != nil || after.Secret.RefreshToken != before.Secret.RefreshToken {
		t.Fatal("a transient failure changed the stored refresh token")
	}
	if err := r.token(acct3); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
}

// TestRevocationNotRetried: invalid_grant is final at the first answer.
func TestRevocationNotRetried(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	acct := r.account("collector", tokens)
	tokens.Revoke(acct.Mailbox)
	err := r.token(acct)
	if auth.KindOf(err) != auth.AuthorizationFailed {
		t.Fatalf("revoked: %v, want AuthorizationFailed", err)
	}
	if n := tokens.Requests(); n != 1 {
		t.Errorf("%d token requests for a revoked grant, want 1", n)
	}
}

// TestUnknownGrantRefused: an account whose grant this build does not
// know (a Config built by hand; Load refuses it) fails at Unlock, before
// the token endpoint is asked.
func TestUnknownGrantRefused(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	acct := r.account("collector", tokens)
	acct.Grant = "password"
	err := r.token(acct)
	if auth.KindOf(err) != auth.AuthorizationFailed || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("grant password: %v, want AuthorizationFailed, not supported", err)
	}
	if n := tokens.Requests(); n != 0 {
		t.Errorf("%d token requests for an unknown grant, want 0", n)
	}
}

// TestConcurrentLoginsShareOneRefresh: many simultaneous logins of one
// account with a cold cache cause exactly one refresh.
func TestConcurrentLoginsShareOneRefresh(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	acct := r.account("collector", tokens)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- r.token(acct)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent login: %v", err)
		}
	}
	if n := tokens.RefreshCount(acct.Mailbox); n != 1 {
		t.Errorf("%d refreshes for 32 concurrent logins, want 1", n)
	}
}

// TestSlowEndpointIsolated: an account whose token endpoint hangs does not
// hold up another account's refresh, and its own login gives up at its
// deadline with Unavailable.
func TestSlowEndpointIsolated(t *testing.T) {
	r := newManagerRig(t)
	slow, fast := newTokens(t), newTokens(t)
	slow.SetDelay(time.Hour) // answers only when closed
	stuck := r.account("stuck", slow)
	quick := r.account("quick", fast)

	stuckA, err := r.mgr.Unlock(context.Background(), stuck, managerPassword)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	stuckDone := make(chan error, 1)
	go func() {
		_, err := stuckA.Token(ctx)
		stuckDone <- err
	}()
	if err := r.token(quick); err != nil {
		t.Fatalf("the other account: %v", err)
	}
	select {
	case err := <-stuckDone:
		t.Fatalf("the stuck account returned early: %v", err)
	default:
	}
	cancel() // the login's deadline
	err = <-stuckDone
	if auth.KindOf(err) != auth.Unavailable || !errors.Is(err, context.Canceled) {
		t.Errorf("stuck login: %v, want Unavailable wrapping the deadline", err)
	}
}

// TestRefreshMetrics counts refreshes by outcome.
func TestRefreshMetrics(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	ok := r.account("ok", tokens)
	revoked := r.account("revoked", tokens)
	tokens.Revoke(revoked.Mailbox)
	r.token(ok)
	r.token(revoked)
	// A pedantic registry also checks Describe against Collect.
	text, err := testutil.CollectAndFormat(r.mgr, expfmt.TypeTextPlain, "imap_oauth_proxy_token_refreshes_total")
	if err != nil {
		t.Fatal(err)
	}
	buf := string(text)
	for _, want := range []string{
		`imap_oauth_proxy_token_refreshes_total{outcome="OK"} 1`,
		`imap_oauth_proxy_token_refreshes_total{outcome="AUTHORIZATIONFAILED"} 1`,
		`imap_oauth_proxy_token_refreshes_total{outcome="UNAVAILABLE"} 0`,
	} {
		if !strings.Contains(buf, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, buf)
		}
	}
}

// TestRotationSurvivesPasswordChange: passwd changes an account's local
// password (another process, another Store) while the daemon holds the
// account; the daemon's next refresh rotates the refresh token and must
// save it, so that logins with the new password keep working, also after
// a restart, while the old password is refused.
func TestRotationSurvivesPasswordChange(t *testing.T) {
	r := newManagerRig(t)
	// Access tokens shorter than the refresh margin: every Token refreshes.
	tokens := authtest.NewServer(authtest.Options{ClientID: "id", ClientSecret: "secret", Rotate: true, AccessTTL: time.Minute})
	t.Cleanup(tokens.Close)
	acct := r.account("collector", tokens)
	if err := r.token(acct); err != nil {
		t.Fatal(err)
	}

	const newPassword = "new local password"
	cli := r.passwd("collector", newPassword)

	a, err := r.mgr.Unlock(context.Background(), acct, newPassword)
	if err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := a.Token(ctx); err != nil {
		t.Fatalf("refresh after the password change: %v", err)
	}
	if _, err := r.mgr.Unlock(context.Background(), acct, managerPassword); err == nil {
		t.Error("the old password still logs in")
	}
	onDisk, err := cli.Open("collector", newPassword)
	if err != nil {
		t.Fatal(err)
	}
	if onDisk.Secret.RefreshToken != tokens.CurrentRefreshToken(acct.Mailbox) {
		t.Fatal("the rotated refresh token was not saved: the record holds a dead one")
	}

	// A restart: a new Manager reads the record with the new password.
	restarted, err := auth.NewManager(t.Context(), &auth.ManagerOptions{Store: cli, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	a, err = restarted.Unlock(context.Background(), acct, newPassword)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Token(ctx); err != nil {
		t.Errorf("refresh after a restart: %v", err)
	}
}

// TestPasswordChangeKeepsAccount: a new local password does not change
// the authorization, so the first login with it uses the access token
// already cached instead of refreshing.
func TestPasswordChangeKeepsAccount(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t) // access tokens for an hour: no refresh needed
	acct := r.account("collector", tokens)
	if err := r.token(acct); err != nil {
		t.Fatal(err)
	}
	before := tokens.RefreshCount(acct.Mailbox)

	u, err := r.store.Open("collector", managerPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.store.SetPassword(u, "new local password"); err != nil {
		t.Fatal(err)
	}
	a, err := r.mgr.Unlock(context.Background(), acct, "new local password")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := a.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := tokens.RefreshCount(acct.Mailbox) - before; n != 0 {
		t.Errorf("the login after passwd refreshed %d times; want the cached access token", n)
	}
}

// TestCachedTokenServedWithoutAllocating: while the cached access token
// has more than the refresh margin left, Token returns it at once, with no
// allocation (and so no goroutine) and no refresh; after Refused, the next
// Token refreshes.
func TestCachedTokenServedWithoutAllocating(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	acct := r.account("collector", tokens)
	a, err := r.mgr.Unlock(context.Background(), acct, managerPassword)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	first, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		tok, err := a.Token(ctx)
		if err != nil || tok != first {
			t.Fatalf("cached Token = %p, %v; want the first token", tok, err)
		}
	})
	if allocs != 0 {
		t.Errorf("a cached Token allocates %v times", allocs)
	}
	if n := tokens.RefreshCount(acct.Mailbox); n != 1 {
		t.Errorf("%d refreshes, want 1", n)
	}
	a.Refused(first)
	second, err := a.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if second.AccessToken == first.AccessToken || tokens.RefreshCount(acct.Mailbox) != 2 {
		t.Errorf("after Refused: same token %v, %d refreshes; want a new one from a second refresh",
			second.AccessToken == first.AccessToken, tokens.RefreshCount(acct.Mailbox))
	}
}

// TestPasswordChangeHoldsAtNextLogin: after passwd (another process), the
// next login with the old password is refused, also when that password
// opened the record just before and is in the key cache, and the new
// password logs in.
func TestPasswordChangeHoldsAtNextLogin(t *testing.T) {
	r := newManagerRig(t)
	tokens := newTokens(t)
	acct := r.account("collector", tokens)
	for range 2 { // the second from the key cache
		if _, err := r.mgr.Unlock(context.Background(), acct, managerPassword); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.mgr.UnlockCached(acct, managerPassword); err != nil {
		t.Fatalf("login from the key cache: %v", err)
	}
	const newPassword = "new local password"
	r.passwd("collector", newPassword)
	if _, err := r.mgr.UnlockCached(acct, managerPassword); !errors.Is(err, tokenstore.ErrNotCached) {
		t.Fatalf("old password from the key cache after passwd = %v; want ErrNotCached", err)
	}
	var ae *auth.Error
	if _, err := r.mgr.Unlock(context.Background(), acct, managerPassword); !errors.As(err, &ae) || ae.Kind != auth.AuthenticationFailed {
		t.Fatalf("old password after passwd = %v; want AuthenticationFailed", err)
	}
	if _, err := r.mgr.Unlock(context.Background(), acct, newPassword); err != nil {
		t.Fatalf("new password after passwd: %v", err)
	}
}
