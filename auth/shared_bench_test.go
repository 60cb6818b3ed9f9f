package auth_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore/pgtest"
)

// BenchmarkLoginStore measures a login's token step (Unlock and Token) on
// the file store and on PostgreSQL, in one run:
//   - warm: the password's key and the access token are cached, as for
//     every login but the first; each login still reads the record;
//   - cold: a new process (empty key cache, no token source): one key
//     derivation (cheap test parameters), then a refresh at the token
//     endpoint and its write-back for files, or, for PostgreSQL, the
//     access token another instance saved in the record.
func BenchmarkLoginStore(b *testing.B) {
	srv := pgtest.Start(b)
	dsn := srv.NewDatabase(b)
	e := newCountingEndpoint(b, time.Hour)
	kdf := &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}
	stores := map[string]func() *tokenstore.Store{}
	dir := b.TempDir()
	stores["files"] = func() *tokenstore.Store {
		s, err := tokenstore.New(dir, kdf)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	stores["postgres"] = func() *tokenstore.Store {
		be, err := pgstore.Open(dsn, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := be.Migrate(context.Background()); err != nil {
			b.Fatal(err)
		}
		s, err := tokenstore.NewWithBackend(be, kdf)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	ctx := context.Background()
	newManager := func(s *tokenstore.Store) *auth.Manager {
		m, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: s, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	for _, name := range []string{"files", "postgres"} {
		store := stores[name]()
		acct := sharedConfigs(e.TokenURL(), 1)[0]
		if _, err := store.Create(acct.Login, managerPassword, tokenstore.Secret{RefreshToken: e.grant(acct.Mailbox)}); err != nil {
			b.Fatal(err)
		}
		login := func(m *auth.Manager) {
			a, err := m.Unlock(ctx, acct, managerPassword)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := a.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(name+"/warm", func(b *testing.B) {
			m := newManager(store)
			login(m)
			for b.Loop() {
				login(m)
			}
		})
		b.Run(name+"/cold", func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				s := stores[name]()
				b.StartTimer()
				login(newManager(s))
				b.StopTimer()
				s.Close()
				b.StartTimer()
			}
		})
		store.Close()
	}
}

// BenchmarkSharedRotation measures a refresh that rotates the refresh
// token on PostgreSQL, lock to saved record, without and with a spill
// directory (the record written to a file, fsynced, then removed once the
// database holds it), in one run.
func BenchmarkSharedRotation(b *testing.B) {
	srv := pgtest.Start(b)
	dsn := srv.NewDatabase(b)
	e := newCountingEndpoint(b, time.Hour)
	ctx := b.Context()
	for i, name := range []string{"nospill", "spill"} {
		be, err := pgstore.Open(dsn, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := be.Migrate(ctx); err != nil {
			b.Fatal(err)
		}
		opts := &tokenstore.Options{KDF: tokenstore.KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}}
		if name == "spill" {
			opts.SpillDir = b.TempDir()
		}
		store, err := tokenstore.NewWithBackend(be, opts)
		if err != nil {
			b.Fatal(err)
		}
		acct := sharedConfigs(e.TokenURL(), i+1)[i]
		if _, err := store.Create(acct.Login, managerPassword, tokenstore.Secret{RefreshToken: e.grant(acct.Mailbox)}); err != nil {
			b.Fatal(err)
		}
		m, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: store, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		a, err := m.Unlock(ctx, acct, managerPassword)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				tok, err := a.Token(ctx)
				if err != nil {
					b.Fatal(err)
				}
				a.Refused(tok) // the next Token refreshes
			}
		})
		store.Close()
	}
}
