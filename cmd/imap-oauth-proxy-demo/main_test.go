package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// demoRun is the demo running in the test's process.
type demoRun struct {
	cancel context.CancelFunc
	done   chan error
	out    *bufio.Reader
}

// startDemo runs the demo with args until the test ends.
func startDemo(t *testing.T, args ...string) *demoRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	d := &demoRun{cancel: cancel, done: make(chan error, 1), out: bufio.NewReader(pr)}
	go func() {
		err := run(ctx, args, pw, io.Discard)
		pw.Close()
		d.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		go io.Copy(io.Discard, pr) // the demo may still be printing
		if err := <-d.done; err != nil {
			t.Errorf("demo: %v", err)
		}
	})
	return d
}

// waitFor reads the demo's stdout until a line matches re, and returns the
// submatches; it fails the test when stdout ends first or after 30 s.
func (d *demoRun) waitFor(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	found := make(chan []string, 1)
	go func() {
		defer close(found)
		for {
			line, err := d.out.ReadString('\n')
			if m := re.FindStringSubmatch(line); m != nil {
				found <- m
				return
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case m, ok := <-found:
		if !ok {
			t.Fatalf("the demo's output ended without a line matching %s", re)
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatalf("no line matching %s within 30 s", re)
		return nil
	}
}

func TestDemo(t *testing.T) {
	dir := t.TempDir()
	d := startDemo(t, "-listen", "127.0.0.1:0", "-dir", dir)
	addr := d.waitFor(t, regexp.MustCompile(`serving IMAP on (\S+)`))[1]
	if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("banner address %q: want 127.0.0.1 and a bound port (err %v)", addr, err)
	}
	d.waitFor(t, regexp.MustCompile(`Press Ctrl-C to stop\.`))
	if _, err := os.Stat(filepath.Join(dir, "state", demoLogin+".token")); err != nil {
		t.Errorf("demo token record: %v", err)
	}

	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	cl := imapclient.New(nc, nil)
	defer cl.Close()
	var imapErr *imap.Error
	err = cl.Login(demoLogin, "not-the-demo-password").Wait()
	if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("LOGIN with a wrong password: %v, want NO [AUTHENTICATIONFAILED]", err)
	}
	if err := cl.Login(demoLogin, demoPassword).Wait(); err != nil {
		t.Fatalf("LOGIN %s: %v", demoLogin, err)
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX: %v", err)
	}
	msgs, err := cl.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 1 || msgs[0].Envelope == nil || !strings.Contains(msgs[0].Envelope.Subject, "Welcome") {
		t.Errorf("welcome message not found: %+v", msgs)
	}
	if err := cl.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
}

// TestDemoUpstreamOnly checks what -upstream-only leaves for a proxy of
// one's own: provider.toml that a config can include, the CA, and a
// refresh token per mailbox that the token endpoint accepts.
func TestDemoUpstreamOnly(t *testing.T) {
	dir := t.TempDir()
	d := startDemo(t, "-upstream-only", "-dir", dir, "-mailbox", "a@example.test", "-mailbox", "b@example.test")
	d.waitFor(t, regexp.MustCompile(`provider, CA and refresh tokens in`))

	provider, err := os.ReadFile(filepath.Join(dir, "provider.toml"))
	if err != nil {
		t.Fatal(err)
	}
	text := "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n" + string(provider) +
		"\n[accounts.a]\nprovider = \"demo\"\nmailbox = \"a@example.test\"\ngrant = \"refresh_token\"\n"
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("a config with provider.toml: %v", err)
	}
	tokenURL := cfg.Providers["demo"].TokenURL
	for _, mailbox := range []string{"a@example.test", "b@example.test"} {
		file := filepath.Join(dir, mailbox+".refresh-token")
		info, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", file, info.Mode().Perm())
		}
		rt, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		oc := oauth2.Config{ClientID: "demo-client", ClientSecret: "demo-secret",
			Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInParams}}
		tok, err := oc.TokenSource(context.Background(), &oauth2.Token{RefreshToken: strings.TrimSpace(string(rt))}).Token()
		if err != nil || tok.AccessToken == "" {
			t.Errorf("the refresh token for %s: %v", mailbox, err)
		}
	}
}

// TestDemoUpstreamPersonalities serves the demo with each provider
// personality: the collector logs in and finds the welcome message, and
// Gmail's capabilities reach it in the OK to LOGIN.
func TestDemoUpstreamPersonalities(t *testing.T) {
	for _, tc := range []struct {
		upstream string
		gmailCap bool
	}{{"microsoft", false}, {"gmail", true}} {
		t.Run(tc.upstream, func(t *testing.T) {
			d := startDemo(t, "-listen", "127.0.0.1:0", "-dir", t.TempDir(), "-upstream", tc.upstream)
			addr := d.waitFor(t, regexp.MustCompile(`serving IMAP on (\S+)`))[1]
			d.waitFor(t, regexp.MustCompile(`Press Ctrl-C to stop\.`))
			nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			nc.SetDeadline(time.Now().Add(30 * time.Second))
			cl := imapclient.New(nc, nil)
			defer cl.Close()
			if err := cl.Login(demoLogin, demoPassword).Wait(); err != nil {
				t.Fatalf("LOGIN: %v", err)
			}
			if got := cl.Caps().Has(imap.Cap("X-GM-EXT-1")); got != tc.gmailCap {
				t.Errorf("X-GM-EXT-1 after login: %v, want %v", got, tc.gmailCap)
			}
			if sel, err := cl.Select("INBOX", nil).Wait(); err != nil || sel.NumMessages != 1 {
				t.Fatalf("SELECT INBOX: %v, %+v", err, sel)
			}
			if err := cl.Logout().Wait(); err != nil {
				t.Errorf("LOGOUT: %v", err)
			}
		})
	}
	err := run(context.Background(), []string{"-upstream", "mars"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "want plain, microsoft or gmail") {
		t.Errorf("-upstream mars: %v", err)
	}
}
