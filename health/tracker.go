// Package health keeps what the daemon learns about each account's
// authorization between collector logins (token refreshes, login
// outcomes), judges every account (ok, needs authorization, expiring,
// never used), exports it as per-account metrics, and warns in the log
// before an authorization or certificate lapses.
//
// Nothing here is secret: the state file (health.json in the state
// directory) holds times, outcomes and record IDs, never a token, so the
// status command reads it without any local password.
package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// FileName is the state file's name in the state directory.
const FileName = "health.json"

// fileVersion is the version of the state file's format.
const fileVersion = 1

// Entry is what is known of one account. The zero Entry is an account the
// daemon has not seen.
type Entry struct {
	// RecordID is the ID of the token record (one authorization) the
	// refresh fields are about.
	RecordID string `json:"record_id,omitempty"`
	// AccessExpiry is when the newest access token expires.
	AccessExpiry time.Time `json:"access_expiry,omitzero"`
	// LastRefresh is the time of the last successful token refresh: the
	// last use of the refresh token for delegated grants.
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	// RefreshExpiry is when the refresh token expires, if the provider
	// said so (Google's refresh_token_expires_in).
	RefreshExpiry time.Time `json:"refresh_expiry,omitzero"`
	// NeedsAuthorization is set when the token endpoint refused the grant
	// for good (a revoked or expired authorization, a rejected client),
	// until a refresh of another or the same record succeeds.
	NeedsAuthorization bool `json:"needs_authorization,omitempty"`
	// LastLogin and LastOutcome are the time and outcome (OK or the RFC
	// 5530 code) of the last collector login that reached this account.
	LastLogin   time.Time `json:"last_login,omitzero"`
	LastOutcome string    `json:"last_outcome,omitempty"`
	// LastOK is the time of the last successful collector login.
	LastOK time.Time `json:"last_ok,omitzero"`
}

// stateFile is the JSON form of the state file.
type stateFile struct {
	Version  int               `json:"version"`
	Accounts map[string]*Entry `json:"accounts"`
}

// Tracker records refreshes and login outcomes per login, in memory, and
// writes them to its state file on Flush. It is safe for concurrent use; a
// nil *Tracker ignores every event.
type Tracker struct {
	path string // "" keeps nothing on disk
	now  func() time.Time

	mu       sync.Mutex
	accounts map[string]*Entry
	dirty    bool
}

// NewTracker returns a Tracker that starts from the state file path left
// by an earlier run, if any, and writes it on Flush. path "" keeps the
// state in memory only. now is the clock; nil means time.Now. If the file
// cannot be read, the error comes with a usable Tracker that starts empty
// and replaces the file on Flush.
func NewTracker(path string, now func() time.Time) (*Tracker, error) {
	if now == nil {
		now = time.Now
	}
	t := &Tracker{path: path, now: now, accounts: map[string]*Entry{}}
	if path == "" {
		return t, nil
	}
	accounts, err := ReadFile(path)
	if err != nil {
		return t, err
	}
	for login, e := range accounts {
		t.accounts[login] = &e
	}
	return t, nil
}

// ReadFile reads the state file at path: the entries by login. A missing
// file is no entries.
func ReadFile(path string) (map[string]Entry, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]Entry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading account health: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("reading account health %s: %w", path, err)
	}
	if f.Version != fileVersion {
		return nil, fmt.Errorf("reading account health %s: unsupported version %d", path, f.Version)
	}
	out := make(map[string]Entry, len(f.Accounts))
	for login, e := range f.Accounts {
		if e != nil {
			out[login] = *e
		}
	}
	return out, nil
}

// update applies fn to login's entry and marks the state changed.
func (t *Tracker) update(login string, fn func(e *Entry, now time.Time)) {
	if t == nil {
		return
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.accounts[login]
	if e == nil {
		e = &Entry{}
		t.accounts[login] = e
	}
	fn(e, now)
	t.dirty = true
}

// Refreshed records a successful token request for login's record
// recordID: the new access token's expiry and, if the provider gave one,
// the refresh token's.
func (t *Tracker) Refreshed(login, recordID string, accessExpiry, refreshExpiry time.Time) {
	t.update(login, func(e *Entry, now time.Time) {
		if e.RecordID != recordID {
			e.RefreshExpiry = time.Time{}
		}
		e.RecordID = recordID
		e.AccessExpiry = accessExpiry
		e.LastRefresh = now
		if !refreshExpiry.IsZero() {
			e.RefreshExpiry = refreshExpiry
		}
		e.NeedsAuthorization = false
	})
}

// RefreshFailed records that the token endpoint refused login's record
// recordID for good: the account needs authorization.
func (t *Tracker) RefreshFailed(login, recordID string) {
	t.update(login, func(e *Entry, _ time.Time) {
		if e.RecordID != recordID {
			*e = Entry{LastLogin: e.LastLogin, LastOutcome: e.LastOutcome, LastOK: e.LastOK}
		}
		e.RecordID = recordID
		e.NeedsAuthorization = true
	})
}

// Login records the outcome of a collector login to login: "OK" or the
// RFC 5530 code of the NO.
func (t *Tracker) Login(login, outcome string) {
	t.update(login, func(e *Entry, now time.Time) {
		e.LastLogin = now
		e.LastOutcome = outcome
		if outcome == "OK" {
			e.LastOK = now
		}
	})
}

// Entry returns what is known of login.
func (t *Tracker) Entry(login string) Entry {
	if t == nil {
		return Entry{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.accounts[login]; e != nil {
		return *e
	}
	return Entry{}
}

// Flush writes the state file if anything changed since the last Flush.
// The file is replaced atomically (mode 0600).
func (t *Tracker) Flush() error {
	if t == nil || t.path == "" {
		return nil
	}
	t.mu.Lock()
	if !t.dirty {
		t.mu.Unlock()
		return nil
	}
	f := stateFile{Version: fileVersion, Accounts: make(map[string]*Entry, len(t.accounts))}
	for login, e := range t.accounts {
		c := *e
		f.Accounts[login] = &c
	}
	t.dirty = false
	t.mu.Unlock()

	data, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = writeAtomic(t.path, append(data, '\n'))
	}
	if err != nil {
		t.mu.Lock()
		t.dirty = true
		t.mu.Unlock()
		return fmt.Errorf("writing account health: %w", err)
	}
	return nil
}

// Logins returns the logins the tracker has entries for.
func (t *Tracker) Logins() []string {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.accounts))
	for login := range maps.Keys(t.accounts) {
		out = append(out, login)
	}
	return out
}

// writeAtomic replaces path with data through a synced temporary file in
// the same directory. The temporary name starts with '.', so it is never
// taken for a token record.
func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
