package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

var parseResponseTests = []struct {
	line string
	want response
}{
	{"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Gimap ready",
		response{tag: "*", status: "OK", code: "CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2", text: "Gimap ready"}},
	{"* OK The Microsoft Exchange IMAP4 service is ready.",
		response{tag: "*", status: "OK", text: "The Microsoft Exchange IMAP4 service is ready."}},
	{"* ok [ALERT] lower case", response{tag: "*", status: "OK", code: "ALERT", text: "lower case"}},
	{"* OK [ALERT]", response{tag: "*", status: "OK", code: "ALERT"}},
	{"* OK [] empty code", response{tag: "*", status: "OK", text: "empty code"}},
	{"* OK [unclosed code", response{tag: "*", status: "OK", text: "[unclosed code"}},
	{"* BYE shutting down", response{tag: "*", status: "BYE", text: "shutting down"}},
	{"* CAPABILITY IMAP4rev1 IDLE", response{tag: "*", status: "CAPABILITY", text: "IMAP4rev1 IDLE"}},
	{"P2 NO AUTHENTICATE failed.", response{tag: "P2", status: "NO", text: "AUTHENTICATE failed."}},
	{"P2 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)",
		response{tag: "P2", status: "NO", code: "AUTHENTICATIONFAILED", text: "Invalid credentials (Failure)"}},
	{"P2 OK", response{tag: "P2", status: "OK"}},
	{"P2", response{tag: "P2"}},
	{"+ eyJzdGF0dXMiOiI0MDAifQ==", response{tag: "+", text: "eyJzdGF0dXMiOiI0MDAifQ=="}},
	{"+ [CAPABILITY X] not a code", response{tag: "+", text: "[CAPABILITY X] not a code"}},
	{"+ ", response{tag: "+"}},
	{"+", response{tag: "+"}},
	{"", response{}},
}

func TestParseResponse(t *testing.T) {
	for _, tc := range parseResponseTests {
		if got := parseResponse(tc.line); got != tc.want {
			t.Errorf("parseResponse(%q) = %+v, want %+v", tc.line, got, tc.want)
		}
	}
}

func TestResponseCaps(t *testing.T) {
	for _, tc := range []struct{ code, want string }{
		{"CAPABILITY IMAP4rev1 SASL-IR", "IMAP4rev1 SASL-IR"},
		{"capability IDLE", "IDLE"},
		{"CAPABILITY", ""},
		{"CAPABILITYX IDLE", ""},
		{"ALERT", ""},
		{"", ""},
	} {
		if got := (response{code: tc.code}).caps(); got != tc.want {
			t.Errorf("caps of [%s] = %q, want %q", tc.code, got, tc.want)
		}
	}
}

func TestTrailingLiteral(t *testing.T) {
	for _, tc := range []struct {
		line string
		n    int64
		ok   bool
	}{
		{"* 1 FETCH (BODY[] {42}", 42, true},
		{"{0}", 0, true},
		{"* ID (\"name\" {5}", 5, true},
		{"* 1 FETCH (BINARY[] ~{7}", 7, true},
		{"* OK no literal", 0, false},
		{"* OK {}", 0, false},
		{"{}", 0, false},
		{"* OK {-1}", 0, false},
		{"* OK {1a}", 0, false},
		{"* OK {5} not at end", 0, false},
		{"* OK 5}", 0, false},
		{"* OK {99999999999999999999}", 0, false},
		{"", 0, false},
	} {
		n, ok := trailingLiteral([]byte(tc.line))
		if n != tc.n || ok != tc.ok {
			t.Errorf("trailingLiteral(%q) = %d, %v, want %d, %v", tc.line, n, ok, tc.n, tc.ok)
		}
	}
}

func TestHasCap(t *testing.T) {
	const caps = "IMAP4rev1 SASL-IR  AUTH=XOAUTH2 auth=oauthbearer IDLE"
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"SASL-IR", true},
		{"sasl-ir", true},
		{"AUTH=OAUTHBEARER", true},
		{"IDLE", true},
		{"SASL", false},
		{"SASL-IRX", false},
		{"AUTH=PLAIN", false},
		{"", false},
	} {
		if got := hasCap(caps, tc.name); got != tc.want {
			t.Errorf("hasCap(%q, %q) = %v, want %v", caps, tc.name, got, tc.want)
		}
	}
	if hasCap("", "IMAP4rev1") {
		t.Error("hasCap on an empty list = true")
	}
}

func TestReadResponse(t *testing.T) {
	big := strings.Repeat("x", maxUpstreamLine)
	for _, tc := range []struct {
		name string
		in   string
		want []string // responses in order
		err  error    // after them; io.EOF at a clean end
	}{
		{name: "lines", in: "* OK ready\r\nP1 OK done\n",
			want: []string{"* OK ready", "P1 OK done"}, err: io.EOF},
		{name: "literal", in: "* 1 FETCH (BODY[] {7}\r\na\r\nb\x00c)\r\nP1 OK\r\n",
			want: []string{"* 1 FETCH (BODY[] {7}\r\na\r\nb\x00c)", "P1 OK"}, err: io.EOF},
		{name: "two literals", in: "* ID (\"a\" {1}\r\nb \"c\" {0}\r\n)\r\n",
			want: []string{"* ID (\"a\" {1}\r\nb \"c\" {0}\r\n)"}, err: io.EOF},
		{name: "line at the limit", in: big + "\r\n", want: []string{big}, err: io.EOF},
		{name: "line over the limit", in: big + "y\r\n", err: errLineTooLong},
		{name: "literal over the limit", in: fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n", maxUpstreamLine), err: errLineTooLong},
		{name: "literal and line over the limit",
			in: fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n%s%s\r\n", maxUpstreamLine-30, big[:maxUpstreamLine-30],
				strings.Repeat(")", 10)),
			err: errLineTooLong},
		{name: "EOF mid-line", in: "* OK rea", err: io.ErrUnexpectedEOF},
		{name: "EOF mid-literal", in: "* 1 FETCH (BODY[] {10}\r\nabc", err: io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReader(strings.NewReader(tc.in))
			var got []string
			var err error
			for {
				var line string
				if line, err = readResponse(br); err != nil {
					break
				}
				got = append(got, line)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("responses %q, want %q", got, tc.want)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("error %v, want %v", err, tc.err)
			}
		})
	}
}

// fakeUpstream runs a script against the proxy's side of an upstream
// connection. Script lines starting "S: " are sent, "C: " are expected
// from the proxy, in order. After the script the server reads until the
// proxy closes, so anything extra the proxy sent is caught.
type fakeUpstream struct {
	// done delivers what the server received and the first script
	// violation.
	done chan fakeResult
}

type fakeResult struct {
	received []string // lines the proxy sent, without CR LF
	err      error
}

const fakeDeadline = 10 * time.Second

// startFakeUpstream connects an UpstreamConn to a server that runs script.
// closeAfter ends the server's side after the script instead of waiting
// for the proxy to close.
func startFakeUpstream(t *testing.T, script []string, closeAfter bool) (*UpstreamConn, *fakeUpstream) {
	t.Helper()
	client, server := net.Pipe()
	deadline := time.Now().Add(fakeDeadline)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	t.Cleanup(func() { client.Close() })
	f := &fakeUpstream{done: make(chan fakeResult, 1)}
	go func() {
		defer server.Close()
		var res fakeResult
		br := bufio.NewReader(server)
		for _, step := range script {
			dir, text, _ := strings.Cut(step, ": ")
			if dir == "S" {
				if _, err := io.WriteString(server, text+"\r\n"); err != nil {
					res.err = fmt.Errorf("sending %q: %w", text, err)
					break
				}
				continue
			}
			line, err := br.ReadString('\n')
			if err != nil {
				res.err = fmt.Errorf("waiting for %q: got %q, %w", text, line, err)
				break
			}
			if !strings.HasSuffix(line, "\r\n") {
				res.err = fmt.Errorf("line %q does not end with CR LF", line)
			}
			line = strings.TrimSuffix(line, "\r\n")
			res.received = append(res.received, line)
			if line != text && res.err == nil {
				res.err = fmt.Errorf("received %q, want %q", line, text)
			}
		}
		if !closeAfter && res.err == nil {
			rest, err := io.ReadAll(br)
			if len(rest) > 0 {
				res.received = append(res.received, string(rest))
				res.err = fmt.Errorf("extra bytes after the script: %q", rest)
			} else if err != nil {
				res.err = fmt.Errorf("waiting for the proxy to close: %w", err)
			}
		}
		f.done <- res
	}()
	return &UpstreamConn{nc: client, br: bufio.NewReader(client)}, f
}

// wait closes the proxy's side and returns what the server received.
func (f *fakeUpstream) wait(t *testing.T, up *UpstreamConn) []string {
	t.Helper()
	up.nc.Close()
	res := <-f.done
	if res.err != nil {
		t.Errorf("fake upstream: %v", res.err)
	}
	return res.received
}

// The login every AUTHENTICATE test makes.
const (
	testUpstreamAddr = "imap.example.test:993"
	testIR           = "user=M\x01auth=Bearer T\x01\x01"
)

var testIR64 = base64.StdEncoding.EncodeToString([]byte(testIR))

func testUpstreamLogin(mech string) *UpstreamLogin {
	return &UpstreamLogin{
		Account: &config.Account{Login: "lab-login", Mailbox: "M",
			Provider: &config.Provider{Name: "lab", Type: "generic", IMAPAddress: testUpstreamAddr, IMAPTLS: "implicit", Mechanism: mech}},
		Token: "T",
	}
}

func base64JSON(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// Errors the AUTHENTICATE tests expect.
type authWant struct {
	kind         auth.Kind
	tokenRefused bool   // errors.Is(err, errTokenRefused)
	jsonStatus   string // Status of an *auth.XOAUTH2Error in the chain, "" for none
}

var authenticateTests = []struct {
	name   string
	mech   string // provider mechanism, XOAUTH2 when ""
	saslIR bool
	script []string
	// closeAfter: the server hangs up after the script.
	closeAfter bool
	want       *authWant // nil for success
	caps       string    // up.caps on success
}{
	{
		name:   "SASL-IR, OK with capabilities",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: P2 OK [CAPABILITY IMAP4rev1 IDLE MOVE] user M authenticated",
		},
		caps: "IMAP4rev1 IDLE MOVE",
	},
	{
		name:   "SASL-IR, untagged capabilities",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: * CAPABILITY IMAP4rev1 UIDPLUS",
			"S: P2 OK AUTHENTICATE completed.",
		},
		caps: "IMAP4rev1 UIDPLUS",
	},
	{
		name:   "SASL-IR, OK without capabilities",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: P2 OK AUTHENTICATE completed.",
		},
	},
	{
		name: "no SASL-IR: waits for the continuation",
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2",
			"S: + ",
			"C: " + testIR64,
			"S: P2 OK [CAPABILITY IMAP4rev1] done",
		},
		caps: "IMAP4rev1",
	},
	{
		name: "no SASL-IR, bare + continuation",
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2",
			"S: +",
			"C: " + testIR64,
			"S: P2 OK done",
		},
	},
	{
		name:   "Gmail: JSON error challenge, then NO",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: + " + base64JSON(`{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}`),
			"C: ",
			"S: P2 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)",
		},
		want: &authWant{kind: auth.AuthorizationFailed, tokenRefused: true, jsonStatus: "400"},
	},
	{
		name: "Gmail without SASL-IR",
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2",
			"S: + ",
			"C: " + testIR64,
			"S: + " + base64JSON(`{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}`),
			"C: ",
			"S: P2 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)",
		},
		want: &authWant{kind: auth.AuthorizationFailed, tokenRefused: true, jsonStatus: "401"},
	},
	{
		name:   "undecodable challenge",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: + not base64!",
			"C: ",
			"S: P2 NO failed",
		},
		want: &authWant{kind: auth.AuthorizationFailed, tokenRefused: true},
	},
	{
		name:   "Microsoft: NO directly",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: P2 NO AUTHENTICATE failed.",
		},
		want: &authWant{kind: auth.AuthorizationFailed, tokenRefused: true},
	},
	{
		name:   "BAD",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: P2 BAD Command Error. 12",
		},
		want: &authWant{kind: auth.AuthorizationFailed},
	},
	{
		name:   "OAUTHBEARER error challenge is answered with ^A",
		mech:   sasl.OAuthBearer,
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE OAUTHBEARER " + base64JSON("n,a=M,\x01host=imap.example.test\x01port=993\x01auth=Bearer T\x01\x01"),
			"S: + " + base64JSON(`{"status":"invalid_token"}`),
			"C: AQ==",
			"S: P2 NO SASL authentication failed",
		},
		want: &authWant{kind: auth.AuthorizationFailed, tokenRefused: true},
	},
	{
		name:   "server closes during AUTHENTICATE",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: * BYE going away",
		},
		closeAfter: true,
		want:       &authWant{kind: auth.Unavailable},
	},
	{
		name:   "unexpected tag",
		saslIR: true,
		script: []string{
			"C: P2 AUTHENTICATE XOAUTH2 " + testIR64,
			"S: P1 OK stray",
		},
		want: &authWant{kind: auth.Unavailable},
	},
}

func TestUpstreamAuthenticate(t *testing.T) {
	for _, tc := range authenticateTests {
		t.Run(tc.name, func(t *testing.T) {
			mech := tc.mech
			if mech == "" {
				mech = auth.XOAUTH2
			}
			up, f := startFakeUpstream(t, tc.script, tc.closeAfter)
			var trace []string
			up.trace = func(dir, line string) { trace = append(trace, dir+" "+line) }
			err := up.authenticate(testUpstreamLogin(mech), tc.saslIR)
			received := f.wait(t, up)

			var want []string
			for _, step := range tc.script {
				if text, ok := strings.CutPrefix(step, "C: "); ok {
					want = append(want, text)
				}
			}
			if !reflect.DeepEqual(received, want) {
				t.Errorf("server received %q, want %q", received, want)
			}
			if mech == auth.XOAUTH2 && len(received) > 0 {
				// The initial response, inline or after "+".
				ir := strings.TrimPrefix(received[0], "P2 AUTHENTICATE XOAUTH2 ")
				if !tc.saslIR && len(received) > 1 {
					ir = received[1]
				}
				if dec, err := base64.StdEncoding.DecodeString(ir); err != nil || string(dec) != testIR {
					t.Errorf("initial response %q decodes to %q, %v, want %q", ir, dec, err, testIR)
				}
			}

			if len(trace) == 0 {
				t.Error("nothing traced")
			}
			for _, l := range trace {
				if strings.Contains(l, testIR64) || strings.Contains(l, "Bearer") || strings.Contains(l, testIR64[:20]) {
					t.Errorf("trace line %q shows the initial response", l)
				}
			}

			if tc.want == nil {
				if err != nil {
					t.Fatalf("authenticate: %v", err)
				}
				if up.caps != tc.caps {
					t.Errorf("caps = %q, want %q", up.caps, tc.caps)
				}
				return
			}
			checkAuthError(t, err, tc.want)
		})
	}
}

func checkAuthError(t *testing.T, err error, want *authWant) {
	t.Helper()
	var ae *auth.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T), want an *auth.Error", err, err)
	}
	if ae.Kind != want.kind {
		t.Errorf("kind %v, want %v (error %v)", ae.Kind, want.kind, err)
	}
	if ae.Message == "" || strings.ContainsAny(ae.Message, "\r\n") {
		t.Errorf("collector message %q is not one non-empty line", ae.Message)
	}
	if strings.Contains(ae.Message, "Bearer T") || strings.Contains(ae.Message, testIR64) {
		t.Errorf("collector message %q carries the token", ae.Message)
	}
	if got := errors.Is(err, errTokenRefused); got != want.tokenRefused {
		t.Errorf("errors.Is(errTokenRefused) = %v, want %v (error %v)", got, want.tokenRefused, err)
	}
	var xe *auth.XOAUTH2Error
	if errors.As(err, &xe) {
		if xe.Status != want.jsonStatus {
			t.Errorf("XOAUTH2 status %q, want %q", xe.Status, want.jsonStatus)
		}
	} else if want.jsonStatus != "" {
		t.Errorf("no *auth.XOAUTH2Error in %v, want status %q", err, want.jsonStatus)
	}
}

func TestUpstreamReadGreeting(t *testing.T) {
	for _, tc := range []struct {
		name     string
		greeting string // "" for a server that hangs up at once
		caps     string
		want     *authWant // nil for success
		// msg is part of the collector-facing message on failure.
		msg string
	}{
		{name: "OK with capabilities", greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Gimap ready",
			caps: "IMAP4rev1 SASL-IR AUTH=XOAUTH2"},
		{name: "OK without capabilities", greeting: "* OK The Microsoft Exchange IMAP4 service is ready."},
		{name: "BYE", greeting: "* BYE too many connections", want: &authWant{kind: auth.Unavailable},
			msg: "too many connections"},
		{name: "PREAUTH", greeting: "* PREAUTH welcome", want: &authWant{kind: auth.Unavailable}},
		{name: "not IMAP", greeting: "220 smtp.example.test ESMTP", want: &authWant{kind: auth.Unavailable}},
		{name: "no greeting", want: &authWant{kind: auth.Unavailable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var script []string
			if tc.greeting != "" {
				script = []string{"S: " + tc.greeting}
			}
			up, f := startFakeUpstream(t, script, true)
			caps, err := up.readGreeting(testUpstreamAddr)
			if received := f.wait(t, up); len(received) > 0 {
				t.Errorf("server received %q, want nothing", received)
			}
			if tc.want == nil {
				if err != nil || caps != tc.caps {
					t.Errorf("readGreeting = %q, %v, want %q", caps, err, tc.caps)
				}
				return
			}
			checkAuthError(t, err, tc.want)
			if !strings.Contains(auth.MessageOf(err, ""), tc.msg) {
				t.Errorf("message %q does not pass on the upstream's %q", auth.MessageOf(err, ""), tc.msg)
			}
			if errors.Is(err, errTokenRefused) {
				t.Errorf("greeting failure %v matches errTokenRefused", err)
			}
		})
	}
}

func TestUpstreamCapability(t *testing.T) {
	up, f := startFakeUpstream(t, []string{
		"C: P1 CAPABILITY",
		"S: * CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2",
		"S: P1 OK CAPABILITY completed.",
	}, false)
	caps, err := up.capability(testUpstreamAddr)
	f.wait(t, up)
	if err != nil || caps != "IMAP4rev1 SASL-IR AUTH=XOAUTH2" {
		t.Fatalf("capability = %q, %v", caps, err)
	}
	if !hasCap(caps, "SASL-IR") {
		t.Error("SASL-IR not found")
	}
}

// FuzzReadResponse feeds arbitrary server bytes to readResponse and
// parseResponse. They must not panic, and a response stays within
// maxUpstreamLine plus the CR LFs kept before literals.
func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Gimap ready\r\n",
		"* OK The Microsoft Exchange IMAP4 service is ready.\r\n",
		"* BYE too many connections\r\n",
		"P2 OK [CAPABILITY IMAP4rev1 IDLE] done\r\n",
		"P2 NO AUTHENTICATE failed.\r\n",
		"+ eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIn0=\r\nP2 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n",
		"+\r\n",
		"* CAPABILITY IMAP4rev1 UIDPLUS\r\nP1 OK\r\n",
		"* 1 FETCH (BODY[] {7}\r\na\r\nb\x00c)\r\n",
		"* ID (\"a\" {1}\r\nb \"c\" {0}\r\n)\r\n",
		"* 1 FETCH (BODY[] {99999999}\r\n",
		"* OK {-1}\r\n",
		"* OK [unclosed\r\n",
		"* OK rea",
		"\n\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(bytes.NewReader(data))
		for {
			line, err := readResponse(br)
			if err != nil {
				return
			}
			if len(line) > maxUpstreamLine+4 {
				t.Fatalf("response of %d bytes", len(line))
			}
			// Only a literal brings a line break into a response.
			if strings.Contains(line, "\n") && !strings.Contains(line, "}\r\n") {
				t.Fatalf("response %q holds a line break but no literal", line)
			}
			r := parseResponse(line)
			hasCap(r.caps(), "SASL-IR")
		}
	})
}
