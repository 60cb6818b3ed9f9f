package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// XOAUTH2 is the name of Google's and Microsoft's OAuth 2.0 SASL mechanism.
const XOAUTH2 = "XOAUTH2"

// XOAUTH2Error is the JSON status a server sends as a SASL challenge when it
// refuses an XOAUTH2 token (Gmail does; Microsoft 365 answers NO directly).
type XOAUTH2Error struct {
	Status  string `json:"status"`
	Schemes string `json:"schemes"`
	Scope   string `json:"scope"`
}

// Error describes the refusal without any token material.
func (e *XOAUTH2Error) Error() string {
	return fmt.Sprintf("XOAUTH2 refused (status %s)", e.Status)
}

type xoauth2Client struct {
	user, token string
}

// NewXOAUTH2Client returns a SASL client that authenticates user with an
// OAuth 2.0 bearer token. Its initial response is
// "user=USER\x01auth=Bearer TOKEN\x01\x01". Next decodes an error challenge
// into an *XOAUTH2Error; the caller then answers the server with an empty
// response and reads the final NO.
func NewXOAUTH2Client(user, token string) sasl.Client {
	return &xoauth2Client{user: user, token: token}
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return XOAUTH2, []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	status := &XOAUTH2Error{}
	if err := json.Unmarshal(challenge, status); err != nil {
		return nil, fmt.Errorf("decoding XOAUTH2 challenge: %w", err)
	}
	return nil, status
}

// ParseXOAUTH2 splits an XOAUTH2 initial response into its user and bearer
// token. It is the server side of NewXOAUTH2Client, used by test upstreams.
func ParseXOAUTH2(ir []byte) (user, token string, err error) {
	if !bytes.HasSuffix(ir, []byte("\x01\x01")) {
		return "", "", errors.New("XOAUTH2 response does not end with ^A^A")
	}
	for _, field := range strings.Split(string(ir[:len(ir)-2]), "\x01") {
		key, value, _ := strings.Cut(field, "=")
		switch key {
		case "user":
			user = value
		case "auth":
			scheme, tok, ok := strings.Cut(value, " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") {
				return "", "", errors.New("XOAUTH2 auth field is not a bearer token")
			}
			token = tok
		}
	}
	if user == "" || token == "" {
		return "", "", errors.New("XOAUTH2 response lacks user or auth")
	}
	return user, token, nil
}
