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
	Type string `toml:"type"`
	// DSN is the PostgreSQL connection string (libpq key=value or URL) for
	// StorePostgres: the value of dsn, or the content of dsn_file with
	// surrounding white space removed. It may hold a password: never log
	// it.
	DSN string `toml:"dsn"`
	// DSNFile is dsn_file, resolved, or "".
	DSNFile string `toml:"dsn_file"`
	// Timeout bounds each read and write of the database, connecting
	// included (key timeout): a hung database costs a login at most this.
	Timeout time.Duration `toml:"timeout"`
}

// DefaultStoreTimeout is [store] timeout when not set.
const DefaultStoreTimeout = 5 * time.Second

// store checks the [store] table, decoded over its defaults.
func (p *parser) store(s Store) Store {
	if !p.enum(s.Type, []string{StoreFiles, StorePostgres}, "store.type") {
		s.Type = StoreFiles
	}
	p.duration(s.Timeout, "store", "timeout")
	switch {
	case s.Type == StoreFiles && (s.DSN != "" || s.DSNFile != ""):
		p.addf("store.dsn", `is for type = "postgres"; the files store uses server.state_dir`)
	case s.Type == StoreFiles && p.md.IsDefined("store", "timeout"):
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
