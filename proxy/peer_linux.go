package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// peerLookup finds the uid owning the client end of a loopback TCP
// connection: from the kernel's sock_diag netlink interface, or, where
// that is not available (no AF_NETLINK in a sandbox), from
// /proc/self/net/tcp and tcp6: /proc/net is hidden by systemd's
// ProcSubset=pid, /proc/self/net is not.
//
// It keeps up to diagSocketsKept netlink sockets open between lookups,
// so that a lookup is a sendto and a recvfrom, not also a socket, a
// setsockopt and a close. Each socket serves one lookup at a time; one
// that failed in any way is closed, never reused. It is safe for
// concurrent use. A Server owns one and closes it when it stops.
type peerLookup struct {
	free chan *diagSocket // idle sockets, each answered in full

	mu     sync.Mutex // orders put and close
	closed bool
}

// diagSocketsKept is how many idle netlink sockets a peerLookup keeps:
// lookups run on the accepted connections' own goroutines, and one takes
// a few microseconds, so a few cover the bursts of a 2-core host. Above
// it, a lookup opens a socket of its own and closes it afterwards.
const diagSocketsKept = 4

// diagSocket is one blocking NETLINK_INET_DIAG socket with its buffers.
type diagSocket struct {
	fd  int
	seq uint32 // the last request's sequence number
	msg [unix.SizeofNlMsghdr + sizeofInetDiagRequest]byte
	buf [1024]byte // one inet_diag_msg without attributes: 88 bytes
}

func newPeerLookup() *peerLookup {
	return &peerLookup{free: make(chan *diagSocket, diagSocketsKept)}
}

// uid returns the uid owning the client socket of a TCP connection.
// local and remote are the server side's addresses, so the client's
// socket is the one bound to remote and connected to local.
func (p *peerLookup) uid(local, remote net.Addr) (uint32, error) {
	uid, diagErr := p.sockDiagUID(local, remote)
	if diagErr == nil {
		return uid, nil
	}
	uid, procErr := procNetUID("/proc/self/net", local, remote)
	if procErr == nil {
		return uid, nil
	}
	return 0, fmt.Errorf("finding the peer's uid: sock_diag: %w; /proc/net: %w", diagErr, procErr)
}

// close closes the idle sockets; a socket in use is closed when its
// lookup ends, and a lookup after close opens and closes its own.
func (p *peerLookup) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for {
		select {
		case s := <-p.free:
			unix.Close(s.fd)
		default:
			return
		}
	}
}

// get returns an idle socket, or a new one if none is idle.
func (p *peerLookup) get() (*diagSocket, error) {
	select {
	case s := <-p.free:
		return s, nil
	default:
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	timeout := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &timeout); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("setting the netlink socket's timeout: %w", err)
	}
	return &diagSocket{fd: fd}, nil
}

// put keeps s for the next lookup if it was answered in full (clean),
// and closes it otherwise, or when enough are kept, or after close.
func (p *peerLookup) put(s *diagSocket, clean bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if clean && !p.closed {
		select {
		case p.free <- s:
			return
		default:
		}
	}
	unix.Close(s.fd)
}

// sockDiagUID asks sock_diag for the client socket's owner. It asks for
// that one socket (an exact lookup, which the kernel answers from its
// connection hash table), not for a dump filtered on ports: a dump walks
// every TCP socket on the host, time-wait ones included, and under a burst
// of logins it cost milliseconds per connection in the accept loop.
func (p *peerLookup) sockDiagUID(local, remote net.Addr) (uint32, error) {
	l, r, ok := tcpAddrs(local, remote)
	if !ok {
		return 0, errors.New("not a TCP connection")
	}
	s, err := p.get()
	if err != nil {
		return 0, fmt.Errorf("sock_diag lookup: %w", err)
	}
	// The client's socket: bound to remote, connected to local.
	putInetDiagRequest(s.msg[unix.SizeofNlMsghdr:], r, l)
	answer, clean, err := s.query()
	if err != nil {
		p.put(s, clean)
		return 0, fmt.Errorf("sock_diag lookup: %w", err)
	}
	var sock netlink.Socket
	err = parseInetDiagMsg(answer, &sock) // answer is in s.buf: parse before put
	p.put(s, clean)
	if err != nil {
		return 0, err
	}
	// Check the answer names the socket asked for.
	id := sock.ID
	if !id.Source.Equal(r.IP) || !id.Destination.Equal(l.IP) ||
		int(id.SourcePort) != r.Port || int(id.DestinationPort) != l.Port {
		return 0, fmt.Errorf("sock_diag answered with socket %s:%d -> %s:%d", id.Source, id.SourcePort, id.Destination, id.DestinationPort)
	}
	if sock.INode == 0 {
		// Orphaned: its client closed it; the uid the kernel gives (0)
		// is nobody's.
		return 0, errors.New("sock_diag: the client's socket has no owner left (closed by its client)")
	}
	return sock.UID, nil
}

// query sends the SOCK_DIAG_BY_FAMILY request whose payload (an
// inet_diag_req_v2 for one socket) is in s.msg after the header, and
// returns the payload of the answer, which points into s.buf. clean
// reports whether s may serve another lookup: the request was sent and
// exactly its answer received, so nothing is left queued on s. The kernel
// answers an exact lookup while it handles the send, so the answer is
// queued when sendto returns (SO_RCVTIMEO bounds the wait all the same).
func (s *diagSocket) query() (answer []byte, clean bool, err error) {
	if err := s.send(); err != nil {
		return nil, false, err
	}
	return s.receive()
}

// send sends the request in s.msg under the next sequence number.
func (s *diagSocket) send() error {
	s.seq++
	binary.NativeEndian.PutUint32(s.msg[0:], uint32(len(s.msg)))
	binary.NativeEndian.PutUint16(s.msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(s.msg[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(s.msg[8:], s.seq)
	// s.msg[12:16], the sender's port id, stays 0: the kernel fills it in.
	if err := unix.Sendto(s.fd, s.msg[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	return nil
}

// receive reads the answer to the request send sent last.
func (s *diagSocket) receive() (answer []byte, clean bool, err error) {
	n, from, err := unix.Recvfrom(s.fd, s.buf[:], 0)
	if err != nil {
		return nil, false, fmt.Errorf("receiving: %w", err)
	}
	if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
		return nil, false, fmt.Errorf("answer from %v, not from the kernel", from)
	}
	h, data, err := parseNetlinkAnswer(s.buf[:n])
	switch {
	case err != nil:
		return nil, false, err
	case h.Seq != s.seq:
		// An answer to an earlier request: what else is queued cannot be
		// trusted either.
		return nil, false, fmt.Errorf("answer to request %d, want %d", h.Seq, s.seq)
	case h.Type == unix.NLMSG_ERROR && len(data) >= 4:
		if errno := int32(binary.NativeEndian.Uint32(data)); errno != 0 {
			return nil, true, unix.Errno(-errno)
		}
		return nil, false, errors.New("acknowledged without an answer")
	case h.Type != unix.SOCK_DIAG_BY_FAMILY:
		return nil, false, fmt.Errorf("answer of type %d, want %d", h.Type, unix.SOCK_DIAG_BY_FAMILY)
	}
	return data, true, nil
}

// parseNetlinkAnswer splits b, one datagram from the kernel, into the
// header and payload of the one netlink message it must hold.
func parseNetlinkAnswer(b []byte) (syscall.NlMsghdr, []byte, error) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	switch {
	case err != nil:
		return syscall.NlMsghdr{}, nil, fmt.Errorf("parsing the answer: %w", err)
	case len(msgs) != 1:
		return syscall.NlMsghdr{}, nil, fmt.Errorf("answered with %d messages, want 1", len(msgs))
	}
	return msgs[0].Header, msgs[0].Data, nil
}

// Sizes from linux/inet_diag.h: inet_diag_req_v2 and inet_diag_msg.
const (
	sizeofInetDiagRequest = 56
	sizeofInetDiagMsg     = 72
	// inetDiagNoCookie is INET_DIAG_NOCOOKIE: match any socket cookie.
	inetDiagNoCookie = ^uint32(0)
)

// putInetDiagRequest writes into b struct inet_diag_req_v2
// (linux/inet_diag.h) for an exact lookup of the TCP socket bound to
// source and connected to dst.
func putInetDiagRequest(b []byte, source, dst *net.TCPAddr) {
	b = b[:sizeofInetDiagRequest]
	clear(b)
	family := uint8(unix.AF_INET6)
	if source.IP.To4() != nil && dst.IP.To4() != nil {
		family = unix.AF_INET
	}
	b[0] = family
	b[1] = unix.IPPROTO_TCP
	// b[2] (extensions) and b[3] (pad) stay zero.
	binary.NativeEndian.PutUint32(b[4:], ^uint32(0)) // every state
	binary.BigEndian.PutUint16(b[8:], uint16(source.Port))
	binary.BigEndian.PutUint16(b[10:], uint16(dst.Port))
	if family == unix.AF_INET {
		copy(b[12:28], source.IP.To4())
		copy(b[28:44], dst.IP.To4())
	} else {
		copy(b[12:28], source.IP.To16())
		copy(b[28:44], dst.IP.To16())
	}
	// b[44:48] (interface) stays zero: any.
	binary.NativeEndian.PutUint32(b[48:], inetDiagNoCookie)
	binary.NativeEndian.PutUint32(b[52:], inetDiagNoCookie)
}

// parseInetDiagMsg reads the fields of struct inet_diag_msg that
// sockDiagUID needs into s.
func parseInetDiagMsg(b []byte, s *netlink.Socket) error {
	if len(b) < sizeofInetDiagMsg {
		return fmt.Errorf("sock_diag answer of %d bytes, want at least %d", len(b), sizeofInetDiagMsg)
	}
	s.Family, s.State = b[0], b[1]
	s.ID.SourcePort = binary.BigEndian.Uint16(b[4:])
	s.ID.DestinationPort = binary.BigEndian.Uint16(b[6:])
	if s.Family == unix.AF_INET {
		s.ID.Source = net.IP(slices.Clone(b[8:12]))
		s.ID.Destination = net.IP(slices.Clone(b[24:28]))
	} else {
		s.ID.Source = net.IP(slices.Clone(b[8:24]))
		s.ID.Destination = net.IP(slices.Clone(b[24:40]))
	}
	s.UID = binary.NativeEndian.Uint32(b[64:])
	s.INode = binary.NativeEndian.Uint32(b[68:])
	return nil
}

// procNetUID finds the client socket's owner in dir's tcp and tcp6
// tables (the format of /proc/net/tcp: proc_net_tcp.rst in the kernel's
// documentation).
func procNetUID(dir string, local, remote net.Addr) (uint32, error) {
	l, r, ok := tcpAddrs(local, remote)
	if !ok {
		return 0, errors.New("not a TCP connection")
	}
	type table struct{ file, local, remote string }
	var tables []table
	if l.IP.To4() != nil && r.IP.To4() != nil {
		tables = append(tables, table{"tcp", procNetAddr(r.IP.To4(), r.Port), procNetAddr(l.IP.To4(), l.Port)})
	}
	tables = append(tables, table{"tcp6", procNetAddr(r.IP.To16(), r.Port), procNetAddr(l.IP.To16(), l.Port)})
	var errs []error
	for _, tb := range tables {
		uid, err := scanProcNet(dir+"/"+tb.file, tb.local, tb.remote)
		if err == nil {
			return uid, nil
		}
		errs = append(errs, err)
	}
	return 0, errors.Join(errs...)
}

// procNetAddr writes ip:port as /proc/net/tcp does: the address as 32-bit
// words in host byte order, in hex, then the port in hex.
func procNetAddr(ip net.IP, port int) string {
	var sb strings.Builder
	for i := 0; i+4 <= len(ip); i += 4 {
		fmt.Fprintf(&sb, "%08X", binary.NativeEndian.Uint32(ip[i:i+4]))
	}
	fmt.Fprintf(&sb, ":%04X", port)
	return sb.String()
}

// scanProcNet returns the uid of the socket from local to remote in the
// table at path.
func scanProcNet(path, local, remote string) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[1] != local || fields[2] != remote {
			continue
		}
		if len(fields) < 10 || fields[9] == "0" {
			// ... uid timeout inode: an orphaned socket (its client
			// closed it) shows uid 0 and inode 0, and has no owner.
			return 0, fmt.Errorf("%s: socket %s -> %s has no owner left (closed by its client)", path, local, remote)
		}
		uid, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%s: bad uid %q", path, fields[7])
		}
		return uint32(uid), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return 0, fmt.Errorf("%s: no socket %s -> %s", path, local, remote)
}

func tcpAddrs(local, remote net.Addr) (l, r *net.TCPAddr, ok bool) {
	l, okL := local.(*net.TCPAddr)
	r, okR := remote.(*net.TCPAddr)
	return l, r, okL && okR
}
