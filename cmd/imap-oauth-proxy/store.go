package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// newStore opens the token store cfg's [store] table names: the files in
// server.state_dir, or the PostgreSQL database, whose schema it creates or
// migrates first.
func newStore(ctx context.Context, cfg *config.Config, opts *tokenstore.Options) (*tokenstore.Store, error) {
	if cfg.Store.Type != config.StorePostgres {
		return tokenstore.New(cfg.Server.StateDir, opts)
	}
	b, err := openDatabase(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s, err := tokenstore.NewWithBackend(b, opts)
	if err != nil {
		b.Close()
		return nil, err
	}
	return s, nil
}

// spillDir is where serve keeps, under state_dir, the rotated token
// records that the database could not take yet (tokenstore.Options.SpillDir).
func spillDir(cfg *config.Config) string {
	return filepath.Join(cfg.Server.StateDir, "pending")
}

// openDatabase opens cfg's PostgreSQL store and brings its schema up to
// date.
func openDatabase(ctx context.Context, cfg *config.Config) (*pgstore.Backend, error) {
	b, err := pgstore.Open(cfg.Store.DSN, &pgstore.Options{Timeout: cfg.Store.Timeout})
	if err != nil {
		return nil, err
	}
	if _, _, err := b.Migrate(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// cmdStore runs `store init` and `store migrate`.
func cmdStore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError("store takes the subcommand init or migrate")
	}
	switch args[0] {
	case "init":
		return cmdStoreInit(ctx, args[1:], stdout, stderr)
	case "migrate":
		return cmdStoreMigrate(ctx, args[1:], stdout, stderr)
	}
	return usageError(fmt.Sprintf("unknown store subcommand %q", args[0]))
}

// loadPostgresConfig loads the mapping file and checks that it names a
// PostgreSQL store.
func loadPostgresConfig(path, command string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if cfg.Store.Type != config.StorePostgres {
		return nil, fmt.Errorf(`%s needs [store] type = "postgres" and its dsn in %s`, command, cfg.Path)
	}
	return cfg, nil
}

func cmdStoreInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("store init", stderr)
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	cfg, err := loadPostgresConfig(*fs.configPath, "store init")
	if err != nil {
		return err
	}
	b, err := pgstore.Open(cfg.Store.DSN, &pgstore.Options{Timeout: cfg.Store.Timeout})
	if err != nil {
		return err
	}
	defer b.Close()
	from, to, err := b.Migrate(ctx)
	if err != nil {
		return err
	}
	if from == to {
		fmt.Fprintf(stdout, "the token store schema is up to date (version %d)\n", to)
	} else {
		fmt.Fprintf(stdout, "migrated the token store schema from version %d to %d\n", from, to)
	}
	return nil
}

// cmdStoreMigrate copies every record between the files in state_dir and
// the database, byte for byte.
func cmdStoreMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newCommandFlags("store migrate", stderr)
	to := fs.String("to", "", `where to copy the records: "postgres" (from the files in state_dir) or "files" (from the database)`)
	force := fs.Bool("force", false, "replace records that differ in the destination")
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}
	if *to != config.StorePostgres && *to != config.StoreFiles {
		return usageError(`store migrate needs -to postgres or -to files`)
	}
	cfg, err := loadPostgresConfig(*fs.configPath, "store migrate")
	if err != nil {
		return err
	}
	if err := actAsOwnerOf(cfg.Server.StateDir); err != nil {
		return err
	}
	files, err := tokenstore.New(cfg.Server.StateDir, nil)
	if err != nil {
		return err
	}
	db, err := newStore(ctx, cfg, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	src, dst := files, db
	if *to == config.StoreFiles {
		src, dst = db, files
	}
	n, err := copyRecords(ctx, src, dst, *force, stdout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "copied %d token records to %s\n", n, *to)
	return nil
}

// errRecordDiffers stops a migration that would replace a different record.
var errRecordDiffers = errors.New("the destination holds a different record")

// copyRecords copies every record of src to dst unchanged, skipping those
// dst already holds byte for byte, and refusing (unless force) to replace
// one that differs. It returns how many it wrote.
func copyRecords(ctx context.Context, src, dst *tokenstore.Store, force bool, stdout io.Writer) (int, error) {
	logins, err := src.Logins(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, login := range logins {
		data, err := src.Export(ctx, login)
		if err != nil {
			return n, err
		}
		old, err := dst.Export(ctx, login)
		switch {
		case err == nil && bytes.Equal(old, data):
			fmt.Fprintf(stdout, "%s: already there\n", login)
			continue
		case err == nil && !force:
			return n, fmt.Errorf("%s: %w (%s); add -force to replace it", login, errRecordDiffers, dst.Where(login))
		case err != nil && !errors.Is(err, tokenstore.ErrNoRecord):
			return n, err
		}
		if err := dst.Import(ctx, login, data); err != nil {
			return n, err
		}
		fmt.Fprintf(stdout, "%s: copied to %s\n", login, dst.Where(login))
		n++
	}
	return n, nil
}
