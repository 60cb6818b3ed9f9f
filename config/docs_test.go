package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// docsProblemAllowed matches the problems a config block in the docs may
// have: it names secret files that exist only on an operator's machine,
// and a block that shows one table may refer to a provider shown in
// another. A misspelled key, a value of the wrong type or an unknown value
// is never allowed.
var docsProblemAllowed = regexp.MustCompile(`: reading [a-z ]+: open /etc/imap-oauth-proxy/\S+: no such file or directory$|` +
	`grant: client_credentials needs providers\.\S+\.client_secret|` +
	`provider: unknown provider "`)

// TestDocsConfigBlocks parses every TOML block of README.md and docs/, so
// that the examples operators copy cannot fall behind the parser.
func TestDocsConfigBlocks(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "README.md"))
	block := regexp.MustCompile("(?s)```toml\n(.*?)```")
	blocks := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range block.FindAllStringSubmatch(string(data), -1) {
			blocks++
			_, err := Parse([]byte(m[1]), "")
			var verr *ValidationError
			switch {
			case err == nil:
			case errors.As(err, &verr):
				for _, p := range verr.Problems {
					if !docsProblemAllowed.MatchString(p) {
						t.Errorf("%s, TOML block %d: %s", file, i+1, p)
					}
				}
			default:
				t.Errorf("%s, TOML block %d: %v", file, i+1, err)
			}
		}
	}
	if blocks == 0 {
		t.Fatal("no TOML block found in the docs")
	}
}
