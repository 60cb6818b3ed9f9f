// Package tokenstore keeps the encrypted token records: one file per
// login under the state directory, holding the login's refresh token
// (empty for app-only grants) encrypted under a key that only the local
// password unlocks.
//
// store.go is the API (Store, Open, Update, SetPassword), record.go the
// format of a record (JSON, AES-256-GCM and what each ciphertext is bound
// to), kdf.go the argon2id key derivation and its queue, and file.go the
// file handling (the directory lock, atomic replacement, owner, and the
// checks on the directory and on each file before it is read).
package tokenstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// defaultKeyCache is Options.KeyCacheSize when zero.
const defaultKeyCache = 256

// ErrNoRecord is returned (wrapped, together with fs.ErrNotExist) when a
// login has no token record.
var ErrNoRecord = errors.New("no token record")

// ErrWrongPassword is returned (wrapped) when a record does not decrypt: the
// password is wrong, or the record was altered.
var ErrWrongPassword = errors.New("wrong password or altered token record")

// ErrCorruptRecord is returned (wrapped) when a record file cannot be
// parsed or is inconsistent (unknown version, bad sizes, another login's
// record), before any password is tried.
var ErrCorruptRecord = errors.New("corrupt token record")

// ErrNotRegular is returned (wrapped) when a record's path holds
// something other than a regular file: a symbolic link, a FIFO, a device.
var ErrNotRegular = errors.New("token record is not a regular file")

// ErrNotCached is returned by OpenCached when the password's derived key
// is not in the cache: the password may be right or wrong, and only a key
// derivation (Open) tells.
var ErrNotCached = errors.New("password not in the key cache")

// ErrKDFBusy is returned (wrapped) when a key derivation could not start
// in time: as many run as there are CPUs, and the queue behind them is
// full or did not move within Options.KDFQueueWait.
var ErrKDFBusy = errors.New("too many password checks at once")

// ErrRecordChanged is returned (wrapped) by Update and SetPassword when the
// record on disk is no longer the one the Unlocked was read from: another
// process created a new authorization, changed the password, rotated the
// token, or removed the record. Nothing is written; Open the record again.
var ErrRecordChanged = errors.New("token record changed on disk")

// Secret is what a record protects.
type Secret struct {
	RefreshToken string `json:"refresh_token,omitempty"`
	// AccessToken and Expiry are the newest access token, kept only in a
	// Shared store, so that the instances that did not refresh use it
	// instead of refreshing again.
	AccessToken string    `json:"access_token,omitempty"`
	Expiry      time.Time `json:"expiry,omitzero"`
}

// String redacts the secret, so that no log line or test failure that
// prints a Secret shows the token.
func (s Secret) String() string {
	out := "{refresh token [redacted]"
	if s.RefreshToken == "" {
		out = "{no refresh token"
	}
	if s.AccessToken != "" {
		out += ", access token [redacted]"
	}
	return out + "}"
}

// GoString is String, for %#v.
func (s Secret) GoString() string { return s.String() }

// Options tune a Store. A nil *Options means all defaults.
type Options struct {
	// KDF are the argon2id parameters for new records (Create and
	// SetPassword). Zero fields take DefaultKDFParams' values. Existing
	// records keep the parameters they were written with.
	KDF KDFParams
	// KeyCacheSize bounds the number of derived keys kept in memory. If
	// zero, 256.
	KeyCacheSize int
	// KDFQueueWait bounds how long a key derivation waits for a CPU
	// (runtime.NumCPU() run at a time) before it fails with ErrKDFBusy.
	// If zero, 1 s.
	KDFQueueWait time.Duration
	// KDFQueueLength bounds how many key derivations wait at once; more
	// fail with ErrKDFBusy at once. If zero, 4 per CPU.
	KDFQueueLength int
	// SpillDir, for a shared store, is the directory (created 0700 if
	// missing) where a rotated record waits until the backend takes it
	// (Spill, PushSpill). If empty, there is none.
	SpillDir string
}

// Store keeps the encrypted token records, one per login, in a Backend: a
// directory of files (New) or a database shared by several instances
// (NewWithBackend with a Postgres). It is safe for concurrent use; several
// processes may share a directory (each write replaces a whole file
// atomically, under a lock on the directory) or a database (each write is
// a compare-and-swap on the record's generation).
type Store struct {
	backend Backend
	files   *fileBackend // the backend if it is a directory, else nil
	spill   *fileBackend // records waiting for a shared backend (spill.go); nil if none
	params  KDFParams    // for new records

	// keys maps cacheKey(login, kdf, salt, password) to the derived key.
	// The cache key is an HMAC under macKey, which never leaves this
	// process, so neither the password nor a fast password check is kept.
	keys   *lru.Cache[[sha256.Size]byte, []byte]
	macKey []byte

	kdf     kdfQueue     // bounds argon2 runs (each takes MemoryKiB) and their wait
	kdfRuns atomic.Int64 // argon2 runs so far, for tests
}

// New returns a Store for the records in dir, creating dir (mode 0700)
// if it does not exist. It refuses a dir that others could write to:
// group- or world-writable, or owned by a user other than this process's
// or root.
func New(dir string, opts *Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("token store: empty directory name")
	}
	files := &fileBackend{dir: dir}
	s, err := NewWithBackend(files, opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating token store directory: %w", err)
	}
	if err := checkStoreDir(dir); err != nil {
		return nil, err
	}
	removeStaleTemps(dir, time.Now())
	s.files = files
	return s, nil
}

// NewWithBackend returns a Store whose records live in b. Closing the
// Store closes b.
func NewWithBackend(b Backend, opts *Options) (*Store, error) {
	if opts == nil {
		opts = &Options{}
	}
	kdf := opts.KDF
	def := DefaultKDFParams()
	if kdf.Time == 0 {
		kdf.Time = def.Time
	}
	if kdf.MemoryKiB == 0 {
		kdf.MemoryKiB = def.MemoryKiB
	}
	if kdf.Threads == 0 {
		kdf.Threads = def.Threads
	}
	if err := kdf.check(); err != nil {
		return nil, fmt.Errorf("token store options: %w", err)
	}
	size := opts.KeyCacheSize
	if size == 0 {
		size = defaultKeyCache
	}
	if size < 0 {
		return nil, fmt.Errorf("token store options: negative key cache size %d", size)
	}
	keys, err := lru.New[[sha256.Size]byte, []byte](size)
	if err != nil {
		return nil, fmt.Errorf("creating key cache: %w", err)
	}
	macKey := make([]byte, 32)
	rand.Read(macKey)
	queueWait, queueLength := opts.KDFQueueWait, opts.KDFQueueLength
	if queueWait <= 0 {
		queueWait = time.Second
	}
	if queueLength <= 0 {
		queueLength = 4 * runtime.NumCPU()
	}
	var spill *fileBackend
	if opts.SpillDir != "" {
		if spill, err = openSpill(opts.SpillDir); err != nil {
			return nil, err
		}
	}
	return &Store{
		spill:   spill,
		backend: b,
		params:  kdf,
		keys:    keys,
		macKey:  macKey,
		kdf: kdfQueue{
			running:    make(chan struct{}, runtime.NumCPU()),
			maxWait:    queueWait,
			maxWaiting: int64(queueLength),
		},
	}, nil
}

// Dir returns the store's directory, or "" if its records are not files.
func (s *Store) Dir() string {
	if s.files == nil {
		return ""
	}
	return s.files.dir
}

// Path returns the file of login's record: the login with every byte
// outside [A-Za-z0-9@_+=.-] (and a leading '.') written as %XX, plus
// ".token". It is "" if the store's records are not files.
func (s *Store) Path(login string) string {
	if s.files == nil {
		return ""
	}
	return s.files.path(login)
}

// Shared reports whether other instances may share the store's records
// (a database): then refreshes take LockRefresh and access tokens are
// kept in the records.
func (s *Store) Shared() bool { return s.backend.Shared() }

// LockRefresh takes login's refresh lock, across every instance that
// shares the store, and returns its release. Hold it from reading the
// record (Reload) to saving the refreshed token (Update).
func (s *Store) LockRefresh(ctx context.Context, login string) (func(), error) {
	release, err := s.backend.LockRefresh(ctx, login)
	if err != nil {
		return nil, fmt.Errorf("taking refresh lock of %q: %w", login, err)
	}
	return release, nil
}

// Close releases the backend (a database's connections).
func (s *Store) Close() error { return s.backend.Close() }

// RecordInfo is the clear metadata of a record. Open authenticates it
// (it is bound to the ciphertext); Info does not.
type RecordInfo struct {
	Login      string
	ID         string // random, new on every Create: one authorization
	Generation uint64 // 1 on Create, +1 on every Update and SetPassword
	// SecretGeneration counts the writes that changed the secret: 1 on
	// Create, +1 on every Update; SetPassword keeps it.
	SecretGeneration uint64
	Updated          time.Time // time of the last write
}

// Unlocked is an opened record: its metadata, its secret, and its keys, so
// that it can be rewritten without the password. It is not safe for
// concurrent use: callers serialize Update and SetPassword of one
// Unlocked, and do not read Info or Secret during them.
type Unlocked struct {
	Info   RecordInfo
	Secret Secret

	dataKey []byte // the secret's key; nil for a version 1 record not yet rewritten
	// passKey is derived from the password and salt. It is nil once
	// another process has changed the password (its wrapping is kept).
	passKey  []byte
	wrap     wrapping
	cacheKey [sha256.Size]byte
}

// String shows the record's metadata only: never its secret or keys.
func (u Unlocked) String() string {
	return fmt.Sprintf("{%+v %v}", u.Info, u.Secret)
}

// GoString is String, for %#v.
func (u Unlocked) GoString() string { return u.String() }

// Create writes a new record for login (fresh salt, fresh ID, Generation
// 1) holding secret encrypted under password, replacing any existing
// record, and returns it unlocked.
func (s *Store) Create(login, password string, secret Secret) (*Unlocked, error) {
	if err := checkLogin(login); err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}
	if err := checkPassword(password); err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}
	u := &Unlocked{Info: RecordInfo{Login: login, ID: newID()}}
	salt := randomBytes(saltSize)
	passKey, err := s.deriveKey(context.Background(), password, salt, s.params)
	if err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}
	dataKey := randomBytes(keySize)
	w, err := wrapKey(login, u.Info.ID, passKey, dataKey, s.params, salt)
	if err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}

	err = s.write(u, secret, 1, 1, w, dataKey, passKey, func([]byte) error { return nil })
	if err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}
	u.cacheKey = s.cacheKey(login, s.params, salt, password)
	s.keys.Add(u.cacheKey, passKey)
	return u, nil
}

// Open reads login's record and decrypts it with password. A repeated Open
// with the right password is served from the key cache without running
// the KDF; a wrong password always runs it.
func (s *Store) Open(login, password string) (*Unlocked, error) {
	return s.OpenContext(context.Background(), login, password)
}

// OpenContext is Open for a login that gives up when ctx is done: a key
// derivation that cannot start before then, or within the queue's bound,
// fails with ErrKDFBusy (or ctx's error) and the password is not checked.
func (s *Store) OpenContext(ctx context.Context, login, password string) (*Unlocked, error) {
	u, err := s.open(ctx, login, password, false)
	if err != nil {
		return nil, fmt.Errorf("opening token record for %q: %w", login, err)
	}
	return u, nil
}

// OpenCached is Open without a key derivation: it succeeds only for a
// password whose derived key is cached (one that opened the record
// before), and fails with ErrNotCached otherwise, at the cost of a hash.
func (s *Store) OpenCached(login, password string) (*Unlocked, error) {
	u, err := s.open(context.Background(), login, password, true)
	if err != nil {
		return nil, fmt.Errorf("opening token record for %q: %w", login, err)
	}
	return u, nil
}

func (s *Store) open(ctx context.Context, login, password string, cachedOnly bool) (*Unlocked, error) {
	rec, err := s.read(ctx, login)
	if err != nil {
		return nil, err
	}
	info, err := rec.info()
	if err != nil {
		return nil, err
	}
	kdf := rec.params()
	ck := s.cacheKey(login, kdf, rec.KDF.Salt, password)
	passKey, cached := s.keys.Get(ck)
	switch {
	case !cached && cachedOnly:
		return nil, ErrNotCached
	case !cached:
		if passKey, err = s.deriveKey(ctx, password, rec.KDF.Salt, kdf); err != nil {
			return nil, err
		}
	}
	var plain, dataKey []byte
	if rec.Version == recordVersion1 {
		plain, err = gcmOpen(passKey, rec.Nonce, rec.Ciphertext, rec.v1AAD())
	} else if dataKey, err = gcmOpen(passKey, rec.KeyNonce, rec.WrappedKey, rec.wrapAAD()); err == nil {
		if len(dataKey) != keySize {
			return nil, fmt.Errorf("%w: data key of %d bytes", ErrCorruptRecord, len(dataKey))
		}
		plain, err = gcmOpen(dataKey, rec.Nonce, rec.Ciphertext, rec.secretAAD())
	}
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	var secret Secret
	if err := json.Unmarshal(plain, &secret); err != nil {
		// Authenticated but not a Secret: a bug, not an attack. Do not
		// echo the plaintext.
		return nil, fmt.Errorf("%w: undecodable secret", ErrCorruptRecord)
	}
	if !cached {
		s.keys.Add(ck, passKey)
	}
	return &Unlocked{
		Info:     info,
		Secret:   secret,
		dataKey:  dataKey,
		passKey:  passKey,
		wrap:     rec.wrapping(),
		cacheKey: ck,
	}, nil
}

// Info reads login's record metadata without a password. It is not
// authenticated: only Open proves that a record is intact.
func (s *Store) Info(login string) (RecordInfo, error) {
	rec, err := s.read(context.Background(), login)
	if err == nil {
		var info RecordInfo
		if info, err = rec.info(); err == nil {
			return info, nil
		}
	}
	return RecordInfo{}, fmt.Errorf("reading token record of %q: %w", login, err)
}

// Exists reports whether login has a record. It does not check that
// the file is a valid record.
func (s *Store) Exists(login string) (bool, error) {
	if err := checkLogin(login); err != nil {
		return false, fmt.Errorf("looking for token record of %q: %w", login, err)
	}
	var err error
	if s.files != nil {
		_, err = os.Stat(s.Path(login))
	} else {
		_, err = s.backend.Read(context.Background(), login)
		if errors.Is(err, ErrNoRecord) {
			err = fs.ErrNotExist
		}
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("looking for token record of %q: %w", login, err)
}

// Update encrypts secret as the next generation of u's record (new nonce),
// replaces the record atomically, and updates u in place. Callers
// serialize Updates of one record.
//
// The record on disk must still hold the secret u was read with: same ID
// (no new authorization since) and same SecretGeneration (no other
// rotation saved since); otherwise nothing is written (ErrRecordChanged).
// A password change by another process since is not a conflict: the
// secret is written under the data key u holds, with that process's
// wrapping of it, so it opens with the new password. Writers in other
// processes are kept out by the backend: a lock on the store directory,
// or the database row's lock and a compare-and-swap on its generation.
// If only syncing the directory fails, the new record is in place, u is
// updated, and the error is returned.
func (s *Store) Update(u *Unlocked, secret Secret) error {
	if err := s.update(u, secret); err != nil {
		return fmt.Errorf("updating token record for %q: %w", u.Info.Login, err)
	}
	return nil
}

func (s *Store) update(u *Unlocked, secret Secret) error {
	if u == nil || u.passKey == nil && u.dataKey == nil {
		return errors.New("record is not unlocked")
	}
	// The record to write depends on the one in place: prepare computes
	// it under the backend's exclusion, from the current bytes.
	var gen uint64
	dataKey, passKey, w := u.dataKey, u.passKey, u.wrap
	prepare := func(old []byte) error {
		disk, err := s.current(u, old)
		if err != nil {
			return err
		}
		dataKey, passKey, w = u.dataKey, u.passKey, disk.wrapping()
		switch {
		case disk.Version == recordVersion1:
			// u read this very version 1 record (current checked the
			// generation): give it a data key, wrapped under the same key.
			dataKey = randomBytes(keySize)
			if w, err = wrapKey(u.Info.Login, u.Info.ID, passKey, dataKey, u.wrap.kdf, u.wrap.salt); err != nil {
				return err
			}
		case u.dataKey == nil:
			// u read a version 1 record that another process has rewritten.
			return fmt.Errorf("%w: rewritten as version %d", ErrRecordChanged, disk.Version)
		case !bytes.Equal(disk.KDF.Salt, u.wrap.salt):
			passKey = nil // another process changed the password; keep its wrapping
		}
		gen = disk.Generation + 1
		return nil
	}
	return s.writeWith(u, secret, func() uint64 { return gen }, u.Info.SecretGeneration+1,
		func() (wrapping, []byte, []byte) { return w, dataKey, passKey }, prepare)
}

// SetPassword wraps u's data key under newPassword with a new salt (and
// the Store's current KDF parameters), keeping the ID and the secret, with
// Generation+1, and updates u in place. Callers serialize it with Update.
// Unlike Update it writes nothing if the record changed on disk in any way
// since u was read (ErrRecordChanged): Open it again and retry.
func (s *Store) SetPassword(u *Unlocked, newPassword string) error {
	if err := s.setPassword(u, newPassword); err != nil {
		return fmt.Errorf("changing password of token record for %q: %w", u.Info.Login, err)
	}
	return nil
}

func (s *Store) setPassword(u *Unlocked, newPassword string) error {
	if err := checkPassword(newPassword); err != nil {
		return err
	}
	if u == nil || u.passKey == nil && u.dataKey == nil {
		return errors.New("record is not unlocked")
	}
	salt := randomBytes(saltSize)
	kdf := s.params
	passKey, err := s.deriveKey(context.Background(), newPassword, salt, kdf)
	if err != nil {
		return err
	}
	ck := s.cacheKey(u.Info.Login, kdf, salt, newPassword)
	dataKey := u.dataKey
	if dataKey == nil { // a version 1 record: it gets a data key now
		dataKey = randomBytes(keySize)
	}
	w, err := wrapKey(u.Info.Login, u.Info.ID, passKey, dataKey, kdf, salt)
	if err != nil {
		return err
	}

	oldCK := u.cacheKey
	err = s.write(u, u.Secret, u.Info.Generation+1, u.Info.SecretGeneration, w, dataKey, passKey, func(old []byte) error {
		disk, err := s.current(u, old)
		if err != nil {
			return err
		}
		if disk.Generation != u.Info.Generation {
			return fmt.Errorf("%w: on disk generation %d, have %d", ErrRecordChanged, disk.Generation, u.Info.Generation)
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.keys.Remove(oldCK)
	u.cacheKey = ck
	s.keys.Add(ck, passKey)
	return nil
}

// current decodes old, the bytes in place of u's record, and returns the
// record if it still holds the secret u was read with: same ID and
// SecretGeneration, and for a version 1 record the same generation.
// Otherwise the error wraps ErrRecordChanged. Writers are kept out.
func (s *Store) current(u *Unlocked, old []byte) (*recordFile, error) {
	if old == nil {
		return nil, fmt.Errorf("%w: %w", ErrRecordChanged, ErrNoRecord)
	}
	disk, err := decodeRecord(old, u.Info.Login)
	if err != nil {
		return nil, err
	}
	info, err := disk.info()
	if err != nil {
		return nil, err
	}
	if info.ID != u.Info.ID || info.SecretGeneration != u.Info.SecretGeneration ||
		disk.Version == recordVersion1 && info.Generation != u.Info.Generation {
		return nil, fmt.Errorf("%w: stored id %s generation %d (secret %d), have id %s generation %d (secret %d)",
			ErrRecordChanged, info.ID, info.Generation, info.SecretGeneration,
			u.Info.ID, u.Info.Generation, u.Info.SecretGeneration)
	}
	return disk, nil
}

// write encrypts secret under dataKey into a version 2 record with u's
// login and ID, the given generations and the wrapping w of dataKey, and
// replaces the record if check accepts the bytes in place (nil if none).
// On success it updates u.
func (s *Store) write(u *Unlocked, secret Secret, gen, secretGen uint64, w wrapping, dataKey, passKey []byte, check func(old []byte) error) error {
	return s.writeWith(u, secret, func() uint64 { return gen }, secretGen,
		func() (wrapping, []byte, []byte) { return w, dataKey, passKey }, check)
}

// writeWith is write for a record whose generation and keys prepare
// computes from the bytes in place: gen and keys are called after it.
func (s *Store) writeWith(u *Unlocked, secret Secret, gen func() uint64, secretGen uint64,
	keys func() (wrapping, []byte, []byte), prepare func(old []byte) error) error {
	var rec *recordFile
	written, err := s.backend.Replace(context.Background(), u.Info.Login, func(old []byte) ([]byte, uint64, error) {
		if err := prepare(old); err != nil {
			return nil, 0, err
		}
		w, dataKey, _ := keys()
		var data []byte
		var err error
		if rec, data, err = sealRecord(u.Info.Login, u.Info.ID, secret, gen(), secretGen, w, dataKey); err != nil {
			return nil, 0, err
		}
		return data, rec.Generation, nil
	})
	if written {
		info, ierr := rec.info()
		if ierr != nil {
			return ierr
		}
		w, dataKey, passKey := keys()
		u.Info = info
		u.Secret = secret
		u.dataKey = dataKey
		u.passKey = passKey
		u.wrap = w
	}
	return err
}

// read loads and checks login's record. Errors wrap ErrNoRecord (with
// fs.ErrNotExist) or ErrCorruptRecord, or are the backend's errors.
func (s *Store) read(ctx context.Context, login string) (*recordFile, error) {
	if err := checkLogin(login); err != nil {
		return nil, err
	}
	data, err := s.backend.Read(ctx, login)
	if err != nil {
		return nil, err
	}
	return decodeRecord(data, login)
}

func checkLogin(login string) error {
	if login == "" {
		return errors.New("empty login")
	}
	return nil
}

func checkPassword(password string) error {
	if password == "" {
		return errors.New("empty password")
	}
	return nil
}

// decoySalt salts Decoy's derivations; its value does not matter.
var decoySalt = make([]byte, saltSize)

// Decoy spends one key derivation with the store's parameters and throws
// the result away, so that a login without a record answers as slowly as
// a wrong password and timing does not tell which logins exist.
//
// It waits for the KDF queue as OpenContext does and returns its error.
func (s *Store) Decoy(ctx context.Context, password string) error {
	_, err := s.deriveKey(ctx, password, decoySalt, s.params)
	return err
}

// Reload reads u's record again and, if another instance has saved a newer
// secret of the same authorization since u was read (a rotated refresh
// token, a shared access token), takes it into u and reports true. It
// decrypts with the data key u holds, so it needs no password; a password
// change by the other instance is kept. A record with another ID (a new
// authorization) or none fails with ErrRecordChanged.
func (s *Store) Reload(ctx context.Context, u *Unlocked) (bool, error) {
	changed, err := s.reload(ctx, u)
	if err != nil {
		return false, fmt.Errorf("reloading token record for %q: %w", u.Info.Login, err)
	}
	return changed, nil
}

func (s *Store) reload(ctx context.Context, u *Unlocked) (bool, error) {
	rec, err := s.read(FreshRead(ctx), u.Info.Login)
	if errors.Is(err, ErrNoRecord) {
		return false, fmt.Errorf("%w: %w", ErrRecordChanged, err)
	}
	if err != nil {
		return false, err
	}
	info, err := rec.info()
	if err != nil {
		return false, err
	}
	switch {
	case info.ID != u.Info.ID:
		return false, fmt.Errorf("%w: stored id %s, have id %s", ErrRecordChanged, info.ID, u.Info.ID)
	case info.SecretGeneration <= u.Info.SecretGeneration:
		return false, nil
	case rec.Version == recordVersion1 || u.dataKey == nil:
		return false, fmt.Errorf("%w: version %d record", ErrRecordChanged, rec.Version)
	}
	plain, err := gcmOpen(u.dataKey, rec.Nonce, rec.Ciphertext, rec.secretAAD())
	if err != nil {
		return false, err
	}
	defer clear(plain)
	var secret Secret
	if err := json.Unmarshal(plain, &secret); err != nil {
		return false, fmt.Errorf("%w: undecodable secret", ErrCorruptRecord)
	}
	if !bytes.Equal(rec.KDF.Salt, u.wrap.salt) {
		u.passKey = nil // another instance changed the password; keep its wrapping
	}
	u.Info = info
	u.Secret = secret
	u.wrap = rec.wrapping()
	return true, nil
}

// Logins lists the logins that have a record, sorted.
func (s *Store) Logins(ctx context.Context) ([]string, error) {
	logins, err := s.backend.Logins(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing token records: %w", err)
	}
	slices.Sort(logins)
	return logins, nil
}

// Export returns login's record as stored: encrypted, byte for byte, after
// checking that it is a well-formed record of login.
func (s *Store) Export(ctx context.Context, login string) ([]byte, error) {
	data, err := s.backend.Read(ctx, login)
	if err == nil {
		_, err = decodeRecord(data, login)
	}
	if err != nil {
		return nil, fmt.Errorf("exporting token record of %q: %w", login, err)
	}
	return data, nil
}

// Import stores data, a record Export returned (from any store), as
// login's record, byte for byte, replacing any record of login.
func (s *Store) Import(ctx context.Context, login string, data []byte) error {
	rec, err := decodeRecord(data, login)
	if err == nil {
		_, err = s.backend.Replace(ctx, login, func([]byte) ([]byte, uint64, error) { return data, rec.Generation, nil })
	}
	if err != nil {
		return fmt.Errorf("importing token record of %q: %w", login, err)
	}
	return nil
}

// Where names login's record for messages: its file, or a record in the
// shared store.
func (s *Store) Where(login string) string {
	if s.files != nil {
		return s.Path(login)
	}
	return fmt.Sprintf("the shared token store (record %q)", login)
}
