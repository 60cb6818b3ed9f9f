package tokenstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testKDF keeps argon2 cheap in tests.
var testKDF = KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}

const (
	testLogin    = "helpdesk@contoso.com"
	testPassword = "correct horse battery staple"
	testRT       = "0.AXoA-refresh-token-value-that-must-never-leak"
)

func newTestStore(t *testing.T, dir string) *Store {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := New(dir, &Options{KDF: testKDF})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStoreRoundTrip(t *testing.T) {
	s := newTestStore(t, filepath.Join(t.TempDir(), "state", "tokens"))
	if fi, err := os.Stat(s.Dir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store dir: %v, %v; want mode 0700", fi, err)
	}
	if ok, err := s.Exists(testLogin); err != nil || ok {
		t.Fatalf("Exists before Create = %v, %v; want false, nil", ok, err)
	}
	created, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if created.Info.Generation != 1 || created.Info.Login != testLogin || len(created.Info.ID) != 32 {
		t.Errorf("Create info = %+v; want generation 1, login %q, 32-digit id", created.Info, testLogin)
	}
	if ok, err := s.Exists(testLogin); err != nil || !ok {
		t.Fatalf("Exists after Create = %v, %v; want true, nil", ok, err)
	}

	// A second Store (another process) has a cold key cache.
	s2 := newTestStore(t, s.Dir())
	u, err := s2.Open(testLogin, testPassword)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if u.Secret.RefreshToken != testRT {
		t.Errorf("Open secret = %q; want %q", u.Secret.RefreshToken, testRT)
	}
	if u.Info.ID != created.Info.ID || u.Info.Generation != 1 || u.Info.Login != testLogin {
		t.Errorf("Open info = %+v; want %+v", u.Info, created.Info)
	}
	if !u.Info.Updated.Equal(created.Info.Updated) {
		t.Errorf("Open updated = %v; want %v", u.Info.Updated, created.Info.Updated)
	}
	info, err := s2.Info(testLogin)
	if err != nil || info != u.Info {
		t.Errorf("Info = %+v, %v; want %+v", info, err, u.Info)
	}

	// Create again: a new authorization replaces the old one.
	again, err := s.Create(testLogin, "other password", Secret{RefreshToken: "rt2"})
	if err != nil {
		t.Fatalf("second Create: %v", err)
	}
	if again.Info.ID == created.Info.ID || again.Info.Generation != 1 {
		t.Errorf("second Create info = %+v; want a new id and generation 1", again.Info)
	}
	if _, err := s2.Open(testLogin, testPassword); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("Open with the replaced password: %v; want ErrWrongPassword", err)
	}
}

func TestStoreWrongPassword(t *testing.T) {
	s := newTestStore(t, "")
	if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	before := readFile(t, s.Path(testLogin))
	for _, pw := range []string{"hunter2", testPassword + " ", strings.ToUpper(testPassword), ""} {
		u, err := s.Open(testLogin, pw)
		if !errors.Is(err, ErrWrongPassword) || u != nil {
			t.Errorf("Open(%q) = %v, %v; want nil, ErrWrongPassword", pw, u, err)
		}
		if err != nil && (strings.Contains(err.Error(), testRT) || pw != "" && strings.Contains(err.Error(), pw)) {
			t.Errorf("error %q reveals a secret", err)
		}
	}
	if after := readFile(t, s.Path(testLogin)); !bytes.Equal(before, after) {
		t.Error("a wrong password changed the record")
	}
	if _, err := s.Open(testLogin, testPassword); err != nil {
		t.Errorf("Open with the right password after wrong ones: %v", err)
	}
}

func TestStoreKeyCache(t *testing.T) {
	dir := t.TempDir()
	if _, err := newTestStore(t, dir).Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	s := newTestStore(t, dir)
	runs := func() int64 { return s.kdfRuns.Load() }

	step := func(name, password string, wantErr error, wantRuns int64) {
		t.Helper()
		before := runs()
		_, err := s.Open(testLogin, password)
		if !errors.Is(err, wantErr) {
			t.Errorf("%s: Open error %v; want %v", name, err, wantErr)
		}
		if got := runs() - before; got != wantRuns {
			t.Errorf("%s: %d KDF runs; want %d", name, got, wantRuns)
		}
	}
	step("first open", testPassword, nil, 1)
	step("second open", testPassword, nil, 0)
	step("wrong password", "wrong", ErrWrongPassword, 1)
	step("wrong password again", "wrong", ErrWrongPassword, 1)
	step("third open", testPassword, nil, 0)

	// Many concurrent opens of a warm record run no KDF at all.
	before := runs()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := s.Open(testLogin, testPassword); err != nil {
				t.Errorf("concurrent Open: %v", err)
			}
		})
	}
	wg.Wait()
	if got := runs() - before; got != 0 {
		t.Errorf("concurrent warm opens ran the KDF %d times", got)
	}

	// The cache is bounded.
	small, err := New(dir, &Options{KDF: testKDF, KeyCacheSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := small.Create("other", "pw", Secret{}); err != nil {
		t.Fatal(err)
	}
	small.Open(testLogin, testPassword) // evicts "other"
	before = small.kdfRuns.Load()
	if _, err := small.Open("other", "pw"); err != nil {
		t.Fatal(err)
	}
	if got := small.kdfRuns.Load() - before; got != 1 {
		t.Errorf("open after eviction ran the KDF %d times; want 1", got)
	}
}

func TestStoreUpdate(t *testing.T) {
	s := newTestStore(t, "")
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt1"})
	if err != nil {
		t.Fatal(err)
	}
	id := u.Info.ID
	var first recordFile
	if err := json.Unmarshal(readFile(t, s.Path(testLogin)), &first); err != nil {
		t.Fatal(err)
	}
	runs := s.kdfRuns.Load()
	for gen := uint64(2); gen <= 4; gen++ {
		if err := s.Update(u, Secret{RefreshToken: "rt" + string(rune('0'+gen))}); err != nil {
			t.Fatalf("Update to generation %d: %v", gen, err)
		}
		if u.Info.Generation != gen || u.Info.ID != id {
			t.Errorf("after Update: info %+v; want generation %d, id %s", u.Info, gen, id)
		}
	}
	if got := s.kdfRuns.Load() - runs; got != 0 {
		t.Errorf("Update ran the KDF %d times; want 0", got)
	}
	if u.Secret.RefreshToken != "rt4" {
		t.Errorf("u.Secret = %q; want rt4", u.Secret.RefreshToken)
	}
	var last recordFile
	if err := json.Unmarshal(readFile(t, s.Path(testLogin)), &last); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first.Nonce, last.Nonce) {
		t.Error("Update reused the nonce")
	}
	if !bytes.Equal(first.KDF.Salt, last.KDF.Salt) {
		t.Error("Update changed the salt")
	}

	got, err := newTestStore(t, s.Dir()).Open(testLogin, testPassword)
	if err != nil {
		t.Fatalf("Open after Update: %v", err)
	}
	if got.Secret.RefreshToken != "rt4" || got.Info.Generation != 4 || got.Info.ID != id {
		t.Errorf("Open after Update = %+v %q", got.Info, got.Secret.RefreshToken)
	}
	checkDirClean(t, s)
}

func TestStoreUpdateStale(t *testing.T) {
	s := newTestStore(t, "")
	a, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Open(testLogin, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(a, Secret{RefreshToken: "rt2"}); err != nil {
		t.Fatal(err)
	}
	// b was read before a's rotation: writing it would undo the rotation.
	before := readFile(t, s.Path(testLogin))
	if err := s.Update(b, Secret{RefreshToken: "stale"}); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("Update of a stale record: %v; want ErrRecordChanged", err)
	}
	if err := s.SetPassword(b, "new"); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("SetPassword of a stale record: %v; want ErrRecordChanged", err)
	}
	if !bytes.Equal(before, readFile(t, s.Path(testLogin))) {
		t.Error("a stale Update wrote the record")
	}

	// A new authorization (Create) is never overwritten by the old one.
	if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "fresh"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(a, Secret{RefreshToken: "rt3"}); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("Update after re-Create: %v; want ErrRecordChanged", err)
	}

	// Nor is a removed record brought back.
	if err := os.Remove(s.Path(testLogin)); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(a, Secret{RefreshToken: "rt3"}); !errors.Is(err, ErrRecordChanged) {
		t.Errorf("Update after removal: %v; want ErrRecordChanged", err)
	}
	if ok, _ := s.Exists(testLogin); ok {
		t.Error("Update recreated a removed record")
	}
}

func TestStoreTamper(t *testing.T) {
	tamper := []struct {
		name    string
		edit    func(r map[string]any)
		wantErr error
	}{
		{"flip ciphertext byte", func(r map[string]any) {
			ct, _ := base64.StdEncoding.DecodeString(r["ciphertext"].(string))
			ct[0] ^= 1
			r["ciphertext"] = base64.StdEncoding.EncodeToString(ct)
		}, ErrWrongPassword},
		{"flip tag byte", func(r map[string]any) {
			ct, _ := base64.StdEncoding.DecodeString(r["ciphertext"].(string))
			ct[len(ct)-1] ^= 1
			r["ciphertext"] = base64.StdEncoding.EncodeToString(ct)
		}, ErrWrongPassword},
		{"flip nonce byte", func(r map[string]any) {
			n, _ := base64.StdEncoding.DecodeString(r["nonce"].(string))
			n[0] ^= 1
			r["nonce"] = base64.StdEncoding.EncodeToString(n)
		}, ErrWrongPassword},
		{"change generation", func(r map[string]any) { r["generation"] = 7 }, ErrWrongPassword},
		{"change id", func(r map[string]any) { r["id"] = strings.Repeat("0", 32) }, ErrWrongPassword},
		{"change updated", func(r map[string]any) { r["updated"] = "2001-02-03T04:05:06Z" }, ErrWrongPassword},
		{"change kdf time", func(r map[string]any) { r["kdf"].(map[string]any)["time"] = 2 }, ErrWrongPassword},
		{"change salt", func(r map[string]any) {
			r["kdf"].(map[string]any)["salt"] = base64.StdEncoding.EncodeToString(make([]byte, 16))
		}, ErrWrongPassword},
		{"change version", func(r map[string]any) { r["version"] = 3 }, ErrCorruptRecord},
		{"claim version 1", func(r map[string]any) { r["version"] = 1 }, ErrWrongPassword},
		{"change secret generation", func(r map[string]any) { r["secret_generation"] = 9 }, ErrWrongPassword},
		{"flip wrapped key byte", func(r map[string]any) {
			k, _ := base64.StdEncoding.DecodeString(r["wrapped_key"].(string))
			k[3] ^= 1
			r["wrapped_key"] = base64.StdEncoding.EncodeToString(k)
		}, ErrWrongPassword},
		{"flip key nonce byte", func(r map[string]any) {
			n, _ := base64.StdEncoding.DecodeString(r["key_nonce"].(string))
			n[0] ^= 1
			r["key_nonce"] = base64.StdEncoding.EncodeToString(n)
		}, ErrWrongPassword},
		{"short wrapped key", func(r map[string]any) { r["wrapped_key"] = "AAAA" }, ErrCorruptRecord},
		{"short salt", func(r map[string]any) { r["kdf"].(map[string]any)["salt"] = "AAAA" }, ErrCorruptRecord},
		{"unknown kdf", func(r map[string]any) { r["kdf"].(map[string]any)["alg"] = "scrypt" }, ErrCorruptRecord},
		{"huge kdf memory", func(r map[string]any) { r["kdf"].(map[string]any)["memory_kib"] = 1 << 30 }, ErrCorruptRecord},
		{"other login", func(r map[string]any) { r["login"] = "mallory" }, ErrCorruptRecord},
	}
	for _, tt := range tamper {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t, "")
			if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
				t.Fatal(err)
			}
			var r map[string]any
			if err := json.Unmarshal(readFile(t, s.Path(testLogin)), &r); err != nil {
				t.Fatal(err)
			}
			tt.edit(r)
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.Path(testLogin), data, 0o600); err != nil {
				t.Fatal(err)
			}
			// The same Store: a warm key cache must not help a tampered record.
			if u, err := s.Open(testLogin, testPassword); !errors.Is(err, tt.wantErr) {
				t.Errorf("Open opened=%v, %v; want %v", u != nil, err, tt.wantErr) // u holds the token: never printed
			}
		})
	}

	t.Run("copy to another login", func(t *testing.T) {
		s := newTestStore(t, "")
		if _, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT}); err != nil {
			t.Fatal(err)
		}
		data := readFile(t, s.Path(testLogin))
		const other = "attacker@contoso.com"
		if err := os.WriteFile(s.Path(other), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Open(other, testPassword); err == nil {
			t.Error("Open of a copied record succeeded")
		}
		// Also with the login field edited to match the file.
		edited := bytes.Replace(data, []byte(`"`+testLogin+`"`), []byte(`"`+other+`"`), 1)
		if err := os.WriteFile(s.Path(other), edited, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Open(other, testPassword); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("Open of a copied, relabelled record: %v; want ErrWrongPassword", err)
		}
	})

	t.Run("garbage", func(t *testing.T) {
		s := newTestStore(t, "")
		if err := os.WriteFile(s.Path(testLogin), []byte("not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Open(testLogin, testPassword); !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("Open of garbage: %v; want ErrCorruptRecord", err)
		}
		if _, err := s.Info(testLogin); !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("Info of garbage: %v; want ErrCorruptRecord", err)
		}
	})
}

// checkDirClean checks that every file in the store is a 0600 record and
// that no temporary file is left.
func checkDirClean(t *testing.T, s *Store) {
	t.Helper()
	entries, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".token") {
			t.Errorf("stray file %q in the store", e.Name())
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o600 {
			t.Errorf("%s: mode %v; want 0600", e.Name(), fi.Mode())
		}
	}
}

func TestStoreFileMode(t *testing.T) {
	s := newTestStore(t, "")
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT})
	if err != nil {
		t.Fatal(err)
	}
	// A record written by something else with loose permissions is
	// tightened by the next write.
	if err := os.Chmod(s.Path(testLogin), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(u, Secret{RefreshToken: testRT + "2"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPassword(u, "new password"); err != nil {
		t.Fatal(err)
	}
	checkDirClean(t, s)
}

func TestStoreFailedWriteKeepsRecord(t *testing.T) {
	s := newTestStore(t, "")
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: "rt1"})
	if err != nil {
		t.Fatal(err)
	}
	before := readFile(t, s.Path(testLogin))
	errInjected := errors.New("injected failure")
	var tmpSeen string
	s.files.beforeRename = func(tmp string) error {
		tmpSeen = tmp
		if fi, err := os.Stat(tmp); err != nil || fi.Mode() != 0o600 {
			t.Errorf("temporary file: %v, %v; want mode 0600", fi, err)
		}
		if filepath.Dir(tmp) != s.Dir() {
			t.Errorf("temporary file %q is not in the store directory", tmp)
		}
		return errInjected
	}
	if err := s.Update(u, Secret{RefreshToken: "rt2"}); !errors.Is(err, errInjected) {
		t.Fatalf("Update with a failing write: %v; want the injected error", err)
	}
	if err := s.SetPassword(u, "new password"); !errors.Is(err, errInjected) {
		t.Fatalf("SetPassword with a failing write: %v; want the injected error", err)
	}
	if _, err := s.Create(testLogin, "other", Secret{RefreshToken: "rt3"}); !errors.Is(err, errInjected) {
		t.Fatalf("Create with a failing write: %v; want the injected error", err)
	}
	if _, err := os.Stat(tmpSeen); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
	if u.Info.Generation != 1 || u.Secret.RefreshToken != "rt1" {
		t.Errorf("failed writes changed u: %+v %q", u.Info, u.Secret.RefreshToken)
	}
	if !bytes.Equal(before, readFile(t, s.Path(testLogin))) {
		t.Error("failed writes changed the record")
	}
	checkDirClean(t, s)

	s.files.beforeRename = nil
	if err := s.Update(u, Secret{RefreshToken: "rt2"}); err != nil {
		t.Fatalf("Update after the failures: %v", err)
	}
	if got, err := newTestStore(t, s.Dir()).Open(testLogin, testPassword); err != nil || got.Secret.RefreshToken != "rt2" {
		t.Errorf("Open after recovery = %+v, %v", got, err)
	}

	if os.Geteuid() != 0 { // root ignores directory permissions
		if err := os.Chmod(s.Dir(), 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(s.Dir(), 0o700) })
		if err := s.Update(u, Secret{RefreshToken: "rt4"}); err == nil {
			t.Error("Update in a read-only directory succeeded")
		}
		if u.Info.Generation != 2 {
			t.Errorf("failed Update changed u: %+v", u.Info)
		}
	}
}

func TestStoreNoSecretsInFile(t *testing.T) {
	s := newTestStore(t, "")
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(u, Secret{RefreshToken: testRT}); err != nil {
		t.Fatal(err)
	}
	data := readFile(t, s.Path(testLogin))
	for _, secret := range []string{testRT, testPassword} {
		forms := []string{secret, hex.EncodeToString([]byte(secret))}
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			// Every alignment of the secret inside a base64 stream
			// shares a long enough run with one of these.
			for shift := range 3 {
				e := enc.EncodeToString(append(make([]byte, shift), secret...))
				forms = append(forms, e[4*((shift+2)/3)+4:len(e)-4])
			}
		}
		for _, f := range forms {
			if bytes.Contains(data, []byte(f)) {
				t.Errorf("record contains %q (a form of a secret)", f)
			}
		}
	}
	// Keys are not stored in clear either.
	for _, key := range [][]byte{u.passKey, u.dataKey} {
		if len(key) != keySize {
			t.Fatalf("unlocked record holds a key of %d bytes", len(key))
		}
		if bytes.Contains(data, key) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString(key))) {
			t.Error("record contains a key in clear")
		}
	}
	// The record is the documented JSON.
	var r map[string]any
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "login", "id", "generation", "secret_generation", "updated", "kdf",
		"key_nonce", "wrapped_key", "nonce", "ciphertext"} {
		if _, ok := r[k]; !ok {
			t.Errorf("record lacks %q", k)
		}
	}
	if r["version"] != 2.0 || r["login"] != testLogin || r["generation"] != 2.0 || r["secret_generation"] != 2.0 {
		t.Errorf("record header = %v %v %v %v", r["version"], r["login"], r["generation"], r["secret_generation"])
	}
	kdf, _ := r["kdf"].(map[string]any)
	if kdf["alg"] != "argon2id" || kdf["time"] != 1.0 || kdf["memory_kib"] != 64.0 || kdf["threads"] != 1.0 {
		t.Errorf("record kdf = %v", kdf)
	}
}

var escapeTests = []struct {
	login, file string
}{
	{"helpdesk@contoso.com", "helpdesk@contoso.com.token"},
	{"glpi-collector", "glpi-collector.token"},
	{"a_b+c=d", "a_b+c=d.token"},
	{"../x", "%2E.%2Fx.token"},
	{".hidden", "%2Ehidden.token"},
	{".", "%2E.token"},
	{"..", "%2E..token"},
	{"a b/c", "a%20b%2Fc.token"},
	{`a\b`, "a%5Cb.token"},
	{"100%", "100%25.token"},
	{"é", "%C3%A9.token"},
	{"x\x00y", "x%00y.token"},
}

func TestStorePathEscaping(t *testing.T) {
	s := newTestStore(t, "")
	seen := map[string]string{}
	for _, tt := range escapeTests {
		got := s.Path(tt.login)
		if want := filepath.Join(s.Dir(), tt.file); got != want {
			t.Errorf("Path(%q) = %q; want %q", tt.login, got, want)
		}
		if filepath.Dir(got) != s.Dir() {
			t.Errorf("Path(%q) = %q escapes the store", tt.login, got)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("Path(%q) = Path(%q)", tt.login, other)
		}
		seen[got] = tt.login
	}
	// Awkward logins work end to end and stay inside the store.
	for _, login := range []string{"../x", ".hidden", "a b/c", ".."} {
		if _, err := s.Create(login, testPassword, Secret{RefreshToken: login}); err != nil {
			t.Fatalf("Create(%q): %v", login, err)
		}
		u, err := s.Open(login, testPassword)
		if err != nil || u.Secret.RefreshToken != login {
			t.Errorf("Open(%q) = %v, %v", login, u, err)
		}
	}
	checkDirClean(t, s)
	if _, err := os.Stat(filepath.Join(filepath.Dir(s.Dir()), "x.token")); err == nil {
		t.Error("a record was written outside the store")
	}
}

func TestStoreNoRecord(t *testing.T) {
	s := newTestStore(t, "")
	_, err := s.Open("nobody", testPassword)
	if !errors.Is(err, ErrNoRecord) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing record: %v; want ErrNoRecord and fs.ErrNotExist", err)
	}
	if errors.Is(err, ErrWrongPassword) {
		t.Errorf("missing record reported as wrong password: %v", err)
	}
	if _, err := s.Info("nobody"); !errors.Is(err, ErrNoRecord) {
		t.Errorf("Info of a missing record: %v; want ErrNoRecord", err)
	}
	if s.kdfRuns.Load() != 0 {
		t.Error("a missing record ran the KDF")
	}
	if _, err := s.Open("", testPassword); err == nil {
		t.Error("Open of the empty login succeeded")
	}
	if _, err := s.Create("", testPassword, Secret{}); err == nil {
		t.Error("Create of the empty login succeeded")
	}
	if _, err := s.Create("x", "", Secret{}); err == nil {
		t.Error("Create with an empty password succeeded")
	}
}

func TestStoreSetPassword(t *testing.T) {
	s := newTestStore(t, "")
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT})
	if err != nil {
		t.Fatal(err)
	}
	var before recordFile
	json.Unmarshal(readFile(t, s.Path(testLogin)), &before)
	if err := s.SetPassword(u, "new password"); err != nil {
		t.Fatalf("SetPassword: %v", err)
	}
	if u.Info.Generation != 2 {
		t.Errorf("generation after SetPassword = %d; want 2", u.Info.Generation)
	}
	var after recordFile
	json.Unmarshal(readFile(t, s.Path(testLogin)), &after)
	if bytes.Equal(before.KDF.Salt, after.KDF.Salt) {
		t.Error("SetPassword kept the salt")
	}
	if after.ID != before.ID {
		t.Error("SetPassword changed the id")
	}
	for _, st := range []*Store{s, newTestStore(t, s.Dir())} { // warm and cold cache
		if _, err := st.Open(testLogin, testPassword); !errors.Is(err, ErrWrongPassword) {
			t.Errorf("Open with the old password: %v; want ErrWrongPassword", err)
		}
		got, err := st.Open(testLogin, "new password")
		if err != nil || got.Secret.RefreshToken != testRT || got.Info.ID != u.Info.ID || got.Info.Generation != 2 {
			t.Errorf("Open with the new password = %+v, %v", got, err)
		}
	}
	// The unlocked record keeps working for rotations under the new key.
	if err := s.Update(u, Secret{RefreshToken: "rotated"}); err != nil {
		t.Fatal(err)
	}
	got, err := newTestStore(t, s.Dir()).Open(testLogin, "new password")
	if err != nil || got.Secret.RefreshToken != "rotated" || got.Info.Generation != 3 {
		t.Errorf("Open after SetPassword and Update = %+v, %v", got, err)
	}
}

func TestStoreOptions(t *testing.T) {
	s, err := New(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.params != DefaultKDFParams() {
		t.Errorf("default kdf = %+v; want %+v", s.params, DefaultKDFParams())
	}
	if s.keys.Len() != 0 || cap(s.kdf.running) < 1 {
		t.Error("bad defaults")
	}
	s, err = New(t.TempDir(), &Options{KDF: KDFParams{Time: 1, MemoryKiB: 64}})
	if err != nil {
		t.Fatal(err)
	}
	if want := (KDFParams{Time: 1, MemoryKiB: 64, Threads: 2}); s.params != want {
		t.Errorf("partial kdf = %+v; want %+v", s.params, want)
	}
	for _, bad := range []Options{
		{KDF: KDFParams{Time: 1, MemoryKiB: 4, Threads: 1}},
		{KDF: KDFParams{Time: 1000, MemoryKiB: 64, Threads: 1}},
		{KeyCacheSize: -1},
	} {
		if _, err := New(t.TempDir(), &bad); err == nil {
			t.Errorf("New(%+v) succeeded", bad)
		}
	}
}

func TestStoreConcurrent(t *testing.T) {
	logins := []string{"a", "b", "c"}
	// Every goroutine below may wait for the KDF at once: the default
	// queue (4 per CPU) is shorter than that on 2 CPUs.
	s, err := New(t.TempDir(), &Options{KDF: testKDF, KDFQueueLength: 4 * len(logins)})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range logins {
		if _, err := s.Create(l, "pw-"+l, Secret{RefreshToken: "rt-" + l}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, l := range logins {
		u, err := s.Open(l, "pw-"+l)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { // one writer per record, as documented
			for i := range 5 {
				if err := s.Update(u, Secret{RefreshToken: "rt-" + l + string(rune('0'+i))}); err != nil {
					t.Errorf("Update(%s): %v", l, err)
				}
			}
		})
		for range 3 {
			wg.Go(func() {
				for range 5 {
					if _, err := s.Open(l, "pw-"+l); err != nil {
						t.Errorf("Open(%s): %v", l, err)
					}
					if _, err := s.Open(l, "wrong"); !errors.Is(err, ErrWrongPassword) {
						t.Errorf("Open(%s, wrong): %v", l, err)
					}
				}
			})
		}
	}
	wg.Wait()
	for _, l := range logins {
		u, err := s.Open(l, "pw-"+l)
		if err != nil || u.Info.Generation != 6 || u.Secret.RefreshToken != "rt-"+l+"4" {
			t.Errorf("final %s = %+v, %v", l, u, err)
		}
	}
	checkDirClean(t, s)
}

// TestRecordTakesDirectoryOwner: root writing into a directory owned by
// the service's user leaves a record that user owns.
func TestRecordTakesDirectoryOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	dir := t.TempDir()
	const uid, gid = 4242, 4343
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	s, err := New(dir, &Options{KDF: KDFParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("collector", "pw", Secret{RefreshToken: "rt"}); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(s.Path("collector"))
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	if st.Uid != uid || st.Gid != gid {
		t.Errorf("record owned by %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
}

// TestDecoy: a decoy costs one key derivation, like a wrong password.
func TestDecoy(t *testing.T) {
	s, err := New(t.TempDir(), &Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	before := s.kdfRuns.Load()
	s.Decoy(context.Background(), "whatever")
	if runs := s.kdfRuns.Load() - before; runs != 1 {
		t.Errorf("Decoy ran the KDF %d times, want 1", runs)
	}
}

// TestStaleTempsRemoved: New removes temporary files a crashed write
// left behind, but not one young enough to be a write in progress.
func TestStaleTempsRemoved(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, ".collector.token.tmp123")
	fresh := filepath.Join(dir, ".collector.token.tmp456")
	other := filepath.Join(dir, ".keep")
	for _, p := range []string{stale, fresh, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * staleTempAge)
	for _, p := range []string{stale, other} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New(dir, &Options{KDF: testKDF}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temp file still there (%v)", err)
	}
	for _, p := range []string{fresh, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", filepath.Base(p), err)
		}
	}
}

// TestStoreRecordsPrintRedacted: printing an opened record or its secret,
// as a failing test or a careless log line would, shows no token or key.
func TestStoreRecordsPrintRedacted(t *testing.T) {
	s := newTestStore(t, "")
	u, err := s.Create(testLogin, testPassword, Secret{RefreshToken: testRT})
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, x := range []any{u, *u, u.Secret, []*Unlocked{u}} {
			out := fmt.Sprintf(format, x)
			if strings.Contains(out, testRT) || strings.Contains(out, fmt.Sprint(u.dataKey)) || strings.Contains(out, fmt.Sprint(u.passKey)) {
				t.Errorf("%s of %T shows a secret", format, x)
			}
		}
	}
	if out := fmt.Sprint(u); !strings.Contains(out, u.Info.ID) || !strings.Contains(out, "[redacted]") {
		t.Errorf("an opened record prints as %q; want its metadata and [redacted]", out)
	}
}
