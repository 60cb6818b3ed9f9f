package config

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDurationKeysTakeStrings: the toml package would take an integer as
// nanoseconds (login_timeout = 30 would be 30ns); every duration key of
// every table refuses it, naming the key, among the other problems.
func TestDurationKeysTakeStrings(t *testing.T) {
	durations := 0
	for _, table := range []string{"server", "store", "proxy_protocol"} {
		typ := tableTypes()[table]
		for _, f := range reflect.VisibleFields(typ) {
			if f.Type != reflect.TypeFor[time.Duration]() {
				continue
			}
			durations++
			key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			path := table + "." + key
			_, err := Parse([]byte("["+table+"]\n"+key+" = 30\n[accounts.a]\nmailbox = \"a\"\n"), "")
			var verr *ValidationError
			if !errors.As(err, &verr) {
				t.Errorf("%s = 30: got %v, want a *ValidationError", path, err)
				continue
			}
			want := path + `: bad duration: want a string such as "30s", got integer`
			if !slices.Contains(verr.Problems, want) {
				t.Errorf("%s = 30: problems %q lack %q", path, verr.Problems, want)
			}
			if !slices.ContainsFunc(verr.Problems, func(p string) bool { return strings.HasPrefix(p, "accounts.a.provider: ") }) {
				t.Errorf("%s = 30: the other problem of the file is not reported: %q", path, verr.Problems)
			}
		}
	}
	if durations != 11 {
		t.Errorf("found %d duration keys, want 11 (9 in [server], 1 in [store], 1 in [proxy_protocol])", durations)
	}
}

// TestDurationThatDoesNotParse: a duration string time.ParseDuration
// refuses ends decoding like a value of the wrong type, and the error
// names the key and its line, and the value, also just after a line that
// holds a secret (the redaction of syntax errors does not hide it).
func TestDurationThatDoesNotParse(t *testing.T) {
	for _, tt := range []struct{ data, key string }{
		{"[server]\nlog_level = \"info\"\nlogin_timeout = \"soon\"\n", "server.login_timeout"},
		{"[store]\ntype = \"postgres\"\ndsn = \"password=hunter2\"\ntimeout = \"soon\"\n", "store.timeout"},
	} {
		_, err := Parse([]byte(tt.data), "")
		if err == nil {
			t.Fatalf("%s: Parse succeeded", tt.key)
		}
		for _, want := range []string{`line `, `"` + tt.key + `"`, `invalid duration: "soon"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %s", err, want)
			}
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error %q shows the password", err)
		}
	}
}

// TestProviderKeysOverPreset: a provider's keys replace the values of its
// type's preset one by one, zero values and shorter lists included, and
// leave the other values, and other providers of the type, as the preset
// has them.
func TestProviderKeysOverPreset(t *testing.T) {
	cfg, err := Parse([]byte(`[providers.set]
type = "microsoft"
tenant = "contoso.com"
client_id = "id"
scopes = ["https://outlook.office365.com/IMAP.AccessAsUser.All"]
imap_address = "imap.contoso.com:993"
mechanism = "oauthbearer"
max_sessions = 0
pop3_initial_response = true

[providers.preset]
type = "microsoft"
tenant = "contoso.com"
client_id = "id"
`), "")
	if err != nil {
		t.Fatal(err)
	}
	want := preset("microsoft", "contoso.com", "global")
	want.Name, want.Type, want.Tenant, want.Cloud, want.ClientID = "preset", "microsoft", "contoso.com", "global", "id"
	if got := cfg.Providers["preset"]; !reflect.DeepEqual(got, &want) {
		t.Errorf("provider without keys =\n%+v\nwant the preset\n%+v", got, &want)
	}
	want.Name = "set"
	want.Scopes = []string{"https://outlook.office365.com/IMAP.AccessAsUser.All"}
	want.IMAPAddress = "imap.contoso.com:993"
	want.Mechanism = "OAUTHBEARER"
	want.MaxSessions = 0
	want.POP3InitialResponse = true
	if got := cfg.Providers["set"]; !reflect.DeepEqual(got, &want) {
		t.Errorf("provider with keys =\n%+v\nwant\n%+v", got, &want)
	}
}

// TestUnknownKeysOfDecodedFields: the fields of the decoded types that
// the file does not set (a provider's or an account's name, its provider
// as a value) are no keys, and a key is known in its own case only.
func TestUnknownKeysOfDecodedFields(t *testing.T) {
	_, err := Parse([]byte(labProvider+`name = "other"

[accounts.a]
provider = "lab"
mailbox = "a"
login = "b"
Mailbox = "c"

[proxy_protocol]
Listeners = ["listen"]
`), testdataDir)
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	want := []string{
		"providers.lab.name: unknown key", "accounts.a.login: unknown key", "accounts.a.Mailbox: unknown key",
		"proxy_protocol.Listeners: unknown key",
	}
	if !slices.Equal(verr.Problems, want) {
		t.Errorf("problems\n%q\nwant\n%q", verr.Problems, want)
	}
}

// TestEmptyValuesAreGiven: a key set to "" is set, and checked, rather
// than taken for a key the file leaves out.
func TestEmptyValuesAreGiven(t *testing.T) {
	_, err := Parse([]byte(`[providers.m]
type = "microsoft"
client_id = "id"
tenant = ""
cloud = ""

[accounts.a]
provider = ""
mailbox = "a"
protocols = []
`), "")
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	want := []string{
		`providers.m.tenant: bad tenant "" (want a tenant ID, a domain or organizations)`,
		`providers.m.cloud: unknown value "" (want global, usgov, china)`,
		`accounts.a.provider: unknown provider ""`,
		`accounts.a.protocols: empty (want some of imap, pop3, smtp)`,
	}
	if !slices.Equal(verr.Problems, want) {
		t.Errorf("problems\n%q\nwant\n%q", verr.Problems, want)
	}
}

// TestSyntaxErrorOnSecretLineRedacted: a syntax error on a line that
// holds a secret is not shown, even where the toml package names the key
// before it (here the table) as the last key.
func TestSyntaxErrorOnSecretLineRedacted(t *testing.T) {
	_, err := Parse([]byte("[providers.p]\nclient_secret = \"hunter2\" x\n"), "")
	if err == nil || !strings.Contains(err.Error(), "details not shown") {
		t.Errorf("got %v, want the details of the syntax error hidden", err)
	}
}
