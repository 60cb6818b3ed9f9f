package main

import (
	"context"
	"fmt"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// parseAccount parses args, which hold flags and exactly one LOGIN among
// them, and loads the mapping file and LOGIN's account.
func (f *commandFlags) parseAccount(args []string) (string, *config.Config, *config.Account, error) {
	if err := parseFlags(f.FlagSet, args); err != nil {
		return "", nil, nil, err
	}
	if f.NArg() == 0 {
		return "", nil, nil, usageError(f.Name() + " takes exactly one LOGIN")
	}
	login := f.Arg(0)
	if err := parseFlags(f.FlagSet, f.Args()[1:]); err != nil {
		return "", nil, nil, err
	}
	if f.NArg() != 0 {
		return "", nil, nil, usageError(f.Name() + " takes exactly one LOGIN")
	}
	cfg, acct, err := loadAccount(*f.configPath, login)
	return login, cfg, acct, err
}

// loadAccount loads the mapping file at path and returns it with login's
// account, or an error naming the missing [accounts.LOGIN] table.
func loadAccount(path, login string) (*config.Config, *config.Account, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	acct := cfg.Accounts[login]
	if acct == nil {
		return nil, nil, fmt.Errorf("no [accounts.%s] in %s", login, cfg.Path)
	}
	return cfg, acct, nil
}

// openStore opens cfg's token store for a CLI command: the files in
// state_dir or the PostgreSQL database of [store]. Run as root with
// files, the command first becomes the owner of the state directory (the
// service's user), so that the records it writes stay the daemon's and the
// command holds no more privilege than the daemon.
func openStore(cfg *config.Config) (*tokenstore.Store, error) {
	if cfg.Store.Type == config.StorePostgres {
		return newStore(context.Background(), cfg, nil)
	}
	if err := actAsOwnerOf(cfg.Server.StateDir); err != nil {
		return nil, err
	}
	return tokenstore.New(cfg.Server.StateDir, nil)
}
