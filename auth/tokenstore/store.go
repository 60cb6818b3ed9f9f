package tokenstore

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"
)

// Token record format. A record is a JSON file; see recordFile.
const (
	// recordVersion1 records hold the secret encrypted directly under the
	// key derived from the password. They are still read, and rewritten as
	// recordVersion at their next write.
	recordVersion1 = 1
	// recordVersion records hold the secret under a random data key, which
	// is stored wrapped (encrypted) under the key derived from the
	// password. A password change rewraps the data key, so another process
	// that holds the data key can still save a rotated token afterwards.
	recordVersion   = 2
	recordSuffix    = ".token"
	kdfAlgArgon2id  = "argon2id"
	saltSize        = 16
	keySize         = 32 // AES-256
	idSize          = 16
	maxRecordSize   = 1 << 20
	defaultKeyCache = 256

	// Upper bounds on KDF parameters, so that a damaged or hostile record
	// cannot make Open allocate without limit.
	maxKDFTime      = 64
	maxKDFMemoryKiB = 1 << 20 // 1 GiB
)

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
}

// String redacts the secret, so that no log line or test failure that
// prints a Secret shows the token.
func (s Secret) String() string {
	if s.RefreshToken == "" {
		return "{no refresh token}"
	}
	return "{refresh token [redacted]}"
}

// GoString is String, for %#v.
func (s Secret) GoString() string { return s.String() }

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
}

// Store is a directory of encrypted token records, one file per login. It
// is safe for concurrent use; several processes may share a directory
// (each write replaces a whole file atomically, under a lock on the
// directory).
type Store struct {
	dir    string
	params KDFParams // for new records

	// keys maps cacheKey(login, kdf, salt, password) to the derived key.
	// The cache key is an HMAC under macKey, which never leaves this
	// process, so neither the password nor a fast password check is kept.
	keys   *lru.Cache[[sha256.Size]byte, []byte]
	macKey []byte

	kdf     kdfQueue     // bounds argon2 runs (each takes MemoryKiB) and their wait
	writeMu sync.Mutex   // serializes check-and-replace of record files (see lock)
	kdfRuns atomic.Int64 // argon2 runs so far, for tests

	// beforeRename, if set (by tests), runs on the synced and closed
	// temporary file; an error fails the write there.
	beforeRename func(tmp string) error
}

// New returns a Store for the records in dir, creating dir (mode 0700)
// if it does not exist.
func New(dir string, opts *Options) (*Store, error) {
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
	if dir == "" {
		return nil, errors.New("token store: empty directory name")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating token store directory: %w", err)
	}
	if err := checkStoreDir(dir); err != nil {
		return nil, err
	}
	removeStaleTemps(dir, time.Now())
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
	return &Store{
		dir:    dir,
		params: kdf,
		keys:   keys,
		macKey: macKey,
		kdf: kdfQueue{
			running:    make(chan struct{}, runtime.NumCPU()),
			maxWait:    queueWait,
			maxWaiting: int64(queueLength),
		},
	}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path returns the file of login's record: the login with every byte
// outside [A-Za-z0-9@_+=.-] (and a leading '.') written as %XX, plus
// ".token".
func (s *Store) Path(login string) string {
	return filepath.Join(s.dir, recordFileName(login))
}

// recordFileName escapes login into a file name that cannot be ".", "..",
// hidden, or contain a path separator.
func recordFileName(login string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(login); i++ {
		c := login[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '@', c == '_', c == '+', c == '=', c == '-',
			c == '.' && i > 0:
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		}
	}
	b.WriteString(recordSuffix)
	return b.String()
}

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

// wrapping is how a record's data key is protected: argon2id parameters
// and salt for the password's key, and the data key sealed under it.
type wrapping struct {
	kdf           KDFParams
	salt          []byte
	nonce, sealed []byte // empty in a version 1 record
}

// recordFile is the JSON form of a record.
type recordFile struct {
	Version          int       `json:"version"`
	Login            string    `json:"login"`
	ID               string    `json:"id"`
	Generation       uint64    `json:"generation"`
	SecretGeneration uint64    `json:"secret_generation,omitempty"` // version 2
	Updated          string    `json:"updated"`                     // RFC 3339, as authenticated
	KDF              kdfRecord `json:"kdf"`
	// KeyNonce and WrappedKey (version 2): AES-256-GCM of the data key
	// under the password's key.
	KeyNonce   []byte `json:"key_nonce,omitempty"`
	WrappedKey []byte `json:"wrapped_key,omitempty"`
	Nonce      []byte `json:"nonce"`      // base64, 12 bytes, new on every write
	Ciphertext []byte `json:"ciphertext"` // base64, AES-256-GCM of the JSON Secret
}

type kdfRecord struct {
	Alg       string `json:"alg"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Salt      []byte `json:"salt"`
}

func (r *recordFile) params() KDFParams {
	return KDFParams{Time: r.KDF.Time, MemoryKiB: r.KDF.MemoryKiB, Threads: r.KDF.Threads}
}

func (r *recordFile) wrapping() wrapping {
	return wrapping{kdf: r.params(), salt: r.KDF.Salt, nonce: r.KeyNonce, sealed: r.WrappedKey}
}

func (r *recordFile) info() (RecordInfo, error) {
	updated, err := time.Parse(time.RFC3339, r.Updated)
	if err != nil {
		return RecordInfo{}, fmt.Errorf("%w: bad updated time", ErrCorruptRecord)
	}
	secretGen := r.SecretGeneration
	if r.Version == recordVersion1 {
		secretGen = r.Generation
	}
	return RecordInfo{Login: r.Login, ID: r.ID, Generation: r.Generation,
		SecretGeneration: secretGen, Updated: updated}, nil
}

// aadBuilder builds additional authenticated data; each string is
// length-prefixed.
type aadBuilder []byte

func (b *aadBuilder) str(s string) {
	*b = binary.AppendUvarint(*b, uint64(len(s)))
	*b = append(*b, s...)
}

func (b *aadBuilder) num(n uint64) { *b = binary.AppendUvarint(*b, n) }

func (b *aadBuilder) kdf(r *recordFile) {
	b.str(r.KDF.Alg)
	b.num(uint64(r.KDF.Time))
	b.num(uint64(r.KDF.MemoryKiB))
	b.num(uint64(r.KDF.Threads))
	b.str(string(r.KDF.Salt))
}

// identity starts additional authenticated data with label and the
// record's version, login and ID.
func (r *recordFile) identity(label string) aadBuilder {
	var b aadBuilder
	b.str(label)
	b.num(uint64(r.Version))
	b.str(r.Login)
	b.str(r.ID)
	return b
}

// v1AAD is what a version 1 record's ciphertext is bound to: everything
// in the clear.
func (r *recordFile) v1AAD() []byte {
	b := r.identity("imap-oauth-proxy token record")
	b.num(r.Generation)
	b.str(r.Updated)
	b.kdf(r)
	return b
}

// wrapAAD is what the wrapped data key is bound to: the record's identity
// and the parameters of the password's key.
func (r *recordFile) wrapAAD() []byte {
	b := r.identity("imap-oauth-proxy record key")
	b.kdf(r)
	return b
}

// secretAAD is what a version 2 record's ciphertext is bound to: its
// identity, generations and time, and the wrapped key beside it.
func (r *recordFile) secretAAD() []byte {
	b := r.identity("imap-oauth-proxy token record")
	b.num(r.Generation)
	b.num(r.SecretGeneration)
	b.str(r.Updated)
	b.str(string(r.KeyNonce))
	b.str(string(r.WrappedKey))
	return b
}

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

	unlock, err := s.lock()
	if err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}
	defer unlock()
	if err := s.write(u, secret, 1, 1, w, dataKey, passKey); err != nil {
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
	rec, err := s.read(login)
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
	rec, err := s.read(login)
	if err == nil {
		var info RecordInfo
		if info, err = rec.info(); err == nil {
			return info, nil
		}
	}
	return RecordInfo{}, fmt.Errorf("reading token record of %q: %w", login, err)
}

// Exists reports whether login has a record file. It does not check that
// the file is a valid record.
func (s *Store) Exists(login string) (bool, error) {
	if err := checkLogin(login); err != nil {
		return false, fmt.Errorf("looking for token record of %q: %w", login, err)
	}
	_, err := os.Stat(s.Path(login))
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
// processes are kept out by a lock on the store directory.
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
	disk, unlock, err := s.lockCurrent(u)
	if err != nil {
		return err
	}
	defer unlock()
	dataKey, passKey, w := u.dataKey, u.passKey, disk.wrapping()
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
	return s.write(u, secret, disk.Generation+1, u.Info.SecretGeneration+1, w, dataKey, passKey)
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

	disk, unlock, err := s.lockCurrent(u)
	if err != nil {
		return err
	}
	defer unlock()
	if disk.Generation != u.Info.Generation {
		return fmt.Errorf("%w: on disk generation %d, have %d", ErrRecordChanged, disk.Generation, u.Info.Generation)
	}
	oldCK := u.cacheKey
	if err := s.write(u, u.Secret, disk.Generation+1, u.Info.SecretGeneration, w, dataKey, passKey); err != nil {
		return err
	}
	s.keys.Remove(oldCK)
	u.cacheKey = ck
	s.keys.Add(ck, passKey)
	return nil
}

// lockCurrent locks the store and returns u's record as current does,
// with the release of the lock; on error the store is not locked.
func (s *Store) lockCurrent(u *Unlocked) (*recordFile, func(), error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, nil, err
	}
	disk, err := s.current(u)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return disk, unlock, nil
}

// current reads u's record and returns it if it still holds the secret u
// was read with: same ID and SecretGeneration, and for a version 1 record
// the same generation. Otherwise the error wraps ErrRecordChanged. The
// store is locked.
func (s *Store) current(u *Unlocked) (*recordFile, error) {
	disk, err := s.read(u.Info.Login)
	if errors.Is(err, ErrNoRecord) {
		return nil, fmt.Errorf("%w: %w", ErrRecordChanged, err)
	}
	if err != nil {
		return nil, err
	}
	info, err := disk.info()
	if err != nil {
		return nil, err
	}
	if info.ID != u.Info.ID || info.SecretGeneration != u.Info.SecretGeneration ||
		disk.Version == recordVersion1 && info.Generation != u.Info.Generation {
		return nil, fmt.Errorf("%w: on disk id %s generation %d (secret %d), have id %s generation %d (secret %d)",
			ErrRecordChanged, info.ID, info.Generation, info.SecretGeneration,
			u.Info.ID, u.Info.Generation, u.Info.SecretGeneration)
	}
	return disk, nil
}

// wrapKey seals dataKey under passKey for the record of login and id whose
// password key has the given parameters and salt.
func wrapKey(login, id string, passKey, dataKey []byte, kdf KDFParams, salt []byte) (wrapping, error) {
	rec := &recordFile{Version: recordVersion, Login: login, ID: id}
	rec.setKDF(kdf, salt)
	nonce, sealed, err := gcmSeal(passKey, dataKey, rec.wrapAAD())
	if err != nil {
		return wrapping{}, err
	}
	return wrapping{kdf: kdf, salt: salt, nonce: nonce, sealed: sealed}, nil
}

func (r *recordFile) setKDF(kdf KDFParams, salt []byte) {
	r.KDF = kdfRecord{Alg: kdfAlgArgon2id, Time: kdf.Time, MemoryKiB: kdf.MemoryKiB, Threads: kdf.Threads, Salt: salt}
}

// write encrypts secret under dataKey into a version 2 record with u's
// login and ID, the given generations and the wrapping w of dataKey,
// replaces the file, and on success updates u. The store is locked.
func (s *Store) write(u *Unlocked, secret Secret, gen, secretGen uint64, w wrapping, dataKey, passKey []byte) error {
	rec := &recordFile{
		Version:          recordVersion,
		Login:            u.Info.Login,
		ID:               u.Info.ID,
		Generation:       gen,
		SecretGeneration: secretGen,
		Updated:          time.Now().UTC().Format(time.RFC3339Nano),
		KeyNonce:         w.nonce,
		WrappedKey:       w.sealed,
	}
	rec.setKDF(w.kdf, w.salt)
	plain, err := json.Marshal(secret)
	if err != nil {
		return fmt.Errorf("encoding secret: %w", err)
	}
	defer clear(plain)
	rec.Nonce, rec.Ciphertext, err = gcmSeal(dataKey, plain, rec.secretAAD())
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding record: %w", err)
	}
	data = append(data, '\n')
	info, err := rec.info()
	if err != nil {
		return err
	}
	renamed, err := s.replaceFile(recordFileName(u.Info.Login), data)
	if renamed {
		u.Info = info
		u.Secret = secret
		u.dataKey = dataKey
		u.passKey = passKey
		u.wrap = w
	}
	return err
}

// lock serializes writes to the store: within this process, and with
// other processes on the same directory (the CLI beside the daemon), by an
// exclusive flock on the directory. It returns the release.
func (s *Store) lock() (func(), error) {
	s.writeMu.Lock()
	d, err := os.Open(s.dir)
	if err != nil {
		s.writeMu.Unlock()
		return nil, fmt.Errorf("opening token store directory to lock it: %w", err)
	}
	for {
		err = unix.Flock(int(d.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		d.Close()
		s.writeMu.Unlock()
		return nil, fmt.Errorf("locking token store directory: %w", err)
	}
	return func() {
		d.Close() // releases the flock
		s.writeMu.Unlock()
	}, nil
}

// replaceFile atomically replaces name in the store directory with data:
// temporary file in the same directory (mode 0600), write, fsync, close,
// rename, fsync the directory. On failure before the rename the temporary
// file is removed and the old file is untouched. renamed reports whether
// the new file is in place.
func (s *Store) replaceFile(name string, data []byte) (renamed bool, err error) {
	// Temporary names start with '.', which escaped logins never do.
	f, err := os.CreateTemp(s.dir, "."+name+".tmp*")
	if err != nil {
		return false, fmt.Errorf("creating temporary file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return false, fmt.Errorf("setting mode of temporary file: %w", err)
	}
	if err := matchDirOwner(f, s.dir); err != nil {
		return false, err
	}
	if _, err := f.Write(data); err != nil {
		return false, fmt.Errorf("writing temporary file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return false, fmt.Errorf("syncing temporary file: %w", err)
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("closing temporary file: %w", err)
	}
	if s.beforeRename != nil {
		if err := s.beforeRename(tmp); err != nil {
			return false, err
		}
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		return false, fmt.Errorf("renaming temporary file: %w", err)
	}
	renamed = true
	if err := syncDir(s.dir); err != nil {
		return true, fmt.Errorf("syncing token store directory: %w", err)
	}
	return true, nil
}

// staleTempAge is how old a temporary record file must be before New
// removes it: younger ones may belong to a write in progress in another
// process (the CLI next to the daemon).
const staleTempAge = time.Minute

// removeStaleTemps deletes temporary files left by writes that crashed
// before their rename. They hold superseded (encrypted) records.
func removeStaleTemps(dir string, now time.Time) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, ".") || !strings.Contains(name, recordSuffix+".tmp") || !e.Type().IsRegular() {
			continue
		}
		if info, err := e.Info(); err == nil && now.Sub(info.ModTime()) > staleTempAge {
			os.Remove(filepath.Join(dir, name))
		}
	}
}

// matchDirOwner gives f the owner of dir when root writes into a directory
// that belongs to another user, so that `token import` run by root leaves
// records the service's own (possibly dynamic) user can read.
func matchDirOwner(f *os.File, dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("reading token store directory owner: %w", err)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("giving the record the directory's owner: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// read loads and checks login's record file. Errors wrap ErrNoRecord (with
// fs.ErrNotExist) or ErrCorruptRecord, or are I/O errors.
func (s *Store) read(login string) (*recordFile, error) {
	if err := checkLogin(login); err != nil {
		return nil, err
	}
	f, err := openRecordFile(s.Path(login))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", ErrNoRecord, err)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxRecordSize+1)); err != nil {
		return nil, fmt.Errorf("reading record file: %w", err)
	}
	if buf.Len() > maxRecordSize {
		return nil, fmt.Errorf("%w: file larger than %d bytes", ErrCorruptRecord, maxRecordSize)
	}
	var rec recordFile
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptRecord, err)
	}
	switch {
	case rec.Version != recordVersion && rec.Version != recordVersion1:
		return nil, fmt.Errorf("%w: unsupported version %d", ErrCorruptRecord, rec.Version)
	case rec.Version == recordVersion && (len(rec.KeyNonce) != gcmNonceSize || len(rec.WrappedKey) != keySize+gcmTagSize):
		return nil, fmt.Errorf("%w: wrapped key of %d bytes", ErrCorruptRecord, len(rec.WrappedKey))
	case rec.Login != login:
		return nil, fmt.Errorf("%w: file holds the record of %q", ErrCorruptRecord, rec.Login)
	case rec.KDF.Alg != kdfAlgArgon2id:
		return nil, fmt.Errorf("%w: unsupported kdf %q", ErrCorruptRecord, rec.KDF.Alg)
	case len(rec.KDF.Salt) != saltSize:
		return nil, fmt.Errorf("%w: salt of %d bytes", ErrCorruptRecord, len(rec.KDF.Salt))
	case len(rec.Nonce) != gcmNonceSize:
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrCorruptRecord, len(rec.Nonce))
	}
	if err := rec.params().check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorruptRecord, err)
	}
	return &rec, nil
}

// openRecordFile opens a record for reading. It follows no symbolic link
// and does not wait on a FIFO or a device (O_NOFOLLOW|O_NONBLOCK), and it
// refuses anything but a regular file: whoever could put one there must
// not be able to make a login hang or read another file.
func openRecordFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %s is a symbolic link", ErrNotRegular, path)
	}
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading record file: %w", err)
	}
	if !info.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is a %v", ErrNotRegular, path, info.Mode().Type())
	}
	return f, nil
}

// checkStoreDir refuses a token store directory that others could write
// to: one that is group- or world-writable, or owned by another user than
// this process's (or root). Such a directory would let them replace
// records, or plant FIFOs and links where records are read.
func checkStoreDir(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("checking token store directory: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("token store directory %s is not a directory", dir)
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("token store directory %s is group- or world-writable (mode %04o); run: chmod go-w %s", dir, perm, dir)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if euid := os.Geteuid(); ok && euid != 0 && st.Uid != 0 && int(st.Uid) != euid {
		return fmt.Errorf("token store directory %s belongs to uid %d, not to this user (uid %d) or root", dir, st.Uid, euid)
	}
	return nil
}

// cacheKey identifies a derived key without storing what derives it:
// HMAC-SHA256 under the per-Store macKey of the login, the KDF parameters,
// the salt and the password.
func (s *Store) cacheKey(login string, kdf KDFParams, salt []byte, password string) [sha256.Size]byte {
	m := hmac.New(sha256.New, s.macKey)
	var b []byte
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

const (
	gcmNonceSize = 12
	gcmTagSize   = 16
)

func gcmSeal(key, plain, aad []byte) (nonce, ciphertext []byte, err error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, nil, err
	}
	nonce = randomBytes(gcmNonceSize)
	return nonce, aead.Seal(nil, nonce, plain, aad), nil
}

func gcmOpen(key, nonce, ciphertext, aad []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, nonce, ciphertext, aad)
	if err != nil {
		return nil, ErrWrongPassword
	}
	return plain, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("creating cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("creating cipher: %w", err)
	}
	return aead, nil
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

func newID() string { return hex.EncodeToString(randomBytes(idSize)) }

// randomBytes returns n bytes from crypto/rand, which never fails.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
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
