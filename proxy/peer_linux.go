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
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lookupPeerUID finds the uid owning the client end of a loopback TCP
// connection: from the kernel's sock_diag netlink interface, or, where
// that is not available (no AF_NETLINK in a sandbox), from
// /proc/self/net/tcp and tcp6: /proc/net is hidden by systemd's
// ProcSubset=pid, /proc/self/net is not. local and remote are the server
// side's addresses, so the client's socket is the one bound to remote
// and connected to local.
func lookupPeerUID(local, remote net.Addr) (uint32, error) {
	uid, diagErr := sockDiagUID(local, remote)
	if diagErr == nil {
		return uid, nil
	}
	uid, procErr := procNetUID("/proc/self/net", local, remote)
	if procErr == nil {
		return uid, nil
	}
	return 0, fmt.Errorf("finding the peer's uid: sock_diag: %w; /proc/net: %w", diagErr, procErr)
}

// sockDiagUID asks sock_diag for the client socket's owner. It asks for
// that one socket (an exact lookup, which the kernel answers from its
// connection hash table), not for a dump filtered on ports: a dump walks
// every TCP socket on the host, time-wait ones included, and under a burst
// of logins it cost milliseconds per connection in the accept loop.
func sockDiagUID(local, remote net.Addr) (uint32, error) {
	l, r, ok := tcpAddrs(local, remote)
	if !ok {
		return 0, errors.New("not a TCP connection")
	}
	// The client's socket: bound to remote, connected to local.
	answer, err := sockDiagQuery(newInetDiagRequest(r, l).Serialize())
	if err != nil {
		return 0, fmt.Errorf("sock_diag lookup: %w", err)
	}
	var sock netlink.Socket
	if err := parseInetDiagMsg(answer, &sock); err != nil {
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

// sockDiagQuery sends one SOCK_DIAG_BY_FAMILY request (payload: an
// inet_diag_req_v2) for one socket and returns the payload of the answer.
// It takes four system calls on a blocking socket of its own: the kernel
// answers an exact lookup while it handles the send, so the answer is
// queued when sendto returns (SO_RCVTIMEO bounds the wait all the same).
// netlink's NetlinkRequest.Execute takes about ten, and registers the
// socket with the network poller.
func sockDiagQuery(payload []byte) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	defer unix.Close(fd)
	timeout := unix.Timeval{Sec: 1}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &timeout); err != nil {
		return nil, fmt.Errorf("setting the netlink socket's timeout: %w", err)
	}
	const seq = 1 // the socket is this query's alone
	msg := make([]byte, unix.SizeofNlMsghdr+len(payload))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	// msg[12:16], the sender's port id, stays 0: the kernel fills it in.
	copy(msg[unix.SizeofNlMsghdr:], payload)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sending: %w", err)
	}
	buf := make([]byte, 1024) // one inet_diag_msg without attributes: 88 bytes
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return nil, fmt.Errorf("receiving: %w", err)
	}
	if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
		return nil, fmt.Errorf("answer from %v, not from the kernel", from)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("parsing the answer: %w", err)
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("answered with %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	switch {
	case m.Header.Seq != seq:
		return nil, fmt.Errorf("answer to request %d, want %d", m.Header.Seq, seq)
	case m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4:
		if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
			return nil, unix.Errno(-errno)
		}
		return nil, errors.New("acknowledged without an answer")
	case m.Header.Type != unix.SOCK_DIAG_BY_FAMILY:
		return nil, fmt.Errorf("answer of type %d, want %d", m.Header.Type, unix.SOCK_DIAG_BY_FAMILY)
	}
	return m.Data, nil
}

// inetDiagRequest is struct inet_diag_req_v2 (linux/inet_diag.h) for an
// exact lookup of one TCP socket.
type inetDiagRequest struct {
	family      uint8
	source, dst *net.TCPAddr
}

// Sizes from linux/inet_diag.h: inet_diag_req_v2 and inet_diag_msg.
const (
	sizeofInetDiagRequest = 56
	sizeofInetDiagMsg     = 72
	// inetDiagNoCookie is INET_DIAG_NOCOOKIE: match any socket cookie.
	inetDiagNoCookie = ^uint32(0)
)

func newInetDiagRequest(source, dst *net.TCPAddr) *inetDiagRequest {
	family := uint8(unix.AF_INET6)
	if source.IP.To4() != nil && dst.IP.To4() != nil {
		family = unix.AF_INET
	}
	return &inetDiagRequest{family: family, source: source, dst: dst}
}

func (r *inetDiagRequest) Serialize() []byte {
	b := make([]byte, sizeofInetDiagRequest)
	b[0] = r.family
	b[1] = unix.IPPROTO_TCP
	// b[2] (extensions) and b[3] (pad) stay zero.
	binary.NativeEndian.PutUint32(b[4:], ^uint32(0)) // every state
	binary.BigEndian.PutUint16(b[8:], uint16(r.source.Port))
	binary.BigEndian.PutUint16(b[10:], uint16(r.dst.Port))
	if r.family == unix.AF_INET {
		copy(b[12:28], r.source.IP.To4())
		copy(b[28:44], r.dst.IP.To4())
	} else {
		copy(b[12:28], r.source.IP.To16())
		copy(b[28:44], r.dst.IP.To16())
	}
	// b[44:48] (interface) stays zero: any.
	binary.NativeEndian.PutUint32(b[48:], inetDiagNoCookie)
	binary.NativeEndian.PutUint32(b[52:], inetDiagNoCookie)
	return b
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
