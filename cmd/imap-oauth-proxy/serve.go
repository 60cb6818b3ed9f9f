package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "mapping file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("serve takes no arguments")
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	if cfg.Server.ListenTLS != "" || cfg.Server.TLSCert != "" {
		return errors.New("local TLS (listen_tls, tls_cert) is not available in this build yet")
	}
	logger := newLogger(stderr, cfg.Server.LogFormat, cfg.Server.LogLevel)
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Server.Listen, err)
	}
	srv, err := newServer(ctx, cfg, logger, nil)
	if err != nil {
		ln.Close()
		return err
	}
	defer srv.Close()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Info("serving", "listen", ln.Addr().String(), "config", cfg.Path, "accounts", len(cfg.Accounts), "version", version)
	for {
		select {
		case err := <-served:
			return err
		case <-hup:
			reload(srv, *configPath, logger)
		case <-ctx.Done():
			logger.Info("stopping", "sessions", srv.ActiveSessions())
			return nil
		}
	}
}

// reload swaps in a new mapping file for new sessions, keeping the old one
// if the new one is invalid.
func reload(srv *proxy.Server, path string, logger *slog.Logger) {
	cfg, err := config.Load(path)
	if err == nil {
		err = srv.SetConfig(cfg)
	}
	if err != nil {
		logger.Error("reload failed; keeping the previous configuration", "config", path, "err", err)
		return
	}
	logger.Info("reloaded", "config", path, "accounts", len(cfg.Accounts))
}

// newServer builds the token store, token manager and proxy for cfg.
func newServer(ctx context.Context, cfg *config.Config, logger *slog.Logger, storeOpts *auth.StoreOptions) (*proxy.Server, error) {
	store, err := auth.NewStore(cfg.Server.StateDir, storeOpts)
	if err != nil {
		return nil, err
	}
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{
		Store:         store,
		TokenTimeout:  cfg.Server.TokenTimeout,
		RefreshMargin: cfg.Server.RefreshMargin,
		Logger:        logger,
	})
	if err != nil {
		return nil, err
	}
	return proxy.New(&proxy.Options{Config: cfg, Auth: mgr, Logger: logger, Version: version})
}
