package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/health"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/sdnotify"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/tlsconfig"
)

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newCommandFlags("serve", stderr)
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	// Sockets from systemd first: they decide what the config must name.
	in, err := inheritListeners()
	if err != nil {
		return err
	}
	// Every listener, inherited or bound, is closed on return; srv and the
	// metrics server may have closed them already.
	var listeners []net.Listener // the ones bound here
	defer func() {
		in.close()
		for _, ln := range listeners {
			ln.Close()
		}
	}()
	cfg, err := config.LoadWithOptions(*fs.configPath, in.loadOptions())
	if err != nil {
		return configError{err}
	}
	logger := newLogger(stderr, cfg.Server.LogFormat, cfg.Server.LogLevel)
	if in.ignored != "" {
		logger.Warn("sockets from systemd ignored; binding the configured addresses", "reason", in.ignored)
	}
	notify := sdnotify.New()
	if cfg.Server.TLSCert != "" {
		// Fail before touching the state directory or binding ports.
		if _, err := tlsconfig.Local(cfg.Server.TLSCert, cfg.Server.TLSKey); err != nil {
			return configError{fmt.Errorf("server.tls_cert: %w", err)}
		}
	}

	// Bind everything before announcing readiness. A socket from systemd
	// replaces binding the address of its key.
	listen := func(key, addr string) (net.Listener, error) {
		if ln := in.listener(key); ln != nil {
			logger.Info("using the socket from systemd", "key", "server."+key,
				"address", ln.Addr().String(), "configured", addr)
			return ln, nil
		}
		if addr == "" {
			return nil, nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		listeners = append(listeners, ln)
		return ln, nil
	}
	plainLn, err := listen("listen", cfg.Server.Listen)
	if err != nil {
		return err
	}
	tlsLn, err := listen("listen_tls", cfg.Server.ListenTLS)
	if err != nil {
		return err
	}
	pop3Ln, err := listen("listen_pop3", cfg.Server.ListenPOP3)
	if err != nil {
		return err
	}
	pop3TLSLn, err := listen("listen_pop3_tls", cfg.Server.ListenPOP3TLS)
	if err != nil {
		return err
	}
	smtpLn, err := listen("listen_smtp", cfg.Server.ListenSMTP)
	if err != nil {
		return err
	}
	smtpsLn, err := listen("listen_smtps", cfg.Server.ListenSMTPS)
	if err != nil {
		return err
	}
	metricsLn, err := listen("metrics_listen", cfg.Server.MetricsListen)
	if err != nil {
		return err
	}
	if plainLn == nil && tlsLn == nil && pop3Ln == nil && pop3TLSLn == nil && smtpLn == nil && smtpsLn == nil {
		// config validation should have said so already.
		return errors.New("nothing to listen on: set server.listen or server.listen_tls, or pass an imap or imaps socket")
	}
	srv, monitor, err := newServer(ctx, cfg, logger, nil)
	if err != nil {
		return err
	}
	defer srv.Close()
	monitorCtx, stopMonitor := context.WithCancel(context.Background())
	monitorDone := make(chan struct{})
	go func() {
		defer close(monitorDone)
		monitor.Run(monitorCtx, healthInterval)
	}()
	defer func() { // after the drain: the last logins' outcomes are saved
		stopMonitor()
		<-monitorDone
	}()

	served := make(chan error, 7)
	var attrs []any
	if plainLn != nil {
		go func() { served <- srv.Serve(plainLn) }()
		attrs = append(attrs, "listen", plainLn.Addr().String())
	}
	if tlsLn != nil {
		go func() { served <- srv.ServeTLS(tlsLn) }()
		attrs = append(attrs, "listen_tls", tlsLn.Addr().String())
	}
	if pop3Ln != nil {
		go func() { served <- srv.ServePOP3(pop3Ln) }()
		attrs = append(attrs, "listen_pop3", pop3Ln.Addr().String())
	}
	if pop3TLSLn != nil {
		go func() { served <- srv.ServePOP3TLS(pop3TLSLn) }()
		attrs = append(attrs, "listen_pop3_tls", pop3TLSLn.Addr().String())
	}
	if smtpLn != nil {
		go func() { served <- srv.ServeSMTP(smtpLn) }()
		attrs = append(attrs, "listen_smtp", smtpLn.Addr().String())
	}
	if smtpsLn != nil {
		go func() { served <- srv.ServeSMTPS(smtpsLn) }()
		attrs = append(attrs, "listen_smtps", smtpsLn.Addr().String())
	}
	if metricsLn != nil {
		hs := metricsServer(srv)
		defer hs.Close()
		go func() {
			if err := hs.Serve(metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				served <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
		attrs = append(attrs, "metrics", metricsLn.Addr().String())
	}
	if len(in.names) > 0 {
		attrs = append(attrs, "systemd_sockets", strings.Join(in.names, ","))
	}
	attrs = append(attrs, "config", cfg.Path, "accounts", len(cfg.Accounts), "version", version)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	logger.Info("serving", attrs...)
	if err := notify.Send("READY=1\nSTATUS=serving"); err != nil {
		logger.Warn("sd_notify failed", "err", err)
	}
	for {
		select {
		case err := <-served:
			if err == nil {
				err = errors.New("listener closed")
			}
			return err
		case <-hup:
			notify.Send(sdnotify.Reloading())
			reload(srv, *fs.configPath, cfg, in, tlsLn, logger)
			notify.Send("READY=1\nSTATUS=serving")
		case <-ctx.Done():
			notify.Send("STOPPING=1")
			logger.Info("stopping", "sessions", srv.ActiveSessions(), "drain", cfg.Server.ShutdownTimeout)
			drain, cancel := context.WithTimeout(context.Background(), srv.Config().Server.ShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(drain); err != nil {
				logger.Warn("sessions cut after the drain time", "drain", srv.Config().Server.ShutdownTimeout)
			}
			logger.Info("stopped")
			return nil
		}
	}
}

// metricsServer serves /metrics for Prometheus: the proxy's and the token
// manager's metrics, and the standard Go runtime and process collectors
// (heap, goroutines, RSS, open file descriptors, CPU), from a registry of
// its own.
func metricsServer(srv *proxy.Server) *http.Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(srv, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// reload swaps in a new mapping file for new sessions, keeping the old one
// if the new one is invalid. Settings bound at start (listeners, state
// directory, logging, token timeouts) need a restart; reload says so. The
// address of a listener inherited from systemd is not used at all, then
// or later; reload says that instead.
//
// tlsListener is the implicit-TLS listener in use, or nil: it keeps
// serving until a restart, so a file without a local certificate is
// refused while it runs.
func reload(srv *proxy.Server, path string, started *config.Config, in *inherited, tlsListener net.Listener, logger *slog.Logger) {
	cfg, err := config.LoadWithOptions(path, in.loadOptions())
	if err == nil && tlsListener != nil && cfg.Server.TLSCert == "" {
		err = fmt.Errorf("server.tls_cert: missing: the implicit-TLS listener on %s keeps serving until a restart and needs it",
			tlsListener.Addr())
	}
	if err == nil {
		err = srv.SetConfig(cfg)
	}
	if err != nil {
		logger.Error("reload failed; keeping the previous configuration", "config", path, "err", err)
		return
	}
	a, b := started.Server, cfg.Server
	for _, k := range []struct {
		key     string
		changed bool
	}{
		{"listen", a.Listen != b.Listen},
		{"listen_tls", a.ListenTLS != b.ListenTLS},
		{"listen_pop3", a.ListenPOP3 != b.ListenPOP3},
		{"listen_pop3_tls", a.ListenPOP3TLS != b.ListenPOP3TLS},
		{"listen_smtp", a.ListenSMTP != b.ListenSMTP},
		{"listen_smtps", a.ListenSMTPS != b.ListenSMTPS},
		{"metrics_listen", a.MetricsListen != b.MetricsListen},
		{"state_dir", a.StateDir != b.StateDir},
		{"log_level", a.LogLevel != b.LogLevel},
		{"log_format", a.LogFormat != b.LogFormat},
		{"token_timeout", a.TokenTimeout != b.TokenTimeout},
		{"refresh_margin", a.RefreshMargin != b.RefreshMargin},
	} {
		switch {
		case !k.changed:
		case in.listener(k.key) != nil:
			logger.Info("setting changed; not used: the listener is the socket from systemd", "key", "server."+k.key)
		default:
			logger.Warn("setting changed; it takes effect at the next restart", "key", "server."+k.key)
		}
	}
	if started.Store != cfg.Store {
		logger.Warn("setting changed; it takes effect at the next restart", "key", "store")
	}
	logger.Info("reloaded", "config", path, "accounts", len(cfg.Accounts))
}

// healthInterval is how often serve saves the accounts' health for the
// status command.
const healthInterval = time.Minute

// newServer builds the token store, token manager and proxy for cfg, and
// the monitor of the accounts' health.
func newServer(ctx context.Context, cfg *config.Config, logger *slog.Logger, storeOpts *tokenstore.Options) (*proxy.Server, *health.Monitor, error) {
	if cfg.Store.Type == config.StorePostgres {
		// A rotated token the database cannot take at once waits here.
		opts := tokenstore.Options{}
		if storeOpts != nil {
			opts = *storeOpts
		}
		opts.SpillDir = spillDir(cfg)
		storeOpts = &opts
	}
	store, err := newStore(ctx, cfg, storeOpts)
	if err != nil {
		return nil, nil, err
	}
	tracker, err := health.NewTracker(filepath.Join(cfg.Server.StateDir, health.FileName), nil)
	if err != nil {
		// Only status loses what it knew; serving goes on.
		logger.Warn("starting the accounts' health afresh", "err", err)
	}
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{
		Store:         store,
		TokenTimeout:  cfg.Server.TokenTimeout,
		RefreshMargin: cfg.Server.RefreshMargin,
		Logger:        logger,
		Health:        tracker,
	})
	if err != nil {
		return nil, nil, err
	}
	srv, err := proxy.New(&proxy.Options{Config: cfg, Auth: mgr, Logger: logger, Version: version})
	if err != nil {
		return nil, nil, err
	}
	return srv, health.NewMonitor(tracker, store, srv.Config, logger), nil
}
