package main

import (
	"errors"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseListenEnv(t *testing.T) {
	const pid = 4242
	tests := []struct {
		name    string
		env     map[string]string
		want    []listenFD
		ignored bool
		errs    []string // all in the error; nil: no error
	}{
		{name: "not activated", env: nil},
		{name: "LISTEN_PID alone", env: map[string]string{"LISTEN_PID": "4242"}},
		{name: "LISTEN_FDS alone", env: map[string]string{"LISTEN_FDS": "1", "LISTEN_FDNAMES": "imap"}},
		{name: "no fds", env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "0"}},
		{
			name:    "another process",
			env:     map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "bogus"},
			ignored: true,
		},
		{
			name: "imap",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "imap"},
			want: []listenFD{{3, "imap"}},
		},
		{
			name: "all three in any order",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "metrics:imaps:imap"},
			want: []listenFD{{3, "metrics"}, {4, "imaps"}, {5, "imap"}},
		},
		{
			name: "LISTEN_PID not a number",
			env:  map[string]string{"LISTEN_PID": "self", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "imap"},
			errs: []string{`LISTEN_PID="self"`},
		},
		{
			name: "LISTEN_PID zero",
			env:  map[string]string{"LISTEN_PID": "0", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "imap"},
			errs: []string{`LISTEN_PID="0"`},
		},
		{
			name: "LISTEN_FDS negative",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "-1"},
			errs: []string{`LISTEN_FDS="-1"`},
		},
		{
			name: "LISTEN_FDS not a number",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "two"},
			errs: []string{`LISTEN_FDS="two"`},
		},
		{
			name: "names missing",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1"},
			errs: []string{"fd 3", "LISTEN_FDNAMES", "FileDescriptorName=imap"},
		},
		{
			name: "fewer names than fds",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "imap"},
			errs: []string{"1 names", "LISTEN_FDS=2"},
		},
		{
			name: "systemd's default name, the unit's",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "imap-oauth-proxy.socket"},
			errs: []string{"fd 3", `"imap-oauth-proxy.socket"`, "FileDescriptorName="},
		},
		{
			name: "unknown second name",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "imap:nntp"},
			errs: []string{"fd 4", `"nntp"`},
		},
		{
			name: "empty name",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": ""},
			errs: []string{"fd 3", `""`},
		},
		{
			name: "name twice",
			env:  map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "imaps:imap:imaps"},
			errs: []string{"fd 5", `"imaps"`, "fd 3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) {
				v, ok := tt.env[k]
				return v, ok
			}
			fds, ignored, err := parseListenEnv(pid, lookup)
			if tt.errs != nil {
				if err == nil {
					t.Fatalf("no error; fds %v", fds)
				}
				for _, want := range tt.errs {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fds, tt.want) {
				t.Errorf("fds = %v, want %v", fds, tt.want)
			}
			if (ignored != "") != tt.ignored {
				t.Errorf("ignored = %q, want a reason: %v", ignored, tt.ignored)
			}
		})
	}
}

// dupFD returns a duplicate of c's fd that no *os.File owns, as systemd
// would pass it.
func dupFD(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.Dup(int(s)) }); err != nil {
		t.Fatal(err)
	}
	if dupErr != nil {
		t.Fatal(dupErr)
	}
	return fd
}

// listenerOnly returns a listening socket's address and an fd of it that
// is the socket's only reference: once the fd is closed, the address
// refuses connections.
func listenerOnly(t *testing.T) (addr string, fd int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fd = dupFD(t, ln.(*net.TCPListener))
	ln.Close()
	return ln.Addr().String(), fd
}

func TestTakeListeners(t *testing.T) {
	addr, fd := listenerOnly(t)
	in, err := takeListeners([]listenFD{{fd, socketIMAP}})
	if err != nil {
		t.Fatal(err)
	}
	defer in.close()
	if in.plain == nil || in.tls != nil || in.metrics != nil {
		t.Fatalf("listeners plain %v, tls %v, metrics %v; want only plain", in.plain, in.tls, in.metrics)
	}
	if got := in.plain.Addr().String(); got != addr {
		t.Errorf("Addr() = %s, want %s", got, addr)
	}
	if got := in.listener("listen"); got != in.plain {
		t.Errorf(`listener("listen") = %v`, got)
	}
	if opts := in.loadOptions(); !opts.InheritedListen || opts.InheritedListenTLS {
		t.Errorf("loadOptions() = %+v", opts)
	}
	// The listener works, and its fd does not leak into child processes.
	done := make(chan error, 1)
	go func() {
		c, err := in.plain.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	c, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Accept: %v", err)
		}
	case <-time.After(testDeadline):
		t.Fatal("Accept did not return")
	}
	rc, err := in.plain.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	rc.Control(func(s uintptr) { flags, err = unix.FcntlInt(s, unix.F_GETFD, 0) })
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("listener fd flags %#x (%v): want FD_CLOEXEC", flags, err)
	}
}

func TestTakeListenersRefuses(t *testing.T) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := net.DialTimeout("tcp", ln.Addr().String(), testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	for _, tc := range []struct {
		name   string
		conn   syscall.Conn
		errs   []string
		target error
	}{
		{"datagram socket", udp.(*net.UDPConn), []string{"not a stream socket", "ListenStream="}, nil},
		{"connected socket", conn.(*net.TCPConn), nil, errNotListening},
		{"pipe", r, nil, unix.ENOTSOCK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The good socket after the bad one is closed too.
			addr, goodFD := listenerOnly(t)
			badFD := dupFD(t, tc.conn)
			in, err := takeListeners([]listenFD{{badFD, socketIMAPS}, {goodFD, socketIMAP}})
			if err == nil {
				in.close()
				t.Fatal("no error")
			}
			for _, want := range append(tc.errs, `"imaps"`, "fd "+strconv.Itoa(badFD)) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error %q is not %v", err, tc.target)
			}
			if c, err := net.DialTimeout("tcp", addr, testDeadline); err == nil {
				c.Close()
				t.Errorf("the socket after the refused one is still open")
			}
		})
	}
}

// TestInheritListenersEnvironment checks that the LISTEN_* variables are
// gone after serve has looked at them, whether it used them or not.
func TestInheritListenersEnvironment(t *testing.T) {
	check := func(t *testing.T) {
		t.Helper()
		for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			if v, ok := os.LookupEnv(k); ok {
				t.Errorf("%s=%q still set", k, v)
			}
		}
	}
	t.Run("another process", func(t *testing.T) {
		t.Setenv("LISTEN_PID", strconv.Itoa(os.Getppid()))
		t.Setenv("LISTEN_FDS", "1")
		t.Setenv("LISTEN_FDNAMES", "imap")
		in, err := inheritListeners()
		if err != nil {
			t.Fatal(err)
		}
		if in.plain != nil || in.ignored == "" {
			t.Errorf("took %v, ignored %q; want nothing taken and a reason", in.names, in.ignored)
		}
		check(t)
	})
	t.Run("bad name", func(t *testing.T) {
		t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		t.Setenv("LISTEN_FDS", "1")
		t.Setenv("LISTEN_FDNAMES", "nntp")
		if _, err := inheritListeners(); err == nil || !strings.Contains(err.Error(), `"nntp"`) {
			t.Errorf("got %v, want an error naming pop3", err)
		}
		check(t)
	})
}
