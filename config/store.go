package config

import (
	"os"
	"strings"
	"time"
)

// Store types, the values of [store] type.
const (
	StoreFiles    = "files"
	StorePostgres = "postgres"
)

// Store is the [store] table: where the encrypted token records live.
type Store struct {
	// Type is StoreFiles (the default: one file per login in
	// server.state_dir) or StorePostgres (a database shared by several
	// instances).
	Type string
	// DSN is the PostgreSQL connection string (libpq key=value or URL) for
	// StorePostgres: the value of dsn, or the content of dsn_file with
	// surrounding white space removed. It may hold a password: never log
	// it.
	DSN string
	// DSNFile is dsn_file, resolved, or "".
	DSNFile string
	// Timeout bounds each read and write of the database, connecting
	// included (key timeout): a hung database costs a login at most this.
	Timeout time.Duration
}

// DefaultStoreTimeout is [store] timeout when not set.
const DefaultStoreTimeout = 5 * time.Second

// rawStore is the [store] table before its values are checked.
type rawStore struct {
	Type    *string   `toml:"type"`
	DSN     *string   `toml:"dsn"`
	DSNFile *string   `toml:"dsn_file"`
	Timeout *duration `toml:"timeout"`
}

// store checks the [store] table.
func (p *parser) store(r *rawStore) Store {
	s := Store{Type: StoreFiles, Timeout: DefaultStoreTimeout}
	p.enum(r.Type, &s.Type, []string{StoreFiles, StorePostgres}, "store.type")
	setIf(&s.DSN, r.DSN)
	setIf(&s.DSNFile, r.DSNFile)
	p.duration(r.Timeout, &s.Timeout, "store.timeout")
	switch {
	case s.Type == StoreFiles && (s.DSN != "" || s.DSNFile != ""):
		p.addf("store.dsn", `is for type = "postgres"; the files store uses server.state_dir`)
	case s.Type == StoreFiles && r.Timeout != nil:
		p.addf("store.timeout", `is for type = "postgres"`)
	case s.Type != StorePostgres:
	case s.DSN != "" && s.DSNFile != "":
		p.addf("store.dsn_file", "conflicts with dsn: set only one")
	case s.DSNFile != "":
		s.DSNFile = p.resolve(s.DSNFile)
		b, err := os.ReadFile(s.DSNFile)
		if err != nil {
			p.addf("store.dsn_file", "reading connection string: %v", err)
			break
		}
		if s.DSN = strings.TrimSpace(string(b)); s.DSN == "" {
			p.addf("store.dsn_file", "file %s is empty", s.DSNFile)
		}
	case s.DSN == "":
		p.addf("store.dsn", `type = "postgres" needs dsn or dsn_file`)
	}
	return s
}
