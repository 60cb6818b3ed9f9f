package proxy_test

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/authtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/proxy/proxytest"
)

// floodWorkers is how many wrong logins the other local user keeps
// running at once.
const floodWorkers = 60

// floodAccounts is how many collector accounts the KDF-flood benchmark
// configures: each op logs in two that were never used, so their keys are
// not cached.
const floodAccounts = 40

// BenchmarkKDFFlood measures a collector's cold login (its derived key not
// cached, so argon2id runs with the default parameters: 64 MiB, 3 passes)
// while another local user (a helper process as uid 65534) keeps
// floodWorkers wrong logins running, from rotating 127.x addresses and
// for rotating logins; and, in the same run, the same cold login before
// the flood starts. It reports:
//
//	cold-login-s       the cold login under the flood (mean)
//	idle-cold-login-s  the cold login without the flood (mean)
//	flood/idle         their ratio
//	flood-checked/s    wrong logins of the flood whose password was checked,
//	                   over the flood's whole run (from its start)
//	flood-refused/s    wrong logins refused unchecked (NO [UNAVAILABLE])
//	flood-other/s      flood connections refused at max_connections_per_peer
//
// It needs root; run it with `make bench` or
// go test -run '^$' -bench KDFFlood -benchtime 3x ./proxy/
func BenchmarkKDFFlood(b *testing.B) {
	needRoot(b)
	if 2*b.N > floodAccounts {
		b.Skipf("at most %d ops (-benchtime %dx): every op needs two never-used accounts", floodAccounts/2, floodAccounts/2)
	}
	bin := helperBinary(b)
	tokens := authtest.NewServer(authtest.Options{ClientID: testClientID, ClientSecret: testSecret})
	b.Cleanup(tokens.Close)
	up, err := proxytest.NewUpstream(proxytest.UpstreamOptions{Validate: tokens.Validate})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { up.Close() })
	opts := rigOptions{
		kdf:       tokenstore.DefaultKDFParams(),
		providers: []rigProvider{{name: "lab", address: up.Addr, tokenURL: tokens.TokenURL(), caPEM: up.CAPEM}},
	}
	var logins []string
	for i := range floodAccounts {
		login := "collector-" + strconv.Itoa(i)
		mailbox := login + "@contoso.test"
		up.AddUser(mailbox)
		logins = append(logins, login)
		opts.accounts = append(opts.accounts, rigAccount{login: login, provider: "lab", mailbox: mailbox,
			password: "pw " + login, refreshToken: tokens.Grant(mailbox)})
	}
	rg := newRig(b, opts)

	next := 0
	coldLogin := func() time.Duration {
		login := logins[next]
		next++
		c, err := dialLine(rg.addr, "", testDeadline)
		if err != nil {
			b.Fatal(err)
		}
		defer c.nc.Close()
		start := time.Now()
		got, _, err := c.command("a1", fmt.Sprintf("LOGIN %s %q", login, "pw "+login))
		elapsed := time.Since(start)
		if err != nil || !strings.HasPrefix(got, "a1 OK") {
			b.Fatalf("cold LOGIN %s = %q, %v", login, got, err)
		}
		return elapsed
	}

	var idle time.Duration
	for range b.N {
		idle += coldLogin()
	}

	cmd := helperCommand(b, bin, otherUIDs[0], "flood", rg.addr,
		"HELPER_COUNT="+strconv.Itoa(floodWorkers), "HELPER_LOGINS="+strings.Join(append(logins, "nobody-here"), ","))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	out := bufio.NewScanner(stdout)
	if !out.Scan() || out.Text() != "flooding" {
		b.Fatalf("the flood did not start: %q %v", out.Text(), out.Err())
	}
	b.ResetTimer()
	var flooded time.Duration
	for range b.N {
		flooded += coldLogin()
	}
	b.StopTimer()
	stdin.Close()
	counts := map[string]float64{}
	for out.Scan() {
		if name, n, ok := strings.Cut(out.Text(), " "); ok {
			v, _ := strconv.ParseFloat(n, 64)
			counts[name] = v
		}
	}
	cmd.Wait()

	n, floodTime := float64(b.N), counts["seconds"]
	b.ReportMetric(flooded.Seconds()/n, "cold-login-s")
	b.ReportMetric(idle.Seconds()/n, "idle-cold-login-s")
	b.ReportMetric(flooded.Seconds()/idle.Seconds(), "flood/idle")
	b.ReportMetric(counts["checked"]/floodTime, "flood-checked/s")
	b.ReportMetric(counts["refused"]/floodTime, "flood-refused/s")
	b.ReportMetric(counts["other"]/floodTime, "flood-other/s")
}
