package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
)

// cmdPasswd changes the local password of LOGIN's record: it opens the
// record with the current password and re-encrypts it under the new one
// (new salt, same authorization, generation + 1). A wrong current password
// changes nothing. On a terminal it asks for the current password once and
// the new one twice, without echo; otherwise stdin holds two lines, the
// current password and the new one.
func cmdPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	login, cfg, _, err := newCommandFlags("passwd", stderr).parseAccount(args)
	if err != nil {
		return err
	}
	store, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	// Before asking for anything: is there a record to change?
	if exists, err := store.Exists(login); err != nil {
		return err
	} else if !exists {
		return fmt.Errorf("%s has no stored authorization (%s); create one with: imap-oauth-proxy authorize %s",
			login, store.Where(login), login)
	}

	in := newInput(stdin, stderr)
	current, err := in.password(fmt.Sprintf("Current local password for %s: ", login), "current local password")
	if err != nil {
		return err
	}
	rec, err := store.Open(login, current)
	switch {
	case errors.Is(err, tokenstore.ErrWrongPassword):
		return fmt.Errorf("the current local password of %s is wrong (or its record was altered); nothing was changed", login)
	case err != nil:
		return err
	}
	password, err := in.newPassword(login)
	if err != nil {
		return err
	}
	// A running serve may save a rotated token between the Open above and
	// the write: then open the newer record with the same password and try
	// again. A record that no longer opens with it was replaced (authorize,
	// token import or another passwd).
	for attempt := 1; ; attempt++ {
		err := store.SetPassword(rec, password)
		if err == nil {
			break
		}
		if !errors.Is(err, tokenstore.ErrRecordChanged) || attempt == 3 {
			return err
		}
		if rec, err = store.Open(login, current); err != nil {
			return fmt.Errorf("the record of %s was replaced meanwhile (authorize, token import or another passwd ran); "+
				"nothing was changed: %w", login, err)
		}
	}
	fmt.Fprintf(stdout, "Changed the local password of %s: %s is now encrypted under the new password "+
		"(same authorization, generation %d).\n"+
		"Give the collector the new password. A running serve uses it from the next login, and refuses the old one; "+
		"there is no need to reload.\n",
		login, store.Where(login), rec.Info.Generation)
	return nil
}
