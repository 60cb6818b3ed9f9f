package tokenstore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// A record is a JSON file (recordFile).
const (
	// recordVersion1 records hold the secret encrypted directly under the
	// key derived from the password. They are still read, and rewritten as
	// recordVersion at their next write.
	recordVersion1 = 1
	// recordVersion records hold the secret under a random data key, which
	// is stored wrapped (encrypted) under the key derived from the
	// password. A password change rewraps the data key, so another process
	// that holds the data key can still save a rotated token afterwards.
	recordVersion  = 2
	kdfAlgArgon2id = "argon2id"
	saltSize       = 16
	keySize        = 32 // AES-256
	idSize         = 16
)

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

func newID() string { return hex.EncodeToString(randomBytes(idSize)) }

// randomBytes returns n bytes from crypto/rand, which never fails.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// sealRecord encrypts secret under dataKey into a version 2 record of
// login and id with the given generations and the wrapping w of dataKey,
// and returns the record with its file content.
func sealRecord(login, id string, secret Secret, gen, secretGen uint64, w wrapping, dataKey []byte) (*recordFile, []byte, error) {
	rec := &recordFile{
		Version:          recordVersion,
		Login:            login,
		ID:               id,
		Generation:       gen,
		SecretGeneration: secretGen,
		Updated:          time.Now().UTC().Format(time.RFC3339Nano),
		KeyNonce:         w.nonce,
		WrappedKey:       w.sealed,
	}
	rec.setKDF(w.kdf, w.salt)
	plain, err := json.Marshal(secret)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding secret: %w", err)
	}
	defer clear(plain)
	rec.Nonce, rec.Ciphertext, err = gcmSeal(dataKey, plain, rec.secretAAD())
	if err != nil {
		return nil, nil, err
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("encoding record: %w", err)
	}
	return rec, append(data, '\n'), nil
}

// decodeRecord parses and checks the record file content data, which must
// be login's record. Errors wrap ErrCorruptRecord.
func decodeRecord(data []byte, login string) (*recordFile, error) {
	var rec recordFile
	if err := json.Unmarshal(data, &rec); err != nil {
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
