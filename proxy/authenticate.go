package proxy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// authenticatePlain runs AUTHENTICATE PLAIN (RFC 4616), with the initial
// response inline (SASL-IR, RFC 4959) or after a continuation; "*" cancels.
func (c *conn) authenticatePlain(cmd *command) (reason string, done bool) {
	if len(cmd.args) < 1 || len(cmd.args) > 2 || cmd.args[0].kind != argAtom {
		c.writeStatus(cmd.tag, "BAD", "", "AUTHENTICATE takes a mechanism and an optional initial response")
		return "", false
	}
	if !strings.EqualFold(cmd.args[0].s, "PLAIN") {
		c.writeStatus(cmd.tag, "NO", "", "Unsupported authentication mechanism; use PLAIN or LOGIN")
		return "", false
	}
	if !c.canAuth() {
		c.writeStatus(cmd.tag, "NO", "PRIVACYREQUIRED", "Use STARTTLS before AUTHENTICATE on this listener")
		return "", false
	}
	var initial *string
	if len(cmd.args) == 2 {
		initial = &cmd.args[1].s
	}
	login, password, err := c.plainCredentials(initial)
	switch {
	case errors.Is(err, errSASLCancelled):
		c.writeStatus(cmd.tag, "BAD", "", "AUTHENTICATE cancelled")
		return "", false
	case errors.Is(err, errAuthzidDiffers):
		c.writeStatus(cmd.tag, "NO", "AUTHORIZATIONFAILED", "Authorization identity must be empty or equal the login")
		return "", false
	case errors.Is(err, errMalformedSASL):
		c.writeStatus(cmd.tag, "BAD", "", "Malformed SASL response")
		return "", false
	case err != nil:
		return err.Error(), true
	}
	return c.login(cmd.tag, login, password)
}

// The outcomes of a SASL PLAIN exchange that leave the session open.
var (
	errAuthzidDiffers = errors.New("authorization identity differs from login")
	errSASLCancelled  = errors.New("SASL exchange cancelled")
	errMalformedSASL  = errors.New("malformed SASL PLAIN response")
)

// plainCredentials gets the user name and password of a SASL PLAIN
// exchange (RFC 4616): from *initial, the initial response, or with
// initial nil from the line the client sends after a "+ " continuation,
// which IMAP (RFC 3501 section 7.5) and POP3 (RFC 5034 section 4) share.
// "*" cancels (errSASLCancelled). An undecodable or empty response is
// errMalformedSASL: "=" (RFC 4959 section 3, RFC 5034 section 4) carries
// no user and no password, so it is no login to check and count as a
// failure. An authorization identity other than the user name is
// errAuthzidDiffers. Any other error ends the session.
func (c *conn) plainCredentials(initial *string) (login, password string, err error) {
	var encoded string
	if initial != nil {
		encoded = *initial
	} else {
		if err := c.writeLine("+ "); err != nil {
			return "", "", errors.New("write failed")
		}
		line, err := readLine(c.br, c.cfg.Server.MaxLineBytes)
		if err != nil {
			return "", "", fmt.Errorf("reading SASL response: %w", err)
		}
		encoded = string(line)
		c.trace("C", redactedMarker)
	}
	if encoded == "*" {
		return "", "", errSASLCancelled
	}
	response, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil || encoded == "=" || len(response) == 0 {
		return "", "", errMalformedSASL
	}
	server := sasl.NewPlainServer(func(identity, username, pass string) error {
		if identity != "" && identity != username {
			return errAuthzidDiffers
		}
		login, password = username, pass
		return nil
	})
	if _, _, err := server.Next(response); err != nil {
		if errors.Is(err, errAuthzidDiffers) {
			return "", "", errAuthzidDiffers
		}
		return "", "", errMalformedSASL
	}
	return login, password, nil
}
