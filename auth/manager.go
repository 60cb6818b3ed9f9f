package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
)

// ManagerOptions configure a Manager. Store is required.
type ManagerOptions struct {
	// Store holds the encrypted token records.
	Store *tokenstore.Store
	// HTTPClient talks to token endpoints. If nil, a client with a
	// TokenTimeout deadline per request is used.
	HTTPClient *http.Client
	// TokenTimeout bounds one token endpoint request when HTTPClient is nil.
	// If zero, 20 seconds.
	TokenTimeout time.Duration
	// RefreshMargin is how long an access token must still be valid to be
	// handed out; shorter-lived tokens are refreshed first. If zero,
	// 15 minutes.
	RefreshMargin time.Duration
	// CacheSize bounds the number of accounts whose access tokens are kept in
	// memory. If zero, 1024.
	CacheSize int
	// Logger receives token refresh events. If nil, slog.Default().
	Logger *slog.Logger
	// Health, if not nil, hears of every token request's outcome.
	Health *health.Tracker
	// SaveRetryFor bounds how long saving a refreshed token to an
	// unreachable shared store is retried before the login fails, when the
	// store has no spill directory. If zero, 15 seconds.
	SaveRetryFor time.Duration
	// PendingRetry is the longest wait between the background tries to
	// save the records spilled while a shared store was unreachable (see
	// shared.go). If zero, 30 seconds; if negative, there are no
	// background tries (SavePending and the accounts' refreshes save them).
	PendingRetry time.Duration
}

// Manager turns a local login and password into an access token for the
// account's upstream mailbox. It keeps one token source per account, so
// concurrent logins of one account share one refresh, and persists rotated
// refresh tokens before handing out the access token that came with them.
// It is safe for concurrent use.
type Manager struct {
	ctx    context.Context // long-lived: token sources keep it for every refresh
	store  *tokenstore.Store
	margin time.Duration
	logger *slog.Logger
	health *health.Tracker

	refreshes [len(refreshOutcomes)]atomic.Int64

	saveRetryFor time.Duration
	pending      pendingSaves // records spilled while a shared store was unreachable

	mu      sync.Mutex // serializes get-or-create of sources
	sources *lru.Cache[string, *Account]
}

// NewManager returns a Manager whose token refreshes run under ctx: cancel
// it only when the daemon stops.
func NewManager(ctx context.Context, opts *ManagerOptions) (*Manager, error) {
	if opts == nil || opts.Store == nil {
		return nil, errors.New("auth: ManagerOptions.Store is required")
	}
	client := opts.HTTPClient
	if client == nil {
		timeout := opts.TokenTimeout
		if timeout <= 0 {
			timeout = 20 * time.Second
		}
		client = &http.Client{Timeout: timeout}
	}
	margin := opts.RefreshMargin
	if margin <= 0 {
		margin = 15 * time.Minute
	}
	size := opts.CacheSize
	if size <= 0 {
		size = 1024
	}
	sources, err := lru.New[string, *Account](size)
	if err != nil {
		return nil, fmt.Errorf("creating token source cache: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	m := &Manager{
		ctx:          context.WithValue(ctx, oauth2.HTTPClient, client),
		store:        opts.Store,
		margin:       margin,
		logger:       logger,
		health:       opts.Health,
		sources:      sources,
		saveRetryFor: opts.SaveRetryFor,
	}
	if m.saveRetryFor <= 0 {
		m.saveRetryFor = saveRetryFor
	}
	m.startPending(opts.PendingRetry)
	return m, nil
}

// Unlock checks password against login's token record and returns the
// account's token source. A wrong password, a login without a record, a
// refresh_token account whose record holds no refresh token and an
// unknown grant all fail with Kind AuthenticationFailed or
// AuthorizationFailed without contacting any server.
//
// For the app-only grants (client_credentials, service_account) the record
// holds no refresh token: it only proves the local password, and the token
// source gets its tokens from the provider's client credentials or the
// service account key.
//
// ctx is the login's: a key derivation that cannot start before it is
// done, or within the store's KDF queue bound, fails with Kind Unavailable
// without the password being checked.
func (m *Manager) Unlock(ctx context.Context, acct *config.Account, password string) (*Account, error) {
	return m.unlock(ctx, acct, password, false)
}

// UnlockCached is Unlock for a password whose derived key is cached: it
// never runs the KDF, and fails with an error matching
// tokenstore.ErrNotCached for any other password, right or wrong.
func (m *Manager) UnlockCached(acct *config.Account, password string) (*Account, error) {
	return m.unlock(context.Background(), acct, password, true)
}

func (m *Manager) unlock(ctx context.Context, acct *config.Account, password string, cachedOnly bool) (*Account, error) {
	if !acct.Grant.Delegated() && !acct.Grant.AppOnly() {
		return nil, &Error{Kind: AuthorizationFailed,
			Message: fmt.Sprintf("grant %q is not supported by this build", acct.Grant)}
	}
	var rec *tokenstore.Unlocked
	var err error
	if cachedOnly {
		rec, err = m.store.OpenCached(acct.Login, password)
	} else {
		rec, err = m.store.OpenContext(ctx, acct.Login, password)
	}
	switch {
	case errors.Is(err, tokenstore.ErrNotCached):
		return nil, err
	case errors.Is(err, tokenstore.ErrKDFBusy) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return nil, &Error{Kind: Unavailable, Message: "too many logins being checked at once; retry shortly", Err: err}
	case errors.Is(err, tokenstore.ErrWrongPassword):
		return nil, &Error{Kind: AuthenticationFailed, Message: "authentication failed", Err: err}
	case errors.Is(err, tokenstore.ErrNoRecord) && cachedOnly:
		return nil, fmt.Errorf("%w: %w", tokenstore.ErrNotCached, err)
	case errors.Is(err, tokenstore.ErrNoRecord):
		// Answer as slowly as a wrong password.
		if err := m.store.Decoy(ctx, password); err != nil {
			return nil, &Error{Kind: Unavailable, Message: "too many logins being checked at once; retry shortly", Err: err}
		}
		// The collector sees the same answer as for a wrong password, so a
		// guesser learns nothing; the log names the fix.
		return nil, &Error{Kind: AuthenticationFailed, Message: "authentication failed",
			Err: fmt.Errorf("no token record (run: imap-oauth-proxy authorize %s): %w", acct.Login, err)}
	case err != nil:
		return nil, &Error{Kind: Unavailable, Message: "token store unavailable", Err: err}
	}
	if acct.Grant.Delegated() && rec.Secret.RefreshToken == "" {
		return nil, &Error{Kind: AuthorizationFailed, Message: fmt.Sprintf(
			"no refresh token stored for %s (its record was made for an app-only grant); run: imap-oauth-proxy authorize %s", acct.Login, acct.Login)}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.sources.Get(acct.Login); ok && a.matches(acct, rec.Info.ID, rec.Info.SecretGeneration) {
		// Also after passwd: a new password does not change the secret,
		// and this account holds the newest refresh token.
		return a, nil
	}
	// A new authorization (new record ID), a secret rewritten by another
	// process (a newer secret generation), a changed provider, or a cold
	// cache: start from what is on disk.
	a, err := newAccount(m, acct, rec)
	if err != nil {
		return nil, err
	}
	m.sources.Add(acct.Login, a)
	return a, nil
}

// Account is one account's token source: the newest refresh token, the
// cached access token, and the record it persists rotations to. It is safe
// for concurrent use.
type Account struct {
	m        *Manager
	login    string
	mailbox  string
	grant    config.Grant
	recordID string
	provider config.Provider // copy: a reload never changes a running source

	mu    sync.Mutex
	reuse oauth2.TokenSource // ReuseTokenSource over source; replaced by Refused
	// served is the last token reuse returned. While it is Valid (reuse
	// sets its expiry delta to the refresh margin), Token returns it
	// without a goroutine; Refused clears it along with reuse.
	served     *oauth2.Token
	source     oauth2.TokenSource // *persistingSource, or *appSource for app-only grants
	generation uint64             // newest secret generation of the record this account wrote or read
	revoked    error              // sticky AuthorizationFailed after invalid_grant, until the record changes
	heldUntil  time.Time          // if not zero, revoked holds only until then (a save may be pending elsewhere)
	lastAccess string             // newest access token, so Refused ignores stale refusals
	refused    string             // access token the upstream refused: never taken from a shared record again
	refreshN   int                // refreshes attempted, for tests
}

func newAccount(m *Manager, acct *config.Account, rec *tokenstore.Unlocked) (*Account, error) {
	a := &Account{
		m:          m,
		login:      acct.Login,
		mailbox:    acct.Mailbox,
		grant:      acct.Grant,
		recordID:   rec.Info.ID,
		generation: rec.Info.SecretGeneration,
		provider:   *acct.Provider,
	}
	if acct.Grant.Delegated() {
		a.source = &persistingSource{
			account:      a,
			config:       oauth2Config(&a.provider),
			record:       rec,
			refreshToken: rec.Secret.RefreshToken,
			savedRT:      rec.Secret.RefreshToken,
		}
	} else {
		fetch, err := appFetcher(acct)
		if err != nil {
			return nil, err
		}
		a.source = &appSource{account: a, fetch: fetch}
	}
	// In a shared store, the access token another instance saved.
	seed := m.sharedAccess(rec.Secret, "")
	if seed != nil {
		a.lastAccess = seed.AccessToken
	}
	a.reuse = oauth2.ReuseTokenSourceWithExpiry(seed, a.source, m.margin)
	return a, nil
}

// matches reports whether a still serves acct as configured now, for the
// authorization stored under recordID, and has written or seen its secret
// generation.
func (a *Account) matches(acct *config.Account, recordID string, generation uint64) bool {
	p := acct.Provider
	return a.recordID == recordID && a.currentGeneration() >= generation &&
		a.grant == acct.Grant && a.mailbox == acct.Mailbox &&
		a.provider.Type == p.Type &&
		a.provider.TokenURL == p.TokenURL &&
		a.provider.ClientID == p.ClientID &&
		a.provider.ClientSecret == p.ClientSecret &&
		a.provider.ServiceAccountFile == p.ServiceAccountFile &&
		a.provider.ClientCertificateFile == p.ClientCertificateFile &&
		a.provider.ClientKeyFile == p.ClientKeyFile &&
		slices.Equal(a.provider.Scopes, p.Scopes) &&
		slices.Equal(a.provider.AppScopes, p.AppScopes)
}

func oauth2Config(p *config.Provider) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Scopes:       p.Scopes,
		Endpoint: oauth2.Endpoint{
			AuthURL:       p.AuthURL,
			TokenURL:      p.TokenURL,
			DeviceAuthURL: p.DeviceAuthURL,
			// Auto-detection retries every failure with the other style,
			// doubling requests on invalid_grant; params work everywhere.
			AuthStyle: oauth2.AuthStyleInParams,
		},
	}
}

// Token returns an access token valid for at least the refresh margin,
// refreshing it first when needed. Concurrent callers share one refresh.
// ctx bounds only the wait: a refresh that outlives it completes in the
// background and serves the next login.
func (a *Account) Token(ctx context.Context) (*oauth2.Token, error) {
	a.mu.Lock()
	ts, revoked, served := a.reuse, a.revoked, a.served
	if revoked != nil && !a.heldUntil.IsZero() && !time.Now().Before(a.heldUntil) {
		a.revoked, a.heldUntil, revoked = nil, time.Time{}, nil
	}
	a.mu.Unlock()
	if revoked != nil {
		return nil, revoked
	}
	if served.Valid() {
		// The cached token still has the margin left: what ts would
		// return, without a goroutine that only a refresh needs.
		return served, nil
	}
	type result struct {
		tok *oauth2.Token
		err error
	}
	done := make(chan result, 1)
	go func() {
		tok, err := ts.Token()
		if err == nil {
			a.mu.Lock()
			if a.reuse == ts { // not refused meanwhile
				a.served = tok
			}
			a.mu.Unlock()
		}
		done <- result{tok, err}
	}()
	select {
	case r := <-done:
		return r.tok, r.err
	case <-ctx.Done():
		return nil, &Error{Kind: Unavailable, Message: "token endpoint did not answer in time",
			Err: fmt.Errorf("waiting for token refresh: %w", ctx.Err())}
	}
}

// Refused drops tok from the cache after the upstream refused it, so the
// next Token call refreshes.
func (a *Account) Refused(tok *oauth2.Token) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if tok == nil || a.lastAccess != tok.AccessToken {
		return // already replaced by a concurrent login
	}
	a.lastAccess = ""
	a.refused = tok.AccessToken
	a.served = nil
	a.reuse = oauth2.ReuseTokenSourceWithExpiry(nil, a.source, a.m.margin)
}

// Refreshes returns how many token refreshes this account has attempted.
func (a *Account) Refreshes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refreshN
}

func (a *Account) currentGeneration() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.generation
}

// persistingSource refreshes through x/oauth2 and writes a rotated refresh
// token to the record before the access token that came with it is used.
// It is called only under ReuseTokenSource's mutex, so it needs no lock of
// its own.
type persistingSource struct {
	account *Account
	config  *oauth2.Config
	record  *tokenstore.Unlocked
	// refreshToken is the newest refresh token; savedRT the one on disk.
	// They differ only while a rotated token could not be saved yet.
	refreshToken, savedRT string
	// unfinished is when another refresh of the account started that
	// never saved its record, as the shared store said before this one
	// (MarkRefresh); zero if none.
	unfinished time.Time
}

func (p *persistingSource) Token() (*oauth2.Token, error) {
	a := p.account
	shared := a.m.store.Shared()
	if shared {
		// One refresh per account across the instances sharing the store:
		// under the account's lock, the newest record may already hold
		// what this refresh would fetch.
		release, tok, err := p.lockShared()
		if tok != nil || err != nil {
			return tok, err
		}
		defer release()
	}
	a.mu.Lock()
	a.refreshN++
	a.mu.Unlock()

	start := time.Now()
	// A token without an access token makes x/oauth2 refresh at once; its
	// own reuse layer (10 s expiry delta) must not hide our margin.
	tok, err := a.retrying(func() (*oauth2.Token, error) {
		return p.config.TokenSource(a.m.ctx, &oauth2.Token{RefreshToken: p.refreshToken}).Token()
	})
	elapsed := time.Since(start)
	if err != nil {
		authErr := classifyTokenError(a.login, &a.provider, a.grant, err)
		if shared {
			authErr = p.sharedFailure(err, authErr)
		}
		a.m.countRefresh(authErr.Kind.String())
		a.m.logger.Warn("token refresh failed", "login", a.login, "provider", a.provider.Name,
			"outcome", authErr.Kind.String(), "duration", elapsed, "err", err)
		if authErr.Kind == AuthorizationFailed && isRevocation(err) {
			a.mu.Lock()
			a.revoked = authErr
			a.mu.Unlock()
		}
		a.failed(authErr)
		return nil, authErr
	}
	if tok.RefreshToken != "" {
		// Kept even if saving fails: after a rotation the old one is dead.
		p.refreshToken = tok.RefreshToken
	}
	rotated := p.refreshToken != p.savedRT
	if rotated || shared {
		// Claim the generation this write will create before it exists on
		// disk: an Unlock that reads it meanwhile must keep using this
		// account, not build a second source that the next rotation kills.
		a.mu.Lock()
		a.generation = p.record.Info.SecretGeneration + 1
		a.mu.Unlock()
		secret := tokenstore.Secret{RefreshToken: p.refreshToken}
		if shared {
			secret.AccessToken, secret.Expiry = tok.AccessToken, tok.Expiry
		}
		save := func() error { return a.m.store.Update(p.record, secret) }
		if shared {
			save = func() error { return p.saveShared(secret, rotated) }
		}
		if err := save(); err != nil {
			// The next refresh uses the new token and tries to save again.
			a.m.logger.Error("saving rotated refresh token failed", "login", a.login, "err", err)
			return nil, &Error{Kind: Unavailable, Message: "cannot save the rotated refresh token", Err: err}
		}
		p.savedRT = p.refreshToken
	}
	a.mu.Lock()
	a.lastAccess = tok.AccessToken
	a.generation = p.record.Info.SecretGeneration
	a.mu.Unlock()
	a.m.countRefresh("OK")
	a.m.health.Refreshed(a.login, a.recordID, tok.Expiry, refreshExpiry(tok))
	a.m.logger.Info("token refreshed", "login", a.login, "provider", a.provider.Name,
		"duration", elapsed.Round(time.Millisecond), "expires_in", time.Until(tok.Expiry).Round(time.Second), "rotated", rotated)
	return tok, nil
}

// Transient token endpoint failures (network errors, timeouts, 5xx, 429,
// temporarily_unavailable) are retried refreshAttempts times in all, after
// refreshBackoff, doubling, or after the endpoint's Retry-After (at most
// maxRetryAfter). Anything else, invalid_grant above all, is final at once.
// A stored refresh token is never discarded for a transient failure.
const (
	refreshAttempts = 3
	refreshBackoff  = 500 * time.Millisecond
	maxRetryAfter   = 10 * time.Second
)

// retrying calls fetch until it succeeds, fails for good, or has been
// tried refreshAttempts times. It runs under ReuseTokenSource's mutex, so
// concurrent logins of the account wait for the same attempts.
func (a *Account) retrying(fetch func() (*oauth2.Token, error)) (*oauth2.Token, error) {
	wait := refreshBackoff
	for attempt := 1; ; attempt++ {
		tok, err := fetch()
		if err == nil || attempt == refreshAttempts || !isTransient(err) {
			return tok, err
		}
		delay := wait
		if after := retryAfter(err); after > 0 {
			delay = min(after, maxRetryAfter)
		}
		a.m.logger.Info("token endpoint failed; retrying", "login", a.login, "provider", a.provider.Name,
			"attempt", attempt, "retry_in", delay, "err", err)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-a.m.ctx.Done():
			timer.Stop()
			return nil, err
		}
		wait *= 2
	}
}

// isTransient reports whether a token request failure may pass by itself.
func isTransient(err error) bool {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		return re.ErrorCode == "temporarily_unavailable" || status >= 500 ||
			status == http.StatusTooManyRequests || status == http.StatusRequestTimeout
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded)
}

// retryAfter returns the delay a Retry-After header (in seconds) asks for.
func retryAfter(err error) time.Duration {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response == nil {
		return 0
	}
	secs, convErr := strconv.Atoi(strings.TrimSpace(re.Response.Header.Get("Retry-After")))
	if convErr != nil || secs < 0 {
		return 0
	}
	return time.Duration(secs) * time.Second
}

// refreshOutcomes are the label values of the token refresh counter.
var refreshOutcomes = [...]string{"OK", "AUTHORIZATIONFAILED", "UNAVAILABLE", "AUTHENTICATIONFAILED"}

func (m *Manager) countRefresh(outcome string) {
	for i, o := range refreshOutcomes {
		if o == outcome {
			m.refreshes[i].Add(1)
			return
		}
	}
}

// descRefreshes describes the token refresh counter.
var descRefreshes = prometheus.NewDesc("imap_oauth_proxy_token_refreshes_total",
	"Token endpoint requests (after retries) by outcome.", []string{"outcome"}, nil)

// Describe sends the description of the token refresh counter
// (prometheus.Collector).
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRefreshes
	ch <- descPendingSaves
}

// Collect sends the token refresh counter, by outcome
// (prometheus.Collector).
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	for i, o := range refreshOutcomes[:3] { // a refresh never fails AUTHENTICATIONFAILED
		ch <- prometheus.MustNewConstMetric(descRefreshes, prometheus.CounterValue, float64(m.refreshes[i].Load()), o)
	}
	ch <- prometheus.MustNewConstMetric(descPendingSaves, prometheus.GaugeValue, float64(m.pending.count.Load()))
}

// isRevocation reports whether err says the refresh token itself is dead.
func isRevocation(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == "invalid_grant"
}

// classifyTokenError turns a token endpoint failure into the collector's
// answer: dead grants and rejected clients need the operator
// (AuthorizationFailed), everything else may pass (Unavailable). The
// message is one line without secrets: what happened, the provider's
// reason (error code, AADSTS code), and what to do, from the advice table
// in grants_errors.go when the provider's code is known there. grant is
// the account's grant; the authorization flows (code, device code) pass
// config.GrantRefreshToken, the grant they set up.
func classifyTokenError(login string, p *config.Provider, grant config.Grant, err error) *Error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		f := decodeTokenFailure(re)
		reason := f.reason()
		switch {
		case f.code == "temporarily_unavailable" || f.status == 0 || f.status >= 500 ||
			f.status == http.StatusTooManyRequests || f.status == http.StatusRequestTimeout:
			return &Error{Kind: Unavailable, Err: err, Message: OneLine(fmt.Sprintf(
				"token endpoint unavailable (HTTP %d %s); retry later", f.status, reason), 400)}
		}
		if adv, ok := adviceFor(f, p, grant); ok {
			return &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
				"%s (%s); %s", fixText(adv.what, login, p), reason, fixText(adv.fix, login, p)), 400)}
		}
		switch {
		case grant.AppOnly() && (f.code == "invalid_grant" || f.code == "unauthorized_client"):
			return &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
				"token endpoint refused the %s grant (%s); check provider %s's credentials, then run: imap-oauth-proxy check %s",
				grant, reason, p.Name, login), 400)}
		case f.code == "invalid_grant" || f.code == "interaction_required" || f.code == "consent_required":
			return &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
				"authorization expired or revoked (%s); run: imap-oauth-proxy authorize %s", reason, login), 400)}
		case f.code == "invalid_client" || f.code == "unauthorized_client" || f.code == "invalid_scope":
			return &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
				"token endpoint rejected provider %s's client (%s); check its client_id and client secret", p.Name, reason), 400)}
		default:
			return &Error{Kind: AuthorizationFailed, Err: err, Message: OneLine(fmt.Sprintf(
				"token endpoint refused the request (HTTP %d %s)", f.status, reason), 400)}
		}
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: Unavailable, Err: err, Message: "token endpoint unreachable; retry later"}
	}
	return &Error{Kind: Unavailable, Err: err, Message: "token request failed; retry later"}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}

// Decoy costs what checking password against a record costs, for logins
// that have no account, so that timing does not reveal which logins exist.
//
// It returns an *Error of Kind Unavailable when the KDF queue did not let
// the derivation start, as Unlock does.
func (m *Manager) Decoy(ctx context.Context, password string) error {
	if err := m.store.Decoy(ctx, password); err != nil {
		return &Error{Kind: Unavailable, Message: "too many logins being checked at once; retry shortly", Err: err}
	}
	return nil
}

// Health returns the tracker of the accounts' health; nil if none.
func (m *Manager) Health() *health.Tracker { return m.health }

// failed records a token request that needs the operator.
func (a *Account) failed(err *Error) {
	if err.Kind == AuthorizationFailed {
		a.m.health.RefreshFailed(a.login, a.recordID)
	}
}

// refreshExpiry returns when tok's refresh token expires, if the token
// endpoint said so (Google's refresh_token_expires_in, for time-limited
// access).
func refreshExpiry(tok *oauth2.Token) time.Time {
	var secs float64
	switch v := tok.Extra("refresh_token_expires_in").(type) {
	case float64:
		secs = v
	case string:
		secs, _ = strconv.ParseFloat(v, 64)
	}
	if secs <= 0 {
		return time.Time{}
	}
	return time.Now().Add(time.Duration(secs) * time.Second)
}

// Info reads login's record metadata without a password
// (tokenstore.Store.Info).
func (m *Manager) Info(login string) (tokenstore.RecordInfo, error) { return m.store.Info(login) }
