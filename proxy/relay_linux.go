package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
)

// canReadWithoutWaiting: the relay reads Linux sockets without waiting.
const canReadWithoutWaiting = true

// nonblockingReader reads a socket without waiting: Go keeps its sockets
// in non-blocking mode, so a read system call made through the RawConn
// returns at once, with EAGAIN when nothing is queued.
type nonblockingReader struct {
	rc  syscall.RawConn
	fn  func(fd uintptr) bool // r.readFD, bound once so reads do not allocate
	buf []byte
	n   int
	err error
}

// init prepares r for nc; r stays unable to read if nc has no descriptor.
func (r *nonblockingReader) init(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	r.rc, r.fn = rc, r.readFD
}

// read reads into p what the socket already holds. It returns 0 and no
// error when nothing is queued (or r cannot read, or the connection is
// closed or past its deadline, which the next waiting read reports), and
// io.EOF or the socket's error, which a read reports only once.
func (r *nonblockingReader) read(p []byte) (int, error) {
	if r.rc == nil || len(p) == 0 {
		return 0, nil
	}
	r.buf, r.n, r.err = p, 0, nil
	err := r.rc.Read(r.fn) // fails only before reading: closed, or past the deadline
	r.buf = nil
	if err != nil {
		return 0, nil
	}
	return r.n, r.err
}

func (r *nonblockingReader) readFD(fd uintptr) bool {
	n, err := syscall.Read(int(fd), r.buf)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
	case err != nil:
		r.err = os.NewSyscallError("read", err)
	case n == 0:
		r.err = io.EOF
	default:
		r.n = n
	}
	return true
}
