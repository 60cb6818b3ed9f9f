// Package pgtest starts a private PostgreSQL server for tests: initdb in a
// temporary directory, a Unix socket in it, no TCP listener, trust
// authentication for the test's own connections. As root it runs the
// server as nobody, since postgres refuses to run as root.
//
// A missing PostgreSQL skips the test, except under CI=true (where .ci/run
// installs the postgresql package): there it fails.
package pgtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// startTimeout bounds a start or a stop of the server.
const startTimeout = 30 * time.Second

// Server is a private PostgreSQL server. Its methods are safe for
// concurrent use.
type Server struct {
	t       testing.TB
	bin     string // directory of initdb and postgres
	dir     string // data directory's parent, also the socket directory
	cred    *syscall.Credential
	nameSeq int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *strings.Builder
}

// Start initializes and starts a server that stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := findBin(t)
	dir, err := os.MkdirTemp("", "pgtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{t: t, bin: bin, dir: dir, log: &strings.Builder{}}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Skipf("running as root and no user nobody to run postgres as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", s.dataDir(), "-U", "postgres",
		"-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	initdb.Stdout, initdb.Stderr = &out, &out
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	initdb.Dir = dir
	if err := initdb.Run(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out.String())
	}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// findBin returns the directory of initdb and postgres.
func findBin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "postgres")); err == nil {
			return filepath.Dir(p)
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1])
	}
	msg := "PostgreSQL not installed (apt-get install postgresql)"
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s; CI must install it (.ci/run)", msg)
	}
	t.Skip(msg)
	return ""
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// start runs postgres and waits until its log says it accepts connections.
func (s *Server) start() {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.dataDir(),
		"-c", "listen_addresses=", "-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=16MB")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting postgres: %v", err)
	}
	ready := make(chan struct{})
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	log := s.log
	s.mu.Unlock()
	var logMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if !signalled && strings.Contains(sc.Text(), "ready to accept connections") {
				signalled = true
				close(ready)
			}
		}
		cmd.Wait()
		close(done)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
	case <-done:
		logMu.Lock()
		defer logMu.Unlock()
		s.t.Fatalf("postgres exited at start:\n%s", log.String())
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		s.t.Fatalf("postgres did not start within %v", startTimeout)
	}
}

// Stop shuts the server down (fast shutdown: sessions are disconnected)
// and waits for it to exit. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGINT)
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		cmd.Process.Kill()
		<-done
	}
}

// Restart stops the server and starts it again on the same socket.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Started starts a stopped server again.
func (s *Server) Started() {
	s.t.Helper()
	s.start()
}

// DSN returns a connection string for database name ("postgres" if
// empty). It holds no password: the socket trusts its users.
func (s *Server) DSN(name string) string {
	if name == "" {
		name = "postgres"
	}
	return fmt.Sprintf("host=%s user=postgres dbname=%s sslmode=disable", s.dir, name)
}

// NewDatabase creates an empty database and returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	s.nameSeq++
	name := fmt.Sprintf("test%d", s.nameSeq)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN(""))
	if err != nil {
		t.Fatalf("connecting to postgres: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database: %v", err)
	}
	return s.DSN(name)
}
