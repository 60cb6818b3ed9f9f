// Package sdnotify sends sd_notify(3) state changes to systemd, for
// services of Type=notify.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends state changes to the socket systemd names in
// NOTIFY_SOCKET. It does nothing when NOTIFY_SOCKET is not set. It is
// safe for concurrent use.
type Notifier struct {
	addr string
}

// New returns a Notifier for this process's NOTIFY_SOCKET.
func New() *Notifier { return &Notifier{addr: os.Getenv("NOTIFY_SOCKET")} }

// Send writes state (for example "READY=1") to the notify socket.
func (n *Notifier) Send(state string) error {
	if n.addr == "" {
		return nil
	}
	name := n.addr
	if name[0] == '@' { // abstract socket
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("connecting to NOTIFY_SOCKET: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notifying systemd: %w", err)
	}
	return nil
}

// Reloading returns the message that starts a reload: RELOADING=1 with the
// monotonic timestamp systemd's Type=notify-reload expects.
func Reloading() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "RELOADING=1"
	}
	usec := time.Duration(ts.Nano()) / time.Microsecond
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(int64(usec), 10)
}
