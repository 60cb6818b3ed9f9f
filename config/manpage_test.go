package config

import (
	"maps"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// manPage is the scdoc source of imap-oauth-proxy.toml(5).
const manPage = "../docs/imap-oauth-proxy.toml.5.scd"

// manSections maps each top-level table of the file to the man page section
// that documents its keys. A table the parser accepts but this map lacks
// fails TestManPageHasEveryKey.
var manSections = map[string]string{
	"server":         "SERVER KEYS",
	"providers":      "PROVIDER KEYS",
	"accounts":       "ACCOUNT KEYS",
	"store":          "STORE KEYS",
	"proxy_protocol": "PROXY PROTOCOL KEYS",
}

// manEntry is one key's entry in the man page: the text from its term line
// up to the next term or section.
type manEntry struct {
	section string
	text    string
}

// manTerm matches the keys a term line defines: "*key* = _type_", possibly
// several on one line ("*tls_cert* = _path_, *tls_key* = _path_").
var manTerm = regexp.MustCompile(`\*([a-z0-9_]+)\* =`)

// readManEntries parses the man page source into its entries, by section
// and key. A key defined twice in one section is an error.
func readManEntries(t *testing.T) map[string]map[string]*manEntry {
	t.Helper()
	src, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	entries := make(map[string]map[string]*manEntry)
	var section string
	var current []*manEntry
	for _, line := range strings.Split(string(src), "\n") {
		switch {
		case strings.HasPrefix(line, "# "):
			section = strings.TrimPrefix(line, "# ")
			current = nil
		case strings.HasPrefix(line, "*") && manTerm.MatchString(line):
			current = nil
			for _, m := range manTerm.FindAllStringSubmatch(line, -1) {
				if entries[section] == nil {
					entries[section] = make(map[string]*manEntry)
				}
				if entries[section][m[1]] != nil {
					t.Errorf("%s: %s: key %s is defined twice", manPage, section, m[1])
				}
				e := &manEntry{section: section}
				entries[section][m[1]] = e
				current = append(current, e)
			}
		case line != "" && !strings.HasPrefix(line, "\t"):
			current = nil // a paragraph of the section, not of the entry
		default:
			for _, e := range current {
				e.text += " " + strings.TrimSpace(line)
			}
		}
	}
	return entries
}

// TestManPageHasEveryKey fails when a key the parser accepts is missing from
// imap-oauth-proxy.toml(5), or when the page documents a key the parser does
// not accept, so that the man page cannot silently fall behind the code.
func TestManPageHasEveryKey(t *testing.T) {
	entries := readManEntries(t)
	tables := tableTypes()
	for top := range fieldNames(reflect.TypeFor[file]()) {
		section, ok := manSections[top]
		if !ok {
			t.Errorf("the parser accepts the table [%s], which %s has no section for (add it to manSections)", top, manPage)
			continue
		}
		typ, ok := tables[top]
		if !ok {
			t.Errorf("tableTypes has no type for the table [%s]", top)
			continue
		}
		keys := fieldNames(typ)
		for _, key := range slices.Sorted(maps.Keys(keys)) {
			if entries[section][key] == nil {
				t.Errorf("%s: section %s does not document %s.%s, which the parser accepts", manPage, section, top, key)
			}
		}
		for _, key := range slices.Sorted(maps.Keys(entries[section])) {
			if !keys[key] {
				t.Errorf("%s: section %s documents %s, which the parser does not accept in [%s]", manPage, section, key, top)
			}
		}
	}
}

// manDefault finds "Default: VALUE" in an entry, VALUE being a TOML string,
// integer or boolean.
var manDefault = regexp.MustCompile(`Default: ("[^"]*"|[0-9]+|true|false)`)

// TestManPageServerDefaults parses each default the man page gives for a
// [server] key and checks that it is the parser's default.
func TestManPageServerDefaults(t *testing.T) {
	entries := readManEntries(t)[manSections["server"]]
	want := Defaults()
	for _, key := range slices.Sorted(maps.Keys(fieldNames(tableTypes()["server"]))) {
		e := entries[key]
		if e == nil {
			continue // TestManPageHasEveryKey reports it
		}
		m := manDefault.FindStringSubmatch(e.text)
		if m == nil {
			t.Errorf("%s: server key %s gives no default (\"Default: VALUE\")", manPage, key)
			continue
		}
		cfg, err := Parse([]byte("[server]\n"+key+" = "+m[1]+"\n"), "")
		if err != nil {
			t.Errorf("%s: server key %s: the documented default %s does not parse: %v", manPage, key, m[1], err)
			continue
		}
		if !reflect.DeepEqual(cfg.Server, want) {
			t.Errorf("%s: server key %s: the documented default %s is not the parser's default\n got %+v\nwant %+v",
				manPage, key, m[1], cfg.Server, want)
		}
	}
}

// TestManPagesRender runs scdoc on both man pages, so that a syntax error
// in their source fails the tests rather than make install. Outside CI it
// skips when scdoc is not installed.
func TestManPagesRender(t *testing.T) {
	scdoc, err := exec.LookPath("scdoc")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("scdoc not installed (apt-get install scdoc)")
		}
		t.Skip("scdoc not installed (apt-get install scdoc)")
	}
	for _, page := range []string{manPage, "../docs/imap-oauth-proxy.1.scd"} {
		src, err := os.Open(page)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(scdoc)
		cmd.Stdin = src
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		src.Close()
		if err != nil {
			t.Errorf("scdoc < %s: %v\n%s", page, err, stderr.String())
			continue
		}
		if !strings.Contains(string(out), ".SH NAME") {
			t.Errorf("scdoc < %s: no NAME section in the output", page)
		}
	}
}
