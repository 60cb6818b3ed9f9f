// Command imap-oauth-proxy-load drives concurrent collectors against an
// imap-oauth-proxy for a bounded time and reports logins per second, login
// latency (p50, p99), FETCH throughput and the process's CPU time per
// session, through the proxy and, for comparison, directly against the
// same upstream. With -runs N it measures N times and reports the median
// and range of the proxy's ratios to direct.
//
// By default it runs everything in process on 127.0.0.1: an XOAUTH2-only
// upstream (proxy/proxytest), a token endpoint (auth/authtest) and the
// proxy, as `imap-oauth-proxy demo` does. Each collector loops: connect,
// LOGIN, SELECT INBOX, FETCH one message, LOGOUT. The direct mode does the
// same with AUTHENTICATE XOAUTH2 over TLS to the upstream. The modes
// alternate in slices (direct, proxy, direct, proxy) so that a change in
// machine load affects both alike.
//
// With -addr it drives an already running proxy instead (loopback only;
// the password comes from $IMAP_OAUTH_PROXY_PASSWORD) and has no direct
// mode to compare with.
//
//	go run ./cmd/imap-oauth-proxy-load -collectors 50 -duration 10s -slices 10 -runs 5
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// Bounds on the flags, so that a run always ends by itself.
const (
	maxDuration    = 5 * time.Minute
	maxCollectors  = 2000
	maxMessageSize = 64 << 20
	// opTimeout bounds every network step of a collector.
	opTimeout = 30 * time.Second
	// passwordEnv holds the password for -addr.
	passwordEnv = "IMAP_OAUTH_PROXY_PASSWORD"
)

// The in-process account.
const (
	loadLogin    = "collector"
	loadPassword = "load-test-password"
	loadMailbox  = "collector@example.test"
	loadClientID = "load-client"
	loadSecret   = "load-secret"
)

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	var usage usageError
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "imap-oauth-proxy-load:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "imap-oauth-proxy-load:", err)
		os.Exit(1)
	}
}

// usageError is a bad command line (exit status 2).
type usageError struct{ error }

// options are the parsed flags.
type options struct {
	collectors  int
	duration    time.Duration
	slices      int
	messageSize int
	addr        string
	login       string
	runs        int
	cpuProfile  string
	memProfile  string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("imap-oauth-proxy-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.collectors, "collectors", 20, fmt.Sprintf("concurrent collectors (1..%d)", maxCollectors))
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long each mode runs (at most "+maxDuration.String()+")")
	fs.IntVar(&o.slices, "slices", 2, "slices per mode; the modes alternate slice by slice")
	fs.IntVar(&o.messageSize, "message-size", 64<<10, "size in bytes of the message each loop fetches (in-process upstream)")
	fs.StringVar(&o.addr, "addr", "", "a running proxy to drive instead of the in-process one (loopback only; password in $"+passwordEnv+")")
	fs.StringVar(&o.login, "login", "", "the login to use with -addr")
	fs.IntVar(&o.runs, "runs", 1, "measure this many times in a row and report the median and range of the ratios (1..20)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole measurement (every run, both modes) to this file")
	fs.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile (every run, both modes) to this file at the end")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: imap-oauth-proxy-load [flags]\n\n"+
			"Drives concurrent collectors (connect, LOGIN, SELECT, FETCH, LOGOUT) through the proxy and\n"+
			"directly against the same upstream, and reports logins/s, login latency and throughput.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	var err error
	switch {
	case fs.NArg() != 0:
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.collectors < 1 || o.collectors > maxCollectors:
		err = fmt.Errorf("-collectors %d out of range 1..%d", o.collectors, maxCollectors)
	case o.duration <= 0 || o.duration > maxDuration:
		err = fmt.Errorf("-duration %v out of range (0, %v]", o.duration, maxDuration)
	case o.slices < 1 || o.slices > 100:
		err = fmt.Errorf("-slices %d out of range 1..100", o.slices)
	case o.runs < 1 || o.runs > 20:
		err = fmt.Errorf("-runs %d out of range 1..20", o.runs)
	case o.messageSize < 1 || o.messageSize > maxMessageSize:
		err = fmt.Errorf("-message-size %d out of range 1..%d", o.messageSize, maxMessageSize)
	case o.addr == "" && o.login != "":
		err = errors.New("-login needs -addr")
	case o.addr != "" && o.login == "":
		err = errors.New("-addr needs -login")
	case o.addr != "":
		err = checkLoopback(o.addr)
	}
	if err != nil {
		return nil, usageError{err}
	}
	return o, nil
}

// checkLoopback refuses an address that is not on this host's loopback.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %v", addr, err)
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return fmt.Errorf("-addr %q: %v", addr, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("-addr %q: %s is not a loopback address; this tool only loads a local proxy", addr, ip)
		}
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	var modes []*mode
	if o.addr != "" {
		password := os.Getenv(passwordEnv)
		if password == "" {
			return fmt.Errorf("-addr needs the password in $%s", passwordEnv)
		}
		modes = []*mode{{name: "proxy", session: proxySession(o.addr, o.login, password)}}
	} else {
		l, err := startLab(o.messageSize)
		if err != nil {
			return err
		}
		defer l.close()
		modes = []*mode{
			{name: "direct", session: l.directSession},
			{name: "proxy", session: proxySession(l.proxyAddr, loadLogin, loadPassword)},
		}
	}

	fmt.Fprintf(stdout, "imap-oauth-proxy-load: %d collectors, %v per mode in %d slices, GOMAXPROCS %d\n",
		o.collectors, o.duration, o.slices, runtime.GOMAXPROCS(0))
	if o.addr == "" {
		fmt.Fprintf(stdout, "in-process upstream, token endpoint and proxy on 127.0.0.1; message of %d bytes\n", o.messageSize)
	} else {
		fmt.Fprintf(stdout, "proxy at %s, login %s\n", o.addr, o.login)
	}
	// One warm-up loop per mode fills the proxy's key and token caches.
	for _, m := range modes {
		if _, err := m.session(); err != nil {
			return fmt.Errorf("%s: warm-up session: %w", m.name, err)
		}
	}
	stopProfiles, err := startProfiles(o.cpuProfile, o.memProfile)
	if err != nil {
		return err
	}
	// Every network step has a deadline, so the run ends on its own; the
	// watchdog is a last resort against a bug here.
	watchdog := time.AfterFunc(time.Duration(o.runs*len(modes))*(o.duration+opTimeout)+opTimeout+time.Minute, func() {
		fmt.Fprintln(stderr, "imap-oauth-proxy-load: still running long after -duration; giving up")
		os.Exit(1)
	})
	defer watchdog.Stop()
	var ratios []runRatios
	for run := 1; run <= o.runs; run++ {
		for _, m := range modes {
			m.reset()
		}
		slice := o.duration / time.Duration(o.slices)
		for i := 0; i < o.slices; i++ {
			for _, m := range modes {
				m.drive(o.collectors, slice)
			}
		}
		if o.runs > 1 {
			fmt.Fprintf(stdout, "\nrun %d of %d", run, o.runs)
		}
		r, err := report(stdout, modes)
		if err != nil {
			stopProfiles()
			return err
		}
		if r != nil {
			ratios = append(ratios, *r)
		}
	}
	if err := stopProfiles(); err != nil {
		return err
	}
	if len(ratios) > 1 {
		reportMedians(stdout, ratios)
	}
	return nil
}

// runRatios are one run's proxy figures as fractions of direct's.
type runRatios struct {
	logins, fetch, cpu float64
}

// report prints one run's table and, with both modes, the proxy's ratios
// to direct, which it returns (nil with one mode).
func report(stdout io.Writer, modes []*mode) (*runRatios, error) {
	fmt.Fprintf(stdout, "\n%-7s %9s %9s %10s %10s %11s %13s %7s\n", "mode", "sessions", "logins/s", "login p50", "login p99", "fetch MB/s", "CPU/session", "errors")
	for _, m := range modes {
		fmt.Fprintf(stdout, "%-7s %9d %9.1f %10s %10s %11.1f %13s %7d\n", m.name, len(m.logins), m.rate(),
			ms(m.percentile(50)), ms(m.percentile(99)), m.throughput(), ms(m.cpuPerSession()), m.errors)
		if m.firstErr != nil {
			fmt.Fprintf(stdout, "        first error: %v\n", m.firstErr)
		}
	}
	for _, m := range modes {
		if len(m.logins) == 0 {
			return nil, fmt.Errorf("%s: no session completed", m.name)
		}
	}
	if len(modes) != 2 {
		return nil, nil
	}
	d, p := modes[0], modes[1]
	r := &runRatios{
		logins: p.rate() / d.rate(),
		fetch:  p.throughput() / d.throughput(),
		cpu:    float64(p.cpuPerSession()) / float64(d.cpuPerSession()),
	}
	fmt.Fprintf(stdout, "\nproxy vs direct: logins/s %.2f of direct; login p50 %+.2f ms, p99 %+.2f ms; fetch throughput %.2f of direct; CPU per session %.2fx direct\n",
		r.logins, msf(p.percentile(50)-d.percentile(50)), msf(p.percentile(99)-d.percentile(99)), r.fetch, r.cpu)
	return r, nil
}

// reportMedians prints the median and range of each ratio over the runs.
func reportMedians(stdout io.Writer, runs []runRatios) {
	stat := func(get func(runRatios) float64) string {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = get(r)
		}
		slices.Sort(v)
		median := (v[(len(v)-1)/2] + v[len(v)/2]) / 2
		return fmt.Sprintf("%.2f (%.2f-%.2f)", median, v[0], v[len(v)-1])
	}
	fmt.Fprintf(stdout, "\nmedian of %d runs (range): logins/s %s of direct; fetch throughput %s of direct; CPU per session %sx direct\n",
		len(runs), stat(func(r runRatios) float64 { return r.logins }), stat(func(r runRatios) float64 { return r.fetch }),
		stat(func(r runRatios) float64 { return r.cpu }))
}

// startProfiles starts a CPU profile into cpuPath and, for memPath, records
// every allocation from now on; the function it returns writes them.
// Empty paths profile nothing.
func startProfiles(cpuPath, memPath string) (stop func() error, err error) {
	var cpuFile *os.File
	if cpuPath != "" {
		if cpuFile, err = os.Create(cpuPath); err != nil {
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(cpuFile); err != nil {
			cpuFile.Close()
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
	}
	if memPath != "" {
		runtime.MemProfileRate = 4096
	}
	return func() error {
		if cpuFile != nil {
			pprof.StopCPUProfile()
			if err := cpuFile.Close(); err != nil {
				return fmt.Errorf("-cpuprofile: %w", err)
			}
			cpuFile = nil
		}
		if memPath != "" {
			f, err := os.Create(memPath)
			if err != nil {
				return fmt.Errorf("-memprofile: %w", err)
			}
			defer f.Close()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				return fmt.Errorf("-memprofile: %w", err)
			}
			memPath = ""
		}
		return nil
	}, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", msf(d)) }

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// sessionStats is what one collector loop measured.
type sessionStats struct {
	login   time.Duration // connect to the tagged OK of LOGIN/AUTHENTICATE
	fetched int64         // message bytes fetched
}

// mode is one way of reaching the mailbox, with what its collectors saw.
type mode struct {
	name    string
	session func() (sessionStats, error)

	mu       sync.Mutex
	logins   []time.Duration
	bytes    int64
	elapsed  time.Duration
	cpu      time.Duration // process CPU time while this mode ran
	errors   int
	firstErr error
}

// reset forgets what earlier runs measured.
func (m *mode) reset() {
	m.logins, m.bytes, m.elapsed, m.cpu, m.errors, m.firstErr = nil, 0, 0, 0, 0, nil
}

// cpuPerSession is the process CPU time (collectors, and in process the
// upstream and the proxy) per completed session.
func (m *mode) cpuPerSession() time.Duration {
	if len(m.logins) == 0 {
		return 0
	}
	return m.cpu / time.Duration(len(m.logins))
}

// drive runs n collectors for d (each finishes the loop it is in).
func (m *mode) drive(n int, d time.Duration) {
	start, cpu0 := time.Now(), processCPU()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				st, err := m.session()
				m.mu.Lock()
				if err != nil {
					m.errors++
					if m.firstErr == nil {
						m.firstErr = err
					}
				} else {
					m.logins = append(m.logins, st.login)
					m.bytes += st.fetched
				}
				m.mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // do not spin on a refused connection
				}
			}
		}()
	}
	wg.Wait()
	m.elapsed += time.Since(start)
	m.cpu += processCPU() - cpu0
}

// rate is completed sessions (each one login) per second.
func (m *mode) rate() float64 { return float64(len(m.logins)) / m.elapsed.Seconds() }

// throughput is the message bytes fetched per second by all collectors.
func (m *mode) throughput() float64 { return float64(m.bytes) / 1e6 / m.elapsed.Seconds() }

func (m *mode) percentile(p int) time.Duration {
	if len(m.logins) == 0 {
		return 0
	}
	s := slices.Clone(m.logins)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// proxySession returns a collector loop against the proxy at addr.
func proxySession(addr, login, password string) func() (sessionStats, error) {
	return func() (sessionStats, error) {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", addr, opTimeout)
		if err != nil {
			return sessionStats{}, err
		}
		conn.SetDeadline(start.Add(opTimeout))
		c := imapclient.New(conn, nil)
		defer c.Close()
		if err := c.Login(login, password).Wait(); err != nil {
			return sessionStats{}, fmt.Errorf("LOGIN: %w", err)
		}
		return fetchAndLogout(c, time.Since(start))
	}
}

// fetchAndLogout is the rest of a collector loop after the login.
func fetchAndLogout(c *imapclient.Client, login time.Duration) (sessionStats, error) {
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		return sessionStats{}, fmt.Errorf("SELECT: %w", err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		return sessionStats{}, fmt.Errorf("FETCH: %w", err)
	}
	if len(msgs) != 1 {
		return sessionStats{}, fmt.Errorf("FETCH returned %d messages, want 1", len(msgs))
	}
	var n int64
	for _, b := range msgs[0].BodySection {
		n += int64(len(b.Bytes))
	}
	if err := c.Logout().Wait(); err != nil {
		return sessionStats{}, fmt.Errorf("LOGOUT: %w", err)
	}
	return sessionStats{login: login, fetched: n}, nil
}

// lab is the in-process upstream, token endpoint and proxy.
type lab struct {
	dir       string
	tokens    *authtest.Server
	upstream  *proxytest.Upstream
	srv       *proxy.Server
	served    chan error
	cancel    context.CancelFunc
	proxyAddr string
	roots     *x509.CertPool
	token     string // access token for direct sessions
}

func startLab(messageSize int) (l *lab, err error) {
	dir, err := os.MkdirTemp("", "imap-oauth-proxy-load-")
	if err != nil {
		return nil, err
	}
	l = &lab{dir: dir}
	defer func() {
		if err != nil {
			l.close()
		}
	}()
	l.tokens = authtest.NewServer(authtest.Options{ClientID: loadClientID, ClientSecret: loadSecret})
	if l.upstream, err = proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: l.tokens.Validate}); err != nil {
		return nil, err
	}
	user := l.upstream.AddUser(loadMailbox)
	if _, err := user.Append("INBOX", newMessage(messageSize), &imap.AppendOptions{}); err != nil {
		return nil, fmt.Errorf("seeding the mailbox: %w", err)
	}
	if err := l.upstream.WriteCAFile(filepath.Join(dir, "upstream-ca.pem")); err != nil {
		return nil, err
	}
	l.roots = x509.NewCertPool()
	l.roots.AppendCertsFromPEM(l.upstream.CAPEM)

	path := filepath.Join(dir, "config.toml")
	limit := 2*maxCollectors + 100
	text := "# Written by imap-oauth-proxy-load.\n" + proxytest.LabConfig(proxytest.LabConfigOptions{
		Server:   fmt.Sprintf("max_connections = %d\nmax_connections_per_ip = %d\nlog_level = \"warn\"\n", limit, limit),
		TokenURL: l.tokens.TokenURL(), ClientID: loadClientID, ClientSecret: loadSecret,
		IMAPAddress: l.upstream.Addr, CAFile: "upstream-ca.pem",
		Accounts: map[string]string{loadLogin: loadMailbox},
	})
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	// What `token import` does, with the default (production) KDF.
	store, err := tokenstore.New(cfg.Server.StateDir, nil)
	if err != nil {
		return nil, err
	}
	if _, err := store.Create(loadLogin, loadPassword, tokenstore.Secret{RefreshToken: l.tokens.Grant(loadMailbox)}); err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	mgr, err := auth.NewManager(ctx, &auth.ManagerOptions{Store: store, Logger: logger})
	if err != nil {
		return nil, err
	}
	if l.srv, err = proxy.New(&proxy.Options{Config: cfg, Auth: mgr, Logger: logger}); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l.proxyAddr = ln.Addr().String()
	l.served = make(chan error, 1)
	go func() { l.served <- l.srv.Serve(ln) }()

	// Direct sessions use their own authorization of the same mailbox.
	oc := &oauth2.Config{ClientID: loadClientID, ClientSecret: loadSecret,
		Endpoint: oauth2.Endpoint{TokenURL: l.tokens.TokenURL(), AuthStyle: oauth2.AuthStyleInParams}}
	tok, err := oc.TokenSource(ctx, &oauth2.Token{RefreshToken: l.tokens.Grant(loadMailbox)}).Token()
	if err != nil {
		return nil, fmt.Errorf("direct access token: %w", err)
	}
	l.token = tok.AccessToken
	return l, nil
}

// directSession is a collector loop straight to the upstream.
func (l *lab) directSession() (sessionStats, error) {
	start := time.Now()
	dialer := &net.Dialer{Timeout: opTimeout}
	conn, err := tls.DialWithDialer(dialer, "tcp", l.upstream.Addr, &tls.Config{RootCAs: l.roots, ServerName: "127.0.0.1"})
	if err != nil {
		return sessionStats{}, err
	}
	conn.SetDeadline(start.Add(opTimeout))
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Authenticate(auth.NewXOAUTH2Client(loadMailbox, l.token)); err != nil {
		return sessionStats{}, fmt.Errorf("AUTHENTICATE XOAUTH2: %w", err)
	}
	return fetchAndLogout(c, time.Since(start))
}

func (l *lab) close() {
	if l.srv != nil {
		l.srv.Close()
		<-l.served
	}
	if l.cancel != nil {
		l.cancel()
	}
	if l.upstream != nil {
		l.upstream.Close()
	}
	if l.tokens != nil {
		l.tokens.Close()
	}
	os.RemoveAll(l.dir)
}

// newMessage returns an RFC 5322 message of about size bytes.
func newMessage(size int) imap.LiteralReader {
	var b strings.Builder
	b.WriteString("From: load@example.test\r\nTo: " + loadMailbox + "\r\nSubject: load test\r\n\r\n")
	const line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return literal{strings.NewReader(b.String())}
}

// literal is a strings.Reader as an imap.LiteralReader.
type literal struct{ *strings.Reader }

func (l literal) Size() int64 { return l.Reader.Size() }
