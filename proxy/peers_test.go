package proxy_test

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
)

// noUIDs makes the proxy act as where the kernel does not tell a loopback
// peer's uid: every loopback peer is one.
func noUIDs(local, remote net.Addr) (uint32, error) {
	return 0, errors.New("uids unavailable in this test")
}

// loopbackAddrs returns n addresses 127.0.b.1, 127.0.b.2, ...
func loopbackAddrs(b, n int) []string {
	var addrs []string
	for i := 1; i <= n; i++ {
		addrs = append(addrs, fmt.Sprintf("127.0.%d.%d", b, i))
	}
	return addrs
}

// count returns how many answers start with prefix.
func count(answers []string, prefix string) int {
	n := 0
	for _, a := range answers {
		if strings.HasPrefix(a, prefix) {
			n++
		}
	}
	return n
}

// loginLogRE finds the collector's successful login and its throttle wait.
var loginLogRE = regexp.MustCompile(`msg=login .*login=` + testLogin + ` .*outcome=OK .*throttle_wait=(\S+)`)

// wantLoginUnthrottled logs in with the right password through r and
// checks that the proxy added no throttle wait to it.
func wantLoginUnthrottled(t *testing.T, h *harness, r *rawConn, tag string) {
	t.Helper()
	before := len(loginLogRE.FindAllString(h.logs.String(), -1))
	r.send(fmt.Sprintf("%s LOGIN %s %q\r\n", tag, testLogin, testPassword))
	if got := r.line(); !strings.HasPrefix(got, tag+" OK") {
		t.Fatalf("the collector's right password got %q", got)
	}
	m := loginLogRE.FindAllStringSubmatch(h.logs.String(), -1)
	if len(m) != before+1 {
		t.Fatalf("%d login lines for the collector, want %d", len(m), before+1)
	}
	if wait := m[len(m)-1][1]; wait != "0s" {
		t.Errorf("the collector's login waited %s for the throttle, want 0s", wait)
	}
}

// TestLockoutByOtherUser: 50 wrong passwords for the collector's login
// from another local user, and the collector's right password (not
// cached: the proxy never saw it) still gets OK at once.
func TestLockoutByOtherUser(t *testing.T) {
	needRoot(t)
	bin := helperBinary(t)
	h := newHarness(t, harnessOptions{failureDelay: 1})
	answers := guessAs(t, bin, otherUIDs[0], h.addr, testLogin, 50, []string{"127.0.0.1"})
	if len(answers) != 50 || count(answers, "g1 NO ") != 50 {
		t.Fatalf("the guesser got %q", answers)
	}
	wantLoginUnthrottled(t, h, h.raw(), "c1")
	if !strings.Contains(h.logs.String(), fmt.Sprintf(" uid=%d ", otherUIDs[0])) {
		t.Error("the guesser's session log lines do not name its uid")
	}
}

// TestLockoutWithoutUIDs: where uids cannot be found, 50 wrong passwords
// from 127.0.0.2 count for all of loopback, and still the collector, who
// logs in regularly, gets OK at once, from any loopback address.
func TestLockoutWithoutUIDs(t *testing.T) {
	h := newHarness(t, harnessOptions{failureDelay: 1, peerUID: noUIDs})
	h.login() // the collector's regular login: its password is known good
	for i := range 50 {
		r := h.rawFrom("127.0.0.2")
		r.send(fmt.Sprintf("g%d LOGIN %s wrong-%d\r\n", i, testLogin, i))
		if got := r.line(); !strings.HasPrefix(got, fmt.Sprintf("g%d NO ", i)) {
			t.Fatalf("guess %d got %q", i, got)
		}
		r.nc.Close()
	}
	wantLoginUnthrottled(t, h, h.raw(), "c1")
	wantLoginUnthrottled(t, h, h.rawFrom("127.0.0.2"), "c2")
}

// TestGuessBudget: guesses spread over 50 loopback addresses, or over 5
// local users, have no more passwords checked than the login's failure
// budget (plus the one check each new peer gets); the rest are refused
// without a check.
func TestGuessBudget(t *testing.T) {
	check := func(t *testing.T, answers []string, peers int) {
		t.Helper()
		checked := count(answers, "g1 NO [AUTHENTICATIONFAILED]")
		refused := count(answers, "g1 NO [UNAVAILABLE] Too many failed logins")
		if checked+refused != len(answers) {
			t.Errorf("answers other than AUTHENTICATIONFAILED and UNAVAILABLE: %q", answers)
		}
		if limit := proxy.LoginBudget + peers; checked > limit {
			t.Errorf("%d of %d guesses were checked, want at most %d (budget %d, %d peers)",
				checked, len(answers), limit, proxy.LoginBudget, peers)
		}
		t.Logf("%d guesses from %d peers: %d checked, %d refused unchecked", len(answers), peers, checked, refused)
	}
	guessFrom := func(t *testing.T, h *harness, from []string, n int) []string {
		var answers []string
		for i := range n {
			r := h.rawFrom(from[i%len(from)])
			r.send(fmt.Sprintf("g1 LOGIN %s wrong-%d\r\n", testLogin, i))
			answers = append(answers, r.line())
			r.nc.Close()
		}
		return answers
	}
	t.Run("50 loopback addresses", func(t *testing.T) {
		h := newHarness(t, harnessOptions{failureDelay: 1})
		check(t, guessFrom(t, h, loopbackAddrs(5, 50), 100), 1)
	})
	t.Run("50 loopback addresses without uids", func(t *testing.T) {
		h := newHarness(t, harnessOptions{failureDelay: 1, peerUID: noUIDs})
		check(t, guessFrom(t, h, loopbackAddrs(5, 50), 100), 1)
	})
	t.Run("5 users", func(t *testing.T) {
		needRoot(t)
		bin := helperBinary(t)
		h := newHarness(t, harnessOptions{failureDelay: 1})
		var answers []string
		for i, uid := range otherUIDs {
			answers = append(answers, guessAs(t, bin, uid, h.addr, testLogin, 20, loopbackAddrs(6+i, 4))...)
		}
		check(t, answers, len(otherUIDs))
		// The owner, a peer with no failures, is not held to the budget.
		wantLoginUnthrottled(t, h, h.raw(), "c1")
	})
}

// TestConnectionFill: another local user holds its full share of
// connections (and is refused more); the collector still connects and
// logs in.
func TestConnectionFill(t *testing.T) {
	needRoot(t)
	bin := helperBinary(t)
	h := newHarness(t, harnessOptions{serverTOML: "max_connections_per_peer = 5\n"})
	greetings, release := holdAs(t, bin, otherUIDs[0], h.addr, 7)
	defer release()
	if n := count(greetings, "* OK "); n != 5 {
		t.Errorf("the other user got %d sessions of 7, want its share of 5: %q", n, greetings)
	}
	if n := count(greetings, "* BYE [UNAVAILABLE] "); n != 2 {
		t.Errorf("the other user's connections over its share got %q", greetings)
	}
	wantLoginUnthrottled(t, h, h.raw(), "c1")
	if !regexp.MustCompile(`connection refused: limit reached.* peer="uid 65534" limit=server.max_connections_per_peer`).MatchString(h.logs.String()) {
		t.Error("the refusal is not logged with the peer and the limit's key")
	}
}

// TestFirstCommandTimeout: a connection that sends nothing is closed after
// first_command_timeout, well before preauth_timeout.
func TestFirstCommandTimeout(t *testing.T) {
	h := newHarness(t, harnessOptions{serverTOML: "first_command_timeout = \"200ms\"\npreauth_timeout = \"60s\"\n"})
	r := h.raw()
	if got := r.line(); !strings.HasPrefix(got, "* BYE ") {
		t.Fatalf("an idle new connection got %q", got)
	}
	if !r.closed() {
		t.Error("not closed after BYE")
	}
	// Once it has spoken, preauth_timeout applies.
	r = h.raw()
	r.send("a1 NOOP\r\n")
	if got := r.line(); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("NOOP = %q", got)
	}
	r.send(fmt.Sprintf("a2 LOGIN %s %q\r\n", testLogin, testPassword))
	if got := r.line(); !strings.HasPrefix(got, "a2 OK") {
		t.Fatalf("LOGIN = %q", got)
	}
}
