package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStoreTable(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "db.dsn"), []byte("host=db user=proxy password=s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.dsn"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, text string
		want       Store
		problems   []string
	}{
		{name: "default", text: "", want: Store{Type: StoreFiles, Timeout: 5 * time.Second}},
		{name: "files", text: "[store]\ntype = \"files\"", want: Store{Type: StoreFiles, Timeout: 5 * time.Second}},
		{name: "dsn", text: "[store]\ntype = \"postgres\"\ndsn = \"host=db\"",
			want: Store{Type: StorePostgres, DSN: "host=db", Timeout: 5 * time.Second}},
		{name: "dsn_file", text: "[store]\ntype = \"postgres\"\ndsn_file = \"db.dsn\"",
			want: Store{Type: StorePostgres, DSN: "host=db user=proxy password=s3cret-pw", DSNFile: filepath.Join(dir, "db.dsn"), Timeout: 5 * time.Second}},
		{name: "timeout", text: "[store]\ntype = \"postgres\"\ndsn = \"host=db\"\ntimeout = \"800ms\"",
			want: Store{Type: StorePostgres, DSN: "host=db", Timeout: 800 * time.Millisecond}},
		{name: "zero timeout", text: "[store]\ntype = \"postgres\"\ndsn = \"host=db\"\ntimeout = \"0s\"", problems: []string{"store.timeout"}},
		{name: "timeout for files", text: "[store]\ntimeout = \"2s\"", problems: []string{"store.timeout"}},
		{name: "no dsn", text: "[store]\ntype = \"postgres\"", problems: []string{"store.dsn"}},
		{name: "both", text: "[store]\ntype = \"postgres\"\ndsn = \"x\"\ndsn_file = \"db.dsn\"", problems: []string{"store.dsn_file"}},
		{name: "empty file", text: "[store]\ntype = \"postgres\"\ndsn_file = \"empty.dsn\"", problems: []string{"store.dsn_file"}},
		{name: "missing file", text: "[store]\ntype = \"postgres\"\ndsn_file = \"none.dsn\"", problems: []string{"store.dsn_file"}},
		{name: "dsn for files", text: "[store]\ndsn = \"host=db\"", problems: []string{"store.dsn"}},
		{name: "unknown type", text: "[store]\ntype = \"redis\"", problems: []string{"store.type"}},
		{name: "unknown key", text: "[store]\ntype = \"files\"\nhost = \"db\"", problems: []string{"store.host"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.text), dir)
			if tc.problems == nil {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Store != tc.want {
					t.Fatalf("Store = %+v; want %+v", cfg.Store, tc.want)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Parse = %v; want a ValidationError", err)
			}
			for _, key := range tc.problems {
				if !strings.Contains(err.Error(), key) {
					t.Errorf("error %q does not name %s", err, key)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the DSN's password: %v", err)
			}
		})
	}
}

// TestStoreDSNSyntaxErrorRedacted: a syntax error near a dsn does not quote
// the line, which may hold a password.
func TestStoreDSNSyntaxErrorRedacted(t *testing.T) {
	_, err := Parse([]byte("[store]\ntype = \"postgres\"\ndsn = \"host=db password=s3cret-pw\" junk"), "")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Parse = %v; want a syntax error without the password", err)
	}
}
