package proxy_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

// testProxyOptions is what differs between the in-process proxies the
// tests start from a mapping file.
type testProxyOptions struct {
	// dir gets the mapping file, config.toml; its relative paths
	// (state_dir, ca_file, ...) are under dir.
	dir string
	// config is the mapping file's TOML text.
	config string
	// records are the token records the store starts with.
	records []tokenRecord
	// logger gets the proxy's and its token manager's logs.
	logger *slog.Logger
	// failureDelay is proxy.Options.FailureDelay; zero: the proxy's default.
	failureDelay time.Duration
	// peerUID is proxy.Options.PeerUID; nil: the kernel's answer.
	peerUID proxy.PeerUIDFunc
	// kdf are the argon2id parameters of new records; zero: testKDF.
	kdf tokenstore.KDFParams
}

func (o *testProxyOptions) kdfParams() tokenstore.KDFParams {
	if o.kdf == (tokenstore.KDFParams{}) {
		return testKDF
	}
	return o.kdf
}

// tokenRecord is a collector's login and local password and the refresh
// token stored for them.
type tokenRecord struct {
	login, password, refreshToken string
}

// testProxy is a proxy configured from a mapping file, with its token
// store, serving on loopback. Unless stopped, it is closed (every session
// cut at once) when the test ends.
type testProxy struct {
	cfg *config.Config
	// store is the handle the records were written through; the proxy's
	// token manager has a handle of its own, as the daemon's does.
	store *tokenstore.Store
	srv   *proxy.Server
	addr  string // host:port to dial
	port  int    // addr's port

	options testProxyOptions
	cancel  context.CancelFunc // the token manager's context
	served  chan error         // Serve's error, once it returned
	endOnce sync.Once
	endErr  error
}

// newTestProxy writes opts.config to opts.dir/config.toml, loads it,
// stores opts.records and starts a proxy for it.
func newTestProxy(t testing.TB, opts testProxyOptions) *testProxy {
	t.Helper()
	path := filepath.Join(opts.dir, "config.toml")
	if err := os.WriteFile(path, []byte(opts.config), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	store, err := tokenstore.New(cfg.Server.StateDir, &tokenstore.Options{KDF: opts.kdfParams()})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range opts.records {
		if _, err := store.Create(r.login, r.password, tokenstore.Secret{RefreshToken: r.refreshToken}); err != nil {
			t.Fatal(err)
		}
	}
	return startTestProxy(t, cfg, store, opts)
}

// startTestProxy starts a token manager, over a store handle of its own,
// and a proxy for cfg serving on a loopback port, as the daemon does.
func startTestProxy(t testing.TB, cfg *config.Config, store *tokenstore.Store, opts testProxyOptions) *testProxy {
	t.Helper()
	mgrStore, err := tokenstore.New(cfg.Server.StateDir, &tokenstore.Options{KDF: opts.kdfParams()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // on failure below; stopping the proxy cancels it first
	tracker, err := health.NewTracker("", nil)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: mgrStore, Logger: opts.logger,
		RefreshMargin: cfg.Server.RefreshMargin, TokenTimeout: cfg.Server.TokenTimeout, Health: tracker})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(&proxy.Options{Config: cfg, Auth: mgr, Logger: opts.logger, FailureDelay: opts.failureDelay,
		PeerUID: opts.peerUID})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{cfg: cfg, store: store, srv: srv, addr: ln.Addr().String(), port: ln.Addr().(*net.TCPAddr).Port,
		options: opts, cancel: cancel, served: make(chan error, 1)}
	go func() { p.served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		p.endOnce.Do(func() {
			srv.Close()
			if p.endErr = p.finish(nil); p.endErr != nil {
				t.Error(p.endErr)
			}
		})
	})
	return p
}

// serveWith listens on listenAddr, runs serve (a Serve method of p's
// server) on it until the test ends, and returns the loopback address to
// dial.
func (p *testProxy) serveWith(t testing.TB, listenAddr string, serve func(net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ln) }()
	t.Cleanup(func() {
		p.srv.Close()
		if err := <-done; err != nil {
			t.Errorf("serving %s: %v", listenAddr, err)
		}
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return net.JoinHostPort("127.0.0.1", port)
}

// stop shuts the proxy down, giving its sessions 5 s to end, and returns
// Shutdown's error (non-nil when sessions had to be cut), else Serve's.
// Only the first call stops the proxy; later ones return the same error.
func (p *testProxy) stop() error {
	p.endOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.endErr = p.finish(p.srv.Shutdown(ctx))
	})
	return p.endErr
}

// finish cancels the token manager and waits for Serve to return, after
// Shutdown or Close returned err. It returns err, else Serve's error.
func (p *testProxy) finish(err error) error {
	p.cancel()
	if serr := <-p.served; serr != nil && err == nil {
		err = fmt.Errorf("Serve: %w", serr)
	}
	return err
}

// restart closes the proxy, cutting its sessions, and starts a new one
// over the same mapping file and token state, as a daemon restart would.
// The old proxy's token manager is cancelled when the test ends.
func (p *testProxy) restart(t testing.TB) *testProxy {
	t.Helper()
	p.srv.Close()
	return startTestProxy(t, p.cfg, p.store, p.options)
}
