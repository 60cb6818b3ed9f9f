package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// cmdAuthorize runs LOGIN's grant once and stores the encrypted record
// under the local password the operator chooses:
//
//   - refresh_token: authorization code with PKCE through a browser, the
//     redirect caught on http://127.0.0.1:PORT/ (default), pasted back
//     (-external), or a device code (-device);
//   - client_credentials, service_account: gets one access token to prove
//     the grant works; the record then only proves the local password.
//
// On a terminal the password is asked twice without echo; otherwise it is
// the first line of stdin (and, with -external, the redirected URL is the
// second).
func cmdAuthorize(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newCommandFlags("authorize", stderr)
	force := fs.Bool("force", false, "replace an existing authorization")
	external := fs.Bool("external", false, "print the URL and read back the URL the browser was redirected to")
	device := fs.Bool("device", false, "authorize with a device code (Microsoft; servers without a browser)")
	noBrowser := fs.Bool("no-browser", false, "do not try to open a browser (the URL is printed anyway)")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the browser")
	login, cfg, acct, err := fs.parseAccount(args)
	if err != nil {
		return err
	}
	appOnly := acct.Grant.AppOnly()
	switch {
	case *external && *device:
		return usageError("authorize takes -external or -device, not both")
	case appOnly && (*external || *device):
		return usageError(fmt.Sprintf("accounts.%s uses grant %s, which needs no browser: drop -external and -device", login, acct.Grant))
	case *device && acct.Provider.Type == "google":
		return auth.ErrGoogleDevice
	}

	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	if exists, err := store.Exists(login); err != nil {
		return err
	} else if exists && !*force {
		return fmt.Errorf("%s already has an authorization (%s); add -force to replace it", login, store.Where(login))
	}

	in := newInput(stdin, stderr)
	password, err := in.newPassword(login)
	if err != nil {
		return err
	}

	tctx := context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Timeout: cfg.Server.TokenTimeout})
	var secret tokenstore.Secret
	switch {
	case appOnly:
		fmt.Fprintf(stdout, "Asking provider %s for an app-only access token for %s (grant %s)...\n", acct.Provider.Name, acct.Mailbox, acct.Grant)
		tok, err := auth.AppToken(tctx, acct)
		if err != nil {
			return fmt.Errorf("getting an access token: %s", auth.MessageOf(err, err.Error()))
		}
		fmt.Fprintf(stdout, "Got an access token, valid for %s. Whether it opens the mailbox, check shows.\n",
			time.Until(tok.Expiry).Round(time.Second))
	case *device:
		tok, err := auth.DeviceFlow(tctx, acct, func(da *oauth2.DeviceAuthResponse) {
			fmt.Fprintf(stdout, "To authorize %s, open %s on any device, enter the code %s and %s. "+
				"The code expires in %s.\nWaiting for the sign-in...\n",
				login, da.VerificationURI, da.UserCode, signInHint(acct), time.Until(da.Expiry).Round(time.Minute))
		})
		if err != nil {
			return fmt.Errorf("device authorization: %s", auth.MessageOf(err, err.Error()))
		}
		secret.RefreshToken = tok.RefreshToken
	case *external:
		tok, err := authorizeExternal(tctx, acct, in, stdout, *timeout)
		if err != nil {
			return err
		}
		secret.RefreshToken = tok.RefreshToken
	default:
		tok, err := authorizeLoopback(tctx, acct, stdout, !*noBrowser, *timeout)
		if err != nil {
			return err
		}
		secret.RefreshToken = tok.RefreshToken
	}

	if _, err := store.Create(login, password, secret); err != nil {
		return err
	}
	what := "the authorization"
	if appOnly {
		what = "the local password"
	}
	fmt.Fprintf(stdout, "Stored %s for %s (mailbox %s) in %s, encrypted under the local password.\n"+
		"The collector logs in as %s with that password; a running serve picks it up at the next login.\n"+
		"Test the whole path now with: imap-oauth-proxy check -config %s %s\n",
		what, login, acct.Mailbox, store.Where(login), login, cfg.Path, login)
	return nil
}

// authorizeLoopback runs the authorization code flow with the redirect
// caught on the loopback interface.
func authorizeLoopback(ctx context.Context, acct *config.Account, stdout io.Writer, browse bool, timeout time.Duration) (*oauth2.Token, error) {
	l, err := auth.ListenLoopback(ctx, acct)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	port := strings.TrimSuffix(strings.TrimPrefix(l.Flow.RedirectURL, "http://127.0.0.1:"), "/")
	fmt.Fprintf(stdout, "To authorize %s, open this URL in a browser on this machine and %s:\n\n  %s\n\n"+
		"imap-oauth-proxy waits for the browser on %s. From another machine, forward the port first "+
		"(ssh -L %s:127.0.0.1:%s THIS-HOST), or use -external.\n",
		acct.Login, signInHint(acct), l.Flow.URL, l.Flow.RedirectURL, port, port)
	if browse {
		if err := openBrowser(l.Flow.URL); err == nil {
			fmt.Fprintln(stdout, "(A browser was started with this URL.)")
		}
	}
	fmt.Fprintln(stdout, "Waiting for the browser...")
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tok, err := l.Wait(wctx)
	if err != nil {
		return nil, fmt.Errorf("browser authorization: %s", auth.MessageOf(err, err.Error()))
	}
	return tok, nil
}

// authorizeExternal runs the authorization code flow with a browser
// anywhere: the operator pastes back the URL the browser was sent to.
func authorizeExternal(ctx context.Context, acct *config.Account, in *input, stdout io.Writer, timeout time.Duration) (*oauth2.Token, error) {
	// A port that is free here, so that a browser on this machine would
	// not reach another program; the redirect is not listened to.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("picking a port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	flow, err := auth.NewCodeFlow(acct, auth.LoopbackRedirectURL(port))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "To authorize %s, open this URL in a browser on any machine and %s:\n\n  %s\n\n"+
		"The browser then fails to load a page on %s. Copy that page's whole address from the address bar "+
		"and paste it here.\n", acct.Login, signInHint(acct), flow.URL, flow.RedirectURL)
	type answer struct {
		line string
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		line, err := in.line("Redirected URL: ")
		answers <- answer{line, err}
	}()
	var a answer
	select {
	case a = <-answers:
	case <-time.After(timeout):
		return nil, fmt.Errorf("no redirected URL within %s", timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if a.err != nil {
		return nil, fmt.Errorf("reading the redirected URL: %w", a.err)
	}
	code, err := flow.ParseRedirect(a.line)
	if err != nil {
		return nil, fmt.Errorf("the pasted URL: %w", err)
	}
	tok, err := flow.Exchange(ctx, code)
	if err != nil {
		return nil, fmt.Errorf("redeeming the code: %s", auth.MessageOf(err, err.Error()))
	}
	return tok, nil
}

// signInHint says whom to sign in as.
func signInHint(acct *config.Account) string {
	if acct.Provider.Type == "microsoft" {
		return fmt.Sprintf("sign in as %s (for a shared mailbox: as a user with Full Access to it)", acct.Mailbox)
	}
	return "sign in as " + acct.Mailbox
}

// openBrowser starts a browser on u when there is a desktop to show it
// on.
func openBrowser(u string) error {
	var name string
	var args []string
	switch runtime.GOOS {
	case "darwin":
		name = "open"
	case "windows":
		name, args = "rundll32", []string{"url.dll,FileProtocolHandler"}
	default:
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
			return errors.New("no display")
		}
		name = "xdg-open"
	}
	cmd := exec.Command(name, append(args, u)...)
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}
