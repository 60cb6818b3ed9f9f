// Command imap-oauth-proxy lets mail collectors that only know IMAP LOGIN
// read mailboxes that require OAuth 2.0 (Microsoft 365, Gmail, any IMAP
// server with XOAUTH2). See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: imap-oauth-proxy COMMAND [flags] [LOGIN]

commands:
  serve        [-config FILE]          run the daemon
  token import [-config FILE] [-force] LOGIN
                                       store a refresh token; stdin: local password line,
                                       then refresh token line
  authorize    [-config FILE] [-force] [-external | -device] [-no-browser]
               [-timeout D] LOGIN      run LOGIN's grant (browser, pasted URL or device
                                       code; app-only grants: one token) and store it
                                       under a local password
  passwd       [-config FILE] LOGIN    change LOGIN's local password, given the current one
                                       (stdin not a terminal: current line, then new line)
  check        [-config FILE] [-v] [-timeout D] LOGIN
                                       diagnose LOGIN end to end: token, TLS, greeting,
                                       XOAUTH2, LIST
  status       [-config FILE] [-json]  list every account's health and verdict (ok, needs
                                       authorization, expiring, never used); no password
  store init   [-config FILE]          create or migrate the PostgreSQL store's schema
  store migrate [-config FILE] -to postgres|files [-force]
                                       copy every token record from state_dir into the
                                       database, or back, unchanged
  version                              print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status. ctx ends
// long-running commands (serve).
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(ctx, args[1:], stderr)
	case "token":
		if len(args) < 2 || args[1] != "import" {
			err = usageError("token takes the subcommand import")
			break
		}
		err = cmdTokenImport(args[2:], stdin, stdout, stderr)
	case "authorize":
		err = cmdAuthorize(ctx, args[1:], stdin, stdout, stderr)
	case "passwd":
		err = cmdPasswd(args[1:], stdin, stdout, stderr)
	case "check":
		err = cmdCheck(ctx, args[1:], stdin, stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout, stderr)
	case "store":
		err = cmdStore(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "imap-oauth-proxy", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usageError(fmt.Sprintf("unknown command %q", args[0]))
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, new(configError)):
		fmt.Fprintf(stderr, "imap-oauth-proxy: %s\n", err)
		return exitConfig
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "imap-oauth-proxy: %s\n\n%s", err, usage)
		return 2
	case errors.Is(err, flag.ErrHelp), errors.As(err, new(flagError)):
		return 2
	default:
		fmt.Fprintf(stderr, "imap-oauth-proxy: %s\n", err)
		return 1
	}
}

// exitConfig is the exit status of serve when its configuration is
// unusable: EX_CONFIG from sysexits(3). The unit's RestartPreventExitStatus=
// names it, so that systemd does not restart a daemon that cannot start
// until the operator fixes the file.
const exitConfig = 78

// configError marks a configuration that serve cannot start with.
type configError struct{ error }

func (e configError) Unwrap() error { return e.error }

// flagError marks a flag parsing failure (the flag package has printed it).
type flagError struct{ error }

// parseFlags parses args into fs, marking failures as command-line mistakes.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return flagError{err}
	}
	return nil
}

// commandFlags is a command's flag set, with the -config flag that every
// command takes.
type commandFlags struct {
	*flag.FlagSet
	configPath *string
}

// newCommandFlags returns the flag set of the command name (as "token
// import"); it prints mistakes and help to stderr.
func newCommandFlags(name string, stderr io.Writer) *commandFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return &commandFlags{FlagSet: fs, configPath: fs.String("config", config.DefaultPath, "mapping file")}
}

// parseNoArgs parses args, which must hold flags only.
func (f *commandFlags) parseNoArgs(args []string) error {
	if err := parseFlags(f.FlagSet, args); err != nil {
		return err
	}
	if f.NArg() != 0 {
		return usageError(f.Name() + " takes no arguments")
	}
	return nil
}

// usageError is a mistake in the command line.
type usageError string

func (e usageError) Error() string { return string(e) }
