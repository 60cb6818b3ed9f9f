package main

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/auth/tokenstore/pgstore/pgtest"
	"github.com/imap-oauth-proxy/imap-oauth-proxy/internal/haproxytest"
)

// TestServeTwoDaemonsBehindHAProxy runs two serve commands on one
// PostgreSQL store behind the two-instance haproxy.cfg of
// docs/operations.md (send-proxy-v2). Collectors log in through HAProxy
// from 127.0.0.2 and up; each daemon logs the collectors it served, by
// their own address, and HAProxy's as via=.
func TestServeTwoDaemonsBehindHAProxy(t *testing.T) {
	const login, password = "collector", "haproxy-pw-canary-3f0e"
	pg := pgtest.Start(t)
	dsn := pg.NewDatabase(t)
	c := newCLI(t)
	c.secret(password)
	l := newLab(t, c, login)
	db := migratedPGStore(t, dsn)
	rt := l.tokens.Grant(mailboxOf(login))
	c.secret(rt)
	if _, err := db.Create(login, password, tokenstore.Secret{RefreshToken: rt}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, l.dir, "store.dsn", dsn+"\n")
	path := writeFile(t, l.dir, "config.toml", labConfig(l.tokens.TokenURL(), l.upstream.Addr, "", login)+
		"\n[store]\ntype = \"postgres\"\ndsn_file = \"store.dsn\"\n"+
		"\n[proxy_protocol]\nlisteners = [\"listen\"]\nallowed = [\"127.0.0.1\"]\n")
	var daemons [2]*background
	var addrs [2]string
	for i := range daemons {
		daemons[i] = c.start("", "serve", "-config", path)
		addrs[i] = daemons[i].wait(daemons[i].stderr, servingRE)[1]
	}

	// The daemons have no TLS listener: the docs' imaps backend points at
	// their plain ones, which answer the health checks all the same.
	front := haproxytest.FreeAddr(t)
	cfg := haproxytest.DocsConfig(t, filepath.Join("..", "..", "docs", "operations.md"), "balance source",
		append([]haproxytest.Replacement{
			{Old: "bind :143\n", New: "bind " + front + "\n"},
			{Old: "bind :993\n", New: "bind " + haproxytest.FreeAddr(t) + "\n"},
			{Old: "10.0.0.11:1143 ", New: addrs[0] + " "},
			{Old: "10.0.0.12:1143 ", New: addrs[1] + " "},
			{Old: "10.0.0.11:1993 ", New: addrs[0] + " "},
			{Old: "10.0.0.12:1993 ", New: addrs[1] + " "},
		}, haproxytest.RunnableHere...)...)
	haproxy := haproxytest.Start(t, cfg, front)

	served := [2]int{}
	for i := 2; i < 12; i++ {
		client := fmt.Sprintf("127.0.0.%d", i)
		d := &net.Dialer{Timeout: testDeadline, LocalAddr: &net.TCPAddr{IP: net.ParseIP(client)}}
		conn, err := d.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(testDeadline))
		cl := imapclient.New(conn, nil)
		err = cl.Login(login, password).Wait()
		cl.Logout().Wait()
		cl.Close()
		if err != nil {
			t.Fatalf("LOGIN from %s through HAProxy: %v", client, err)
		}
		loginRE := regexp.MustCompile(`msg=login .*remote=` + regexp.QuoteMeta(client) + `:\d+ via=127\.0\.0\.1:\d+ .*outcome=OK`)
		n := 0
		for d, b := range daemons {
			if loginRE.MatchString(b.stderr.String()) {
				served[d]++
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d daemons logged the login from %s by its address", n, client)
		}
	}
	if served[0] == 0 || served[1] == 0 {
		t.Errorf("balance source sent every collector to one daemon: %v", served)
	}
	for d, b := range daemons {
		if strings.Contains(b.stderr.String(), "connection refused") {
			t.Errorf("daemon %d refused a connection from HAProxy:\n%s", d+1, b.stderr.String())
		}
	}
	if strings.Contains(haproxy.Output(), " is DOWN") {
		t.Errorf("HAProxy marked a daemon down:\n%s", haproxy.Output())
	}
}
