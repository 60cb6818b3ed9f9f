package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// cmdTokenImport stores an existing refresh token for LOGIN, encrypted
// under the local password. stdin: the password line, then the token line.
func cmdTokenImport(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newCommandFlags("token import", stderr)
	force := fs.Bool("force", false, "replace an existing authorization")
	login, cfg, acct, err := fs.parseAccount(args)
	if err != nil {
		return err
	}
	if !acct.Grant.Delegated() {
		return fmt.Errorf("accounts.%s uses grant %q, which has no refresh token to import", login, acct.Grant)
	}

	lines := bufio.NewScanner(stdin)
	lines.Buffer(make([]byte, 0, 4096), 64*1024) // refresh tokens can be a few KiB
	password, err := readSecretLine(lines, "local password")
	if err != nil {
		return err
	}
	refreshToken, err := readSecretLine(lines, "refresh token")
	if err != nil {
		return err
	}

	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	exists, err := store.Exists(login)
	if err != nil {
		return err
	}
	if exists && !*force {
		return fmt.Errorf("%s already has an authorization (%s); add -force to replace it", login, store.Where(login))
	}
	if _, err := store.Create(login, password, tokenstore.Secret{RefreshToken: refreshToken}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "stored the refresh token for %s in %s (encrypted under the local password)\n", login, store.Where(login))
	return nil
}

// readSecretLine reads one non-empty line; errors never contain the line.
func readSecretLine(lines *bufio.Scanner, what string) (string, error) {
	if !lines.Scan() {
		if err := lines.Err(); err != nil {
			return "", fmt.Errorf("reading the %s from stdin: %w", what, err)
		}
		return "", fmt.Errorf("reading the %s from stdin: %w", what, io.ErrUnexpectedEOF)
	}
	line := strings.TrimRight(lines.Text(), "\r")
	if strings.TrimSpace(line) == "" {
		return "", fmt.Errorf("the %s line on stdin is empty: %w", what, errEmptySecret)
	}
	return line, nil
}

var errEmptySecret = errors.New("empty")
