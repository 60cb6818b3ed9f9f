package proxy

import (
	"encoding/base64"
	"errors"
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
	var encoded string
	if len(cmd.args) == 2 {
		encoded = cmd.args[1].s
	} else {
		if err := c.writeLine("+ "); err != nil {
			return "write failed", true
		}
		line, err := readLine(c.br, c.cfg.Server.MaxLineBytes)
		if err != nil {
			return "reading SASL response: " + err.Error(), true
		}
		encoded = string(line)
		c.trace("C", redactedMarker)
	}
	if encoded == "*" {
		c.writeStatus(cmd.tag, "BAD", "", "AUTHENTICATE cancelled")
		return "", false
	}
	// "=" is an empty response (RFC 4959 section 3), which PLAIN has no
	// use for: it carries no user and no password, so it is malformed
	// rather than a login to check (and count as a failure).
	response, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil || encoded == "=" || len(response) == 0 {
		c.writeStatus(cmd.tag, "BAD", "", "Malformed SASL response")
		return "", false
	}
	var login, password string
	server := sasl.NewPlainServer(func(identity, username, pass string) error {
		if identity != "" && identity != username {
			return errAuthzidDiffers
		}
		login, password = username, pass
		return nil
	})
	if _, _, err := server.Next(response); err != nil {
		if errors.Is(err, errAuthzidDiffers) {
			c.writeStatus(cmd.tag, "NO", "AUTHORIZATIONFAILED", "Authorization identity must be empty or equal the login")
		} else {
			c.writeStatus(cmd.tag, "BAD", "", "Malformed PLAIN response")
		}
		return "", false
	}
	return c.login(cmd.tag, login, password)
}

var errAuthzidDiffers = errors.New("authorization identity differs from login")
