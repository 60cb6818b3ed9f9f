package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/syncbuf"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// idleSessions is how many sessions BenchmarkIdleSessions holds open.
const idleSessions = 1000

// idleFetchSize is about the size of the message a "fetched" session
// reads before it goes idle.
const idleFetchSize = 256 << 10

// idleGOGC is the daemon's GOGC during BenchmarkIdleSessions. A low value
// makes the collector run often while the sessions open, so the heap it
// reports is close to the live heap rather than live plus up to 100 %
// garbage (the default GOGC=100 headroom, which is allocator policy, not
// what a session keeps).
const idleGOGC = "5"

// BenchmarkIdleSessions measures what an idle session costs the real
// daemon: it builds the binary, runs it against an upstream and a token
// endpoint in this process, opens idleSessions sessions of one kind, and
// reads the daemon's heap and goroutine stacks from its /metrics before and
// after. Every op starts a fresh daemon (and logs in once, to fill the key
// and token caches) so that its baseline holds no garbage from an earlier
// op. Reported per session:
//
//	heap-B/session   growth of go_memstats_heap_inuse_bytes
//	stack-B/session  growth of go_memstats_stack_inuse_bytes
//	goroutines/session
//
// "preauth" sessions have read the greeting and sent nothing; "relayed"
// ones have logged in and SELECTed INBOX, and then stay silent.
func BenchmarkIdleSessions(b *testing.B) {
	lab := newIdleLab(b)
	for _, kind := range []string{"preauth", "relayed", "fetched"} {
		b.Run(kind, func(b *testing.B) {
			var heap, stack, goroutines float64
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				d := lab.start(b)
				warm, err := openIdle(d.addr, "relayed", -1)
				if err != nil {
					b.Fatal(err)
				}
				warm.Close()
				before := d.settled(b, 0)
				b.StartTimer()
				conns := d.open(b, kind, idleSessions)
				b.StopTimer()
				after := d.settled(b, idleSessions)
				for _, c := range conns {
					c.Close()
				}
				d.stop()
				delta := func(name string) float64 { return (after[name] - before[name]) / idleSessions }
				heap += delta("go_memstats_heap_inuse_bytes")
				stack += delta("go_memstats_stack_inuse_bytes")
				goroutines += delta("go_goroutines")
			}
			b.ReportMetric(heap/float64(b.N), "heap-B/session")
			b.ReportMetric(stack/float64(b.N), "stack-B/session")
			b.ReportMetric(goroutines/float64(b.N), "goroutines/session")
		})
	}
}

// idleLab is an upstream, a token endpoint, a state directory with the
// test account's record, and a config for the daemon.
type idleLab struct {
	bin, config   string
	addr, metrics string
}

// idleDaemon is the real binary serving the idleLab's account.
type idleDaemon struct {
	addr, metricsURL string
	stderr           *syncbuf.Buffer
	stop             func()
}

// buildDaemon compiles cmd/imap-oauth-proxy once per test binary run.
var buildDaemon = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "imap-oauth-proxy-bench-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "imap-oauth-proxy")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/imap-oauth-proxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func newIdleLab(b *testing.B) *idleLab {
	b.Helper()
	bin, err := buildDaemon()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	tokens := authtest.NewServer(authtest.Options{ClientID: testClientID, ClientSecret: testSecret})
	b.Cleanup(tokens.Close)
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: tokens.Validate})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { up.Close() })
	user := up.AddUser(testMailbox)
	line := "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n"
	msg := string(message("large", strings.Repeat(line, idleFetchSize/len(line))))
	if _, err := user.Append("INBOX", stringLiteral{strings.NewReader(msg)}, &imap.AppendOptions{}); err != nil {
		b.Fatal(err)
	}
	if err := up.WriteCAFile(filepath.Join(dir, "ca.pem")); err != nil {
		b.Fatal(err)
	}
	store, err := tokenstore.New(filepath.Join(dir, "state"), &tokenstore.Options{KDF: testKDF})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := store.Create(testLogin, testPassword, tokenstore.Secret{RefreshToken: tokens.Grant(testMailbox)}); err != nil {
		b.Fatal(err)
	}
	lab := &idleLab{bin: bin, addr: freeAddr(b), metrics: freeAddr(b)}
	text := proxytest.LabConfig(proxytest.LabConfigOptions{
		Listen: lab.addr,
		Server: fmt.Sprintf("metrics_listen = %q\nlog_level = \"warn\"\nmax_connections = %d\nmax_connections_per_ip = %d\n"+
			"preauth_timeout = \"10m\"\npreauth_max_time = \"10m\"\n", lab.metrics, 3*idleSessions, 3*idleSessions),
		TokenURL: tokens.TokenURL(), ClientID: testClientID, ClientSecret: testSecret,
		IMAPAddress: up.Addr, CAFile: "ca.pem",
		Accounts: map[string]string{testLogin: testMailbox},
	})
	lab.config = filepath.Join(dir, "config.toml")
	if err := os.WriteFile(lab.config, []byte(text), 0o600); err != nil {
		b.Fatal(err)
	}
	return lab
}

// start runs the daemon and waits until it serves /metrics.
func (lab *idleLab) start(b *testing.B) *idleDaemon {
	b.Helper()
	d := &idleDaemon{addr: lab.addr, metricsURL: "http://" + lab.metrics + "/metrics", stderr: &syncbuf.Buffer{}}
	cmd := exec.Command(lab.bin, "serve", "-config", lab.config)
	cmd.Env = append(os.Environ(), "GOGC="+idleGOGC)
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			<-exited
		})
	}
	b.Cleanup(func() {
		d.stop()
		if b.Failed() {
			b.Logf("daemon stderr:\n%s", d.stderr.String())
		}
	})
	deadline := time.Now().Add(testDeadline)
	for {
		if _, err := d.scrape(); err == nil {
			return d
		}
		select {
		case <-exited:
			b.Fatalf("daemon exited:\n%s", d.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("daemon not serving metrics after %v:\n%s", testDeadline, d.stderr.String())
		}
	}
}

// scrape reads the daemon's /metrics into name -> value (unlabelled
// samples only).
func (d *idleDaemon) scrape() (map[string]float64, error) {
	resp, err := http.Get(d.metricsURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	m := make(map[string]float64)
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			m[name] = v
		}
	}
	return m, nil
}

// settled waits until the daemon has exactly active sessions open, gives
// it a moment to go idle, and returns its metrics.
func (d *idleDaemon) settled(b *testing.B, active int) map[string]float64 {
	b.Helper()
	deadline := time.Now().Add(testDeadline)
	for {
		m, err := d.scrape()
		if err != nil {
			b.Fatal(err)
		}
		if int(m["imap_oauth_proxy_sessions_active"]) == active {
			time.Sleep(200 * time.Millisecond)
			if m, err = d.scrape(); err != nil {
				b.Fatal(err)
			}
			if int(m["imap_oauth_proxy_sessions_active"]) == active {
				return m
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%v sessions active, want %d", m["imap_oauth_proxy_sessions_active"], active)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// open opens n idle sessions of kind "preauth" or "relayed", 16 at a time.
func (d *idleDaemon) open(b *testing.B, kind string, n int) []net.Conn {
	b.Helper()
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := openIdle(d.addr, kind, i)
				conns[i] = c
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		b.Fatal(err)
	}
	return conns
}

// openIdle opens one session: the greeting read, and for "relayed" LOGIN
// and SELECT INBOX done.
func openIdle(addr, kind string, i int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(testDeadline))
	br := bufio.NewReader(c)
	expect := func(tag string) error {
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return fmt.Errorf("session %d: %v after %q", i, err, line)
			}
			if strings.HasPrefix(line, tag+" ") {
				if !strings.HasPrefix(line, tag+" OK") {
					return fmt.Errorf("session %d: %q", i, line)
				}
				return nil
			}
		}
	}
	err = expect("*")
	if err == nil && kind != "preauth" {
		fmt.Fprintf(c, "a LOGIN %s %q\r\n", testLogin, testPassword)
		if err = expect("a"); err == nil {
			io.WriteString(c, "b SELECT INBOX\r\n")
			err = expect("b")
		}
	}
	if err == nil && kind == "fetched" {
		io.WriteString(c, "c FETCH 1 BODY.PEEK[]\r\n")
		err = expect("c")
	}
	if err == nil && br.Buffered() > 0 {
		rest, _ := br.Peek(br.Buffered())
		err = fmt.Errorf("session %d: unexpected %q", i, bytes.TrimSpace(rest))
	}
	c.SetDeadline(time.Time{})
	return c, err
}

// stringLiteral is a string as an imap.LiteralReader.
type stringLiteral struct{ *strings.Reader }

func (l stringLiteral) Size() int64 { return l.Reader.Size() }
