package proxy_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// Soak parameters: a few hundred connections, a bounded number at once.
const (
	soakConnections = 300
	soakWorkers     = 32
	// soakPreauthTimeout is the proxy's preauth_timeout: stalled clients
	// are dropped after it.
	soakPreauthTimeout = 2 * time.Second
	// soakClientDeadline bounds every soak connection.
	soakClientDeadline = 20 * time.Second
)

// The soak's two accounts: "steady" keeps its access token for an hour;
// "churn" gets 5-minute tokens, shorter than the refresh margin, so every
// login refreshes and rotates its refresh token.
const (
	steadyLogin   = "soak-steady"
	steadyMailbox = "steady@contoso.test"
	churnLogin    = "soak-churn"
	churnMailbox  = "churn@contoso.test"
	soakPassword  = "soak local password"
)

// soakKind is what one soak connection does.
type soakKind int

const (
	soakGood    soakKind = iota // log in, append a unique message, fetch it back
	soakBad                     // unknown login: NO
	soakGarbage                 // not IMAP: BYE or close
	soakAbrupt                  // hang up in the middle
	soakStall                   // go silent before login: BYE at the pre-auth timeout
	soakKinds
)

var soakKindNames = [soakKinds]string{"good", "bad", "garbage", "abrupt", "stall"}

// soakMix is how many of each kind a run has, in percent of the
// connections: bad passwords stay under 20%.
var soakMix = [soakKinds]int{soakGood: 60, soakBad: 15, soakGarbage: 13, soakAbrupt: 10, soakStall: 2}

// soakJob is one connection of the soak.
type soakJob struct {
	id      int
	kind    soakKind
	variant int // which flavour of the kind
	size    int // message size of a good session
}

// abandonedAppend is the part of an APPEND literal a collector sent
// before it hung up.
type abandonedAppend struct {
	sent []byte
	rst  bool // hung up with a RST rather than a FIN
}

// soakRun is the shared state of a soak.
type soakRun struct {
	rg        *rig
	seed      uint64
	spreadIPs bool // bad logins come from 127.0.1.x

	mu       sync.Mutex
	appended map[string][][32]byte // mailbox -> hashes of the messages good sessions appended
	// abandoned are the bytes of APPEND literals whose sender hung up in
	// the middle, by mailbox.
	abandoned map[string][]abandonedAppend
	byeSeen   atomic.Int64 // garbage connections that got a BYE before the close
	resets    atomic.Int64 // garbage connections reset before a BYE could be read
}

// TestSoak runs a few hundred loopback connections through one proxy,
// mixing good sessions, unknown logins, garbage, abrupt hang-ups and
// stalled clients. Every good session must complete with its message
// read back byte for byte; every other one must get its answer; nothing
// is lost or added in the mailboxes; a rotated refresh token is on disk;
// and once everything is shut down, goroutines and file descriptors are
// back where they started.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("soak test")
	}
	start := time.Now()
	warmUpNetwork(t)
	baseGoroutines, baseFDs := runtime.NumGoroutine(), openFDs(t)

	steadyTokens := authtest.NewServer(authtest.Options{ClientID: testClientID, ClientSecret: testSecret})
	churnTokens := authtest.NewServer(authtest.Options{ClientID: testClientID, ClientSecret: testSecret,
		Rotate: true, AccessTTL: 5 * time.Minute})
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: func(user, token string) error {
		if user == churnMailbox {
			return churnTokens.Validate(user, token)
		}
		return steadyTokens.Validate(user, token)
	}})
	if err != nil {
		t.Fatal(err)
	}
	up.AddUser(steadyMailbox)
	up.AddUser(churnMailbox)
	var closeOnce sync.Once
	closeServers := func() {
		closeOnce.Do(func() {
			up.Close()
			steadyTokens.Close()
			churnTokens.Close()
		})
	}
	t.Cleanup(closeServers)

	rg := newRig(t, rigOptions{
		serverTOML: fmt.Sprintf("login_timeout = \"15s\"\npreauth_timeout = %q\nmax_connections_per_peer = 1000\n",
			soakPreauthTimeout.String()),
		// The soak's clients stand for many hosts: each loopback address
		// is a peer of its own, as each remote address would be.
		peerUID: uidPerLoopbackAddress,
		providers: []rigProvider{
			{name: "steady", address: up.Addr, tokenURL: steadyTokens.TokenURL(), caPEM: up.CAPEM},
			{name: "churn", address: up.Addr, tokenURL: churnTokens.TokenURL(), caPEM: up.CAPEM},
		},
		accounts: []rigAccount{
			{login: steadyLogin, provider: "steady", mailbox: steadyMailbox, password: soakPassword,
				refreshToken: steadyTokens.Grant(steadyMailbox)},
			{login: churnLogin, provider: "churn", mailbox: churnMailbox, password: soakPassword,
				refreshToken: churnTokens.Grant(churnMailbox)},
		},
	})
	run := &soakRun{rg: rg, seed: uint64(time.Now().UnixNano()), spreadIPs: canBindLoopback(), appended: make(map[string][][32]byte),
		abandoned: make(map[string][]abandonedAppend)}
	t.Logf("seed %d", run.seed)
	jobs := soakJobs(run.seed)

	// Run the jobs, soakWorkers at a time.
	var (
		errMu    sync.Mutex
		failures [soakKinds][]string
		done     [soakKinds]int
	)
	queue := make(chan soakJob)
	var wg sync.WaitGroup
	for range soakWorkers {
		wg.Go(func() {
			for job := range queue {
				err := run.do(job)
				errMu.Lock()
				if err != nil {
					failures[job.kind] = append(failures[job.kind], fmt.Sprintf("#%d (variant %d): %v", job.id, job.variant, err))
				} else {
					done[job.kind]++
				}
				errMu.Unlock()
			}
		})
	}
	for _, job := range jobs {
		queue <- job
	}
	close(queue)
	wg.Wait()
	loadTime := time.Since(start)

	var planned [soakKinds]int
	for _, job := range jobs {
		planned[job.kind]++
	}
	for k := range soakKinds {
		if len(failures[k]) > 0 {
			t.Errorf("%d of %d %s connections failed:\n%s", len(failures[k]), planned[k], soakKindNames[k],
				strings.Join(failures[k][:min(len(failures[k]), 10)], "\n"))
		}
	}
	t.Logf("%d connections in %v: %v done of %v planned (good, bad, garbage, abrupt, stall); garbage: %d BYE, %d reset",
		len(jobs), loadTime.Round(time.Millisecond), done, planned, run.byeSeen.Load(), run.resets.Load())

	// Every session ended by itself: none is stuck in the proxy.
	rg.waitIdle(t, 10*time.Second)

	// No data lost, nothing added: each mailbox holds exactly what the
	// good sessions appended (an APPEND cut off in its literal left
	// nothing behind).
	for _, acct := range []struct{ login, mailbox string }{{steadyLogin, steadyMailbox}, {churnLogin, churnMailbox}} {
		run.checkMailbox(t, acct.login, acct.mailbox)
	}
	// The last rotated refresh token of the churning account is the one
	// on disk.
	store, err := tokenstore.New(rg.cfg.Server.StateDir, &tokenstore.Options{KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	u, err := store.Open(churnLogin, soakPassword)
	if err != nil {
		t.Fatalf("opening the churning account's record: %v", err)
	}
	if cur := churnTokens.CurrentRefreshToken(churnMailbox); u.Secret.RefreshToken != cur {
		t.Errorf("the record holds a refresh token other than the newest one (record generation %d, %d refreshes)",
			u.Info.Generation, churnTokens.RefreshCount(churnMailbox))
	}
	t.Logf("churning account: %d refreshes, record generation %d", churnTokens.RefreshCount(churnMailbox), u.Info.Generation)

	// Shut everything down: no goroutine or descriptor may outlive it.
	if err := rg.stop(); err != nil {
		t.Errorf("Shutdown with no session open: %v", err)
	}
	// Every session (the soak's and the two checks') logged its end.
	logs := rg.logs.String()
	starts, ends := strings.Count(logs, `msg="session start"`), strings.Count(logs, `msg="session end"`)
	if starts != ends || starts != len(jobs)+2 {
		t.Errorf("%d sessions started, %d ended, %d connections made", starts, ends, len(jobs)+2)
	}
	if n := strings.Count(logs, "panic"); n > 0 {
		t.Errorf("%d panics logged", n)
	}
	closeServers()
	deadline := time.Now().Add(10 * time.Second)
	var goroutines, fds int
	for {
		goroutines, fds = runtime.NumGoroutine(), openFDs(t)
		if (goroutines <= baseGoroutines && fds <= baseFDs) || time.Now().After(deadline) {
			break
		}
		rg.logs.wait(deadline) // nothing logs any more: a bounded pause between polls
	}
	if goroutines > baseGoroutines {
		var buf bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Errorf("%d goroutines after the soak, %d before:\n%s", goroutines, baseGoroutines, buf.String())
	}
	if fds > baseFDs {
		t.Errorf("%d open file descriptors after the soak, %d before: %s", fds, baseFDs, fdList())
	}
	t.Logf("total %v; goroutines %d -> %d, fds %d -> %d", time.Since(start).Round(time.Millisecond),
		baseGoroutines, goroutines, baseFDs, fds)
}

// soakJobs returns the soak's connections in a random order.
func soakJobs(seed uint64) []soakJob {
	rng := mathrand.New(mathrand.NewPCG(seed, 0x50a6))
	var jobs []soakJob
	for k := range soakKinds {
		n := soakConnections * soakMix[k] / 100
		for range n {
			job := soakJob{kind: k, variant: rng.IntN(6)}
			if k == soakGood {
				// Mostly small messages, some large ones that take many
				// relay reads and TLS records.
				job.size = 200 + rng.IntN(16<<10)
				if rng.IntN(10) == 0 {
					job.size = 64<<10 + rng.IntN(256<<10)
				}
			}
			jobs = append(jobs, job)
		}
	}
	rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	for i := range jobs {
		jobs[i].id = i
	}
	return jobs
}

func (s *soakRun) do(job soakJob) error {
	switch job.kind {
	case soakGood:
		return s.good(job)
	case soakBad:
		return s.bad(job)
	case soakGarbage:
		return s.garbage(job)
	case soakAbrupt:
		return s.abrupt(job)
	case soakStall:
		return s.stall(job)
	}
	return fmt.Errorf("unknown kind %d", job.kind)
}

// soakMessage is a unique RFC 5322 message of about size bytes.
func soakMessage(id, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: collector@example.test\r\nMessage-ID: <soak-%d-%s@example.test>\r\nSubject: soak %d\r\n\r\n", id, rand.Text(), id)
	line := make([]byte, 57)
	for b.Len() < size {
		rand.Read(line)
		b.WriteString(base64.StdEncoding.EncodeToString(line))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// good logs in (LOGIN or AUTHENTICATE PLAIN, to either account), appends a
// unique message and reads it back.
func (s *soakRun) good(job soakJob) error {
	login, mailbox := steadyLogin, steadyMailbox
	if job.variant%2 == 1 {
		login, mailbox = churnLogin, churnMailbox
	}
	conn, err := net.DialTimeout("tcp", s.rg.addr, soakClientDeadline)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(soakClientDeadline))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if job.variant/2%2 == 0 {
		err = c.Login(login, soakPassword).Wait()
	} else {
		err = c.Authenticate(sasl.NewPlainClient("", login, soakPassword))
	}
	if err != nil {
		return fmt.Errorf("login as %s: %w", login, err)
	}
	body := soakMessage(job.id, job.size)
	if err := roundTrip(c, body); err != nil {
		return err
	}
	s.mu.Lock()
	s.appended[mailbox] = append(s.appended[mailbox], sha256.Sum256(body))
	s.mu.Unlock()
	if err := c.Logout().Wait(); err != nil {
		return fmt.Errorf("LOGOUT: %w", err)
	}
	return nil
}

// uidPerLoopbackAddress makes up a uid for each loopback address, so that
// clients on different 127.x addresses are different peers.
func uidPerLoopbackAddress(_, remote net.Addr) (uint32, error) {
	ip := remote.(*net.TCPAddr).IP.To4()
	if ip == nil {
		return 0, errors.New("not IPv4")
	}
	return 100000 + uint32(ip[2])<<8 | uint32(ip[3]), nil
}

// canBindLoopback reports whether this host lets a client bind 127.0.1.x
// (Linux routes all of 127/8 to the loopback interface).
func canBindLoopback() bool {
	ln, err := net.Listen("tcp", "127.0.1.1:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// badSourceIP spreads unknown-login attempts over loopback addresses
// (peers of their own, see uidPerLoopbackAddress), so the proxy's
// per-peer failure throttle does not turn the soak into a wait; "" (the default address) where 127.0.1.x cannot be bound.
func (s *soakRun) badSourceIP(id int) string {
	if !s.spreadIPs {
		return ""
	}
	return fmt.Sprintf("127.0.1.%d", 1+id%250)
}

// bad logs in with an unknown login, which must get NO
// [AUTHENTICATIONFAILED] (or, once throttled, NO [UNAVAILABLE] for too
// many failures), and then logs out.
func (s *soakRun) bad(job soakJob) error {
	c, err := dialLine(s.rg.addr, s.badSourceIP(job.id), soakClientDeadline)
	if err != nil {
		return err
	}
	defer c.nc.Close()
	got, _, err := c.command("a1", fmt.Sprintf("LOGIN nobody-%d %q", job.id, "wrong password"))
	if err != nil {
		return err
	}
	if !strings.HasPrefix(got, "a1 NO [AUTHENTICATIONFAILED] ") &&
		!(strings.HasPrefix(got, "a1 NO [UNAVAILABLE] ") && strings.Contains(strings.ToLower(got), "too many")) {
		return fmt.Errorf("unknown login: %q", got)
	}
	if got, _, err := c.command("a2", "LOGOUT"); err != nil || !strings.HasPrefix(got, "a2 OK") {
		return fmt.Errorf("LOGOUT after a failed login: %q, %v", got, err)
	}
	return nil
}

// garbage sends something that is not IMAP; the proxy must answer BYE
// (or cut the connection) and close it.
func (s *soakRun) garbage(job soakJob) error {
	c, err := dialLine(s.rg.addr, "", soakClientDeadline)
	if err != nil {
		return err
	}
	defer c.nc.Close()
	var payload []byte
	switch job.variant {
	case 0: // random bytes, then a line end
		payload = make([]byte, 300)
		rand.Read(payload)
		payload = append(bytes.ReplaceAll(payload, []byte("\n"), []byte(" ")), "\r\n"...)
	case 1: // an HTTP client on the IMAP port
		payload = []byte("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: soak\r\n\r\n")
	case 2: // a line far beyond max_line_bytes
		payload = bytes.Repeat([]byte("a1 LOGIN "), 100<<10/9)
	case 3: // a TLS ClientHello on the plain port: no line end, dropped at the pre-auth timeout
		payload = append([]byte{0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03}, make([]byte, 64)...)
	case 4: // NUL bytes
		payload = append(make([]byte, 100), "\r\n"...)
	default: // a literal announced far beyond max_literal_bytes
		payload = []byte("a1 LOGIN soak {99999999}\r\n")
	}
	// The proxy may close while the payload is still being written.
	c.send(string(payload))
	sawBye := false
	for {
		l, err := c.readLine()
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return fmt.Errorf("connection still open after %v", soakClientDeadline)
			case errors.Is(err, io.EOF):
				if !sawBye {
					return errors.New("closed without BYE")
				}
				s.byeSeen.Add(1)
				return nil
			case errors.Is(err, syscall.ECONNRESET):
				// Closed with our bytes unread: the BYE may be lost.
				s.resets.Add(1)
				return nil
			}
			return err
		}
		switch {
		case strings.HasPrefix(l, "* BYE "):
			sawBye = true
		case strings.HasPrefix(l, "+ ") || strings.Contains(l, " BAD "):
		default:
			return fmt.Errorf("answer to garbage: %q", l)
		}
	}
}

// abrupt hangs up in the middle of something, with a FIN or a RST.
func (s *soakRun) abrupt(job soakJob) error {
	c, err := dialLine(s.rg.addr, "", soakClientDeadline)
	if err != nil {
		return err
	}
	rst := func() {
		c.nc.(*net.TCPConn).SetLinger(0)
		c.nc.Close()
	}
	defer c.nc.Close()
	switch job.variant {
	case 0: // right after the greeting
		c.nc.Close()
	case 1: // in the middle of the LOGIN line
		c.send("a1 LOGIN " + steadyLogin + " \"soak lo")
		c.nc.Close()
	case 2, 3: // in the middle of a synchronizing literal
		if err := c.send(fmt.Sprintf("a1 LOGIN %s {%d}\r\n", steadyLogin, len(soakPassword))); err != nil {
			return err
		}
		if l, err := c.readLine(); err != nil || !strings.HasPrefix(l, "+") {
			return fmt.Errorf("LOGIN literal continuation: %q, %v", l, err)
		}
		c.send(soakPassword[:5])
		if job.variant == 2 {
			c.nc.Close()
		} else {
			rst()
		}
	case 4, 5: // logged in, then gone in the middle of an APPEND literal
		got, _, err := c.command("a1", fmt.Sprintf("LOGIN %s %q", steadyLogin, soakPassword))
		if err != nil || !strings.HasPrefix(got, "a1 OK") {
			return fmt.Errorf("LOGIN: %q, %v", got, err)
		}
		body := soakMessage(job.id, 20000)
		if err := c.send(fmt.Sprintf("a2 APPEND INBOX {%d}\r\n", len(body))); err != nil {
			return err
		}
		if l, err := c.readLine(); err != nil || !strings.HasPrefix(l, "+") {
			return fmt.Errorf("APPEND continuation: %q, %v", l, err)
		}
		sent := body[:len(body)/2]
		s.mu.Lock()
		s.abandoned[steadyMailbox] = append(s.abandoned[steadyMailbox], abandonedAppend{sent: sent, rst: job.variant == 5})
		s.mu.Unlock()
		c.send(string(sent))
		if job.variant == 4 {
			c.nc.Close()
		} else {
			rst()
		}
	}
	return nil
}

// stall sends one command and then nothing: the proxy must say BYE at
// the pre-auth timeout and close.
func (s *soakRun) stall(job soakJob) error {
	c, err := dialLine(s.rg.addr, "", soakClientDeadline)
	if err != nil {
		return err
	}
	defer c.nc.Close()
	if got, _, err := c.command("a1", "NOOP"); err != nil || !strings.HasPrefix(got, "a1 OK") {
		return fmt.Errorf("NOOP: %q, %v", got, err)
	}
	start := time.Now()
	l, err := c.readLine()
	if err != nil || !strings.HasPrefix(l, "* BYE ") {
		return fmt.Errorf("after going silent: %q, %v", l, err)
	}
	if waited := time.Since(start); waited < soakPreauthTimeout-200*time.Millisecond || waited > soakPreauthTimeout+8*time.Second {
		return fmt.Errorf("BYE after %v of silence, want about %v", waited, soakPreauthTimeout)
	}
	if _, err := c.readLine(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("after BYE: %v, want the connection closed", err)
	}
	return nil
}

// checkMailbox logs in as login and checks the mailbox holds exactly the
// messages the good sessions appended, each once.
func (s *soakRun) checkMailbox(t *testing.T, login, mailbox string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.rg.addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testDeadline))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(login, soakPassword).Wait(); err != nil {
		t.Fatalf("LOGIN as %s after the soak: %v", login, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	have := make(map[[32]byte]int)
	var bodies [][]byte
	if sel.NumMessages > 0 {
		msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{
			BodySection: []*imap.FetchItemBodySection{{Peek: true}},
		}).Collect()
		if err != nil {
			t.Fatalf("FETCH 1:*: %v", err)
		}
		for _, m := range msgs {
			for _, b := range m.BodySection {
				have[sha256.Sum256(b.Bytes)]++
				bodies = append(bodies, b.Bytes)
			}
		}
	}
	s.mu.Lock()
	want := s.appended[mailbox]
	abandoned := s.abandoned[mailbox]
	s.mu.Unlock()
	wanted := make(map[[32]byte]bool)
	for _, h := range want {
		wanted[h] = true
		if have[h] != 1 {
			t.Errorf("%s holds message %x %d times, want once", mailbox, h[:6], have[h])
		}
	}
	// Anything else must be the start of an APPEND whose collector hung up
	// in the literal: go-imap's imapmemserver (the test upstream) stores a
	// literal that EOF cut short. The proxy must have passed on only bytes
	// the collector sent.
	var truncated, truncatedRST int
	for _, b := range bodies {
		if wanted[sha256.Sum256(b)] {
			continue
		}
		found := false
		for _, a := range abandoned {
			if len(b) > 0 && bytes.HasPrefix(a.sent, b) {
				found = true
				truncated++
				if a.rst {
					truncatedRST++
				}
				break
			}
		}
		if !found {
			t.Errorf("%s holds a message of %d bytes that no session appended", mailbox, len(b))
		}
	}
	if len(bodies) != len(want)+truncated {
		t.Errorf("%s holds %d messages, the good sessions appended %d (and %d truncated ones were stored)",
			mailbox, len(bodies), len(want), truncated)
	}
	if truncated > 0 {
		t.Logf("%s: the upstream stored %d of %d APPENDs cut off in their literal (%d of them ended by a RST); go-imap's memory server accepts a literal cut short by EOF",
			mailbox, truncated, len(abandoned), truncatedRST)
	}
	c.Logout().Wait()
}

// warmUpNetwork makes the runtime create what it keeps for the life of
// the process on first use (the network poller's descriptors), so that
// they count in the baseline.
func warmUpNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	c.Close()
	ln.Close()
}

// openFDs counts this process's open file descriptors, or returns 0
// where /proc is not available.
func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(entries)
}

// fdList describes the open descriptors, for a failure message.
func fdList() string {
	entries, _ := os.ReadDir("/proc/self/fd")
	var sb strings.Builder
	for _, e := range entries {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fmt.Fprintf(&sb, "\n  %s -> %s", e.Name(), target)
	}
	return sb.String()
}
