package proxytest

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
)

// Phase is the point of a connection to an Upstream where a Fault takes
// it over.
type Phase int

const (
	// BeforeTLS is the TCP connection just accepted: nothing read or sent.
	BeforeTLS Phase = iota
	// BeforeGreeting is TLS up and the greeting not sent.
	BeforeGreeting
	// AtAuthenticate is an AUTHENTICATE command read (its tag in
	// FaultConn.Tag) and not answered.
	AtAuthenticate
	// AfterLogin is AUTHENTICATE accepted and answered: the session's
	// commands go to the Fault instead of the mailbox.
	AfterLogin
)

// Fault makes an Upstream misbehave, for fault tests: on every
// connection, at Phase, Run speaks instead of the server, and the
// connection is closed when Run returns.
type Fault struct {
	Phase Phase
	Run   func(c *FaultConn)
}

// FaultConn is a connection a Fault has taken over: TCP at BeforeTLS,
// TLS after it.
type FaultConn struct {
	net.Conn
	// Tag is the tag of the AUTHENTICATE command at AtAuthenticate.
	Tag string
	tcp *net.TCPConn
	br  *bufio.Reader
}

// newFaultConn wraps c, whose reads go through br, if not nil.
func newFaultConn(c net.Conn, br *bufio.Reader, tag string) *FaultConn {
	tcp, _ := c.(*net.TCPConn)
	if tc, ok := c.(*tls.Conn); ok {
		tcp, _ = tc.NetConn().(*net.TCPConn)
	}
	if br == nil {
		br = bufio.NewReader(c)
	}
	return &FaultConn{Conn: c, Tag: tag, tcp: tcp, br: br}
}

// Read reads from the connection, after what the server had buffered.
func (c *FaultConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// ReadLine reads one line, without its line end.
func (c *FaultConn) ReadLine() (string, error) {
	l, err := c.br.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

// WriteString writes s as it is.
func (c *FaultConn) WriteString(s string) error {
	_, err := io.WriteString(c.Conn, s)
	return err
}

// Drain reads until the peer closes the connection.
func (c *FaultConn) Drain() { io.Copy(io.Discard, c.br) }

// Reset closes the TCP connection with a RST instead of a FIN.
func (c *FaultConn) Reset() {
	c.tcp.SetLinger(0)
	c.tcp.Close()
}

// faultAt runs the Upstream's Fault on c if it is for phase, and reports
// whether it did (the connection is then to be closed).
func (u *Upstream) faultAt(phase Phase, c net.Conn, br *bufio.Reader, tag string) bool {
	f := u.opts.Fault
	if f == nil || f.Phase != phase {
		return false
	}
	f.Run(newFaultConn(c, br, tag))
	return true
}
