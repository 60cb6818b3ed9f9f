package tokenstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// A shared store's backend (a database) may be unreachable just after the
// provider rotated a refresh token and killed the old one. The new one is
// then the only one that works, and it must not live only in memory: the
// Store writes the record that holds it to a spill directory first (Spill:
// the same encrypted record format as the file store, written atomically,
// mode 0600), and saves it to the backend from there (PushSpill), once
// now and again later if the backend is down, even from a new process.

// ErrSpillSuperseded is returned (wrapped) by PushSpill when the backend
// holds a record that the spilled one must not replace: a new
// authorization, a newer token saved by another instance, or no record.
// The spill is dropped.
var ErrSpillSuperseded = errors.New("spilled token record superseded")

// ErrSpillNeedsKey is returned (wrapped) by PushSpill without an unlocked
// record when the backend's record was rewritten since the spill was made
// (a password change) and only the record's data key can carry the
// spilled secret over. The spill is kept.
var ErrSpillNeedsKey = errors.New("spilled token record needs the record's key")

// errAlreadySaved aborts a backend write that would store bytes the
// backend holds already.
var errAlreadySaved = errors.New("already saved")

// openSpill returns the spill directory dir, creating it (mode 0700) and
// checking it as the store directory is checked.
func openSpill(dir string) (*fileBackend, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating token spill directory: %w", err)
	}
	if err := checkStoreDir(dir); err != nil {
		return nil, err
	}
	removeStaleTemps(dir, time.Now())
	return &fileBackend{dir: dir}, nil
}

// Spilling reports whether the store has a spill directory.
func (s *Store) Spilling() bool { return s.spill != nil }

// Spill writes secret, sealed as the record u's next Update would write
// (generation and secret generation +1, u's keys), to the spill directory,
// durably, replacing an older spilled record of the login. It changes
// neither the backend nor u. PushSpill saves it.
func (s *Store) Spill(u *Unlocked, secret Secret) error {
	if err := s.spillRecord(u, secret); err != nil {
		return fmt.Errorf("spilling token record for %q: %w", u.Info.Login, err)
	}
	return nil
}

func (s *Store) spillRecord(u *Unlocked, secret Secret) error {
	switch {
	case s.spill == nil:
		return errors.New("the store has no spill directory")
	case u == nil || u.dataKey == nil:
		// A version 1 record gets its data key at its first Update.
		return errors.New("record is not unlocked, or is a version 1 record")
	}
	rec, data, err := sealRecord(u.Info.Login, u.Info.ID, secret, u.Info.Generation+1, u.Info.SecretGeneration+1, u.wrap, u.dataKey)
	if err != nil {
		return err
	}
	_, err = s.spill.Replace(context.Background(), u.Info.Login, func(old []byte) ([]byte, uint64, error) {
		if old != nil {
			prev, err := decodeRecord(old, u.Info.Login)
			if err == nil && prev.ID == rec.ID && prev.SecretGeneration > rec.SecretGeneration {
				return nil, 0, fmt.Errorf("a newer record (secret generation %d) is spilled already", prev.SecretGeneration)
			}
		}
		return data, rec.Generation, nil
	})
	return err
}

// Spilled lists the logins that have a spilled record, sorted.
func (s *Store) Spilled() ([]string, error) {
	if s.spill == nil {
		return nil, nil
	}
	return s.spill.Logins(context.Background())
}

// HasSpill reports whether login has a spilled record.
func (s *Store) HasSpill(login string) bool {
	if s.spill == nil {
		return false
	}
	_, err := os.Lstat(s.spill.path(login))
	return err == nil
}

// PushSpill saves login's spilled record to the backend, if there is one,
// and removes it from the spill directory once the backend holds it. The
// write is a compare-and-swap: it lands only on the record the spill was
// made from (same ID, the secret generation before the spilled one). If
// the backend holds a newer secret or another authorization, the spill is
// dropped and the error wraps ErrSpillSuperseded; if the backend cannot
// be reached, it wraps ErrStoreUnavailable and the spill is kept.
//
// u, if not nil, is login's unlocked record, not in use by another
// goroutine: with its data key, a spill is carried over a password change
// made since (else ErrSpillNeedsKey), and u takes the saved record. It
// reports whether the backend now holds the spilled secret.
func (s *Store) PushSpill(ctx context.Context, login string, u *Unlocked) (bool, error) {
	saved, err := s.pushSpill(ctx, login, u)
	if err != nil {
		return saved, fmt.Errorf("saving spilled token record for %q: %w", login, err)
	}
	return saved, nil
}

func (s *Store) pushSpill(ctx context.Context, login string, u *Unlocked) (bool, error) {
	if s.spill == nil {
		return false, nil
	}
	data, err := s.spill.Read(ctx, login)
	if errors.Is(err, ErrNoRecord) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	spilled, err := decodeRecord(data, login)
	if err != nil {
		return false, err
	}
	if u != nil && u.Info.ID != spilled.ID {
		u = nil // another authorization: the backend's record decides
	}
	var secret Secret
	if u != nil {
		if secret, err = s.openSpilled(spilled, u); err != nil {
			return false, err
		}
	}
	var written *recordFile
	_, err = s.backend.Replace(ctx, login, func(old []byte) ([]byte, uint64, error) {
		written = nil
		if bytes.Equal(old, data) {
			written = spilled
			return nil, 0, errAlreadySaved
		}
		disk, err := s.spillBase(spilled, old)
		if err != nil {
			return nil, 0, err
		}
		if disk.Generation+1 == spilled.Generation {
			written = spilled
			return data, spilled.Generation, nil
		}
		// Rewritten since (a password change): the secret goes under the
		// data key with the wrapping in place, as Update does.
		if u == nil {
			return nil, 0, fmt.Errorf("%w: stored generation %d, spilled %d", ErrSpillNeedsKey, disk.Generation, spilled.Generation)
		}
		rec, out, err := sealRecord(login, spilled.ID, secret, disk.Generation+1, spilled.SecretGeneration, disk.wrapping(), u.dataKey)
		if err != nil {
			return nil, 0, err
		}
		written = rec
		return out, rec.Generation, nil
	})
	switch {
	case errors.Is(err, errAlreadySaved):
		err = nil
	case errors.Is(err, ErrSpillSuperseded):
		if _, rmErr := s.spill.removeIf(login, data); rmErr != nil {
			return false, errors.Join(err, rmErr)
		}
		return false, err
	case err != nil:
		return false, err
	}
	if u != nil && written.SecretGeneration > u.Info.SecretGeneration {
		info, err := written.info()
		if err != nil {
			return true, err
		}
		if !bytes.Equal(written.KDF.Salt, u.wrap.salt) {
			u.passKey = nil // another process changed the password; keep its wrapping
		}
		u.Info, u.Secret, u.wrap = info, secret, written.wrapping()
	}
	if _, err := s.spill.removeIf(login, data); err != nil {
		return true, err
	}
	return true, nil
}

// spillBase decodes old, the backend's bytes of spilled's login, and
// returns the record if spilled may replace it: same authorization, older
// secret. Otherwise the error wraps ErrSpillSuperseded.
func (s *Store) spillBase(spilled *recordFile, old []byte) (*recordFile, error) {
	if old == nil {
		return nil, fmt.Errorf("%w: the record was removed", ErrSpillSuperseded)
	}
	disk, err := decodeRecord(old, spilled.Login)
	if err != nil {
		return nil, err
	}
	switch {
	case disk.ID != spilled.ID:
		return nil, fmt.Errorf("%w: a new authorization (id %s) replaced id %s", ErrSpillSuperseded, disk.ID, spilled.ID)
	case disk.Version == recordVersion1:
		return nil, fmt.Errorf("%w: a version 1 record", ErrSpillSuperseded)
	case disk.SecretGeneration >= spilled.SecretGeneration:
		return nil, fmt.Errorf("%w: a newer token was saved (secret generation %d, spilled %d)",
			ErrSpillSuperseded, disk.SecretGeneration, spilled.SecretGeneration)
	}
	return disk, nil
}

// openSpilled decrypts spilled's secret with u's data key.
func (s *Store) openSpilled(spilled *recordFile, u *Unlocked) (Secret, error) {
	if u.dataKey == nil || spilled.Version != recordVersion {
		return Secret{}, errors.New("not a version 2 record")
	}
	plain, err := gcmOpen(u.dataKey, spilled.Nonce, spilled.Ciphertext, spilled.secretAAD())
	if err != nil {
		return Secret{}, err
	}
	defer clear(plain)
	var secret Secret
	if err := json.Unmarshal(plain, &secret); err != nil {
		return Secret{}, fmt.Errorf("%w: undecodable secret", ErrCorruptRecord)
	}
	return secret, nil
}

// removeIf removes login's file if it still holds data, under the
// directory lock, so that a newer record written meanwhile stays. It
// reports whether it removed the file.
func (s *fileBackend) removeIf(login string, data []byte) (bool, error) {
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	cur, err := s.Read(context.Background(), login)
	switch {
	case errors.Is(err, ErrNoRecord):
		return false, nil
	case err != nil:
		return false, err
	case !bytes.Equal(cur, data):
		return false, nil
	}
	// No directory sync: a removal lost in a crash leaves a record that
	// the backend holds already, which the next PushSpill drops.
	if err := os.Remove(s.path(login)); err != nil {
		return false, fmt.Errorf("removing spilled record: %w", err)
	}
	return true, nil
}

// RefreshMarker is implemented by a shared Backend that records, durably,
// that a refresh of a login has started and not finished: a record
// written by a successful Replace finishes it. Another instance that then
// gets invalid_grant from the record's refresh token knows that the
// refresh may have rotated it and that its holder may still save the new
// one (from its spill), so the account is not lost yet.
type RefreshMarker interface {
	// MarkRefresh records that a refresh of login starts, unless an
	// unfinished one is recorded already, and returns when the unfinished
	// one started (zero if none).
	MarkRefresh(ctx context.Context, login string) (unfinished time.Time, err error)
	// UnmarkRefresh clears login's unfinished refresh.
	UnmarkRefresh(ctx context.Context, login string) error
}

// MarkRefresh records, in a backend that keeps such marks, that a refresh
// of login starts, and returns when an earlier refresh that never finished
// started (zero if none, or if the backend keeps no marks). Call it under
// LockRefresh, before the token request.
func (s *Store) MarkRefresh(ctx context.Context, login string) (time.Time, error) {
	m, ok := s.backend.(RefreshMarker)
	if !ok {
		return time.Time{}, nil
	}
	since, err := m.MarkRefresh(ctx, login)
	if err != nil {
		return time.Time{}, fmt.Errorf("marking refresh of %q: %w", login, err)
	}
	return since, nil
}

// UnmarkRefresh clears login's unfinished refresh, once a refresh ended
// in a way that rotated nothing.
func (s *Store) UnmarkRefresh(ctx context.Context, login string) error {
	m, ok := s.backend.(RefreshMarker)
	if !ok {
		return nil
	}
	if err := m.UnmarkRefresh(ctx, login); err != nil {
		return fmt.Errorf("clearing refresh mark of %q: %w", login, err)
	}
	return nil
}
