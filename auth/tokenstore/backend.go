package tokenstore

import (
	"context"
	"errors"
)

// Backend keeps the encrypted record bytes of a Store: a directory of files
// (the default) or a PostgreSQL table shared by several instances. A
// Backend never sees a clear secret or password: the Store encrypts before
// it writes and decrypts after it reads. Implementations are safe for
// concurrent use.
type Backend interface {
	// Read returns login's record bytes. A missing record is an error
	// wrapping ErrNoRecord.
	Read(ctx context.Context, login string) ([]byte, error)
	// Replace runs fn on login's current bytes (nil if there is no
	// record) with every other writer of the record kept out, in this
	// process and in any other sharing the backend, and stores what fn
	// returns. gen is the generation of the returned record. If fn fails,
	// nothing is written and its error is returned. written reports
	// whether the new bytes are in place, also when err is not nil (the
	// file backend's directory sync failed after the rename).
	Replace(ctx context.Context, login string, fn func(old []byte) (data []byte, gen uint64, err error)) (written bool, err error)
	// Logins lists the logins that have a record, in no particular order.
	Logins(ctx context.Context) ([]string, error)
	// LockRefresh keeps every other holder of login's refresh lock, in
	// any instance sharing the backend, waiting until release is called.
	// A holder that dies releases it. Backends that are not shared may
	// return a release that does nothing.
	LockRefresh(ctx context.Context, login string) (release func(), err error)
	// Shared reports whether several instances may use the backend at
	// once: then the Store's users serialize refreshes with LockRefresh
	// and share access tokens through the record.
	Shared() bool
	// Close releases the backend's resources.
	Close() error
}

// ErrStoreUnavailable is returned (wrapped) when a shared backend cannot
// be reached: the database is down or too slow. Nothing was written.
var ErrStoreUnavailable = errors.New("token store unavailable")

// freshReadKey marks a context whose reads must come from the backend
// itself, never from a copy kept for when it is down.
type freshReadKey struct{}

// FreshRead returns ctx marked so that a shared backend's Read fails
// rather than answer from its copy of the record when the database is
// down. Reload uses it: a refresh must start from the newest record.
func FreshRead(ctx context.Context) context.Context {
	return context.WithValue(ctx, freshReadKey{}, true)
}

// IsFreshRead reports whether ctx was marked by FreshRead.
func IsFreshRead(ctx context.Context) bool {
	v, _ := ctx.Value(freshReadKey{}).(bool)
	return v
}
