// Command imap-oauth-proxy-demo runs imap-oauth-proxy on 127.0.0.1 against
// a built-in IMAP server that accepts only XOAUTH2 and a built-in token
// endpoint that rotates refresh tokens, so the whole path runs without a
// cloud account (`make demo`). With -upstream-only it runs just those two,
// for an installed service to be tried against. It is a command of its
// own so that the daemon does not link the fake servers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/sdnotify"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// The demo account. The password is printed on purpose: it guards only a
// throwaway mailbox on a loopback demo server.
const (
	demoLogin    = "demo"
	demoPassword = "demo-password"
	demoMailbox  = "demo@example.test"
)

const demoConfig = `# Written by imap-oauth-proxy demo.
[server]
listen = %q
state_dir = "state"

%s
[accounts.demo]
provider = "demo"
mailbox = %q
grant = "refresh_token"
`

// demoProviderTable is the [providers.demo] table of the demo's upstream
// and token endpoint, in the demo's config and in -upstream-only's
// provider.toml: token URL, IMAP address, CA file.
const demoProviderTable = `[providers.demo]
type = "generic"
token_url = %q
scopes = ["imap", "offline_access"]
client_id = "demo-client"
client_secret = "demo-secret"
imap_address = %q
ca_file = %q
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stderr, "imap-oauth-proxy-demo: %s\n", err)
		}
		os.Exit(2)
	}
}

// run serves the demo until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("imap-oauth-proxy-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:1143", "address of the proxy's IMAP listener")
	dir := fs.String("dir", "", "directory for the demo's config and state (default: a temporary one)")
	upstreamOnly := fs.Bool("upstream-only", false,
		"run only the built-in upstream and token endpoint, for a proxy of your own (writes provider.toml, the CA and a refresh token per mailbox into -dir)")
	personality := fs.String("upstream", "plain",
		"how the built-in upstream behaves: plain, microsoft or gmail (their greetings, capabilities, refusals and limits)")
	var mailboxes []string
	fs.Func("mailbox", "with -upstream-only: a mailbox to serve (repeatable; default "+demoMailbox+")", func(m string) error {
		mailboxes = append(mailboxes, m)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(mailboxes) > 0 && !*upstreamOnly {
		return errors.New("-mailbox needs -upstream-only")
	}
	if *upstreamOnly && *dir == "" {
		return errors.New("-upstream-only needs -dir, where it writes provider.toml")
	}
	if len(mailboxes) == 0 {
		mailboxes = []string{demoMailbox}
	}
	if fs.NArg() != 0 {
		return errors.New("the demo takes no arguments")
	}
	var upstreamPersonality proxytest.Personality
	switch *personality {
	case "plain":
	case "microsoft":
		upstreamPersonality = proxytest.Microsoft
	case "gmail":
		upstreamPersonality = proxytest.Gmail
	default:
		return fmt.Errorf("-upstream %q: want plain, microsoft or gmail", *personality)
	}
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			return fmt.Errorf("creating demo directory: %w", err)
		}
	} else {
		tmp, err := os.MkdirTemp("", "imap-oauth-proxy-demo-")
		if err != nil {
			return fmt.Errorf("creating demo directory: %w", err)
		}
		defer os.RemoveAll(tmp)
		*dir = tmp
	}

	tokens, upstream, err := startDemoUpstream(*dir, mailboxes, upstreamPersonality)
	if err != nil {
		return err
	}
	defer tokens.Close()
	defer upstream.Close()
	if *upstreamOnly {
		return serveDemoUpstream(ctx, *dir, tokens, upstream, mailboxes, stdout)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w (pick another address with -listen)", *listen, err)
	}
	defer ln.Close()
	configPath := filepath.Join(*dir, "config.toml")
	text := fmt.Sprintf(demoConfig, ln.Addr().String(),
		fmt.Sprintf(demoProviderTable, tokens.TokenURL(), upstream.Addr, "upstream-ca.pem"), demoMailbox)
	if err := os.WriteFile(configPath, []byte(text), 0o600); err != nil {
		return fmt.Errorf("writing demo config: %w", err)
	}
	cfg, err := config.Load(configPath)
	if err != nil {
		return err
	}

	// What `token import` does, with a refresh token from the demo endpoint.
	store, err := tokenstore.New(cfg.Server.StateDir, nil)
	if err != nil {
		return err
	}
	if _, err := store.Create(demoLogin, demoPassword, tokenstore.Secret{RefreshToken: tokens.Grant(demoMailbox)}); err != nil {
		return err
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil))
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: store, Logger: logger})
	if err != nil {
		return err
	}
	srv, err := proxy.New(&proxy.Options{Config: cfg, Auth: mgr, Logger: logger, Version: "demo"})
	if err != nil {
		return err
	}
	defer srv.Close()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	if err := demoSelfCheck(ln.Addr().String()); err != nil {
		return fmt.Errorf("demo self-check failed: %w", err)
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	hostPort := ln.Addr().String() // bracketed for IPv6, as a URL needs
	fmt.Fprintf(stdout, demoBanner, hostPort, demoLogin, demoPassword, configPath,
		hostPort, demoLogin, demoPassword, host, port, demoLogin, demoPassword, host, port)
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
		fmt.Fprintln(stdout, "demo stopped")
		return nil
	}
}

// startDemoUpstream starts the demo's token endpoint (Microsoft's
// behaviour, rotating refresh tokens) and an XOAUTH2-only IMAP server with
// a welcome message in each mailbox's INBOX, behaving as personality
// says, and writes the server's CA certificate to dir/upstream-ca.pem.
func startDemoUpstream(dir string, mailboxes []string, personality proxytest.Personality) (*authtest.Server, *proxytest.Upstream, error) {
	tokens := authtest.NewServer(authtest.Options{
		Flavor: authtest.Microsoft, ClientID: "demo-client", ClientSecret: "demo-secret", Rotate: true,
	})
	upstream, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: tokens.Validate, Personality: personality})
	if err != nil {
		tokens.Close()
		return nil, nil, err
	}
	fail := func(err error) (*authtest.Server, *proxytest.Upstream, error) {
		upstream.Close()
		tokens.Close()
		return nil, nil, err
	}
	for _, mailbox := range mailboxes {
		user := upstream.AddUser(mailbox)
		welcome := "From: imap-oauth-proxy <demo@example.test>\r\nTo: " + mailbox +
			"\r\nSubject: Welcome to the imap-oauth-proxy demo\r\nDate: " + time.Now().Format(time.RFC1123Z) +
			"\r\n\r\nThis message was fetched through the proxy, which logged in upstream with XOAUTH2.\r\n"
		if _, err := user.Append("INBOX", literal(welcome), &imap.AppendOptions{}); err != nil {
			return fail(fmt.Errorf("seeding the demo mailbox %s: %w", mailbox, err))
		}
	}
	if err := upstream.WriteCAFile(filepath.Join(dir, "upstream-ca.pem")); err != nil {
		return fail(err)
	}
	return tokens, upstream, nil
}

const demoProviderHeader = `# Written by imap-oauth-proxy demo -upstream-only, for a config of your
# own. Copy upstream-ca.pem where the service can read it and set ca_file.
`

// serveDemoUpstream writes what a proxy of one's own needs to use the
// demo upstream (dir/provider.toml, and dir/MAILBOX.refresh-token for
// `token import`), tells systemd it is ready when started as a
// Type=notify unit, and serves until ctx ends.
func serveDemoUpstream(ctx context.Context, dir string, tokens *authtest.Server, upstream *proxytest.Upstream, mailboxes []string, stdout io.Writer) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	text := demoProviderHeader + fmt.Sprintf(demoProviderTable, tokens.TokenURL(), upstream.Addr, filepath.Join(abs, "upstream-ca.pem"))
	if err := os.WriteFile(filepath.Join(dir, "provider.toml"), []byte(text), 0o600); err != nil {
		return fmt.Errorf("writing provider.toml: %w", err)
	}
	for _, mailbox := range mailboxes {
		path := filepath.Join(dir, mailbox+".refresh-token")
		if err := os.WriteFile(path, []byte(tokens.Grant(mailbox)+"\n"), 0o600); err != nil {
			return fmt.Errorf("writing a refresh token: %w", err)
		}
	}
	fmt.Fprintf(stdout, "imap-oauth-proxy demo: upstream %s, token endpoint %s, mailboxes %s\nprovider, CA and refresh tokens in %s\n",
		upstream.Addr, tokens.TokenURL(), strings.Join(mailboxes, " "), abs)
	if err := sdnotify.New().Send("READY=1"); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

const demoBanner = `
imap-oauth-proxy demo: the proxy is serving IMAP on %s
  login:    %s
  password: %s
  config:   %s
Behind it, a built-in IMAP server that accepts only XOAUTH2 and a built-in
token endpoint that rotates refresh tokens stand in for Microsoft 365.
A self-check already logged in through the proxy and read INBOX.

Point any IMAP client at it, for example:
  curl --url 'imap://%s/INBOX;UID=1' --user '%s:%s'
  python3 -c 'import imaplib; m = imaplib.IMAP4("%s", %s); m.login("%s", "%s"); print(m.select("INBOX"))'
  fetchmail, GLPI's collector, ...: server %s, port %s, plain IMAP, no TLS (loopback only).
Press Ctrl-C to stop.
`

// demoSelfCheck logs in through the proxy as a collector would and reads
// the welcome message's subject.
func demoSelfCheck(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(demoLogin, demoPassword).Wait(); err != nil {
		return fmt.Errorf("LOGIN: %w", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		return fmt.Errorf("SELECT: %w", err)
	}
	if sel.NumMessages == 0 {
		return errors.New("INBOX is empty")
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		return fmt.Errorf("FETCH: %w", err)
	}
	if len(msgs) != 1 || !strings.Contains(msgs[0].Envelope.Subject, "Welcome") {
		return errors.New("welcome message not found")
	}
	return c.Logout().Wait()
}

// literal adapts a string to imap.LiteralReader.
type literalReader struct {
	*strings.Reader
}

func (l literalReader) Size() int64 { return int64(l.Reader.Len()) }

func literal(s string) imap.LiteralReader { return literalReader{strings.NewReader(s)} }
