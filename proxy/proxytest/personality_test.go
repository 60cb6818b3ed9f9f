package proxytest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

// wireClient speaks to an Upstream line by line over TLS.
type wireClient struct {
	t  *testing.T
	c  *tls.Conn
	br *bufio.Reader
}

func dialWire(t *testing.T, u *Upstream) *wireClient {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(u.CAPEM)
	c, err := tls.Dial("tcp", u.Addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &wireClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (w *wireClient) send(line string) {
	w.t.Helper()
	if _, err := w.c.Write([]byte(line + "\r\n")); err != nil {
		w.t.Fatal(err)
	}
}

// expect reads one line per want and compares them; a want ending in
// "..." matches a prefix.
func (w *wireClient) expect(want ...string) {
	w.t.Helper()
	for _, wl := range want {
		line, err := w.br.ReadString('\n')
		if err != nil {
			w.t.Fatalf("reading (want %q): %v", wl, err)
		}
		if !strings.HasSuffix(line, "\r\n") {
			w.t.Errorf("line %q does not end in CR LF", line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		if p, ok := strings.CutSuffix(wl, "..."); ok && strings.HasPrefix(line, p) {
			continue
		}
		if line != wl {
			w.t.Errorf("got  %q\nwant %q", line, wl)
		}
	}
}

// until reads lines up to one equal to want.
func (w *wireClient) until(want string) {
	w.t.Helper()
	for {
		line, err := w.br.ReadString('\n')
		if err != nil {
			w.t.Fatalf("reading (want %q): %v", want, err)
		}
		if strings.TrimSuffix(line, "\r\n") == want {
			return
		}
	}
}

func ir(user, token string) string {
	return base64.StdEncoding.EncodeToString([]byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01"))
}

func newPersonality(t *testing.T, p Personality, max int) *Upstream {
	t.Helper()
	u, err := NewUpstream(UpstreamOptions{Personality: p, MaxSessions: max, Validate: func(user, token string) error {
		if token != "good" {
			return errors.New("bad token")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	u.AddUser("m@example.test")
	return u
}

// TestPersonalityGreeting: each personality greets and lists its
// capabilities before login as its server does.
func TestPersonalityGreeting(t *testing.T) {
	for _, tc := range []struct {
		personality    Personality
		greeting, caps string
	}{
		{Microsoft, "* OK The Microsoft Exchange IMAP4 service is ready. [RgBBAEsARQAwADEAUABSADAAMQBNAEIAMAAwADAAMQAuAFAAUgBPAEQALgBPAFUAVABMAE8ATwBLAC4AQwBPAE0A]", microsoftCaps},
		{Gmail, "* OK Gimap ready for requests from 127.0.0.1 a1b2c3d4e5f6mb12345678abc", gmailCaps},
	} {
		w := dialWire(t, newPersonality(t, tc.personality, 1))
		w.expect(tc.greeting)
		w.send("A0 CAPABILITY")
		w.expect("* CAPABILITY "+tc.caps, "A0 OK CAPABILITY completed.")
	}
}

func TestMicrosoftWire(t *testing.T) {
	u := newPersonality(t, Microsoft, 1)
	w := dialWire(t, u)
	w.expect("* OK ...")
	w.send("A1 AUTHENTICATE XOAUTH2 " + ir("m@example.test", "stale"))
	w.expect("A1 NO AUTHENTICATE failed.")
	w.send("A2 AUTHENTICATE XOAUTH2")
	w.expect("+ ")
	w.send(ir("m@example.test", "good"))
	w.expect("A2 OK AUTHENTICATE completed.")
	w.send("A3 SELECT INBOX")
	w.until("A3 OK [READ-WRITE] SELECT completed")

	// At the limit (1 here), the next login is accepted and cannot work.
	w2 := dialWire(t, u)
	w2.expect("* OK ...")
	w2.send("B1 AUTHENTICATE XOAUTH2 " + ir("m@example.test", "good"))
	w2.expect("B1 OK AUTHENTICATE completed.")
	w2.send("B2 NAMESPACE")
	w2.expect("B2 BAD User is authenticated but not connected.")
	w2.send("B3 LIST \"\" *")
	w2.expect("B3 BAD User is authenticated but not connected.", "* BYE Connection closed. 14")

	u.Throttle(1, 89117*time.Millisecond)
	w3 := dialWire(t, u)
	w3.expect("* OK ...")
	w3.send("C1 AUTHENTICATE XOAUTH2 " + ir("m@example.test", "good"))
	w3.expect("C1 BAD Request is throttled. Suggested Backoff Time: 89117 milliseconds", "* BYE Connection closed. 14")

	if n := u.ExpireSessions("m@example.test"); n != 1 {
		t.Fatalf("ExpireSessions = %d, want 1", n)
	}
	w.expect("* BYE Session invalidated - AccessTokenExpired")
}

func TestGmailWire(t *testing.T) {
	u := newPersonality(t, Gmail, 1)
	w := dialWire(t, u)
	w.expect("* OK Gimap ...")
	w.send("A1 AUTHENTICATE XOAUTH2 " + ir("m@example.test", "stale"))
	w.expect("+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==")
	w.send("")
	w.expect("A1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)")
	w.send("A2 AUTHENTICATE XOAUTH2 " + ir("m@example.test", "good"))
	w.expect("A2 OK [CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584] m@example.test authenticated (Success)")

	w2 := dialWire(t, u)
	w2.expect("* OK Gimap ...")
	w2.send("B1 AUTHENTICATE XOAUTH2 " + ir("m@example.test", "good"))
	w2.expect("B1 NO [ALERT] Too many simultaneous connections. (Failure)")
	if u.Limited() != 1 || u.Sessions("m@example.test") != 1 {
		t.Errorf("limited %d, sessions %d; want 1, 1", u.Limited(), u.Sessions("m@example.test"))
	}
	u.ExpireSessions("m@example.test")
	w.expect("* BYE Session expired, please login again.")
}
