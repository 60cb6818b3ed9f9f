package tokenstore

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"
)

// Upper bounds on KDF parameters, so that a damaged or hostile record
// cannot make Open allocate without limit.
const (
	maxKDFTime      = 64
	maxKDFMemoryKiB = 1 << 20 // 1 GiB
)

// KDFParams are argon2id parameters. They are stored in each record, so a
// record is always opened with the parameters it was written with.
type KDFParams struct {
	Time      uint32 // passes over the memory
	MemoryKiB uint32 // memory in KiB
	Threads   uint8  // lanes
}

// DefaultKDFParams returns the parameters new records use unless
// Options say otherwise: 3 passes, 64 MiB, 2 lanes.
func DefaultKDFParams() KDFParams {
	return KDFParams{Time: 3, MemoryKiB: 64 * 1024, Threads: 2}
}

func (p KDFParams) check() error {
	switch {
	case p.Time < 1 || p.Time > maxKDFTime:
		return fmt.Errorf("argon2id time %d out of range 1..%d", p.Time, maxKDFTime)
	case p.Threads < 1:
		return errors.New("argon2id threads must be at least 1")
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > maxKDFMemoryKiB:
		return fmt.Errorf("argon2id memory %d KiB out of range %d..%d",
			p.MemoryKiB, 8*uint32(p.Threads), maxKDFMemoryKiB)
	}
	return nil
}

// cacheKey identifies a derived key without storing what derives it:
// HMAC-SHA256 under the per-Store macKey of the login, the KDF parameters,
// the salt and the password.
func (s *Store) cacheKey(login string, kdf KDFParams, salt []byte, password string) [sha256.Size]byte {
	m, ok := s.macs.Get().(hash.Hash)
	if !ok {
		m = hmac.New(sha256.New, s.macKey)
	}
	defer func() {
		m.Reset()
		s.macs.Put(m)
	}()
	var buf [128]byte
	b := buf[:0]
	b = binary.AppendUvarint(b, uint64(len(login)))
	b = append(b, login...)
	b = append(b, 0)
	b = binary.AppendUvarint(b, uint64(kdf.Time))
	b = binary.AppendUvarint(b, uint64(kdf.MemoryKiB))
	b = binary.AppendUvarint(b, uint64(kdf.Threads))
	b = binary.AppendUvarint(b, uint64(len(salt)))
	b = append(b, salt...)
	b = append(b, 0)
	m.Write(b)
	m.Write([]byte(password))
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// deriveKey runs argon2id once the KDF queue lets it start.
func (s *Store) deriveKey(ctx context.Context, password string, salt []byte, kdf KDFParams) ([]byte, error) {
	release, err := s.kdf.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	s.kdfRuns.Add(1)
	pw := []byte(password)
	defer clear(pw)
	return argon2.IDKey(pw, salt, kdf.Time, kdf.MemoryKiB, kdf.Threads, keySize), nil
}

// kdfQueue bounds argon2id runs: cap(running) at a time, at most
// maxWaiting waiting behind them, and none waiting longer than maxWait.
// Under a flood of password checks the excess fails fast instead of
// making every login, the owner's included, wait behind it. It is safe
// for concurrent use.
type kdfQueue struct {
	running    chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	maxWait    time.Duration
}

// acquire waits for a run slot; release gives it back.
func (q *kdfQueue) acquire(ctx context.Context) (release func(), err error) {
	release = func() { <-q.running }
	select {
	case q.running <- struct{}{}:
		return release, nil
	default:
	}
	if q.waiting.Add(1) > q.maxWaiting {
		q.waiting.Add(-1)
		return nil, fmt.Errorf("%w: %d waiting", ErrKDFBusy, q.maxWaiting)
	}
	defer q.waiting.Add(-1)
	timer := time.NewTimer(q.maxWait)
	defer timer.Stop()
	select {
	case q.running <- struct{}{}:
		return release, nil
	case <-timer.C:
		return nil, fmt.Errorf("%w: none could start within %v", ErrKDFBusy, q.maxWait)
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting to check the password: %w", ctx.Err())
	}
}
