package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
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

// sockDiagUID asks sock_diag for the client socket's owner.
func sockDiagUID(local, remote net.Addr) (uint32, error) {
	l, r, ok := tcpAddrs(local, remote)
	if !ok {
		return 0, errors.New("not a TCP connection")
	}
	var sock *netlink.Socket
	var err error
	for range 2 { // a dump interrupted by a change is worth one retry
		if sock, err = netlink.SocketGet(r, l); !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	// The kernel matches a dump request on ports; check the addresses.
	id := sock.ID
	if !id.Source.Equal(r.IP) || !id.Destination.Equal(l.IP) ||
		int(id.SourcePort) != r.Port || int(id.DestinationPort) != l.Port {
		return 0, fmt.Errorf("sock_diag answered with socket %s:%d -> %s:%d", id.Source, id.SourcePort, id.Destination, id.DestinationPort)
	}
	return sock.UID, nil
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
