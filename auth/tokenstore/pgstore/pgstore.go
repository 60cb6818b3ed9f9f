// Package pgstore keeps token records in PostgreSQL, so that several
// instances of the proxy share one set of authorizations. It is a
// tokenstore.Backend: the rows hold the same encrypted record bytes as the
// files of the default backend, never a clear token or password.
//
// Writes are compare-and-swap on the record's generation, inside a
// transaction that holds the row (SELECT … FOR UPDATE, then UPDATE … WHERE
// generation = the one read). A refresh holds a transaction-scoped
// advisory lock on the login (pg_advisory_xact_lock), which the server
// releases when the holder commits, rolls back, or dies: a killed instance
// never blocks the others, and there is no lease length to tune against
// slow token endpoints. Before its token request, a refresh marks the row
// (refresh_started, committed at once; MarkRefresh), and the write of the
// refreshed record clears the mark: another instance that finds the mark
// knows that the record's refresh token may have been rotated by a
// refresh whose save is still pending.
//
// While the database is down, Read answers from the newest bytes this
// process read or wrote of the record (unless the context asks for a
// fresh read), so logins that need no refresh keep working; writes and
// refresh locks fail with tokenstore.ErrStoreUnavailable.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// Defaults of Options.
const (
	defaultTimeout   = 5 * time.Second
	defaultLockWait  = time.Minute
	defaultCacheSize = 4096
	defaultMaxConns  = 16
)

// lockClass is the first key of every advisory lock this package takes
// ("imap" in ASCII), so that they do not collide with other users' of the
// same database. The second key is 0 for schema changes and
// hashtext(login) for refreshes; two logins with the same hash only share
// a lock.
const lockClass = 0x696d6170

// Options tune a Backend. A nil *Options means all defaults.
type Options struct {
	// Timeout bounds each read and write, connecting included. If zero,
	// 5 s.
	Timeout time.Duration
	// LockWait bounds the wait for a refresh lock that another instance
	// holds. If zero, 1 minute.
	LockWait time.Duration
	// CacheSize bounds the number of records kept to answer reads while
	// the database is down. If zero, 4096.
	CacheSize int
	// MaxConns bounds the connections to the database. Each refresh in
	// progress holds one. If zero, 16.
	MaxConns int32
}

// Backend is a tokenstore.Backend on a PostgreSQL database. It is safe for
// concurrent use.
type Backend struct {
	pool     *pgxpool.Pool
	timeout  time.Duration
	lockWait time.Duration
	// cache holds the newest record bytes read or written per login, for
	// reads while the database is down.
	cache *lru.Cache[string, []byte]
}

// Open returns a Backend for the database that dsn (a libpq connection
// string or URL) names. It does not connect: the first use does. Errors
// do not show the DSN's password.
func Open(dsn string, opts *Options) (*Backend, error) {
	if opts == nil {
		opts = &Options{}
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors redact the password; say no more than that
		// the DSN is malformed, in case a future one does not.
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("parsing store dsn: malformed connection string")
		}
		return nil, fmt.Errorf("parsing store dsn: %w", err)
	}
	b := &Backend{timeout: opts.Timeout, lockWait: opts.LockWait}
	if b.timeout <= 0 {
		b.timeout = defaultTimeout
	}
	if b.lockWait <= 0 {
		b.lockWait = defaultLockWait
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > b.timeout {
		cfg.ConnConfig.ConnectTimeout = b.timeout
	}
	cfg.MaxConns = opts.MaxConns
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = defaultMaxConns
	}
	size := opts.CacheSize
	if size <= 0 {
		size = defaultCacheSize
	}
	if b.cache, err = lru.New[string, []byte](size); err != nil {
		return nil, fmt.Errorf("creating record cache: %w", err)
	}
	if b.pool, err = pgxpool.NewWithConfig(context.Background(), cfg); err != nil {
		return nil, fmt.Errorf("opening token store database: %w", err)
	}
	return b, nil
}

// schema is the list of migrations: schema version i+1 is reached by
// running schema[i]. Append only.
var schema = []string{
	`CREATE TABLE token_records (
		login      text PRIMARY KEY,
		generation bigint NOT NULL,
		record     bytea NOT NULL,
		updated    timestamptz NOT NULL DEFAULT now()
	)`,
	// When a refresh started that has not saved its record yet
	// (MarkRefresh); NULL if none.
	`ALTER TABLE token_records ADD COLUMN refresh_started timestamptz`,
}

// SchemaVersion is the schema version this build creates and uses.
const SchemaVersion = 2

// Migrate creates the schema, or brings it up to SchemaVersion, in one
// transaction under an advisory lock, so that instances starting together
// do not race. It refuses a database whose schema is newer than this
// build's. It returns the version found and the one left.
func (b *Backend) Migrate(ctx context.Context) (from, to int, err error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockClass); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS imap_oauth_proxy_schema (
			version integer PRIMARY KEY,
			applied timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM imap_oauth_proxy_schema`).Scan(&from); err != nil {
			return err
		}
		if from > len(schema) {
			return fmt.Errorf("the database's schema version %d is newer than this build's %d; upgrade imap-oauth-proxy", from, len(schema))
		}
		for v := from + 1; v <= len(schema); v++ {
			if _, err := tx.Exec(ctx, schema[v-1]); err != nil {
				return fmt.Errorf("schema version %d: %w", v, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO imap_oauth_proxy_schema (version) VALUES ($1)`, v); err != nil {
				return fmt.Errorf("schema version %d: %w", v, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("migrating token store schema: %w", b.wrap(err))
	}
	return from, len(schema), nil
}

// Read returns login's record bytes. While the database cannot be reached
// it returns the newest bytes this process saw of the record, unless ctx
// is marked tokenstore.FreshRead.
func (b *Backend) Read(ctx context.Context, login string) ([]byte, error) {
	qctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var data []byte
	err := b.retry(qctx, func() error {
		return b.pool.QueryRow(qctx, `SELECT record FROM token_records WHERE login = $1`, login).Scan(&data)
	})
	switch {
	case err == nil:
		b.cache.Add(login, data)
		return data, nil
	case errors.Is(err, pgx.ErrNoRows):
		b.cache.Remove(login)
		return nil, fmt.Errorf("%w: %w", tokenstore.ErrNoRecord, fs.ErrNotExist)
	}
	if cached, ok := b.cache.Get(login); ok && !tokenstore.IsFreshRead(ctx) && ctx.Err() == nil {
		return cached, nil
	}
	return nil, fmt.Errorf("reading token record: %w", b.wrap(err))
}

// Replace runs fn on login's row under FOR UPDATE and writes what it
// returns if the row's generation is still the one read (or, for a new
// row, if there is still none), all in one transaction. A lost race fails
// with tokenstore.ErrRecordChanged.
func (b *Backend) Replace(ctx context.Context, login string, fn func(old []byte) ([]byte, uint64, error)) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var data []byte
	var fnErr error
	err := b.retry(ctx, func() error {
		return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			var old []byte
			var oldGen int64
			err := tx.QueryRow(ctx, `SELECT record, generation FROM token_records WHERE login = $1 FOR UPDATE`, login).Scan(&old, &oldGen)
			exists := err == nil
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return b.wrap(err)
			}
			var gen uint64
			if data, gen, fnErr = fn(old); fnErr != nil {
				return fnErr
			}
			var tag pgconn.CommandTag
			if exists {
				tag, err = tx.Exec(ctx, `UPDATE token_records SET record = $2, generation = $3, updated = now(),
				refresh_started = NULL WHERE login = $1 AND generation = $4`, login, data, int64(gen), oldGen)
			} else {
				tag, err = tx.Exec(ctx, `INSERT INTO token_records (login, generation, record) VALUES ($1, $2, $3)
				ON CONFLICT (login) DO NOTHING`, login, int64(gen), data)
			}
			if err != nil {
				return b.wrap(err)
			}
			if tag.RowsAffected() != 1 {
				return fmt.Errorf("%w: written by another instance meanwhile", tokenstore.ErrRecordChanged)
			}
			return nil
		})
	})
	switch {
	case err != nil && (err == fnErr || errors.Is(err, tokenstore.ErrRecordChanged)):
		return false, err
	case err != nil:
		// Also a failed commit: the write may or may not have landed, and
		// the generation check makes a retry safe either way.
		return false, fmt.Errorf("writing token record: %w", b.wrap(err))
	}
	b.cache.Add(login, data)
	return true, nil
}

// Logins lists the logins that have a row.
func (b *Backend) Logins(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var logins []string
	err := b.retry(ctx, func() error {
		rows, err := b.pool.Query(ctx, `SELECT login FROM token_records`)
		if err != nil {
			return err
		}
		logins, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, b.wrap(err)
	}
	return logins, nil
}

// LockRefresh takes a transaction-scoped advisory lock on login on a
// connection of its own, waiting at most Options.LockWait for another
// holder. release rolls the (empty) transaction back, which frees the
// lock; so does the server when this process dies.
func (b *Backend) LockRefresh(ctx context.Context, login string) (func(), error) {
	ctx, cancel := context.WithTimeout(ctx, b.lockWait)
	defer cancel()
	var conn *pgxpool.Conn
	var tx pgx.Tx
	err := b.retry(ctx, func() error {
		var err error
		if conn, err = b.pool.Acquire(ctx); err != nil {
			return err
		}
		if tx, err = conn.Begin(ctx); err != nil {
			conn.Release()
		}
		return err
	})
	if err != nil {
		return nil, b.wrap(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, lockClass, login); err != nil {
		conn.Conn().Close(context.Background()) // the transaction may be stuck in the wait
		conn.Release()
		return nil, b.wrap(err)
	}
	return func() {
		rctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		defer cancel()
		if err := tx.Rollback(rctx); err != nil {
			conn.Conn().Close(rctx) // closing the session frees the lock
		}
		conn.Release()
	}, nil
}

// MarkRefresh sets login's refresh_started to now, unless it is set
// already, in a transaction of its own: it holds even if this process or
// the database dies during the refresh. It returns the value that was
// set before (zero if none, or if login has no row).
func (b *Backend) MarkRefresh(ctx context.Context, login string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	var since *time.Time
	err := b.retry(ctx, func() error {
		// now() is the statement's transaction start: a value equal to it
		// is the one this statement set, so nullif leaves the older one.
		return b.pool.QueryRow(ctx, `UPDATE token_records SET refresh_started = coalesce(refresh_started, now())
			WHERE login = $1 RETURNING nullif(refresh_started, now())`, login).Scan(&since)
	})
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, fmt.Errorf("marking refresh: %w", b.wrap(err))
	case since == nil:
		return time.Time{}, nil
	}
	return *since, nil
}

// UnmarkRefresh clears login's refresh_started.
func (b *Backend) UnmarkRefresh(ctx context.Context, login string) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	err := b.retry(ctx, func() error {
		_, err := b.pool.Exec(ctx, `UPDATE token_records SET refresh_started = NULL WHERE login = $1`, login)
		return err
	})
	if err != nil {
		return fmt.Errorf("clearing refresh mark: %w", b.wrap(err))
	}
	return nil
}

// retry runs op, and once more if it failed before sending anything
// (pgconn.SafeToRetry), typically on a pooled connection that the server
// closed when it restarted. Then every pooled connection is presumed dead
// and closed first, so the second try connects afresh.
func (b *Backend) retry(ctx context.Context, op func() error) error {
	err := op()
	if err == nil || !pgconn.SafeToRetry(err) || ctx.Err() != nil {
		return err
	}
	b.pool.Reset()
	return op()
}

// Shared is true: several instances share the database.
func (b *Backend) Shared() bool { return true }

// Close closes the connections.
func (b *Backend) Close() error {
	b.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (b *Backend) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	if err := b.pool.Ping(ctx); err != nil {
		return fmt.Errorf("reaching token store database: %w", b.wrap(err))
	}
	return nil
}

// wrap marks err as the database being unavailable unless it is an
// answer about the data (a constraint, a syntax error: a bug or a wrong
// schema, which waiting does not fix).
func (b *Backend) wrap(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !isTransientSQLState(pgErr.Code) {
		return err
	}
	if errors.Is(err, tokenstore.ErrStoreUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", tokenstore.ErrStoreUnavailable, err)
}

// isTransientSQLState reports whether a server error class passes by
// itself: connection exceptions (08), insufficient resources (53),
// operator intervention such as a shutdown (57), system errors (58),
// serialization failures and deadlocks (40), lock timeouts (55P03).
func isTransientSQLState(code string) bool {
	if len(code) < 2 {
		return false
	}
	switch code[:2] {
	case "08", "40", "53", "57", "58":
		return true
	}
	return code == "55P03"
}

var (
	_ tokenstore.Backend       = (*Backend)(nil)
	_ tokenstore.RefreshMarker = (*Backend)(nil)
)
