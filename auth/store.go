package auth

import (
	"bytes"
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
)

// Token record format. A record is a JSON file; see recordFile.
const (
	recordVersion   = 1
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

// ErrRecordChanged is returned (wrapped) by Update and SetPassword when the
// record on disk is no longer the one the Unlocked was read from: another
// process created a new authorization, changed the password, rotated the
// token, or removed the record. Nothing is written; Open the record again.
var ErrRecordChanged = errors.New("token record changed on disk")

// Secret is what a record protects.
type Secret struct {
	RefreshToken string `json:"refresh_token,omitempty"`
}

// KDFParams are argon2id parameters. They are stored in each record, so a
// record is always opened with the parameters it was written with.
type KDFParams struct {
	Time      uint32 // passes over the memory
	MemoryKiB uint32 // memory in KiB
	Threads   uint8  // lanes
}

// DefaultKDFParams returns the parameters new records use unless
// StoreOptions say otherwise: 3 passes, 64 MiB, 2 lanes.
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

// StoreOptions tune a Store. A nil *StoreOptions means all defaults.
type StoreOptions struct {
	// KDF are the argon2id parameters for new records (Create and
	// SetPassword). Zero fields take DefaultKDFParams' values. Existing
	// records keep the parameters they were written with.
	KDF KDFParams
	// KeyCacheSize bounds the number of derived keys kept in memory. If
	// zero, 256.
	KeyCacheSize int
}

// Store is a directory of encrypted token records, one file per login. It
// is safe for concurrent use; several processes may share a directory (each
// write replaces a whole file atomically).
type Store struct {
	dir string
	kdf KDFParams

	// keys maps cacheKey(login, kdf, salt, password) to the derived key.
	// The cache key is an HMAC under macKey, which never leaves this
	// process, so neither the password nor a fast password check is kept.
	keys   *lru.Cache[[sha256.Size]byte, []byte]
	macKey []byte

	kdfSem  chan struct{} // bounds concurrent argon2 runs (each takes MemoryKiB)
	writeMu sync.Mutex    // serializes check-and-replace of record files
	kdfRuns atomic.Int64  // argon2 runs so far, for tests

	// beforeRename, if set (by tests), runs on the synced and closed
	// temporary file; an error fails the write there.
	beforeRename func(tmp string) error
}

// NewStore returns a Store for the records in dir, creating dir (mode 0700)
// if it does not exist.
func NewStore(dir string, opts *StoreOptions) (*Store, error) {
	if opts == nil {
		opts = &StoreOptions{}
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
	removeStaleTemps(dir, time.Now())
	keys, err := lru.New[[sha256.Size]byte, []byte](size)
	if err != nil {
		return nil, fmt.Errorf("creating key cache: %w", err)
	}
	macKey := make([]byte, 32)
	rand.Read(macKey)
	return &Store{
		dir:    dir,
		kdf:    kdf,
		keys:   keys,
		macKey: macKey,
		kdfSem: make(chan struct{}, runtime.NumCPU()),
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
	ID         string    // random, new on every Create: one authorization
	Generation uint64    // 1 on Create, +1 on every Update and SetPassword
	Updated    time.Time // time of the last write
}

// Unlocked is an opened record: its metadata, its secret, and the derived
// key, so that it can be rewritten without the password. It is not safe
// for concurrent use: callers serialize Update and SetPassword of one
// Unlocked, and do not read Info or Secret during them.
type Unlocked struct {
	Info   RecordInfo
	Secret Secret

	key      []byte
	salt     []byte
	kdf      KDFParams
	cacheKey [sha256.Size]byte
}

// recordFile is the JSON form of a record.
type recordFile struct {
	Version    int       `json:"version"`
	Login      string    `json:"login"`
	ID         string    `json:"id"`
	Generation uint64    `json:"generation"`
	Updated    string    `json:"updated"` // RFC 3339, as authenticated
	KDF        kdfRecord `json:"kdf"`
	Nonce      []byte    `json:"nonce"`      // base64, 12 bytes, new on every write
	Ciphertext []byte    `json:"ciphertext"` // base64, AES-256-GCM of the JSON Secret
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

func (r *recordFile) info() (RecordInfo, error) {
	updated, err := time.Parse(time.RFC3339, r.Updated)
	if err != nil {
		return RecordInfo{}, fmt.Errorf("%w: bad updated time", ErrCorruptRecord)
	}
	return RecordInfo{Login: r.Login, ID: r.ID, Generation: r.Generation, Updated: updated}, nil
}

// aad is the additional authenticated data of a record: everything in the
// clear that the ciphertext is bound to. Each field is length-prefixed.
func (r *recordFile) aad() []byte {
	var b []byte
	str := func(s string) {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	str("imap-oauth-proxy token record")
	b = binary.AppendUvarint(b, uint64(r.Version))
	str(r.Login)
	str(r.ID)
	b = binary.AppendUvarint(b, r.Generation)
	str(r.Updated)
	str(r.KDF.Alg)
	b = binary.AppendUvarint(b, uint64(r.KDF.Time))
	b = binary.AppendUvarint(b, uint64(r.KDF.MemoryKiB))
	b = binary.AppendUvarint(b, uint64(r.KDF.Threads))
	str(string(r.KDF.Salt))
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
	u := &Unlocked{
		Info: RecordInfo{Login: login, ID: newID()},
		salt: randomBytes(saltSize),
		kdf:  s.kdf,
	}
	u.cacheKey = s.cacheKey(login, u.kdf, u.salt, password)
	u.key = s.deriveKey(password, u.salt, u.kdf)

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.write(u, secret, 1, u.salt, u.kdf, u.key); err != nil {
		return nil, fmt.Errorf("creating token record for %q: %w", login, err)
	}
	s.keys.Add(u.cacheKey, u.key)
	return u, nil
}

// Open reads login's record and decrypts it with password. A repeated Open
// with the right password is served from the key cache without running
// the KDF; a wrong password always runs it.
func (s *Store) Open(login, password string) (*Unlocked, error) {
	u, err := s.open(login, password)
	if err != nil {
		return nil, fmt.Errorf("opening token record for %q: %w", login, err)
	}
	return u, nil
}

func (s *Store) open(login, password string) (*Unlocked, error) {
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
	key, cached := s.keys.Get(ck)
	if !cached {
		key = s.deriveKey(password, rec.KDF.Salt, kdf)
	}
	plain, err := gcmOpen(key, rec.Nonce, rec.Ciphertext, rec.aad())
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
		s.keys.Add(ck, key)
	}
	return &Unlocked{
		Info:     info,
		Secret:   secret,
		key:      key,
		salt:     rec.KDF.Salt,
		kdf:      kdf,
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

// Update re-encrypts secret under u's key and salt with Generation+1 and a
// new nonce, replaces the record atomically, and updates u in place.
// Callers serialize Updates of one record. If the record on disk is not
// the one u was read from (see ErrRecordChanged), nothing is written; the
// check is exact within one Store and best effort between processes (no
// file locking: of two racing renames, the last wins).
// If only syncing the directory fails, the new record is in place, u is
// updated, and the error is returned.
func (s *Store) Update(u *Unlocked, secret Secret) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.checkCurrent(u); err != nil {
		return fmt.Errorf("updating token record for %q: %w", u.Info.Login, err)
	}
	if err := s.write(u, secret, u.Info.Generation+1, u.salt, u.kdf, u.key); err != nil {
		return fmt.Errorf("updating token record for %q: %w", u.Info.Login, err)
	}
	return nil
}

// SetPassword re-encrypts u's secret under newPassword with a new salt
// (and the Store's current KDF parameters), keeping the ID, with
// Generation+1, and updates u in place. Callers serialize it with Update.
// Like Update, it writes nothing if the record changed on disk.
func (s *Store) SetPassword(u *Unlocked, newPassword string) error {
	if err := checkPassword(newPassword); err != nil {
		return fmt.Errorf("changing password of token record for %q: %w", u.Info.Login, err)
	}
	salt := randomBytes(saltSize)
	kdf := s.kdf
	key := s.deriveKey(newPassword, salt, kdf)
	ck := s.cacheKey(u.Info.Login, kdf, salt, newPassword)

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.checkCurrent(u); err != nil {
		return fmt.Errorf("changing password of token record for %q: %w", u.Info.Login, err)
	}
	oldCK := u.cacheKey
	if err := s.write(u, u.Secret, u.Info.Generation+1, salt, kdf, key); err != nil {
		return fmt.Errorf("changing password of token record for %q: %w", u.Info.Login, err)
	}
	s.keys.Remove(oldCK)
	u.cacheKey = ck
	s.keys.Add(ck, key)
	return nil
}

// checkCurrent returns an error wrapping ErrRecordChanged unless the record
// on disk has u's ID and generation. s.writeMu is held.
func (s *Store) checkCurrent(u *Unlocked) error {
	if u == nil || u.key == nil {
		return errors.New("record is not unlocked")
	}
	rec, err := s.read(u.Info.Login)
	if errors.Is(err, ErrNoRecord) {
		return fmt.Errorf("%w: %w", ErrRecordChanged, err)
	}
	if err != nil {
		return err
	}
	if rec.ID != u.Info.ID || rec.Generation != u.Info.Generation {
		return fmt.Errorf("%w: on disk id %s generation %d, have id %s generation %d",
			ErrRecordChanged, rec.ID, rec.Generation, u.Info.ID, u.Info.Generation)
	}
	return nil
}

// write encrypts secret into a record with u's login and ID and the given
// generation, salt, params and key, replaces the file, and on success
// updates u. s.writeMu is held.
func (s *Store) write(u *Unlocked, secret Secret, gen uint64, salt []byte, kdf KDFParams, key []byte) error {
	rec := &recordFile{
		Version:    recordVersion,
		Login:      u.Info.Login,
		ID:         u.Info.ID,
		Generation: gen,
		Updated:    time.Now().UTC().Format(time.RFC3339Nano),
		KDF: kdfRecord{
			Alg:       kdfAlgArgon2id,
			Time:      kdf.Time,
			MemoryKiB: kdf.MemoryKiB,
			Threads:   kdf.Threads,
			Salt:      salt,
		},
	}
	plain, err := json.Marshal(secret)
	if err != nil {
		return fmt.Errorf("encoding secret: %w", err)
	}
	defer clear(plain)
	rec.Nonce, rec.Ciphertext, err = gcmSeal(key, plain, rec.aad())
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
		u.salt = salt
		u.kdf = kdf
		u.key = key
	}
	return err
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

// staleTempAge is how old a temporary record file must be before NewStore
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
	f, err := os.Open(s.Path(login))
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
	case rec.Version != recordVersion:
		return nil, fmt.Errorf("%w: unsupported version %d", ErrCorruptRecord, rec.Version)
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

// deriveKey runs argon2id, at most runtime.NumCPU() at a time.
func (s *Store) deriveKey(password string, salt []byte, kdf KDFParams) []byte {
	s.kdfSem <- struct{}{}
	defer func() { <-s.kdfSem }()
	s.kdfRuns.Add(1)
	pw := []byte(password)
	defer clear(pw)
	return argon2.IDKey(pw, salt, kdf.Time, kdf.MemoryKiB, kdf.Threads, keySize)
}

const gcmNonceSize = 12

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
func (s *Store) Decoy(password string) {
	s.deriveKey(password, decoySalt, s.kdf)
}
