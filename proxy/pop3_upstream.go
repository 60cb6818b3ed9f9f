package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
)

// maxPOP3Challenges bounds the "+" lines one upstream AUTH may send: the
// request for the response, and one error challenge.
const maxPOP3Challenges = 2

// loginPOP3Upstream dials the provider's POP3 server with implicit TLS and
// authenticates with AUTH XOAUTH2 (or OAUTHBEARER), RFC 5034. With
// pop3_initial_response the SASL string goes on the AUTH line, Gmail's
// form; otherwise the proxy sends AUTH alone and the string after the
// server's "+", the form Microsoft 365 requires (it closes the connection
// on an initial response: getmail6/getmail6#256). Failures are
// *auth.Error values; a refused token also matches errTokenRefused.
func loginPOP3Upstream(ctx context.Context, l *UpstreamLogin) (*UpstreamConn, error) {
	addr := l.Account.Provider.POP3Address
	up, err := openUpstream(ctx, l, addr)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			up.nc.Close()
		}
	}()
	greeting, err := up.readPOP3()
	if err != nil {
		return nil, unavailable(fmt.Sprintf("no greeting from upstream %s", addr), err)
	}
	if status, text := pop3Status(greeting); status != "+OK" {
		return nil, unavailable(fmt.Sprintf("upstream %s refused the connection: %s", addr, auth.OneLine(text, 200)),
			fmt.Errorf("greeting %s", status))
	}
	if err := up.authenticatePOP3(l, addr); err != nil {
		return nil, err
	}
	up.nc.SetDeadline(time.Time{})
	ok = true
	return up, nil
}

// authenticatePOP3 runs AUTH with l's mechanism and token.
func (up *UpstreamConn) authenticatePOP3(l *UpstreamLogin, addr string) error {
	client, abort := newSASLClient(l, addr)
	mech, ir, err := client.Start()
	if err != nil {
		return unavailable("SASL client failed", err)
	}
	encodedIR := base64.StdEncoding.EncodeToString(ir)
	cmd, shown := "AUTH "+mech, ""
	if l.Account.Provider.POP3InitialResponse {
		cmd, shown = cmd+" "+encodedIR, cmd+" "+redactedMarker
		encodedIR = ""
	}
	if err := up.send(cmd, shown); err != nil {
		return unavailable(fmt.Sprintf("upstream %s", addr), err)
	}
	var challengeErr error
	for challenges := 0; ; {
		line, err := up.readPOP3()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return unavailable(fmt.Sprintf("upstream %s did not answer AUTH in time", addr), err)
		}
		if err != nil {
			return unavailable(fmt.Sprintf("upstream %s closed during AUTH", addr), err)
		}
		status, text := pop3Status(line)
		switch status {
		case "+":
			if challenges++; challenges > maxPOP3Challenges {
				return protocolError(addr, "too many AUTH challenges")
			}
			answer, shown := abort, ""
			if encodedIR != "" {
				answer, shown, encodedIR = encodedIR, redactedMarker, ""
			} else if challenge, err := base64.StdEncoding.DecodeString(text); err != nil {
				challengeErr = fmt.Errorf("undecodable challenge: %w", err)
			} else if _, err := client.Next(challenge); err != nil {
				challengeErr = err // Gmail's {"status":"400",...}; answered with abort
			}
			if err := up.send(answer, shown); err != nil {
				return unavailable(fmt.Sprintf("upstream %s", addr), err)
			}
		case "+OK":
			return nil
		case "-ERR":
			code, rest := pop3ResponseCode(text)
			switch code {
			case "SYS/TEMP", "IN-USE", "LOGIN-DELAY":
				// RFC 3206 section 4, RFC 2449 section 8.1: not the token's
				// fault; no refresh, and the collector may retry later.
				return unavailable(fmt.Sprintf("upstream %s: %s", addr, auth.OneLine(rest, 200)),
					fmt.Errorf("AUTH refused with [%s]", code))
			}
			return tokenRefused(l, text, challengeErr)
		default:
			return protocolError(addr, "unexpected response to AUTH")
		}
	}
}

// readPOP3 reads one response line from the upstream.
func (up *UpstreamConn) readPOP3() (string, error) {
	line, err := readLine(up.br, maxUpstreamLine)
	if err != nil {
		return "", err
	}
	if up.trace != nil {
		up.trace("U<", auth.OneLine(string(line), 1000))
	}
	return string(line), nil
}

// pop3Status splits a POP3 response line into its status ("+OK", "-ERR",
// "+" for a SASL challenge, or the first word of anything else) and the
// text after it.
func pop3Status(line string) (status, text string) {
	status, text, _ = strings.Cut(line, " ")
	return status, text
}

// pop3ResponseCode splits the RFC 2449 response code, such as "SYS/TEMP",
// off the text of an -ERR response; code is "" when there is none.
func pop3ResponseCode(text string) (code, rest string) {
	if !strings.HasPrefix(text, "[") {
		return "", text
	}
	end := strings.IndexByte(text, ']')
	if end < 0 {
		return "", text
	}
	return strings.ToUpper(text[1:end]), strings.TrimPrefix(text[end+1:], " ")
}
