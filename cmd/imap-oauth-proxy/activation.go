package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// Socket activation follows sd_listen_fds(3). systemd starts the service
// with its listening sockets open as fds 3, 4, ... and describes them in
// LISTEN_PID (the process they are meant for), LISTEN_FDS (how many) and
// LISTEN_FDNAMES (each socket's FileDescriptorName=, colon-separated). The
// name says which listener a socket replaces: see socketKey.

// listenFDsStart is SD_LISTEN_FDS_START, the first fd systemd passes.
const listenFDsStart = 3

// The socket names (FileDescriptorName=) serve understands.
const (
	socketIMAP    = "imap"    // plain IMAP, replaces server.listen
	socketIMAPS   = "imaps"   // implicit TLS, replaces server.listen_tls
	socketPOP3    = "pop3"    // plain POP3, replaces server.listen_pop3
	socketPOP3S   = "pop3s"   // implicit-TLS POP3, replaces server.listen_pop3_tls
	socketSMTP    = "smtp"    // submission with STARTTLS, replaces server.listen_smtp
	socketSMTPS   = "smtps"   // implicit-TLS submission, replaces server.listen_smtps
	socketMetrics = "metrics" // Prometheus, replaces server.metrics_listen
)

// socketNames lists the names serve understands, for error messages.
const socketNames = socketIMAP + ", " + socketIMAPS + ", " + socketPOP3 + ", " + socketPOP3S + ", " +
	socketSMTP + ", " + socketSMTPS + " or " + socketMetrics

// socketKey returns the config key the socket named name replaces, and
// false for a name serve does not know.
func socketKey(name string) (key string, ok bool) {
	switch name {
	case socketIMAP:
		return config.ListenerKey(config.IMAP, false), true
	case socketIMAPS:
		return config.ListenerKey(config.IMAP, true), true
	case socketPOP3:
		return config.ListenerKey(config.POP3, false), true
	case socketPOP3S:
		return config.ListenerKey(config.POP3, true), true
	case socketSMTP:
		return config.ListenerKey(config.SMTP, false), true
	case socketSMTPS:
		return config.ListenerKey(config.SMTP, true), true
	case socketMetrics:
		return "metrics_listen", true
	}
	return "", false
}

// listenFD is one socket passed by systemd.
type listenFD struct {
	fd   int
	name string
}

// parseListenEnv reads the socket-activation variables through lookup (as
// os.LookupEnv) for the process pid. It returns no fds when the variables
// are not set or LISTEN_FDS is 0; when they are meant for another process
// it says so in ignored. It fails on malformed values, on a name count that
// does not match LISTEN_FDS, and on a socket whose name is unknown or
// repeated, naming the fd and the name.
func parseListenEnv(pid int, lookup func(string) (string, bool)) (fds []listenFD, ignored string, err error) {
	pidText, ok := lookup("LISTEN_PID")
	if !ok {
		return nil, "", nil
	}
	countText, ok := lookup("LISTEN_FDS")
	if !ok {
		return nil, "", nil
	}
	forPID, err := strconv.Atoi(pidText)
	if err != nil || forPID <= 0 {
		return nil, "", fmt.Errorf("LISTEN_PID=%q: not a process id", pidText)
	}
	if forPID != pid {
		return nil, fmt.Sprintf("LISTEN_PID=%d is another process (this one is %d)", forPID, pid), nil
	}
	n, err := strconv.Atoi(countText)
	if err != nil || n < 0 || n > math.MaxInt32-listenFDsStart {
		return nil, "", fmt.Errorf("LISTEN_FDS=%q: not a number of fds", countText)
	}
	if n == 0 {
		return nil, "", nil
	}
	namesText, named := lookup("LISTEN_FDNAMES")
	var names []string
	if named {
		names = strings.Split(namesText, ":")
		if len(names) != n {
			return nil, "", fmt.Errorf("LISTEN_FDNAMES has %d names for LISTEN_FDS=%d", len(names), n)
		}
	}
	seen := make(map[string]int, n)
	for i := range n {
		fd := listenFDsStart + i
		if !named {
			return nil, "", fmt.Errorf("fd %d has no name (LISTEN_FDNAMES is not set): give its socket unit FileDescriptorName=%s",
				fd, socketNames)
		}
		name := names[i]
		if _, ok := socketKey(name); !ok {
			return nil, "", fmt.Errorf("fd %d: unknown socket name %q: FileDescriptorName= must be %s",
				fd, name, socketNames)
		}
		if other, dup := seen[name]; dup {
			return nil, "", fmt.Errorf("fd %d: socket name %q already names fd %d: one socket per name (one ListenStream= per socket unit)",
				fd, name, other)
		}
		seen[name] = fd
		fds = append(fds, listenFD{fd: fd, name: name})
	}
	return fds, "", nil
}

// inherited holds the listeners systemd passed. Its zero value has none.
type inherited struct {
	plain, tls, pop3, pop3TLS, smtp, smtps, metrics net.Listener // nil when not passed
	// names lists the sockets taken, in fd order.
	names []string
	// ignored says why LISTEN_* variables were present but not used.
	ignored string
}

// listener returns the inherited listener that replaces the config key,
// or nil.
func (in *inherited) listener(key string) net.Listener {
	if slot := in.slot(key); slot != nil {
		return *slot
	}
	return nil
}

// slot is where the listener that replaces the config key goes, or nil
// for a key no socket replaces.
func (in *inherited) slot(key string) *net.Listener {
	switch key {
	case "listen":
		return &in.plain
	case "listen_tls":
		return &in.tls
	case "listen_pop3":
		return &in.pop3
	case "listen_pop3_tls":
		return &in.pop3TLS
	case "listen_smtp":
		return &in.smtp
	case "listen_smtps":
		return &in.smtps
	case "metrics_listen":
		return &in.metrics
	}
	return nil
}

// loadOptions tells config validation which listeners are inherited.
func (in *inherited) loadOptions() *config.LoadOptions {
	return &config.LoadOptions{InheritedListen: in.plain != nil, InheritedListenTLS: in.tls != nil,
		InheritedPOP3: in.pop3 != nil, InheritedPOP3TLS: in.pop3TLS != nil,
		InheritedSMTP: in.smtp != nil, InheritedSMTPS: in.smtps != nil}
}

// close closes every inherited listener.
func (in *inherited) close() {
	for _, ln := range []net.Listener{in.plain, in.tls, in.pop3, in.pop3TLS, in.smtp, in.smtps, in.metrics} {
		if ln != nil {
			ln.Close()
		}
	}
}

// inheritListeners takes the sockets systemd passed to this process, if
// any. Whatever it finds, it removes the LISTEN_* variables from the
// environment, as sd_listen_fds(3) does when asked to, so that no child
// process takes the sockets for its own.
func inheritListeners() (*inherited, error) {
	fds, ignored, err := parseListenEnv(os.Getpid(), os.LookupEnv)
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	in, err := takeListeners(fds)
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	in.ignored = ignored
	return in, nil
}

// takeListeners turns fds into listeners. Every fd gets close-on-exec
// first. A socket that is not a listening stream socket is an error; then
// every fd in fds is closed.
func takeListeners(fds []listenFD) (*inherited, error) {
	for _, f := range fds {
		unix.CloseOnExec(f.fd)
	}
	in := &inherited{}
	for i, f := range fds {
		var slot *net.Listener
		if key, ok := socketKey(f.name); ok {
			slot = in.slot(key)
		}
		var ln net.Listener
		var err error
		switch {
		case slot == nil: // parseListenEnv lets only known names through
			unix.Close(f.fd)
			err = fmt.Errorf("socket %q (fd %d): unknown name", f.name, f.fd)
		case *slot != nil:
			unix.Close(f.fd)
			err = fmt.Errorf("socket %q (fd %d): a second socket of that name", f.name, f.fd)
		default:
			ln, err = fdListener(f)
		}
		if err != nil {
			in.close()
			for _, rest := range fds[i+1:] {
				unix.Close(rest.fd)
			}
			return nil, err
		}
		*slot = ln
		in.names = append(in.names, f.name)
	}
	return in, nil
}

// errNotListening is a passed socket on which accept would fail.
var errNotListening = errors.New("not a listening socket (the socket unit needs Accept=no)")

// fdListener checks that f is a listening stream socket and returns it as
// a net.Listener. f.fd is closed in any case: the listener holds a
// duplicate, itself close-on-exec.
func fdListener(f listenFD) (net.Listener, error) {
	fail := func(err error) (net.Listener, error) {
		return nil, fmt.Errorf("socket %q (fd %d): %w", f.name, f.fd, err)
	}
	typ, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		unix.Close(f.fd)
		return fail(os.NewSyscallError("getsockopt SO_TYPE", err))
	}
	if typ != unix.SOCK_STREAM {
		unix.Close(f.fd)
		return fail(errors.New("not a stream socket (the socket unit needs ListenStream=)"))
	}
	listening, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		unix.Close(f.fd)
		return fail(os.NewSyscallError("getsockopt SO_ACCEPTCONN", err))
	}
	if listening == 0 {
		unix.Close(f.fd)
		return fail(errNotListening)
	}
	file := os.NewFile(uintptr(f.fd), f.name)
	ln, err := net.FileListener(file)
	file.Close()
	if err != nil {
		return fail(err)
	}
	return ln, nil
}
